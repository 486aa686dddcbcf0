package proxytest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRoundTrips(t *testing.T) {
	at := func(start, end int) Entry {
		base := time.Unix(0, 0)
		return Entry{Start: base.Add(time.Duration(start) * time.Millisecond), End: base.Add(time.Duration(end) * time.Millisecond)}
	}
	tests := []struct {
		name string
		log  []Entry
		want int
	}{
		{"none", nil, 0},
		{"one", []Entry{at(0, 10)}, 1},
		{"concurrent", []Entry{at(0, 10), at(1, 11), at(2, 9)}, 1},
		{"sequential", []Entry{at(0, 10), at(10, 20), at(21, 30)}, 3},
		{"longest chain wins", []Entry{at(0, 10), at(11, 20), at(11, 25), at(26, 30), at(21, 22)}, 4},
		{"overlap is not a wait", []Entry{at(0, 10), at(5, 20), at(15, 30)}, 2},
	}
	for _, tt := range tests {
		if got := RoundTrips(tt.log); got != tt.want {
			t.Errorf("%s: RoundTrips = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestCountsLatencyAndFaults(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusCreated)
			return
		}
		io.WriteString(w, "0123456789")
	}))
	defer backend.Close()
	p := Start(strings.TrimPrefix(backend.URL, "http://"), WithLatency(20*time.Millisecond), WithFaults(func(n int, r *http.Request) Fault {
		if n == 4 {
			return Fault{Status: http.StatusTooManyRequests, RetryAfter: "1"}
		}
		return Fault{}
	}))
	defer p.Close()
	get := func(path string) *http.Response {
		resp, err := http.Get("http://" + p.Host() + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	start := time.Now()
	get("/v2/")
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { get("/v2/app/blobs/sha256:abc") })
	}
	wg.Wait()
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("two sequential rounds took %s, want ≥ 40ms of added latency", d)
	}
	req, _ := http.NewRequest(http.MethodPut, "http://"+p.Host()+"/v2/app/blobs/uploads/x", strings.NewReader("abcde"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("4th request: %s, Retry-After %q; want the injected 429", resp.Status, resp.Header.Get("Retry-After"))
	}
	req, _ = http.NewRequest(http.MethodPut, "http://"+p.Host()+"/v2/app/blobs/uploads/x", strings.NewReader("abcde"))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	s := p.Stats()
	if s.Requests != 5 || s.ByClass["ping"] != 1 || s.ByClass["blob"] != 2 || s.ByClass["blob-upload"] != 2 {
		t.Errorf("stats %+v", s)
	}
	if s.BlobBytesDown != 20 || s.BlobBytesUp != 5 {
		t.Errorf("blob bytes down %d up %d, want 20 and 5", s.BlobBytesDown, s.BlobBytesUp)
	}
	if s.RoundTrips != 4 {
		t.Errorf("round trips %d, want 4 (ping, two blobs together, two uploads)", s.RoundTrips)
	}
}

func TestTruncateAndDrop(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "0123456789")
	}))
	defer backend.Close()
	p := Start(strings.TrimPrefix(backend.URL, "http://"), WithFaults(func(n int, r *http.Request) Fault {
		return map[int]Fault{1: {Truncate: true}, 2: {Drop: true}}[n]
	}))
	defer p.Close()
	resp, err := http.Get("http://" + p.Host() + "/v2/x/manifests/1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || string(b) != "01234" {
		t.Errorf("truncated read = %q, %v; want 5 bytes then an error", b, err)
	}
	if _, err := http.Get("http://" + p.Host() + "/v2/x/manifests/1"); err == nil {
		t.Error("dropped request succeeded")
	}
	resp, err = http.Get("http://" + p.Host() + "/v2/x/manifests/1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "0123456789" {
		t.Errorf("third request = %q", b)
	}
}

// TestTruncateBodilessAnswers: an answer without a body (201, HEAD) is cut
// in its headers: the client gets an error, although the backend handled
// the request.
func TestTruncateBodilessAnswers(t *testing.T) {
	var handled int
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handled++
		w.Header().Set("Location", "/v2/x/blobs/uploads/some-long-session-id")
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusCreated)
	}))
	defer backend.Close()
	p := Start(strings.TrimPrefix(backend.URL, "http://"), WithFaults(func(n int, r *http.Request) Fault {
		return Fault{Truncate: true}
	}))
	defer p.Close()
	for _, method := range []string{http.MethodPut, http.MethodHead} {
		req, _ := http.NewRequest(method, "http://"+p.Host()+"/v2/x/blobs/uploads/abc?digest=sha256:1", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			t.Errorf("%s: truncated answer read as %s", method, resp.Status)
		}
	}
	if handled != 2 {
		t.Errorf("backend handled %d requests, want 2", handled)
	}
}

func TestDescribe(t *testing.T) {
	for _, c := range []struct{ method, url, want string }{
		{"GET", "/v2/", "GET ping"},
		{"GET", "/v2/team/app/manifests/1", "GET manifest team/app 1"},
		{"HEAD", "/v2/app/blobs/sha256:ab", "HEAD blob app sha256:ab"},
		{"POST", "/v2/app/blobs/uploads/?mount=sha256:ab&from=base", "POST mount app sha256:ab from base"},
		{"POST", "/v2/app/blobs/uploads/", "POST upload-open app"},
		{"PUT", "/v2/app/blobs/uploads/0192-uuid?_state=x&digest=sha256:cd", "PUT upload-commit app sha256:cd"},
		{"DELETE", "/v2/app/blobs/uploads/0192-uuid", "DELETE upload-cancel app"},
	} {
		r := httptest.NewRequest(c.method, c.url, nil)
		if got := Describe(r); got != c.want {
			t.Errorf("Describe(%s %s) = %q, want %q", c.method, c.url, got, c.want)
		}
	}
}
