package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/image-rebase/image-rebase/basedetect"
	"github.com/image-rebase/image-rebase/manifest"
	"github.com/image-rebase/image-rebase/platform"
	"github.com/image-rebase/image-rebase/rebase"
)

// Detect configures base detection (package basedetect): how the old base
// is found when Request.From is unset.
type Detect struct {
	// Label is the label that names the base; empty means "FROM", used when
	// the image has it. A label given here must be present.
	Label string
	// Layers, when positive, keeps the image's top Layers history entries
	// and puts Request.To under them.
	Layers int
	// Resolve turns a base reference the image records into a location.
	// relative is true for a label value, which may omit the registry;
	// annotations hold full references.
	Resolve func(ref string, relative bool) (Location, error)
}

// rebaseDetectedIn rebases, within a run, a single-platform image whose
// old base is found from what the image records. Rounds: the image's
// manifest (with NEW's when given: done by the caller); the image's config, which holds the
// label (with NEW's config); the base the image names and the old base by
// digest, manifest then config, with the config upload opened alongside
// when a write is likely; then Apply's two rounds.
func rebaseDetected(ctx context.Context, req Request, target WritableRepo, img, to *doc) (*Result, error) {
	return rebaseDetectedIn(ctx, req, target, img, to, nil)
}

// rebaseDetectedIn is rebaseDetected within a batch run (nil for a single
// rebase): the bases it finds are read once for the batch.
func rebaseDetectedIn(ctx context.Context, req Request, target WritableRepo, img, to *doc, r *run) (*Result, error) {
	if img.kind != manifest.KindImage {
		return nil, &rebase.RefusedError{Reason: fmt.Sprintf("%s is an image index: finding the base of each platform is not supported; pass --from-base OLD", req.Image)}
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Go(func() { errs[0] = img.config(ctx) })
	if to != nil && to.kind == manifest.KindImage {
		wg.Go(func() { errs[1] = to.config(ctx) })
	}
	wg.Wait()
	if err := firstError(errs...); err != nil {
		return nil, err
	}

	det := req.Detect
	resolve := func(ref string, relative bool) (Location, error) {
		if det.Resolve == nil {
			return Location{}, fmt.Errorf("cannot resolve %q: no resolver", ref)
		}
		return det.Resolve(ref, relative)
	}
	choice, err := basedetect.Choose(img.image, basedetect.Options{
		Label: det.Label, Layers: det.Layers, NewGiven: to != nil,
		SameRef: func(label, annotation string) bool {
			l, lerr := resolve(label, true)
			a, aerr := resolve(annotation, false)
			return lerr == nil && aerr == nil && l.String() == a.String()
		},
	})
	if err != nil {
		return nil, err
	}
	newLoc := req.To
	if choice.NewRef != "" {
		if newLoc, err = resolve(choice.NewRef, choice.NewRefRelative); err != nil {
			return nil, &rebase.RefusedError{Reason: fmt.Sprintf("%s: %s", clue(choice), err)}
		}
	}
	var oldLoc Location
	if choice.OldRef != "" {
		if oldLoc, err = resolve(choice.OldRef, false); err != nil {
			return nil, &rebase.RefusedError{Reason: fmt.Sprintf("%s: %s", manifest.BaseDigestAnnotation, err)}
		}
	}

	// The bases, each manifest then config (or index, then the platform's
	// image), concurrently; the config upload opens once NEW's layers show
	// that the image is not on it yet.
	p := platform.OfConfig(img.image.Config)
	cache := r.bases()
	var nw, old *manifest.Image
	var nwErr, oldErr, sessionErr error
	var session BlobUpload
	wg.Go(func() {
		if to == nil {
			if to, nwErr = r.base(ctx, newLoc); nwErr != nil {
				nwErr = fmt.Errorf("%s: %w", clue(choice), nwErr)
				return
			}
		}
		if target != nil && (to.kind != manifest.KindImage || !rebase.HasLayerPrefix(img.image.Manifest.Layers, to.image.Manifest.Layers)) {
			wg.Go(func() { session, sessionErr = target.StartUpload(ctx) })
		}
		nw, nwErr = cache.forPlatform(ctx, to, p)
	})
	if oldLoc.Repo != nil {
		wg.Go(func() {
			d, err := r.base(ctx, oldLoc)
			if err == nil {
				old, err = cache.forPlatform(ctx, d, p)
			}
			oldErr = err
		})
	}
	wg.Wait()
	cancel := func() {
		if session != nil {
			session.Cancel(context.WithoutCancel(ctx))
		}
	}
	// The old base by digest is optional: without it the boundary comes
	// from the image's history, and the reasons say why.
	missing := ""
	switch {
	case errors.Is(oldErr, ErrNotFound):
		missing = "is gone from the registry"
	case oldErr != nil:
		missing = "could not be read (" + oldErr.Error() + ")"
	}
	if err := firstError(nwErr, sessionErr); err != nil {
		cancel()
		return nil, err
	}

	dec, err := choice.Decide(basedetect.Input{Image: img.image, New: nw, Old: old, OldMissing: missing})
	if err != nil {
		cancel()
		return nil, err
	}
	nb, err := rebase.BaseFromImage(nw)
	if err != nil {
		cancel()
		return nil, err
	}
	plan, err := rebase.New(rebase.Input{Image: img.image, Old: dec.Old, New: nb})
	if err != nil {
		cancel()
		return nil, err
	}
	plan.Warnings = append(append([]rebase.Warning{}, dec.Warnings...), plan.Warnings...)
	req.To = newLoc
	res, err := apply(ctx, req, plan, session, r)
	if err != nil || res.Action != Rebased {
		cancel()
	}
	if res != nil {
		res.Detection = dec
	}
	return res, err
}

// clue names what named the new base, for errors.
func clue(c *basedetect.Choice) string {
	switch {
	case c.Method == basedetect.ByLabel && c.Label != nil:
		return fmt.Sprintf("label %s=%s", c.Label.Name, c.Label.Value)
	case c.Method == basedetect.ByAnnotation && c.Annotation != nil:
		return fmt.Sprintf("annotation %s=%s", manifest.BaseNameAnnotation, c.Annotation.Name)
	}
	return "--to-base"
}
