package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The rebuild-equivalence corpus: every case in testdata/fidelity is a
// Dockerfile built by buildah on base v1 and again on base v2 (or v3); the
// v1 build, rebased to v2 by the binary, must equal the v2 rebuild (config,
// unpacked file tree and history, timestamps aside), or raise the hazard the
// case documents. See docs/config-merge.md.

// fidelityCase is one directory of testdata/fidelity.
type fidelityCase struct {
	name string
	opts buildOpts
	// to is the new base's version: "2" (the same OS release, changed env,
	// labels, workdir, ports, cmd, stop signal...) or "3" (another release).
	to string
	// mid: the Dockerfile is FROM localhost/fidelity-mid, built from the
	// case's mid.Dockerfile; the image is rebased from base:1 under it.
	mid bool
	// warn lists the warning codes the rebase must raise (and that
	// --strict must refuse on).
	warn []string
	// refuse: the rebase itself is refused (exit 4).
	refuse bool
	// differs lists what differs from the rebuild because of the hazard
	// the warning reports ("tree", "config", "history"): the test checks
	// that it does differ, so that the warning is not a false alarm.
	differs []string
}

var fidelityCases = []fidelityCase{
	{name: "env-override-append"},
	{name: "env-refers-base"},
	{name: "cmd-inherited"},
	{name: "entrypoint-resets-cmd"},
	{name: "cmd-entrypoint-own"},
	{name: "workdir-absolute"},
	{name: "workdir-relative", warn: []string{"workdir-moved"}, differs: []string{"tree"}},
	{name: "user"},
	{name: "expose-volume"},
	{name: "labels"},
	{name: "healthcheck-stopsignal"},
	{name: "arg"},
	{name: "run"},
	{name: "run-new-release", to: "3", warn: []string{"run-os-release-changed"}},
	{name: "run-inherited-workdir", warn: []string{"workdir-moved"}, differs: []string{"tree"}},
	{name: "multi-stage"},
	{name: "config-only"},
	{name: "chain", mid: true},
	{name: "per-instruction-layers", opts: buildOpts{layers: true}},
	{name: "squashed", opts: buildOpts{squash: true}, refuse: true},
	{name: "docker-format", opts: buildOpts{format: "docker"}},
	{name: "onbuild-shell"},
	{name: "literal-path"},
}

const fidelityDir = "testdata/fidelity"

// caseFiles reads a case's build context, without its Dockerfiles.
func caseFiles(t *testing.T, dir string, extra map[string]string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(d.Name(), "Dockerfile") {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files[rel] = readFile(t, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range extra {
		files[k] = v
	}
	return files
}

func TestRebuildEquivalence(t *testing.T) {
	need(t, "buildah", "skopeo", "umoci", "docker-registry", "htpasswd")
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("busybox-static is required in CI: %v", err)
		}
		t.Skipf("no /bin/busybox (apt-get install busybox-static): %v", err)
	}
	start := time.Now()
	r := startRegistry(t)

	// Builds go base version by base version: localhost/fidelity-base is
	// retagged to each, so that the Dockerfiles (and the history entries
	// that name their FROM) are the same for the build and the rebuild.
	build := func(c fidelityCase, tag string) {
		dir := filepath.Join(fidelityDir, c.name)
		if c.mid {
			buildImage(t, "fidelity-mid", readFile(t, filepath.Join(dir, "mid.Dockerfile")), caseFiles(t, dir, nil), c.opts)
		}
		buildImage(t, tag, readFile(t, filepath.Join(dir, "Dockerfile")), caseFiles(t, dir, nil), c.opts)
		r.push(t, tag, c.name+":"+strings.TrimPrefix(tag, "fidelity-"+c.name+"-"), c.opts.format)
	}
	for _, v := range []string{"1", "2", "3"} {
		dir := filepath.Join(fidelityDir, "base-"+v)
		buildImage(t, "fidelity-base", readFile(t, filepath.Join(dir, "Dockerfile")), caseFiles(t, dir, map[string]string{"busybox": string(busybox)}), buildOpts{layers: true})
		r.push(t, "fidelity-base", "base:"+v, "oci")
		for _, c := range fidelityCases {
			to := c.to
			if to == "" {
				to = "2"
			}
			if v == "1" {
				build(c, "fidelity-"+c.name+"-v1")
			}
			if v == to {
				build(c, "fidelity-"+c.name+"-rebuild")
			}
		}
	}
	t.Logf("corpus built and pushed in %s", time.Since(start).Round(time.Second))

	for _, c := range fidelityCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			checkFidelity(t, r, c)
		})
	}
}

type fidelityResult struct {
	Action   string
	Warnings []struct{ Code, Message string }
}

