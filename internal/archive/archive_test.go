package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/ocilayout"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

type images struct{ base1, base2, app v1.Image }

func build(t *testing.T, family string) images {
	t.Helper()
	base := func(v string) v1.Image {
		img, err := testimage.Build(testimage.Scratch(family), testimage.Linux,
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

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// tarDir tars a directory into file (setup: an oci-archive from a layout).
func tarDir(t *testing.T, dir, file string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		tw.WriteHeader(&tar.Header{Name: rel, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg})
		tw.Write(b)
		return nil
	})
	tw.Close()
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// untar extracts an archive into a new directory.
func untar(t *testing.T, file string) string {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		b, _ := io.ReadAll(tr)
		os.WriteFile(p, b, 0o644)
	}
}

func ociArchive(t *testing.T, tagged map[string]v1.Image) string {
	t.Helper()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for tag, img := range tagged {
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{ocilayout.RefName: tag})); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(t.TempDir(), "images.tar")
	tarDir(t, dir, file)
	return file
}

func TestOCIArchiveRebaseInPlace(t *testing.T) {
	im := build(t, "oci")
	file := ociArchive(t, map[string]v1.Image{"base-1": im.base1, "base-2": im.base2, "app": im.app})
	a := NewOCI(file, Options{})
	defer a.Close()
	req := engine.Request{
		Image: engine.Location{Repo: a, Tag: "app"},
		From:  engine.Location{Repo: a, Tag: "base-1"},
		To:    engine.Location{Repo: a, Tag: "base-2"},
	}
	req.Target = req.Image
	res, err := engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != engine.Rebased || res.Transferred.Copied != 0 {
		t.Fatalf("result %+v", res)
	}
	if got, ok, err := NewOCI(file, Options{}).Resolve(context.Background(), "app"); err != nil || !ok || got != res.After {
		t.Fatalf("app = %s %v %v, want %s", got, ok, err, res.After)
	}
	// The archive is a valid layout: go-containerregistry reads every
	// image, the old app manifest is gone, the other tags are kept.
	dir := untar(t, file)
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := ii.IndexManifest()
	tags := map[string]v1.Hash{}
	for _, d := range idx.Manifests {
		img, err := ii.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		layers, _ := img.Layers()
		for _, l := range layers {
			rc, err := l.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			h, _, _ := v1.SHA256(rc)
			if dg, _ := l.Digest(); h != dg {
				t.Errorf("layer %s has content %s", dg, h)
			}
		}
		tags[d.Annotations[ocilayout.RefName]] = d.Digest
	}
	if tags["app"] != res.After || tags["base-1"] != digestOf(t, im.base1) || tags["base-2"] != digestOf(t, im.base2) || len(tags) != 3 {
		t.Errorf("tags %v", tags)
	}
	if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", digestOf(t, im.app).Hex)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the replaced manifest is still in the archive: %v", err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".*"))
	if len(leftovers) > 0 {
		t.Errorf("left behind: %v", leftovers)
	}
}

// dockerArchive writes a docker-archive with go-containerregistry's tarball
// writer (compressed layer files), for setup.
func dockerArchive(t *testing.T, tagged map[string]v1.Image) string {
	t.Helper()
	refs := map[name.Reference]v1.Image{}
	for tag, img := range tagged {
		ref, err := name.NewTag(tag)
		if err != nil {
			t.Fatal(err)
		}
		refs[ref] = img
	}
	file := filepath.Join(t.TempDir(), "save.tar")
	if err := tarball.MultiRefWriteToFile(file, refs); err != nil {
		t.Fatal(err)
	}
	return file
}

