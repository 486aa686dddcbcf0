package registry

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
)

// readManifests reads each "repo:tag" of host through c, all at once, as a
// rebase's first round does.
func readManifests(t *testing.T, c *Client, host string, refs ...string) {
	t.Helper()
	locs := make([]engine.Location, len(refs))
	for i, ref := range refs {
		loc, err := c.Parse(ref, host, i == 0)
		if err != nil {
			t.Fatal(err)
		}
		locs[i] = loc
	}
	errs := make([]error, len(locs))
	var wg sync.WaitGroup
	for i, loc := range locs {
		wg.Go(func() { _, _, errs[i] = loc.Repo.Manifest(context.Background(), loc.ID()) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func pushImages(t *testing.T, reg *regtest.Registry, layers int, refs ...string) {
	t.Helper()
	img, err := random.Image(64, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs {
		reg.Push(t, ref, img)
	}
}

// TestNoPingWithoutCredentials: a registry reached without credentials is
// not pinged: the first requests are the ones the rebase needs, in every
// form of naming a plain-HTTP registry.
func TestNoPingWithoutCredentials(t *testing.T) {
	reg := regtest.Start(t)
	pushImages(t, reg, 1, "app:1", "base:1", "base:2")
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(20*time.Millisecond))
	defer proxy.Close()
	for _, tt := range []struct {
		name string
		opts Options
	}{
		{"http://HOST", Options{PlainHTTP: []string{proxy.Host()}}},
		{"--insecure HOST", Options{Insecure: []string{proxy.Host()}}},
		{"--insecure", Options{Insecure: []string{"*"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			proxy.Reset()
			tt.opts.Keychain = reg.Keychain()
			readManifests(t, New(tt.opts), proxy.Host(), "app:1", "base:1", "base:2")
			if s := proxy.Stats(); s.Requests != 3 || s.ByClass["manifest"] != 3 || s.RoundTrips != 1 {
				t.Errorf("%d requests %v in %d round trips, want the 3 manifests in 1", s.Requests, s.ByClass, s.RoundTrips)
			}
		})
	}
}

// TestInsecureHostFallsBackToHTTPAtOnce: a registry named with --insecure
// HOST:PORT that speaks plain HTTP is tried over HTTPS once per request of
// the first round, never retried over HTTPS (a refused TLS handshake is not
// transient), then reached over HTTP; later requests go to HTTP at once.
func TestInsecureHostFallsBackToHTTPAtOnce(t *testing.T) {
	reg := regtest.Start(t)
	pushImages(t, reg, 1, "app:1", "base:1", "base:2")
	var log bytes.Buffer
	c := New(Options{Insecure: []string{reg.Host}, Keychain: reg.Keychain(), Log: &log})
	readManifests(t, c, reg.Host, "app:1", "base:1", "base:2")
	readManifests(t, c, reg.Host, "app:1")
	https := map[string]int{}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(log.String()), "\n") {
		f := strings.Fields(l)
		lines = append(lines, f[1]+" "+f[2])
		if strings.HasPrefix(f[2], "https://") {
			https[f[2]]++
			if !strings.Contains(l, "first record does not look like a TLS handshake") {
				t.Errorf("HTTPS attempt: %s", l)
			}
		}
	}
	if len(https) != 3 {
		t.Errorf("HTTPS tried for %d URLs, want the 3 of the first round:\n%s", len(https), log.String())
	}
	for u, n := range https {
		if n != 1 {
			t.Errorf("%s tried %d times over HTTPS, want once (no retry)", u, n)
		}
	}
	if want := "GET http://" + reg.Host + "/v2/app/manifests/1"; lines[len(lines)-1] != want || len(lines) != 7 {
		t.Errorf("requests %q: want 3 HTTPS attempts, 3 HTTP reads, then %q over HTTP at once", lines, want)
	}
}

// TestTLSRefusalIsOneAttemptAndOneLine: a registry not named insecure that
// answers TLS in plain HTTP fails at the first attempt, with a line that
// says what to do.
func TestTLSRefusalIsOneAttemptAndOneLine(t *testing.T) {
	reg := regtest.Start(t)
	pushImages(t, reg, 1, "app:1")
	var log bytes.Buffer
	c := New(Options{Keychain: reg.Keychain(), Log: &log})
	loc, err := c.Parse("app:1", reg.Host, false)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = loc.Repo.Manifest(context.Background(), loc.ID())
	if err == nil || !strings.Contains(err.Error(), "speaks plain HTTP") || !strings.Contains(err.Error(), "--insecure") || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %v: want one line naming --insecure", err)
	}
	if n := strings.Count(log.String(), "\n"); n != 1 {
		t.Errorf("%d attempts, want 1:\n%s", n, log.String())
	}
}

func TestRetriableErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"connection reset", errors.New("read: connection reset by peer"), true},
		{"plain HTTP answer to TLS", fmt.Errorf("GET: %w", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}), false},
		{"untrusted certificate", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, false},
		{"wrong host in certificate", x509.HostnameError{Host: "h"}, false},
		{"TLS alert", tls.AlertError(40), false},
	}
	for _, tt := range tests {
		if got := retriable(nil, tt.err, ctx); got != tt.want {
			t.Errorf("%s: retriable = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestAnonymousTokenRegistry: a token registry reached without credentials
// (as Docker Hub's public images are) answers the first round 401; one
// anonymous token is fetched for every scope of the run, the requests are
// sent again, and every later request carries the token.
func TestAnonymousTokenRegistry(t *testing.T) {
	type entry struct {
		method, path string
		status       int
	}
	var mu sync.Mutex
	var log []entry
	// The token server is on the registry's host, as its realm says: the
	// requests are seen in front of both.
	reg := regtest.Start(t, regtest.WithTokenAuth(), regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sw := &statusWriter{ResponseWriter: w}
			h.ServeHTTP(sw, r)
			if sw.status == 0 {
				sw.status = http.StatusOK
			}
			mu.Lock()
			log = append(log, entry{r.Method, r.URL.Path, sw.status})
			mu.Unlock()
		})
	}))
	pushImages(t, reg, 2, "app:1", "base:1", "base:2")
	seen := func() []entry {
		mu.Lock()
		defer mu.Unlock()
		l := log
		log = nil
		return l
	}
	seen()
	c := New(Options{PlainHTTP: []string{reg.Host}, Keychain: reg.Keychain()})
	tokensBefore := len(reg.TokenScopes())
	readManifests(t, c, reg.Host, "app:1", "base:1", "base:2")
	tokens := reg.TokenScopes()[tokensBefore:]
	if len(tokens) != 1 || !strings.Contains(tokens[0], "repository:app:push,pull") || !strings.Contains(tokens[0], "repository:base:pull") {
		t.Fatalf("token requests %q, want one for app (push) and base", tokens)
	}
	unauthorized, reads := 0, 0
	for _, e := range seen() {
		switch {
		case e.path == "/v2/" || e.path == "/v2":
			t.Errorf("pinged: %s %s", e.method, e.path)
		case e.status == http.StatusUnauthorized:
			unauthorized++
		case strings.Contains(e.path, "/manifests/") && e.status == http.StatusOK:
			reads++
		}
	}
	if unauthorized < 1 || unauthorized > 3 || reads != 3 {
		t.Errorf("%d answers 401 and %d reads, want the first round's only (1 to 3) and the 3 reads", unauthorized, reads)
	}

	// The push scope came with the token: an upload needs no other.
	loc, _ := c.Parse("app:1", reg.Host, true)
	up, err := loc.Repo.(*Repo).StartUpload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	data := []byte(`{"a config":true}`)
	h, n, _ := v1.SHA256(bytes.NewReader(data))
	if err := up.Commit(context.Background(), v1.Descriptor{Digest: h, Size: n}, data); err != nil {
		t.Fatal(err)
	}
	for _, e := range seen() {
		if e.status == http.StatusUnauthorized {
			t.Errorf("%s %s answered 401 after the token", e.method, e.path)
		}
	}
	if n := len(reg.TokenScopes()) - tokensBefore; n != 1 {
		t.Errorf("%d token requests, want still 1", n)
	}
}

