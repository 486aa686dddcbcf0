package cli_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/cli"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

const schema1 = `{"schemaVersion":1,"name":"legacy","tag":"1","architecture":"amd64","fsLayers":[{"blobSum":"sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}],"history":[{"v1Compatibility":"{}"}]}`

// startRegistry runs the real registry; it also serves one Docker schema 1
// manifest (legacy:1), a kind Distribution no longer stores.
func startRegistry(t *testing.T, opts ...regtest.Option) *regtest.Registry {
	return regtest.Start(t, append(opts, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/v2/legacy/manifests/1":
				w.Header().Set("Content-Type", string(types.DockerManifestSchema1Signed))
				w.Write([]byte(schema1))
				return
			case "/v2/huge/manifests/1":
				w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
				w.Write([]byte(`{"schemaVersion":2,"padding":"` + strings.Repeat("x", 5<<20) + `"}`))
				return
			case "/v2/corrupt/manifests/1":
				w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
				w.Write([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":`))
				return
			}
			h.ServeHTTP(w, r)
		})
	}))...)
}

func image(t *testing.T, parent v1.Image, arch, env string, files map[string]string) v1.Image {
	t.Helper()
	img, err := testimage.Build(parent, testimage.Platform{OS: "linux", Arch: arch}, testimage.Copy("COPY", files), testimage.Env(env))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// fixture pushes base:1, base:2, app:1 (on base:1) and more.
// pushOdd pushes, for real, documents that are not rebaseable images: an
// artifact (a Helm chart) and an image whose config is not JSON.
func pushOdd(t *testing.T, reg *regtest.Registry) {
	t.Helper()
	l, err := testimage.Layer(map[string]string{"f": "x"}, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	repo, _ := name.NewRepository(reg.Ref("odd"))
	put := func(tag string, cfgMT types.MediaType, cfg []byte) {
		cl := static.NewLayer(cfg, cfgMT)
		for _, b := range []v1.Layer{l, cl} {
			if err := remote.WriteLayer(repo, b, remote.WithAuth(reg.Auth)); err != nil {
				t.Fatal(err)
			}
		}
		cd, _ := cl.Digest()
		ld, _ := l.Digest()
		ls, _ := l.Size()
		m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":%q,"size":%d,"digest":%q},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":%d,"digest":%q}]}`,
			cfgMT, len(cfg), cd, ls, ld)
		if err := remote.Put(repo.Tag(tag), rawManifest(m), remote.WithAuth(reg.Auth)); err != nil {
			t.Fatal(err)
		}
	}
	put("chart", "application/vnd.cncf.helm.config.v1+json", []byte(`{"name":"chart"}`))
	put("badconfig", types.OCIConfigJSON, []byte(`{"architecture":"amd64","os":`))
}

type rawManifest string

func (r rawManifest) RawManifest() ([]byte, error)        { return []byte(r), nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

func fixture(t *testing.T, reg *regtest.Registry) {
	b1 := image(t, nil, "amd64", "V=1", map[string]string{"os": "one"})
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", image(t, nil, "amd64", "V=2", map[string]string{"os": "two"}))
	reg.Push(t, "base:arm", image(t, nil, "arm64", "V=2", map[string]string{"os": "arm"}))
	reg.Push(t, "other:1", image(t, nil, "amd64", "V=9", map[string]string{"os": "other"}))
	reg.Push(t, "app:1", image(t, b1, "amd64", "APP=1", map[string]string{"app": "app"}))
	reg.Push(t, "app:taken", image(t, nil, "amd64", "X=1", map[string]string{"x": "x"}))
}

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli.Main(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestRebaseClassicForm(t *testing.T) {
	reg := startRegistry(t)
	fixture(t, reg)
	before := reg.Snapshot(t)
	code, out, stderr := run(t, "http://"+reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var res struct {
		Action, Before, After string
		Transferred           struct{ Mounted, Copied int }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out)
	}
	after := reg.Snapshot(t)
	if res.Action != "rebased" || res.Before != before["app:1"] || res.After != after["app:1"] || res.Transferred.Mounted != 1 || res.Transferred.Copied != 0 {
		t.Fatalf("result %+v; app:1 %s → %s", res, before["app:1"], after["app:1"])
	}
	code, out, _ = run(t, "http://"+reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2")
	if code != 0 || !strings.Contains(out, "is up to date") {
		t.Fatalf("second run: exit %d, %s", code, out)
	}
	if again := reg.Snapshot(t); fmt.Sprint(again) != fmt.Sprint(after) {
		t.Fatalf("up-to-date run wrote: %v → %v", after, again)
	}
}

func TestTagWritesElsewhereAndDryRunWritesNothing(t *testing.T) {
	reg := startRegistry(t)
	fixture(t, reg)
	before := reg.Snapshot(t)
	code, out, stderr := run(t, "http://"+reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2", "--dry-run")
	if code != 0 || !strings.Contains(out, "new base, added") || !strings.Contains(out, "Env V: inherited, 1 → 2") || !strings.Contains(out, "nothing written") {
		t.Fatalf("dry run: exit %d\n%s%s", code, out, stderr)
	}
	if now := reg.Snapshot(t); fmt.Sprint(now) != fmt.Sprint(before) {
		t.Fatalf("dry run wrote: %v", now)
	}
	code, _, stderr = run(t, reg.Host+"/app:1", "--insecure", "--from-base", reg.Host+"/base:1", "--to-base", reg.Host+"/base:2", "-t", reg.Host+"/rebased/app:2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	now := reg.Snapshot(t)
	if now["app:1"] != before["app:1"] || now["rebased/app:2"] == "" {
		t.Fatalf("after -t: %v", now)
	}
}

func TestBadInputsFailInOneLineAndWriteNothing(t *testing.T) {
	reg := startRegistry(t)
	fixture(t, reg)
	pushOdd(t, reg)
	h := "http://" + reg.Host
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"malformed reference", []string{h, "app:1", "--from-base", "Base::1", "--to-base", "base:2"}, 2, "--from-base: invalid reference"},
		{"malformed registry", []string{"http://", "app:1", "--from-base", "base:1", "--to-base", "base:2"}, 2, "invalid registry"},
		{"missing flag", []string{h, "app:1", "--from-base", "base:1"}, 2, "--from-base needs --to-base"},
		{"unknown flag", []string{h, "app:1", "--frm-base", "base:1"}, 2, "unknown flag"},
		{"unknown repository", []string{h, "nope:1", "--from-base", "base:1", "--to-base", "base:2"}, 3, "nope:1"},
		{"unknown tag", []string{h, "app:9", "--from-base", "base:1", "--to-base", "base:2"}, 3, "app:9"},
		{"unreachable registry", []string{"http://127.0.0.1:1", "app:1", "--from-base", "base:1", "--to-base", "base:2"}, 3, "127.0.0.1:1"},
		{"old base not a prefix", []string{h, "app:1", "--from-base", "other:1", "--to-base", "base:2"}, 4, "is not built on " + reg.Host + "/other:1: layer 1 differs"},
		{"platform mismatch", []string{h, "app:1", "--from-base", "base:1", "--to-base", "base:arm"}, 4, "platform mismatch"},
		{"schema 1", []string{h, "legacy:1", "--from-base", "base:1", "--to-base", "base:2"}, 4, "schema 1"},
		{"huge manifest", []string{h, "huge:1", "--from-base", "base:1", "--to-base", "base:2"}, 4, "limit"},
		{"corrupt manifest", []string{h, "corrupt:1", "--from-base", "base:1", "--to-base", "base:2"}, 4, "unsupported manifest"},
		{"artifact", []string{h, "odd:chart", "--from-base", "base:1", "--to-base", "base:2"}, 4, "not a container image"},
		{"corrupt config", []string{h, "odd:badconfig", "--from-base", "base:1", "--to-base", "base:2"}, 4, "decoding config"},
		{"base is an artifact", []string{h, "app:1", "--from-base", "base:1", "--to-base", "odd:chart"}, 4, "not a container image"},
		{"target exists", []string{h, "app:1", "--from-base", "base:1", "--to-base", "base:2", "-t", "taken"}, 4, "already exists"},
		{"bad output", []string{h, "app:1", "--from-base", "base:1", "--to-base", "base:2", "-o", "yaml"}, 2, "--output"},
		{"bad platform", []string{h, "app:1", "--from-base", "base:1", "--to-base", "base:2", "--platform", "linux"}, 2, "--platform"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := reg.Snapshot(t)
			code, out, stderr := run(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr %q", code, tt.code, stderr)
			}
			if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "image-rebase: ") || !strings.Contains(stderr, tt.msg) {
				t.Errorf("stderr %q: want one line containing %q", stderr, tt.msg)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			if after := reg.Snapshot(t); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("registry changed: %v → %v", before, after)
			}
		})
	}
}

func TestCredentialsFromDockerConfigAndNoSecretInLogs(t *testing.T) {
	const user, pass = "alice", "s3cr3t-p4ss"
	reg := startRegistry(t, regtest.WithBasicAuth(user, pass))
	fixture(t, reg)
	dir := t.TempDir()
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.Host, b64(user+":"+pass))
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600)
	t.Setenv("DOCKER_CONFIG", dir)
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(dir, "config.json"))

	code, out, stderr := run(t, "http://"+reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2", "-v", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "GET http://"+reg.Host+"/v2/") {
		t.Errorf("-v logged no requests: %s", stderr)
	}
	for _, secret := range []string{pass, b64(user + ":" + pass)} {
		if strings.Contains(out+stderr, secret) {
			t.Fatalf("secret %q leaked into the output", secret)
		}
	}

	wrong := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.Host, b64(user+":wrong"))
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(wrong), 0o600)
	before := reg.Snapshot(t)
	code, _, stderr = run(t, "http://"+reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2", "-v")
	if code != 3 || !strings.Contains(stderr, "image-rebase: ") || !strings.Contains(stderr, "401") {
		t.Fatalf("wrong credentials: exit %d, %q", code, stderr)
	}
	if strings.Contains(stderr, "wrong") {
		t.Fatalf("password leaked: %s", stderr)
	}
	if after := reg.Snapshot(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("registry changed")
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestLayersAreNeverCopiedUnlessAllowed(t *testing.T) {
	apps, bases := startRegistry(t), startRegistry(t)
	b1 := image(t, nil, "amd64", "V=1", map[string]string{"os": "one"})
	b2 := image(t, nil, "amd64", "V=2", map[string]string{"os": "two"})
	apps.Push(t, "base:1", b1)
	bases.Push(t, "base:2", b2)
	apps.Push(t, "app:1", image(t, b1, "amd64", "APP=1", map[string]string{"app": "app"}))
	args := []string{apps.Host + "/app:1", "--insecure", "--from-base", apps.Host + "/base:1", "--to-base", bases.Host + "/base:2", "-o", "json"}

	before := apps.Snapshot(t)
	code, _, stderr := run(t, args...)
	if code != 4 || !strings.Contains(stderr, "--allow-copy") {
		t.Fatalf("cross-registry without --allow-copy: exit %d, %q", code, stderr)
	}
	if after := apps.Snapshot(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("registry changed: %v → %v", before, after)
	}

	code, out, stderr := run(t, append(args, "--allow-copy")...)
	if code != 0 {
		t.Fatalf("with --allow-copy: exit %d, %s", code, stderr)
	}
	var res struct {
		Transferred struct {
			Copied      int
			CopiedBytes int64
		}
	}
	json.Unmarshal([]byte(out), &res)
	l, _ := b2.Layers()
	size, _ := l[0].Size()
	if res.Transferred.Copied != 1 || res.Transferred.CopiedBytes != size {
		t.Fatalf("reported %+v, want 1 layer of %d bytes copied", res.Transferred, size)
	}
	d, _ := l[0].Digest()
	if !apps.BlobExists(t, "app", d) {
		t.Fatalf("copied layer %s is not in the target repository", d)
	}
}

func TestBackupTagKeepsThePreviousImage(t *testing.T) {
	reg := startRegistry(t)
	fixture(t, reg)
	before := reg.Snapshot(t)
	code, out, stderr := run(t, "http://"+reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2", "--backup-tag", "{tag}-prev")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	after := reg.Snapshot(t)
	if after["app:1-prev"] != before["app:1"] || after["app:1"] == before["app:1"] {
		t.Fatalf("app:1-prev = %s, want the previous app:1 %s; app:1 = %s", after["app:1-prev"], before["app:1"], after["app:1"])
	}
	if !strings.Contains(out, "before  "+before["app:1"]) || !strings.Contains(out, "backup  "+reg.Host+"/app:1-prev") {
		t.Errorf("output does not name the replaced digest:\n%s", out)
	}
	code, _, stderr = run(t, "http://"+reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2", "--backup-tag", "bad/{tag}")
	if code != 2 || !strings.Contains(stderr, "--backup-tag") {
		t.Fatalf("bad template: exit %d, %q", code, stderr)
	}
}

// TestAuthorizationNotSentOnRedirect: registries redirect blob reads to
// storage on another host; the credentials must stay with the registry.
func TestAuthorizationNotSentOnRedirect(t *testing.T) {
	const user, pass = "bob", "hunter2-secret"
	var reg *regtest.Registry
	var leaked, served atomic.Int32
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			leaked.Add(1)
		}
		served.Add(1)
		// Serve the blob from the registry itself, as object storage would.
		req, _ := http.NewRequest(http.MethodGet, "http://"+reg.Host+r.URL.Path, nil)
		req.SetBasicAuth(user, pass)
		req.Header.Set("X-Direct", "1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	defer storage.Close()
	reg = regtest.Start(t, regtest.WithBasicAuth(user, pass), regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") && r.Header.Get("X-Direct") == "" {
				http.Redirect(w, r, storage.URL+r.URL.Path, http.StatusTemporaryRedirect)
				return
			}
			h.ServeHTTP(w, r)
		})
	}))
	fixture(t, reg)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.Host, b64(user+":"+pass))), 0o600)
	t.Setenv("DOCKER_CONFIG", dir)
	code, _, stderr := run(t, "http://"+reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if served.Load() == 0 {
		t.Fatal("no blob read went through the redirect")
	}
	if leaked.Load() != 0 {
		t.Fatalf("%d redirected requests carried an Authorization header", leaked.Load())
	}
}

// TestBearerTokenAuthAndTLS: a registry behind TLS that hands out bearer
// tokens, as hosted registries do; credentials from the Docker config, the
// certificate trusted through SSL_CERT_FILE.
func TestBearerTokenAuthAndTLS(t *testing.T) {
	reg := regtest.Start(t, regtest.WithTLS(), regtest.WithBasicAuth("carol", "t0ken-pass"), regtest.WithTokenAuth())
	fixture(t, reg)
	t.Setenv("DOCKER_CONFIG", reg.DockerConfigDir(t))
	t.Setenv("SSL_CERT_FILE", reg.CAFile(t))
	before := reg.Snapshot(t)
	code, out, stderr := run(t, reg.Host+"/app:1", "--from-base", reg.Host+"/base:1", "--to-base", reg.Host+"/base:2", "-v", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if strings.Contains(out+stderr, "t0ken-pass") {
		t.Fatal("the password leaked into the output")
	}
	if after := reg.Snapshot(t); after["app:1"] == before["app:1"] {
		t.Fatal("app:1 did not move")
	}
	if !strings.Contains(stderr, "https://"+reg.Host+"/v2/") {
		t.Errorf("not over HTTPS? %s", stderr)
	}
	scopes := strings.Join(reg.TokenScopes(), " ")
	for _, want := range []string{"repository:app:push,pull", "repository:base:pull"} {
		if !strings.Contains(scopes, want) {
			t.Errorf("token scopes %q lack %q", scopes, want)
		}
	}
}
