package engine_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// sigRequests records image-rebase's requests that look for signatures.
type sigRequests struct {
	mu   sync.Mutex
	seen []string
}

func (s *sigRequests) wrap(serveReferrers map[string]string) regtest.Option {
	return regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fromUs := strings.Contains(r.UserAgent(), "image-rebase") // not the fixture's pushes
			if fromUs && (strings.Contains(r.URL.Path, "/referrers/") || strings.Contains(r.URL.Path, "/manifests/sha256-")) {
				s.mu.Lock()
				s.seen = append(s.seen, r.Method+" "+r.URL.Path)
				s.mu.Unlock()
			}
			// Distribution has no referrers API; serve it for some digests,
			// as a registry that has one would.
			for dg, body := range serveReferrers {
				if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/referrers/"+dg) {
					w.Header().Set("Content-Type", string(types.OCIImageIndex))
					w.Write([]byte(body))
					return
				}
			}
			h.ServeHTTP(w, r)
		})
	})
}

func (s *sigRequests) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

func warningCodes(res *engine.Result) map[string]string {
	out := map[string]string{}
	for _, w := range res.Warnings {
		out[w.Code] = w.Message
	}
	return out
}

// signedFixture pushes index bases and app:1, an index of two platforms.
func signedFixture(m *multi) v1.Hash {
	b1, _ := m.bases("linux/amd64", "linux/arm64")
	return m.reg.PushIndex(m.t, "app:1", m.index(types.OCIImageIndex,
		entry{img: m.app(b1["linux/amd64"], "linux/amd64"), p: plat("linux/amd64")},
		entry{img: m.app(b1["linux/arm64"], "linux/arm64"), p: plat("linux/arm64")}))
}

func sigTag(d v1.Hash) string { return "sha256-" + d.Hex }

func TestIndexSignaturesAreReported(t *testing.T) {
	t.Run("cosign tag", func(t *testing.T) {
		var seen sigRequests
		m := newMulti(t, seen.wrap(nil))
		d := signedFixture(m)
		m.reg.Push(t, "app:"+sigTag(d)+".sig", m.img(nil, *plat("linux/amd64"), testimage.Copy("sig", map[string]string{"sig": "x"})))
		res := rebaseOK(t, m.req("app:1", "base:1", "base:2"))
		msg := warningCodes(res)["signatures-invalidated"]
		if !strings.Contains(msg, "cosign signature "+m.reg.Host+"/app:"+sigTag(d)+".sig") || !strings.Contains(msg, res.After.String()) || strings.Contains(msg, "OCI referrer") {
			t.Errorf("warnings %+v", res.Warnings)
		}
		// Up to date: nothing is invalidated, nothing said.
		res = rebaseOK(t, m.req("app:1", "base:1", "base:2"))
		if res.Action != engine.UpToDate || len(res.Warnings) != 0 {
			t.Errorf("second run %s, warnings %+v", res.Action, res.Warnings)
		}
	})
	t.Run("referrers tag schema", func(t *testing.T) {
		m := newMulti(t)
		d := signedFixture(m)
		m.reg.Push(t, "app:"+sigTag(d), m.img(nil, *plat("linux/amd64"), testimage.Copy("sbom", map[string]string{"sbom": "x"})))
		req := m.req("app:1", "base:1", "base:2")
		req.DryRun = true
		res := rebaseOK(t, req)
		msg := warningCodes(res)["signatures-invalidated"]
		if !strings.Contains(msg, "OCI referrers in "+m.reg.Host+"/app:"+sigTag(d)) || !strings.Contains(msg, "would not cover") {
			t.Errorf("warnings %+v", res.Warnings)
		}
	})
	t.Run("referrers API", func(t *testing.T) {
		var seen sigRequests
		served := map[string]string{}
		m := newMulti(t, seen.wrap(served))
		d := signedFixture(m)
		served[d.String()] = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
			`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":10,"artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"}]}`
		res := rebaseOK(t, m.req("app:1", "base:1", "base:2"))
		if msg := warningCodes(res)["signatures-invalidated"]; !strings.Contains(msg, "1 OCI referrer (application/vnd.dev.sigstore.bundle.v0.3+json)") {
			t.Errorf("warnings %+v", res.Warnings)
		}
		for _, r := range seen.list() {
			if strings.HasSuffix(r, "/manifests/"+sigTag(d)) {
				t.Errorf("asked for the fallback tag although the referrers API answered: %s", r)
			}
		}
	})
	t.Run("unsigned", func(t *testing.T) {
		var seen sigRequests
		m := newMulti(t, seen.wrap(nil))
		signedFixture(m)
		res := rebaseOK(t, m.req("app:1", "base:1", "base:2"))
		if len(res.Warnings) != 0 {
			t.Errorf("warnings %+v", res.Warnings)
		}
		if got := seen.list(); len(got) != 3 {
			t.Errorf("signature requests %v, want 3 (.sig tag, referrers API, fallback tag)", got)
		}
	})
}

// TestSingleImageSignatures: a single-platform image is checked only when
// asked, and the check adds requests but no round trip.
func TestSingleImageSignatures(t *testing.T) {
	var seen sigRequests
	reg := regtest.Start(t, seen.wrap(nil))
	m := &multi{t: t, reg: reg}
	amd := *plat("linux/amd64")
	b1 := m.img(nil, amd, testimage.Copy("COPY os", map[string]string{"etc/os": "one"}))
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", m.img(nil, amd, testimage.Copy("COPY os", map[string]string{"etc/os": "two"})))
	app := m.app(b1, "linux/amd64")
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(20*time.Millisecond))
	defer proxy.Close()

	run := func(check bool) (*engine.Result, proxytest.Stats) {
		d := reg.Push(t, "app:1", app)
		reg.Push(t, "app:"+sigTag(d)+".sig", m.img(nil, amd, testimage.Copy("sig", map[string]string{"sig": "x"})))
		c := registry.New(registry.Options{Insecure: []string{proxy.Host()}})
		loc := func(s string) engine.Location {
			l, err := c.Parse(s, proxy.Host(), true)
			if err != nil {
				t.Fatal(err)
			}
			return l
		}
		req := engine.Request{Image: loc("app:1"), From: loc("base:1"), To: loc("base:2"), CheckSignatures: check}
		req.Target = req.Image
		proxy.Reset()
		res, err := engine.Rebase(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		return res, proxy.Stats()
	}
	before := len(seen.list())
	res, plain := run(false)
	if len(res.Warnings) != 0 || len(seen.list()) != before {
		t.Fatalf("unasked: warnings %+v, signature requests %v", res.Warnings, seen.list()[before:])
	}
	res, checked := run(true)
	if msg := warningCodes(res)["signatures-invalidated"]; !strings.Contains(msg, ".sig") {
		t.Errorf("warnings %+v", res.Warnings)
	}
	if checked.Requests != plain.Requests+3 || checked.RoundTrips != plain.RoundTrips {
		t.Errorf("with the check: %d requests, %d round trips; without: %d, %d; want 3 more requests, no more round trips",
			checked.Requests, checked.RoundTrips, plain.Requests, plain.RoundTrips)
	}
	t.Log(fmt.Sprintf("single image: %d requests / %d round trips; with --check-signatures: %d / %d", plain.Requests, plain.RoundTrips, checked.Requests, checked.RoundTrips))
}