func TestDockerArchiveWithBaseFromRegistry(t *testing.T) {
	im := build(t, "docker")
	reg := regtest.Start(t)
	reg.Push(t, "base:2", im.base2)
	file := dockerArchive(t, map[string]v1.Image{"app:1": im.app, "base:1": im.base1})
	c := registry.New(registry.Options{Insecure: []string{reg.Host}})
	to, err := c.Parse("base:2", reg.Host, false)
	if err != nil {
		t.Fatal(err)
	}
	a := NewDocker(file, Options{})
	defer a.Close()
	req := engine.Request{
		Image:  engine.Location{Repo: a, Tag: "app:1"},
		From:   engine.Location{Repo: a, Tag: "base:1"},
		To:     to,
		Target: engine.Location{Repo: a, Tag: "app:2"},
	}
	res, err := engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	l2, _ := im.base2.Layers()
	size, _ := l2[0].Size()
	if res.Transferred.Copied != 1 || res.Transferred.CopiedBytes != size {
		t.Errorf("transferred %+v, want base 2's layer (%d bytes) copied", res.Transferred, size)
	}
	// go-containerregistry loads the result; its layers' contents match
	// the config's diff_ids; app:1 and base:1 are still there.
	img, err := tarball.ImageFromPath(file, ptr(name.MustParseReference("app:2").(name.Tag)))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.Env[len(cf.Config.Env)-1] != "BASE=2" && !strings.Contains(strings.Join(cf.Config.Env, " "), "BASE=2") {
		t.Errorf("env %v", cf.Config.Env)
	}
	layers, _ := img.Layers()
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		h, _, _ := v1.SHA256(rc)
		if h != cf.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: content %s, diff_id %s", i, h, cf.RootFS.DiffIDs[i])
		}
	}
	want2, _ := l2[0].DiffID()
	if cf.RootFS.DiffIDs[0] != want2 {
		t.Errorf("first layer %s, want base 2's %s", cf.RootFS.DiffIDs[0], want2)
	}
	for _, tag := range []string{"app:1", "base:1"} {
		ref, _ := name.NewTag(tag)
		if _, err := tarball.ImageFromPath(file, &ref); err != nil {
			t.Errorf("%s: %v", tag, err)
		}
	}
	// Read back through the Docker repo: app:2 is on base 2.
	b := NewDocker(file, Options{})
	if _, ok, err := b.Resolve(context.Background(), "docker.io/library/app:2"); !ok || err != nil {
		t.Errorf("app:2 not found: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestDockerArchiveToLayoutAndRefusedIndex(t *testing.T) {
	im := build(t, "docker")
	file := dockerArchive(t, map[string]v1.Image{"app:1": im.app, "base:1": im.base1, "base:2": im.base2})
	a := NewDocker(file, Options{})
	dir := t.TempDir()
	l := ocilayout.New(dir, ocilayout.Options{})
	req := engine.Request{
		Image:  engine.Location{Repo: a, Tag: "app:1"},
		From:   engine.Location{Repo: a, Tag: "base:1"},
		To:     engine.Location{Repo: a, Tag: "base:2"},
		Target: engine.Location{Repo: l, Tag: "app"},
	}
	res, err := engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Transferred.Copied != 2 {
		t.Errorf("transferred %+v, want base 2's and the app's layers copied", res.Transferred)
	}
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	img, err := ii.Image(res.After)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.ConfigFile(); err != nil {
		t.Fatal(err)
	}

	// An index cannot go into a docker-archive; the archive is untouched.
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.DockerManifestList),
		mutate.IndexAddendum{Add: im.app, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	raw, _ := idx.RawManifest()
	d, _ := idx.Digest()
	before, _ := os.ReadFile(file)
	err = a.PutManifest(context.Background(), "multi:1", v1.Descriptor{MediaType: types.DockerManifestList, Digest: d, Size: int64(len(raw))}, raw)
	if err == nil || !strings.Contains(err.Error(), "single-platform") {
		t.Errorf("index into docker-archive: %v", err)
	}
	after, _ := os.ReadFile(file)
	if !bytes.Equal(before, after) {
		t.Error("archive changed")
	}
}

// failingSource breaks every blob stream half way.
type failingSource struct{ engine.Repo }

func (f failingSource) OpenBlob(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	rc, err := f.Repo.(engine.BlobOpener).OpenBlob(ctx, d)
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

func TestFailureMidWriteLeavesArchivesUnchanged(t *testing.T) {
	for _, kind := range []string{"oci-archive", "docker-archive"} {
		t.Run(kind, func(t *testing.T) {
			im := build(t, "docker")
			srcDir := t.TempDir()
			p, _ := layout.Write(srcDir, empty.Index)
			p.AppendImage(im.base2, layout.WithAnnotations(map[string]string{ocilayout.RefName: "base-2"}))
			var a interface {
				engine.WritableRepo
				Close() error
			}
			var file string
			var app, base string
			if kind == "oci-archive" {
				file, app, base = ociArchive(t, map[string]v1.Image{"app": im.app, "base-1": im.base1}), "app", "base-1"
				a = NewOCI(file, Options{})
			} else {
				file, app, base = dockerArchive(t, map[string]v1.Image{"app:1": im.app, "base:1": im.base1}), "app:1", "base:1"
				a = NewDocker(file, Options{})
			}
			before, _ := os.ReadFile(file)
			req := engine.Request{
				Image: engine.Location{Repo: a, Tag: app},
				From:  engine.Location{Repo: a, Tag: base},
				To:    engine.Location{Repo: failingSource{ocilayout.New(srcDir, ocilayout.Options{})}, Tag: "base-2"},
			}
			req.Target = req.Image
			_, err := engine.Rebase(context.Background(), req)
			if err == nil || !strings.Contains(err.Error(), "injected") {
				t.Fatalf("err = %v, want the injected failure", err)
			}
			a.Close()
			after, _ := os.ReadFile(file)
			if !bytes.Equal(before, after) {
				t.Error("archive changed")
			}
			entries, _ := os.ReadDir(filepath.Dir(file))
			if len(entries) != 1 {
				t.Errorf("left behind beside the archive: %v", entries)
			}
		})
	}
}

// dockerSave builds what `docker save app:1` gives: the application and
// its base's layers stored as plain tars, their digests the diff_ids.
func dockerSave(t *testing.T) (file string, app v1.Image) {
	t.Helper()
	plain := testimage.Uncompressed
	b1, err := testimage.Build(testimage.Scratch("docker"), testimage.Linux,
		testimage.Copy("ADD rootfs /", map[string]string{"etc/os-release": "VERSION=1", "bin/sh": "shell 1"}).Compressed(plain),
		testimage.Env("BASE=1"))
	if err != nil {
		t.Fatal(err)
	}
	app, err = testimage.Build(b1, testimage.Linux,
		testimage.Copy("COPY app /app/", map[string]string{"app/server": "the application"}).Compressed(plain),
		testimage.Cmd("/app/server"))
	if err != nil {
		t.Fatal(err)
	}
	return dockerArchive(t, map[string]v1.Image{"app:1": app}), app
}

// TestDockerSaveAppOntoRegistryBases: a docker save of an application,
// rebased onto bases in a registry (gzip layers): the old base is matched
// by diff_id; the result goes into the registry (the application's own
// layers uploaded, only with AllowCopy, and reported) or into the archive
// (the new base's layers decompressed into it).
func TestDockerSaveAppOntoRegistryBases(t *testing.T) {
	im := build(t, "oci") // base:1 and base:2 as a registry holds them (gzip)
	reg := regtest.Start(t)
	reg.Push(t, "base:1", im.base1)
	reg.Push(t, "base:2", im.base2)
	file, app := dockerSave(t)
	c := registry.New(registry.Options{Insecure: []string{reg.Host}})
	loc := func(s string) engine.Location {
		l, err := c.Parse(s, reg.Host, false)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a := NewDocker(file, Options{})
	defer a.Close()
	appLayers, _ := app.Layers()
	appLayer, _ := appLayers[1].Digest()
	appSize, _ := appLayers[1].Size()
	base2Layers, _ := im.base2.Layers()
	base2Diff, _ := base2Layers[0].DiffID()
	req := engine.Request{Image: engine.Location{Repo: a, Tag: "app:1"}, From: loc("base:1"), To: loc("base:2"), Target: loc("team/app:1")}

	// Into the registry: the application's layer exists only in the
	// archive, so it is uploaded, and only when copies are allowed.
	_, err := engine.Rebase(context.Background(), req)
	var mr *registry.MountRefusedError
	if !errors.As(err, &mr) || mr.Digest != appLayer || !mr.Local || !strings.Contains(err.Error(), "exists only in docker-archive:"+file+", not in a registry") || !strings.Contains(err.Error(), "--allow-copy to upload") {
		t.Fatalf("without AllowCopy: %v; want the refusal to upload the application's layer %s from the archive", err, appLayer)
	}
	if _, ok := reg.Digest(t, "team/app:1"); ok {
		t.Fatal("team/app:1 written by a refused rebase")
	}
	req.AllowCopy = true
	res, err := engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != engine.Rebased || res.Transferred != (engine.Transferred{Mounted: 1, Copied: 1, CopiedBytes: appSize}) {
		t.Errorf("result %s, transferred %+v: want base 2's layer mounted and the application's (%d bytes) uploaded", res.Action, res.Transferred, appSize)
	}
	got := reg.Image(t, "team/app:1")
	if cf, err := got.ConfigFile(); err != nil || cf.RootFS.DiffIDs[0] != base2Diff || !strings.Contains(strings.Join(cf.Config.Env, " "), "BASE=2") {
		t.Errorf("result config %+v (%v): want base 2's layer and env", cf, err)
	}
	if d, _ := got.Digest(); d != res.After {
		t.Errorf("team/app:1 is %s, result says %s", d, res.After)
	}

	// Into the archive: base 2's layer is decompressed into it.
	req.Target = engine.Location{Repo: a, Tag: "app:2"}
	res, err = engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	base2Size, _ := base2Layers[0].Size()
	if res.Transferred != (engine.Transferred{Copied: 1, CopiedBytes: base2Size}) {
		t.Errorf("transferred %+v: want base 2's layer copied, the application's already there", res.Transferred)
	}
	img, err := tarball.ImageFromPath(file, ptr(name.MustParseReference("app:2").(name.Tag)))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		h, _, _ := v1.SHA256(rc)
		rc.Close()
		if h != cf.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: content %s, diff_id %s", i+1, h, cf.RootFS.DiffIDs[i])
		}
	}
	if cf.RootFS.DiffIDs[0] != base2Diff {
		t.Errorf("first layer %s, want base 2's %s", cf.RootFS.DiffIDs[0], base2Diff)
	}
}
