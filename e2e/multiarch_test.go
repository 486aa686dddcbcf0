package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var arches = []string{"amd64", "arm64"}

// buildManifest builds dockerfile for linux/amd64 and linux/arm64 into the
// manifest list localhost/<name>. COPY-only Dockerfiles need no emulation;
// ARG TARGETARCH gives each platform its own files.
func buildManifest(t *testing.T, name, dockerfile string, files map[string]string) {
	t.Helper()
	ctx := t.TempDir()
	for f, content := range files {
		write(t, filepath.Join(ctx, f), []byte(content))
	}
	write(t, filepath.Join(ctx, "Dockerfile"), []byte(dockerfile))
	buildah(t, "bud", "--isolation", "chroot", "--pull=never", "--format", "oci", "--layers=true",
		"--platform", "linux/amd64,linux/arm64", "--manifest", "localhost/"+name, ctx)
}

// pushManifest pushes the manifest list and every image in it.
func (r *registryServer) pushManifest(t *testing.T, name, repoTag string) {
	t.Helper()
	buildah(t, "manifest", "push", "--all", "--format", "oci", "--cert-dir", r.CertDir, "--creds", r.creds(), "localhost/"+name, "docker://"+r.Host+"/"+repoTag)
}

// unpackArch copies the arch image of repoTag to an OCI layout with skopeo
// (--override-arch picks it from the index) and unpacks it with umoci.
func (r *registryServer) unpackArch(t *testing.T, repoTag, arch string) string {
	t.Helper()
	need(t, "skopeo", "umoci")
	dir := t.TempDir()
	layout := filepath.Join(dir, "layout")
	// umoci 0.4 unpacks gzip and plain layers only: zstd ones are
	// recompressed on the way.
	run(t, "skopeo", "--override-os", "linux", "--override-arch", arch, "copy", "--dest-compress-format", "gzip", "--src-cert-dir", r.CertDir, "--src-creds", r.creds(), "docker://"+r.Host+"/"+repoTag, "oci:"+layout+":img")
	run(t, "umoci", "unpack", "--rootless", "--image", layout+":img", filepath.Join(dir, "bundle"))
	return filepath.Join(dir, "bundle", "rootfs")
}

type indexDoc struct {
	MediaType string `json:"mediaType"`
	Manifests []struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Platform  struct {
			OS           string `json:"os"`
			Architecture string `json:"architecture"`
		} `json:"platform"`
	} `json:"manifests"`
}

func parseIndex(t *testing.T, raw string) indexDoc {
	t.Helper()
	var idx indexDoc
	if err := json.Unmarshal([]byte(raw), &idx); err != nil {
		t.Fatalf("index: %v\n%s", err, raw)
	}
	if len(idx.Manifests) == 0 {
		t.Fatalf("not an index:\n%s", raw)
	}
	return idx
}

// TestMultiPlatformRebase: a two-platform application built by buildah on
// a two-platform base moves to the new two-platform base in one command;
// both platforms verify with skopeo and umoci.
func TestMultiPlatformRebase(t *testing.T) {
	need(t, "buildah", "skopeo", "umoci", "docker-registry")
	r := startRegistry(t)
	for _, v := range []string{"1", "2"} {
		files := map[string]string{"marker": v}
		for _, a := range arches {
			files["os-release-"+a] = fmt.Sprintf("VERSION_ID=%s\nARCH=%s\n", v, a)
		}
		buildManifest(t, "e2e-mbase-"+v, fmt.Sprintf("FROM scratch\nARG TARGETARCH\nCOPY os-release-${TARGETARCH} /etc/os-release\nCOPY marker /etc/base-marker-%[1]s\nENV BASEVER=%[1]s\n", v), files)
		r.pushManifest(t, "e2e-mbase-"+v, "base:"+v)
	}
	files := map[string]string{}
	for _, a := range arches {
		files["app-"+a] = "app for " + a
	}
	buildManifest(t, "e2e-mapp", "FROM localhost/e2e-mbase-1\nARG TARGETARCH\nCOPY app-${TARGETARCH} /app/app.txt\nENV APP=1\n", files)
	r.pushManifest(t, "e2e-mapp", "app:1")

	before := parseIndex(t, r.inspect(t, "app:1"))
	base2 := parseIndex(t, r.inspect(t, "base:2"))
	code, out, stderr := rebase(t, r.env(), r.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, stderr)
	}
	var res struct {
		Action    string
		Platforms []struct{ Platform, Action string }
	}
	json.Unmarshal([]byte(out), &res)
	if res.Action != "rebased" || len(res.Platforms) != 2 {
		t.Fatalf("result: %s", out)
	}

	after := parseIndex(t, r.inspect(t, "app:1"))
	if after.MediaType != before.MediaType || len(after.Manifests) != len(before.Manifests) {
		t.Fatalf("index %s with %d manifests, want %s with %d", after.MediaType, len(after.Manifests), before.MediaType, len(before.Manifests))
	}
	for i, m := range after.Manifests {
		b := before.Manifests[i]
		if m.Platform != b.Platform || m.MediaType != b.MediaType || m.Digest == b.Digest {
			t.Errorf("entry %d: %+v, was %+v (platform and type kept, digest changed)", i, m, b)
		}
	}
	for _, a := range arches {
		t.Run(a, func(t *testing.T) {
			// The platform's manifest starts with base:2's layers for it.
			var want manifestDoc
			for _, m := range base2.Manifests {
				if m.Platform.Architecture == a {
					want = parseManifest(t, r.inspect(t, "base@"+m.Digest))
				}
			}
			for _, m := range after.Manifests {
				if m.Platform.Architecture != a {
					continue
				}
				got := parseManifest(t, r.inspect(t, "app@"+m.Digest))
				for i, l := range want.Layers {
					if got.Layers[i].Digest != l.Digest {
						t.Errorf("layer %d is %s, want base:2's %s", i+1, got.Layers[i].Digest, l.Digest)
					}
				}
			}
			root := r.unpackArch(t, "app:1", a)
			if got := readFile(t, filepath.Join(root, "etc/os-release")); got != "VERSION_ID=2\nARCH="+a+"\n" {
				t.Errorf("/etc/os-release = %q, want base:2's for %s", got, a)
			}
			readFile(t, filepath.Join(root, "etc/base-marker-2"))
			if _, err := os.Stat(filepath.Join(root, "etc/base-marker-1")); err == nil {
				t.Errorf("the old base's file is still there")
			}
			if got := readFile(t, filepath.Join(root, "app/app.txt")); got != "app for "+a {
				t.Errorf("/app/app.txt = %q", got)
			}
		})
	}

	code, out, _ = rebase(t, r.env(), r.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2")
	if code != 0 || !strings.Contains(out, "up to date") {
		t.Errorf("second run: exit %d, %s", code, out)
	}
}