func checkFidelity(t *testing.T, r *registryServer, c fidelityCase) {
	to := c.to
	if to == "" {
		to = "2"
	}
	args := []string{r.Host, c.name + ":v1", "--from-base", "base:1", "--to-base", "base:" + to, "-t", "rebased", "-o", "json"}
	if c.refuse {
		code, _, stderr := rebase(t, r.env(), args...)
		if code != 4 || r.exists(t, c.name+":rebased") {
			t.Fatalf("want a refusal (exit 4, nothing written); exit %d: %s", code, stderr)
		}
		t.Logf("refused as documented: %s", strings.TrimSpace(stderr))
		return
	}
	if len(c.warn) > 0 {
		code, out, stderr := rebase(t, r.env(), append(args, "--strict")...)
		res := parseFidelityResult(t, out)
		if code != 4 || res.Action != "refused" || r.exists(t, c.name+":rebased") {
			t.Fatalf("--strict: want exit 4, action refused, nothing written; exit %d, %+v: %s", code, res, stderr)
		}
	}
	code, out, stderr := rebase(t, r.env(), args...)
	if code != 0 {
		t.Fatalf("rebase: exit %d: %s%s", code, out, stderr)
	}
	res := parseFidelityResult(t, out)
	var codes []string
	for _, w := range res.Warnings {
		codes = append(codes, w.Code)
		t.Logf("warning %s: %s", w.Code, w.Message)
	}
	slices.Sort(codes)
	codes = slices.Compact(codes)
	if want := slices.Sorted(slices.Values(c.warn)); !slices.Equal(codes, want) {
		t.Errorf("warnings %v, want %v", codes, want)
	}
	if res.Action != "rebased" {
		t.Fatalf("action %s", res.Action)
	}

	rebased, rebuilt := c.name+":rebased", c.name+":rebuild"
	aspects := map[string]func() (any, any){
		"config": func() (any, any) {
			return normalConfig(t, r.config(t, rebased)), normalConfig(t, r.config(t, rebuilt))
		},
		"history": func() (any, any) {
			return normalHistory(t, r.config(t, rebased)), normalHistory(t, r.config(t, rebuilt))
		},
		"tree": func() (any, any) { return tree(t, r.unpack(t, rebased)), tree(t, r.unpack(t, rebuilt)) },
	}
	for _, name := range []string{"config", "history", "tree"} {
		got, want := aspects[name]()
		same := reflect.DeepEqual(got, want)
		switch {
		case slices.Contains(c.differs, name) && same:
			t.Errorf("%s: the hazard the warning reports should make it differ from the rebuild, but it is equal", name)
		case slices.Contains(c.differs, name):
			t.Logf("%s differs from the rebuild, as the warning says:\n%s", name, diff(got, want))
		case !same:
			t.Errorf("%s differs from the rebuild:\n%s", name, diff(got, want))
		}
	}
}

func parseFidelityResult(t *testing.T, out string) fidelityResult {
	t.Helper()
	var res fidelityResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out)
	}
	return res
}

// exists tells whether repoTag names a manifest in r.
func (r *registryServer) exists(t *testing.T, repoTag string) bool {
	t.Helper()
	cmd := exec.Command("skopeo", "inspect", "--raw", "--cert-dir", r.CertDir, "--creds", r.creds(), "docker://"+r.Host+"/"+repoTag)
	return cmd.Run() == nil
}

// config returns the raw config of repoTag.
func (r *registryServer) config(t *testing.T, repoTag string) string {
	t.Helper()
	return run(t, "skopeo", "inspect", "--config", "--raw", "--cert-dir", r.CertDir, "--creds", r.creds(), "docker://"+r.Host+"/"+repoTag)
}

// normalConfig is the part of a config a rebuild fixes, with null and empty
// lists and objects alike. Left aside: timestamps; the layers' diff_ids
// (compared as the file tree); history (compared on its own); and the
// Docker format's build-container records, which name the container and
// intermediate image that ran the build (container, container_config,
// parent, config.Hostname).
func normalConfig(t *testing.T, raw string) any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"created", "rootfs", "history", "container", "container_config", "parent", "docker_version"} {
		delete(m, k)
	}
	if c, ok := m["config"].(map[string]any); ok {
		delete(c, "Hostname")
		// Variables are a set: builders order them differently (buildah
		// moves a variable set again to the end, Docker keeps its place).
		if env, ok := c["Env"].([]any); ok {
			slices.SortFunc(env, func(a, b any) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
		}
	}
	return dropEmpty(m)
}

func dropEmpty(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			if e = dropEmpty(e); e != nil {
				out[k] = e
			}
		}
		if len(out) == 0 {
			return nil
		}
		return out
	case []any:
		if len(x) == 0 {
			return nil
		}
		for i := range x {
			x[i] = dropEmpty(x[i])
		}
		return x
	}
	return v
}

var intermediateID = regexp.MustCompile(`^FROM [0-9a-f]{12}$`)

// normalHistory is the history without timestamps. buildah --layers records
// "FROM <intermediate image id>" comments; those ids depend on the base by
// construction and are left aside too.
func normalHistory(t *testing.T, raw string) []map[string]any {
	t.Helper()
	var c struct {
		History []map[string]any `json:"history"`
	}
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatal(err)
	}
	for _, h := range c.History {
		delete(h, "created")
		if s, ok := h["comment"].(string); ok && intermediateID.MatchString(s) {
			h["comment"] = "FROM <intermediate image>"
		}
	}
	return c.History
}

// tree describes every file of an unpacked root: type, permissions, and
// content digest or link target (modification times aside).
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		desc := info.Mode().String()
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		case info.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out["/"+filepath.ToSlash(rel)] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// diff renders the difference of two values as JSON lines.
func diff(got, want any) string {
	g, _ := json.MarshalIndent(got, "", " ")
	w, _ := json.MarshalIndent(want, "", " ")
	gl, wl := strings.Split(string(g), "\n"), strings.Split(string(w), "\n")
	var b strings.Builder
	for _, l := range gl {
		if !slices.Contains(wl, l) {
			fmt.Fprintf(&b, "  rebased: %s\n", l)
		}
	}
	for _, l := range wl {
		if !slices.Contains(gl, l) {
			fmt.Fprintf(&b, "  rebuild: %s\n", l)
		}
	}
	if b.Len() == 0 {
		return fmt.Sprintf("  (same lines, another order)\n  rebased: %s\n  rebuild: %s\n", g, w)
	}
	return b.String()
}
