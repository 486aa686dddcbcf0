package cli_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	ti "github.com/image-rebase/image-rebase/internal/testimage"
)

// Automatic mode when the tag the image's label names has moved on to the
// new base: the old base's config must be the real one, not a guess, so that
// values BuildKit recorded expanded (ENV PATH=/app/bin:$PATH is stored as
// the value it computed) follow the new base as a rebuild would.

const bk = "buildkit.dockerfile.v0"

// bkStep is s as BuildKit records it: the instruction without
// "/bin/sh -c #(nop)", with BuildKit's comment.
func bkStep(s ti.Step) ti.Step {
	s.Comment = bk
	return s
}

// bkBase is a base as BuildKit builds "FROM scratch; COPY; ENV PATH=...;
// WORKDIR ...": path is its PATH, v its version.
func bkBase(t *testing.T, v, path, workdir string) v1.Image {
	return build(t, nil,
		bkStep(ti.Copy("COPY os /etc/os # buildkit", map[string]string{"etc/os": "version " + v})),
		bkStep(ti.Env("PATH="+path, "V="+v)),
		bkStep(ti.Workdir(workdir)))
}

// bkApp is "FROM base; LABEL FROM=label; ENV PATH=/app/bin:$PATH; COPY"
// built by BuildKit on base, whose PATH is basePath.
func bkApp(t *testing.T, base v1.Image, label, basePath string) v1.Image {
	return build(t, base,
		bkStep(ti.Label("FROM", label)),
		bkStep(ti.Env("PATH=/app/bin:"+basePath)),
		bkStep(ti.Copy("COPY app /app/bin/app # buildkit", map[string]string{"app/bin/app": "app"})))
}

func configOf(t *testing.T, img v1.Image) *v1.ConfigFile {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf
}

func envOf(cf *v1.ConfigFile, name string) string {
	for _, e := range cf.Config.Env {
		if k, v, _ := strings.Cut(e, "="); k == name {
			return v
		}
	}
	return ""
}

func TestMovedTagOldBaseFromTags(t *testing.T) {
	const p1, p2 = "/usr/local/bin:/bin", "/opt/new/bin:/usr/local/bin:/bin"
	b1, b2 := bkBase(t, "1", p1, "/srv"), bkBase(t, "2", p2, "/srv2")
	a := bkApp(t, b1, "base:stable", p1)
	rebuilt := bkApp(t, b2, "base:stable", p2)
	want := envOf(configOf(t, rebuilt), "PATH")

	// Bases whose PATH no history entry records (set by a tool): only the
	// old base's own config tells it.
	toolBase := func(v, path string) v1.Image {
		return build(t, nil, ti.Copy("crane append", map[string]string{"etc/os": v}),
			ti.ConfigStep("", func(c *v1.Config) { c.Env = []string{"PATH=" + path}; c.WorkingDir = "/srv" + v }))
	}
	tb1, tb2 := toolBase("1", p1), toolBase("2", p2)

	t.Run("another tag holds the old base", func(t *testing.T) {
		reg := startRegistry(t)
		h := "http://" + reg.Host
		a := bkApp(t, tb1, "base:stable", p1)
		reg.Push(t, "base:0", b1) // other tags, not the old base
		reg.Push(t, "base:1", tb1)
		reg.Push(t, "base:stable", tb1)
		reg.Push(t, "app:1", a)
		reg.Push(t, "base:stable", tb2) // the tag moves to the new base

		res := runJSON(t, h, "app:1")
		if res.Action != "rebased" || len(res.Warnings) != 0 {
			t.Fatalf("result %+v", res)
		}
		if !anyContains(res.Detect.Reasons, "found among the tags of "+reg.Ref("base")+": 1") {
			t.Errorf("the reasons do not say which tag held the old base: %q", res.Detect.Reasons)
		}
		cf := configOf(t, reg.Image(t, "app:1"))
		if got := envOf(cf, "PATH"); got != want {
			t.Errorf("PATH %q, want the rebuild's %q", got, want)
		}
		if cf.Config.WorkingDir != "/srv2" {
			t.Errorf("WORKDIR %q, want the new base's", cf.Config.WorkingDir)
		}
		checkLayers(t, reg, "app:1", tb2, a, 1)
	})

	t.Run("no tag holds it: the base's history replayed", func(t *testing.T) {
		reg := startRegistry(t)
		h := "http://" + reg.Host
		reg.Push(t, "base:stable", b1)
		reg.Push(t, "app:1", a)
		reg.Push(t, "base:stable", b2)

		res := runJSON(t, h, "app:1")
		if res.Action != "rebased" || len(res.Warnings) != 0 {
			t.Fatalf("result %+v", res)
		}
		if !anyContains(res.Detect.Reasons, "no tag of "+reg.Ref("base")+" holds the old base") || !anyContains(res.Detect.Reasons, "replayed, give Env:PATH") {
			t.Errorf("reasons %q", res.Detect.Reasons)
		}
		if got := envOf(configOf(t, reg.Image(t, "app:1")), "PATH"); got != want {
			t.Errorf("PATH %q, want the rebuild's %q", got, want)
		}
	})

	t.Run("nothing tells the old value: warned, --strict refuses", func(t *testing.T) {
		reg := startRegistry(t)
		h := "http://" + reg.Host
		reg.Push(t, "base:stable", tb1)
		reg.Push(t, "app:1", bkApp(t, tb1, "base:stable", p1))
		reg.Push(t, "base:stable", tb2)

		before := reg.Snapshot(t)
		code, out, _ := run(t, h, "app:1", "--strict", "-o", "json")
		if code != 4 || !strings.Contains(out, "old-base-unknown") || !strings.Contains(out, "ENV PATH=/app/bin:"+p1) {
			t.Fatalf("--strict: exit %d\n%s", code, out)
		}
		if now := reg.Snapshot(t); len(now) != len(before) {
			t.Fatalf("--strict wrote")
		}
	})
}

