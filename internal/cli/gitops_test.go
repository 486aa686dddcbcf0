package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// gitopsTree writes a values file marking app:1 and a broken file.
func gitopsTree(t *testing.T, host string) (dir, values, broken string) {
	dir = t.TempDir()
	values = filepath.Join(dir, "values.yaml")
	broken = filepath.Join(dir, "apps", "broken.yml")
	os.MkdirAll(filepath.Dir(broken), 0o755)
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(values, "# values\nimage:\n  repository: "+host+"/app # {\"$rebase\": \"app:name\"}\n  tag: \"1\" # {\"$rebase\": \"app:tag\"}\n")
	write(broken, "image: "+host+"/app # {\"$rebase\": \"app\"}\n")
	return dir, values, broken
}

func TestGitOpsCommand(t *testing.T) {
	reg := startRegistry(t)
	fixture(t, reg)
	dir, values, broken := gitopsTree(t, reg.Host)
	snap := reg.Snapshot(t)
	base := []string{"gitops", dir, "--insecure", "--from-base", reg.Ref("base:1"), "--to-base", reg.Ref("base:2")}

	// Dry run: the diff, exit 1 for the broken file, nothing written.
	code, out, stderr := run(t, append(base, "--dry-run")...)
	if code != 1 || !strings.Contains(stderr, "1 file(s) left untouched") {
		t.Fatalf("dry run: exit %d, stderr %s", code, stderr)
	}
	for _, want := range []string{
		values + ": would update (dry run)",
		"  app (line 3) " + reg.Host + "/app:1: would rebase " + snap["app:1"][:19] + " → ",
		"--- a" + filepath.ToSlash(values) + "\n+++ b" + filepath.ToSlash(values) + "\n@@ -1,4 +1,4 @@\n", // absolute: a/tmp/...
		"-  tag: \"1\" # {\"$rebase\": \"app:tag\"}\n+  tag: \"1@sha256:",
		broken + ": left untouched because of errors\n  error: line 1: image \"app\": reference \"" + reg.Host + "/app\" has no tag",
		"2 YAML file(s) scanned, 2 with markers: 1 would be updated, 0 unchanged, 1 failed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry-run output lacks %q:\n%s", want, out)
		}
	}
	if got := reg.Snapshot(t); got["app:1"] != snap["app:1"] {
		t.Fatal("dry run wrote to the registry")
	}

	// For real, as JSON.
	code, out, stderr = run(t, append(base, "-o", "json")...)
	if code != 1 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep struct {
		Scanned int
		Files   []struct {
			Path, Status, Diff string
			Problems           []struct {
				Line    int
				Message string
			}
			Images []struct {
				ID, Reference, Action, Before, After, Value string
				Line                                        int
				Changed                                     bool
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	app := reg.Snapshot(t)["app:1"]
	if len(rep.Files) != 2 || rep.Scanned != 2 {
		t.Fatalf("report %+v", rep)
	}
	f, b := rep.Files[1], rep.Files[0] // sorted by path: apps/broken.yml first
	if f.Path != values || f.Status != "updated" || f.Diff != "" || len(f.Images) != 1 {
		t.Fatalf("values report %+v", f)
	}
	im := f.Images[0]
	if im.ID != "app" || im.Line != 3 || im.Action != "rebased" || im.Before != snap["app:1"] || im.After != app || im.Value != "1@"+app || !im.Changed {
		t.Fatalf("image report %+v (app:1 now %s)", im, app)
	}
	if b.Path != broken || b.Status != "failed" || len(b.Problems) != 1 || b.Problems[0].Line != 1 {
		t.Fatalf("broken report %+v", b)
	}
	got, _ := os.ReadFile(values)
	if want := "# values\nimage:\n  repository: " + reg.Host + "/app # {\"$rebase\": \"app:name\"}\n  tag: \"1@" + app + "\" # {\"$rebase\": \"app:tag\"}\n"; string(got) != want {
		t.Fatalf("values.yaml:\n%s", got)
	}

	// Fixed file, second run: up to date, already pinned, exit 0.
	os.Remove(broken)
	code, out, stderr = run(t, base...)
	if code != 0 || !strings.Contains(out, ": up to date "+app[:19]+"; already pinned") || !strings.Contains(out, values+": unchanged") {
		t.Fatalf("second run: exit %d\n%s%s", code, out, stderr)
	}

	// Pin-only after someone moves the tag: the file follows the tag.
	reg.Push(t, "app:1", reg.Image(t, "other:1"))
	other := reg.Snapshot(t)["other:1"]
	code, out, stderr = run(t, "gitops", values, "--insecure", "--pin-only")
	got, _ = os.ReadFile(values)
	if code != 0 || !strings.Contains(out, "tag names "+other[:19]+"; pinned") || !strings.Contains(string(got), "tag: \"1@"+other+"\"") {
		t.Fatalf("pin-only: exit %d\n%s%s\n%s", code, out, stderr, got)
	}
}

func TestGitOpsExitCodes(t *testing.T) {
	reg := startRegistry(t)
	fixture(t, reg)
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.yaml")
	os.WriteFile(missing, []byte("image: "+reg.Host+"/nothere:1 # {\"$rebase\": \"x\"}\n"), 0o644)
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"gitops"}, 2, "at least one directory"},
		{[]string{"gitops", filepath.Join(dir, "nope")}, 2, "no such file"},
		{[]string{"gitops", dir, "--pin-only", "--to-base", "x:1"}, 2, "--pin-only rebases nothing"},
		{[]string{"gitops", dir, "--from-base", "x:1"}, 2, "--from-base needs --to-base"},
		{[]string{"gitops", dir, "-o", "yaml"}, 2, "invalid --output"},
		{[]string{"gitops", dir, "--to-base", "UPPER/x:1"}, 2, "--to-base"},
		{[]string{"gitops", dir, "--markers", "flux"}, 2, `invalid --markers "flux": want rebase, imagepolicy, or both`},
		{[]string{"gitops", dir, "--insecure", "--pin-only"}, 3, "1 image(s) not pinned"},
	}
	for _, tt := range tests {
		code, _, stderr := run(t, tt.args...)
		if code != tt.code || !strings.Contains(stderr, tt.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q in one line", tt.args, code, stderr, tt.code, tt.want)
		}
	}
}

