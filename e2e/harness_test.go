// Package e2e tests the image-rebase binary end to end against Debian's
// docker-registry run as a separate server, with images built by buildah
// from real Dockerfiles and results checked by skopeo and umoci.
package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	binary      string // the image-rebase binary under test
	buildahRoot string // one buildah storage for the whole run
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "image-rebase-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "image-rebase")
	buildahRoot = filepath.Join(dir, "buildah")
	// The binary as users get it, without the race detector (which
	// doubles the run time and the memory that TestHostileRegistryEndsFast
	// measures): the command's code runs under -race in package cli's
	// tests, which call it in process.
	build := exec.Command("go", "build", "-o", binary, "../cmd/image-rebase")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the binary:", err)
		os.Exit(1)
	}
	code := m.Run()
	// vfs layers are read-only directories for buildah's own user namespace
	// tricks; as root a plain RemoveAll works.
	os.RemoveAll(dir)
	os.Exit(code)
}

// need skips the test when a tool is missing, or fails it in CI, where
// every tool must be installed.
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI (see .ci/run): %v", tool, err)
			}
			t.Skipf("%s is not installed; skipping (install it to run the end-to-end tests)", tool)
		}
	}
}

// registryServer is a docker-registry process with TLS (unless
// plainHTTP) and basic auth.
type registryServer struct {
	Host string
	// Plain is true for a registry served over plain HTTP.
	Plain    bool
	User     string
	Pass     string
	CertDir  string // holds ca.crt, for skopeo and buildah --cert-dir
	CAFile   string // for SSL_CERT_FILE
	AuthDir  string // holds config.json, for DOCKER_CONFIG
	AuthFile string // the same file, for REGISTRY_AUTH_FILE
}

// registryOption configures startRegistry.
type registryOption func(*registryConfig)

type registryConfig struct {
	notify    string // the URL notifications are sent to
	token     string // the bearer token they carry
	plainHTTP bool
}

// withNotifications makes the registry send its events to url
// ("notifications: endpoints:" in its configuration), with
// "Authorization: Bearer token" when token is set, retrying every 200 ms
// while url fails.
func withNotifications(url, token string) registryOption {
	return func(c *registryConfig) { c.notify, c.token = url, token }
}

// withPlainHTTP serves plain HTTP (no TLS), e.g. behind a proxytest proxy.
func withPlainHTTP() registryOption {
	return func(c *registryConfig) { c.plainHTTP = true }
}

// startRegistry runs Debian's docker-registry on a free loopback port with
// a self-signed certificate (unless withPlainHTTP) and htpasswd
// authentication.
func startRegistry(t *testing.T, opts ...registryOption) *registryServer {
	t.Helper()
	need(t, "docker-registry", "htpasswd")
	var rc registryConfig
	for _, o := range opts {
		o(&rc)
	}
	dir := t.TempDir()
	r := &registryServer{User: "ci", Pass: "pa55-" + randomHex(t, 6), CertDir: filepath.Join(dir, "certs"), AuthDir: filepath.Join(dir, "auth"), Plain: rc.plainHTTP}
	port := freePort(t)
	r.Host = fmt.Sprintf("127.0.0.1:%d", port)

	certPEM, keyPEM := selfSigned(t)
	os.MkdirAll(r.CertDir, 0o755)
	os.MkdirAll(r.AuthDir, 0o700)
	r.CAFile = filepath.Join(r.CertDir, "ca.crt")
	write(t, r.CAFile, certPEM)
	keyFile := filepath.Join(dir, "key.pem")
	write(t, keyFile, keyPEM)
	out, err := exec.Command("htpasswd", "-Bbn", r.User, r.Pass).Output()
	if err != nil {
		t.Fatalf("htpasswd: %v", err)
	}
	write(t, filepath.Join(dir, "htpasswd"), out)
	r.AuthFile = filepath.Join(r.AuthDir, "config.json")
	auth := base64.StdEncoding.EncodeToString([]byte(r.User + ":" + r.Pass))
	write(t, r.AuthFile, []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, r.Host, auth)))

	tlsConfig := ""
	if !rc.plainHTTP {
		tlsConfig = fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\n", r.CAFile, keyFile)
	}
	config := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
%sauth:
  htpasswd:
    realm: e2e
    path: %s
