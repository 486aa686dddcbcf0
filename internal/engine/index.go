package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/basedetect"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/platform"
	"github.com/image-rebase/image-rebase/internal/rebase"
)

// platformWork is one platform of an index being rebased.
type platformWork struct {
	pos  int // position in the index
	desc v1.Descriptor
	name string
	plan *rebase.Plan
	// detection says how the platform's old base was found, in automatic
	// mode.
	detection *basedetect.Decision
	// session is the platform's config upload, opened alongside the
	// configs' reads when the platform is not on NEW yet.
	session BlobUpload
}

// rebaseIndexIn rebases, within a run, each platform image of an index
// onto the matching image of the new base, then writes a new index that
// keeps the original's order, annotations and platform fields. Rounds after
// the indexes: the platform images' manifests (the image's and the bases');
// their configs, with each platform's config upload opened alongside,
// unless the manifests show the platform already on NEW (then no config is
// read: see onBaseByDigest); the blobs and configs; the platform manifests;
// the index; and the tag read back. In a batch, the bases' platform images
// come from the batch's cache.
func rebaseIndexIn(ctx context.Context, req Request, target WritableRepo, img, from, to *doc, r *run) (*Result, error) {
	work, err := indexWork(req, img)
	if err != nil {
		return nil, err
	}
	var cache imageCache
	bases := r.bases()
	err = eachPlatform(work, func(w *platformWork) error {
		// The index says the platform: the bases' images are read
		// alongside the image's, not after it.
		p := *w.desc.Platform
		var app, old, nw *doc
		var aerr, oerr, nerr error
		var inner sync.WaitGroup
		inner.Go(func() {
			app, aerr = cache.getDoc(ctx, req.Image.Repo, w.desc.Digest, fmt.Sprintf("%s [%s]", req.Image, w.name))
		})
		inner.Go(func() { old, oerr = bases.child(ctx, from, p) })
		inner.Go(func() { nw, nerr = bases.child(ctx, to, p) })
		inner.Wait()
		if err := firstError(aerr, oerr, nerr); err != nil {
			return err
		}
		if onBaseByDigest(app.image, nw.image) {
			w.plan = upToDatePlan(app, nw.image)
			return nil
		}
		var serr error
		cerrs := make([]error, 3)
		for j, d := range []*doc{app, old, nw} {
			inner.Go(func() { cerrs[j] = d.config(ctx) })
		}
		if target != nil {
			inner.Go(func() { w.session, serr = target.StartUpload(ctx) })
		}
		inner.Wait()
		if err := firstError(append(cerrs, serr)...); err != nil {
			return err
		}
		var err error
		if w.plan, err = explicitPlan(req, app.image, old.image, nw.image); err != nil {
			return fmt.Errorf("platform %s: %w", w.name, err)
		}
		return nil
	})
	if err != nil {
		cancelSessions(ctx, work)
		return nil, err
	}
	return finishIndex(ctx, req, target, img, rebase.BaseRef{Ref: from.loc.String(), Digest: from.desc.Digest}, to, work, r)
}

// cancelSessions abandons the platforms' config uploads still open.
func cancelSessions(ctx context.Context, work []*platformWork) {
	for _, w := range work {
		if w.session != nil {
			w.session.Cancel(context.WithoutCancel(ctx))
			w.session = nil
		}
	}
}

// indexWork lists the platform images of an index that the request
// rebases, refusing what it cannot do.
func indexWork(req Request, img *doc) ([]*platformWork, error) {
	var work []*platformWork
	var skipped []string
	for i, d := range img.index.Manifests {
		if isAttestation(d) {
			continue
		}
		if d.Platform == nil {
			return nil, &rebase.RefusedError{Reason: fmt.Sprintf("%s: index entry %d (%s) has no platform", req.Image, i+1, d.Digest)}
		}
		name := platform.String(*d.Platform)
		if !selected(req.Platforms, *d.Platform) {
			skipped = append(skipped, name)
			continue
		}
		work = append(work, &platformWork{pos: i, desc: d, name: name})
	}
	if len(work) == 0 {
		return nil, &rebase.RefusedError{Reason: fmt.Sprintf("%s: --platform selects none of its platforms", req.Image)}
	}
	if len(skipped) > 0 && !req.KeepOtherPlatforms {
		return nil, &rebase.RefusedError{Reason: fmt.Sprintf("--platform leaves %s of %s unrebased; pass --keep-other-platforms to keep them unchanged in the new index", strings.Join(skipped, ", "), req.Image)}
	}
	return work, nil
}

// eachPlatform runs plan for every platform concurrently and returns the
// first failure.
func eachPlatform(work []*platformWork, plan func(w *platformWork) error) error {
	errs := make([]error, len(work))
	var wg sync.WaitGroup
	for i, w := range work {
		wg.Go(func() { errs[i] = plan(w) })
	}
	wg.Wait()
	return firstError(errs...)
}

