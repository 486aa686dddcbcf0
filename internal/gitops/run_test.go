package gitops_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/gitops"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

func build(t *testing.T, parent v1.Image, env string, files map[string]string) v1.Image {
	t.Helper()
	img, err := testimage.Build(parent, testimage.Linux, testimage.Copy("COPY", files), testimage.Env(env))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// counter counts manifest writes per path.
type counter struct {
	mu   sync.Mutex
	puts map[string]int
}

func (c *counter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") {
			c.mu.Lock()
			c.puts[r.URL.Path]++
			c.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})
}

// setup pushes base:1, base:2, app:1 and worker:2 on base:1, current:1 on
// base:2, and writes a tree of deployment files that name them.
func setup(t *testing.T) (*regtest.Registry, *counter, string) {
	c := &counter{puts: map[string]int{}}
	reg := regtest.Start(t, regtest.WithHandler(c.wrap))
	b1 := build(t, nil, "V=1", map[string]string{"os": "one"})
	b2 := build(t, nil, "V=2", map[string]string{"os": "two"})
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", b2)
	reg.Push(t, "app:1", build(t, b1, "APP=1", map[string]string{"app": "app"}))
	reg.Push(t, "team/worker:2", build(t, b1, "W=2", map[string]string{"worker": "worker"}))
	cur := reg.Push(t, "current:1", build(t, b2, "C=1", map[string]string{"c": "c"}))

	dir := t.TempDir()
	h := reg.Host
	files := map[string]string{
		"charts/shop/values.yaml": "image:\n  repository: " + h + "/app # {\"$rebase\": \"app:name\"}\n" +
			"  tag: \"1@sha256:" + strings.Repeat("0", 64) + "\" # {\"$rebase\": \"app:tag\"}\n" +
			"worker:\n  image: " + h + "/team/worker:2 # {\"$rebase\": \"worker\"}\n" +
			"current:\n  image: '" + h + "/current:1@" + cur.String() + "' # {\"$rebase\": \"current\"}\n",
		"clusters/prod/deploy.yml": "apiVersion: apps/v1\r\nkind: Deployment\r\nspec:\r\n  template:\r\n    spec:\r\n      containers:\r\n" +
			"        - name: app\r\n          image: " + h + "/app:1 # {\"$rebase\": \"app\"}\r\n",
		"clusters/prod/broken.yaml": "a:\n  repository: " + h + "/app # {\"$rebase\": \"app:name\"}\n" +
			"b:\n  image: " + h + "/team/worker:2 # {\"$rebase\": \"worker\"}\n",
		"clusters/prod/missing.yaml": "a: " + h + "/app:1 # {\"$rebase\": \"app\"}\nb: " + h + "/nothere:1 # {\"$rebase\": \"gone\"}\n",
		"clusters/prod/gone.yaml":    "b: " + h + "/nothere:2 # {\"$rebase\": \"gone\"}\n",
		"clusters/prod/plain.yaml":   "a: " + h + "/app:1\n",
		"clusters/.git/x.yaml":       "a: " + h + "/app:1 # {\"$rebase\": \"app\"}\n",
		"README.md":                  "image: " + h + "/app:1 # {\"$rebase\": \"app\"}\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "clusters/prod/deploy.yml"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.puts = map[string]int{} // count the runs' writes only
	return reg, c, dir
}

func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func rebaser(t *testing.T, reg *regtest.Registry, dryRun bool) *gitops.Rebaser {
	client := registry.New(registry.Options{Insecure: []string{reg.Host}})
	from, err := client.Parse(reg.Ref("base:1"), "", false)
	if err != nil {
		t.Fatal(err)
	}
	to, err := client.Parse(reg.Ref("base:2"), "", false)
	if err != nil {
		t.Fatal(err)
	}
	return &gitops.Rebaser{Parse: client.Parse, From: from, To: to, DryRun: dryRun}
}

func statuses(rep *gitops.Report, dir string) map[string]string {
	out := map[string]string{}
	for _, f := range rep.Files {
		rel, _ := filepath.Rel(dir, f.Path)
		out[rel] = f.Status
	}
	return out
}

func TestRunRebasesAndPins(t *testing.T) {
	reg, count, dir := setup(t)
	ctx := context.Background()
	snap, tree := reg.Snapshot(t), readTree(t, dir)

	// Dry run: nothing written anywhere; diffs name the digests the real run writes.
	rep, err := gitops.Run(ctx, []string{dir}, gitops.Options{Resolver: rebaser(t, reg, true), DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := reg.Snapshot(t); len(got) != len(snap) || got["app:1"] != snap["app:1"] || got["team/worker:2"] != snap["team/worker:2"] {
		t.Fatalf("dry run wrote to the registry: %v → %v", snap, got)
	}
	if got := readTree(t, dir); len(got) != len(tree) {
		t.Fatalf("dry run left files behind")
	} else {
		for p, c := range tree {
			if got[p] != c {
				t.Fatalf("dry run changed %s", p)
			}
		}
	}
	dry := map[string]string{}
	for _, f := range rep.Files {
		dry[f.Path] = f.Diff
	}

	rep, err = gitops.Run(ctx, []string{dir}, gitops.Options{Resolver: rebaser(t, reg, false)})
	if err != nil {
		t.Fatal(err)
	}
	after := reg.Snapshot(t)
	app, worker, cur := after["app:1"], after["team/worker:2"], after["current:1"]
	if app == snap["app:1"] || worker == snap["team/worker:2"] || cur != snap["current:1"] {
		t.Fatalf("registry: %v → %v", snap, after)
	}
	if n := count.puts["/v2/app/manifests/1"]; n != 1 {
		t.Fatalf("app:1 written %d times; each reference must be rebased once", n)
	}
	want := map[string]string{
		"charts/shop/values.yaml":    gitops.Updated,
		"clusters/prod/deploy.yml":   gitops.Updated,
		"clusters/prod/broken.yaml":  gitops.Failed,
		"clusters/prod/missing.yaml": gitops.Updated,
		// Its only image is missing: nothing could be done.
		"clusters/prod/gone.yaml": gitops.Failed,
	}
	if got := statuses(rep, dir); len(got) != len(want) || rep.Scanned != 6 {
		t.Fatalf("scanned %d, statuses %v", rep.Scanned, got)
	} else {
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("statuses %v, want %v", got, want)
			}
		}
	}
	h := reg.Host
	files := readTree(t, dir)
	wantFiles := map[string]string{
		"charts/shop/values.yaml": "image:\n  repository: " + h + "/app # {\"$rebase\": \"app:name\"}\n" +
			"  tag: \"1@" + app + "\" # {\"$rebase\": \"app:tag\"}\n" +
			"worker:\n  image: " + h + "/team/worker:2@" + worker + " # {\"$rebase\": \"worker\"}\n" +
			"current:\n  image: '" + h + "/current:1@" + cur + "' # {\"$rebase\": \"current\"}\n",
		"clusters/prod/deploy.yml": "apiVersion: apps/v1\r\nkind: Deployment\r\nspec:\r\n  template:\r\n    spec:\r\n      containers:\r\n" +
			"        - name: app\r\n          image: " + h + "/app:1@" + app + " # {\"$rebase\": \"app\"}\r\n",
		"clusters/prod/missing.yaml": "a: " + h + "/app:1@" + app + " # {\"$rebase\": \"app\"}\nb: " + h + "/nothere:1 # {\"$rebase\": \"gone\"}\n",
	}
	for name, content := range tree {
		rel, _ := filepath.Rel(dir, name)
		w, ok := wantFiles[rel]
		if !ok {
			w = content // untouched
		}
		if files[name] != w {
			t.Errorf("%s:\n got %q\nwant %q", rel, files[name], w)
		}
	}
	if len(files) != len(tree) {
		t.Errorf("temporary files left behind: %d files, want %d", len(files), len(tree))
	}
	if info, err := os.Stat(filepath.Join(dir, "clusters/prod/deploy.yml")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("mode not kept: %v %v", info.Mode(), err)
	}
	// The dry run's diff is exactly what the real run wrote.
	for _, f := range rep.Files {
		if f.Status == gitops.Updated && !strings.Contains(dry[f.Path], "\n+") {
			t.Errorf("dry run had no diff for %s", f.Path)
		}
	}
	checkDiffApplies(t, dir, tree, files, dry)

	// Errors: named with file and line; registry errors keep their type.
	err = rep.Err()
	if err == nil {
		t.Fatal("no error for broken.yaml and missing.yaml")
	}
	msg := err.Error()
	for _, w := range []string{
		filepath.Join(dir, "clusters/prod/broken.yaml") + `:2: image "app": name at line 2 has no tag field`,
		filepath.Join(dir, "clusters/prod/missing.yaml") + `:2: image "gone" (` + h + `/nothere:1)`,
	} {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q lacks %q", msg, w)
		}
	}
	var ae *registry.AccessError
	if !errors.As(err, &ae) {
		t.Errorf("registry error lost its type: %v", err)
	}

	// Again: everything is up to date and pinned; no file is written.
	before := map[string]os.FileInfo{}
	for name := range files {
		before[name], _ = os.Stat(name)
	}
	rep, err = gitops.Run(ctx, []string{dir}, gitops.Options{Resolver: rebaser(t, reg, false)})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range rep.Files {
		if f.Status == gitops.Updated {
			t.Errorf("second run rewrote %s", f.Path)
		}
		for _, im := range f.Images {
			if im.Changed || (im.Error == "" && im.Action != string(engine.UpToDate)) {
				t.Errorf("second run: %s %+v", f.Path, im)
			}
		}
	}
	for name := range files {
		info, _ := os.Stat(name)
		if !os.SameFile(info, before[name]) || !info.ModTime().Equal(before[name].ModTime()) {
			t.Errorf("second run touched %s", name)
		}
	}
	if got := reg.Snapshot(t); got["app:1"] != app {
		t.Fatalf("second run moved app:1")
	}
}

