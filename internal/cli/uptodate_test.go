package cli_test

import (
	"encoding/json"
	"fmt"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/image-rebase/image-rebase/internal/proxytest"
)

// TestUpToDateFromTheManifest: an image whose layers start with NEW's is up
// to date from its manifest alone; no config is read and nothing written.
// What only the configs could show is left as it is, as the README says:
// NEW's tag moved to a new config on the same layers, and a base label that
// still names the old base on an image put on NEW by another tool.
func TestUpToDateFromTheManifest(t *testing.T) {
	reg := startRegistry(t)
	proxy := proxytest.Start(reg.Host)
	defer proxy.Close()
	h := "http://" + proxy.Host()
	b1, b2 := baseVersion(t, "1"), baseVersion(t, "2")
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", b2)
	reg.Push(t, "app:1", app(t, b2, "base:1", false))
	cf, err := b2.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	c.Env = append(c.Env, "ADDED=by a new build of base:2")
	moved, err := mutate.Config(b2, c)
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, "base:2", moved)
	before := fmt.Sprint(reg.Snapshot(t))

	code, out, stderr := run(t, h, "app:1", "--from-base", "base:1", "--to-base", "base:2", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, stderr)
	}
	var res struct {
		Action  string
		Before  v1.Hash
		After   v1.Hash
		NewBase struct{ Ref string }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.Action != "up-to-date" || res.Before != res.After || res.NewBase.Ref != proxy.Host()+"/base:2" {
		t.Errorf("result %+v: want up to date on base:2", res)
	}
	if s := proxy.Stats(); s.Requests != 3 || s.ByClass["manifest"] != 3 {
		t.Errorf("%d requests %v: want the 3 manifests only", s.Requests, s.ByClass)
	}
	if after := fmt.Sprint(reg.Snapshot(t)); after != before {
		t.Errorf("wrote: %s → %s", before, after)
	}
}
