package configmerge

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func cfg(c v1.Config) *v1.ConfigFile {
	return &v1.ConfigFile{OS: "linux", Architecture: "amd64", Config: c}
}

// nop is a history entry as buildah and the classic builder record it.
func nop(instr string) v1.History {
	if strings.HasPrefix(instr, "RUN ") {
		return v1.History{CreatedBy: "/bin/sh -c " + strings.TrimPrefix(instr, "RUN ")}
	}
	return v1.History{CreatedBy: "/bin/sh -c #(nop) " + instr, EmptyLayer: true}
}

// bk is a history entry as BuildKit records it.
func bk(instr string) v1.History {
	return v1.History{CreatedBy: instr, Comment: "buildkit.dockerfile.v0", EmptyLayer: !strings.HasPrefix(instr, "RUN") && !strings.HasPrefix(instr, "COPY")}
}

func ports(ps ...string) map[string]struct{} {
	m := map[string]struct{}{}
	for _, p := range ps {
		m[p] = struct{}{}
	}
	return m
}

var (
	baseV1 = v1.Config{
		Env:          []string{"PATH=/usr/local/bin:/usr/bin:/bin", "BASEVER=1", "JAVA_HOME=/opt/java/17", "OLDONLY=x"},
		Labels:       map[string]string{"org.opencontainers.image.version": "1.0", "base": "one", "gone": "yes"},
		Cmd:          []string{"/bin/sh"},
		WorkingDir:   "/srv",
		ExposedPorts: ports("80/tcp", "443/tcp"),
		Volumes:      ports("/var/lib/base"),
		StopSignal:   "SIGQUIT",
		Healthcheck:  &v1.HealthConfig{Test: []string{"CMD", "true"}},
		Shell:        []string{"/bin/sh", "-c"},
		OnBuild:      []string{"COPY . /src"},
	}
	baseV2 = v1.Config{
		Env:          []string{"PATH=/opt/new/bin:/usr/bin:/bin", "BASEVER=2", "JAVA_HOME=/opt/java/21", "NEWONLY=y"},
		Labels:       map[string]string{"org.opencontainers.image.version": "1.1", "base": "two", "added": "new"},
		Cmd:          []string{"/bin/bash"},
		WorkingDir:   "/srv2",
		ExposedPorts: ports("80/tcp", "8443/tcp"),
		Volumes:      ports("/var/lib/base2"),
		Healthcheck:  &v1.HealthConfig{Test: []string{"CMD", "true"}, Retries: 3},
		Shell:        []string{"/bin/bash", "-c"},
		OnBuild:      []string{"COPY . /src"},
	}
)

// appOn returns the base config with an application's edits.
func appOn(base v1.Config, edit func(c *v1.Config)) v1.Config {
	c := *deepCopy(base)
	c.OnBuild = nil
	edit(&c)
	return c
}

func setEnv(c *v1.Config, kv string) {
	k, _ := splitEnv(kv)
	for i, e := range c.Env {
		if ek, _ := splitEnv(e); ek == k {
			c.Env[i] = kv
			return
		}
	}
	c.Env = append(c.Env, kv)
}

