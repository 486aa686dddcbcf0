package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/rebase"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// contentBase builds base version v in family f with its layers stored as
// c: the same Dockerfile, so the same diff_ids whatever c.
func contentBase(t *testing.T, f testimage.Family, c testimage.Compression, v string) v1.Image {
	t.Helper()
	img, err := testimage.Build(testimage.Scratch(f), testimage.Linux,
		testimage.Copy("ADD rootfs /", map[string]string{"etc/os-release": "VERSION=" + v}).Compressed(c),
		testimage.Copy("COPY sh /bin/", map[string]string{"bin/sh": "shell " + v}).Compressed(c),
		testimage.Env("BASE="+v))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func contentApp(t *testing.T, base v1.Image, c testimage.Compression) v1.Image {
	t.Helper()
	img, err := testimage.App(base,
		testimage.Copy("COPY app /app/", map[string]string{"app/server": "the application"}).Compressed(c),
		testimage.Cmd("/app/server"))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func mustManifest(t *testing.T, img v1.Image) *v1.Manifest {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestBasesMatchedByContent: the old base is under the image when its
// diff_ids are the image's bottom ones, whatever the compression of either
// side; the result takes the new base's descriptors as they are; an image
// already on the new base by content is up to date and left alone.
func TestBasesMatchedByContent(t *testing.T) {
	const (
		oci    = testimage.OCI
		docker = testimage.Docker
		gz     = testimage.Gzip
		zstd   = testimage.Zstd
		none   = testimage.Uncompressed
	)
	type side struct {
		f testimage.Family
		c testimage.Compression
	}
	tests := []struct {
		name string
		// appBase is the copy of the base the application was built on,
		// oldBase the copy given as --from-base; newOnApp builds the
		// application on the new base instead (up to date).
		appBase, oldBase side
		newOnApp         *side
		wantUpToDate     bool
	}{
		{name: "image gzip, old base zstd", appBase: side{oci, gz}, oldBase: side{oci, zstd}},
		{name: "image zstd, old base gzip", appBase: side{oci, zstd}, oldBase: side{oci, gz}},
		{name: "image uncompressed, old base gzip", appBase: side{oci, none}, oldBase: side{oci, gz}},
		{name: "image gzip, old base uncompressed", appBase: side{oci, gz}, oldBase: side{oci, none}},
		{name: "docker image uncompressed (docker save), OCI old base zstd", appBase: side{docker, none}, oldBase: side{oci, zstd}},
		{name: "docker image gzip, docker old base uncompressed", appBase: side{docker, gz}, oldBase: side{docker, none}},
		{name: "on the new base recompressed (zstd): up to date", appBase: side{oci, gz}, oldBase: side{oci, gz}, newOnApp: &side{oci, zstd}, wantUpToDate: true},
		{name: "on the new base uncompressed: up to date", appBase: side{oci, gz}, oldBase: side{oci, gz}, newOnApp: &side{docker, none}, wantUpToDate: true},
	}
	reg := regtest.Start(t)
	c := registry.New(registry.Options{Insecure: []string{reg.Host}})
	loc := func(s string) engine.Location {
		l, err := c.Parse(s, reg.Host, false)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	nw := contentBase(t, oci, gz, "2")
	reg.Push(t, "base:2", nw)
	newLayers := mustManifest(t, nw).Layers
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tag := string(rune('a' + i))
			under := contentBase(t, tt.appBase.f, tt.appBase.c, "1")
			if tt.newOnApp != nil {
				under = contentBase(t, tt.newOnApp.f, tt.newOnApp.c, "2")
			}
			app := contentApp(t, under, tt.appBase.c)
			before := reg.Push(t, "app:"+tag, app)
			reg.Push(t, "base:1-"+tag, contentBase(t, tt.oldBase.f, tt.oldBase.c, "1"))
			req := engine.Request{Image: loc("app:" + tag), From: loc("base:1-" + tag), To: loc("base:2")}
			req.Target = req.Image
			res, err := engine.Rebase(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if !hasNote(res.Notes, rebase.NoteMatchedByContent) {
				t.Errorf("notes %v: want one saying the base was matched by content", res.Notes)
			}
			if tt.wantUpToDate {
				if d, _ := reg.Digest(t, "app:"+tag); res.Action != engine.UpToDate || d != before.String() {
					t.Fatalf("action %s, tag %s (was %s): want up to date and nothing written", res.Action, d, before)
				}
				return
			}
			if res.Action != engine.Rebased {
				t.Fatalf("action %s", res.Action)
			}
			got := reg.Image(t, "app:"+tag)
			checkLayerContents(t, got)
			m, appM := mustManifest(t, got), mustManifest(t, app)
			if len(m.Layers) != 3 {
				t.Fatalf("%d layers", len(m.Layers))
			}
			for j, l := range newLayers {
				if m.Layers[j].Digest != l.Digest || m.Layers[j].Size != l.Size {
					t.Errorf("layer %d is %s (%d bytes), want the new base's blob %s (%d bytes)", j+1, m.Layers[j].Digest, m.Layers[j].Size, l.Digest, l.Size)
				}
			}
			if top := appM.Layers[2]; m.Layers[2].Digest != top.Digest || m.Layers[2].MediaType != top.MediaType {
				t.Errorf("application layer %v, want the image's own %v", m.Layers[2], top)
			}
			if f, err := testimage.Consistent(got); err != nil || string(f) != string(tt.appBase.f) {
				t.Errorf("family %s (%v), want the image's %s", f, err, tt.appBase.f)
			}
		})
	}

	// An old base whose content differs is refused, naming the layer and
	// both diff_ids; nothing is written.
	app := contentApp(t, contentBase(t, oci, gz, "1"), gz)
	before := reg.Push(t, "app:other", app)
	reg.Push(t, "other:1", contentBase(t, oci, zstd, "3"))
	req := engine.Request{Image: loc("app:other"), From: loc("other:1"), To: loc("base:2")}
	req.Target = req.Image
	_, err := engine.Rebase(context.Background(), req)
	var re *rebase.RefusedError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), reg.Host+"/app:other is not built on "+reg.Host+"/other:1: layer 1 differs: diff_id image sha256:") {
		t.Errorf("err %v, want a refusal naming both references and layer 1", err)
	}
	if d, _ := reg.Digest(t, "app:other"); d != before.String() {
		t.Errorf("app:other moved to %s", d)
	}
}

// checkLayerContents reads every layer of img back: its blob must have its
// descriptor's digest, and its content the config's diff_id.
func checkLayerContents(t *testing.T, img v1.Image) {
	t.Helper()
	m := mustManifest(t, img)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != len(cf.RootFS.DiffIDs) {
		t.Fatalf("%d layers for %d diff_ids (%v)", len(layers), len(cf.RootFS.DiffIDs), err)
	}
	for i, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		blob, _, err := v1.SHA256(rc)
		rc.Close()
		if err != nil || blob != m.Layers[i].Digest {
			t.Errorf("layer %d: blob %s, descriptor %s (%v)", i+1, blob, m.Layers[i].Digest, err)
		}
		rc, err = l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		content, _, err := v1.SHA256(rc)
		rc.Close()
		if err != nil || content != cf.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: content %s, diff_id %s (%v)", i+1, content, cf.RootFS.DiffIDs[i], err)
		}
	}
}

func hasNote(notes []rebase.Note, code string) bool {
	for _, n := range notes {
		if n.Code == code {
			return true
		}
	}
	return false
}