// An image built by BuildKit is pushed as an index: the platform image and
// an attestation manifest, even for one platform. Automatic mode finds the
// base of each platform image.
func TestAutomaticModeOnIndex(t *testing.T) {
	const p1, p2 = "/usr/local/bin:/bin", "/opt/new/bin:/usr/local/bin:/bin"
	reg := startRegistry(t)
	h := "http://" + reg.Host
	b1, b2 := bkBase(t, "1", p1, "/srv"), bkBase(t, "2", p2, "/srv2")
	a := bkApp(t, b1, "base:stable", p1)
	ad, _ := a.Digest()
	att := build(t, nil, ti.Copy("", map[string]string{"provenance.json": "{}"}))
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: a, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"},
			Annotations: map[string]string{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": ad.String()}}})
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:stable", b1)
	reg.PushIndex(t, "app:1", idx)

	code, out, stderr := run(t, h, "app:1", "--check")
	if code != 0 || !strings.Contains(out, "up to date") {
		t.Fatalf("--check before the base moves: exit %d\n%s%s", code, out, stderr)
	}
	reg.Push(t, "base:stable", b2)
	before := reg.Snapshot(t)
	if code, out, stderr := run(t, h, "app:1", "--check"); code != 10 {
		t.Fatalf("--check after the base moved: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, stderr := run(t, h, "app:1", "--dry-run", "-o", "json"); code != 0 || !strings.Contains(out, `"would-rebase"`) {
		t.Fatalf("--dry-run: exit %d\n%s%s", code, out, stderr)
	}
	if now := reg.Snapshot(t); len(now) != len(before) || now["app:1"] != before["app:1"] {
		t.Fatalf("--check or --dry-run wrote")
	}

	code, out, stderr = run(t, h, "app:1", "-o", "json")
	if code != 0 || !strings.Contains(out, `"rebased"`) || !strings.Contains(out, "attestation-dropped") {
		t.Fatalf("rebase: exit %d\n%s%s", code, out, stderr)
	}
	im, err := reg.Index(t, "app:1").IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Platform.Architecture != "amd64" {
		t.Fatalf("index %+v, want the platform image alone", im.Manifests)
	}
	got := reg.Image(t, "app@"+im.Manifests[0].Digest.String())
	if p := envOf(configOf(t, got), "PATH"); p != "/app/bin:"+p2 {
		t.Errorf("PATH %q", p)
	}
	checkLayers(t, reg, "app@"+im.Manifests[0].Digest.String(), b2, a, 1)
	if code, out, _ := run(t, h, "app:1", "--check"); code != 0 {
		t.Fatalf("--check after the rebase: exit %d\n%s", code, out)
	}
}

// The platforms of an index must name one base.
func TestAutomaticIndexPlatformsDisagree(t *testing.T) {
	reg := startRegistry(t)
	h := "http://" + reg.Host
	b := bkBase(t, "1", "/bin", "/")
	amd := bkApp(t, b, "base:1", "/bin")
	armBase, err := ti.Build(nil, ti.Platform{OS: "linux", Arch: "arm64"}, bkStep(ti.Copy("COPY", map[string]string{"os": "arm"})))
	if err != nil {
		t.Fatal(err)
	}
	arm, err := ti.Build(armBase, ti.Platform{OS: "linux", Arch: "arm64"}, bkStep(ti.Label("FROM", "other:1")), bkStep(ti.Copy("COPY", map[string]string{"app": "arm"})))
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, "base:1", b)
	reg.Push(t, "other:1", armBase)
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	reg.PushIndex(t, "app:1", idx)
	before := reg.Snapshot(t)
	code, out, stderr := run(t, h, "app:1")
	if code != 4 || out != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "disagree about their base") ||
		!strings.Contains(stderr, "linux/amd64 names "+reg.Ref("base:1")) || !strings.Contains(stderr, "linux/arm64 names "+reg.Ref("other:1")) {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	if now := reg.Snapshot(t); now["app:1"] != before["app:1"] {
		t.Fatal("written")
	}
}

func anyContains(list []string, s string) bool {
	for _, l := range list {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// An explicit rebase moves the label that names the base to the new base
// (and the history entry that set it, and those recorded with the old
// base's values), so that the next automatic rebase keeps it there.
func TestExplicitRebaseMovesTheLabel(t *testing.T) {
	const p1, p2 = "/usr/local/bin:/bin", "/opt/new/bin:/usr/local/bin:/bin"
	at := func(day int) ti.Step { return ti.At(time.Date(2026, 1, day, 0, 0, 0, 0, time.UTC)) }
	b1 := build(t, nil, append([]ti.Step{at(1)}, bkStep(ti.Copy("COPY os /etc/os # buildkit", map[string]string{"etc/os": "1"})), bkStep(ti.Env("PATH="+p1)), bkStep(ti.Workdir("/srv")))...)
	b2 := build(t, nil, append([]ti.Step{at(2)}, bkStep(ti.Copy("COPY os /etc/os # buildkit", map[string]string{"etc/os": "2"})), bkStep(ti.Env("PATH="+p2)), bkStep(ti.Workdir("/srv2")))...)
	a := build(t, b1, bkStep(ti.Label("FROM", "base:1")), bkStep(ti.Env("PATH=/app/bin:"+p1)), bkStep(ti.Workdir("/srv/app")),
		bkStep(ti.Copy("COPY app /app/bin/app # buildkit", map[string]string{"app/bin/app": "app"})))
	// The rebuild from the same Dockerfile, edited to name base:2.
	rebuilt := build(t, b2, bkStep(ti.Label("FROM", "base:2")), bkStep(ti.Env("PATH=/app/bin:"+p2)), bkStep(ti.Workdir("/srv2/app")),
		bkStep(ti.Copy("COPY app /app/bin/app # buildkit", map[string]string{"app/bin/app": "app"})))

	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep-label=%v", keep), func(t *testing.T) {
			reg := startRegistry(t)
			h := "http://" + reg.Host
			reg.Push(t, "base:1", b1)
			reg.Push(t, "base:2", b2)
			reg.Push(t, "app:1", a)
			args := []string{h, "app:1", "--from-base", "base:1", "--to-base", "base:2", "-o", "json"}
			if keep {
				args = append(args, "--keep-label")
			}
			code, out, stderr := run(t, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s%s", code, out, stderr)
			}
			cf, want := configOf(t, reg.Image(t, "app:1")), configOf(t, rebuilt)
			if keep {
				if cf.Config.Labels["FROM"] != "base:1" || !strings.Contains(out, "label-kept") {
					t.Fatalf("--keep-label: label %q\n%s", cf.Config.Labels["FROM"], out)
				}
			} else {
				if cf.Config.Labels["FROM"] != "base:2" || strings.Contains(out, "label-kept") {
					t.Fatalf("label %q, want base:2, without label-kept\n%s", cf.Config.Labels["FROM"], out)
				}
				var got, wantHist []string
				for _, h := range cf.History {
					got = append(got, h.CreatedBy)
				}
				for _, h := range want.History {
					wantHist = append(wantHist, h.CreatedBy)
				}
				if fmt.Sprint(got) != fmt.Sprint(wantHist) {
					t.Errorf("history\n %q\nwant the rebuild's\n %q", got, wantHist)
				}
			}
			if envOf(cf, "PATH") != envOf(want, "PATH") || cf.Config.WorkingDir != want.Config.WorkingDir {
				t.Errorf("PATH %q WORKDIR %q, want the rebuild's %q %q", envOf(cf, "PATH"), cf.Config.WorkingDir, envOf(want, "PATH"), want.Config.WorkingDir)
			}

			// The next automatic rebase: up to date, or (label kept) a
			// warning that it moves the image back onto the older base.
			code, out, stderr = run(t, h, "app:1", "--dry-run", "-o", "json")
			switch {
			case code != 0:
				t.Fatalf("automatic: exit %d: %s%s", code, out, stderr)
			case !keep && !strings.Contains(out, `"up-to-date"`):
				t.Errorf("automatic after the explicit rebase: want up to date\n%s", out)
			case keep && (!strings.Contains(out, "base-older") || !strings.Contains(out, "label FROM=base:1")):
				t.Errorf("automatic after --keep-label: want a base-older warning naming the label\n%s", out)
			}
		})
	}
}

