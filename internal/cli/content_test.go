package cli_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"

	"github.com/image-rebase/image-rebase/internal/testimage"
)

// withConfigKey pushes img as repoTag with a top-level config key added
// (as BuildKit adds its inline cache).
func withConfigKey(t *testing.T, host, repoTag string, img v1.Image, key, value string) {
	t.Helper()
	raw, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg[key] = value
	raw, _ = json.Marshal(cfg)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil { // the layers
		t.Fatal(err)
	}
	cl := static.NewLayer(raw, m.Config.MediaType)
	if err := remote.WriteLayer(ref.Context(), cl); err != nil {
		t.Fatal(err)
	}
	m = m.DeepCopy()
	m.Config.Digest, _ = cl.Digest()
	m.Config.Size = int64(len(raw))
	rawM, _ := json.Marshal(m)
	if err := remote.Put(ref, rawManifest(rawM)); err != nil {
		t.Fatal(err)
	}
}

// TestJSONNotesOfContentMatchAndDroppedCache: -o json carries the notes
// (old base matched by content, BuildKit inline cache dropped), and the
// rebased config has no inline cache.
func TestJSONNotesOfContentMatchAndDroppedCache(t *testing.T) {
	reg := startRegistry(t)
	b1 := image(t, nil, "amd64", "V=1", map[string]string{"os": "one"})
	b1z, err := testimage.Build(nil, testimage.Linux, testimage.Copy("COPY", map[string]string{"os": "one"}).Compressed(testimage.Zstd), testimage.Env("V=1"))
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, "base:1", b1)
	reg.Push(t, "basez:1", b1z)
	reg.Push(t, "base:2", image(t, nil, "amd64", "V=2", map[string]string{"os": "two"}))
	withConfigKey(t, reg.Host, "app:1", image(t, b1, "amd64", "APP=1", map[string]string{"app": "app"}), "moby.buildkit.cache.v0", "W3sibGF5ZXJzIjpbXX1d")

	code, out, stderr := run(t, "http://"+reg.Host, "app:1", "--from-base", "basez:1", "--to-base", "base:2", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var res struct {
		Action string
		Notes  []struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var codes []string
	for _, n := range res.Notes {
		codes = append(codes, n.Code)
	}
	if res.Action != "rebased" || strings.Join(codes, ",") != "matched-by-content,build-metadata-dropped" {
		t.Errorf("action %s, notes %+v", res.Action, res.Notes)
	}
	raw, err := reg.Image(t, "app:1").RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "moby.buildkit.cache.v0") {
		t.Errorf("the rebased config keeps the old build's inline cache: %s", raw)
	}
}
