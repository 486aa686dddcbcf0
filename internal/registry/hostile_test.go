package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
)

// pushRandom pushes a small random image as repoTag and returns it.
func pushRandom(t *testing.T, reg *regtest.Registry, repoTag string) v1.Image {
	t.Helper()
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, repoTag, img)
	return img
}

// repoAt parses ref against host with a fresh client; the retries wait a
// millisecond (a Retry-After still waits what it says).
func repoAt(t *testing.T, host, ref string, opts Options) (*Repo, engine.Location) {
	t.Helper()
	if opts.Insecure == nil && opts.PlainHTTP == nil {
		opts.Insecure = []string{host}
	}
	if opts.RetryBackoff == 0 {
		opts.RetryBackoff = time.Millisecond
	}
	loc, err := New(opts).Parse(ref, host, true)
	if err != nil {
		t.Fatal(err)
	}
	return loc.Repo.(*Repo), loc
}

// TestTransientStatusesAreRetried: 408, 429, 500, 502, 503 and 504 once are
// recovered by a retry; 400, 403 and 501 are final.
func TestTransientStatusesAreRetried(t *testing.T) {
	reg := regtest.Start(t)
	pushRandom(t, reg, "app:1")
	for _, c := range []struct {
		status int
		retry  bool
	}{
		{408, true}, {429, true}, {500, true}, {502, true}, {503, true}, {504, true},
		{400, false}, {403, false}, {501, false},
	} {
		t.Run(strconv.Itoa(c.status), func(t *testing.T) {
			var gets atomic.Int32
			proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
				if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/1") && gets.Add(1) == 1 {
					return proxytest.Fault{Status: c.status}
				}
				return proxytest.Fault{}
			}))
			defer proxy.Close()
			repo, _ := repoAt(t, proxy.Host(), "app:1", Options{})
			_, _, err := repo.Manifest(context.Background(), "1")
			if c.retry && (err != nil || gets.Load() != 2) {
				t.Errorf("%d once: %v after %d reads, want success on the second", c.status, err, gets.Load())
			}
			if !c.retry && (err == nil || gets.Load() != 1) {
				t.Errorf("%d: %v after %d reads, want a failure without retry", c.status, err, gets.Load())
			}
		})
	}
}

// TestRetryAfterIsHonoured: a 429 or 503 waits what its Retry-After says,
// in seconds or as an HTTP date, up to the cap.
func TestRetryAfterIsHonoured(t *testing.T) {
	reg := regtest.Start(t)
	pushRandom(t, reg, "app:1")
	for _, c := range []struct {
		name, header string
		status       int
		maxWait      time.Duration
		atLeast      time.Duration
		below        time.Duration
	}{
		{"seconds", "1", 429, 0, time.Second, 0},
		{"date", "", 503, 0, time.Second, 0},
		{"capped", "3600", 503, 100 * time.Millisecond, 100 * time.Millisecond, time.Minute},
	} {
		t.Run(c.name, func(t *testing.T) {
			var gets atomic.Int32
			proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
				if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/1") && gets.Add(1) == 1 {
					h := c.header
					if h == "" {
						// An HTTP date has whole seconds: at least one second from now.
						h = time.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat)
					}
					return proxytest.Fault{Status: c.status, RetryAfter: h}
				}
				return proxytest.Fault{}
			}))
			defer proxy.Close()
			c2 := New(Options{Insecure: []string{proxy.Host()}, RetryBackoff: time.Millisecond})
			if c.maxWait > 0 {
				c2.retry.maxWait = c.maxWait
			}
			loc, err := c2.Parse("app:1", proxy.Host(), false)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, _, err = loc.Repo.Manifest(context.Background(), "1")
			took := time.Since(start)
			if err != nil || gets.Load() != 2 {
				t.Fatalf("%v after %d reads", err, gets.Load())
			}
			if took < c.atLeast {
				t.Errorf("retried after %s, want at least %s (Retry-After %q; the backoff alone is 1ms)", took, c.atLeast, c.header)
			}
			if c.below > 0 && took >= c.below {
				t.Errorf("retried after %s: the %s cap was not applied", took, c.maxWait)
			}
		})
	}
}

