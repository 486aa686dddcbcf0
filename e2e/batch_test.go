package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// TestBatchWithBuildahMixedModes: buildah images moved in one batch, each
// in its own mode (old base given on its line, or found from its label),
// with a broken image in the middle; then the rerun.
func TestBatchWithBuildahMixedModes(t *testing.T) {
	need(t, "buildah", "skopeo", "umoci", "docker-registry")
	r := startRegistry(t)
	buildBases(t, r, "oci")
	buildImage(t, "e2e-batch-given", "FROM localhost/e2e-base-oci-1\nCOPY app.txt /app/app.txt\n",
		map[string]string{"app.txt": "given app"}, buildOpts{})
	r.push(t, "e2e-batch-given", "given:1", "oci")
	buildImage(t, "e2e-batch-label", "FROM localhost/e2e-base-oci-1\nLABEL FROM=base:1\nCOPY app.txt /app/app.txt\n",
		map[string]string{"app.txt": "label app"}, buildOpts{})
	r.push(t, "e2e-batch-label", "label:1", "oci")
	buildImage(t, "e2e-batch-broken", "FROM scratch\nCOPY app.txt /app/app.txt\n",
		map[string]string{"app.txt": "not on the base"}, buildOpts{})
	r.push(t, "e2e-batch-broken", "broken:1", "oci")

	list := writeTemp(t, `# mixed modes
{"image":"given:1","from":"base:1","to":"base:2"}
broken:1
label:1
`)
	code, out, stderr := rebase(t, r.env(), "batch", "-r", r.Host, "-f", list, "--to-base", "base:2", "-o", "json")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (broken:1 failed)\n%s%s", code, out, stderr)
	}
	lines := map[string]map[string]any{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		if img, ok := v["image"].(string); ok {
			lines[img[strings.IndexByte(img, '/')+1:]] = v
		}
	}
	if lines["given:1"]["action"] != "rebased" || lines["label:1"]["action"] != "rebased" {
		t.Fatalf("given:1 and label:1 not both rebased:\n%s", out)
	}
	if lines["broken:1"]["action"] != "failed" || lines["broken:1"]["exitCode"] != float64(4) {
		t.Errorf("broken:1: %v, want failed with exit 4", lines["broken:1"])
	}
	if d, _ := lines["label:1"]["detection"].(map[string]any); d == nil || d["method"] != "label" {
		t.Errorf("label:1 detection %v, want by label", lines["label:1"]["detection"])
	}
	checkRebased(t, r, "given:1", "given app")
	checkRebased(t, r, "label:1", "label app")
	if got := readFile(t, filepath.Join(r.unpack(t, "broken:1"), "app/app.txt")); got != "not on the base" {
		t.Errorf("broken:1 changed: %q", got)
	}

	given, label := r.inspect(t, "given:1"), r.inspect(t, "label:1")
	code, out, _ = rebase(t, r.env(), "batch", "-r", r.Host, "-f", list, "--to-base", "base:2")
	if code != 1 || !strings.Contains(out, "up to date    2") || !strings.Contains(out, "broken:1 (exit 4)") {
		t.Errorf("rerun: exit %d\n%s", code, out)
	}
	if r.inspect(t, "given:1") != given || r.inspect(t, "label:1") != label {
		t.Error("rerun rewrote an up-to-date image")
	}
}
