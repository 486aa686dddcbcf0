package basedetect

import (
	"fmt"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/rebase"
)

// Input is what Decide needs besides the Choice.
type Input struct {
	// Image is the application image, with its config.
	Image *manifest.Image
	// New is the new base's image for the application's platform, with its
	// config; NewRef names it as resolved.
	New *manifest.Image
	// Old is the old base fetched by Choice.OldRef, nil when there was none
	// to fetch or it is gone; OldMissing then says why (for the reasons).
	Old        *manifest.Image
	OldMissing string
	// OldFound says how Old was found when not by the annotation's digest
	// (e.g. among the base repository's tags), for the reasons.
	OldFound string
}

// Decision is where the old base ends in the image and how that was found.
type Decision struct {
	// Method is the method that decided.
	Method     Method          `json:"method"`
	Label      *LabelClue      `json:"label,omitempty"`
	Annotation *AnnotationClue `json:"annotation,omitempty"`
	// Entries and Layers are the old base's history entries and layers at
	// the bottom of the image.
	Entries int `json:"baseHistoryEntries"`
	Layers  int `json:"baseLayers"`
	// OldDigest is the old base's manifest digest when its manifest was
	// found (annotation digest); zero when the old base was derived from
	// the image itself. NewRef and NewDigest name the new base.
	OldDigest v1.Hash `json:"oldBaseDigest,omitzero"`
	NewRef    string  `json:"newBase"`
	NewDigest v1.Hash `json:"newBaseDigest"`
	// Reasons explain the decision, one sentence each.
	Reasons  []string  `json:"reasons"`
	Warnings []Warning `json:"warnings"`
	// Old is the old base to hand to rebase.New.
	Old *rebase.Base `json:"-"`
}

// Decide places the boundary between the old base and the application in
// in.Image, by the method c chose.
func (c *Choice) Decide(in Input) (*Decision, error) {
	img := in.Image
	d := &Decision{
		Method: c.Method, Label: c.Label, Annotation: c.Annotation,
		NewRef: in.New.Ref, NewDigest: in.New.Descriptor.Digest,
		Reasons:  append([]string{}, c.Reasons...),
		Warnings: append([]Warning{}, c.Warnings...),
	}
	hist := img.Config.History
	entries := -1
	switch c.Method {
	case ByCount:
		n := c.Layers
		if n >= len(hist) {
			return nil, refuse("--layers %d does not fit: %s has %d history entries in all (docker history lists them, empty-layer entries included), so N must be at most %d to leave a base below", n, img.Ref, len(hist), len(hist)-1)
		}
		entries = len(hist) - n
	case ByLabel:
		if c.Label.Entry < 0 && in.Old != nil {
			d.Reasons = append(d.Reasons, fmt.Sprintf("no history entry records LABEL %s: the boundary is where the old base's layers end", c.Label.Name))
			return d.fromOldImage(img, in.Old, in.OldFound)
		}
		if c.Label.Entry >= 0 {
			entries = c.Label.Entry
			d.Reasons = append(d.Reasons, fmt.Sprintf("history entry %d of %d set the label: the %d entries below it are the base's", entries+1, len(hist), entries))
		} else {
			d.Reasons = append(d.Reasons, fmt.Sprintf("no history entry records LABEL %s (set by a tool, or history squashed)", c.Label.Name))
		}
	case ByAnnotation:
		if in.Old != nil {
			return d.fromOldImage(img, in.Old, in.OldFound)
		}
		if c.OldRef != "" {
			d.Reasons = append(d.Reasons, fmt.Sprintf("the old base %s %s", c.OldRef, orText(in.OldMissing, "could not be read")))
		} else {
			d.Reasons = append(d.Reasons, "the annotations give no old base digest")
		}
	}
	// A label no history entry records leaves the boundary to history
	// matching; if that fails, say what the label lacks.
	unrecorded := func(err error) error {
		if c.Method != ByLabel || c.Label.Entry >= 0 {
			return err
		}
		looked := orText(in.OldFound, "no other tag of its repository could be read")
		return refuse("%s: label %s=%s names its base, but no history entry records it (the image was not built from a Dockerfile, or its history was omitted), and %s, so where the base ends in its layers is unknown; pass --from-base OLD (the base it was built on) or --layers N --to-base NEW",
			img.Ref, c.Label.Name, c.Label.Value, looked)
	}
	if err := checkHistory(img); err != nil {
		return nil, unrecorded(err)
	}
	if entries < 0 {
		n, how, err := matchHistory(img, in.New)
		if err != nil {
			return nil, unrecorded(err)
		}
		entries = n
		d.Reasons = append(d.Reasons, how)
	}
	layers := countLayers(hist[:entries])
	if layers == 0 {
		return nil, refuse("%s: the %d history entries below the application's hold no layer: there is no base to replace (a squashed image cannot be rebased)", img.Ref, entries)
	}
	d.Entries, d.Layers = entries, layers
	d.Reasons = append(d.Reasons, fmt.Sprintf("old base: the image's bottom %d layers and %d history entries; the application keeps %d layers and %d entries",
		layers, entries, len(img.Manifest.Layers)-layers, len(hist)-entries))

	// The old base's manifest may still exist (same base named by the
	// annotation): it gives the exact old config.
	if in.Old != nil {
		if len(in.Old.Manifest.Layers) == layers && rebase.OnBase(img, in.Old) {
			return d.fromOldImage(img, in.Old, in.OldFound)
		}
		if c.Method == ByLabel && in.OldFound != "" && len(in.Old.Manifest.Layers) < layers && rebase.OnBase(img, in.Old) {
			// A base tag holds fewer of the image's layers than the label's
			// entry leaves below it: the label came later in the
			// Dockerfile, and what stands between is the application's.
			d.Warnings = append(d.Warnings, Warning{Code: "label-not-first", Message: fmt.Sprintf(
				"label %s=%s was set by history entry %d, after instructions of the application's: the image's bottom %d layers are %s, so the base ends there, not after %d layers; put LABEL %s first after FROM",
				c.Label.Name, c.Label.Value, c.Label.Entry+1, len(in.Old.Manifest.Layers), in.Old.Ref, layers, c.Label.Name)})
			return d.fromOldImage(img, in.Old, in.OldFound)
		}
		d.Warnings = append(d.Warnings, Warning{Code: "base-sources-disagree", Message: fmt.Sprintf(
			"the %s annotation's old base %s has %d layers, but %s puts the boundary after %d; %s decides",
			manifest.BaseDigestAnnotation, in.Old.Descriptor.Digest, len(in.Old.Manifest.Layers), c.Method, layers, c.Method)})
	}
	name := img.Ref
	switch {
	case c.Method == ByLabel:
		name = c.Label.Value
	case c.Method == ByAnnotation:
		name = c.Annotation.Name
	}
	if in.OldFound != "" {
		d.Reasons = append(d.Reasons, in.OldFound)
	}
	if c.Method == ByLabel && c.Label.Entry >= 0 && in.New != nil && len(in.New.Manifest.Layers) != layers {
		// Nothing confirms the label's boundary: if the label is not the
		// first instruction after FROM, application layers sit below it.
		d.Warnings = append(d.Warnings, Warning{Code: "label-boundary-unverified", Message: fmt.Sprintf(
			"the label's history entry puts %d layers in the old base, %s has %d, and no base image confirms the boundary: if LABEL %s is not the first instruction after FROM, application layers would be replaced; check with --dry-run, or pass --layers N",
			layers, in.New.Ref, len(in.New.Manifest.Layers), c.Label.Name)})
	}
	old, note, unknown := derive(img, name+" as built", entries, layers)
	d.Old = old
	d.Reasons = append(d.Reasons, note)
	d.Warnings = append(d.Warnings, unknownHazards(img, in.New, hist[entries:], unknown)...)
	return d, nil
}

