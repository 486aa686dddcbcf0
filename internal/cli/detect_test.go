package cli_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
	ti "github.com/image-rebase/image-rebase/internal/testimage"
)

// Detection tests: the old base is found from the image, against the real
// registry in process.

func build(t *testing.T, parent v1.Image, steps ...ti.Step) v1.Image {
	t.Helper()
	img, err := ti.Build(parent, ti.Linux, steps...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// baseVersion builds version v of a base: the same instructions each
// version, other file contents (a patched rebuild).
func baseVersion(t *testing.T, v string) v1.Image {
	return build(t, nil, ti.Copy("COPY os /etc/os", map[string]string{"etc/os": "version " + v}), ti.Env("PATH=/bin", "V="+v))
}

// patched builds version v of a base whose history is the same in every
// version: same instructions, other file contents.
func patched(t *testing.T, v string) v1.Image {
	return build(t, nil, ti.Copy("COPY os /etc/os", map[string]string{"etc/os": "patch " + v}), ti.Env("PATH=/bin"))
}

// app builds an application on parent whose Dockerfile starts with LABEL
// FROM=from (no label when from is empty). squashed records the build as
// buildah does without --layers: one layer, every entry but the last empty.
func app(t *testing.T, parent v1.Image, from string, squashed bool) v1.Image {
	t.Helper()
	var steps []ti.Step
	if from != "" {
		steps = append(steps, ti.Label("FROM", from))
	}
	if squashed {
		steps = append(steps, ti.Step{CreatedBy: "COPY app /app"}, ti.Env("APP=1"), ti.Copy(`CMD ["/app"]`, map[string]string{"app": "app on " + from}))
	} else {
		steps = append(steps, ti.Copy("COPY app /app", map[string]string{"app": "app on " + from}), ti.Env("APP=1"), ti.Cmd("/app"))
	}
	return build(t, parent, steps...)
}

func annotate(img v1.Image, name string, digest v1.Hash) v1.Image {
	return mutate.Annotations(img, map[string]string{manifest.BaseNameAnnotation: name, manifest.BaseDigestAnnotation: digest.String()}).(v1.Image)
}

// deleteManifest removes a manifest from the registry by digest.
func deleteManifest(t *testing.T, reg *regtest.Registry, repo string, d v1.Hash) {
	t.Helper()
	ref, err := name.NewDigest(reg.Ref(repo + "@" + d.String()))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Delete(ref, remote.WithAuth(reg.Auth)); err != nil {
		t.Fatalf("deleting %s: %v", ref, err)
	}
}

type detectResult struct {
	Action  string
	After   string
	OldBase struct {
		Digest string
		Layers int
	}
	NewBase struct {
		Ref    string
		Digest string
	}
	Warnings []struct{ Code, Message string }
	Detect   struct {
		Method        string
		BaseLayers    int
		BaseEntries   int `json:"baseHistoryEntries"`
		OldBaseDigest string
		NewBase       string
		NewBaseDigest string
		Reasons       []string
	} `json:"detection"`
}

func runJSON(t *testing.T, args ...string) detectResult {
	t.Helper()
	code, out, stderr := run(t, append(args, "-o", "json")...)
	if code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, stderr)
	}
	var res detectResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	return res
}

// checkLayers checks that repoTag is newBase's layers then want's top ones.
func checkLayers(t *testing.T, reg *regtest.Registry, repoTag string, newBase v1.Image, app v1.Image, appLayers int) {
	t.Helper()
	got, _ := reg.Image(t, repoTag).Layers()
	nb, _ := newBase.Layers()
	al, _ := app.Layers()
	want := append(append([]v1.Layer{}, nb...), al[len(al)-appLayers:]...)
	if len(got) != len(want) {
		t.Fatalf("%s has %d layers, want %d", repoTag, len(got), len(want))
	}
	for i := range want {
		g, _ := got[i].Digest()
		w, _ := want[i].Digest()
		if g != w {
			t.Errorf("%s layer %d is %s, want %s", repoTag, i+1, g, w)
		}
	}
}

