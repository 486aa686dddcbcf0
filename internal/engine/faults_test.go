package engine_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// faultFixture pushes base:1, base:2 and app:1 and returns app:1.
func faultFixture(t *testing.T, reg *regtest.Registry) v1.Image {
	base := func(v string) v1.Image {
		img, err := testimage.Build(nil, testimage.Linux,
			testimage.Copy("ADD os", map[string]string{"os": v}),
			testimage.Copy("ADD lib", map[string]string{"lib": v}),
			testimage.Env("V="+v))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	b1 := base("1")
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", base("2"))
	app, err := testimage.Build(b1, testimage.Linux, testimage.Copy("COPY app", map[string]string{"app": "x"}))
	if err != nil {
		t.Fatal(err)
	}
	return app
}

// checkAllValid asserts that every tag of the registry names a manifest
// whose config and layers all exist: never a manifest with a missing blob.
func checkAllValid(t *testing.T, reg *regtest.Registry, wantLayers int) {
	t.Helper()
	for repoTag := range reg.Snapshot(t) {
		ref, err := name.ParseReference(reg.Ref(repoTag))
		if err != nil {
			t.Fatal(err)
		}
		desc, err := remote.Get(ref)
		if err != nil {
			t.Fatal(err)
		}
		var imgs []v1.Image
		if desc.MediaType.IsIndex() {
			idx, _ := desc.ImageIndex()
			im, _ := idx.IndexManifest()
			for _, d := range im.Manifests {
				img, err := idx.Image(d.Digest)
				if err != nil {
					t.Fatalf("%s: platform manifest %s: %v", repoTag, d.Digest, err)
				}
				imgs = append(imgs, img)
			}
		} else {
			img, _ := desc.Image()
			imgs = append(imgs, img)
		}
		repo, _, _ := strings.Cut(repoTag, ":")
		for _, img := range imgs {
			m, err := img.Manifest()
			if err != nil {
				t.Fatal(err)
			}
			if repo == "app" && len(m.Layers) != wantLayers {
				t.Errorf("%s has %d layers, want %d", repoTag, len(m.Layers), wantLayers)
			}
			for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
				if !reg.BlobExists(t, repo, d.Digest) {
					t.Errorf("%s references %s, which %s lacks", repoTag, d.Digest, repo)
				}
			}
		}
	}
}

// TestFaultMatrix injects a fault at every request of a rebase, once
// (recovered by a retry) and at every attempt (a clean failure), and checks
// that each run either succeeds with a valid image or fails leaving every
// tag as it was.
func TestFaultMatrix(t *testing.T) {
	reg := regtest.Start(t)
	app := faultFixture(t, reg)
	faultMatrix(t, reg, func() { reg.Push(t, "app:1", app) }, 3)
}

// TestFaultMatrixIndex does the same for a two-platform index.
func TestFaultMatrixIndex(t *testing.T) {
	reg := regtest.Start(t)
	app := indexFixture(t, reg)
	faultMatrix(t, reg, func() { reg.PushIndex(t, "app:1", app) }, 2)
}

// indexFixture pushes two-platform indexes base:1 and base:2 (one layer per
// platform) and returns a two-platform app index on base:1.
func indexFixture(t *testing.T, reg *regtest.Registry) v1.ImageIndex {
	idx := func(imgs ...v1.Image) v1.ImageIndex {
		i := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		for _, img := range imgs {
			cf, _ := img.ConfigFile()
			i = mutate.AppendManifests(i, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture}}})
		}
		return i
	}
	build := func(parent v1.Image, arch, file, v string) v1.Image {
		img, err := testimage.Build(parent, testimage.Platform{OS: "linux", Arch: arch}, testimage.Copy("COPY "+file, map[string]string{file: v + arch}))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	b1a, b1b := build(nil, "amd64", "os", "1"), build(nil, "arm64", "os", "1")
	reg.PushIndex(t, "base:1", idx(b1a, b1b))
	reg.PushIndex(t, "base:2", idx(build(nil, "amd64", "os", "2"), build(nil, "arm64", "os", "2")))
	return idx(build(b1a, "amd64", "app", "x"), build(b1b, "arm64", "app", "x"))
}