// hostile serves a registry whose app:1 misbehaves as bad says, in front
// of the real registry, and counts the requests and body bytes it sent.
type hostile struct {
	requests atomic.Int32
	sent     atomic.Int64
}

func startHostile(t *testing.T, bad func(h *hostile, w http.ResponseWriter, r *http.Request) bool) (*regtest.Registry, *hostile) {
	h := &hostile{}
	reg := regtest.Start(t, regtest.WithHandler(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/v2/app/") {
				h.requests.Add(1)
				if bad(h, w, r) {
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}))
	return reg, h
}

// serveJunk writes n bytes of a JSON string (without Content-Length unless
// withLength), stopping when the client goes away.
func (h *hostile) serveJunk(w http.ResponseWriter, n int64, withLength bool) {
	w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	if withLength {
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	}
	w.WriteHeader(http.StatusOK)
	chunk := []byte(strings.Repeat("x", 64<<10))
	for written := int64(0); written < n; written += int64(len(chunk)) {
		m, err := w.Write(chunk)
		h.sent.Add(int64(m))
		if err != nil {
			return
		}
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
}

// TestOversizedManifestIsNotRead: a 100 MB manifest is refused as too
// large after at most the 4 MiB limit is read, whether or not the registry
// says its length, once (not retried).
func TestOversizedManifestIsNotRead(t *testing.T) {
	for _, withLength := range []bool{true, false} {
		t.Run(fmt.Sprintf("content-length=%v", withLength), func(t *testing.T) {
			reg, h := startHostile(t, func(h *hostile, w http.ResponseWriter, r *http.Request) bool {
				if r.Method == http.MethodGet && r.URL.Path == "/v2/app/manifests/1" {
					h.serveJunk(w, 100<<20, withLength)
					return true
				}
				return false
			})
			repo, _ := repoAt(t, reg.Host, "app:1", Options{})
			_, _, err := repo.Manifest(context.Background(), "1")
			var ie *manifest.InvalidError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), "limit") {
				t.Fatalf("err = %v, want an invalid document over the limit", err)
			}
			if n := h.requests.Load(); n != 1 {
				t.Errorf("%d requests, want 1 (too large is not retried)", n)
			}
			// What the server managed to send before the client hung up:
			// the limit, plus what the sockets' buffers took.
			if sent := h.sent.Load(); sent > 4<<20+16<<20 {
				t.Errorf("the server sent %d MiB before the client stopped reading", sent>>20)
			}
		})
	}
}

// TestCorruptManifestIsNotRetried: a body that does not match the digest
// the registry announces is a corrupt document (exit 4), not a transient
// error.
func TestCorruptManifestIsNotRetried(t *testing.T) {
	reg, h := startHostile(t, func(h *hostile, w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && r.URL.Path == "/v2/app/manifests/1" {
			body := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("ab", 32))
			w.Write([]byte(body))
			return true
		}
		return false
	})
	repo, _ := repoAt(t, reg.Host, "app:1", Options{})
	_, _, err := repo.Manifest(context.Background(), "1")
	var ie *manifest.InvalidError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("err = %v, want a corrupt document", err)
	}
	if n := h.requests.Load(); n != 1 {
		t.Errorf("%d requests, want 1 (a corrupt body is not retried)", n)
	}
	// Read by digest, the digest asked for is checked even without the header.
	reg2, _ := startHostile(t, func(h *hostile, w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v2/app/manifests/sha256:") {
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Write([]byte(`{"schemaVersion":2}`))
			return true
		}
		return false
	})
	repo, _ = repoAt(t, reg2.Host, "app:1", Options{})
	_, _, err = repo.Manifest(context.Background(), "sha256:"+strings.Repeat("cd", 32))
	if !errors.As(err, &ie) {
		t.Fatalf("by digest: err = %v, want a corrupt document", err)
	}
}