func TestMerge(t *testing.T) {
	tests := []struct {
		name    string
		old     v1.Config
		app     v1.Config
		nw      v1.Config
		hist    []v1.History
		style   Style
		want    func(t *testing.T, r *Result)
		changes []string // Change.String() lines that must appear
		kept    []string
		warn    []string // warning codes, in order
	}{
		{
			name: "three-way: inherited values follow the new base, the image's own stay",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				setEnv(c, "PATH=/app/bin:/usr/local/bin:/usr/bin:/bin")
				setEnv(c, "APP=1.5")
				c.Labels["app"] = "mine"
				c.Labels["base"] = "overridden"
				c.ExposedPorts["8080/tcp"] = struct{}{}
				c.Volumes["/data"] = struct{}{}
			}),
			style: StyleUnknown,
			want: func(t *testing.T, r *Result) {
				wantEnv := []string{"PATH=/app/bin:/opt/new/bin:/usr/bin:/bin", "BASEVER=2", "JAVA_HOME=/opt/java/21", "NEWONLY=y", "APP=1.5"}
				if !slices.Equal(r.Config.Env, wantEnv) {
					t.Errorf("env = %q, want %q", r.Config.Env, wantEnv)
				}
				wantLabels := map[string]string{"org.opencontainers.image.version": "1.1", "base": "overridden", "added": "new", "app": "mine"}
				if !equalMaps(r.Config.Labels, wantLabels) {
					t.Errorf("labels = %v, want %v", r.Config.Labels, wantLabels)
				}
				if !sameSet(r.Config.ExposedPorts, ports("80/tcp", "8443/tcp", "8080/tcp")) || !sameSet(r.Config.Volumes, ports("/var/lib/base2", "/data")) {
					t.Errorf("ports %v volumes %v", r.Config.ExposedPorts, r.Config.Volumes)
				}
				if r.Config.WorkingDir != "/srv2" || r.Config.StopSignal != "" || !slices.Equal(r.Config.Cmd, []string{"/bin/bash"}) ||
					r.Config.Healthcheck.Retries != 3 || !slices.Equal(r.Config.Shell, []string{"/bin/bash", "-c"}) || r.Config.OnBuild != nil {
					t.Errorf("config = %+v", r.Config)
				}
			},
			changes: []string{
				"Env BASEVER: inherited, 1 → 2",
				"Env PATH: app prefix kept, base part /usr/local/bin:/usr/bin:/bin → /opt/new/bin:/usr/bin:/bin",
				"Env OLDONLY: inherited x, removed in new base",
				"Env NEWONLY: added by new base, y",
				"StopSignal: inherited SIGQUIT, removed in new base",
				"Labels gone: inherited yes, removed in new base",
				"ExposedPorts 443/tcp: inherited 443/tcp, removed in new base",
				"WorkingDir: inherited, /srv → /srv2",
			},
			kept: []string{"Labels base: set by the image, kept overridden (base one → two)"},
		},
		{
			name: "three-way: an ENTRYPOINT of the image's keeps its CMD; a value embedding an old base value warns",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				c.Entrypoint = []string{"/app"}
				c.Cmd = nil
				c.WorkingDir = "/srv/app"
				setEnv(c, "JAVA_BIN=/opt/java/17/bin")
			}),
			want: func(t *testing.T, r *Result) {
				if r.Config.Cmd != nil || !slices.Equal(r.Config.Entrypoint, []string{"/app"}) || r.Config.WorkingDir != "/srv/app" {
					t.Errorf("config = %+v", r.Config)
				}
				if !slices.Contains(r.Config.Env, "JAVA_BIN=/opt/java/17/bin") {
					t.Errorf("env = %q", r.Config.Env)
				}
			},
			style: StyleUnknown,
			warn:  []string{CodeOldValueEmbedded, CodeWorkdirMoved},
		},
		{
			name: "three-way: what the image appended after the base's PATH is kept (ENV PATH=$PATH:/app/bin)",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				setEnv(c, "PATH=/usr/local/bin:/usr/bin:/bin:/app/bin")
			}),
			want: func(t *testing.T, r *Result) {
				if !slices.Contains(r.Config.Env, "PATH=/opt/new/bin:/usr/bin:/bin:/app/bin") {
					t.Errorf("env = %q, want PATH=/opt/new/bin:/usr/bin:/bin:/app/bin", r.Config.Env)
				}
			},
			style:   StyleUnknown,
			changes: []string{"Env PATH: app suffix kept, base part /usr/local/bin:/usr/bin:/bin → /opt/new/bin:/usr/bin:/bin"},
		},
		{
			name: "three-way: the image's parts before and after the base's PATH are kept",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				setEnv(c, "PATH=/app/bin:/usr/local/bin:/usr/bin:/bin:/app/sbin")
			}),
			want: func(t *testing.T, r *Result) {
				if !slices.Contains(r.Config.Env, "PATH=/app/bin:/opt/new/bin:/usr/bin:/bin:/app/sbin") {
					t.Errorf("env = %q, want PATH=/app/bin:/opt/new/bin:/usr/bin:/bin:/app/sbin", r.Config.Env)
				}
			},
			style:   StyleUnknown,
			changes: []string{"Env PATH: app parts kept, base part /usr/local/bin:/usr/bin:/bin → /opt/new/bin:/usr/bin:/bin"},
		},
		{
			name: "three-way without history: an entrypoint set by a tool (crane, umoci) leaves the inherited CMD to follow the base",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				c.Entrypoint = []string{"/app"}
			}),
			hist:  []v1.History{{CreatedBy: "umoci config"}},
			style: StyleUnknown,
			want: func(t *testing.T, r *Result) {
				if !slices.Equal(r.Config.Cmd, []string{"/bin/bash"}) || !slices.Equal(r.Config.Entrypoint, []string{"/app"}) {
					t.Errorf("cmd %q entrypoint %q, want the new base's CMD and the image's entrypoint", r.Config.Cmd, r.Config.Entrypoint)
				}
			},
		},
		{
			name: "three-way with an ENTRYPOINT in the history: the inherited CMD was reset, the image's stays",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				c.Entrypoint = []string{"/app"}
			}),
			hist:  []v1.History{{CreatedBy: "umoci config"}, nop(`ENTRYPOINT ["/app"]`), nop(`CMD ["/bin/sh"]`)},
			style: StyleUnknown,
			want: func(t *testing.T, r *Result) {
				if !slices.Equal(r.Config.Cmd, []string{"/bin/sh"}) {
					t.Errorf("cmd %q, want the image's", r.Config.Cmd)
				}
			},
		},
		{
			name: "expanded WORKDIR holding an old base value (WORKDIR $JAVA_HOME/app): kept, reported",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				c.WorkingDir = "/opt/java/17/app"
			}),
			hist:  []v1.History{bk(`WORKDIR /opt/java/17/app`)},
			style: StyleExpanded,
			want: func(t *testing.T, r *Result) {
				if r.Config.WorkingDir != "/opt/java/17/app" {
					t.Errorf("WorkingDir %q", r.Config.WorkingDir)
				}
			},
			warn: []string{CodeOldValueEmbedded},
		},
		{
			name: "as-written history: instructions replayed on the new base",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				setEnv(c, "GREETING=from 1")
				setEnv(c, "PATH=/app/bin:/usr/local/bin:/usr/bin:/bin")
				setEnv(c, "BASEVER=1") // written out, equal to the old base's
				c.Labels["built-on"] = "1"
				c.WorkingDir = "/opt/app"
				c.Cmd = []string{"/bin/sh"} // CMD ["/bin/sh"], equal to the old base's
				c.User = "1000"
				c.ExposedPorts["8080/udp"] = struct{}{}
				c.StopSignal = "SIGQUIT" // written out, equal to the old base's
			}),
			hist: []v1.History{
				nop(`ENV GREETING="from ${BASEVER}" PATH=/app/bin:$PATH`),
				nop(`LABEL built-on=$BASEVER`),
				nop(`ENV BASEVER=1`),
				nop(`WORKDIR /opt/app`),
				nop(`USER 1000`),
				nop(`EXPOSE 8080/udp`),
				nop(`STOPSIGNAL SIGQUIT`),
				nop(`CMD ["/bin/sh"]`),
			},
			style: StyleAsWritten,
			want: func(t *testing.T, r *Result) {
				wantEnv := []string{"PATH=/app/bin:/opt/new/bin:/usr/bin:/bin", "BASEVER=1", "JAVA_HOME=/opt/java/21", "NEWONLY=y", "GREETING=from 2"}
				if !slices.Equal(r.Config.Env, wantEnv) {
					t.Errorf("env = %q, want %q", r.Config.Env, wantEnv)
				}
				if r.Config.Labels["built-on"] != "2" || r.Config.StopSignal != "SIGQUIT" || !slices.Equal(r.Config.Cmd, []string{"/bin/sh"}) || r.Config.WorkingDir != "/opt/app" {
					t.Errorf("config = %+v", r.Config)
				}
			},
			changes: []string{
				"Env GREETING: ENV GREETING=\"from ${BASEVER}\" PATH=/app/bin:$PATH re-evaluated, from 1 → from 2",
				"Env PATH: app prefix kept, base part /usr/local/bin:/usr/bin:/bin → /opt/new/bin:/usr/bin:/bin",
				"Labels built-on: LABEL built-on=$BASEVER re-evaluated, 1 → 2",
			},
			kept: []string{
				"Env BASEVER: set by ENV BASEVER=1, kept 1 (base 1 → 2)",
				"StopSignal: set by STOPSIGNAL SIGQUIT, kept SIGQUIT (base SIGQUIT → (none))",
				`Cmd: set by CMD ["/bin/sh"], kept ["/bin/sh"] (base ["/bin/sh"] → ["/bin/bash"])`,
			},
		},
		{
			name: "as-written history: relative WORKDIR under a moved base WORKDIR warns; shell-form CMD takes the new SHELL",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				c.WorkingDir = "/srv/app"
				c.Cmd = []string{"/bin/sh", "-c", "run $X"}
			}),
			hist:  []v1.History{nop(`WORKDIR app`), nop(`COPY file:abc in . `), nop(`CMD run $X`)},
			style: StyleAsWritten,
			want: func(t *testing.T, r *Result) {
				if r.Config.WorkingDir != "/srv2/app" || !slices.Equal(r.Config.Cmd, []string{"/bin/bash", "-c", "run $X"}) {
					t.Errorf("config = %+v", r.Config)
				}
			},
			warn: []string{CodeWorkdirMoved, CodeWorkdirMoved},
		},
		{
			name: "as-written history: ENTRYPOINT resets the inherited CMD, after a CMD keeps it",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				c.Entrypoint = []string{"/entry"}
				c.Cmd = nil
			}),
			hist:  []v1.History{nop(`ENTRYPOINT ["/entry"]`)},
			style: StyleAsWritten,
			want: func(t *testing.T, r *Result) {
				if r.Config.Cmd != nil || !slices.Equal(r.Config.Entrypoint, []string{"/entry"}) {
					t.Errorf("config = %+v", r.Config)
				}
			},
		},
		{
			name: "as-written history: an ARG without a recorded value falls back to the merge; RUN on a new release and in a moved WORKDIR warns",
			old:  baseV1, nw: func() v1.Config {
				c := *deepCopy(baseV2)
				c.Labels["org.opencontainers.image.version"] = "2.0"
				return c
			}(),
			app: appOn(baseV1, func(c *v1.Config) {
				setEnv(c, "APPVER=3")
				setEnv(c, "RUNVER=4")
			}),
			hist: []v1.History{nop(`ARG V`), nop(`ENV APPVER=$V`), nop(`ARG W`), nop(`ENV RUNVER=${W}`), {CreatedBy: "|1 W=4 /bin/sh -c make"}},
			want: func(t *testing.T, r *Result) {
				if !slices.Contains(r.Config.Env, "APPVER=3") || !slices.Contains(r.Config.Env, "RUNVER=4") {
					t.Errorf("env = %q", r.Config.Env)
				}
			},
			style: StyleAsWritten,
			warn:  []string{CodeWorkdirMoved, CodeRunOnNewRelease},
		},
		{
			name: "as-written history that does not reproduce the image's config: that value is merged",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				setEnv(c, "X=edited")
				c.User = "root"
			}),
			hist:  []v1.History{nop(`ENV X=original`), nop(`USER app`)},
			style: StyleAsWritten,
			want: func(t *testing.T, r *Result) {
				if !slices.Contains(r.Config.Env, "X=edited") || r.Config.User != "root" {
					t.Errorf("config = %+v", r.Config)
				}
			},
		},
		{
			name: "expanded (BuildKit) history: set values are known, old base values inside are rewritten or reported",
			old:  baseV1, nw: baseV2,
			app: appOn(baseV1, func(c *v1.Config) {
				setEnv(c, "GREETING=from 1")
				setEnv(c, "PATH=/app/bin:/usr/local/bin:/usr/bin:/bin")
				c.Cmd = []string{"/bin/sh"}
				c.WorkingDir = "/srv/app"
				c.ExposedPorts["9000/tcp"] = struct{}{}
				c.Labels["v"] = "2"
			}),
			hist: []v1.History{
				bk(`ENV GREETING=from 1 PATH=/app/bin:/usr/local/bin:/usr/bin:/bin`),
				bk(`WORKDIR /srv/app`),
				bk(`EXPOSE map[9000/tcp:{}]`),
				bk(`LABEL v=2`),
				bk(`RUN |0 /bin/sh -c true`),
				bk(`CMD ["/bin/sh"]`),
			},
			style: StyleExpanded,
			want: func(t *testing.T, r *Result) {
				if !slices.Contains(r.Config.Env, "GREETING=from 1") || !slices.Contains(r.Config.Env, "PATH=/app/bin:/opt/new/bin:/usr/bin:/bin") {
					t.Errorf("env = %q", r.Config.Env)
				}
				// WORKDIR /srv/app lies under the old base's /srv: taken
				// as relative, it follows the new base's /srv2.
				if !slices.Equal(r.Config.Cmd, []string{"/bin/sh"}) || r.Config.WorkingDir != "/srv2/app" || !sameSet(r.Config.ExposedPorts, ports("80/tcp", "8443/tcp", "9000/tcp")) {
					t.Errorf("config = %+v", r.Config)
				}
				// The history records what a rebuild would: the new values.
				want := []HistoryEdit{
					{Entry: 0, CreatedBy: "ENV GREETING=from 1 PATH=/app/bin:/opt/new/bin:/usr/bin:/bin"},
					{Entry: 1, CreatedBy: "WORKDIR /srv2/app"},
				}
				if len(r.History) != len(want) {
					t.Fatalf("history edits %+v, want %+v", r.History, want)
				}
				for i, e := range r.History {
					if e.Entry != want[i].Entry || e.CreatedBy != want[i].CreatedBy {
						t.Errorf("history edit %d = %+v, want %+v", i, e, want[i])
					}
				}
			},
			changes: []string{"Env PATH: app prefix kept, base part /usr/local/bin:/usr/bin:/bin → /opt/new/bin:/usr/bin:/bin"},
			// The WORKDIR itself, and the RUN that ran there.
			warn: []string{CodeOldValueEmbedded, CodeWorkdirMoved, CodeWorkdirMoved},
		},
		{
			name: "onbuild triggers of the new base are not inherited, and their change is a hazard; author follows the base",
			old:  baseV1,
			nw: func() v1.Config {
				c := *deepCopy(baseV2)
				c.OnBuild = []string{"RUN make"}
				return c
			}(),
			app: appOn(baseV1, func(c *v1.Config) {
				c.OnBuild = []string{"COPY x /x"}
			}),
			hist:  []v1.History{nop(`ONBUILD COPY x /x`)},
			style: StyleAsWritten,
			want: func(t *testing.T, r *Result) {
				if !slices.Equal(r.Config.OnBuild, []string{"COPY x /x"}) {
					t.Errorf("onbuild = %q", r.Config.OnBuild)
				}
			},
			warn: []string{CodeOnBuildChanged},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := Input{Old: cfg(tc.old), App: cfg(tc.app), New: cfg(tc.nw), History: tc.hist}
			before, _ := json.Marshal(in)
			r, err := Merge(in)
			if err != nil {
				t.Fatal(err)
			}
			if after, _ := json.Marshal(in); string(after) != string(before) {
				t.Error("Merge modified its input")
			}
			if r.Style != tc.style {
				t.Errorf("style = %s, want %s", r.Style, tc.style)
			}
			if tc.want != nil {
				tc.want(t, r)
			}
			lines := func(cs []Change) []string {
				var out []string
				for _, c := range cs {
					out = append(out, c.String())
				}
				return out
			}
			for _, c := range tc.changes {
				if !slices.Contains(lines(r.Changes), c) {
					t.Errorf("missing change %q in\n  %s", c, strings.Join(lines(r.Changes), "\n  "))
				}
			}
			for _, c := range tc.kept {
				if !slices.Contains(lines(r.Kept), c) {
					t.Errorf("missing kept %q in\n  %s", c, strings.Join(lines(r.Kept), "\n  "))
				}
			}
			var codes []string
			for _, w := range r.Warnings {
				codes = append(codes, w.Code)
			}
			if !slices.Equal(codes, tc.warn) {
				t.Errorf("warnings = %v, want %v: %+v", codes, tc.warn, r.Warnings)
			}
		})
	}
}