// unknownHazards warns about the application's values that may embed the
// old base's, when the old base's value is unknown: an ENV recorded
// expanded (BuildKit writes ENV PATH=/app/bin:$PATH as the value it
// computed) of a variable the new base sets, and a WORKDIR recorded as an
// absolute path that may have been given relative to the old base's.
func unknownHazards(img, nw *manifest.Image, own []v1.History, unknown []string) []Warning {
	expanded := false
	for _, h := range own {
		expanded = expanded || h.Comment == "buildkit.dockerfile.v0"
	}
	if !expanded || nw == nil || nw.Config == nil {
		return nil
	}
	var out []Warning
	app, n := img.Config.Config, nw.Config.Config
	for _, k := range unknown {
		field, name, _ := strings.Cut(k, ":")
		switch field {
		case "Env":
			av, nv := envValue(app.Env, name), envValue(n.Env, name)
			if nv == "" || av == "" || av == nv || strings.Contains(av, nv) {
				continue
			}
			out = append(out, Warning{Code: "old-base-unknown", Message: fmt.Sprintf(
				"ENV %s=%s may contain the old base's value of %s, which is unknown (its manifest was not found): the new base's is %q; the value is kept as recorded",
				name, av, name, nv)})
		case "WorkingDir":
			if n.WorkingDir == "" || n.WorkingDir == "/" || strings.HasPrefix(app.WorkingDir+"/", strings.TrimSuffix(n.WorkingDir, "/")+"/") {
				continue
			}
			out = append(out, Warning{Code: "old-base-unknown", Message: fmt.Sprintf(
				"WORKDIR %s may have been given relative to the old base's working directory, which is unknown (its manifest was not found); the new base's is %s; it is kept as recorded",
				app.WorkingDir, n.WorkingDir)})
		}
	}
	return out
}

func envValue(env []string, name string) string {
	for _, e := range env {
		if k, v, _ := strings.Cut(e, "="); k == name {
			return v
		}
	}
	return ""
}

