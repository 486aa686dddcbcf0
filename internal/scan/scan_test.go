package scan

import (
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/manifest"
)

func layers(names ...string) []v1.Descriptor {
	var out []v1.Descriptor
	for _, n := range names {
		out = append(out, v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: n}})
	}
	return out
}

func TestIdentifyAndJudge(t *testing.T) {
	b1 := Candidate{Ref: "r/base:1", Repo: "r/base", Digest: v1.Hash{Algorithm: "sha256", Hex: "b1"}, Layers: layers("os1")}
	b1dev := Candidate{Ref: "r/base:1-dev", Repo: "r/base", Digest: v1.Hash{Algorithm: "sha256", Hex: "b1d"}, Layers: layers("os1", "dev")}
	b2 := Candidate{Ref: "r/base:2", Repo: "r/base", Digest: v1.Hash{Algorithm: "sha256", Hex: "b2"}, Layers: layers("os2")}
	cands := []Candidate{b1, b1dev, b2}
	annotated := map[string]string{manifest.BaseNameAnnotation: "r/other:3", manifest.BaseDigestAnnotation: "sha256:0000000000000000000000000000000000000000000000000000000000000001"}
	for _, tc := range []struct {
		name      string
		img       Image
		method    string
		base      string
		stale     bool
		fromKnown bool
	}{
		{"longest layer prefix wins", Image{Layers: layers("os1", "dev", "app")}, ByLayers, "r/base:1-dev", true, true},
		{"on the current base", Image{Layers: layers("os2", "app")}, ByLayers, "r/base:2", false, true},
		{"layers before annotations", Image{Layers: layers("os1", "app"), Annotations: annotated}, ByLayers, "r/base:1", true, true},
		{"annotations before the label", Image{Layers: layers("x"), Annotations: annotated, Label: "base:1"}, ByAnnotation, "r/other:3", true, false},
		{"label last", Image{Layers: layers("x"), Label: "base:1"}, ByLabel, "base:1", true, false},
		{"nothing", Image{Layers: layers("x")}, "", "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Identify(tc.img, cands)
			if o.Method != tc.method || o.Name != tc.base {
				t.Fatalf("Identify = %+v, want %s by %s", o, tc.base, tc.method)
			}
			repo := o.Repo
			if repo == "" && o.Method == ByAnnotation {
				repo = "r/other"
			}
			var cur *Candidate
			if o.Method != "" {
				cur = &b2
			}
			f := Judge(tc.img, o, repo, cur)
			if f.Stale != tc.stale {
				t.Errorf("Stale = %v, want %v (%+v)", f.Stale, tc.stale, f)
			}
			if tc.method == ByAnnotation && f.From != "r/other@sha256:0000000000000000000000000000000000000000000000000000000000000001" {
				t.Errorf("From = %q, want the annotation's digest", f.From)
			}
			if tc.method == ByLayers && f.From != o.Repo+"@"+o.Digest.String() {
				t.Errorf("From = %q", f.From)
			}
			if tc.method == "" && f.Reason == "" {
				t.Error("no reason for an unknown base")
			}
		})
	}
}

// diffIDs names the content of layers: "os1z" is os1 recompressed.
func diffIDs(names ...string) []v1.Hash {
	var out []v1.Hash
	for _, n := range names {
		n = strings.TrimSuffix(n, "z")
		out = append(out, v1.Hash{Algorithm: "sha256", Hex: "content-" + n})
	}
	return out
}

func cand(ref string, names ...string) Candidate {
	return Candidate{Ref: ref, Repo: "r/base", Digest: v1.Hash{Algorithm: "sha256", Hex: ref}, Layers: layers(names...), DiffIDs: diffIDs(names...)}
}

