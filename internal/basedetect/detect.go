// Package basedetect finds an image's base from what the image itself
// records, when the user does not name the old base: a label naming the base
// (LABEL FROM=base:1, set by the Dockerfile right after FROM), the OCI base
// annotations (org.opencontainers.image.base.name and .digest), a count of
// the image's own history entries (--layers N), or the new base's history
// matched against the image's. It is pure: it reads documents already
// fetched and returns decisions with their reasons.
//
// Detection has two steps. Choose reads the image and says which method
// decides and which references must be fetched (the base to rebase onto,
// and the old base by digest when an annotation gives one). Decide takes
// those images and places the boundary between base and application, in
// history entries and in layers, and describes the old base.
//
// Precedence, when several sources are present: --layers N, then the label,
// then the annotations, then history inference. (--from-base, which names the
// old base outright, bypasses detection.) A source that disagrees with the
// one that decides is reported in a warning that names both.
package basedetect

import (
	"fmt"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/rebase"
)

// DefaultLabel is the label that names the base when -l is not given.
const DefaultLabel = "FROM"

// Method says how the base was found.
type Method string

// Methods, in order of precedence.
const (
	// ByCount: --layers N, the image's top N history entries are its own.
	ByCount Method = "layers"
	// ByLabel: a label names the base; the history entry that set it is
	// the first of the application's.
	ByLabel Method = "label"
	// ByAnnotation: org.opencontainers.image.base.name and .digest.
	ByAnnotation Method = "annotation"
	// ByHistory: the new base's history matched against the image's.
	ByHistory Method = "history"
)

// Options are the user's detection settings.
type Options struct {
	// Label is the label naming the base. Empty means DefaultLabel, used
	// when present; a name given by the user (-l) must be present.
	Label string
	// Layers, when positive, keeps the image's top Layers history entries
	// and takes everything below them as the old base (--layers N).
	Layers int
	// NewGiven tells that the user named the new base (--to-base).
	NewGiven bool
	// IndexAnnotations are the annotations of the index that lists the
	// image, if any: base annotations there (BuildKit and buildx can put
	// them on the index only) count when the image's manifest has none.
	IndexAnnotations map[string]string
	// SameRef tells whether two base references (a label value, relative
	// to the registry, and an annotation, a full reference) name the same
	// repository and tag. Nil compares them as written.
	SameRef func(label, annotation string) bool
}

func (o Options) label() string {
	if o.Label == "" {
		return DefaultLabel
	}
	return o.Label
}

// Warning is a hazard found while detecting; it joins the plan's warnings.
type Warning = rebase.Warning

// LabelClue is a base named by a label.
type LabelClue struct {
	// Name and Value are the label's, e.g. FROM and base:1.
	Name  string `json:"name"`
	Value string `json:"value"`
	// Entry is the index (from 0, oldest first) of the history entry that
	// set the label, or -1 when no entry records it.
	Entry int `json:"entry"`
}

// AnnotationClue is a base named by the OCI base annotations.
type AnnotationClue struct {
	// Name is org.opencontainers.image.base.name, a full reference.
	Name string `json:"name"`
	// Digest is org.opencontainers.image.base.digest; zero when absent or
	// malformed.
	Digest v1.Hash `json:"digest,omitzero"`
}

// Choice is the first step's outcome: the method and what to fetch.
type Choice struct {
	Method Method
	// NewRef is the base to resolve now and rebase onto; empty when the
	// user named the new base. NewRefRelative tells a label value
	// (relative to the registry) from a full reference.
	NewRef         string
	NewRefRelative bool
	// OldRef names the old base by digest (repository@digest), to fetch
	// if it still exists; empty when there is none to try.
	OldRef string
	// Label and Annotation are the clues the image carries, nil if none.
	Label      *LabelClue
	Annotation *AnnotationClue
	// Layers is the count of --layers.
	Layers   int
	Reasons  []string
	Warnings []Warning
}

// RefusedError is returned when the base cannot be found as asked.
type RefusedError = rebase.RefusedError

func refuse(format string, args ...any) error {
	return &RefusedError{Reason: fmt.Sprintf(format, args...)}
}

