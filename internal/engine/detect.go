package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/basedetect"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/platform"
	"github.com/image-rebase/image-rebase/internal/rebase"
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
	if img.kind == manifest.KindIndex {
		return rebaseDetectedIndex(ctx, req, target, img, to, r)
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

	resolve := req.Detect.resolve
	choice, err := basedetect.Choose(img.image, req.Detect.options(to != nil, nil))
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
	if err := firstError(nwErr, sessionErr); err != nil {
		cancel()
		return nil, err
	}
	dec, plan, err := planDetected(ctx, req, choice, img.image, p, nw, old, oldErr, newLoc, r)
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

// searchOldBase looks for img's old base among the tags of the repository
// that choice names, for platform p. It returns the image found (nil if
// none) and a sentence that says where it was found or looked for.
func searchOldBase(ctx context.Context, choice *basedetect.Choice, img *manifest.Image, p v1.Platform, resolve func(string, bool) (Location, error), r *run) (*manifest.Image, string, error) {
	ref, relative := choice.BaseName()
	if ref == "" {
		return nil, "", nil
	}
	loc, err := resolve(ref, relative)
	if err != nil {
		return nil, "", nil
	}
	layers := choice.OldLayers(img)
	m, err := oldBaseByTags(ctx, loc.Repo, loc.Tag, img, p, layers, r)
	if err != nil {
		// The search only helps: a repository whose tags cannot be listed
		// (a local name such as buildah's localhost/base, no access) leaves
		// the old base to the image's own records.
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		return nil, fmt.Sprintf("the tags of %s could not be listed to look for the old base (%s)", loc.Repo.Name(), registryError(err)), nil
	}
	// A match shorter than the label's boundary means the label is not the
	// first instruction after FROM: Decide says so.
	more := ""
	if m.truncated {
		more = fmt.Sprintf(" (the last %d of its tags, in sorted order)", m.searched)
	}
	if m.img == nil {
		if !m.listed {
			return nil, "", nil
		}
		return nil, fmt.Sprintf("no tag of %s holds the old base (%d other tags read%s)", loc.Repo.Name(), m.searched, more), nil
	}
	return m.img, fmt.Sprintf("the old base was found among the tags of %s: %s (%s), whose layers are the image's bottom %d%s",
		loc.Repo.Name(), strings.Join(m.tags, ", "), m.img.Descriptor.Digest, len(m.img.Manifest.Layers), more), nil
}

// resolve turns a base reference the image records into a location.
func (det Detect) resolve(ref string, relative bool) (Location, error) {
	if det.Resolve == nil {
		return Location{}, fmt.Errorf("cannot resolve %q: no resolver", ref)
	}
	return det.Resolve(ref, relative)
}

// options are the detection options; index holds the annotations of the
// index that lists the image, if any.
func (det Detect) options(newGiven bool, index map[string]string) basedetect.Options {
	return basedetect.Options{
		Label: det.Label, Layers: det.Layers, NewGiven: newGiven, IndexAnnotations: index,
		SameRef: func(label, annotation string) bool {
			l, lerr := det.resolve(label, true)
			a, aerr := det.resolve(annotation, false)
			return lerr == nil && aerr == nil && l.String() == a.String()
		},
	}
}

// rebaseDetectedIndex rebases an index whose old base is found from what
// each platform image records. Every platform must name the same base (one
// tag of a multi-platform base); each platform's boundary and old base are
// then found as for a single image. Rounds: the platform images' manifests
// and configs; the new base (and the old one by digest); its platform
// images; then the index's writes.
func rebaseDetectedIndex(ctx context.Context, req Request, target WritableRepo, img, to *doc, r *run) (*Result, error) {
	work, err := indexWork(req, img)
	if err != nil {
		return nil, err
	}
	var cache imageCache
	apps := make(map[*platformWork]*manifest.Image, len(work))
	var mu sync.Mutex
	err = eachPlatform(work, func(w *platformWork) error {
		app, err := cache.get(ctx, req.Image.Repo, w.desc.Digest, fmt.Sprintf("%s [%s]", req.Image, w.name))
		mu.Lock()
		apps[w] = app
		mu.Unlock()
		return err
	})
	if err != nil {
		return nil, err
	}

	// One base for all platforms.
	resolve := req.Detect.resolve
	choices := make(map[*platformWork]*basedetect.Choice, len(work))
	var first *basedetect.Choice
	var firstName, firstBase string
	for _, w := range work {
		c, err := basedetect.Choose(apps[w], req.Detect.options(to != nil, img.index.Annotations))
		if err != nil {
			return nil, fmt.Errorf("platform %s: %w", w.name, err)
		}
		choices[w] = c
		base := c.NewRef
		if ref, rel := c.BaseName(); ref != "" {
			if loc, err := resolve(ref, rel); err == nil {
				base = loc.String()
			} else {
				base = ref
			}
		}
		if first == nil {
			first, firstName, firstBase = c, w.name, base
			continue
		}
		if c.Method != first.Method || base != firstBase {
			return nil, &rebase.RefusedError{Reason: fmt.Sprintf("the platforms of %s disagree about their base: %s names %s (%s), %s names %s (%s); rebase them one at a time with --platform, or pass --from-base",
				req.Image, firstName, orNone(firstBase), clue(first), w.name, orNone(base), clue(c))}
		}
	}
	newLoc := req.To
	if first.NewRef != "" {
		if newLoc, err = resolve(first.NewRef, first.NewRefRelative); err != nil {
			return nil, &rebase.RefusedError{Reason: fmt.Sprintf("%s: %s", clue(first), err)}
		}
		if to, err = r.base(ctx, newLoc); err != nil {
			return nil, fmt.Errorf("%s: %w", clue(first), err)
		}
	}

	bases := r.bases()
	err = eachPlatform(work, func(w *platformWork) error {
		app, choice, p := apps[w], choices[w], *w.desc.Platform
		var nw, old *manifest.Image
		var nwErr, oldErr error
		var wg sync.WaitGroup
		wg.Go(func() { nw, nwErr = bases.forPlatform(ctx, to, p) })
		if choice.OldRef != "" {
			wg.Go(func() {
				loc, err := resolve(choice.OldRef, false)
				var d *doc
				if err == nil {
					d, err = r.base(ctx, loc)
				}
				if err == nil {
					old, err = bases.forPlatform(ctx, d, p)
				}
				oldErr = err
			})
		}
		wg.Wait()
		if nwErr != nil {
			return fmt.Errorf("platform %s: %w", w.name, nwErr)
		}
		dec, plan, err := planDetected(ctx, req, choice, app, p, nw, old, oldErr, newLoc, r)
		if err != nil {
			return fmt.Errorf("platform %s: %w", w.name, err)
		}
		w.plan = plan
		w.detection = dec
		return nil
	})
	if err != nil {
		return nil, err
	}
	req.To = newLoc
	return finishIndex(ctx, req, target, img, work[0].plan.OldBase, to, work, r)
}

func orNone(s string) string {
	if s == "" {
		return "no base"
	}
	return s
}

// detectedLabel is baseLabel in automatic mode: the label that decided
// names the old base only when the user named the new one (--to-base);
// otherwise it names the tag the image is rebased onto, and stays.
func detectedLabel(req Request, choice *basedetect.Choice, img *manifest.Image) (label, relabel string, warning *rebase.Warning) {
	if choice.Label == nil {
		return "", "", nil
	}
	if choice.Method != basedetect.ByLabel || choice.NewRef != "" {
		return choice.Label.Name, "", nil
	}
	named, err := req.Detect.resolve(choice.Label.Value, true)
	if err != nil {
		return choice.Label.Name, "", nil
	}
	return baseLabel(req, img, named)
}

// backwards warns when the base the image names (a label's or
// annotation's tag) now holds an image older than the base the image is on
// (old, found by digest or among the tags): the rebase would move it back,
// as after an explicit rebase that kept the label (--keep-label) or a base
// tag moved back on purpose.
func backwards(choice *basedetect.Choice, old, nw *manifest.Image) *rebase.Warning {
	if old == nil || nw == nil || old.Config == nil || nw.Config == nil || choice.NewRef == "" {
		return nil
	}
	oc, nc := old.Config.Created.Time, nw.Config.Created.Time
	if oc.IsZero() || nc.IsZero() || !nc.Before(oc) {
		return nil
	}
	return &rebase.Warning{Code: "base-older", Message: fmt.Sprintf(
		"%s names %s, whose image %s (created %s) is older than the base the image is on, %s (created %s): the rebase moves it back onto the older base; if the image was moved off it on purpose (an explicit rebase with --keep-label), set the label or pass --from-base/--to-base",
		clue(choice), choice.NewRef, nw.Descriptor.Digest, nc.UTC().Format(time.RFC3339), old.Ref, oc.UTC().Format(time.RFC3339))}
}

// registryError shortens an error for a reason line: its last part.
func registryError(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && i+2 < len(s) {
		return s[i+2:]
	}
	return s
}

// planDetected places the boundary of app (platform p) by choice and plans
// its move onto nw: the old base read by digest (old, or oldErr when that
// read failed), else looked for among the base's tags, else derived from
// the image (basedetect.Choice.Decide); then the label that names the base
// (detectedLabel). The plan's warnings include the label's; the decision's
// are the caller's to report. newLoc names the new base for the result's
// annotations.
func planDetected(ctx context.Context, req Request, choice *basedetect.Choice, app *manifest.Image, p v1.Platform, nw, old *manifest.Image, oldErr error, newLoc Location, r *run) (*basedetect.Decision, *rebase.Plan, error) {
	// The old base by digest is optional: without it the boundary comes
	// from the image's history, and the reasons say why.
	missing := ""
	switch {
	case errors.Is(oldErr, ErrNotFound):
		missing = "is gone from the registry"
	case oldErr != nil:
		missing = "could not be read (" + oldErr.Error() + ")"
	}
	// The tag the image names has moved on and the old base is not known
	// by digest: look for it among the base repository's tags.
	var found string
	if old == nil && !rebase.OnBase(app, nw) {
		var err error
		if old, found, err = searchOldBase(ctx, choice, app, p, req.Detect.resolve, r); err != nil {
			return nil, nil, err
		}
	}
	dec, err := choice.Decide(basedetect.Input{Image: app, New: nw, Old: old, OldMissing: missing, OldFound: found})
	if err != nil {
		return nil, nil, err
	}
	if w := backwards(choice, old, nw); w != nil {
		dec.Warnings = append(dec.Warnings, *w)
	}
	nb, err := rebase.BaseFromImage(nw)
	if err != nil {
		return nil, nil, err
	}
	nb.Name = newLoc.String()
	label, relabel, warning := detectedLabel(req, choice, app)
	plan, err := rebase.New(rebase.Input{Image: app, Old: dec.Old, New: nb, BaseLabel: label, Relabel: relabel})
	if err != nil {
		return nil, nil, err
	}
	if warning != nil && !plan.UpToDate {
		plan.Warnings = append(plan.Warnings, *warning)
	}
	return dec, plan, nil
}