func TestUnchangedBaseGivesNoChange(t *testing.T) {
	app := appOn(baseV1, func(c *v1.Config) { setEnv(c, "A=1"); c.Cmd = []string{"run"} })
	for _, h := range [][]v1.History{nil, {nop("ENV A=1"), nop("CMD run")}} {
		r, err := Merge(Input{Old: cfg(baseV1), App: cfg(app), New: cfg(baseV1), History: h})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Changes) != 0 || len(r.Warnings) != 0 {
			t.Errorf("changes %v warnings %v", r.Changes, r.Warnings)
		}
	}
}

func TestAuthorAndMaintainer(t *testing.T) {
	o, n := cfg(baseV1), cfg(baseV2)
	o.Author, n.Author = "old base", "new base"
	inherit := cfg(appOn(baseV1, func(*v1.Config) {}))
	inherit.Author = "old base"
	own := cfg(appOn(baseV1, func(*v1.Config) {}))
	own.Author = "joe"
	for _, tc := range []struct {
		app  *v1.ConfigFile
		hist []v1.History
		want string
	}{
		{inherit, nil, "new base"},
		{own, nil, "joe"},
		{own, []v1.History{nop("MAINTAINER joe")}, "joe"},
		{inherit, []v1.History{nop("COPY file:x in /x")}, "new base"},
	} {
		r, err := Merge(Input{Old: o, App: tc.app, New: n, History: tc.hist})
		if err != nil {
			t.Fatal(err)
		}
		if r.Author != tc.want {
			t.Errorf("author = %q, want %q", r.Author, tc.want)
		}
	}
}

