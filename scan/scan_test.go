package scan

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/manifest"
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
