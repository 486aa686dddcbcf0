// Package registry gives the engine access to container registries through
// go-containerregistry: references, credentials from the Docker and Podman
// config files and credential helpers, TLS, retries, and the few requests
// the rebase needs (manifest and config reads, blob mounts, small uploads,
// manifest writes). It never moves layer bytes unless told to.
package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/version"
)

// Options configure a Client.
type Options struct {
	// Keychain resolves credentials; authn.DefaultKeychain when nil (the
	// Docker config, Podman's auth.json and their credential helpers).
	Keychain authn.Keychain
	// Insecure lists registries ("host:port") reached over plain HTTP or
	// with unverified TLS; "*" means every registry.
	Insecure []string
	// PlainHTTP lists registries ("host:port") known to speak plain HTTP
	// only (named http://host:port): they are also Insecure, and HTTPS is
	// never tried. An Insecure registry is tried over HTTPS first, then
	// over plain HTTP.
	PlainHTTP []string
	// Log receives one line per HTTP request when non-nil (-v). Secrets are
	// never written: no headers, no query strings.
	Log io.Writer
	// Transport is the base transport; http.DefaultTransport when nil.
	Transport http.RoundTripper
	// UserAgent is sent with every request, followed by
	// go-containerregistry's own product; "image-rebase/VERSION" when empty
	// (see package version).
	UserAgent string
	// RetryBackoff is the first wait before a retry (doubling, with
	// jitter); 250ms when zero. Tests shorten it.
	RetryBackoff time.Duration
	// Transfers bounds the blob mounts (or copies) in flight at once,
	// across every repository and every rebase of the client; 16 when
	// zero. A batch sets it to its -j.
	Transfers int
}

// Client reaches registries. It shares one transport per registry across
// every repository it touches: a registry is pinged, once, only when
// credentials are configured for it (their challenge says how to present
// them); otherwise requests go out at once and a token is fetched only if
// the registry asks for one.
type Client struct {
	opts Options

	retry retryPolicy
	// start is when the client was made: -v stamps requests from it.
	start time.Time
	// transfers holds a slot per blob transfer in flight.
	transfers chan struct{}

	mu     sync.Mutex
	scopes map[string]*scopeBook // registry → scopes asked so far
	regs   map[string]*regConn
}

type regConn struct {
	once sync.Once
	rt   http.RoundTripper
	err  error
}

// New returns a Client.
func New(opts Options) *Client {
	if opts.Keychain == nil {
		opts.Keychain = authn.DefaultKeychain
	}
	if opts.Transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Per-request limits; --timeout bounds the whole run.
		t.ResponseHeaderTimeout = 60 * time.Second
		t.TLSHandshakeTimeout = 15 * time.Second
		// A batch runs many requests to one registry at once: keep their
		// connections for the next ones (the default keeps 2 per host).
		t.MaxIdleConnsPerHost = 64
		opts.Transport = t
	}
	opts.Insecure = append(slices.Clone(opts.Insecure), opts.PlainHTTP...)
	if opts.UserAgent == "" {
		opts.UserAgent = version.UserAgent()
	}
	retry := defaultRetry
	if opts.RetryBackoff > 0 {
		retry.base = opts.RetryBackoff
	}
	if opts.Transfers <= 0 {
		opts.Transfers = 16
	}
	return &Client{opts: opts, retry: retry, start: time.Now(), transfers: make(chan struct{}, opts.Transfers),
		scopes: map[string]*scopeBook{}, regs: map[string]*regConn{}}
}

// IsInsecure reports whether reg may be reached without verified TLS.
func (c *Client) IsInsecure(reg string) bool {
	return slices.Contains(c.opts.Insecure, "*") || slices.Contains(c.opts.Insecure, reg)
}

// nameOptions are the options to parse references for registry reg.
func (c *Client) nameOptions(defaultRegistry string) []name.Option {
	var opts []name.Option
	if defaultRegistry != "" {
		opts = append(opts, name.WithDefaultRegistry(defaultRegistry))
	}
	return opts
}

