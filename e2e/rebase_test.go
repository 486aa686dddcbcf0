package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const baseDockerfile = `FROM scratch
COPY busybox /bin/busybox
COPY os-release /etc/os-release
COPY marker /etc/base-marker-%[1]s
ENV PATH=/bin BASEVER=%[1]s
LABEL org.example.base=%[1]s
CMD ["/bin/busybox", "sh"]
`

// buildBases builds base v1 and v2 with buildah and pushes them as
// base:1 and base:2.
func buildBases(t *testing.T, r *registryServer, format string) {
	t.Helper()
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("busybox-static is required in CI: %v", err)
		}
		t.Skipf("no /bin/busybox (apt-get install busybox-static): %v", err)
	}
	for _, v := range []string{"1", "2"} {
		tag := fmt.Sprintf("e2e-base-%s-%s", format, v)
		buildImage(t, tag, fmt.Sprintf(baseDockerfile, v), map[string]string{
			"busybox": string(busybox), "os-release": "VERSION_ID=" + v + "\n", "marker": v,
		}, buildOpts{format: format, layers: true})
		r.push(t, tag, "base:"+v, format)
	}
}

type manifestDoc struct {
	MediaType string `json:"mediaType"`
	Config    struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
	} `json:"config"`
	Layers []struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
	} `json:"layers"`
	Annotations map[string]string `json:"annotations"`
}

func parseManifest(t *testing.T, raw string) manifestDoc {
	t.Helper()
	var m manifestDoc
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatalf("manifest: %v\n%s", err, raw)
	}
	return m
}

// TestBuildahImagesRebaseAndRun builds real images with buildah (OCI and
// Docker formats, per-instruction and single-layer builds, with and without
// RUN), pushes them to docker-registry over TLS with basic auth, rebases
// them with the binary, and checks the result with skopeo and umoci.
func TestBuildahImagesRebaseAndRun(t *testing.T) {
	need(t, "buildah", "skopeo", "umoci", "docker-registry")
	r := startRegistry(t)
	buildBases(t, r, "oci")
	base1 := parseManifest(t, r.inspect(t, "base:1"))
	base2 := parseManifest(t, r.inspect(t, "base:2"))

	cases := []struct {
		name   string
		format string
		layers bool
		run    bool
	}{
		{"oci-per-instruction-run", "oci", true, true},
		{"oci-single-layer", "oci", false, false},
		{"docker-per-instruction", "docker", true, false},
		{"docker-single-layer-run", "docker", false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dockerfile := "FROM localhost/e2e-base-oci-1\nCOPY app.txt /app/app.txt\n"
			if c.run {
				dockerfile += `RUN ["/bin/busybox", "sh", "-c", "echo built-by-run > /app/built"]` + "\n"
			}
			dockerfile += "ENV APP_MODE=" + c.name + "\nCMD [\"/app/app.txt\"]\n"
			tag := "e2e-app-" + c.name
			buildImage(t, tag, dockerfile, map[string]string{"app.txt": "app " + c.name}, buildOpts{format: c.format, layers: c.layers})
			r.push(t, tag, "app:"+c.name, c.format)
			before := parseManifest(t, r.inspect(t, "app:"+c.name))

			code, out, stderr := rebase(t, r.env(), r.Host, "app:"+c.name, "--from-base", "base:1", "--to-base", "base:2", "-o", "json")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var res struct{ Action, After string }
			json.Unmarshal([]byte(out), &res)
			if res.Action != "rebased" {
				t.Fatalf("action %q: %s", res.Action, out)
			}

			after := parseManifest(t, r.inspect(t, "app:"+c.name))
			if after.MediaType != before.MediaType {
				t.Errorf("manifest media type %s, want the image's %s", after.MediaType, before.MediaType)
			}
			// base:1's layers out, base:2's in, the image's own kept.
			nOld, nNew := len(base1.Layers), len(base2.Layers)
			own := len(before.Layers) - nOld
			if len(after.Layers) != nNew+own {
				t.Fatalf("%d layers after, want %d: base:2's %d and the image's own %d", len(after.Layers), nNew+own, nNew, own)
			}
			for i, l := range base2.Layers {
				if after.Layers[i].Digest != l.Digest {
					t.Errorf("layer %d is %s, want base:2's %s", i+1, after.Layers[i].Digest, l.Digest)
				}
			}
			for i := range own {
				if after.Layers[nNew+i] != before.Layers[nOld+i] {
					t.Errorf("application layer %d changed: %v → %v", i+1, before.Layers[nOld+i], after.Layers[nNew+i])
				}
			}
			for _, l := range after.Layers {
				if strings.Contains(after.MediaType, "docker") != strings.Contains(l.MediaType, "docker") {
					t.Errorf("layer media type %s in a %s manifest", l.MediaType, after.MediaType)
				}
			}

			root := r.unpack(t, "app:"+c.name)
			if got := readFile(t, filepath.Join(root, "etc/os-release")); got != "VERSION_ID=2\n" {
				t.Errorf("/etc/os-release = %q, want the new base's", got)
			}
			if _, err := os.Stat(filepath.Join(root, "etc/base-marker-1")); err == nil {
				t.Errorf("the old base's file is still there")
			}
			readFile(t, filepath.Join(root, "etc/base-marker-2"))
			if got := readFile(t, filepath.Join(root, "app/app.txt")); got != "app "+c.name {
				t.Errorf("/app/app.txt = %q", got)
			}
			if c.run {
				if got := readFile(t, filepath.Join(root, "app/built")); got != "built-by-run\n" {
					t.Errorf("/app/built = %q", got)
				}
			}

			code, out, _ = rebase(t, r.env(), r.Host, "app:"+c.name, "--from-base", "base:1", "--to-base", "base:2")
			if code != 0 || !strings.Contains(out, "up to date") {
				t.Errorf("second run: exit %d, %s", code, out)
			}
		})
	}
}

