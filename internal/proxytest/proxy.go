// Package proxytest is an HTTP reverse proxy for tests and benchmarks, put
// in front of a real registry on loopback: it counts requests and body
// bytes, adds latency per request, computes how many requests had to wait
// for one another (sequential round trips), and can inject faults.
package proxytest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards every request to a backend.
type Proxy struct {
	srv     *httptest.Server
	latency time.Duration
	faults  func(n int, r *http.Request) Fault

	mu  sync.Mutex
	log []Entry
	n   atomic.Int64
}

// Entry records one request.
type Entry struct {
	Method, Path string
	Class        string
	// Digest is the blob a blob request reads or an upload commits.
	Digest     string
	Status     int
	Start, End time.Time
	// BlobBytesOut counts blob bytes served by GET /v2/<name>/blobs/...;
	// BlobBytesIn counts bytes uploaded to /v2/<name>/blobs/uploads/.
	BlobBytesOut, BlobBytesIn int64
	Fault                     string
}

// Fault is an injected failure; the zero Fault injects nothing.
type Fault struct {
	// Status answers with this status instead of forwarding.
	Status int
	// RetryAfter sets the Retry-After header of a Status answer.
	RetryAfter string
	// Drop closes the connection without an answer.
	Drop bool
	// Truncate forwards the request but sends only half of the answer,
	// then closes the connection: half of its body (with the full
	// Content-Length), or, for an answer without a body (HEAD, 201, 202),
	// half of its status line and headers. The backend has handled the
	// request: only its answer is lost.
	Truncate bool
	// Delay waits this long before forwarding.
	Delay time.Duration
}

// Option configures a Proxy.
type Option func(*Proxy)

// WithLatency adds d before each request is forwarded.
func WithLatency(d time.Duration) Option { return func(p *Proxy) { p.latency = d } }

// WithFaults calls f for the nth request (counted from 1) to pick a fault.
func WithFaults(f func(n int, r *http.Request) Fault) Option { return func(p *Proxy) { p.faults = f } }

// Start starts a proxy to backend ("host:port", plain HTTP) on loopback.
func Start(backend string, opts ...Option) *Proxy {
	p := &Proxy{}
	for _, o := range opts {
		o(p)
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: backend})
	rp.ErrorLog = nil
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(p.n.Add(1))
		e := Entry{Method: r.Method, Path: r.URL.Path, Class: Classify(r.Method, r.URL.Path), Start: time.Now()}
		switch e.Class {
		case "blob":
			e.Digest = r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		case "blob-upload":
			e.Digest = r.URL.Query().Get("digest")
			if e.Digest == "" {
				e.Digest = r.URL.Query().Get("mount")
			}
		}
		defer func() {
			e.End = time.Now()
			p.mu.Lock()
			p.log = append(p.log, e)
			p.mu.Unlock()
		}()
		if p.latency > 0 {
			time.Sleep(p.latency)
		}
		var truncate bool
		if p.faults != nil {
			if f := p.faults(n, r); f != (Fault{}) {
				switch {
				case f.Delay > 0:
					e.Fault = "delay"
					time.Sleep(f.Delay)
				case f.Truncate:
					e.Fault, truncate = "truncate", true
				case f.Drop:
					e.Fault = "drop"
					if hj, ok := w.(http.Hijacker); ok {
						if c, _, err := hj.Hijack(); err == nil {
							c.Close()
						}
					}
					return
				default:
					e.Fault, e.Status = http.StatusText(f.Status), f.Status
					if f.RetryAfter != "" {
						w.Header().Set("Retry-After", f.RetryAfter)
					}
					w.WriteHeader(f.Status)
					return
				}
			}
		}
		if e.Class == "blob-upload" && r.Body != nil {
			r.Body = &counter{ReadCloser: r.Body, n: &e.BlobBytesIn}
		}
		if truncate {
			e.Status = truncated(rp, w, r)
			return
		}
		cw := &countingWriter{ResponseWriter: w}
		rp.ServeHTTP(cw, r)
		e.Status = cw.status
		if e.Class == "blob" && r.Method == http.MethodGet {
			e.BlobBytesOut = cw.n
		}
	}))
	return p
}

