package regtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

type fixture struct {
	base, app   v1.Image
	idx         v1.ImageIndex
	baseLayers  []v1.Hash
	appOwnLayer v1.Hash
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	base, err := testimage.Base(testimage.OCI, "1")
	if err != nil {
		t.Fatal(err)
	}
	app, err := testimage.App(base, testimage.AppSteps("base:1")...)
	if err != nil {
		t.Fatal(err)
	}
	arm, err := testimage.Build(testimage.Scratch(testimage.OCI), testimage.Platform{OS: "linux", Arch: "arm64"}, testimage.BaseSteps("1")...)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := testimage.Index(testimage.OCI, base, arm)
	if err != nil {
		t.Fatal(err)
	}
	f := fixture{base: base, app: app, idx: idx}
	m, _ := app.Manifest()
	for _, l := range m.Layers[:3] {
		f.baseLayers = append(f.baseLayers, l.Digest)
	}
	f.appOwnLayer = m.Layers[len(m.Layers)-1].Digest
	return f
}

func digest(t *testing.T, x interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	d, err := x.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// TestVariants pushes, reads and lists images on every kind of registry
// Start makes, and checks that the registry refuses clients that lack
// credentials or do not trust its certificate. (Basic auth costs a bcrypt
// comparison per request, about 70 ms a request under -race: keep such
// cases light.)
func TestVariants(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name       string
		opts       []Option
		tls, creds bool
		token      bool
		noIndex    bool // basic auth is slow under -race: push less
	}{
		{name: "plain"},
		{name: "tls", opts: []Option{WithTLS()}, tls: true},
		{name: "basic", opts: []Option{WithBasicAuth("alice", "s3cret")}, creds: true, noIndex: true},
		{name: "token-anonymous", opts: []Option{WithTokenAuth()}, token: true},
		{name: "tls-token-basic", opts: []Option{WithTLS(), WithTokenAuth(), WithBasicAuth("bob", "pa55")}, tls: true, creds: true, token: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := Start(t, c.opts...)
			if !strings.HasPrefix(r.Host, "127.0.0.1:") {
				t.Errorf("Host %q", r.Host)
			}
			if wantScheme := map[bool]string{false: "http://", true: "https://"}[c.tls]; !strings.HasPrefix(r.URL(), wantScheme) {
				t.Errorf("URL %q, want %s", r.URL(), wantScheme)
			}
			if d := r.Push(t, "base:1", f.base).String(); d != digest(t, f.base) {
				t.Errorf("Push returned %s", d)
			}
			r.Push(t, "team/app:1", f.app)
			want := map[string]string{"base:1": digest(t, f.base), "team/app:1": digest(t, f.app)}
			if !c.noIndex {
				r.PushIndex(t, "multi:1", f.idx)
				if got := digest(t, r.Index(t, "multi:1")); got != digest(t, f.idx) {
					t.Errorf("read back index %s, pushed %s", got, digest(t, f.idx))
				}
				want["multi:1"] = digest(t, f.idx)
			}
			if got := digest(t, r.Image(t, "team/app:1")); got != digest(t, f.app) {
				t.Errorf("read back app %s, pushed %s", got, digest(t, f.app))
			}
			if d, ok := r.Digest(t, "base:1"); !ok || d != digest(t, f.base) {
				t.Errorf("Digest(base:1) = %s, %v", d, ok)
			}
			if d, ok := r.Digest(t, "base:missing"); ok {
				t.Errorf("Digest(base:missing) = %s, true", d)
			}
			if got := r.Snapshot(t); !maps.Equal(got, want) {
				t.Errorf("Snapshot\n%v\nwant\n%v", got, want)
			}
			if !r.BlobExists(t, "base", f.baseLayers[0]) || !r.BlobExists(t, "team/app", f.appOwnLayer) {
				t.Error("a pushed blob is missing")
			}
			if r.BlobExists(t, "base", f.appOwnLayer) {
				t.Error("BlobExists found the app's layer in the base repository")
			}

			// Deletion is enabled.
			resp, err := r.Client(t, "repository:base:delete").Do(mustRequest(t, http.MethodDelete, r.URL()+"/v2/base/manifests/"+digest(t, f.base), nil))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				t.Errorf("DELETE manifest: %s", resp.Status)
			}
			if _, ok := r.Digest(t, "base:1"); ok {
				t.Error("base:1 still there after DELETE")
			}

			// Clients without credentials, or with wrong ones, are refused.
			appRef := ref(t, r.Ref("team/app:1"))
			if c.creds || c.token {
				anon := []remote.Option{remote.WithTransport(r.Transport())}
				if _, err := remote.Head(appRef, anon...); c.creds && err == nil {
					t.Error("anonymous HEAD succeeded")
				}
			}
			if c.creds {
				bad := &authn.Basic{Username: "alice", Password: "wrong"}
				if _, err := remote.Head(appRef, remote.WithTransport(r.Transport()), remote.WithAuth(bad)); err == nil {
					t.Error("HEAD with a wrong password succeeded")
				}
				if _, err := remote.Head(appRef, remote.WithTransport(r.Transport()), remote.WithAuthFromKeychain(r.Keychain())); err != nil {
					t.Errorf("HEAD with the keychain: %v", err)
				}
			}
			if c.token {
				scopes := strings.Join(r.TokenScopes(), "\n")
				if !strings.Contains(scopes, "repository:team/app:pull") || !strings.Contains(scopes, "registry:catalog:*") {
					t.Errorf("token scopes asked:\n%s", scopes)
				}
			}

			// With TLS, only a client that trusts the certificate gets in,
			// and plain HTTP is refused.
			if c.tls {
				if _, err := (&http.Client{}).Get(r.URL() + "/v2/"); err == nil || !strings.Contains(err.Error(), "certificate") {
					t.Errorf("a client with the system roots connected: %v", err)
				}
				resp, err := (&http.Client{}).Get("http://" + r.Host + "/v2/")
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode != http.StatusBadRequest {
						t.Errorf("plain HTTP to the TLS port: %s", resp.Status)
					}
				}
				if !r.CertPool().Equal(r.CertPool()) || len(r.CACertPEM()) == 0 {
					t.Error("no certificate exposed")
				}
			} else if r.CertPool() != nil || r.CACertPEM() != nil {
				t.Error("certificate exposed without TLS")
			}
		})
	}
}

