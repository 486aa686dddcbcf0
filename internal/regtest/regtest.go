// Package regtest runs the CNCF Distribution registry in process for tests:
// the real registry (handlers.NewApp with the in-memory storage driver),
// each instance with its own empty store, served by httptest over plain
// HTTP or HTTPS, optionally behind basic (htpasswd) or bearer-token
// authentication.
//
// Import it from _test.go files only, so that the binary never links the
// registry.
//
// The registry logs through logrus's standard logger, which Start silences
// for the whole process; set REGTEST_LOG=1 to see the logs on stderr.
package regtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd" // htpasswd access controller
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory" // inmemory storage driver
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"
)

var logOnce sync.Once

// quietLogs silences the registry's logs (logrus's standard logger, shared
// by the process) unless REGTEST_LOG is set.
func quietLogs() {
	logOnce.Do(func() {
		if os.Getenv("REGTEST_LOG") == "" {
			logrus.SetOutput(io.Discard)
		} else {
			logrus.SetOutput(os.Stderr)
			logrus.SetLevel(logrus.DebugLevel)
		}
	})
}

// Registry is a running registry, stopped when the test that started it
// ends.
type Registry struct {
	// Host is "127.0.0.1:port".
	Host string
	// Auth authenticates to it: anonymous unless WithBasicAuth gave
	// credentials (used for basic auth, or at the token server with
	// WithTokenAuth).
	Auth authn.Authenticator
	// Server is the HTTP server.
	Server *httptest.Server

	tls       bool
	certPEM   []byte
	pool      *x509.CertPool
	transport *http.Transport
	tokens    *tokenServer
}

type options struct {
	user, pass string
	wrap       func(http.Handler) http.Handler
	tls        bool
	token      bool
	lifetime   time.Duration
	urls       []string
	notify     []configuration.Endpoint
}

// Option configures Start.
type Option func(*options)

// WithBasicAuth requires credentials: HTTP basic authentication checked by
// Distribution's htpasswd access controller (bcrypt), or, with
// WithTokenAuth, checked by the token server.
func WithBasicAuth(user, pass string) Option {
	return func(o *options) { o.user, o.pass = user, pass }
}

// WithTokenAuth requires bearer tokens, as Docker Hub and most hosted
// registries do: requests without a token are answered 401 with a
// "WWW-Authenticate: Bearer realm=...,service=...,scope=..." challenge, and
// a token server at /token on the same host issues tokens for the scopes
// asked (GET with basic auth, or the OAuth2 POST form). With WithBasicAuth
// the token server requires those credentials; without, it serves anyone.
// Every scope asked is granted; a request whose token lacks a scope it
// needs (pull for reads, pull and push for writes, delete, pull on the
// source of a cross-repository mount, registry:catalog:* for the catalog)
// gets a 401 insufficient_scope challenge, as from Distribution's token
// access controller. Tokens live 300 s (see WithTokenLifetime); an expired
// token gets a 401 invalid_token challenge. A token request longer than 8
// KiB is refused with 414, as nginx in front of a token server does.
func WithTokenAuth() Option {
	return func(o *options) { o.token = true }
}

// WithTokenLifetime makes the tokens of WithTokenAuth expire after d (at
// least one second: the token protocol counts in seconds).
func WithTokenLifetime(d time.Duration) Option {
	return func(o *options) { o.lifetime = max(d, time.Second) }
}

// WithTLS serves HTTPS with a fresh self-signed certificate for 127.0.0.1
// and localhost. Clients must trust it: see Transport, CertPool, CAFile.
func WithTLS() Option {
	return func(o *options) { o.tls = true }
}

// WithHandler wraps the registry's handler, in front of everything else
// (authentication included), e.g. to serve a document the registry would
// refuse to store, or to refuse some requests.
func WithHandler(wrap func(http.Handler) http.Handler) Option {
	return func(o *options) { o.wrap = wrap }
}

// WithAllowedURLs lets manifests carry layer urls matching these regular
// expressions (Distribution's validation.manifests.urls.allow): foreign
// layers, as in Windows images. By default Distribution refuses every url.
func WithAllowedURLs(patterns ...string) Option {
	return func(o *options) { o.urls = append(o.urls, patterns...) }
}

// WithNotifications makes the registry send its events (pushes, pulls,
// mounts, deletes) to url as Distribution does: POSTed envelopes of
// "application/vnd.docker.distribution.events.v2+json", with headers
// added to each request, retried every 100 ms while url fails.
func WithNotifications(url string, headers http.Header) Option {
	return func(o *options) {
		o.notify = append(o.notify, configuration.Endpoint{
			Name: fmt.Sprintf("endpoint-%d", len(o.notify)+1), URL: url, Headers: headers,
			Timeout: 2 * time.Second, Threshold: 1, Backoff: 100 * time.Millisecond,
		})
	}
}

