package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Base detection end to end: buildah images, the binary, docker-registry.

type detection struct {
	Action   string
	Warnings []struct{ Code, Message string }
	Detect   struct {
		Method        string
		BaseLayers    int
		OldBaseDigest string
		NewBaseDigest string
		Reasons       []string
	} `json:"detection"`
}

func rebaseJSON(t *testing.T, r *registryServer, args ...string) detection {
	t.Helper()
	code, out, stderr := rebase(t, r.env(), append([]string{r.Host}, append(args, "-o", "json")...)...)
	if code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, stderr)
	}
	var d detection
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("output: %v\n%s", err, out)
	}
	return d
}

// checkRebased unpacks repoTag and checks it runs on base 2 with the
// application's file.
func checkRebased(t *testing.T, r *registryServer, repoTag, app string) {
	t.Helper()
	root := r.unpack(t, repoTag)
	if got := readFile(t, filepath.Join(root, "etc/os-release")); got != "VERSION_ID=2\n" {
		t.Errorf("/etc/os-release = %q, want the new base's", got)
	}
	if got := readFile(t, filepath.Join(root, "app/app.txt")); got != app {
		t.Errorf("/app/app.txt = %q, want %q", got, app)
	}
}

// deleteTagged deletes, by digest, the manifest repoTag names now.
func (r *registryServer) deleteTagged(t *testing.T, repoTag string) string {
	t.Helper()
	raw := r.inspect(t, repoTag)
	digest := run(t, "skopeo", "manifest-digest", writeTemp(t, raw))
	repo, _, _ := strings.Cut(repoTag, ":")
	run(t, "skopeo", "delete", "--cert-dir", r.CertDir, "--creds", r.creds(), "docker://"+r.Host+"/"+repo+"@"+strings.TrimSpace(digest))
	return strings.TrimSpace(digest)
}

func writeTemp(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "doc")
	write(t, p, []byte(s))
	return p
}

// TestLabelModeWithBuildah: LABEL FROM=base:1 first after FROM, built with
// and without --layers; base:1 moves to a patched build whose predecessor
// is deleted from the registry.
func TestLabelModeWithBuildah(t *testing.T) {
	need(t, "buildah", "skopeo", "umoci", "docker-registry")
	for _, layers := range []bool{true, false} {
		t.Run(fmt.Sprintf("layers=%v", layers), func(t *testing.T) {
			r := startRegistry(t)
			buildBases(t, r, "oci")
			tag := fmt.Sprintf("e2e-label-%v", layers)
			dockerfile := "FROM localhost/e2e-base-oci-1\nLABEL FROM=base:1\nCOPY app.txt /app/app.txt\n" +
				`RUN ["/bin/busybox", "sh", "-c", "echo built > /app/built"]` + "\nENV APP_MODE=label\nCMD [\"/app/app.txt\"]\n"
			buildImage(t, tag, dockerfile, map[string]string{"app.txt": "label app"}, buildOpts{layers: layers})
			r.push(t, tag, "app:1", "oci")

			code, out, stderr := rebase(t, r.env(), r.Host, "app:1", "--check")
			if code != 0 || !strings.Contains(out, "up to date") || !strings.Contains(out, "base found by label FROM=base:1") {
				t.Fatalf("unchanged base: exit %d\n%s%s", code, out, stderr)
			}

			r.deleteTagged(t, "base:1")
			r.push(t, "e2e-base-oci-2", "base:1", "oci")
			before := r.inspect(t, "app:1")
			if code, out, _ := rebase(t, r.env(), r.Host, "app:1", "--check"); code != 10 || !strings.Contains(out, "would move") {
				t.Fatalf("--check: exit %d\n%s", code, out)
			}
			if r.inspect(t, "app:1") != before {
				t.Fatalf("--check wrote")
			}
			d := rebaseJSON(t, r, "app:1")
			if d.Action != "rebased" || d.Detect.Method != "label" || d.Detect.BaseLayers != 3 || d.Detect.OldBaseDigest != "" {
				t.Fatalf("result %+v", d)
			}
			// buildah's base.name annotation is the local name it built from.
			if len(d.Warnings) == 0 || !strings.Contains(d.Warnings[0].Message, "localhost/e2e-base-oci-1") {
				t.Errorf("warnings %+v: want the label and the annotation named", d.Warnings)
			}
			checkRebased(t, r, "app:1", "label app")
			root := r.unpack(t, "app:1")
			if got := readFile(t, filepath.Join(root, "app/built")); got != "built\n" {
				t.Errorf("/app/built = %q", got)
			}
			var cfg struct {
				Config struct{ Env []string }
			}
			json.Unmarshal([]byte(run(t, "skopeo", "inspect", "--config", "--cert-dir", r.CertDir, "--creds", r.creds(), "docker://"+r.Host+"/app:1")), &cfg)
			if env := strings.Join(cfg.Config.Env, " "); !strings.Contains(env, "BASEVER=2") || !strings.Contains(env, "APP_MODE=label") {
				t.Errorf("env %q: BASEVER follows the new base, APP_MODE stays", env)
			}
			if code, out, _ := rebase(t, r.env(), r.Host, "app:1", "--check"); code != 0 || !strings.Contains(out, "up to date") {
				t.Errorf("after the rebase: exit %d\n%s", code, out)
			}
		})
	}
}

