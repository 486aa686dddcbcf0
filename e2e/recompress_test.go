package e2e

import (
	"path/filepath"
	"strings"
	"testing"
)

// Layers are identified by content: bases re-compressed by skopeo (zstd)
// and a docker save of the application (plain tars) rebase onto the
// registry's gzip bases.

// copyZstd copies src to dst in the registry with skopeo, re-compressing
// every layer with zstd. skopeo 1.9 reuses the gzip blobs a registry
// already has instead of re-compressing into that registry, so the copy goes
// through an OCI layout.
func (r *registryServer) copyZstd(t *testing.T, src, dst string) {
	t.Helper()
	layout := "oci:" + filepath.Join(t.TempDir(), "layout") + ":img"
	run(t, "skopeo", "copy", "--src-cert-dir", r.CertDir, "--src-creds", r.creds(), "--dest-compress-format", "zstd", "docker://"+r.Host+"/"+src, layout)
	run(t, "skopeo", "copy", "--dest-cert-dir", r.CertDir, "--dest-creds", r.creds(), layout, "docker://"+r.Host+"/"+dst)
	for i, l := range parseManifest(t, r.inspect(t, dst)).Layers {
		if !strings.HasSuffix(l.MediaType, "+zstd") {
			t.Fatalf("skopeo did not re-compress %s: layer %d of %s is %s", src, i+1, dst, l.MediaType)
		}
	}
}

// unpackGzip is unpack for images with zstd layers, which umoci 0.4.7
// cannot read: skopeo re-compresses them with gzip on the way to the layout
// (checking every blob), and umoci checks the contents against the
// config's diff_ids while unpacking.
func (r *registryServer) unpackGzip(t *testing.T, repoTag string) string {
	t.Helper()
	dir := t.TempDir()
	run(t, "skopeo", "copy", "--src-cert-dir", r.CertDir, "--src-creds", r.creds(), "--dest-compress-format", "gzip", "docker://"+r.Host+"/"+repoTag, "oci:"+filepath.Join(dir, "layout")+":img")
	run(t, "umoci", "unpack", "--rootless", "--image", filepath.Join(dir, "layout")+":img", filepath.Join(dir, "bundle"))
	return filepath.Join(dir, "bundle", "rootfs")
}

func TestRecompressedBasesAndDockerSave(t *testing.T) {
	r := offlineFixture(t)
	env := r.env()
	r.copyZstd(t, "base:1", "basez:1")
	r.copyZstd(t, "base:2", "basez:2")
	r.copyZstd(t, "app:1", "appz:1")
	base2 := parseManifest(t, r.inspect(t, "base:2")).Layers

	// app:1 (gzip) from the zstd copy of base:1: matched by diff_id.
	t.Run("old base recompressed", func(t *testing.T) {
		rebaseLocal(t, env, r.Host+"/app:1", "--from-base", r.Host+"/basez:1", "--to-base", r.Host+"/base:2", "-t", "from-zstd")
		checkRootfs(t, r.unpack(t, "app:from-zstd"))
	})

	// The zstd copy of app:1 onto base:2 (gzip): base:2's blobs as they
	// are, the application's zstd layers kept; then, on base:2 by content,
	// the zstd copy of base:2 finds it up to date.
	t.Run("image recompressed", func(t *testing.T) {
		rebaseLocal(t, env, r.Host+"/appz:1", "--from-base", r.Host+"/base:1", "--to-base", r.Host+"/base:2", "-t", "2")
		m := parseManifest(t, r.inspect(t, "appz:2"))
		for i, l := range base2 {
			if m.Layers[i].Digest != l.Digest || m.Layers[i].MediaType != l.MediaType {
				t.Errorf("layer %d: %s %s, want base:2's %s %s", i+1, m.Layers[i].MediaType, m.Layers[i].Digest, l.MediaType, l.Digest)
			}
		}
		if top := m.Layers[len(m.Layers)-1]; !strings.HasSuffix(top.MediaType, "+zstd") {
			t.Errorf("application layer %s, want the image's zstd layer kept", top.MediaType)
		}
		checkRootfs(t, r.unpackGzip(t, "appz:2"))

		before := r.inspect(t, "appz:2")
		code, out, stderr := rebase(t, env, r.Host+"/appz:2", "--from-base", r.Host+"/base:1", "--to-base", r.Host+"/basez:2", "--check")
		if code != 0 {
			t.Errorf("--check onto the zstd copy of base:2: exit %d, %s%s; want 0 (up to date by content)", code, out, stderr)
		}
		code, out, stderr = rebase(t, env, r.Host+"/appz:2", "--from-base", r.Host+"/base:1", "--to-base", r.Host+"/basez:2", "--dry-run")
		if code != 0 || !strings.Contains(out, "up to date") || !strings.Contains(out, "note: ") || !strings.Contains(out, "other blobs") {
			t.Errorf("--dry-run: exit %d\n%s%s\nwant up to date, with a note on the blobs", code, out, stderr)
		}
		if r.inspect(t, "appz:2") != before {
			t.Error("appz:2 rewritten although up to date")
		}
	})

	// docker save of app:1 (plain tars) onto the registry's bases: into the
	// registry (its own layers uploaded, only with --allow-copy) and into
	// the archive itself.
	t.Run("docker save application", func(t *testing.T) {
		app := filepath.Join(t.TempDir(), "app.tar")
		r.export(t, "app:1", "docker-archive:"+app+":app:1")
		args := []string{"docker-archive:" + app + ":app:1", "--from-base", r.Host + "/base:1", "--to-base", r.Host + "/base:2", "-t", r.Host + "/saved:1"}
		code, _, stderr := rebase(t, env, args...)
		if code != 4 || !strings.Contains(stderr, "exists only in docker-archive:"+app) || !strings.Contains(stderr, "--allow-copy") {
			t.Errorf("into the registry without --allow-copy: exit %d, %s", code, stderr)
		}
		if r.exists(t, "saved:1") {
			t.Fatal("saved:1 written by a refused rebase")
		}
		res := rebaseLocal(t, env, append(args, "--allow-copy")...)
		if res.Transferred.Mounted != len(base2) || res.Transferred.Copied == 0 || res.Transferred.CopiedBytes == 0 {
			t.Errorf("transferred %+v, want base:2's %d layers mounted and the application's uploaded", res.Transferred, len(base2))
		}
		checkRootfs(t, r.unpack(t, "saved:1"))

		res = rebaseLocal(t, env, "docker-archive:"+app+":app:1", "--from-base", r.Host+"/base:1", "--to-base", r.Host+"/base:2")
		if res.Transferred.Copied != len(base2) {
			t.Errorf("transferred %+v, want base:2's %d layers copied into the archive", res.Transferred, len(base2))
		}
		checkRootfs(t, unpackLocal(t, "docker-archive:"+app+":app:1"))
		// Again, with the registry's zstd copy of base:2: up to date by
		// content, the archive untouched.
		before := readFile(t, app)
		code, out, _ := rebase(t, env, "docker-archive:"+app+":app:1", "--from-base", r.Host+"/base:1", "--to-base", r.Host+"/basez:2")
		if code != 0 || !strings.Contains(out, "up to date") || readFile(t, app) != before {
			t.Errorf("second run: exit %d, %s", code, out)
		}
	})
}
