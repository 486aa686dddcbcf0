package ocilayout

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

type images struct{ base1, base2, app v1.Image }

func build(t *testing.T) images {
	t.Helper()
	base := func(v string) v1.Image {
		img, err := testimage.Build(nil, testimage.Linux,
			testimage.Copy("ADD rootfs /", map[string]string{"etc/os-release": "VERSION=" + v, "bin/sh": "shell " + v}),
			testimage.Env("BASE="+v))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	b1, b2 := base("1"), base("2")
	app, err := testimage.Build(b1, testimage.Linux,
		testimage.Copy("COPY app /app/", map[string]string{"app/server": "the application"}),
		testimage.Cmd("/app/server"))
	if err != nil {
		t.Fatal(err)
	}
	return images{b1, b2, app}
}

// writeLayout writes images under tags with go-containerregistry's layout
// writer (setup only).
func writeLayout(t *testing.T, dir string, tagged map[string]v1.Image) {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			t.Fatal(err)
		}
	}
	for tag, img := range tagged {
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{RefName: tag})); err != nil {
			t.Fatal(err)
		}
	}
}

// checkValid verifies that every image index.json names is complete: its
// manifest, config and layers are present with their digests.
func checkValid(t *testing.T, dir string) {
	t.Helper()
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("layout %s: %v", dir, err)
	}
	idx, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range idx.Manifests {
		img, err := ii.Image(d.Digest)
		if err != nil {
			t.Fatalf("%s: %v", d.Digest, err)
		}
		m, err := img.Manifest()
		if err != nil {
			t.Fatalf("%s: %v", d.Digest, err)
		}
		if _, err := img.ConfigFile(); err != nil {
			t.Fatalf("%s: config: %v", d.Digest, err)
		}
		for _, l := range m.Layers {
			f, err := os.Open(filepath.Join(dir, "blobs", l.Digest.Algorithm, l.Digest.Hex))
			if err != nil {
				t.Fatalf("%s: layer %s: %v", d.Digest, l.Digest, err)
			}
			h, n, err := v1.SHA256(f)
			f.Close()
			if err != nil || h != l.Digest || n != l.Size {
				t.Fatalf("%s: layer %s: content %s (%d bytes), err %v", d.Digest, l.Digest, h, n, err)
			}
		}
	}
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestRebaseWithinLayoutCopiesNothing(t *testing.T) {
	im := build(t)
	dir := t.TempDir()
	writeLayout(t, dir, map[string]v1.Image{"base-1": im.base1, "base-2": im.base2, "app-1": im.app})
	l := New(dir, Options{})
	req := engine.Request{
		Image: engine.Location{Repo: l, Tag: "app-1"},
		From:  engine.Location{Repo: l, Tag: "base-1"},
		To:    engine.Location{Repo: l, Tag: "base-2"},
	}
	req.Target = req.Image
	res, err := engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != engine.Rebased || res.Before != digestOf(t, im.app) {
		t.Fatalf("result %+v", res)
	}
	if res.Transferred != (engine.Transferred{}) {
		t.Errorf("transferred %+v within one layout, want nothing", res.Transferred)
	}
	checkValid(t, dir)
	got, ok, err := l.Resolve(context.Background(), "app-1")
	if err != nil || !ok || got != res.After {
		t.Fatalf("app-1 = %s %v %v, want %s", got, ok, err, res.After)
	}
	for tag, img := range map[string]v1.Image{"base-1": im.base1, "base-2": im.base2} {
		if got, _, _ := l.Resolve(context.Background(), tag); got != digestOf(t, img) {
			t.Errorf("%s moved to %s", tag, got)
		}
	}
	idx, _ := l.Index()
	if len(idx.Manifests) != 3 {
		t.Errorf("index.json has %d entries, want 3", len(idx.Manifests))
	}
	// The result starts with base 2's layers and keeps the app's layer.
	ii, _ := layout.ImageIndexFromPath(dir)
	img, err := ii.Image(res.After)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	want2, _ := im.base2.Layers()
	wantApp, _ := im.app.Layers()
	if d1, d2 := digest(t, layers[0]), digest(t, want2[0]); d1 != d2 || digest(t, layers[1]) != digest(t, wantApp[1]) {
		t.Errorf("layers %v", layers)
	}

	// Again: up to date, nothing written.
	before, _ := os.ReadFile(filepath.Join(dir, "index.json"))
	res, err = engine.Rebase(context.Background(), req)
	if err != nil || res.Action != engine.UpToDate {
		t.Fatalf("second run: %v %+v", err, res)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "index.json"))
	if !bytes.Equal(before, after) {
		t.Error("index.json changed on an up-to-date run")
	}
}