// Images not built from a Dockerfile (crane, umoci, buildah --omit-history)
// may carry the label without any history entry: the boundary comes from
// the layers of a base tag, and the error says what the label lacks.
func TestLabelWithoutHistory(t *testing.T) {
	b1, b2 := baseVersion(t, "1"), baseVersion(t, "2")
	// A tool appends a layer and sets the label and an entrypoint: no
	// history at all.
	noHistory := func(base v1.Image) v1.Image {
		img := build(t, base, ti.Copy("", map[string]string{"app": "app"}), ti.ConfigStep("", func(c *v1.Config) {
			if c.Labels == nil {
				c.Labels = map[string]string{}
			}
			c.Labels["FROM"] = "base:stable"
			c.Entrypoint = []string{"/app"}
		}))
		cf := configOf(t, img).DeepCopy()
		cf.History = nil
		img, err := mutate.ConfigFile(img, cf)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	a := noHistory(b1)

	t.Run("a tag holds the old base", func(t *testing.T) {
		reg := startRegistry(t)
		h := "http://" + reg.Host
		reg.Push(t, "base:1", b1)
		reg.Push(t, "base:stable", b2)
		reg.Push(t, "app:1", a)
		res := runJSON(t, h, "app:1")
		if res.Action != "rebased" || res.Detect.BaseLayers != 1 {
			t.Fatalf("result %+v", res)
		}
		checkLayers(t, reg, "app:1", b2, a, 1)
		cf := configOf(t, reg.Image(t, "app:1"))
		if envOf(cf, "V") != "2" || cf.Config.Labels["FROM"] != "base:stable" || len(cf.Config.Entrypoint) != 1 {
			t.Errorf("config %+v", cf.Config)
		}
	})
	t.Run("none does", func(t *testing.T) {
		reg := startRegistry(t)
		h := "http://" + reg.Host
		reg.Push(t, "base:stable", b2)
		reg.Push(t, "app:1", a)
		before := reg.Snapshot(t)
		code, out, stderr := run(t, h, "app:1")
		if code != 4 || out != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "label FROM=base:stable names its base, but no history entry records it") ||
			!strings.Contains(stderr, "no tag of "+reg.Ref("base")+" holds the old base") {
			t.Fatalf("exit %d\n%s%s", code, out, stderr)
		}
		if now := reg.Snapshot(t); fmt.Sprint(now) != fmt.Sprint(before) {
			t.Fatal("written")
		}
	})
}