// checkDiffApplies applies the dry run's diffs with git apply to a copy of
// the original tree and expects the real run's files.
func checkDiffApplies(t *testing.T, dir string, tree, files, diffs map[string]string) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Log("git not installed: dry-run diffs not applied")
		return
	}
	copyDir := t.TempDir()
	var patch strings.Builder
	for name, content := range tree {
		rel, _ := filepath.Rel(dir, name)
		p := filepath.Join(copyDir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if d := diffs[name]; d != "" {
			patch.WriteString(strings.ReplaceAll(d, "a/"+strings.TrimPrefix(filepath.ToSlash(dir), "/")+"/", "a/"))
		}
	}
	p := strings.ReplaceAll(patch.String(), "b/"+strings.TrimPrefix(filepath.ToSlash(dir), "/")+"/", "b/")
	cmd := exec.Command("git", "apply", "--unsafe-paths", "-")
	cmd.Dir, cmd.Stdin = copyDir, strings.NewReader(p)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git apply: %v\n%s\n%s", err, out, p)
	}
	for name, content := range files {
		rel, _ := filepath.Rel(dir, name)
		got, err := os.ReadFile(filepath.Join(copyDir, rel))
		if err != nil || string(got) != content {
			t.Errorf("%s after git apply differs from the real run", rel)
		}
	}
}