func digest(t *testing.T, l v1.Layer) v1.Hash {
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestRebaseFromRegistryIntoLayoutCopiesNewBase(t *testing.T) {
	im := build(t)
	reg := regtest.Start(t)
	reg.Push(t, "base:1", im.base1)
	reg.Push(t, "base:2", im.base2)
	dir := t.TempDir()
	writeLayout(t, dir, map[string]v1.Image{"app-1": im.app})
	c := registry.New(registry.Options{Insecure: []string{reg.Host}})
	parse := func(s string) engine.Location {
		loc, err := c.Parse(s, reg.Host, false)
		if err != nil {
			t.Fatal(err)
		}
		return loc
	}
	var stderr bytes.Buffer
	l := New(dir, Options{Progress: &stderr})
	req := engine.Request{
		Image:  engine.Location{Repo: l, Tag: "app-1"},
		From:   parse("base:1"),
		To:     parse("base:2"),
		Target: engine.Location{Repo: l, Tag: "app-1-rebased"},
	}
	res, err := engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	l2, _ := im.base2.Layers()
	size, _ := l2[0].Size()
	if res.Transferred.Copied != 1 || res.Transferred.CopiedBytes != size || res.Transferred.Mounted != 0 {
		t.Errorf("transferred %+v, want base 2's one layer (%d bytes) copied", res.Transferred, size)
	}
	if !strings.Contains(stderr.String(), "copying "+digest(t, l2[0]).String()[:19]) {
		t.Errorf("no progress for the copied layer: %q", stderr.String())
	}
	checkValid(t, dir)
	if got, _, _ := l.Resolve(context.Background(), "app-1"); got != digestOf(t, im.app) {
		t.Errorf("app-1 moved to %s", got)
	}
	if got, _, _ := l.Resolve(context.Background(), "app-1-rebased"); got != res.After {
		t.Errorf("app-1-rebased = %s, want %s", got, res.After)
	}

	// Again: the target already names the result, which is up to date.
	if res, err := engine.Rebase(context.Background(), req); err != nil || res.Action != engine.UpToDate {
		t.Errorf("second run: %v %+v, want up to date", err, res)
	}
	// A target that names another image needs --force.
	d, raw, err := l.Manifest(context.Background(), "app-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.PutManifest(context.Background(), "other", d, raw); err != nil {
		t.Fatal(err)
	}
	req.Target.Tag = "other"
	if _, err := engine.Rebase(context.Background(), req); !errors.As(err, new(*engine.TargetExistsError)) {
		t.Errorf("into a tag naming another image: %v, want TargetExistsError", err)
	}
}

func TestRebaseFromLayoutToRegistryKeepsMountOnlyRule(t *testing.T) {
	im := build(t)
	reg := regtest.Start(t)
	reg.Push(t, "base:1", im.base1)
	reg.Push(t, "base:2", im.base2)
	dir := t.TempDir()
	writeLayout(t, dir, map[string]v1.Image{"app-1": im.app})
	c := registry.New(registry.Options{Insecure: []string{reg.Host}})
	parse := func(s string, write bool) engine.Location {
		loc, err := c.Parse(s, reg.Host, write)
		if err != nil {
			t.Fatal(err)
		}
		return loc
	}
	l := New(dir, Options{})
	req := engine.Request{
		Image:  engine.Location{Repo: l, Tag: "app-1"},
		From:   parse("base:1", false),
		To:     parse("base:2", false),
		Target: parse("app:1", true),
	}
	_, err := engine.Rebase(context.Background(), req)
	var refused *registry.MountRefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("err = %v, want MountRefusedError", err)
	}
	if snap := reg.Snapshot(t); len(snap) != 2 {
		t.Errorf("registry holds %v after a refused run", snap)
	}
	req.AllowCopy = true
	res, err := engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Transferred.Copied != 1 || res.Transferred.Mounted != 1 {
		t.Errorf("transferred %+v, want the app layer copied and base 2's mounted", res.Transferred)
	}
	if got := digestOf(t, reg.Image(t, "app:1")); got != res.After {
		t.Errorf("app:1 = %s, want %s", got, res.After)
	}
}