// Choose reads what img records about its base and picks the method by the
// documented precedence. img must have its config.
func Choose(img *manifest.Image, opts Options) (*Choice, error) {
	c := &Choice{Layers: opts.Layers}
	label, err := findLabel(img, opts.label())
	if err != nil {
		return nil, err
	}
	if label == nil && opts.Label != "" {
		return nil, refuse("%s has no label %q (its labels: %s); pass the name of the label that names its base with -l, or --from-base", img.Ref, opts.Label, labelNames(img))
	}
	c.Label = label
	annotations := img.Manifest.Annotations
	if annotations[manifest.BaseNameAnnotation] == "" {
		annotations = opts.IndexAnnotations
	}
	if name := annotations[manifest.BaseNameAnnotation]; name != "" {
		c.Annotation = &AnnotationClue{Name: name}
		if d, err := v1.NewHash(annotations[manifest.BaseDigestAnnotation]); err == nil {
			c.Annotation.Digest = d
		}
	}
	same := opts.SameRef
	if same == nil {
		same = func(a, b string) bool { return a == b }
	}

	switch {
	case opts.Layers > 0:
		if !opts.NewGiven {
			return nil, refuse("--layers needs --to-base: the new base to put under the image's top %d history entries", opts.Layers)
		}
		c.Method = ByCount
		c.Reasons = append(c.Reasons, fmt.Sprintf("--layers %d: the image's top %d history entries are its own, the rest is the old base", opts.Layers, opts.Layers))
	case label != nil:
		c.Method = ByLabel
		c.Reasons = append(c.Reasons, fmt.Sprintf("label %s=%s names the base", label.Name, label.Value))
		if !opts.NewGiven {
			c.NewRef, c.NewRefRelative = label.Value, true
		}
		if a := c.Annotation; a != nil {
			if !same(label.Value, a.Name) {
				c.Warnings = append(c.Warnings, Warning{Code: "base-sources-disagree", Message: fmt.Sprintf(
					"label %s=%s and annotation %s=%s name different bases; the label decides (precedence: --layers, label, annotations, history)",
					label.Name, label.Value, manifest.BaseNameAnnotation, a.Name)})
			} else if a.Digest != (v1.Hash{}) {
				// The same base: its old manifest, if it still exists, gives
				// the old base's real config.
				c.OldRef = RepoOf(a.Name) + "@" + a.Digest.String()
			}
		}
	case c.Annotation != nil:
		c.Method = ByAnnotation
		a := c.Annotation
		c.Reasons = append(c.Reasons, fmt.Sprintf("annotation %s=%s names the base", manifest.BaseNameAnnotation, a.Name))
		if !opts.NewGiven {
			c.NewRef = a.Name
		}
		if a.Digest != (v1.Hash{}) {
			c.OldRef = RepoOf(a.Name) + "@" + a.Digest.String()
		}
	case opts.NewGiven:
		c.Method = ByHistory
		c.Reasons = append(c.Reasons, fmt.Sprintf("%s has no label %s and no base annotations: the new base's history is matched against the image's", img.Ref, opts.label()))
	default:
		return nil, refuse("%s does not record its base (no label %s, no %s annotation); pass --from-base OLD --to-base NEW, --layers N --to-base NEW, --to-base NEW alone (history matching) or -l LABEL", img.Ref, opts.label(), manifest.BaseNameAnnotation)
	}
	return c, nil
}

// RepoOf strips the tag or digest from a reference: "host/base:1" →
// "host/base".
func RepoOf(ref string) string {
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		ref = ref[:i]
	}
	return ref
}

// findLabel returns the label name's value and the last history entry
// that set it (the one that gave the value the image has).
func findLabel(img *manifest.Image, name string) (*LabelClue, error) {
	value, ok := img.Config.Config.Labels[name]
	if !ok {
		return nil, nil
	}
	if strings.TrimSpace(value) == "" {
		return nil, refuse("%s: label %s is empty; it must name the base image", img.Ref, name)
	}
	clue := &LabelClue{Name: name, Value: value, Entry: -1}
	hist := img.Config.History
	for i := len(hist) - 1; i >= 0; i-- {
		in := parseInstruction(hist[i].CreatedBy)
		if in.keyword != "LABEL" {
			continue
		}
		if kv, ok := keyValues(in.args); ok {
			if _, sets := kv[name]; sets {
				clue.Entry = i
				break
			}
		}
	}
	return clue, nil
}

func labelNames(img *manifest.Image) string {
	var names []string
	for k := range img.Config.Config.Labels {
		names = append(names, k)
	}
	if len(names) == 0 {
		return "none"
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// OldLayers is the old base's layer count as the image's history tells it:
// the layers below the history entry that set the label; 0 when the history
// does not tell.
func (c *Choice) OldLayers(img *manifest.Image) int {
	if c.Method != ByLabel || c.Label == nil || c.Label.Entry < 0 {
		return 0
	}
	hist := img.Config.History
	if countLayers(hist) != len(img.Config.RootFS.DiffIDs) {
		return 0
	}
	return countLayers(hist[:c.Label.Entry])
}

// BaseName is the reference that names the base (the label's value, relative
// to the image's registry, or the annotation's), whose repository's tags may
// hold the old base; empty for the other methods.
func (c *Choice) BaseName() (ref string, relative bool) {
	switch {
	case c.Method == ByLabel && c.Label != nil:
		return c.Label.Value, true
	case c.Method == ByAnnotation && c.Annotation != nil:
		return c.Annotation.Name, false
	}
	return "", false
}