func TestRunPinOnly(t *testing.T) {
	reg, _, dir := setup(t)
	snap := reg.Snapshot(t)
	client := registry.New(registry.Options{Insecure: []string{reg.Host}})
	pinner := &gitops.Pinner{Parse: client.Parse}
	values := filepath.Join(dir, "charts/shop/values.yaml")
	// Named through a symbolic link, which must stay one.
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink(values, link); err != nil {
		t.Fatal(err)
	}
	rep, err := gitops.Run(context.Background(), []string{link}, gitops.Options{Resolver: pinner})
	if err != nil {
		t.Fatal(err)
	}
	if got := reg.Snapshot(t); len(got) != len(snap) || got["app:1"] != snap["app:1"] {
		t.Fatalf("pin-only wrote to the registry")
	}
	b, _ := os.ReadFile(values)
	if !strings.Contains(string(b), `tag: "1@`+snap["app:1"]+`"`) || !strings.Contains(string(b), "/team/worker:2@"+snap["team/worker:2"]+" #") {
		t.Fatalf("values.yaml:\n%s", b)
	}
	if info, err := os.Lstat(link); err != nil || info.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the symbolic link was replaced: %v %v", info.Mode(), err)
	}
	if len(rep.Files) != 1 || rep.Files[0].Status != gitops.Updated || rep.Err() != nil {
		t.Fatalf("report %+v, %v", rep.Files[0], rep.Err())
	}
	for _, im := range rep.Files[0].Images {
		if im.Action != "resolved" || im.After != snap[strings.TrimPrefix(im.Reference, reg.Host+"/")] {
			t.Errorf("image %+v", im)
		}
	}
}