func TestReplayInstructions(t *testing.T) {
	base := cfg(v1.Config{Env: []string{"B=base"}, WorkingDir: "/w", Shell: []string{"/bin/ash", "-c"}})
	tests := []struct {
		hist  v1.History
		check func(c v1.Config) bool
	}{
		{nop(`ENV legacy value with spaces`), func(c v1.Config) bool { return slices.Contains(c.Env, "legacy=value with spaces") }},
		{nop(`ENV A='$B' C="${B}x" D=\$B E=${B:+set} F=${NOPE:-dflt} G=${NOPE-d2} H=${B:-x}`), func(c v1.Config) bool {
			return slices.Equal(c.Env[1:], []string{"A=$B", "C=basex", "D=$B", "E=set", "F=dflt", "G=d2", "H=base"})
		}},
		{nop(`LABEL "a key"="v v" k2=$B`), func(c v1.Config) bool { return c.Labels["a key"] == "v v" && c.Labels["k2"] == "base" }},
		{nop(`WORKDIR ../x/$B`), func(c v1.Config) bool { return c.WorkingDir == "/x/base" }},
		{nop(`EXPOSE 80 53/UDP 7000-7002`), func(c v1.Config) bool {
			return sameSet(c.ExposedPorts, ports("80/tcp", "53/udp", "7000/tcp", "7001/tcp", "7002/tcp"))
		}},
		{nop(`VOLUME ["/a", "/b"]`), func(c v1.Config) bool { return sameSet(c.Volumes, ports("/a", "/b")) }},
		{nop(`VOLUME /c $B`), func(c v1.Config) bool { return sameSet(c.Volumes, ports("/c", "base")) }},
		{nop(`CMD echo $B`), func(c v1.Config) bool { return slices.Equal(c.Cmd, []string{"/bin/ash", "-c", "echo $B"}) }},
		{nop(`SHELL ["/bin/zsh", "-c"]`), func(c v1.Config) bool { return slices.Equal(c.Shell, []string{"/bin/zsh", "-c"}) }},
		{nop(`HEALTHCHECK --interval=5s --retries=2 CMD /bin/true`), func(c v1.Config) bool {
			h := c.Healthcheck
			return h != nil && slices.Equal(h.Test, []string{"CMD-SHELL", "/bin/true"}) && h.Interval == 5*time.Second && h.Retries == 2
		}},
		{nop(`HEALTHCHECK CMD ["/bin/true", "x"]`), func(c v1.Config) bool {
			return slices.Equal(c.Healthcheck.Test, []string{"CMD", "/bin/true", "x"})
		}},
		{nop(`HEALTHCHECK NONE`), func(c v1.Config) bool { return slices.Equal(c.Healthcheck.Test, []string{"NONE"}) }},
		{nop(`STOPSIGNAL SIG$B`), func(c v1.Config) bool { return c.StopSignal == "SIGbase" }},
		{nop(`USER ${B}:grp`), func(c v1.Config) bool { return c.User == "base:grp" }},
		{bk(`CMD ["/bin/sh" "-c" "echo \"hi\""]`), func(c v1.Config) bool {
			return slices.Equal(c.Cmd, []string{"/bin/sh", "-c", `echo "hi"`})
		}},
		{bk(`VOLUME [/v1 /v2]`), func(c v1.Config) bool { return sameSet(c.Volumes, ports("/v1", "/v2")) }},
		{bk(`ENV A=$B is literal`), func(c v1.Config) bool { return slices.Contains(c.Env, "A=$B is literal") }},
	}
	for _, tc := range tests {
		t.Run(tc.hist.CreatedBy, func(t *testing.T) {
			ins, style := parseEntry(tc.hist)
			if style == StyleUnknown {
				t.Fatalf("entry not read")
			}
			s := newReplayState(base)
			s.apply(ins)
			if len(s.unknown) != 0 {
				t.Fatalf("unknown: %v", s.unknown)
			}
			if !tc.check(s.cfg) {
				t.Errorf("config = %+v", s.cfg)
			}
		})
	}
}