// TestMatchByContent: an image starts with a candidate when its diff_ids
// do, whatever the blobs; its config is asked for only when the blobs leave
// it open.
func TestMatchByContent(t *testing.T) {
	b1, b1dev, b2, b1patched := cand("r/base:1", "os1"), cand("r/base:1-dev", "os1", "dev"), cand("r/base:2", "os2"), cand("r/base:1.1", "os1", "patch")
	blobOnly := Candidate{Ref: "r/old:1", Repo: "r/old", Layers: layers("os1")}
	for _, tc := range []struct {
		name        string
		layers      []string
		cands       []Candidate
		current     Candidate
		needsConfig bool   // to identify
		base        string // found with the config
		needsJudge  bool   // config needed to judge against current, once identified without it
		stale       bool
	}{
		{name: "recompressed copy of base:1: only the config tells", layers: []string{"os1z", "app"}, cands: []Candidate{b1, b2}, current: b2,
			needsConfig: true, base: "r/base:1", stale: true},
		{name: "on base:2 recompressed: up to date", layers: []string{"os2z", "app"}, cands: []Candidate{b1, b2}, current: b2,
			needsConfig: true, base: "r/base:2", stale: false},
		{name: "base:1's blobs: the manifests tell", layers: []string{"os1", "app"}, cands: []Candidate{b1, b2}, current: b2,
			base: "r/base:1", stale: true},
		{name: "a longer candidate is left open by the app's blob", layers: []string{"os1", "app"}, cands: []Candidate{b1, b1dev, b2}, current: b2,
			needsConfig: true, base: "r/base:1", stale: true},
		{name: "the longer candidate's layer recompressed", layers: []string{"os1", "devz", "app"}, cands: []Candidate{b1, b1dev, b2}, current: b2,
			needsConfig: true, base: "r/base:1-dev", stale: true},
		{name: "current extends the image's base: the config tells", layers: []string{"os1", "app"}, cands: []Candidate{b1}, current: b1patched,
			base: "r/base:1", needsJudge: true, stale: true},
		{name: "a candidate without diff_ids matches by blob only", layers: []string{"os1z", "app"}, cands: []Candidate{blobOnly}, current: b2,
			base: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := Image{Ref: "r/app:1", Layers: layers(tc.layers...)}
			if got := NeedsConfig(img, tc.cands); got != tc.needsConfig {
				t.Errorf("NeedsConfig = %v, want %v", got, tc.needsConfig)
			}
			if !tc.needsConfig {
				o := Identify(img, tc.cands)
				if o.Name != tc.base {
					t.Fatalf("without the config: base %q, want %q", o.Name, tc.base)
				}
				if got := NeedsConfigToJudge(img, o, &tc.current); got != tc.needsJudge {
					t.Errorf("NeedsConfigToJudge = %v, want %v", got, tc.needsJudge)
				}
				if f := Judge(img, o, "r/base", &tc.current); !tc.needsJudge && o.Method != "" && f.Stale != tc.stale {
					t.Errorf("without the config: stale %v, want %v", f.Stale, tc.stale)
				}
			}
			img.DiffIDs = diffIDs(tc.layers...)
			if NeedsConfig(img, tc.cands) {
				t.Error("NeedsConfig with the config read")
			}
			o := Identify(img, tc.cands)
			if o.Name != tc.base {
				t.Fatalf("base %q, want %q", o.Name, tc.base)
			}
			if o.Method == "" {
				return
			}
			if NeedsConfigToJudge(img, o, &tc.current) {
				t.Error("NeedsConfigToJudge with the config read")
			}
			if f := Judge(img, o, "r/base", &tc.current); f.Stale != tc.stale {
				t.Errorf("stale %v, want %v", f.Stale, tc.stale)
			}
		})
	}
}

// TestFindingStartsWith: a finding judged again against a new version of
// its base (the watcher, after the base moved), by content.
func TestFindingStartsWith(t *testing.T) {
	b2, b3 := cand("r/base:2", "os2"), cand("r/base:3", "os3")
	for _, tc := range []struct {
		name   string
		layers []string
		config bool
		c      Candidate
		starts bool
	}{
		{"the same blobs", []string{"os2", "app"}, false, b2, true},
		{"another version", []string{"os2", "app"}, false, b3, false},
		{"recompressed, the config read", []string{"os2z", "app"}, true, b2, true},
		{"recompressed, the config not read: taken as not on it", []string{"os2z", "app"}, false, b2, false},
		{"shorter than the base", []string{}, true, b2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := Image{Ref: "r/app:1", Layers: layers(tc.layers...)}
			if tc.config {
				img.DiffIDs = diffIDs(tc.layers...)
			}
			f := Judge(img, Origin{Method: ByLabel, Name: "base:2"}, "r/base", &b2)
			if got := f.StartsWith(tc.c); got != tc.starts {
				t.Errorf("StartsWith(%s) = %v, want %v", tc.c.Ref, got, tc.starts)
			}
		})
	}
}