func mustRequest(t *testing.T, method, u string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestCrossRepositoryMount checks that the registry mounts a blob from
// another repository (201 Created) and that a mount from a repository
// without the blob starts an upload instead (202 Accepted).
func TestCrossRepositoryMount(t *testing.T) {
	f := newFixture(t)
	for _, opts := range [][]Option{nil, {WithBasicAuth("u", "p")}, {WithTokenAuth(), WithBasicAuth("u", "p")}} {
		r := Start(t, opts...)
		r.Push(t, "base:1", f.base)
		r.Push(t, "empty:1", f.base) // same blobs under another name...
		d := f.baseLayers[1]
		if r.BlobExists(t, "app", d) {
			t.Fatal("blob in app before the mount")
		}
		client := r.Client(t, "repository:app:pull,push", "repository:base:pull", "repository:nothing:pull")
		mount := func(from string) *http.Response {
			q := url.Values{"mount": {d.String()}, "from": {from}}
			resp, err := client.Post(r.URL()+"/v2/app/blobs/uploads/?"+q.Encode(), "", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}
		resp := mount("base")
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("mount: %s, want 201", resp.Status)
		}
		if loc := resp.Header.Get("Location"); !strings.HasSuffix(loc, "/v2/app/blobs/"+d.String()) {
			t.Errorf("mount Location %q", loc)
		}
		if !r.BlobExists(t, "app", d) {
			t.Error("mounted blob not in app")
		}
		if resp := mount("nothing"); resp.StatusCode != http.StatusAccepted {
			t.Errorf("mount from a repository without the blob: %s, want 202 (upload started)", resp.Status)
		}
	}
}

func TestTokenScopesAreEnforced(t *testing.T) {
	f := newFixture(t)
	r := Start(t, WithTokenAuth(), WithBasicAuth("u", "p"))
	r.Push(t, "base:1", f.base)
	d := f.baseLayers[0]
	// go-containerregistry's transport would ask for the missing scope on a
	// 401, so these requests carry fixed tokens.
	bearer := func(scopes ...string) string {
		q := url.Values{"service": {"regtest"}, "scope": scopes}
		req := mustRequest(t, http.MethodGet, r.URL()+"/token?"+q.Encode(), nil)
		req.SetBasicAuth("u", "p")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct{ Token string }
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Token == "" {
			t.Fatalf("token: %s %v", resp.Status, err)
		}
		return body.Token
	}
	do := func(method, path, token string) *http.Response {
		req := mustRequest(t, method, r.URL()+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	// A token for pushing to app, but not for pulling from base, cannot mount.
	mountPath := "/v2/app/blobs/uploads/?mount=" + d.String() + "&from=base"
	resp := do(http.MethodPost, mountPath, bearer("repository:app:pull,push"))
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="insufficient_scope"`) ||
		!strings.Contains(resp.Header.Get("WWW-Authenticate"), "repository:base:pull") {
		t.Errorf("mount without pull on the source: %s %q", resp.Status, resp.Header.Get("WWW-Authenticate"))
	}
	if resp := do(http.MethodPost, mountPath, bearer("repository:app:pull,push", "repository:base:pull")); resp.StatusCode != http.StatusCreated {
		t.Errorf("mount with both scopes: %s", resp.Status)
	}
	// A pull token cannot push; an unknown token is refused.
	if resp := do(http.MethodPost, "/v2/base/blobs/uploads/", bearer("repository:base:pull")); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("upload with a pull token: %s", resp.Status)
	}
	if resp := do(http.MethodGet, "/v2/", "forged"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/v2/ with a forged token: %s", resp.Status)
	}
	if resp := do(http.MethodGet, "/v2/", bearer()); resp.StatusCode != http.StatusOK {
		t.Errorf("/v2/ with a token: %s", resp.Status)
	}
	// ggcr's transport asks for the scopes a challenge names, and gets them.
	client := r.Client(t, "repository:app:pull,push")
	resp, err := client.Post(r.URL()+"/v2/app/blobs/uploads/?mount="+f.baseLayers[1].String()+"&from=base", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || !slices.Contains(r.TokenScopes(), "repository:app:pull,push repository:base:pull") {
		t.Errorf("mount through ggcr's transport: %s; scopes asked %q", resp.Status, r.TokenScopes())
	}
	// No token: challenge naming the realm and the scope.
	resp, err = http.Get(r.URL() + "/v2/base/manifests/1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := fmt.Sprintf(`Bearer realm="%s/token",service="regtest",scope="repository:base:pull"`, r.URL())
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != want {
		t.Errorf("anonymous GET: %s %q, want 401 %q", resp.Status, resp.Header.Get("WWW-Authenticate"), want)
	}

	// The OAuth2 form: password grant, then refresh grant.
	token := func(form url.Values) (int, map[string]any) {
		resp, err := http.PostForm(r.URL()+"/token", form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	if code, _ := token(url.Values{"grant_type": {"password"}, "username": {"u"}, "password": {"bad"}, "scope": {"repository:base:pull"}}); code != http.StatusUnauthorized {
		t.Errorf("password grant with a bad password: %d", code)
	}
	code, body := token(url.Values{"grant_type": {"password"}, "username": {"u"}, "password": {"p"}, "scope": {"repository:base:pull"}, "service": {"regtest"}})
	if code != http.StatusOK || body["access_token"] == nil || body["refresh_token"] == nil {
		t.Fatalf("password grant: %d %v", code, body)
	}
	code, body = token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {body["refresh_token"].(string)}, "scope": {"repository:base:pull"}})
	if code != http.StatusOK {
		t.Fatalf("refresh grant: %d %v", code, body)
	}
	req := mustRequest(t, http.MethodHead, r.URL()+"/v2/base/manifests/1", nil)
	req.Header.Set("Authorization", "Bearer "+body["access_token"].(string))
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD with the refreshed token: %s", resp.Status)
	}
}

// TestManifestWithMissingBlobIsRejected checks that the registry validates
// manifests: a manifest naming a blob the repository does not hold is
// refused (400 MANIFEST_BLOB_UNKNOWN) and nothing is tagged.
func TestManifestWithMissingBlobIsRejected(t *testing.T) {
	f := newFixture(t)
	r := Start(t)
	r.Push(t, "app:base", f.base) // the base's layers are in the repository, the app's are not
	repo := ref(t, r.Ref("app:1")).Context()
	cfg, err := f.app.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := f.app.Manifest()
	if err := remote.WriteLayer(repo, static.NewLayer(cfg, m.Config.MediaType), r.RemoteOptions()...); err != nil {
		t.Fatal(err)
	}
	layers, _ := f.app.Layers()
	if err := remote.WriteLayer(repo, layers[3], r.RemoteOptions()...); err != nil {
		t.Fatal(err)
	}
	before := r.Snapshot(t)
	raw, _ := f.app.RawManifest()
	put := func() (int, string) {
		req := mustRequest(t, http.MethodPut, r.URL()+"/v2/app/manifests/1", raw)
		req.Header.Set("Content-Type", string(m.MediaType))
		resp, err := r.Client(t, "repository:app:pull,push").Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := put()
	if code != http.StatusBadRequest || !strings.Contains(body, "MANIFEST_BLOB_UNKNOWN") || !strings.Contains(body, f.appOwnLayer.String()) {
		t.Errorf("PUT with a missing layer: %d %s", code, body)
	}
	if after := r.Snapshot(t); !maps.Equal(after, before) {
		t.Errorf("the refused PUT changed the registry: %v -> %v", before, after)
	}
	if err := remote.WriteLayer(repo, layers[4], r.RemoteOptions()...); err != nil {
		t.Fatal(err)
	}
	if code, body := put(); code != http.StatusCreated {
		t.Errorf("PUT with every blob: %d %s", code, body)
	}
	if d, _ := r.Digest(t, "app:1"); d != digest(t, f.app) {
		t.Errorf("app:1 is %s", d)
	}
}

func TestEachStartIsFresh(t *testing.T) {
	f := newFixture(t)
	a, b := Start(t), Start(t)
	a.Push(t, "base:1", f.base)
	if got := b.Snapshot(t); len(got) != 0 {
		t.Errorf("second registry holds %v", got)
	}
	if b.BlobExists(t, "base", f.baseLayers[0]) {
		t.Error("second registry holds the first one's blob")
	}
}

func TestWithHandlerSeesEveryRequest(t *testing.T) {
	f := newFixture(t)
	var n, unauthenticated atomic.Int64
	r := Start(t, WithBasicAuth("u", "p"), WithHandler(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			n.Add(1)
			if req.Header.Get("Authorization") == "" {
				unauthenticated.Add(1)
			}
			if req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/manifests/refused") {
				http.Error(w, "no", http.StatusForbidden)
				return
			}
			next.ServeHTTP(w, req)
		})
	}))
	r.Push(t, "base:1", f.base)
	if n.Load() == 0 || unauthenticated.Load() == 0 {
		t.Errorf("wrapper saw %d requests, %d unauthenticated", n.Load(), unauthenticated.Load())
	}
	if _, err := remote.Get(ref(t, r.Ref("base:refused")), r.RemoteOptions()...); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("wrapped refusal: %v", err)
	}
}

func TestCredentialHelpers(t *testing.T) {
	r := Start(t, WithBasicAuth("carol", "pw"))
	auth, err := r.Keychain().Resolve(ref(t, r.Ref("x:1")).Context())
	if err != nil || auth != r.Auth {
		t.Errorf("keychain for the registry: %v %v", auth, err)
	}
	if auth, _ := r.Keychain().Resolve(ref(t, "other.example/x:1").Context()); auth != authn.Anonymous {
		t.Errorf("keychain for another registry: %v", auth)
	}
	t.Setenv("DOCKER_CONFIG", r.DockerConfigDir(t))
	auth, err = authn.DefaultKeychain.Resolve(ref(t, r.Ref("x:1")).Context())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := auth.Authorization()
	if err != nil || cfg.Username != "carol" || cfg.Password != "pw" {
		t.Errorf("DOCKER_CONFIG credentials: %+v %v", cfg, err)
	}
}

// TestEnvironmentIsIgnored: REGISTRY_* variables (Podman's
// REGISTRY_AUTH_FILE among them) would break configuration.Parse.
func TestEnvironmentIsIgnored(t *testing.T) {
	t.Setenv("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
	t.Setenv("REGISTRY_STORAGE", "s3")
	r := Start(t)
	r.Push(t, "base:1", newFixture(t).base)
}

func TestCAFile(t *testing.T) {
	r := Start(t, WithTLS())
	b, err := readFile(r.CAFile(t))
	if err != nil || !bytes.Equal(b, r.CACertPEM()) || !bytes.HasPrefix(b, []byte("-----BEGIN CERTIFICATE-----")) {
		t.Errorf("CA file: %v %q", err, b)
	}
	other := Start(t, WithTLS())
	if bytes.Equal(other.CACertPEM(), r.CACertPEM()) {
		t.Error("two registries share a certificate")
	}
	// A client trusting one registry does not trust the other.
	resp, err := (&http.Client{Transport: r.Transport()}).Get(other.URL() + "/v2/")
	if err == nil {
		resp.Body.Close()
		t.Error("one registry's transport trusts another's certificate")
	}
}

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

func ref(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTokenLifetimeAndURLLimit(t *testing.T) {
	r := Start(t, WithTokenAuth(), WithTokenLifetime(time.Second))
	tokenFor := func(scopes ...string) (int, string, float64) {
		q := url.Values{"service": {"regtest"}, "scope": scopes}
		resp, err := http.Get(r.URL() + "/token?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Token     string
			ExpiresIn float64 `json:"expires_in"`
		}
		json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Token, body.ExpiresIn
	}
	code, tok, life := tokenFor("repository:app:pull")
	if code != http.StatusOK || life != 1 {
		t.Fatalf("token: %d, expires_in %v, want 200 and 1", code, life)
	}
	get := func() *http.Response {
		req := mustRequest(t, http.MethodGet, r.URL()+"/v2/", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := get(); resp.StatusCode != http.StatusOK {
		t.Fatalf("fresh token: %s", resp.Status)
	}
	time.Sleep(1100 * time.Millisecond)
	if resp := get(); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("expired token: %s %q, want 401 invalid_token", resp.Status, resp.Header.Get("WWW-Authenticate"))
	}
	var many []string
	for i := range 300 {
		many = append(many, fmt.Sprintf("repository:team/application-%04d:push,pull", i))
	}
	if code, _, _ := tokenFor(many...); code != http.StatusRequestURITooLong || r.TokenURLsRefused() != 1 {
		t.Errorf("a token URL for 300 repositories: %d (%d refused), want 414", code, r.TokenURLsRefused())
	}
}