// The result's base annotations name the new base as a registry serves it,
// also when the base is an index (not "base:2 [linux/amd64]"), so that the
// next automatic rebase follows them.
func TestBaseAnnotationsOfAnIndexBase(t *testing.T) {
	reg := startRegistry(t)
	h := "http://" + reg.Host
	idx := func(b v1.Image) v1.ImageIndex {
		return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
			mutate.IndexAddendum{Add: b, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	}
	b1, b2, b3 := bkBase(t, "1", "/bin", "/"), bkBase(t, "2", "/bin", "/"), bkBase(t, "3", "/bin", "/")
	reg.PushIndex(t, "base:1", idx(b1))
	reg.PushIndex(t, "base:2", idx(b2))
	// No label: the annotations are all the next rebase has.
	a := build(t, b1, bkStep(ti.Copy("COPY app /app # buildkit", map[string]string{"app": "app"})))
	reg.Push(t, "app:1", a)
	if code, out, stderr := run(t, h, "app:1", "--from-base", "base:1", "--to-base", "base:2"); code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, stderr)
	}
	m, err := reg.Image(t, "app:1").Manifest()
	if err != nil {
		t.Fatal(err)
	}
	b2d, _ := b2.Digest()
	if got := m.Annotations[manifest.BaseNameAnnotation]; got != reg.Ref("base:2") || m.Annotations[manifest.BaseDigestAnnotation] != b2d.String() {
		t.Fatalf("annotations %v, want base.name %s and base.digest %s (the platform image)", m.Annotations, reg.Ref("base:2"), b2d)
	}
	reg.PushIndex(t, "base:2", idx(b3))
	res := runJSON(t, h, "app:1")
	if res.Action != "rebased" || res.Detect.Method != "annotation" || res.Detect.OldBaseDigest != b2d.String() || res.NewBase.Ref != reg.Ref("base:2") {
		t.Fatalf("second rebase by the annotations: %+v", res)
	}
	checkLayers(t, reg, "app:1", b3, a, 1)
}