// fromOldImage takes the old base's own manifest and config. found says
// how old was found, when not by the annotation's digest.
func (d *Decision) fromOldImage(img, old *manifest.Image, found string) (*Decision, error) {
	if err := rebase.CheckOnBase(img, old); err != nil {
		return nil, refuse("%v (the old base its %s annotation names); pass --from-base or --layers", err, manifest.BaseDigestAnnotation)
	}
	if found != "" {
		d.Reasons = append(d.Reasons, found)
	}
	b, err := rebase.BaseFromImage(old)
	if err != nil {
		return nil, err
	}
	d.Old, d.OldDigest, d.Layers = b, old.Descriptor.Digest, len(old.Manifest.Layers)
	d.Entries = countEntries(img.Config.History, d.Layers)
	if h := old.Config.History; len(h) <= len(img.Config.History) && slices.EqualFunc(h, img.Config.History[:len(h)], func(a, b v1.History) bool { return a.CreatedBy == b.CreatedBy }) {
		d.Entries = len(h)
	}
	d.Reasons = append(d.Reasons, fmt.Sprintf("old base %s (%s) still exists: its %d layers are the image's bottom ones, its config is the old side of the merge", old.Ref, old.Descriptor.Digest, d.Layers))
	return d, nil
}

// checkHistory refuses an image whose history does not account for its
// layers: then entries cannot be turned into layers.
func checkHistory(img *manifest.Image) error {
	have, want := countLayers(img.Config.History), len(img.Config.RootFS.DiffIDs)
	if have != want {
		return refuse("%s: its history records %d layers but it has %d (rootfs.diff_ids), so the base cannot be found from it; pass --from-base OLD --to-base NEW", img.Ref, have, want)
	}
	return nil
}

func countLayers(hist []v1.History) int {
	n := 0
	for _, h := range hist {
		if !h.EmptyLayer {
			n++
		}
	}
	return n
}

// countEntries returns the number of entries up to and including the one
// that holds layer number layers (from 1).
func countEntries(hist []v1.History, layers int) int {
	n := 0
	for i, h := range hist {
		if !h.EmptyLayer {
			n++
			if n == layers {
				return i + 1
			}
		}
	}
	return len(hist)
}

func orText(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// matchHistory finds the boundary by matching the new base's history
// against the bottom of the image's. Only a full match of every entry
// (instruction and comment, ignoring content hashes and build IDs) is
// accepted; anything looser is refused with what to pass instead.
func matchHistory(img, nw *manifest.Image) (int, string, error) {
	h, k := img.Config.History, nw.Config.History
	ask := "pass --from-base OLD (the base it was built on), or --layers N (its own history entries, as docker history lists them)"
	if len(k) == 0 {
		return 0, "", refuse("cannot find the base of %s: %s records no history to match against it; %s", img.Ref, nw.Ref, ask)
	}
	for i, e := range k {
		if e.CreatedBy == "" && e.Comment == "" {
			return 0, "", refuse("cannot find the base of %s: history entry %d of %s is blank, so a match would prove nothing; %s", img.Ref, i+1, nw.Ref, ask)
		}
	}
	if len(k) >= len(h) {
		return 0, "", refuse("cannot find the base of %s by history: %s has %d history entries, the image only %d; %s", img.Ref, nw.Ref, len(k), len(h), ask)
	}
	exact := true
	for i, e := range k {
		if e.CreatedBy == h[i].CreatedBy && e.Comment == h[i].Comment {
			continue
		}
		exact = false
		if normalize(e.CreatedBy) != normalize(h[i].CreatedBy) || normalize(e.Comment) != normalize(h[i].Comment) {
			hint := ""
			if sameShape(k, h[:len(k)]) {
				hint = fmt.Sprintf(" (if %s's %d entries stand where the old base's were, that is --layers %d)", nw.Ref, len(k), len(h)-len(k))
			}
			return 0, "", refuse("cannot find the base of %s by history: entry %d is %q in the image but %q in %s, so the match is ambiguous; %s%s",
				img.Ref, i+1, h[i].CreatedBy, e.CreatedBy, nw.Ref, ask, hint)
		}
	}
	how := "matched exactly"
	if !exact {
		how = "matched ignoring content hashes and build IDs"
	}
	return len(k), fmt.Sprintf("the %d history entries of %s %s the image's first %d (instructions and comments); the next entry, %q, is the application's first",
		len(k), nw.Ref, how, len(k), h[len(k)].CreatedBy), nil
}

// sameShape tells whether two histories have the same instruction in each
// entry, values aside.
func sameShape(a, b []v1.History) bool {
	for i := range a {
		if parseInstruction(a[i].CreatedBy).keyword != parseInstruction(b[i].CreatedBy).keyword || a[i].EmptyLayer != b[i].EmptyLayer {
			return false
		}
	}
	return true
}