func TestParseHistoryStyles(t *testing.T) {
	tests := []struct {
		hist []v1.History
		want Style
	}{
		{nil, StyleUnknown},
		{[]v1.History{nop("ENV A=1"), nop("RUN make"), {CreatedBy: "|1 X=2 /bin/sh -c make"}}, StyleAsWritten},
		{[]v1.History{bk("ENV A=1"), bk("COPY x /x # buildkit")}, StyleExpanded},
		{[]v1.History{nop("ENV A=1"), {CreatedBy: "COPY app"}}, StyleUnknown},
		{[]v1.History{nop("FROBNICATE x")}, StyleUnknown},
	}
	for _, tc := range tests {
		if _, got := parseHistory(tc.hist); got != tc.want {
			t.Errorf("%v: style %s, want %s", tc.hist, got, tc.want)
		}
	}
}

func TestExpandWordErrors(t *testing.T) {
	lookup := func(n string) (string, varState) {
		if n == "ARG" {
			return "", varUnknown
		}
		return "", varUnset
	}
	for _, w := range []string{`$ARG`, `${ARG}`, `${ARG:-x}`, `"unterminated`, `${X`, `${X%y}`} {
		if _, _, err := expandWord(w, lookup); err == nil {
			t.Errorf("%s: no error", w)
		}
	}
	if v, _, err := expandWord(`a$ b\ c $1`, lookup); err != nil || v != "a$ b c $1" {
		t.Errorf("got %q, %v", v, err)
	}
}