// LABEL FROM set after instructions of the application's: its history entry
// is not the boundary. A base tag that holds the image's bottom layers
// shows where the base ends; without one, the boundary is warned.
func TestLabelNotFirst(t *testing.T) {
	const p1, p2 = "/usr/local/bin:/bin", "/opt/new/bin:/usr/local/bin:/bin"
	b1, b2 := bkBase(t, "1", p1, "/srv"), bkBase(t, "2", p2, "/srv2")
	a := build(t, b1, bkStep(ti.Env("PATH=/app/bin:"+p1)), bkStep(ti.Copy("COPY app /app/bin/app # buildkit", map[string]string{"app/bin/app": "app"})),
		bkStep(ti.Label("FROM", "base:stable")), bkStep(ti.Cmd("/app/bin/app")))

	t.Run("a tag holds the old base", func(t *testing.T) {
		reg := startRegistry(t)
		h := "http://" + reg.Host
		reg.Push(t, "base:1", b1)
		reg.Push(t, "app:1", a)
		reg.Push(t, "base:stable", b2)
		res := runJSON(t, h, "app:1")
		if res.Action != "rebased" || len(res.Warnings) != 1 || res.Warnings[0].Code != "label-not-first" {
			t.Fatalf("result %+v", res)
		}
		checkLayers(t, reg, "app:1", b2, a, 1)
		if p := envOf(configOf(t, reg.Image(t, "app:1")), "PATH"); p != "/app/bin:"+p2 {
			t.Errorf("PATH %q", p)
		}
	})
	t.Run("none does", func(t *testing.T) {
		reg := startRegistry(t)
		h := "http://" + reg.Host
		reg.Push(t, "app:1", a)
		reg.Push(t, "base:stable", b2)
		before := reg.Snapshot(t)
		code, out, _ := run(t, h, "app:1", "--strict", "-o", "json")
		if code != 4 || !strings.Contains(out, "label-boundary-unverified") {
			t.Fatalf("exit %d\n%s", code, out)
		}
		if now := reg.Snapshot(t); fmt.Sprint(now) != fmt.Sprint(before) {
			t.Fatal("written")
		}
	})
}