func TestRunMissingPath(t *testing.T) {
	_, err := gitops.Run(context.Background(), []string{filepath.Join(t.TempDir(), "nope")}, gitops.Options{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v", err)
	}
}

// TestRunAutomatic: no bases given; each image moves onto the current image
// of the base its FROM label names.
func TestRunAutomatic(t *testing.T) {
	reg := regtest.Start(t)
	base := func(v string) v1.Image {
		img, err := testimage.Build(nil, testimage.Linux, testimage.Copy("COPY os /etc/os", map[string]string{"etc/os": "patch " + v}), testimage.Env("PATH=/bin"))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	b1 := base("1")
	reg.Push(t, "base:1", b1)
	img, err := testimage.Build(b1, testimage.Linux, testimage.Label("FROM", "base:1"), testimage.Copy("COPY app /app", map[string]string{"app": "app"}), testimage.Cmd("/app"))
	if err != nil {
		t.Fatal(err)
	}
	before := reg.Push(t, "app:1", img)
	reg.Push(t, "base:1", base("2")) // the patched rebuild

	dir := t.TempDir()
	file := filepath.Join(dir, "values.yaml")
	src := "image:\n  repository: " + reg.Host + "/app # {\"$rebase\": \"app:name\"}\n  tag: 1 # {\"$rebase\": \"app:tag\"}\n"
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	client := registry.New(registry.Options{Insecure: []string{reg.Host}})
	rep, err := gitops.Run(context.Background(), []string{dir}, gitops.Options{Resolver: &gitops.Rebaser{Parse: client.Parse}})
	if err != nil || rep.Err() != nil {
		t.Fatal(err, rep.Err())
	}
	after := reg.Snapshot(t)["app:1"]
	im := rep.Files[0].Images[0]
	if after == before.String() || im.Action != string(engine.Rebased) || im.Before != before.String() || im.After != after {
		t.Fatalf("app:1 %s → %s; report %+v", before, after, im)
	}
	b, _ := os.ReadFile(file)
	if want := strings.Replace(src, "tag: 1 #", "tag: 1@"+after+" #", 1); string(b) != want {
		t.Fatalf("got\n%s\nwant\n%s", b, want)
	}
	rep, err = gitops.Run(context.Background(), []string{dir}, gitops.Options{Resolver: &gitops.Rebaser{Parse: client.Parse}})
	if err != nil || rep.Err() != nil || rep.Files[0].Status != gitops.Unchanged || rep.Files[0].Images[0].Action != string(engine.UpToDate) {
		t.Fatalf("second run: %v %v %+v", err, rep.Err(), rep.Files[0].Images[0])
	}
}

// TestRunRefusesLargeFiles: a file over 16 MiB is reported, not read.
func TestRunRefusesLargeFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(path, []byte("a: h/a:1 # {\"$rebase\": \"a\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, gitops.MaxFileSize+1); err != nil {
		t.Fatal(err)
	}
	rep, err := gitops.Run(context.Background(), []string{path}, gitops.Options{Resolver: &gitops.Pinner{}})
	if err != nil {
		t.Fatal(err)
	}
	if f := rep.Files[0]; f.Status != gitops.Failed || len(f.Problems) != 1 || !strings.Contains(f.Problems[0].Msg, "larger than 16 MiB") || rep.Err() == nil {
		t.Fatalf("report %+v", f)
	}
	if err := os.Truncate(path, gitops.MaxFileSize); err != nil {
		t.Fatal(err)
	}
	// At the limit the file is read (and its NUL bytes refused by the parser).
	rep, _ = gitops.Run(context.Background(), []string{path}, gitops.Options{Resolver: &gitops.Pinner{}})
	if f := rep.Files[0]; f.Status != gitops.Failed || strings.Contains(f.Problems[0].Msg, "larger than") {
		t.Fatalf("at the limit: %+v", f)
	}
}