`, filepath.Join(dir, "data"), r.Host, tlsConfig, filepath.Join(dir, "htpasswd"))
	if rc.notify != "" {
		// As docs/watch.md shows it, with a short backoff for the tests.
		config += fmt.Sprintf("notifications:\n  endpoints:\n    - name: watcher\n      url: %s\n      timeout: 2s\n      threshold: 1\n      backoff: 200ms\n      ignore:\n        actions: [pull, mount]\n", rc.notify)
		if rc.token != "" {
			config += fmt.Sprintf("      headers:\n        Authorization: [\"Bearer %s\"]\n", rc.token)
		}
	}
	cfgFile := filepath.Join(dir, "config.yml")
	write(t, cfgFile, []byte(config))
	cmd := exec.Command("docker-registry", "serve", cfgFile)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting docker-registry: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for deadline := time.Now().Add(15 * time.Second); ; {
		resp, err := client.Get(r.URL() + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry did not come up: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// env is the environment for image-rebase to trust and log in to r.
func (r *registryServer) env() []string {
	return append(os.Environ(), "DOCKER_CONFIG="+r.AuthDir, "SSL_CERT_FILE="+r.CAFile)
}

func (r *registryServer) creds() string { return r.User + ":" + r.Pass }

// URL is https://HOST, or http://HOST for a plain HTTP registry.
func (r *registryServer) URL() string {
	if r.Plain {
		return "http://" + r.Host
	}
	return "https://" + r.Host
}

// tlsFlag is the skopeo or buildah flag that trusts r: --cert-dir (with
// prefix, e.g. "src-") or, for plain HTTP, --tls-verify=false.
func (r *registryServer) tlsFlag(prefix string) []string {
	if r.Plain {
		return []string{"--" + prefix + "tls-verify=false"}
	}
	return []string{"--" + prefix + "cert-dir", r.CertDir}
}

// rebase runs the binary and returns its exit code, stdout and stderr.
func rebase(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running image-rebase: %v", err)
	}
	return code, out.String(), errb.String()
}

// run runs a tool and fails the test on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// buildah runs buildah on the run's shared vfs storage.
func buildah(t *testing.T, args ...string) string {
	t.Helper()
	need(t, "buildah")
	return run(t, "buildah", append([]string{"--storage-driver", "vfs", "--root", buildahRoot, "--runroot", buildahRoot + "-run"}, args...)...)
}

// buildOpts are the ways the tests build an image.
type buildOpts struct {
	format string // "oci" or "docker"
	layers bool   // one layer per instruction (--layers) or a single squashed layer of the build's own (default)
	squash bool   // --squash: the whole image in one layer
}

// buildImage builds dockerfile in a context holding files, tagged
// localhost/<tag>.
func buildImage(t *testing.T, tag, dockerfile string, files map[string]string, o buildOpts) {
	t.Helper()
	ctx := t.TempDir()
	for name, content := range files {
		p := filepath.Join(ctx, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(ctx, "Dockerfile"), []byte(dockerfile))
	if o.format == "" {
		o.format = "oci"
	}
	args := []string{"bud", "--isolation", "chroot", "--pull=never", "--format", o.format, fmt.Sprintf("--layers=%v", o.layers), "-t", "localhost/" + tag}
	if o.squash {
		args = append(args, "--squash")
	}
	buildah(t, append(args, ctx)...)
}

// push copies localhost/<tag> to the registry as repoTag.
func (r *registryServer) push(t *testing.T, tag, repoTag, format string) {
	t.Helper()
	if format == "" {
		format = "oci"
	}
	buildah(t, append(append([]string{"push"}, r.tlsFlag("")...), "--creds", r.creds(), "--format", format, "localhost/"+tag, "docker://"+r.Host+"/"+repoTag)...)
}

// inspect returns the raw manifest of repoTag as skopeo reads it (skopeo
// rejects invalid manifests).
func (r *registryServer) inspect(t *testing.T, repoTag string) string {
	t.Helper()
	need(t, "skopeo")
	return run(t, "skopeo", append(append([]string{"inspect", "--raw"}, r.tlsFlag("")...), "--creds", r.creds(), "docker://"+r.Host+"/"+repoTag)...)
}

// unpack copies repoTag to an OCI layout with skopeo and unpacks it with
// umoci; it returns the root filesystem.
func (r *registryServer) unpack(t *testing.T, repoTag string) string {
	t.Helper()
	need(t, "skopeo", "umoci")
	dir := t.TempDir()
	run(t, "skopeo", append(append([]string{"copy"}, r.tlsFlag("src-")...), "--src-creds", r.creds(), "docker://"+r.Host+"/"+repoTag, "oci:"+filepath.Join(dir, "layout")+":img")...)
	run(t, "umoci", "unpack", "--rootless", "--image", filepath.Join(dir, "layout")+":img", filepath.Join(dir, "bundle"))
	return filepath.Join(dir, "bundle", "rootfs")
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "image-rebase e2e"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return string(b)
}

// buildkitVersion is the BuildKit release .ci/buildkit builds.
const buildkitVersion = "v0.34.2"

// buildkitBinaries returns the directory that holds buildkitd and buildctl:
// $BUILDKIT_DIR, or the cache .ci/buildkit fills. Missing binaries skip the
// test, or fail it in CI, like need.
func buildkitBinaries(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("BUILDKIT_DIR")
	if dir == "" {
		cache := os.Getenv("IMAGE_REBASE_CACHE")
		if cache == "" {
			base := os.Getenv("XDG_CACHE_HOME")
			if base == "" {
				home, _ := os.UserHomeDir()
				base = filepath.Join(home, ".cache")
			}
			cache = filepath.Join(base, "image-rebase")
		}
		dir = filepath.Join(cache, "buildkit-"+buildkitVersion)
	}
	for _, b := range []string{"buildkitd", "buildctl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("BuildKit's %s is required in CI (.ci/buildkit builds it): %v", b, err)
			}
			t.Skipf("no BuildKit %s in %s (run .ci/buildkit, or set BUILDKIT_DIR); skipping", b, dir)
		}
	}
	return dir
}

// buildkitDaemon is a buildkitd process with the OCI (runc) worker, trusting
// one test registry.
type buildkitDaemon struct {
	buildctl string
	addr     string
	reg      *registryServer
	logFile  string
}

// startBuildkit runs buildkitd as the issue describes it (native
// snapshotter, host network, no containerd) in a fresh state directory,
// configured to trust r's certificate; buildctl authenticates from r's
// Docker config. It runs as root: rootless BuildKit needs user namespaces
// this harness does not set up.
func startBuildkit(t *testing.T, r *registryServer) *buildkitDaemon {
	t.Helper()
	dir := buildkitBinaries(t)
	need(t, "runc")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("buildkitd needs root here")
		}
		t.Skipf("buildkitd needs root here; skipping")
	}
	// A short directory: a unix socket path must fit in 108 bytes.
	root, err := os.MkdirTemp("", "bk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	// BuildKit speaks plain HTTP to loopback registries unless told
	// otherwise: http = false keeps it on TLS, with the registry's CA.
	cfg := filepath.Join(root, "buildkitd.toml")
	write(t, cfg, []byte(fmt.Sprintf("[registry.%q]\n  http = false\n  ca = [%q]\n", r.Host, r.CAFile)))
	b := &buildkitDaemon{
		buildctl: filepath.Join(dir, "buildctl"),
		addr:     "unix://" + filepath.Join(root, "bk.sock"),
		reg:      r,
		logFile:  filepath.Join(root, "buildkitd.log"),
	}
	logs, err := os.Create(b.logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(dir, "buildkitd"), "--config", cfg, "--root", filepath.Join(root, "state"),
		"--addr", b.addr, "--oci-worker=true", "--containerd-worker=false",
		"--oci-worker-snapshotter", "native", "--oci-worker-net", "host")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting buildkitd: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logs.Close()
	})
	for deadline := time.Now().Add(30 * time.Second); ; {
		err := exec.Command(b.buildctl, "--addr", b.addr, "debug", "workers").Run()
		if err == nil {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("buildkitd did not come up: %v\n%s", err, readFile(t, b.logFile))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// build builds the Dockerfile of contextDir with the Dockerfile frontend
// built into buildkitd (no network: no "# syntax=" line) and pushes the
// result to the registry as repoTag. opts are frontend options
// (--opt KEY=VALUE), output extra attributes of the image exporter
// (oci-mediatypes=false, compression=zstd, ...), extra more buildctl flags.
// It returns an error rather than failing, so that builds may run in
// goroutines.
func (b *buildkitDaemon) build(contextDir, repoTag string, opts, output, extra []string) error {
	args := []string{"--addr", b.addr, "build", "--progress", "plain", "--frontend", "dockerfile.v0",
		"--local", "context=" + contextDir, "--local", "dockerfile=" + contextDir,
		// Resolve FROM tags in the registry at every build: the corpus moves tags.
		"--opt", "image-resolve-mode=pull"}
	for _, o := range opts {
		args = append(args, "--opt", o)
	}
	args = append(args, extra...)
	args = append(args, "--output", strings.Join(append([]string{"type=image", "name=" + b.reg.Host + "/" + repoTag, "push=true"}, output...), ","))
	cmd := exec.Command(b.buildctl, args...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+b.reg.AuthDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		tail := string(out)
		if len(tail) > 3000 {
			tail = tail[len(tail)-3000:]
		}
		return fmt.Errorf("buildctl build %s: %v\n%s", repoTag, err, tail)
	}
	return nil
}
