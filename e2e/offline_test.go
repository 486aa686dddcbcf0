package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Offline and local images: layouts and archives produced by skopeo,
// rebased by the binary, read back by skopeo and unpacked by umoci.

// export copies repoTag from the registry to a local destination
// (oci:DIR:TAG, docker-archive:FILE:NAME:TAG, ...) with skopeo.
func (r *registryServer) export(t *testing.T, repoTag, dest string) {
	t.Helper()
	run(t, "skopeo", "copy", "--src-cert-dir", r.CertDir, "--src-creds", r.creds(), "docker://"+r.Host+"/"+repoTag, dest)
}

// unpackLocal copies a local image to an OCI layout with skopeo (which
// checks every blob) and unpacks it with umoci; it returns the root
// filesystem.
func unpackLocal(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	run(t, "skopeo", "copy", src, "oci:"+filepath.Join(dir, "layout")+":img")
	run(t, "umoci", "unpack", "--rootless", "--image", filepath.Join(dir, "layout")+":img", filepath.Join(dir, "bundle"))
	return filepath.Join(dir, "bundle", "rootfs")
}

// checkRootfs checks a root filesystem: new base, app kept.
func checkRootfs(t *testing.T, root string) {
	t.Helper()
	if got := readFile(t, filepath.Join(root, "etc/os-release")); got != "VERSION_ID=2\n" {
		t.Errorf("/etc/os-release = %q, want the new base's", got)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/base-marker-1")); err == nil {
		t.Errorf("the old base's file is still there")
	}
	readFile(t, filepath.Join(root, "etc/base-marker-2"))
	if got := readFile(t, filepath.Join(root, "app/app.txt")); got != "offline app" {
		t.Errorf("/app/app.txt = %q", got)
	}
}

type offlineResult struct {
	Action, Target, After string
	Transferred           struct{ Mounted, Copied, CopiedBytes int }
}