// addScope records that the transport for reg must cover scope. Scopes
// named before the first request share tokens, in groups of repositories
// (see tokenTransport).
func (c *Client) addScope(reg, scope string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.book(reg).add(scope)
}

// transport returns the transport of a registry, made on first use.
func (c *Client) transport(ctx context.Context, reg name.Registry) (http.RoundTripper, error) {
	c.mu.Lock()
	rc, ok := c.regs[reg.RegistryStr()]
	if !ok {
		rc = &regConn{}
		c.regs[reg.RegistryStr()] = rc
	}
	c.mu.Unlock()

	rc.once.Do(func() {
		auth, err := c.opts.Keychain.Resolve(reg)
		if err != nil {
			rc.err = fmt.Errorf("reading credentials for %s: %w", reg.RegistryStr(), err)
			return
		}
		base := c.opts.Transport
		scheme := &schemeTransport{host: reg.RegistryStr(), scheme: "https"}
		switch {
		case slices.Contains(c.opts.PlainHTTP, reg.RegistryStr()):
			scheme.scheme, scheme.plain = "http", true
		case c.IsInsecure(reg.RegistryStr()):
			base = insecureTransport(base)
			scheme.scheme = "" // HTTPS, else plain HTTP
		}
		if c.opts.Log != nil {
			base = &logTransport{inner: base, w: c.opts.Log, start: c.start}
		}
		scheme.inner = base
		base = &retryTransport{inner: &verifyTransport{inner: scheme}, policy: c.retry}
		base = redirectCap{inner: transport.NewUserAgent(base, c.opts.UserAgent)}
		if auth == authn.Anonymous {
			// No credentials: no ping either; a token only if the
			// registry asks for one.
			rc.rt, rc.err = wrapped(reg, &lazyAuth{reg: reg, inner: base, c: c})
			return
		}
		// Credentials: the ping's challenge says how to present them.
		pr, err := transport.Ping(ctx, reg, base)
		if err != nil {
			rc.err = &AccessError{Op: "connecting to", Ref: reg.RegistryStr(), Err: err}
			return
		}
		rc.rt, rc.err = c.authenticated(reg, auth, base, pr)
	})
	return rc.rt, rc.err
}

// authenticated is the transport that presents auth to reg as the
// challenge pr asks: bearer tokens (see tokenTransport), or the credentials
// on every request.
func (c *Client) authenticated(reg name.Registry, auth authn.Authenticator, base http.RoundTripper, pr *transport.Challenge) (http.RoundTripper, error) {
	if strings.EqualFold(pr.Scheme, "bearer") {
		scheme := "https"
		if pr.Insecure {
			scheme = "http"
		}
		tt := &tokenTransport{inner: base, c: c, reg: reg, auth: auth, challenge: pr, scheme: scheme}
		// A Wrapper tells go-containerregistry that this transport
		// authenticates: it neither pings nor wraps it again.
		return wrapped(reg, tt)
	}
	return transport.FromToken(reg, auth, base, pr, &transport.Token{})
}

func insecureTransport(base http.RoundTripper) http.RoundTripper {
	t, ok := base.(*http.Transport)
	if !ok {
		return base
	}
	t = t.Clone()
	if t.TLSClientConfig == nil {
		t.TLSClientConfig = &tls.Config{}
	}
	t.TLSClientConfig.InsecureSkipVerify = true //nolint:gosec // only for registries the user named with --insecure
	return t
}

// logTransport writes one line per request: when it started (seconds since
// the client was made, i.e. since the run began), method, URL without query
// string, status and duration. Headers are never written.
type logTransport struct {
	inner http.RoundTripper
	w     io.Writer
	start time.Time
	mu    sync.Mutex
}