// TestGitOpsFluxMarkers: --markers imagepolicy reads a Flux HelmRelease's
// $imagepolicy markers (name, tag, digest); without it the file has no
// markers. A file whose only image is missing is reported as failed, with
// its image's error.
func TestGitOpsFluxMarkers(t *testing.T) {
	reg := startRegistry(t)
	fixture(t, reg)
	snap := reg.Snapshot(t)
	dir := t.TempDir()
	release := filepath.Join(dir, "release.yaml")
	src := "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nspec:\n  values:\n    image:\n" +
		"      repository: " + reg.Host + "/app # {\"$imagepolicy\": \"flux-system:app:name\"}\n" +
		"      tag: \"1\" # {\"$imagepolicy\": \"flux-system:app:tag\"}\n" +
		"      digest: \"\" # {\"$imagepolicy\": \"flux-system:app:digest\"}\n"
	if err := os.WriteFile(release, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run(t, "gitops", dir, "--insecure", "--pin-only")
	if code != 0 || !strings.Contains(out, "1 YAML file(s) scanned, 0 with markers") {
		t.Fatalf("default markers: exit %d\n%s%s", code, out, stderr)
	}
	code, out, stderr = run(t, "gitops", dir, "--insecure", "--pin-only", "--markers", "rebase,imagepolicy")
	got, _ := os.ReadFile(release)
	want := strings.Replace(src, `digest: ""`, `digest: "`+snap["app:1"]+`"`, 1)
	if code != 0 || string(got) != want || !strings.Contains(out, "flux-system:app (line 6) "+reg.Host+"/app:1: tag names "+snap["app:1"][:19]+"; pinned") {
		t.Fatalf("imagepolicy: exit %d\n%s%s\n%s", code, out, stderr, got)
	}

	gone := filepath.Join(dir, "gone.yaml")
	os.WriteFile(gone, []byte("image: "+reg.Host+"/nothere:1 # {\"$rebase\": \"x\"}\n"), 0o644)
	code, out, _ = run(t, "gitops", gone, "--insecure", "--pin-only")
	if code != 3 || !strings.Contains(out, gone+": left untouched because of errors\n  x (line 1) "+reg.Host+"/nothere:1: error: ") || !strings.Contains(out, "0 unchanged, 1 failed") {
		t.Fatalf("missing image: exit %d\n%s", code, out)
	}
}
