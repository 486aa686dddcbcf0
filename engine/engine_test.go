package engine_test

import (
	"archive/tar"
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/engine"
	"github.com/image-rebase/image-rebase/registry"
)

func startRegistry(t *testing.T) string {
	cfg, err := configuration.Parse(strings.NewReader("version: 0.1\nstorage:\n  inmemory: {}\nlog:\n  level: error\n"))
	if err != nil {
		t.Fatal(err)
	}
	app := handlers.NewApp(context.Background(), cfg)
	srv := httptest.NewServer(app)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func layerOf(t *testing.T, files map[string]string) v1.Layer {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for n, c := range files {
		tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(c)), Typeflag: tar.TypeReg})
		tw.Write([]byte(c))
	}
	tw.Close()
	l, err := tarball.LayerFromReader(&buf, tarball.WithMediaType(types.OCILayer))
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