// TestRedirectLoopEnds: a blob that redirects to itself fails after 10
// redirects with a message that says so.
func TestRedirectLoopEnds(t *testing.T) {
	reg, h := startHostile(t, func(h *hostile, w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			http.Redirect(w, r, r.URL.Path+"?again", http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	img := pushRandom(t, reg, "app:1")
	h.requests.Store(0)
	m, _ := img.Manifest()
	repo, _ := repoAt(t, reg.Host, "app:1", Options{})
	start := time.Now()
	_, err := repo.Blob(context.Background(), m.Config)
	if err == nil || !strings.Contains(err.Error(), "redirect loop") {
		t.Fatalf("err = %v, want a redirect loop", err)
	}
	if n := h.requests.Load(); n > maxRedirects+1 {
		t.Errorf("%d requests in %s, want at most %d", n, time.Since(start), maxRedirects+1)
	}
}

// TestPlainHTTPToTLSRegistry: naming a TLS registry http:// says that it
// speaks TLS.
func TestPlainHTTPToTLSRegistry(t *testing.T) {
	reg := regtest.Start(t, regtest.WithTLS())
	repo, _ := repoAt(t, reg.Host, "app:1", Options{PlainHTTP: []string{reg.Host}})
	_, _, err := repo.Manifest(context.Background(), "1")
	if err == nil || !strings.Contains(err.Error(), "speaks TLS") {
		t.Fatalf("err = %v, want the registry said to speak TLS", err)
	}
}

// TestTokensPerGroupUntilExpiry: a token registry is asked for tokens per
// group of repositories (each request short enough for a token server
// behind nginx), each kept until shortly before it expires, then renewed
// without a 401.
func TestTokensPerGroupUntilExpiry(t *testing.T) {
	var unauthorized atomic.Int32
	reg := regtest.Start(t, regtest.WithTokenAuth(), regtest.WithTokenLifetime(2*time.Second), regtest.WithHandler(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sw := &statusWriter{ResponseWriter: w}
			next.ServeHTTP(sw, r)
			if sw.status == http.StatusUnauthorized && r.URL.Path != "/v2/" {
				unauthorized.Add(1)
			}
		})
	}))
	const repos = 100
	for i := range repos {
		pushRandom(t, reg, fmt.Sprintf("team/application-with-a-long-name-%03d:1", i))
	}
	c := New(Options{Insecure: []string{reg.Host}, RetryBackoff: time.Millisecond})
	var locs []engine.Location
	for i := range repos {
		loc, err := c.Parse(fmt.Sprintf("team/application-with-a-long-name-%03d:1", i), reg.Host, true)
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, loc)
	}
	readAll := func() {
		for _, loc := range locs {
			if _, _, err := loc.Repo.Manifest(context.Background(), "1"); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := len(reg.TokenScopes())
	readAll()
	asked := reg.TokenScopes()[before:]
	groups := (repos + maxGroupRepos - 1) / maxGroupRepos
	if len(asked) < groups || len(asked) > 2*groups {
		t.Errorf("%d token requests for %d repositories, want one per group of at most %d", len(asked), repos, maxGroupRepos)
	}
	for _, a := range asked {
		if n := len(strings.Fields(a)); n > maxGroupRepos+2 {
			t.Errorf("a token request of %d scopes", n)
		}
	}
	if reg.TokenURLsRefused() != 0 {
		t.Errorf("%d token URLs too long", reg.TokenURLsRefused())
	}
	// Again within the lifetime: no token request.
	n := len(reg.TokenScopes())
	readAll()
	if again := len(reg.TokenScopes()) - n; again != 0 {
		t.Errorf("%d token requests within the tokens' lifetime, want 0", again)
	}
	// After it: renewed before use, without a 401 from the registry.
	time.Sleep(2 * time.Second)
	unauthorized.Store(0)
	n = len(reg.TokenScopes())
	readAll()
	if renewed := len(reg.TokenScopes()) - n; renewed < groups {
		t.Errorf("%d token requests after expiry, want %d", renewed, groups)
	}
	if u := unauthorized.Load(); u != 0 {
		t.Errorf("%d requests answered 401: an expired token was sent", u)
	}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}