// failingSource serves a layout's blobs but breaks every layer stream half
// way, as a dropped connection would.
type failingSource struct{ *Layout }

func (f failingSource) Name() string { return "failing:" + f.Layout.Name() }

func (f failingSource) OpenBlob(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	rc, err := f.Layout.OpenBlob(ctx, d)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, d.Size/2), errReader{}), rc}, nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset (injected)") }

func TestFailureMidWriteLeavesLayoutValid(t *testing.T) {
	im := build(t)
	srcDir, dir := t.TempDir(), t.TempDir()
	writeLayout(t, srcDir, map[string]v1.Image{"base-2": im.base2})
	writeLayout(t, dir, map[string]v1.Image{"base-1": im.base1, "app-1": im.app})
	indexBefore, _ := os.ReadFile(filepath.Join(dir, "index.json"))
	l := New(dir, Options{})
	req := engine.Request{
		Image: engine.Location{Repo: l, Tag: "app-1"},
		From:  engine.Location{Repo: l, Tag: "base-1"},
		To:    engine.Location{Repo: failingSource{New(srcDir, Options{})}, Tag: "base-2"},
	}
	req.Target = req.Image

	t.Run("layer stream breaks", func(t *testing.T) {
		_, err := engine.Rebase(context.Background(), req)
		if err == nil || !strings.Contains(err.Error(), "injected") {
			t.Fatalf("err = %v, want the injected failure", err)
		}
		after, _ := os.ReadFile(filepath.Join(dir, "index.json"))
		if !bytes.Equal(indexBefore, after) {
			t.Error("index.json changed")
		}
		l2, _ := im.base2.Layers()
		if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", digest(t, l2[0]).Hex)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("partial layer left under its digest: %v", err)
		}
		checkValid(t, dir)
	})

	t.Run("index.json write fails", func(t *testing.T) {
		req.To.Repo = New(srcDir, Options{})
		orig := writeIndexFile
		t.Cleanup(func() { writeIndexFile = orig })
		writeIndexFile = func(path string, data []byte) error {
			// Fail after the temporary file is written, just before the rename.
			return writeAtomic(path, func(f *os.File) error {
				f.Write(data[:len(data)/2])
				return errors.New("disk full (injected)")
			})
		}
		_, err := engine.Rebase(context.Background(), req)
		if err == nil || !strings.Contains(err.Error(), "injected") {
			t.Fatalf("err = %v, want the injected failure", err)
		}
		after, _ := os.ReadFile(filepath.Join(dir, "index.json"))
		if !bytes.Equal(indexBefore, after) {
			t.Error("index.json changed")
		}
		checkValid(t, dir)

		// The next run completes, reusing the blobs already written.
		writeIndexFile = orig
		res, err := engine.Rebase(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if res.Transferred.Copied != 0 || res.Transferred.Mounted != 1 {
			t.Errorf("transferred %+v, want the layer found in place", res.Transferred)
		}
		checkValid(t, dir)
	})
}

func TestPutManifestRefusesIncompleteImage(t *testing.T) {
	im := build(t)
	l := New(t.TempDir(), Options{})
	raw, _ := im.app.RawManifest()
	mt, _ := im.app.MediaType()
	d := v1.Descriptor{MediaType: mt, Digest: digestOf(t, im.app), Size: int64(len(raw))}
	err := l.PutManifest(context.Background(), "app", d, raw)
	if err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Fatalf("err = %v, want refusal", err)
	}
	if _, ok, _ := l.Resolve(context.Background(), "app"); ok {
		t.Error("tag written for an incomplete image")
	}
}

