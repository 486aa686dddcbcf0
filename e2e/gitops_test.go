package e2e

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGitOpsPinsRebasedImagesInAGitTree runs image-rebase gitops on a Git
// working tree of deployment files naming a buildah image in docker-registry
// (TLS, basic auth), one of them a Kustomize images entry with its digest
// apart and Flux markers: the dry run prints the diff and writes nothing;
// the run rebases the image, and git sees one changed line per marked
// value; the pinned digest is the rebased image, on base 2.
func TestGitOpsPinsRebasedImagesInAGitTree(t *testing.T) {
	need(t, "buildah", "skopeo", "umoci", "docker-registry", "git")
	r := startRegistry(t)
	buildBases(t, r, "oci")
	buildImage(t, "e2e-gitops-app", "FROM localhost/e2e-base-oci-1\nCOPY app.txt /app/app.txt\nCMD [\"/app/app.txt\"]\n",
		map[string]string{"app.txt": "gitops app"}, buildOpts{format: "oci", layers: true})
	r.push(t, "e2e-gitops-app", "shop/api:2.3.0", "oci")
	digest := func() string {
		return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(r.inspect(t, "shop/api:2.3.0"))))
	}
	before := digest()

	repo := t.TempDir()
	values := "# Default values for shop.\nimage:\n  repository: " + r.Host + "/shop/api # {\"$rebase\": \"api:name\"}\n" +
		"  pullPolicy: IfNotPresent\n  tag: \"2.3.0\" # {\"$rebase\": \"api:tag\"}\nresources: {}\n"
	release := "apiVersion: helm.toolkit.fluxcd.io/v2\r\nkind: HelmRelease\r\nmetadata:\r\n  name: shop\r\nspec:\r\n  values:\r\n" +
		"    image: " + r.Host + "/shop/api:2.3.0@" + "sha256:" + strings.Repeat("0", 64) + " # {\"$rebase\": \"api\"}\r\n"
	// A Kustomize images entry with its digest apart, marked for Flux
	// (the name field is Kustomize's own, marked for image-rebase only).
	oldDigest := "sha256:" + strings.Repeat("1", 64)
	kustomization := "images:\n  - name: " + r.Host + "/shop/api # {\"$rebase\": \"flux-system:api:name\"}\n" +
		"    newTag: 2.3.0 # {\"$imagepolicy\": \"flux-system:api:tag\"}\n" +
		"    digest: " + oldDigest + " # {\"$imagepolicy\": \"flux-system:api:digest\"}\n"
	os.MkdirAll(filepath.Join(repo, "charts/shop"), 0o755)
	os.MkdirAll(filepath.Join(repo, "clusters/prod"), 0o755)
	write(t, filepath.Join(repo, "charts/shop/values.yaml"), []byte(values))
	write(t, filepath.Join(repo, "clusters/prod/shop.yaml"), []byte(release))
	write(t, filepath.Join(repo, "clusters/prod/kustomization.yaml"), []byte(kustomization))
	git := func(args ...string) string {
		return run(t, "git", append([]string{"-C", repo, "-c", "user.name=ci", "-c", "user.email=ci@example.com", "-c", "core.autocrlf=false"}, args...)...)
	}
	git("init", "-q")
	git("add", ".")
	git("commit", "-q", "-m", "deployment files")

	// The command runs in the repository, as a CI job does.
	cmdOut := func(args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.Command(binary, args...)
		cmd.Dir, cmd.Env = repo, r.env()
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), o.String(), e.String()
	}
	code, out, stderr := cmdOut("gitops", ".", "--from-base", r.Host+"/base:1", "--to-base", r.Host+"/base:2", "--markers", "rebase,imagepolicy", "--dry-run")
	if code != 0 || !strings.Contains(out, "--- a/charts/shop/values.yaml\n+++ b/charts/shop/values.yaml\n") || !strings.Contains(out, "would rebase") {
		t.Fatalf("dry run: exit %d\n%s%s", code, out, stderr)
	}
	if st := git("status", "--porcelain"); st != "" || digest() != before {
		t.Fatalf("dry run wrote: %q", st)
	}
	patch := out[strings.Index(out, "--- a/"):]

	code, out, stderr = cmdOut("gitops", ".", "--from-base", r.Host+"/base:1", "--to-base", r.Host+"/base:2", "--markers", "rebase,imagepolicy")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	after := digest()
	if after == before {
		t.Fatal("the image was not rebased")
	}
	if !strings.Contains(out, "rebased "+before[:19]+" → "+after[:19]+"; pinned") {
		t.Errorf("output:\n%s", out)
	}
	// A minimal diff: one line per marked value, nothing else.
	if got := git("diff", "--numstat"); got != "1\t1\tcharts/shop/values.yaml\n1\t1\tclusters/prod/kustomization.yaml\n1\t1\tclusters/prod/shop.yaml\n" {
		t.Fatalf("git diff --numstat:\n%s", got)
	}
	if got, want := readFile(t, filepath.Join(repo, "charts/shop/values.yaml")), strings.Replace(values, `tag: "2.3.0"`, `tag: "2.3.0@`+after+`"`, 1); got != want {
		t.Errorf("values.yaml:\n%s", got)
	}
	if got, want := readFile(t, filepath.Join(repo, "clusters/prod/shop.yaml")), strings.Replace(release, "sha256:"+strings.Repeat("0", 64), after, 1); got != want {
		t.Errorf("shop.yaml:\n%q", got)
	}
	// The digest goes into its own field; Kustomize renders NAME:TAG@DIGEST.
	if got, want := readFile(t, filepath.Join(repo, "clusters/prod/kustomization.yaml")), strings.Replace(kustomization, oldDigest, after, 1); got != want {
		t.Errorf("kustomization.yaml:\n%s", got)
	}
	// The dry run's diff for values.yaml is what git shows now (the
	// would-be digest was the real one).
	gitPatch := git("diff", "--no-color", "charts/shop/values.yaml")
	gitPatch = gitPatch[strings.Index(gitPatch, "--- a/"):]
	if !strings.HasPrefix(patch, gitPatch) {
		t.Errorf("dry-run diff:\n%s\ngit diff:\n%s", patch, gitPatch)
	}
	// The pinned digest is the rebased image, on base 2.
	root := r.unpack(t, "shop/api@"+after)
	if _, err := os.Stat(filepath.Join(root, "etc/base-marker-2")); err != nil {
		t.Errorf("pinned image is not on base 2: %v", err)
	}
	if got := readFile(t, filepath.Join(root, "app/app.txt")); got != "gitops app" {
		t.Errorf("app file %q", got)
	}

	// Again: nothing to do, nothing written.
	git("commit", "-q", "-am", "pin")
	code, out, stderr = cmdOut("gitops", ".", "--from-base", r.Host+"/base:1", "--to-base", r.Host+"/base:2", "--markers", "rebase,imagepolicy")
	if code != 0 || git("status", "--porcelain") != "" || !strings.Contains(out, "already pinned") {
		t.Fatalf("second run: exit %d\n%s%s", code, out, stderr)
	}
}
