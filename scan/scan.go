// Package scan finds the images built on a base and tells which are stale.
// The decisions (Identify, Judge) are pure: from documents already read,
// the image's layers against candidate bases, its OCI base annotations, or
// the label that names its base. A Scanner walks a registry for them (the
// catalog, tag lists, manifests, the bases' tags): scan, batch --scan and
// watch share it.
package scan

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/manifest"
	"github.com/image-rebase/image-rebase/rebase"
)

// Candidate is one version of a base that images may start with.
type Candidate struct {
	// Ref names it, e.g. "host/base:1"; Repo is its repository, "host/base".
	Ref, Repo string
	// Digest is its manifest's digest (for an index, the platform image's).
	Digest v1.Hash
	// Layers are its layers, bottom first.
	Layers []v1.Descriptor
}

// Image is what a scan reads of an image.
type Image struct {
	// Ref names the image, e.g. "host/app:1"; Digest is its manifest's.
	Ref    string
	Digest v1.Hash
	// Layers are its layers (an index's: its first platform image's).
	Layers []v1.Descriptor
	// Annotations are its manifest's annotations.
	Annotations map[string]string
	// Label is the value of the label that names its base, when the config
	// was read and has it.
	Label string
}

// Methods of a Finding.
const (
	ByLayers     = "layers"
	ByAnnotation = "annotation"
	ByLabel      = "label"
)

// Origin is where an image says, or its layers show, it comes from.
type Origin struct {
	// Method is ByLayers, ByAnnotation or ByLabel; empty when unknown.
	Method string
	// Name is the base as named: the candidate's Ref, the annotation's
	// base.name, or the label's value (relative to the image's registry).
	Name string
	// Relative is true for a label's value.
	Relative bool
	// Digest is the base's manifest digest when known (a candidate's, or
	// the base.digest annotation's).
	Digest v1.Hash
	// Repo is the candidate's repository (ByLayers only; the caller
	// resolves Name otherwise).
	Repo string
}

// Identify finds an image's base: the longest candidate its layers start
// with, else its base annotations, else its label.
func Identify(img Image, cands []Candidate) Origin {
	var best *Candidate
	for i, c := range cands {
		if len(c.Layers) > 0 && rebase.HasLayerPrefix(img.Layers, c.Layers) && (best == nil || len(c.Layers) > len(best.Layers)) {
			best = &cands[i]
		}
	}
	switch {
	case best != nil:
		return Origin{Method: ByLayers, Name: best.Ref, Digest: best.Digest, Repo: best.Repo}
	case img.Annotations[manifest.BaseNameAnnotation] != "":
		o := Origin{Method: ByAnnotation, Name: img.Annotations[manifest.BaseNameAnnotation]}
		if d, err := v1.NewHash(img.Annotations[manifest.BaseDigestAnnotation]); err == nil {
			o.Digest = d
		}
		return o
	case img.Label != "":
		return Origin{Method: ByLabel, Name: img.Label, Relative: true}
	}
	return Origin{}
}

// Finding is a scan's answer for one image; batch -f reads Image, From
// and To.
type Finding struct {
	Image  string  `json:"image"`
	Digest v1.Hash `json:"digest"`
	// Method says how the base was found; empty when it was not.
	Method string `json:"method,omitempty"`
	// Base names the base the image is on, as found.
	Base string `json:"base,omitempty"`
	// From is that base by digest (repository@digest) when known: what
	// batch rebases from. Empty lets batch find it from the image.
	From string `json:"from,omitempty"`
	// To is the current version of the base.
	To string `json:"to,omitempty"`
	// Stale is true when the image does not start with To's layers.
	Stale  bool   `json:"stale"`
	Reason string `json:"reason,omitempty"`
	// Layers are the image's layers (an index's: its first platform
	// image's), to judge it again when its base moves.
	Layers []v1.Descriptor `json:"-"`
}

// Judge says whether img, which comes from o (in repository repo), is on
// current, the version of its base to be on.
func Judge(img Image, o Origin, repo string, current *Candidate) Finding {
	f := Finding{Image: img.Ref, Digest: img.Digest, Method: o.Method, Base: o.Name, Layers: img.Layers}
	if o.Method == "" {
		f.Reason = "no candidate base's layers start the image, and it names no base (annotations, label)"
		return f
	}
	if o.Digest != (v1.Hash{}) && repo != "" {
		f.From = repo + "@" + o.Digest.String()
	}
	if current == nil {
		f.Reason = "the current version of " + o.Name + " could not be read"
		return f
	}
	f.To = current.Ref
	f.Stale = !rebase.HasLayerPrefix(img.Layers, current.Layers)
	return f
}