// finishIndex turns the platforms' plans into the result: up to date, a
// dry run, or the new index written. old names the old base for the result.
func finishIndex(ctx context.Context, req Request, target WritableRepo, img *doc, old rebase.BaseRef, to *doc, work []*platformWork, r *run) (*Result, error) {
	res := &Result{Image: req.Image.String(), Target: req.Target.String(), Before: img.desc.Digest, Warnings: []rebase.Warning{}}
	upToDate := true
	for _, w := range work {
		action := UpToDate
		after := w.desc.Digest
		if !w.plan.UpToDate {
			upToDate = false
			action, after = WouldRebase, w.plan.ManifestDescriptor.Digest
		}
		res.Platforms = append(res.Platforms, PlatformResult{Platform: w.name, Action: action, Before: w.desc.Digest, After: after, Plan: w.plan, Detection: w.detection})
		warnings := w.plan.Warnings
		if w.detection != nil {
			warnings = append(slices.Clone(w.detection.Warnings), warnings...)
		}
		for _, wn := range warnings {
			res.Warnings = append(res.Warnings, rebase.Warning{Code: wn.Code, Message: w.name + ": " + wn.Message})
		}
		for _, n := range w.plan.Notes {
			res.Notes = append(res.Notes, rebase.Note{Code: n.Code, Message: w.name + ": " + n.Message})
		}
		res.OldBase, res.NewBase = w.plan.OldBase, w.plan.NewBase
		if res.Detection == nil {
			res.Detection = w.detection
		}
	}
	res.OldBase.Ref, res.NewBase.Ref = old.Ref, to.loc.String()
	res.OldBase.Digest, res.NewBase.Digest = old.Digest, to.desc.Digest
	if upToDate {
		res.Action, res.After = UpToDate, img.desc.Digest
		return res, nil
	}

	raw, desc, warnings, err := newIndex(img, to, work, req.KeepAttestations)
	if err != nil {
		cancelSessions(ctx, work)
		return nil, err
	}
	res.Warnings = append(res.Warnings, warnings...)
	res.After = desc.Digest
	if req.Strict && len(res.Warnings) > 0 {
		cancelSessions(ctx, work)
		res.Action = Refused
		return res, strictRefusal(res.Warnings)
	}
	if req.DryRun {
		res.Action = WouldRebase
		return res, nil
	}
	if up, err := r.targetTaken(req, desc.Digest); up || err != nil {
		if up {
			res.Action = UpToDate
		}
		return res, err
	}
	switch err := writeIndex(ctx, req, target, img, work, desc, raw, res, r); {
	case errors.Is(err, errUpToDate):
		res.Action = UpToDate
		return res, nil
	case err != nil:
		return nil, err
	}
	for i := range res.Platforms {
		if res.Platforms[i].Action == WouldRebase {
			res.Platforms[i].Action = Rebased
		}
	}
	res.Action = Rebased
	return res, nil
}

func selected(filter []v1.Platform, p v1.Platform) bool {
	if len(filter) == 0 {
		return true
	}
	for _, f := range filter {
		if platform.Matches(f, p) {
			return true
		}
	}
	return false
}

// newIndex builds the new index: the original with each rebased platform's
// descriptor replaced (platform and annotations kept), attestations of the
// replaced images dropped or detached, and base annotations moved to the new
// base.
//
// An attestation manifest (BuildKit provenance and SBOM) names the image it
// describes in its vnd.docker.reference.digest annotation. One that
// describes an image the rebase leaves in the index (a platform up to date,
// or kept by --platform) stays as it is. One that describes a replaced
// image, or does not say which, is dropped with a warning; with
// keepAttestations it is kept detached: its descriptor loses the
// vnd.docker.reference.digest annotation, so that the index does not claim
// it describes an image that is no longer there (its statements, which
// cannot change, still name the old image), and a warning says so.
func newIndex(img, to *doc, work []*platformWork, keepAttestations bool) ([]byte, v1.Descriptor, []rebase.Warning, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(img.raw, &top); err != nil {
		return nil, v1.Descriptor{}, nil, fmt.Errorf("%s: decoding index: %w", img.loc, err)
	}
	idx := *img.index
	idx.Manifests = nil
	byPos := map[int]*platformWork{}
	replaced := map[string]bool{}
	for _, w := range work {
		byPos[w.pos] = w
		if !w.plan.UpToDate {
			replaced[w.desc.Digest.String()] = true
		}
	}
	var warnings []rebase.Warning
	for i, d := range img.index.Manifests {
		if w, ok := byPos[i]; ok && !w.plan.UpToDate {
			d.MediaType, d.Digest, d.Size = w.plan.ManifestDescriptor.MediaType, w.plan.ManifestDescriptor.Digest, w.plan.ManifestDescriptor.Size
		}
		if isAttestation(d) {
			ref := d.Annotations[referenceDigest]
			switch {
			case ref != "" && !replaced[ref]:
				// It describes an image that stays in the index.
			case !keepAttestations:
				warnings = append(warnings, rebase.Warning{Code: "attestation-dropped",
					Message: fmt.Sprintf("dropped attestation manifest %s (it describes %s, which the rebase replaces); pass --keep-attestations to keep it, detached", d.Digest, orUnknown(ref))})
				continue
			default:
				if ref != "" {
					d.Annotations = maps.Clone(d.Annotations)
					delete(d.Annotations, referenceDigest)
				}
				warnings = append(warnings, rebase.Warning{Code: "attestation-detached",
					Message: fmt.Sprintf("kept attestation manifest %s detached: it describes %s, which the rebase replaces and which is no longer in the index; its %s annotation is removed so that it names no image of the index (its statements still name the old image)", d.Digest, orUnknown(ref), referenceDigest)})
			}
		}
		idx.Manifests = append(idx.Manifests, d)
	}
	if idx.Annotations[manifest.BaseNameAnnotation] != "" || idx.Annotations[manifest.BaseDigestAnnotation] != "" {
		idx.Annotations = maps.Clone(idx.Annotations)
		idx.Annotations[manifest.BaseNameAnnotation] = to.loc.String()
		idx.Annotations[manifest.BaseDigestAnnotation] = to.desc.Digest.String()
	}
	for _, key := range []string{"manifests", "annotations"} {
		var v any = idx.Manifests
		if key == "annotations" {
			if len(idx.Annotations) == 0 {
				delete(top, key)
				continue
			}
			v = idx.Annotations
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, v1.Descriptor{}, nil, err
		}
		top[key] = b
	}
	raw, err := json.Marshal(top)
	if err != nil {
		return nil, v1.Descriptor{}, nil, err
	}
	h, n, _ := v1.SHA256(bytes.NewReader(raw))
	mt := img.desc.MediaType
	if idx.MediaType != "" {
		mt = idx.MediaType
	}
	return raw, v1.Descriptor{MediaType: mt, Digest: h, Size: n}, warnings, nil
}

