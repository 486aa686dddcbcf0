package locate

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/platform"
)

// Spec states one rebase as users write it: references as strings, in any
// form Parse accepts, and the options. Resolver.Request turns it into an
// engine.Request. The command line and the library API both build one.
type Spec struct {
	// Image is the image to rebase.
	Image string
	// From is the old base; empty to find it from the image (Label,
	// Layers, the base annotations, or To's history).
	From string
	// To is the new base; empty in automatic mode, to rebase onto the
	// current image of the base the image names.
	To string
	// Target is where the result goes: empty for Image itself, a bare tag
	// ("1-rebased") for that tag of Image's repository, else a reference.
	Target string
	// Label names the label that names the base (default FROM).
	Label string
	// Layers, when positive, keeps the image's top Layers history entries
	// and puts To under them.
	Layers int
	// BackupTag is the tag, "{tag}" standing for Image's tag, that keeps
	// the image the target tag named before it moved.
	BackupTag string
	// Platforms limits an index rebase to these platforms (os/arch[/variant]).
	Platforms []string

	DryRun, Strict, Force, AllowCopy                                 bool
	KeepOtherPlatforms, KeepAttestations, KeepLabel, CheckSignatures bool
}

// SpecError is a Spec that cannot become a request: a malformed reference
// or a bad combination of options. Nothing was contacted.
type SpecError struct {
	// Field is the Spec field at fault: Image, From, To, Target, Label,
	// Layers, BackupTag or Platforms.
	Field string
	Err   error
}

// Error names the field.
func (e *SpecError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *SpecError) Unwrap() error { return e.Err }

func specErr(field string, format string, args ...any) error {
	return &SpecError{Field: field, Err: fmt.Errorf(format, args...)}
}

// check refuses the combinations of the options that choose how the old
// base is found that make no sense.
func (s Spec) check() error {
	switch {
	case s.Layers < 0:
		return specErr("Layers", "%d: must be at least 1 (or 0: not counted)", s.Layers)
	case s.From != "" && s.Layers > 0:
		return specErr("Layers", "goes without From: From names the old base, Layers counts the image's own history entries")
	case s.From != "" && s.Label != "":
		return specErr("Label", "goes without From: From names the old base, Label finds it from a label")
	case s.Layers > 0 && s.Label != "":
		return specErr("Label", "goes without Layers")
	case s.Layers > 0 && s.To == "":
		return specErr("Layers", "needs To, the base to put under the image's top %d history entries", s.Layers)
	case s.From != "" && s.To == "":
		return specErr("From", "needs To, the new base")
	}
	return nil
}

// Request parses every reference of s before any request is made, so that
// a malformed one fails without touching a registry. Its errors are
// *SpecError.
func (r *Resolver) Request(s Spec) (engine.Request, error) {
	var req engine.Request
	if err := s.check(); err != nil {
		return req, err
	}
	write := !s.DryRun
	parse := func(field, ref string, write bool) (engine.Location, error) {
		loc, err := r.Parse(ref, write)
		if err != nil {
			return loc, &SpecError{Field: field, Err: err}
		}
		return loc, nil
	}
	var err error
	if req.Image, err = parse("Image", s.Image, write && s.Target == ""); err != nil {
		return req, err
	}
	if s.From != "" {
		if req.From, err = parse("From", s.From, false); err != nil {
			return req, err
		}
	}
	if s.To != "" {
		if req.To, err = parse("To", s.To, false); err != nil {
			return req, err
		}
	}
	req.Detect = engine.Detect{Label: s.Label, Layers: s.Layers, Resolve: func(ref string, relative bool) (engine.Location, error) {
		reg := ""
		if relative {
			// A label names the base relative to the default registry,
			// or else to the image's own registry.
			reg = r.DefaultRegistry
			if rg, ok := req.Image.Repo.(interface{ Registry() string }); ok && reg == "" {
				reg = rg.Registry()
			}
		}
		if r.Registry == nil {
			return engine.Location{}, errors.New("no registry access")
		}
		return r.Registry.Parse(ref, reg, false)
	}}
	req.Target = req.Image
	if s.Target != "" {
		target := s.Target
		if BareTag(target) {
			target = WithTag(req.Image, target)
		}
		if req.Target, err = parse("Target", target, write); err != nil {
			return req, err
		}
		if req.Target.Tag == "" {
			return req, specErr("Target", "must name a tag, not a digest")
		}
	}
	req.DryRun, req.Force, req.AllowCopy, req.Strict = s.DryRun, s.Force, s.AllowCopy, s.Strict
	req.KeepOtherPlatforms, req.KeepAttestations = s.KeepOtherPlatforms, s.KeepAttestations
	req.ToName, req.KeepLabel = s.To, s.KeepLabel
	req.CheckSignatures = s.CheckSignatures
	if s.BackupTag != "" {
		if req.Image.Tag == "" {
			return req, specErr("BackupTag", "needs the image named by a tag")
		}
		req.BackupTag = strings.ReplaceAll(s.BackupTag, "{tag}", req.Image.Tag)
		if _, err := name.NewTag("example.com/x:"+req.BackupTag, name.StrictValidation); err != nil || !BareTag(req.BackupTag) {
			return req, specErr("BackupTag", "%q does not make a valid tag (%q)", s.BackupTag, req.BackupTag)
		}
	}
	for _, ps := range s.Platforms {
		p, err := platform.Parse(ps)
		if err != nil {
			return req, &SpecError{Field: "Platforms", Err: err}
		}
		req.Platforms = append(req.Platforms, p)
	}
	return req, nil
}

// BareTag tells a tag ("1.2-rebased") from a reference ("app:1", "host/app").
func BareTag(s string) bool {
	return !strings.ContainsAny(s, "/:@")
}