// TestAnnotationModeWithBuildah: an image built FROM the registry's base
// carries buildah's base annotations; IMAGE alone rebases onto the current
// base:1, with the old base found by digest, then with it deleted.
func TestAnnotationModeWithBuildah(t *testing.T) {
	need(t, "buildah", "skopeo", "umoci", "docker-registry")
	r := startRegistry(t)
	buildBases(t, r, "oci")
	ctx := t.TempDir()
	write(t, filepath.Join(ctx, "app.txt"), []byte("annotated app"))
	write(t, filepath.Join(ctx, "Dockerfile"), []byte("FROM "+r.Host+"/base:1\nCOPY app.txt /app/app.txt\nCMD [\"/app/app.txt\"]\n"))
	// Without --layers: buildah 1.28 with --layers writes the digest of its
	// intermediate image as base.digest, which no registry holds (then the
	// boundary comes from history matching, as with a deleted old base).
	buildah(t, "bud", "--isolation", "chroot", "--cert-dir", r.CertDir, "--creds", r.creds(), "--format", "oci", "--layers=false", "-t", "localhost/e2e-annotated", ctx)
	r.push(t, "e2e-annotated", "app:1", "oci")
	r.push(t, "e2e-annotated", "app:2", "oci")
	m := parseManifest(t, r.inspect(t, "app:1"))
	if m.Annotations["org.opencontainers.image.base.name"] != r.Host+"/base:1" {
		t.Fatalf("buildah wrote annotations %v", m.Annotations)
	}
	oldDigest := m.Annotations["org.opencontainers.image.base.digest"]
	r.push(t, "e2e-base-oci-2", "base:1", "oci")

	d := rebaseJSON(t, r, "app:1")
	if d.Action != "rebased" || d.Detect.Method != "annotation" || d.Detect.OldBaseDigest != oldDigest {
		t.Fatalf("result %+v (annotated old base %s)", d, oldDigest)
	}
	checkRebased(t, r, "app:1", "annotated app")

	// The old base deleted: base.name's history gives the boundary, but
	// base 2's Dockerfile sets other values (ENV BASEVER=2): refused, with
	// the --layers to pass.
	run(t, "skopeo", "delete", "--cert-dir", r.CertDir, "--creds", r.creds(), "docker://"+r.Host+"/base@"+oldDigest)
	code, _, stderr := rebase(t, r.env(), r.Host, "app:2")
	if code != 4 || !strings.Contains(stderr, "that is --layers 2") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	d = rebaseJSON(t, r, "app:2", "--layers", "2", "--to-base", "base:1")
	if d.Action != "rebased" || d.Detect.Method != "layers" || d.Detect.BaseLayers != 3 {
		t.Fatalf("result %+v", d)
	}
	checkRebased(t, r, "app:2", "annotated app")
}

// TestLayersAndHistoryWithBuildah: --layers N counts docker history's
// entries; --to-base alone matches a base rebuilt from the same Dockerfile.
func TestLayersAndHistoryWithBuildah(t *testing.T) {
	need(t, "buildah", "skopeo", "umoci", "docker-registry")
	r := startRegistry(t)
	buildBases(t, r, "oci")
	busybox, _ := os.ReadFile("/bin/busybox")
	same := "FROM scratch\nCOPY busybox /bin/busybox\nCOPY os-release /etc/os-release\nENV PATH=/bin\n"
	for _, v := range []string{"1", "2"} {
		buildImage(t, "e2e-same-"+v, same, map[string]string{"busybox": string(busybox), "os-release": "VERSION_ID=" + v + "\n"}, buildOpts{layers: true})
		r.push(t, "e2e-same-"+v, "same:"+v, "oci")
	}
	app := "COPY app.txt /app/app.txt\nENV APP=1\nCMD [\"/app/app.txt\"]\n"
	buildImage(t, "e2e-count", "FROM localhost/e2e-base-oci-1\n"+app, map[string]string{"app.txt": "counted"}, buildOpts{layers: false})
	r.push(t, "e2e-count", "app:count", "oci")
	// Docker format: no annotations (buildah's OCI base.name would be the
	// local name), so only history can tell.
	buildImage(t, "e2e-infer", "FROM localhost/e2e-same-1\n"+app, map[string]string{"app.txt": "inferred"}, buildOpts{format: "docker", layers: true})
	r.push(t, "e2e-infer", "app:infer", "docker")

	// base 1's Dockerfile has 6 entries; the application 3.
	code, _, stderr := rebase(t, r.env(), r.Host, "app:count", "--layers", "10", "--to-base", "base:2")
	if code != 4 || !strings.Contains(stderr, "--layers 10 does not fit") || !strings.Contains(stderr, "has 9 history entries") {
		t.Fatalf("too large: exit %d: %s", code, stderr)
	}
	code, _, stderr = rebase(t, r.env(), r.Host, "app:count", "--to-base", "base:2")
	if code != 4 || !strings.Contains(stderr, "that is --layers 3") {
		t.Fatalf("ambiguous history: exit %d: %s", code, stderr)
	}
	d := rebaseJSON(t, r, "app:count", "--layers", "3", "--to-base", "base:2")
	if d.Action != "rebased" || d.Detect.Method != "layers" || d.Detect.BaseLayers != 3 {
		t.Fatalf("result %+v", d)
	}
	checkRebased(t, r, "app:count", "counted")

	d = rebaseJSON(t, r, "app:infer", "--to-base", "same:2")
	if d.Action != "rebased" || d.Detect.Method != "history" || d.Detect.BaseLayers != 2 ||
		!strings.Contains(strings.Join(d.Detect.Reasons, " "), "matched ignoring content hashes and build IDs") {
		t.Fatalf("result %+v", d)
	}
	checkRebased(t, r, "app:infer", "inferred")
}