func TestLabelMode(t *testing.T) {
	for _, squashed := range []bool{false, true} {
		t.Run(fmt.Sprintf("squashed=%v", squashed), func(t *testing.T) {
			reg := startRegistry(t)
			h := "http://" + reg.Host
			b1, b2 := baseVersion(t, "1"), baseVersion(t, "2")
			b1d := reg.Push(t, "base:1", b1)
			a := app(t, b1, "base:1", squashed)
			reg.Push(t, "app:1", a)

			// The base has not changed: up to date, exit 0, nothing written.
			before := reg.Snapshot(t)
			code, out, stderr := run(t, h, "app:1", "--check")
			if code != 0 || !strings.Contains(out, "is up to date") || !strings.Contains(out, "base found by label FROM=base:1") {
				t.Fatalf("unchanged base: exit %d\n%s%s", code, out, stderr)
			}
			code, out, _ = run(t, h, "app:1")
			if code != 0 || !strings.Contains(out, "is up to date") {
				t.Fatalf("unchanged base: exit %d\n%s", code, out)
			}

			// base:1 is patched and the old manifest deleted: --check says a
			// rebase is due (exit 10) and writes nothing.
			b2d := reg.Push(t, "base:1", b2)
			deleteManifest(t, reg, "base", b1d)
			before = reg.Snapshot(t)
			code, out, stderr = run(t, h, "app:1", "--check")
			if code != 10 || !strings.Contains(out, "would move") || stderr != "" {
				t.Fatalf("--check: exit %d\n%s%s", code, out, stderr)
			}
			if now := reg.Snapshot(t); fmt.Sprint(now) != fmt.Sprint(before) {
				t.Fatalf("--check wrote: %v", now)
			}

			res := runJSON(t, h, "app:1")
			if res.Action != "rebased" || res.Detect.Method != "label" || res.Detect.BaseLayers != 1 || res.Detect.BaseEntries != 2 ||
				res.Detect.NewBaseDigest != b2d.String() || res.NewBase.Digest != b2d.String() || res.OldBase.Digest != "" || res.Detect.OldBaseDigest != "" {
				t.Fatalf("result %+v", res)
			}
			appLayers := 1
			checkLayers(t, reg, "app:1", b2, a, appLayers)
			cf, _ := reg.Image(t, "app:1").ConfigFile()
			if env := strings.Join(cf.Config.Env, " "); env != "PATH=/bin V=2 APP=1" {
				t.Errorf("env %q: V follows the new base, APP stays", env)
			}
			if cf.Config.Labels["FROM"] != "base:1" || len(cf.History) != 2+4 || cf.History[2].CreatedBy != "LABEL FROM=base:1" {
				t.Errorf("labels %v, history %+v", cf.Config.Labels, cf.History)
			}

			// Again: up to date.
			code, out, _ = run(t, h, "app:1", "--check")
			if code != 0 || !strings.Contains(out, "is up to date") {
				t.Fatalf("after the rebase: exit %d\n%s", code, out)
			}
		})
	}
}

func TestLabelNamingMidOfAChain(t *testing.T) {
	reg := startRegistry(t)
	h := "http://" + reg.Host
	b1, b2 := baseVersion(t, "1"), baseVersion(t, "2")
	reg.Push(t, "base:1", b1)
	mid1 := build(t, b1, ti.Label("FROM", "base:1"), ti.Copy("COPY mid /mid", map[string]string{"mid": "mid"}))
	reg.Push(t, "mid:1", mid1)
	a := build(t, mid1, ti.Label("FROM", "mid:1"), ti.Copy("COPY app /app", map[string]string{"app": "app"}))
	reg.Push(t, "app:1", a)
	// mid is rebuilt on base 2.
	mid2 := build(t, b2, ti.Label("FROM", "base:1"), ti.Copy("COPY mid /mid", map[string]string{"mid": "mid"}))
	reg.Push(t, "mid:1", mid2)

	res := runJSON(t, h, "app:1")
	if res.Action != "rebased" || res.Detect.Method != "label" || res.Detect.BaseLayers != 2 || !strings.HasSuffix(res.NewBase.Ref, "/mid:1") {
		t.Fatalf("result %+v", res)
	}
	checkLayers(t, reg, "app:1", mid2, a, 1)
	cf, _ := reg.Image(t, "app:1").ConfigFile()
	if cf.Config.Labels["FROM"] != "mid:1" {
		t.Errorf("label FROM %q, want the app's", cf.Config.Labels["FROM"])
	}
}