// TestSquashedImageIsRefused: buildah --squash folds the base into the
// image's own layer, so the old base is no longer its bottom.
func TestSquashedImageIsRefused(t *testing.T) {
	need(t, "buildah", "skopeo", "docker-registry")
	r := startRegistry(t)
	buildBases(t, r, "oci")
	buildImage(t, "e2e-squashed", "FROM localhost/e2e-base-oci-1\nCOPY app.txt /app/app.txt\n", map[string]string{"app.txt": "x"}, buildOpts{squash: true})
	r.push(t, "e2e-squashed", "app:squashed", "oci")
	before := r.inspect(t, "app:squashed")
	code, _, stderr := rebase(t, r.env(), r.Host, "app:squashed", "--from-base", "base:1", "--to-base", "base:2")
	if code != 4 || !strings.Contains(stderr, "is not built on") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("exit %d, %q", code, stderr)
	}
	if after := r.inspect(t, "app:squashed"); after != before {
		t.Fatalf("the image changed")
	}
}

// TestWrongCredentialsAndUntrustedCertificate: one clear line, exit 3.
func TestWrongCredentialsAndUntrustedCertificate(t *testing.T) {
	need(t, "docker-registry")
	r := startRegistry(t)
	untrusted := append(os.Environ(), "DOCKER_CONFIG="+r.AuthDir)
	code, _, stderr := rebase(t, untrusted, r.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2")
	if code != 3 || !strings.Contains(stderr, "certificate") {
		t.Errorf("untrusted certificate: exit %d, %q", code, stderr)
	}
	dir := t.TempDir()
	write(t, filepath.Join(dir, "config.json"), []byte(fmt.Sprintf(`{"auths":{%q:{"auth":"Y2k6d3Jvbmc="}}}`, r.Host)))
	wrong := append(os.Environ(), "DOCKER_CONFIG="+dir, "SSL_CERT_FILE="+r.CAFile)
	code, _, stderr = rebase(t, wrong, r.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2")
	if code != 3 || !strings.Contains(stderr, "401") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("wrong credentials: exit %d, %q", code, stderr)
	}
}