// referenceDigest is the annotation by which an attestation manifest of an
// index names the manifest it describes.
const referenceDigest = "vnd.docker.reference.digest"

func orUnknown(s string) string {
	if s == "" {
		return "an image of the index"
	}
	return s
}

// writeIndex writes blobs and configs (through each platform's upload
// session when one is open), then the platform manifests by digest, then
// the index under the target tag: a failure at any point leaves the tag as
// it was.
func writeIndex(ctx context.Context, req Request, target WritableRepo, img *doc, work []*platformWork, desc v1.Descriptor, raw []byte, res *Result, r *run) error {
	var changed []*rebase.Plan
	for _, w := range work {
		if !w.plan.UpToDate {
			changed = append(changed, w.plan)
		}
	}
	// Blobs from every platform, each once, grouped by source repository.
	seen := map[v1.Hash]bool{}
	var groups []blobGroup
	for _, p := range changed {
		for _, g := range missingBlobs(req, p) {
			var blobs []v1.Descriptor
			for _, b := range g.blobs {
				if !seen[b.Digest] {
					seen[b.Digest] = true
					blobs = append(blobs, b)
				}
			}
			if len(blobs) > 0 {
				groups = append(groups, blobGroup{src: g.src, blobs: blobs})
			}
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for _, g := range groups {
		wg.Go(func() {
			t, err := r.transfer(ctx, target, g, req.AllowCopy)
			mu.Lock()
			res.Transferred = res.Transferred.Add(t)
			mu.Unlock()
			if err != nil {
				fail(err)
			}
		})
	}
	for _, w := range work {
		if w.plan.UpToDate {
			continue
		}
		wg.Go(func() {
			s, err := w.session, error(nil)
			w.session = nil
			if s == nil {
				s, err = target.StartUpload(ctx)
			}
			if err == nil {
				err = s.Commit(ctx, w.plan.ConfigDescriptor, w.plan.Config)
			}
			if err != nil {
				fail(err)
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return unchanged(req, errors.Join(errs...))
	}
	// The platform manifests, by digest, with the tag read alongside; then
	// the index moves the tag (see tagGuard.commit).
	guard := newGuard(req, target, r, res.Before, desc.Digest)
	for _, p := range changed {
		wg.Go(func() {
			if err := r.putManifest(ctx, target, "", p.ManifestDescriptor, p.Manifest); err != nil {
				fail(err)
			}
		})
	}
	if guard.check {
		wg.Go(func() { guard.readTag(ctx) })
	}
	wg.Wait()
	if len(errs) > 0 {
		return unchanged(req, errors.Join(errs...))
	}
	upToDate, backupTag, warnings, err := guard.commit(ctx, img.desc, img.raw, func() error {
		return r.putManifest(ctx, target, req.Target.Tag, desc, raw)
	})
	if err != nil {
		return err
	}
	if upToDate {
		return errUpToDate
	}
	res.Warnings = append(res.Warnings, warnings...)
	res.Backup = backupTag
	if req.Target.String() == req.Image.String() && req.Target.Tag != "" {
		d := res.Before
		res.Replaced = &d
	}
	return nil
}

// errUpToDate ends writeIndex when another run wrote the same index meanwhile.
var errUpToDate = errors.New("up to date")