func TestOSRelease(t *testing.T) {
	for v, want := range map[string]string{"12.5": "12", "3.19.1": "3.19", "bookworm-20240101": "bookworm", "2": "2", "22.04": "22"} {
		got, ok := osRelease(cfg(v1.Config{Labels: map[string]string{"org.opencontainers.image.version": v}}))
		if !ok || got != want {
			t.Errorf("%s: %q, want %q", v, got, want)
		}
	}
	if _, ok := osRelease(cfg(v1.Config{})); ok {
		t.Error("release found in an unlabelled config")
	}
}

func TestEmbeddedValueNamesTheLongestOldValue(t *testing.T) {
	app := appOn(baseV1, func(c *v1.Config) { setEnv(c, "JAVA_BIN=/opt/java/17/bin") })
	r, err := Merge(Input{Old: cfg(baseV1), App: cfg(app), New: cfg(baseV2)})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0].Message, "value of JAVA_HOME") {
		t.Errorf("warnings %+v", r.Warnings)
	}
	for _, tc := range []struct {
		s, sub string
		want   bool
	}{{"from 1", "1", true}, {"1.5", "1", false}, {"/opt/java/17/bin", "/opt/java/17", true}, {"v10", "1", false}, {"a 1", "1", true},
		// ${BASEVER}-x as BuildKit records it.
		{"1-x", "1", true}, {"x-1", "1", true}, {"v1", "1", false}, {"1_x", "1", false}} {
		if got := containsWord(tc.s, tc.sub); got != tc.want {
			t.Errorf("containsWord(%q, %q) = %v", tc.s, tc.sub, got)
		}
	}
}

func TestMergeNeedsAllConfigs(t *testing.T) {
	if _, err := Merge(Input{Old: cfg(baseV1), App: cfg(baseV1)}); err == nil {
		t.Error("no error without the new base")
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}
