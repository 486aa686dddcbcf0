// Package regtest runs the CNCF Distribution registry in process for tests:
// the real registry (handlers and the in-memory storage driver), each
// instance with its own empty store. Import it from tests only, so that the
// binary never links the registry.
package regtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/configuration"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd" // htpasswd access controller
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory" // inmemory storage driver
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"
)

func init() { logrus.SetOutput(io.Discard) }

// Registry is a running registry.
type Registry struct {
	// Host is "127.0.0.1:port" (plain HTTP).
	Host string
	// Auth authenticates to it (anonymous unless WithBasicAuth).
	Auth authn.Authenticator
	// Server is the HTTP server; its handler may be wrapped by tests.
	Server *httptest.Server
}

type options struct {
	user, pass string
	wrap       func(http.Handler) http.Handler
	urls       []string
}

// Option configures Start.
type Option func(*options)

// WithBasicAuth requires HTTP basic authentication (htpasswd, bcrypt).
func WithBasicAuth(user, pass string) Option {
	return func(o *options) { o.user, o.pass = user, pass }
}

// WithHandler wraps the registry's handler, e.g. to serve a document the
// registry would refuse to store.
func WithHandler(wrap func(http.Handler) http.Handler) Option {
	return func(o *options) { o.wrap = wrap }
}

// WithAllowedURLs lets manifests carry layer urls matching these regular
// expressions (Distribution's validation.manifests.urls.allow): foreign
// layers, as in Windows images. By default Distribution refuses every url.
func WithAllowedURLs(patterns ...string) Option {
	return func(o *options) { o.urls = append(o.urls, patterns...) }
}

// Start runs a registry until the test ends.
func Start(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	cfg := "version: 0.1\nstorage:\n  inmemory: {}\n  delete:\n    enabled: true\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
	reg := &Registry{Auth: authn.Anonymous}
	if o.user != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(o.pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "htpasswd")
		if err := os.WriteFile(file, []byte(o.user+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: test\n    path: %s\n", file)
		reg.Auth = &authn.Basic{Username: o.user, Password: o.pass}
	}
	if len(o.urls) > 0 {
		cfg += "validation:\n  manifests:\n    urls:\n      allow:\n"
		for _, u := range o.urls {
			cfg += fmt.Sprintf("        - %q\n", u)
		}
	}
	c, err := configuration.Parse(strings.NewReader(cfg))
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = handlers.NewApp(context.Background(), c)
	if o.wrap != nil {
		h = o.wrap(h)
	}
	reg.Server = httptest.NewServer(h)
	t.Cleanup(reg.Server.Close)
	reg.Host = strings.TrimPrefix(reg.Server.URL, "http://")
	return reg
}

// Ref prefixes a "repo:tag" with the registry's host.
func (r *Registry) Ref(s string) string { return r.Host + "/" + s }

// Push writes img as repo:tag (setup only: go-containerregistry's writer).
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(r.Ref(repoTag))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(r.Auth)); err != nil {
		t.Fatalf("pushing %s: %v", repoTag, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// PushIndex writes idx as repo:tag.
func (r *Registry) PushIndex(t testing.TB, repoTag string, idx v1.ImageIndex) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(r.Ref(repoTag))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx, remote.WithAuth(r.Auth)); err != nil {
		t.Fatalf("pushing %s: %v", repoTag, err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Image reads repo:tag back.
func (r *Registry) Image(t testing.TB, repoTag string) v1.Image {
	t.Helper()
	ref, err := name.ParseReference(r.Ref(repoTag))
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithAuth(r.Auth))
	if err != nil {
		t.Fatalf("reading %s: %v", repoTag, err)
	}
	return img
}

// Snapshot returns every repo:tag with its digest, to prove that a command
// wrote nothing.
func (r *Registry) Snapshot(t testing.TB) map[string]string {
	t.Helper()
	reg, err := name.NewRegistry(r.Host)
	if err != nil {
		t.Fatal(err)
	}
	repos, err := remote.Catalog(context.Background(), reg, remote.WithAuth(r.Auth))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, repo := range repos {
		rp, err := name.NewRepository(r.Ref(repo))
		if err != nil {
			t.Fatal(err)
		}
		tags, err := remote.List(rp, remote.WithAuth(r.Auth))
		if err != nil {
			t.Fatal(err)
		}
		for _, tag := range tags {
			d, err := remote.Head(rp.Tag(tag), remote.WithAuth(r.Auth))
			if err != nil {
				t.Fatal(err)
			}
			out[repo+":"+tag] = d.Digest.String()
		}
	}
	return out
}

// BlobExists reports whether repo holds the blob.
func (r *Registry) BlobExists(t testing.TB, repo string, d v1.Hash) bool {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, fmt.Sprintf("http://%s/v2/%s/blobs/%s", r.Host, repo, d), nil)
	if b, ok := r.Auth.(*authn.Basic); ok {
		req.SetBasicAuth(b.Username, b.Password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