// Start runs a registry until the test ends.
func Start(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	quietLogs()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	reg := &Registry{Auth: authn.Anonymous, tls: o.tls}
	if o.user != "" {
		reg.Auth = &authn.Basic{Username: o.user, Password: o.pass}
	}

	// The configuration is built in Go, not parsed: configuration.Parse
	// applies REGISTRY_* environment variables, and REGISTRY_AUTH_FILE
	// (Podman's credentials file) makes it fail.
	cfg := &configuration.Configuration{
		Version: configuration.MajorMinorVersion(0, 1),
		Storage: configuration.Storage{
			"inmemory":    configuration.Parameters{},
			"delete":      configuration.Parameters{"enabled": true},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		},
	}
	cfg.Log.Level = "error"
	cfg.Log.AccessLog.Disabled = true
	cfg.Catalog.MaxEntries = 1000
	cfg.Tags.MaxTags = 1000
	cfg.HTTP.Secret = randomHex(16)
	if o.user != "" && !o.token {
		hash, err := bcrypt.GenerateFromPassword([]byte(o.pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "htpasswd")
		if err := os.WriteFile(file, []byte(o.user+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.Auth = configuration.Auth{"htpasswd": configuration.Parameters{"realm": "regtest", "path": file}}
	}
	if len(o.urls) > 0 {
		cfg.Validation.Manifests.URLs.Allow = o.urls
	}
	cfg.Notifications.Endpoints = o.notify
	app := handlers.NewApp(context.Background(), cfg)
	var h http.Handler = app
	if o.token {
		reg.tokens = newTokenServer(o.user, o.pass, o.lifetime)
		h = reg.tokens.wrap(h)
	}
	if o.wrap != nil {
		h = o.wrap(h)
	}

	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS handshake errors from clients that do not trust us
	reg.transport = http.DefaultTransport.(*http.Transport).Clone()
	if o.tls {
		cert, certPEM, err := selfSigned()
		if err != nil {
			t.Fatal(err)
		}
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		srv.StartTLS()
		reg.certPEM = certPEM
		reg.pool = x509.NewCertPool()
		reg.pool.AppendCertsFromPEM(certPEM)
		reg.transport.TLSClientConfig = &tls.Config{RootCAs: reg.pool}
	} else {
		srv.Start()
	}
	reg.Server = srv
	reg.Host = srv.Listener.Addr().String()
	if reg.tokens != nil {
		reg.tokens.realm = reg.URL() + "/token"
	}
	t.Cleanup(func() {
		srv.Close()
		reg.transport.CloseIdleConnections()
		_ = app.Shutdown()
	})
	return reg
}

// URL is "http://HOST" or, WithTLS, "https://HOST".
func (r *Registry) URL() string {
	if r.tls {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// Ref prefixes a "repo:tag" (or "repo@digest") with the registry's host.
func (r *Registry) Ref(s string) string { return r.Host + "/" + s }

// Transport is an HTTP transport for the registry: it trusts the
// registry's certificate WithTLS. It does not authenticate.
func (r *Registry) Transport() http.RoundTripper { return r.transport }

// CertPool holds the registry's certificate (nil without TLS).
func (r *Registry) CertPool() *x509.CertPool { return r.pool }

// CACertPEM is the registry's self-signed certificate in PEM (nil without
// TLS).
func (r *Registry) CACertPEM() []byte { return r.certPEM }

// CAFile writes the registry's certificate to a file in a temporary
// directory (for SSL_CERT_FILE, or a --cert-dir as "ca.crt") and returns its
// path.
func (r *Registry) CAFile(t testing.TB) string {
	t.Helper()
	if r.certPEM == nil {
		t.Fatal("regtest: CAFile without WithTLS")
	}
	file := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(file, r.certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// Keychain resolves the registry's host to Auth and any other registry to
// anonymous.
func (r *Registry) Keychain() authn.Keychain { return keychain{r} }

type keychain struct{ r *Registry }

// Resolve implements authn.Keychain.
func (k keychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	if res.RegistryStr() == k.r.Host {
		return k.r.Auth, nil
	}
	return authn.Anonymous, nil
}

// DockerConfigDir writes a Docker config.json holding the registry's
// credentials (if any) in a temporary directory and returns the directory,
// for DOCKER_CONFIG.
func (r *Registry) DockerConfigDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	auths := "{}"
	if b, ok := r.Auth.(*authn.Basic); ok {
		auths = fmt.Sprintf(`{%q:{"auth":%q}}`, r.Host, base64.StdEncoding.EncodeToString([]byte(b.Username+":"+b.Password)))
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"auths":`+auths+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// RemoteOptions are go-containerregistry options to reach the registry:
// its transport and credentials.
func (r *Registry) RemoteOptions() []remote.Option {
	return []remote.Option{remote.WithTransport(r.transport), remote.WithAuth(r.Auth)}
}

// Client is an HTTP client for raw requests to the registry, authenticated
// like go-containerregistry does (basic, or a bearer token for scopes such
// as "repository:app:pull,push").
func (r *Registry) Client(t testing.TB, scopes ...string) *http.Client {
	t.Helper()
	reg, err := name.NewRegistry(r.Host)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := transport.NewWithContext(context.Background(), reg, r.Auth, r.transport, scopes)
	if err != nil {
		t.Fatalf("regtest: connecting to %s: %v", r.Host, err)
	}
	return &http.Client{Transport: rt}
}

func (r *Registry) parse(t testing.TB, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(r.Ref(s))
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// Push writes img as repo:tag (setup only: go-containerregistry's writer)
// and returns its digest.
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) v1.Hash {
	t.Helper()
	if err := remote.Write(r.parse(t, repoTag), img, r.RemoteOptions()...); err != nil {
		t.Fatalf("pushing %s: %v", repoTag, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// PushIndex writes idx and its images as repo:tag and returns its digest.
func (r *Registry) PushIndex(t testing.TB, repoTag string, idx v1.ImageIndex) v1.Hash {
	t.Helper()
	if err := remote.WriteIndex(r.parse(t, repoTag), idx, r.RemoteOptions()...); err != nil {
		t.Fatalf("pushing %s: %v", repoTag, err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Image reads repo:tag (or repo@digest) back.
func (r *Registry) Image(t testing.TB, ref string) v1.Image {
	t.Helper()
	img, err := remote.Image(r.parse(t, ref), r.RemoteOptions()...)
	if err != nil {
		t.Fatalf("reading %s: %v", ref, err)
	}
	return img
}

// Index reads the index repo:tag (or repo@digest) back.
func (r *Registry) Index(t testing.TB, ref string) v1.ImageIndex {
	t.Helper()
	idx, err := remote.Index(r.parse(t, ref), r.RemoteOptions()...)
	if err != nil {
		t.Fatalf("reading %s: %v", ref, err)
	}
	return idx
}

// Digest returns the digest that repo:tag names now, and false if the
// registry has no such manifest.
func (r *Registry) Digest(t testing.TB, ref string) (string, bool) {
	t.Helper()
	desc, err := remote.Head(r.parse(t, ref), r.RemoteOptions()...)
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		return "", false
	}
	if err != nil {
		t.Fatalf("HEAD %s: %v", ref, err)
	}
	return desc.Digest.String(), true
}

// Snapshot returns every repo:tag with its digest (from the catalog and the
// tag lists), to prove that a command wrote nothing, or only what it
// should.
func (r *Registry) Snapshot(t testing.TB) map[string]string {
	t.Helper()
	reg, err := name.NewRegistry(r.Host)
	if err != nil {
		t.Fatal(err)
	}
	repos, err := remote.Catalog(context.Background(), reg, r.RemoteOptions()...)
	if err != nil {
		t.Fatalf("regtest: catalog: %v", err)
	}
	out := map[string]string{}
	for _, repo := range repos {
		rp, err := name.NewRepository(r.Ref(repo))
		if err != nil {
			t.Fatal(err)
		}
		tags, err := remote.List(rp, r.RemoteOptions()...)
		if err != nil {
			t.Fatalf("regtest: tags of %s: %v", repo, err)
		}
		for _, tag := range tags {
			d, err := remote.Head(rp.Tag(tag), r.RemoteOptions()...)
			if err != nil {
				t.Fatalf("regtest: HEAD %s:%s: %v", repo, tag, err)
			}
			out[repo+":"+tag] = d.Digest.String()
		}
	}
	return out
}

// BlobExists reports whether repo holds the blob (a HEAD answered 200).
func (r *Registry) BlobExists(t testing.TB, repo string, d v1.Hash) bool {
	t.Helper()
	resp, err := r.Client(t, "repository:"+repo+":pull").Head(fmt.Sprintf("%s/v2/%s/blobs/%s", r.URL(), repo, d))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true
	case http.StatusNotFound:
		return false
	}
	t.Fatalf("regtest: HEAD blob %s in %s: %s", d, repo, resp.Status)
	return false
}

// TokenScopes lists, in order, the scopes asked of the token server
// (WithTokenAuth), one string per token request with its scopes joined by
// spaces, e.g. "repository:app:pull,push repository:base:pull".
func (r *Registry) TokenScopes() []string {
	if r.tokens == nil {
		return nil
	}
	return r.tokens.requests()
}

// TokenURLsRefused counts the token requests refused because their URL was
// over 8 KiB (WithTokenAuth).
func (r *Registry) TokenURLsRefused() int {
	if r.tokens == nil {
		return 0
	}
	return r.tokens.tooLong()
}

// selfSigned makes a certificate for 127.0.0.1, ::1 and localhost, its own
// CA.
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "regtest"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// trimV2 returns the part of a /v2/ path after the prefix, and whether the
// path is under /v2/ at all.
func trimV2(path string) (string, bool) {
	if path == "/v2" || path == "/v2/" {
		return "", true
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	return rest, ok
}
