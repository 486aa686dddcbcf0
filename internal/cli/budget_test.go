package cli_test

import (
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
	ti "github.com/image-rebase/image-rebase/internal/testimage"
)

// afterWrite is the requests (each a round trip of its own) a rebase makes
// after it has written the image's tag: the tag read back, to report a
// writer that replaced the result right away.
const afterWrite = 1

// threeLayerBase is a base image of 3 layers for arch, version v.
func threeLayerBase(t *testing.T, v, arch string) v1.Image {
	t.Helper()
	img, err := ti.Build(nil, ti.Platform{OS: "linux", Arch: arch},
		ti.Copy("ADD os", map[string]string{"etc/os-release": v + arch}),
		ti.Copy("COPY lib", map[string]string{"lib/libc.so": "libc " + v + arch}),
		ti.Copy("COPY certs", map[string]string{"etc/ssl/certs.pem": "certs " + v + arch}),
		ti.Env("BASE="+v))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestRequestBudgets holds the request and round-trip counts the README's
// performance section states, measured at the registry (through a proxy
// adding 100 ms per request, so that the requests of one round overlap even
// on a loaded machine under the race detector), for the forms users type.
// Bases have 3 layers, all replaced. A regression in the number of requests
// or of sequential round trips fails here; the benchmarks in bench/ measure
// the time.
func TestRequestBudgets(t *testing.T) {
	reg := startRegistry(t)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(100*time.Millisecond))
	defer proxy.Close()
	h := proxy.Host()

	// base:N are single images; mbase:N indexes whose image for the
	// platform guessed first (this machine's) is base:N, and whose other
	// image is for the other architecture.
	guessed, other := runtime.GOARCH, "arm64"
	if guessed != "amd64" && guessed != "arm64" {
		guessed = "amd64"
	}
	if guessed == "arm64" {
		other = "amd64"
	}
	b1 := threeLayerBase(t, "1", guessed)
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", threeLayerBase(t, "2", guessed))
	o1 := threeLayerBase(t, "1", other)
	reg.PushIndex(t, "mbase:1", indexOf(b1, o1))
	o2 := threeLayerBase(t, "2", other)
	reg.PushIndex(t, "mbase:2", indexOf(reg.Image(t, "base:2"), o2))
	app := image(t, b1, guessed, "APP=1", map[string]string{"app": "app"})
	appOther := image(t, o1, other, "APP=1", map[string]string{"app": "app"})
	for _, r := range []string{"insecure:1", "http:1", "indexbases:1"} {
		reg.Push(t, r, app)
	}
	reg.Push(t, "indexbases:other", appOther)
	reg.PushIndex(t, "index:1", indexOf(app, appOther))
	var batch []string
	for i := range 10 {
		ref := fmt.Sprintf("batch%d:%d", i%2, i)
		reg.Push(t, ref, image(t, b1, guessed, fmt.Sprintf("APP=%d", i), map[string]string{"app": ref}))
		batch = append(batch, ref)
	}

	tests := []struct {
		name             string
		args             []string
		requests, rounds int
		byClass          map[string]int // when set, exactly
	}{
		// Round 1: the 3 manifests. 2: the 3 configs and the config upload
		// opened. 3: 3 mounts, the config's content, the tag checked again.
		// 4: the manifest.
		{"one image, --insecure HOST", []string{"--insecure", h, "insecure:1", "--from-base", "base:1", "--to-base", "base:2"}, 13 + afterWrite, 4 + afterWrite,
			map[string]int{"manifest": 5 + afterWrite, "blob": 3, "blob-upload": 5}},
		{"one image, http://HOST", []string{"http://" + h, "http:1", "--from-base", "base:1", "--to-base", "base:2"}, 13 + afterWrite, 4 + afterWrite, nil},
		// Up to date from the 3 manifests alone.
		{"rerun of one image", []string{"--insecure", h, "insecure:1", "--from-base", "base:1", "--to-base", "base:2"}, 3, 1,
			map[string]int{"manifest": 3}},
		// Bases given as indexes: round 2 reads the bases' images for the
		// likely platform alongside the image's config; round 3 their
		// configs. One round more than single-image bases: a base's config
		// is named by its platform image, named by its index.
		{"one image on index bases", []string{"--insecure", h, "indexbases:1", "--from-base", "mbase:1", "--to-base", "mbase:2"}, 15 + afterWrite, 5 + afterWrite, nil},
		// The image's config shows the other platform: its bases' images
		// are read in a round of their own.
		{"one image on index bases, other platform", []string{"--insecure", h, "indexbases:other", "--from-base", "mbase:1", "--to-base", "mbase:2"}, 17 + afterWrite, 6 + afterWrite, nil},
		// Round 1: the 3 indexes. 2: the 6 platform images (and the
		// signature lookup, 3 requests). 3: their 6 configs and 2 config
		// uploads opened. 4: 6 mounts, 2 configs' contents, the tag
		// checked again. 5: the 2 platform manifests. 6: the index.
		{"two-platform index", []string{"--insecure", h, "index:1", "--from-base", "mbase:1", "--to-base", "mbase:2"}, 32 + afterWrite, 6 + afterWrite, nil},
		{"rerun of the index", []string{"--insecure", h, "index:1", "--from-base", "mbase:1", "--to-base", "mbase:2"}, 12, 3, nil},
		// Shared: the bases' manifests and configs (4); per image, its
		// manifest and config, the config's upload (2), its tag checked
		// again (--recheck-after 0: whatever the time since the read) and
		// the manifest (6); the mounts, once per repository (2 × 3).
		{"batch of 10", append([]string{"batch", "--insecure", "-r", h, "--recheck-after", "0", "--from-base", "base:1", "--to-base", "base:2"}, batch...), 4 + 10*(6+afterWrite) + 6, 0, nil},
		// Per image, its manifest; the bases' manifests, once.
		{"rerun of the batch", append([]string{"batch", "--insecure", "-r", h, "--from-base", "base:1", "--to-base", "base:2"}, batch...), 10 + 2, 1,
			map[string]int{"manifest": 12}},
	}
	for _, tt := range tests {
		proxy.Reset()
		code, out, stderr := run(t, tt.args...)
		if code != 0 {
			t.Fatalf("%s: exit %d\n%s%s", tt.name, code, out, stderr)
		}
		s := proxy.Stats()
		// A tag checked once more because the writes outlasted the first
		// check (timing: the race detector, a loaded machine) costs a
		// request and a round trip.
		late := proxytest.LateRereads(proxy.Log(), 100*time.Millisecond)
		rounds := tt.rounds
		if rounds > 0 {
			rounds += late
		}
		if s.Requests != tt.requests+late || s.RoundTrips != rounds && rounds > 0 {
			t.Errorf("%s: %d requests in %d round trips, want %d in %d\n%s", tt.name, s.Requests, s.RoundTrips, tt.requests+late, rounds, logOf(proxy))
		}
		if tt.byClass != nil {
			tt.byClass["manifest"] += late
			if fmt.Sprint(s.ByClass) != fmt.Sprint(tt.byClass) {
				t.Errorf("%s: requests %v, want %v", tt.name, s.ByClass, tt.byClass)
			}
		}
		if s.ByClass["ping"] != 0 {
			t.Errorf("%s: the registry was pinged", tt.name)
		}
		if strings.Contains(tt.name, "rerun") && !strings.Contains(out, "up to date") && !strings.Contains(out, "up-to-date") && !strings.Contains(out, "up to date    10") {
			t.Errorf("%s: not up to date:\n%s", tt.name, out)
		}
	}

	// The images on index bases moved onto the image of their platform.
	for ref, nw := range map[string]v1.Image{"indexbases:1": reg.Image(t, "base:2"), "indexbases:other": o2} {
		got, _ := reg.Image(t, ref).Layers()
		want, _ := nw.Layers()
		for i, l := range want {
			gd, _ := got[i].Digest()
			wd, _ := l.Digest()
			if gd != wd {
				t.Errorf("%s: layer %d is %s, want the new base's %s", ref, i+1, gd, wd)
			}
		}
	}
}