// Looking among a multi-platform base's tags reads each tag's index and
// the platform image's manifest, and a config only for the one found: the
// other tags' configs are not read.
func TestTagSearchOnIndexBasesReadsNoOtherConfigs(t *testing.T) {
	reg := startRegistry(t)
	proxy := proxytest.Start(reg.Host)
	defer proxy.Close()
	h := "http://" + proxy.Host()
	idx := func(b v1.Image) v1.ImageIndex {
		return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
			mutate.IndexAddendum{Add: b, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	}
	b1 := bkBase(t, "1", "/bin", "/")
	reg.PushIndex(t, "base:1", idx(b1))
	for _, v := range []string{"0", "x", "y"} {
		reg.PushIndex(t, "base:"+v, idx(bkBase(t, v, "/bin", "/")))
	}
	reg.PushIndex(t, "base:stable", idx(bkBase(t, "2", "/bin", "/")))
	reg.Push(t, "app:1", bkApp(t, b1, "base:stable", "/bin"))
	proxy.Reset()
	res := runJSON(t, h, "app:1")
	if res.Action != "rebased" || !anyContains(res.Detect.Reasons, "found among the tags of "+proxy.Host()+"/base: 1 (") {
		t.Fatalf("result %+v", res)
	}
	// Configs: the image's, base:stable's platform image's, base:1's.
	if n := proxy.Stats().ByClass["blob"]; n != 3 {
		t.Errorf("%d blob reads, want 3 configs\n%s", n, logOf(proxy))
	}
}

// The old base's tag may hold a copy compressed otherwise (skopeo
// --dest-compress-format zstd): its diff_ids match the image's.
func TestTagSearchFindsARecompressedOldBase(t *testing.T) {
	reg := startRegistry(t)
	h := "http://" + reg.Host
	base := func(v string, c ti.Compression) v1.Image {
		return build(t, nil, bkStep(ti.Copy("COPY os /etc/os # buildkit", map[string]string{"etc/os": "version " + v}).Compressed(c)),
			bkStep(ti.Env("PATH=/usr/local/bin:/bin")), bkStep(ti.Workdir("/srv"+v)))
	}
	b1 := base("1", ti.Gzip)
	reg.Push(t, "base:0", base("0", ti.Zstd))
	reg.Push(t, "base:1-zstd", base("1", ti.Zstd)) // the old base, re-compressed
	reg.Push(t, "base:stable", base("2", ti.Gzip))
	a := bkApp(t, b1, "base:stable", "/usr/local/bin:/bin")
	reg.Push(t, "app:1", a)
	res := runJSON(t, h, "app:1")
	if res.Action != "rebased" || !anyContains(res.Detect.Reasons, "found among the tags of "+reg.Ref("base")+": 1-zstd") {
		t.Fatalf("result %+v", res)
	}
	if wd := configOf(t, reg.Image(t, "app:1")).Config.WorkingDir; wd != "/srv2" {
		t.Errorf("WORKDIR %q, want the new base's (the old base's config was read)", wd)
	}
}