func rebaseLocal(t *testing.T, env []string, args ...string) offlineResult {
	t.Helper()
	code, out, stderr := rebase(t, env, append(args, "-o", "json")...)
	if code != 0 {
		t.Fatalf("image-rebase %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	var res offlineResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("output: %v\n%s", err, out)
	}
	if res.Action != "rebased" {
		t.Fatalf("action %q: %s", res.Action, out)
	}
	return res
}

// offlineFixture builds base:1, base:2 and app:1 (on base:1) with buildah
// and pushes them to a registry.
func offlineFixture(t *testing.T) *registryServer {
	t.Helper()
	need(t, "buildah", "skopeo", "umoci", "docker-registry")
	r := startRegistry(t)
	buildBases(t, r, "oci")
	buildImage(t, "e2e-offline-app", "FROM localhost/e2e-base-oci-1\nCOPY app.txt /app/app.txt\nENV APP=offline\n",
		map[string]string{"app.txt": "offline app"}, buildOpts{format: "oci", layers: true})
	r.push(t, "e2e-offline-app", "app:1", "oci")
	return r
}

func TestOffline(t *testing.T) {
	r := offlineFixture(t)
	env := r.env()

	// docker save archives as skopeo writes them (plain tar layers),
	// rebased in place, then loaded back by skopeo into an OCI layout and
	// into the registry.
	t.Run("docker-archive", func(t *testing.T) {
		dir := t.TempDir()
		app, b1, b2 := filepath.Join(dir, "app.tar"), filepath.Join(dir, "base1.tar"), filepath.Join(dir, "base2.tar")
		r.export(t, "app:1", "docker-archive:"+app+":app:1")
		r.export(t, "base:1", "docker-archive:"+b1+":base:1")
		r.export(t, "base:2", "docker-archive:"+b2+":base:2")
		res := rebaseLocal(t, env, "docker-archive:"+app+":app:1",
			"--from-base", "docker-archive:"+b1+":base:1", "--to-base", "docker-archive:"+b2+":base:2")
		if res.Transferred.Copied == 0 || res.Transferred.CopiedBytes == 0 {
			t.Errorf("transferred %+v, want base 2's layers copied into the archive", res.Transferred)
		}
		checkRootfs(t, unpackLocal(t, "docker-archive:"+app+":app:1"))
		// The docker load format: plain <diff_id>.tar layers, the config,
		// manifest.json last.
		names := strings.Fields(run(t, "tar", "-tf", app))
		if names[len(names)-1] != "manifest.json" {
			t.Errorf("archive entries %v", names)
		}
		var saved []struct {
			Config           string
			RepoTags, Layers []string
		}
		if err := json.Unmarshal([]byte(run(t, "tar", "-xOf", app, "manifest.json")), &saved); err != nil || len(saved) != 1 {
			t.Fatalf("manifest.json: %v %v", saved, err)
		}
		t.Logf("manifest.json: %+v", saved)
		if len(saved[0].RepoTags) != 1 || !strings.HasSuffix(saved[0].RepoTags[0], "app:1") {
			t.Errorf("RepoTags %v", saved[0].RepoTags)
		}
		for _, l := range saved[0].Layers {
			if out := run(t, "sh", "-c", "tar -xOf "+app+" "+l+" | tar -t >/dev/null && echo ok"); strings.TrimSpace(out) != "ok" {
				t.Errorf("layer %s is not a plain tar", l)
			}
		}
		run(t, "skopeo", "copy", "--dest-cert-dir", r.CertDir, "--dest-creds", r.creds(), "docker-archive:"+app+":app:1", "docker://"+r.Host+"/loaded:1")
		checkRootfs(t, r.unpack(t, "loaded:1"))

		// Again: up to date, the archive untouched.
		before := readFile(t, app)
		code, out, _ := rebase(t, env, "docker-archive:"+app+":app:1",
			"--from-base", "docker-archive:"+b1+":base:1", "--to-base", "docker-archive:"+b2+":base:2")
		if code != 0 || !strings.Contains(out, "up to date") || readFile(t, app) != before {
			t.Errorf("second run: exit %d, %s", code, out)
		}
	})

	// One OCI layout holding everything: nothing is copied.
	t.Run("oci-layout-in-place", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "layout")
		for _, tag := range []string{"app:1", "base:1", "base:2"} {
			r.export(t, tag, "oci:"+dir+":"+strings.ReplaceAll(tag, ":", "-"))
		}
		res := rebaseLocal(t, env, "oci:"+dir+":app-1", "--from-base", "oci:"+dir+":base-1", "--to-base", "oci:"+dir+":base-2")
		if res.Transferred.Copied != 0 {
			t.Errorf("transferred %+v within one layout", res.Transferred)
		}
		run(t, "umoci", "unpack", "--rootless", "--image", dir+":app-1", filepath.Join(t.TempDir(), "bundle"))
		checkRootfs(t, unpackLocal(t, "oci:"+dir+":app-1"))
	})

	// App in a layout, bases in the registry: result into the layout (new
	// base's layers copied), into the registry (--allow-copy for the app's
	// own layers) and into an oci-archive.
	t.Run("mixed", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "layout")
		r.export(t, "app:1", "oci:"+dir+":app")
		base1, base2 := r.Host+"/base:1", r.Host+"/base:2"

		res := rebaseLocal(t, env, "oci:"+dir+":app", "--from-base", base1, "--to-base", base2, "-t", "rebased")
		if res.Transferred.Copied == 0 {
			t.Errorf("transferred %+v, want base 2's layers copied", res.Transferred)
		}
		checkRootfs(t, unpackLocal(t, "oci:"+dir+":rebased"))

		code, _, stderr := rebase(t, env, "oci:"+dir+":app", "--from-base", base1, "--to-base", base2, "-t", r.Host+"/fromlayout:1")
		if code == 0 || !strings.Contains(stderr, "--allow-copy") {
			t.Errorf("to a registry without --allow-copy: exit %d, %s", code, stderr)
		}
		rebaseLocal(t, env, "oci:"+dir+":app", "--from-base", base1, "--to-base", base2, "-t", r.Host+"/fromlayout:1", "--allow-copy")
		checkRootfs(t, r.unpack(t, "fromlayout:1"))
		parseManifest(t, r.inspect(t, "fromlayout:1"))

		archive := filepath.Join(t.TempDir(), "out.tar")
		rebaseLocal(t, env, "oci:"+dir+":app", "--from-base", base1, "--to-base", base2, "-t", "oci-archive:"+archive+":app")
		checkRootfs(t, unpackLocal(t, "oci-archive:"+archive+":app"))

		// The registry app rebased into a docker-archive, then loaded back.
		saved := filepath.Join(t.TempDir(), "saved.tar")
		rebaseLocal(t, env, r.Host+"/app:1", "--from-base", base1, "--to-base", base2, "-t", "docker-archive:"+saved+":app:2")
		checkRootfs(t, unpackLocal(t, "docker-archive:"+saved+":app:2"))
	})

	// An oci-archive from skopeo, rebased in place onto a registry base.
	t.Run("oci-archive", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "app.tar")
		r.export(t, "app:1", "oci-archive:"+file+":app")
		rebaseLocal(t, env, "oci-archive:"+file+":app", "--from-base", r.Host+"/base:1", "--to-base", r.Host+"/base:2")
		checkRootfs(t, unpackLocal(t, "oci-archive:"+file+":app"))
		leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".*"))
		if len(leftovers) > 0 {
			t.Errorf("left behind: %v", leftovers)
		}
	})
}