// TestBasicChallengeWithoutCredentials: a registry that asks for a password
// when none is configured fails with one 401, not a loop.
func TestBasicChallengeWithoutCredentials(t *testing.T) {
	reg := regtest.Start(t, regtest.WithBasicAuth("u", "p"))
	proxy := proxytest.Start(reg.Host)
	defer proxy.Close()
	c := New(Options{PlainHTTP: []string{proxy.Host()}, Keychain: authn.NewMultiKeychain()})
	loc, _ := c.Parse("app:1", proxy.Host(), false)
	_, _, err := loc.Repo.Manifest(context.Background(), loc.ID())
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("error %v, want 401", err)
	}
	if n := proxy.Stats().Requests; n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

// TestRequestLogStamps: -v stamps each request with its start since the
// client was made and its duration.
func TestRequestLogStamps(t *testing.T) {
	reg := regtest.Start(t)
	pushImages(t, reg, 1, "app:1")
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(20*time.Millisecond))
	defer proxy.Close()
	var log bytes.Buffer
	c := New(Options{PlainHTTP: []string{proxy.Host()}, Keychain: reg.Keychain(), Log: &log})
	readManifests(t, c, proxy.Host(), "app:1")
	readManifests(t, c, proxy.Host(), "app:1")
	line := regexp.MustCompile(`^\+(\d+\.\d{3})s GET http://\S+/v2/app/manifests/1 -> 200 OK \((\d+)ms\)$`)
	var starts []float64
	for _, l := range strings.Split(strings.TrimSpace(log.String()), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("log line %q: want +S.SSSs METHOD URL -> STATUS (Nms)", l)
		}
		s, _ := strconv.ParseFloat(m[1], 64)
		d, _ := strconv.Atoi(m[2])
		if d < 20 {
			t.Errorf("%q: duration under the proxy's 20ms", l)
		}
		starts = append(starts, s)
	}
	if len(starts) != 2 || starts[1] < starts[0]+0.020 {
		t.Errorf("starts %v: the second request starts after the first one's 20ms", starts)
	}
}

// TestTransfersAreBounded: the mounts of a base of 40 layers run at most
// Options.Transfers at once, not one connection per layer.
func TestTransfersAreBounded(t *testing.T) {
	var inFlight, peak atomic.Int32
	reg := regtest.Start(t, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && r.URL.Query().Get("mount") != "" {
				n := inFlight.Add(1)
				defer inFlight.Add(-1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				time.Sleep(10 * time.Millisecond)
			}
			h.ServeHTTP(w, r)
		})
	}))
	img, err := random.Image(16, 40)
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, "base:1", img)
	m, _ := img.Manifest()
	c := New(Options{PlainHTTP: []string{reg.Host}, Keychain: reg.Keychain(), Transfers: 4})
	src, _ := c.Parse("base:1", reg.Host, false)
	dst, _ := c.Parse("app:1", reg.Host, true)
	got, err := dst.Repo.(*Repo).Transfer(context.Background(), src.Repo, m.Layers, false)
	if err != nil || got.Mounted != 40 {
		t.Fatalf("transfer: %+v, %v", got, err)
	}
	if p := peak.Load(); p > 4 || p < 2 {
		t.Errorf("%d mounts at once, want at most 4 (and more than one)", p)
	}
}
