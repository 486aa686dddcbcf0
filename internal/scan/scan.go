// Package scan finds the images built on a base and tells which are stale.
// The decisions (Identify, Judge, NeedsConfig) are pure: from documents
// already read, the image's layers against candidate bases, its OCI base
// annotations, or the label that names its base. A Scanner walks a registry
// for them (the catalog, tag lists, manifests, configs when needed, the
// bases' tags): scan, batch --scan and watch share it.
//
// An image starts with a base when the base's diff_ids are its bottom
// diff_ids (the content, whatever the compression). The manifests alone
// often tell: a blob of the image that is a candidate's blob has that
// candidate's diff_id. When they cannot (a blob no candidate has, where a
// candidate has a layer), NeedsConfig says that the image's config must be
// read.
package scan

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/manifest"
)

// Candidate is one version of a base that images may start with.
type Candidate struct {
	// Ref names it, e.g. "host/base:1"; Repo is its repository, "host/base".
	Ref, Repo string
	// Digest is its manifest's digest (for an index, the platform image's).
	Digest v1.Hash
	// Layers are its layers, bottom first.
	Layers []v1.Descriptor
	// DiffIDs are its config's rootfs.diff_ids; without them (config not
	// read) it is matched by blob digest only.
	DiffIDs []v1.Hash
}

// Image is what a scan reads of an image.
type Image struct {
	// Ref names the image, e.g. "host/app:1"; Digest is its manifest's.
	Ref    string
	Digest v1.Hash
	// Layers are its layers (an index's: its first platform image's).
	Layers []v1.Descriptor
	// DiffIDs are its config's rootfs.diff_ids, once the config is read.
	DiffIDs []v1.Hash
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

	// base is the candidate found by layers: what it tells of the image's
	// bottom diff_ids.
	base *Candidate
}

// match is whether an image starts with a candidate.
type match int

const (
	no match = iota
	yes
	unknown // the image's diff_ids are needed to tell
)

// learn maps the blob digests of cands to their diff_ids: the same blob is
// the same content.
func learn(cands ...Candidate) map[v1.Hash]v1.Hash {
	m := map[v1.Hash]v1.Hash{}
	for _, c := range cands {
		if len(c.DiffIDs) == len(c.Layers) {
			for i, l := range c.Layers {
				m[l.Digest] = c.DiffIDs[i]
			}
		}
	}
	return m
}

// starts tells whether img starts with c's layers by content, with what is
// known of img's diff_ids: its config's, or learned from candidates' blobs.
func starts(img Image, c Candidate, learned map[v1.Hash]v1.Hash) match {
	if len(c.Layers) == 0 || len(c.Layers) > len(img.Layers) {
		return no
	}
	byContent := len(c.DiffIDs) == len(c.Layers)
	res := yes
	for i, l := range c.Layers {
		if img.Layers[i].Digest == l.Digest {
			continue
		}
		if !byContent {
			return no
		}
		var d v1.Hash
		ok := len(img.DiffIDs) == len(img.Layers)
		if ok {
			d = img.DiffIDs[i]
		} else {
			d, ok = learned[img.Layers[i].Digest]
		}
		switch {
		case !ok:
			res = unknown
		case d != c.DiffIDs[i]:
			return no
		}
	}
	return res
}

// NeedsConfig tells whether the image's config must be read (for its
// diff_ids) to find the longest of cands it starts with: the blobs leave it
// open.
func NeedsConfig(img Image, cands []Candidate) bool {
	if len(img.DiffIDs) == len(img.Layers) {
		return false
	}
	learned := learn(cands...)
	longest := 0
	for _, c := range cands {
		if starts(img, c, learned) == yes {
			longest = max(longest, len(c.Layers))
		}
	}
	for _, c := range cands {
		if len(c.Layers) > longest && starts(img, c, learned) == unknown {
			return true
		}
	}
	return false
}

// NeedsConfigToJudge tells whether the image's config must be read for
// Judge to tell whether img, which comes from o, starts with current.
func NeedsConfigToJudge(img Image, o Origin, current *Candidate) bool {
	if o.Method == "" || current == nil || len(img.DiffIDs) == len(img.Layers) {
		return false
	}
	return starts(img, *current, o.learned(current)) == unknown
}

// learned is what the candidate o was found by and current tell of blobs.
func (o Origin) learned(current *Candidate) map[v1.Hash]v1.Hash {
	known := []Candidate{*current}
	if o.base != nil {
		known = append(known, *o.base)
	}
	return learn(known...)
}

// Identify finds an image's base: the longest candidate its layers start
// with (by content: see NeedsConfig), else its base annotations, else its
// label.
func Identify(img Image, cands []Candidate) Origin {
	var best *Candidate
	learned := learn(cands...)
	for i, c := range cands {
		if (best == nil || len(c.Layers) > len(best.Layers)) && starts(img, c, learned) == yes {
			best = &cands[i]
		}
	}
	switch {
	case best != nil:
		return Origin{Method: ByLayers, Name: best.Ref, Digest: best.Digest, Repo: best.Repo, base: best}
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
	// Stale is true when the image does not start with To's layers (by
	// content).
	Stale  bool   `json:"stale"`
	Reason string `json:"reason,omitempty"`
	// Layers and DiffIDs are what was read of the image (an index's: its
	// first platform image's; DiffIDs only when its config was read), to
	// judge it again when its base moves (StartsWith).
	Layers  []v1.Descriptor `json:"-"`
	DiffIDs []v1.Hash       `json:"-"`
}

// Judge says whether img, which comes from o (in repository repo), is on
// current, the version of its base to be on.
func Judge(img Image, o Origin, repo string, current *Candidate) Finding {
	f := Finding{Image: img.Ref, Digest: img.Digest, Method: o.Method, Base: o.Name, Layers: img.Layers, DiffIDs: img.DiffIDs}
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
	// Left open (NeedsConfigToJudge; the caller reads the config), the
	// image is taken as stale: batch's rebase, which reads the config, then
	// tells.
	f.Stale = starts(img, *current, o.learned(current)) != yes
	return f
}

// StartsWith reports whether the image of f starts with c by content, as
// far as what was read of both tells; an image whose config would be needed
// to tell is taken as not starting with c (a rebase then tells).
func (f Finding) StartsWith(c Candidate) bool {
	return starts(Image{Layers: f.Layers, DiffIDs: f.DiffIDs}, c, learn(c)) == yes
}
