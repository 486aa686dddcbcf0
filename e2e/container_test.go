package e2e

import (
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The container image's build, offline: a base made of busybox and the
// host's CA certificates stands for docker.io/library/alpine, and the
// binary is built here (BINARY=prebuilt) instead of in golang's image.
const toolBaseDockerfile = `FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/busybox", "mkdir", "-m", "1777", "/tmp"]
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY base-version /etc/base-version
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
`

const (
	toolVersion  = "v0.0.0-e2e.container"
	toolRevision = "0123456789abcdef0123456789abcdef01234567"
)

// TestContainerImage builds the Containerfile with buildah as
// docs/container.md says (with a prebuilt static binary and a local base,
// as there is no network), checks the image (non-root numeric user, entry
// point, labels and annotations), runs "image-rebase version" in it, then
// uses the image as a CI job would: with a Docker config mounted, the
// tool in the image rebases its own image onto the next version of its
// base (found by the label the Containerfile writes), and the rebased
// image runs.
func TestContainerImage(t *testing.T) {
	need(t, "buildah")
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("busybox-static is required in CI: %v", err)
		}
		t.Skipf("no /bin/busybox (apt-get install busybox-static): %v", err)
	}
	caCerts, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Fatalf("the host's CA certificates (apt-get install ca-certificates): %v", err)
	}
	reg := startRegistry(t)
	containerfile, err := filepath.Abs("../Containerfile")
	if err != nil {
		t.Fatal(err)
	}

	// The binary as the Containerfile's compile stage builds it: static,
	// with the version and revision set at link time.
	ctx := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X github.com/image-rebase/image-rebase/internal/version.Version="+toolVersion+" -X github.com/image-rebase/image-rebase/internal/version.Revision="+toolRevision,
		"-o", filepath.Join(ctx, "image-rebase"), "../cmd/image-rebase")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	checkStatic(t, filepath.Join(ctx, "image-rebase"))

	base := reg.Host + "/tools/base:1"
	baseFiles := func(v string) map[string]string {
		return map[string]string{"busybox": string(busybox), "ca-certificates.crt": string(caCerts), "base-version": v + "\n"}
	}
	buildImage(t, "tool-base-1", toolBaseDockerfile, baseFiles("1"), buildOpts{layers: true})
	buildah(t, "tag", "localhost/tool-base-1", base)
	reg.push(t, "tool-base-1", "tools/base:1", "oci")

	const image = "localhost/image-rebase-e2e"
	buildah(t, "bud", "--isolation", "chroot", "--pull=never", "--format", "oci", "-f", containerfile,
		"--build-arg", "BINARY=prebuilt", "--build-arg", "BASE="+base,
		"--build-arg", "VERSION="+toolVersion, "--build-arg", "REVISION="+toolRevision,
		"--annotation", "org.opencontainers.image.source=https://github.com/image-rebase/image-rebase",
		"--annotation", "org.opencontainers.image.version="+toolVersion,
		"--annotation", "org.opencontainers.image.revision="+toolRevision,
		"-t", image, ctx)

	var info struct {
		OCIv1 struct {
			Config struct {
				User       string
				Entrypoint []string
				Labels     map[string]string
			}
		}
		ImageAnnotations map[string]string
	}
	if err := json.Unmarshal([]byte(buildah(t, "inspect", "--type", "image", image)), &info); err != nil {
		t.Fatal(err)
	}
	cfg := info.OCIv1.Config
	if cfg.User != "65532:65532" || strings.Join(cfg.Entrypoint, " ") != "/usr/local/bin/image-rebase" {
		t.Errorf("user %q, entry point %q; want 65532:65532 and the binary", cfg.User, cfg.Entrypoint)
	}
	want := map[string]string{
		"FROM":                             base,
		"org.opencontainers.image.title":   "image-rebase",
		"org.opencontainers.image.source":  "https://github.com/image-rebase/image-rebase",
		"org.opencontainers.image.version": toolVersion, "org.opencontainers.image.revision": toolRevision,
	}
	for k, v := range want {
		if cfg.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, cfg.Labels[k], v)
		}
		if strings.HasPrefix(k, "org.opencontainers.image.") && k != "org.opencontainers.image.title" && info.ImageAnnotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, info.ImageAnnotations[k], v)
		}
	}

	versionLine := fmt.Sprintf("image-rebase %s (revision %s; ", toolVersion, toolRevision[:12])
	ctr := strings.TrimSpace(buildah(t, "from", "--pull=never", image))
	if out := buildah(t, "run", "--isolation", "chroot", ctr, "--", "image-rebase", "version"); !strings.HasPrefix(out, versionLine) {
		t.Errorf("image-rebase version in the image: %q, want %q…", out, versionLine)
	}
	if out := buildah(t, "run", "--isolation", "chroot", ctr, "--", "id", "-u"); strings.TrimSpace(out) != "65532" {
		t.Errorf("runs as user %q, want 65532", out)
	}

	// In a CI job: the image in a registry, the job's Docker config and
	// the registry's CA mounted, readable by the image's user.
	reg.push(t, image[len("localhost/"):], "tools/image-rebase:1", "oci")
	mounts := t.TempDir()
	os.MkdirAll(filepath.Join(mounts, "docker"), 0o755)
	write(t, filepath.Join(mounts, "docker", "config.json"), []byte(readFile(t, reg.AuthFile)))
	write(t, filepath.Join(mounts, "ca.crt"), []byte(readFile(t, reg.CAFile)))
	filepath.Walk(mounts, func(p string, fi os.FileInfo, _ error) error {
		if fi.IsDir() {
			return os.Chmod(p, 0o755)
		}
		return os.Chmod(p, 0o644)
	})
	inJob := func(args ...string) string {
		t.Helper()
		return buildah(t, append([]string{"run", "--isolation", "chroot", "-v", mounts + ":/job:ro", ctr, "--",
			"sh", "-c", `DOCKER_CONFIG=/job/docker SSL_CERT_FILE=/job/ca.crt image-rebase "$@"`, "image-rebase"}, args...)...)
	}
	if out := inJob(reg.Host + "/tools/image-rebase:1"); !strings.Contains(out, "is up to date") {
		t.Fatalf("the image on its base's current version: %s", out)
	}

	// The base's tag moves to its next version; the tool in the image
	// rebases its own image onto it, finding the base by the label.
	buildImage(t, "tool-base-2", toolBaseDockerfile, baseFiles("2"), buildOpts{layers: true})
	reg.push(t, "tool-base-2", "tools/base:1", "oci")
	var res struct {
		Version, Action string
		Detection       struct{ Method string }
		Warnings        []struct{ Code, Message string }
	}
	out := inJob(reg.Host+"/tools/image-rebase:1", "-o", "json")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res.Version != toolVersion || res.Action != "rebased" || res.Detection.Method != "label" || len(res.Warnings) != 0 {
		t.Fatalf("the tool's image rebased by the tool in it: %s", out)
	}

	// The rebased image runs on the new base, as the same user.
	buildah(t, append(append([]string{"pull"}, reg.tlsFlag("")...), "--creds", reg.creds(), "docker://"+reg.Host+"/tools/image-rebase:1")...)
	rebased := strings.TrimSpace(buildah(t, "from", "--pull=never", reg.Host+"/tools/image-rebase:1"))
	if out := buildah(t, "run", "--isolation", "chroot", rebased, "--", "cat", "/etc/base-version"); strings.TrimSpace(out) != "2" {
		t.Errorf("the rebased image's base: version %q, want 2", out)
	}
	if out := buildah(t, "run", "--isolation", "chroot", rebased, "--", "image-rebase", "version"); !strings.HasPrefix(out, versionLine) {
		t.Errorf("image-rebase version in the rebased image: %q", out)
	}
	if out := buildah(t, "run", "--isolation", "chroot", rebased, "--", "id", "-u"); strings.TrimSpace(out) != "65532" {
		t.Errorf("the rebased image runs as user %q, want 65532", out)
	}
}

// checkStatic fails the test unless the ELF binary at path is statically
// linked: no program interpreter, no shared libraries.
func checkStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a program interpreter: not static", path)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs %v: not static", path, libs)
	}
}
