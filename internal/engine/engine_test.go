package engine_test

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

func startRegistry(t *testing.T) string { return regtest.Start(t).Host }

func layerOf(t *testing.T, files map[string]string) v1.Layer {
	l, err := testimage.Layer(files, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func push(t *testing.T, ref string, img v1.Image) v1.Hash {
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return d
}

func TestRebaseInRealRegistry(t *testing.T) {
	host := startRegistry(t)
	ociBase := mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1)
	mk := func(parent v1.Image, env []string, files ...map[string]string) v1.Image {
		img := parent
		for _, f := range files {
			var err error
			img, err = mutate.Append(img, mutate.Addendum{Layer: layerOf(t, f), History: v1.History{CreatedBy: "COPY"}})
			if err != nil {
				t.Fatal(err)
			}
		}
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", "amd64"
		cf.Config.Env = env
		img, _ = mutate.ConfigFile(img, cf)
		return img
	}
	b1 := mk(ociBase, []string{"V=1"}, map[string]string{"etc/os": "one"})
	b2 := mk(ociBase, []string{"V=2"}, map[string]string{"etc/os": "two"})
	app := mk(b1, []string{"V=1", "APP=x"}, map[string]string{"app/bin": "app"})
	push(t, host+"/base:1", b1)
	push(t, host+"/base:2", b2)
	before := push(t, host+"/app:1", app)

	c := registry.New(registry.Options{Insecure: []string{host}})
	loc := func(s string) engine.Location {
		l, err := c.Parse(s, host, true)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	req := engine.Request{Image: loc("app:1"), From: loc("base:1"), To: loc("base:2")}
	req.Target = req.Image
	res, err := engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != engine.Rebased || res.Before != before || res.Transferred.Mounted != 1 {
		t.Fatalf("result %+v", res)
	}
	r, _ := name.ParseReference(host + "/app:1")
	got, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := got.Digest()
	if d != res.After {
		t.Fatalf("tag names %s, result says %s", d, res.After)
	}
	cf, _ := got.ConfigFile()
	if strings.Join(cf.Config.Env, ",") != "V=2,APP=x" {
		t.Errorf("env %v", cf.Config.Env)
	}
	// Second run: up to date, nothing written.
	res, err = engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != engine.UpToDate {
		t.Fatalf("second run: %s", res.Action)
	}
}

func TestRebaseIndexPlatformByPlatform(t *testing.T) {
	host := startRegistry(t)
	ociBase := mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1)
	mk := func(parent v1.Image, arch, env string, files map[string]string) v1.Image {
		img, err := mutate.Append(parent, mutate.Addendum{Layer: layerOf(t, files), History: v1.History{CreatedBy: "COPY " + arch}})
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", arch
		cf.Config.Env = []string{env}
		img, _ = mutate.ConfigFile(img, cf)
		return img
	}
	index := func(imgs map[string]v1.Image, extra ...mutate.IndexAddendum) v1.ImageIndex {
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		for _, arch := range []string{"amd64", "arm64"} {
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: imgs[arch], Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
		}
		return mutate.AppendManifests(idx, extra...)
	}
	b1 := map[string]v1.Image{}
	b2 := map[string]v1.Image{}
	app := map[string]v1.Image{}
	for _, arch := range []string{"amd64", "arm64"} {
		b1[arch] = mk(ociBase, arch, "V=1", map[string]string{"os": "one " + arch})
		b2[arch] = mk(ociBase, arch, "V=2", map[string]string{"os": "two " + arch})
		app[arch] = mk(b1[arch], arch, "V=1", map[string]string{"app": "app " + arch})
	}
	attest := mk(ociBase, "amd64", "", map[string]string{"sbom": "x"})
	pushIndex := func(ref string, idx v1.ImageIndex) {
		r, _ := name.ParseReference(ref)
		if err := remote.WriteIndex(r, idx); err != nil {
			t.Fatal(err)
		}
	}
	pushIndex(host+"/base:1", index(b1))
	pushIndex(host+"/base:2", index(b2))
	pushIndex(host+"/app:1", index(app, mutate.IndexAddendum{Add: attest, Descriptor: v1.Descriptor{
		Platform:    &v1.Platform{OS: "unknown", Architecture: "unknown"},
		Annotations: map[string]string{"vnd.docker.reference.type": "attestation-manifest"}}}))

	c := registry.New(registry.Options{Insecure: []string{host}})
	loc := func(s string) engine.Location {
		l, err := c.Parse(s, host, true)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	req := engine.Request{Image: loc("app:1"), From: loc("base:1"), To: loc("base:2")}
	req.Target = req.Image
	res, err := engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != engine.Rebased || len(res.Platforms) != 2 || len(res.Warnings) != 1 || res.Warnings[0].Code != "attestation-dropped" {
		t.Fatalf("result %+v", res)
	}
	r, _ := name.ParseReference(host + "/app:1")
	idx, err := remote.Index(r)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 2 {
		t.Fatalf("index has %d manifests, want 2 (attestation dropped)", len(im.Manifests))
	}
	for i, arch := range []string{"amd64", "arm64"} {
		d := im.Manifests[i]
		if d.Platform == nil || d.Platform.Architecture != arch {
			t.Fatalf("entry %d platform %v, want %s (order kept)", i, d.Platform, arch)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		ls, _ := img.Layers()
		want, _ := b2[arch].Layers()
		ld, _ := ls[0].Digest()
		wd, _ := want[0].Digest()
		if ld != wd {
			t.Errorf("%s: bottom layer %s, want new base's %s", arch, ld, wd)
		}
		cf, _ := img.ConfigFile()
		if cf.Config.Env[0] != "V=2" || cf.Architecture != arch {
			t.Errorf("%s: config %v %s", arch, cf.Config.Env, cf.Architecture)
		}
	}
	res, err = engine.Rebase(context.Background(), req)
	if err != nil || res.Action != engine.UpToDate {
		t.Fatalf("second run: %v %v", res, err)
	}
}