// TestMountsAreBounded: a rebase mounts at most 16 layers at once, and a
// batch at most -j across its images, however many layers the new base has.
func TestMountsAreBounded(t *testing.T) {
	var inFlight, peak atomic.Int32
	reg := regtest.Start(t, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && r.URL.Query().Get("mount") != "" {
				n := inFlight.Add(1)
				defer inFlight.Add(-1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				time.Sleep(20 * time.Millisecond)
			}
			h.ServeHTTP(w, r)
		})
	}))
	layers := func(v string, n int) v1.Image {
		var steps []ti.Step
		for i := range n {
			steps = append(steps, ti.Copy(fmt.Sprintf("COPY %d", i), map[string]string{fmt.Sprintf("f%d", i): v}))
		}
		return build(t, nil, steps...)
	}
	b1 := layers("1", 1)
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", layers("2", 40))
	for _, r := range []string{"single:1", "batch0:1", "batch1:1", "batch2:1"} {
		reg.Push(t, r, image(t, b1, "amd64", "APP=1", map[string]string{"app": r}))
	}
	h := "http://" + reg.Host
	for _, tt := range []struct {
		name string
		args []string
		max  int32
	}{
		{"one rebase", []string{h, "single:1", "--from-base", "base:1", "--to-base", "base:2"}, 16},
		{"batch -j 3", []string{"batch", "-r", h, "-j", "3", "--from-base", "base:1", "--to-base", "base:2", "batch0:1", "batch1:1", "batch2:1"}, 3},
	} {
		peak.Store(0)
		if code, out, stderr := run(t, tt.args...); code != 0 {
			t.Fatalf("%s: exit %d\n%s%s", tt.name, code, out, stderr)
		}
		if p := peak.Load(); p > tt.max || p < 2 {
			t.Errorf("%s: %d mounts at once, want at most %d (and more than one)", tt.name, p, tt.max)
		}
	}
}