// truncated forwards r and sends half of the answer (see Fault.Truncate),
// then closes the connection; it returns the backend's status.
func truncated(rp http.Handler, w http.ResponseWriter, r *http.Request) int {
	rec := httptest.NewRecorder()
	rp.ServeHTTP(rec, r)
	hj, ok := w.(http.Hijacker)
	if !ok {
		return rec.Code
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return rec.Code
	}
	defer conn.Close()
	body := rec.Body.Bytes()
	var head bytes.Buffer
	fmt.Fprintf(&head, "HTTP/1.1 %d %s\r\n", rec.Code, http.StatusText(rec.Code))
	if len(body) > 0 && r.Method != http.MethodHead {
		rec.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	rec.Header().Write(&head)
	head.WriteString("\r\n")
	if len(body) == 0 || r.Method == http.MethodHead {
		buf.Write(head.Bytes()[:head.Len()/2])
	} else {
		buf.Write(head.Bytes())
		buf.Write(body[:len(body)/2])
	}
	buf.Flush()
	return rec.Code
}

// Host returns "127.0.0.1:port".
func (p *Proxy) Host() string { return strings.TrimPrefix(p.srv.URL, "http://") }

// Close stops the proxy.
func (p *Proxy) Close() { p.srv.Close() }

// Reset forgets the requests seen so far.
func (p *Proxy) Reset() {
	p.mu.Lock()
	p.log = nil
	p.mu.Unlock()
	p.n.Store(0)
}

// Log returns the requests seen so far, in the order they ended.
func (p *Proxy) Log() []Entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Entry(nil), p.log...)
}

// Stats summarises the requests seen so far.
type Stats struct {
	Requests   int
	RoundTrips int
	// ByClass counts requests per Classify class.
	ByClass map[string]int
	// BlobBytesDown and BlobBytesUp count blob bytes downloaded and
	// uploaded (configs included).
	BlobBytesDown, BlobBytesUp int64
}

// BytesOf sums the blob bytes moved, either way, for the digests keep
// selects (e.g. the layers, leaving configs out).
func (p *Proxy) BytesOf(keep func(digest string) bool) int64 {
	var n int64
	for _, e := range p.Log() {
		if keep(e.Digest) {
			n += e.BlobBytesOut + e.BlobBytesIn
		}
	}
	return n
}

// Stats returns a summary of the log.
func (p *Proxy) Stats() Stats {
	log := p.Log()
	s := Stats{Requests: len(log), RoundTrips: RoundTrips(log), ByClass: map[string]int{}}
	for _, e := range log {
		s.ByClass[e.Class]++
		s.BlobBytesDown += e.BlobBytesOut
		s.BlobBytesUp += e.BlobBytesIn
	}
	return s
}

// RoundTrips returns the length of the longest chain of requests in which
// each started after the previous one ended: the number of sequential
// round trips a client paid for, however many ran alongside.
func RoundTrips(log []Entry) int {
	es := append([]Entry(nil), log...)
	sort.Slice(es, func(i, j int) bool { return es[i].Start.Before(es[j].Start) })
	depth := make([]int, len(es))
	best := 0
	for i := range es {
		depth[i] = 1
		for j := 0; j < i; j++ {
			if !es[j].End.After(es[i].Start) && depth[j]+1 > depth[i] {
				depth[i] = depth[j] + 1
			}
		}
		best = max(best, depth[i])
	}
	return best
}

// Classify names the kind of a registry request: "ping", "manifest",
// "blob", "blob-upload", "tags", "catalog" or "other".
func Classify(method, path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "ping"
	case strings.Contains(path, "/blobs/uploads"):
		return "blob-upload"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.HasSuffix(path, "/tags/list"):
		return "tags"
	case strings.HasSuffix(path, "/_catalog"):
		return "catalog"
	}
	return "other"
}

// Describe names what a registry request is, independently of anything
// that changes from run to run (an upload session's id): "GET ping",
// "GET manifest app 1", "HEAD blob app sha256:…", "POST upload-open app",
// "POST mount app sha256:… from base", "PUT upload-commit app sha256:…",
// "PATCH upload-data app", "DELETE upload-cancel app".
func Describe(r *http.Request) string {
	class := Classify(r.Method, r.URL.Path)
	rest := strings.TrimPrefix(r.URL.Path, "/v2/")
	switch class {
	case "ping":
		return r.Method + " ping"
	case "manifest", "blob":
		i := strings.LastIndex(rest, "/"+class+"s/")
		return fmt.Sprintf("%s %s %s %s", r.Method, class, rest[:i], rest[i+len(class)+3:])
	case "blob-upload":
		repo := rest[:strings.Index(rest, "/blobs/uploads")]
		q := r.URL.Query()
		switch {
		case r.Method == http.MethodPost && q.Get("mount") != "":
			return fmt.Sprintf("POST mount %s %s from %s", repo, q.Get("mount"), q.Get("from"))
		case r.Method == http.MethodPost:
			return "POST upload-open " + repo
		case r.Method == http.MethodPut:
			return fmt.Sprintf("PUT upload-commit %s %s", repo, q.Get("digest"))
		case r.Method == http.MethodPatch:
			return "PATCH upload-data " + repo
		case r.Method == http.MethodDelete:
			return "DELETE upload-cancel " + repo
		}
	}
	return r.Method + " " + class + " " + r.URL.Path
}

type counter struct {
	io.ReadCloser
	n *int64
}

func (c *counter) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	*c.n += int64(n)
	return n, err
}

type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(s int) {
	c.status = s
	c.ResponseWriter.WriteHeader(s)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.WriteHeader(http.StatusOK)
	}
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

// Flush lets streamed responses through.
func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