func faultMatrix(t *testing.T, reg *regtest.Registry, reset func(), wantLayers int) {
	reset()
	var inject atomic.Pointer[func(n int, r *http.Request) proxytest.Fault]
	proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(n int, r *http.Request) proxytest.Fault {
		if f := inject.Load(); f != nil {
			return (*f)(n, r)
		}
		return proxytest.Fault{}
	}))
	defer proxy.Close()

	rebaseOnce := func() (*engine.Result, error) {
		c := registry.New(registry.Options{Insecure: []string{proxy.Host()}, RetryBackoff: time.Millisecond})
		loc := func(s string) engine.Location {
			l, err := c.Parse(s, proxy.Host(), true)
			if err != nil {
				t.Fatal(err)
			}
			return l
		}
		req := engine.Request{Image: loc("app:1"), From: loc("base:1"), To: loc("base:2")}
		req.Target = req.Image
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return engine.Rebase(ctx, req)
	}
	// Requests are told apart by what they are (proxytest.Describe) and,
	// for requests of the same kind (the tag's reads before and after the
	// PUT), by their order: "HEAD manifest app 1 #2".
	type target struct {
		kind string
		nth  int
	}
	var mu sync.Mutex
	var seen map[string]int
	occurrence := func(r *http.Request) target {
		k := proxytest.Describe(r)
		mu.Lock()
		defer mu.Unlock()
		seen[k]++
		return target{k, seen[k]}
	}

	// A clean run lists the requests a rebase makes.
	var targets []target
	seen = map[string]int{}
	rec := func(n int, r *http.Request) proxytest.Fault {
		t := occurrence(r)
		mu.Lock()
		targets = append(targets, t)
		mu.Unlock()
		return proxytest.Fault{}
	}
	inject.Store(&rec)
	if _, err := rebaseOnce(); err != nil {
		t.Fatal(err)
	}
	inject.Store(nil)
	if len(targets) < 10 {
		t.Fatalf("a clean rebase made only %d requests", len(targets))
	}

	kinds := []struct {
		name  string
		fault proxytest.Fault
	}{
		{"drop", proxytest.Fault{Drop: true}},
		{"500", proxytest.Fault{Status: 500}},
		{"503", proxytest.Fault{Status: 503}},
		{"429", proxytest.Fault{Status: 429, RetryAfter: "0"}},
		{"truncate", proxytest.Fault{Truncate: true}},
	}
	for i, tg := range targets {
		for _, k := range kinds {
			for _, always := range []bool{false, true} {
				mode := "once"
				if always {
					mode = "always"
				}
				t.Run(fmt.Sprintf("request %d %s #%d %s %s", i+1, tg.kind, tg.nth, k.name, mode), func(t *testing.T) {
					reset()
					before := reg.Snapshot(t)
					var hit atomic.Int32
					mu.Lock()
					seen = map[string]int{}
					mu.Unlock()
					// Once: the first attempt of that request. Always: every
					// request of that kind from that one on (its retries
					// included).
					f := func(n int, r *http.Request) proxytest.Fault {
						o := occurrence(r)
						if o.kind != tg.kind || o.nth < tg.nth || !always && (o.nth != tg.nth || hit.Load() > 0) {
							return proxytest.Fault{}
						}
						hit.Add(1)
						return k.fault
					}
					inject.Store(&f)
					res, err := rebaseOnce()
					inject.Store(nil)
					if hit.Load() == 0 {
						t.Fatalf("the fault was never injected: no %s #%d in this run", tg.kind, tg.nth)
					}
					after := reg.Snapshot(t)
					if err == nil {
						if res.Action != engine.Rebased || after["app:1"] != res.After.String() {
							t.Fatalf("success %+v but app:1 is %s", res, after["app:1"])
						}
					} else {
						if fmt.Sprint(before) != fmt.Sprint(after) {
							t.Fatalf("failed (%v) but tags changed: %v → %v", err, before, after)
						}
						if !always {
							t.Errorf("a single %s at %s #%d was not recovered: %v", k.name, tg.kind, tg.nth, err)
						}
					}
					checkAllValid(t, reg, wantLayers)
				})
			}
		}
	}
}

// TestConcurrentPushIsDetected: someone pushes to the tag between the read
// and the write; the rebase refuses and the other push stays.
func TestConcurrentPushIsDetected(t *testing.T) {
	reg := regtest.Start(t)
	app := faultFixture(t, reg)
	reg.Push(t, "app:1", app)
	other, err := testimage.Build(nil, testimage.Linux, testimage.Copy("COPY other", map[string]string{"other": "y"}))
	if err != nil {
		t.Fatal(err)
	}
	otherDigest, _ := other.Digest()
	var pushed atomic.Bool
	proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(n int, r *http.Request) proxytest.Fault {
		// When the config upload opens, push another image to app:1.
		if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/app/blobs/uploads") && r.URL.Query().Get("mount") == "" && !pushed.Swap(true) {
			ref, _ := name.ParseReference(reg.Ref("app:1"))
			if err := remote.Write(ref, other); err != nil {
				t.Error(err)
			}
		}
		return proxytest.Fault{}
	}))
	defer proxy.Close()
	c := registry.New(registry.Options{Insecure: []string{proxy.Host()}})
	loc := func(s string) engine.Location {
		l, _ := c.Parse(s, proxy.Host(), true)
		return l
	}
	req := engine.Request{Image: loc("app:1"), From: loc("base:1"), To: loc("base:2")}
	req.Target = req.Image
	_, err = engine.Rebase(context.Background(), req)
	if err == nil || !strings.Contains(err.Error(), "moved to "+otherDigest.String()) {
		t.Fatalf("err = %v, want the lost update detected", err)
	}
	if got := reg.Snapshot(t)["app:1"]; got != otherDigest.String() {
		t.Fatalf("app:1 = %s, want the concurrent push %s kept", got, otherDigest)
	}
}