func (l *logTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := l.inner.RoundTrip(r)
	u := *r.URL
	u.RawQuery, u.User, u.Fragment = "", nil, ""
	var status string
	if err != nil {
		status = "error: " + redactURLs(err.Error())
	} else {
		status = resp.Status
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "+%.3fs %s %s -> %s (%s)\n", start.Sub(l.start).Seconds(), r.Method, u.String(), status, time.Since(start).Round(time.Millisecond))
	return resp, err
}

// redactURLs drops query strings from URLs inside an error text, where
// signed redirect URLs may carry credentials.
func redactURLs(s string) string {
	fields := strings.Fields(s)
	for i, f := range fields {
		if strings.Contains(f, "://") {
			if j := strings.IndexByte(f, '?'); j >= 0 {
				fields[i] = f[:j] + "?…"
			}
		}
	}
	return strings.Join(fields, " ")
}

// AccessError is a failure to reach or use a registry: network, TLS,
// authentication, a missing repository or tag.
type AccessError struct {
	// Op says what was being done, e.g. "reading manifest".
	Op string
	// Ref names what was accessed.
	Ref string
	// Err is the cause.
	Err error
}

// Error renders "Op Ref: cause".
func (e *AccessError) Error() string {
	return fmt.Sprintf("%s %s: %s", e.Op, e.Ref, describe(e.Err))
}

// Unwrap returns the cause.
func (e *AccessError) Unwrap() error { return e.Err }

// Is matches engine.ErrNotFound when the registry answered that the
// manifest, blob or repository does not exist.
func (e *AccessError) Is(target error) bool {
	if target != engine.ErrNotFound {
		return false
	}
	var te *transport.Error
	if !errors.As(e.Err, &te) {
		return false
	}
	if te.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range te.Errors {
		switch d.Code {
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
			return true
		}
	}
	return false
}

// describe shortens go-containerregistry's errors to one line.
func describe(err error) string {
	var loop *redirectLoopError
	if errors.As(err, &loop) {
		return loop.Error()
	}
	var header tls.RecordHeaderError
	if errors.As(err, &header) && string(header.RecordHeader[:]) == "HTTP/" {
		return "the registry speaks plain HTTP, not HTTPS: name it http://HOST as REGISTRY, or pass --insecure for it"
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return fmt.Sprintf("TLS certificate not trusted (%v); add its CA to the system store or SSL_CERT_FILE, or pass --insecure for this registry", cv.Err)
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized:
			return "authentication failed (401): check the credentials in your Docker/Podman config"
		case http.StatusForbidden:
			return "access denied (403)"
		case http.StatusNotFound:
			return "not found (404)"
		}
		if len(te.Errors) > 0 {
			d := te.Errors[0]
			return fmt.Sprintf("%s (%d %s)", d.Message, te.StatusCode, d.Code)
		}
		return fmt.Sprintf("unexpected status %d", te.StatusCode)
	}
	return strings.ReplaceAll(redactURLs(err.Error()), "\n", " ")
}

// speaksTLS explains a 400 answer to the first plain-HTTP request to reg
// (see schemeTransport): a registry that answers 400 to plain HTTP and
// completes a TLS handshake speaks HTTPS (Go
// servers answer "Client sent an HTTP request to an HTTPS server", nginx
// "The plain HTTP request was sent to HTTPS port", both with 400).
func speaksTLS(ctx context.Context, reg string, err error) error {
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != http.StatusBadRequest {
		return err
	}
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}, NetDialer: &net.Dialer{Timeout: 5 * time.Second}} //nolint:gosec // only to tell that the server speaks TLS; nothing is sent
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, derr := d.DialContext(ctx, "tcp", reg)
	if derr != nil {
		return err
	}
	conn.Close()
	return fmt.Errorf("%s speaks TLS (HTTPS), not plain HTTP: name it without http:// (add --insecure=%s if its certificate is not trusted)", reg, reg)
}