func TestAnnotationMode(t *testing.T) {
	reg := startRegistry(t)
	h := "http://" + reg.Host
	b1, b2 := patched(t, "1"), patched(t, "2")
	b1d := reg.Push(t, "base:1", b1)
	a := annotate(app(t, b1, "", false), reg.Ref("base:1"), b1d)
	reg.Push(t, "app:1", a)
	reg.Push(t, "app:2", a)
	b2d := reg.Push(t, "base:1", b2)

	// The old base still exists (by digest): its manifest gives the boundary.
	res := runJSON(t, h, "app:1")
	if res.Action != "rebased" || res.Detect.Method != "annotation" || res.Detect.OldBaseDigest != b1d.String() || res.OldBase.Digest != b1d.String() || res.NewBase.Digest != b2d.String() {
		t.Fatalf("result %+v", res)
	}
	checkLayers(t, reg, "app:1", b2, a, 1)
	m := reg.Image(t, "app:1")
	mf, _ := m.Manifest()
	if mf.Annotations[manifest.BaseDigestAnnotation] != b2d.String() {
		t.Errorf("annotations %v: base digest not moved to the new base", mf.Annotations)
	}
	// The result names base:1 at its new digest: up to date.
	if code, out, _ := run(t, h, "app:1", "--check"); code != 0 || !strings.Contains(out, "up to date") {
		t.Fatalf("second run: exit %d\n%s", code, out)
	}

	// The old base's manifest is gone: the boundary comes from base.name's
	// current history.
	deleteManifest(t, reg, "base", b1d)
	res = runJSON(t, h, "app:2")
	if res.Action != "rebased" || res.Detect.Method != "annotation" || res.Detect.OldBaseDigest != "" || res.Detect.BaseLayers != 1 ||
		!strings.Contains(strings.Join(res.Detect.Reasons, "\n"), "is gone from the registry") {
		t.Fatalf("result %+v", res)
	}
	checkLayers(t, reg, "app:2", b2, a, 1)
}

func TestConflictingLabelAndAnnotation(t *testing.T) {
	reg := startRegistry(t)
	h := "http://" + reg.Host
	b1, b2 := baseVersion(t, "1"), baseVersion(t, "2")
	b1d := reg.Push(t, "base:1", b1)
	reg.Push(t, "other:1", baseVersion(t, "other"))
	reg.Push(t, "app:1", annotate(app(t, b1, "base:1", false), reg.Ref("other:1"), b1d))
	reg.Push(t, "base:1", b2)
	res := runJSON(t, h, "app:1")
	if res.Action != "rebased" || res.Detect.Method != "label" || !strings.HasSuffix(res.NewBase.Ref, "/base:1") {
		t.Fatalf("result %+v", res)
	}
	if len(res.Warnings) == 0 || res.Warnings[0].Code != "base-sources-disagree" ||
		!strings.Contains(res.Warnings[0].Message, "label FROM=base:1 and annotation org.opencontainers.image.base.name="+reg.Ref("other:1")) {
		t.Fatalf("warnings %+v", res.Warnings)
	}
}

func TestLayersMode(t *testing.T) {
	reg := startRegistry(t)
	h := "http://" + reg.Host
	b1, b2 := baseVersion(t, "1"), baseVersion(t, "2")
	b1d := reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", b2)
	a := app(t, b1, "", false) // 2 base entries, then COPY, ENV, CMD
	reg.Push(t, "app:1", a)
	deleteManifest(t, reg, "base", b1d)

	before := reg.Snapshot(t)
	code, out, stderr := run(t, h, "app:1", "--layers", "5", "--to-base", "base:2")
	if code != 4 || out != "" || !strings.Contains(stderr, "--layers 5 does not fit: "+reg.Ref("app:1")+" has 5 history entries in all") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("too large: exit %d, %q %q", code, out, stderr)
	}
	if now := reg.Snapshot(t); fmt.Sprint(now) != fmt.Sprint(before) {
		t.Fatalf("registry changed")
	}
	res := runJSON(t, h, "app:1", "--layers", "3", "--to-base", "base:2")
	if res.Action != "rebased" || res.Detect.Method != "layers" || res.Detect.BaseEntries != 2 || res.Detect.BaseLayers != 1 {
		t.Fatalf("result %+v", res)
	}
	checkLayers(t, reg, "app:1", b2, a, 1)
}