func TestManifestLookup(t *testing.T) {
	im := build(t)
	dir := t.TempDir()
	writeLayout(t, dir, map[string]v1.Image{"one": im.base1})
	l := New(dir, Options{})
	ctx := context.Background()
	for _, id := range []string{"one", "", digestOf(t, im.base1).String()} {
		d, _, err := l.Manifest(ctx, id)
		if err != nil || d.Digest != digestOf(t, im.base1) {
			t.Errorf("Manifest(%q) = %v, %v", id, d.Digest, err)
		}
	}
	if _, _, err := l.Manifest(ctx, "two"); !errors.As(err, new(*NotFoundError)) {
		t.Errorf("missing tag: %v", err)
	}
	writeLayout(t, dir, map[string]v1.Image{"two": im.base2})
	if _, _, err := l.Manifest(ctx, ""); err == nil || !strings.Contains(err.Error(), "holds 2 images") {
		t.Errorf("untagged with two images: %v", err)
	}
	if _, ok, err := New(filepath.Join(dir, "missing"), Options{}).Resolve(ctx, "x"); ok || err != nil {
		t.Errorf("missing layout: %v %v", ok, err)
	}
}

func TestRebaseIndexFromRegistryIntoLayout(t *testing.T) {
	reg := regtest.Start(t)
	mk := func(parent v1.Image, arch, v string) v1.Image {
		img, err := testimage.Build(parent, testimage.Platform{OS: "linux", Arch: arch},
			testimage.Copy("COPY", map[string]string{"f": arch + v}))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	index := func(imgs ...v1.Image) v1.ImageIndex {
		var adds []mutate.IndexAddendum
		for _, img := range imgs {
			cf, _ := img.ConfigFile()
			adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture}}})
		}
		return mutate.AppendManifests(empty.Index, adds...)
	}
	b1a, b1b, b2a, b2b := mk(nil, "amd64", "1"), mk(nil, "arm64", "1"), mk(nil, "amd64", "2"), mk(nil, "arm64", "2")
	reg.PushIndex(t, "base:1", index(b1a, b1b))
	reg.PushIndex(t, "base:2", index(b2a, b2b))
	reg.PushIndex(t, "app:1", index(mk(b1a, "amd64", "app"), mk(b1b, "arm64", "app")))
	c := registry.New(registry.Options{Insecure: []string{reg.Host}})
	parse := func(s string) engine.Location {
		loc, err := c.Parse(s, reg.Host, false)
		if err != nil {
			t.Fatal(err)
		}
		return loc
	}
	dir := t.TempDir()
	l := New(dir, Options{})
	res, err := engine.Rebase(context.Background(), engine.Request{Image: parse("app:1"), From: parse("base:1"), To: parse("base:2"),
		Target: engine.Location{Repo: l, Tag: "app"}})
	if err != nil {
		t.Fatal(err)
	}
	// Every layer of both platforms is copied: the layout held nothing.
	if len(res.Platforms) != 2 || res.Transferred.Copied != 4 {
		t.Errorf("platforms %d, transferred %+v", len(res.Platforms), res.Transferred)
	}
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, _ := ii.IndexManifest()
	if len(top.Manifests) != 1 || top.Manifests[0].Digest != res.After {
		t.Fatalf("index.json %+v", top.Manifests)
	}
	child, err := ii.ImageIndex(res.After)
	if err != nil {
		t.Fatal(err)
	}
	cm, _ := child.IndexManifest()
	for _, d := range cm.Manifests {
		img, err := child.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		layers, _ := img.Layers()
		for _, ly := range layers {
			rc, err := ly.Compressed()
			if err != nil {
				t.Fatalf("%s: %v", d.Platform, err)
			}
			rc.Close()
		}
	}
}