func TestHistoryInference(t *testing.T) {
	reg := startRegistry(t)
	h := "http://" + reg.Host
	b1, b2 := baseVersion(t, "1"), baseVersion(t, "2")
	reg.Push(t, "base:2", b2)
	a := app(t, b1, "", false)
	reg.Push(t, "app:1", a)
	// baseVersion's ENV differs between versions (V=1, V=2): ambiguous.
	code, _, stderr := run(t, h, "app:1", "--to-base", "base:2")
	if code != 4 || !strings.Contains(stderr, "so the match is ambiguous") || !strings.Contains(stderr, "that is --layers 3") {
		t.Fatalf("exit %d, %q", code, stderr)
	}
	// Same instructions, other contents: accepted, and said how.
	s1, s2 := patched(t, "1"), patched(t, "2")
	reg.Push(t, "same:2", s2)
	a = app(t, s1, "", false)
	reg.Push(t, "app:2", a)
	code, out, stderr := run(t, h, "app:2", "--to-base", "same:2", "-v")
	if code != 0 || !strings.Contains(out, "base found by history matched against --to-base") || !strings.Contains(out, "matched exactly the image's first 2") {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	checkLayers(t, reg, "app:2", s2, a, 1)
}

func TestDetectionRefusals(t *testing.T) {
	reg := startRegistry(t)
	h := "http://" + reg.Host
	b1 := baseVersion(t, "1")
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", baseVersion(t, "2"))
	reg.Push(t, "app:1", app(t, b1, "base:1", false))
	reg.Push(t, "nolabel:1", app(t, b1, "", false))
	reg.Push(t, "gone:1", app(t, b1, "base:9", false))
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"wrong label name", []string{"app:1", "-l", "BASE"}, 4, `has no label "BASE" (its labels: FROM)`},
		{"no base recorded", []string{"nolabel:1"}, 4, "does not record its base"},
		{"label naming a missing base", []string{"gone:1"}, 3, "label FROM=base:9: reading manifest " + reg.Ref("base:9")},
		{"--layers without --to-base", []string{"app:1", "--layers", "2"}, 2, "--layers N needs --to-base NEW"},
		{"--layers and --from-base", []string{"app:1", "--layers", "2", "--from-base", "base:1", "--to-base", "base:2"}, 2, "--from-base and --layers are mutually exclusive"},
		{"-l and --from-base", []string{"app:1", "-l", "X", "--from-base", "base:1", "--to-base", "base:2"}, 2, "--from-base and -l/--label are mutually exclusive"},
		{"--layers and -l", []string{"app:1", "--layers", "2", "-l", "X", "--to-base", "base:2"}, 2, "--layers and -l/--label are mutually exclusive"},
		{"--layers 0", []string{"app:1", "--layers", "0", "--to-base", "base:2"}, 2, "N must be at least 1"},
		{"--check of a bad image", []string{"nolabel:1", "--check"}, 4, "does not record its base"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := reg.Snapshot(t)
			code, out, stderr := run(t, append([]string{h}, tt.args...)...)
			if code != tt.code || out != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tt.msg) {
				t.Errorf("exit %d (want %d), stdout %q, stderr %q (want one line containing %q)", code, tt.code, out, stderr, tt.msg)
			}
			if now := reg.Snapshot(t); fmt.Sprint(now) != fmt.Sprint(before) {
				t.Errorf("registry changed")
			}
		})
	}
}

// TestLabelModeRoundTrips: the label is in the image's config, so the new
// base can be resolved only after it: two round trips more than
// --from-base, and no request that is not needed.
func TestLabelModeRoundTrips(t *testing.T) {
	reg := startRegistry(t)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(20*time.Millisecond))
	defer proxy.Close()
	h := "http://" + proxy.Host()
	b1, b2 := baseVersion(t, "1"), baseVersion(t, "2")
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:old", b1)
	reg.Push(t, "app:1", app(t, b1, "base:1", false))
	reg.Push(t, "app:2", app(t, b1, "base:1", false))

	check := func(what string, wantRounds int, wantByClass map[string]int, args ...string) {
		t.Helper()
		proxy.Reset()
		if code, out, stderr := run(t, append([]string{h}, args...)...); code != 0 {
			t.Fatalf("%s: exit %d\n%s%s", what, code, out, stderr)
		}
		s := proxy.Stats()
		if s.RoundTrips != wantRounds || fmt.Sprint(s.ByClass) != fmt.Sprint(wantByClass) {
			t.Errorf("%s: %d round trips %v; want %d %v\n%s", what, s.RoundTrips, s.ByClass, wantRounds, wantByClass, logOf(proxy))
		}
	}
	// No ping (no credentials configured); image manifest; image config;
	// base:1 manifest; base:1 config.
	check("up to date", 4, map[string]int{"manifest": 2, "blob": 2}, "app:1")
	reg.Push(t, "base:1", b2)
	// ... base:1 config with the config upload opened; base:1 has moved
	// and no annotation names the old base by digest: base's tags, the
	// manifest of each other tag (base:old), the config of the one that
	// holds the image's bottom layers (the old base); the layer mount, the
	// config upload and the tag check; the manifest; the tag read back.
	check("rebase", 10, map[string]int{"blob": 3, "blob-upload": 3, "manifest": 6, "tags": 1}, "app:1")
	check("--from-base", 5, map[string]int{"manifest": 6, "blob": 3, "blob-upload": 3}, "app:2", "--from-base", "base:old", "--to-base", "base:1")
}

func logOf(p *proxytest.Proxy) string {
	var b strings.Builder
	for _, e := range p.Log() {
		fmt.Fprintf(&b, "  %s %s %d\n", e.Method, e.Path, e.Status)
	}
	return b.String()
}
