package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/manifest"
	"github.com/image-rebase/image-rebase/platform"
	"github.com/image-rebase/image-rebase/rebase"
)

// platformWork is one platform of an index being rebased.
type platformWork struct {
	pos  int // position in the index
	desc v1.Descriptor
	name string
	plan *rebase.Plan
}

// rebaseIndexIn rebases, within a run, each platform image of an index onto the matching
// image of the new base, then writes a new index that keeps the original's
// order, annotations and platform fields. Rounds: the platform images'
// manifests and configs (each fetched once), then the blobs and configs, the
// platform manifests, and the index last.
// In a batch, the bases' platform images come from the batch's cache.
func rebaseIndexIn(ctx context.Context, req Request, target WritableRepo, img, from, to *doc, r *run) (*Result, error) {
	res := &Result{Image: req.Image.String(), Target: req.Target.String(), Before: img.desc.Digest, Warnings: []rebase.Warning{}}
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

	var cache imageCache
	bases := &cache
	if r.batch() {
		bases = r.bases()
	}
	errs := make([]error, len(work))
	var wg sync.WaitGroup
	for i, w := range work {
		wg.Go(func() {
			// The index says the platform: the bases' images are fetched
			// alongside the image's, not after it.
			p := *w.desc.Platform
			var app, old, nw *manifest.Image
			var aerr, oerr, nerr error
			var inner sync.WaitGroup
			inner.Go(func() {
				app, aerr = cache.get(ctx, req.Image.Repo, w.desc.Digest, fmt.Sprintf("%s [%s]", req.Image, w.name))
			})
			inner.Go(func() { old, oerr = bases.forPlatform(ctx, from, p) })
			inner.Go(func() { nw, nerr = bases.forPlatform(ctx, to, p) })
			inner.Wait()
			if err := firstError(aerr, oerr, nerr); err != nil {
				errs[i] = err
				return
			}
			var err error
			if w.plan, err = Plan(app, old, nw); err != nil {
				errs[i] = fmt.Errorf("platform %s: %w", w.name, err)
			}
		})
	}
	wg.Wait()
	if err := firstError(errs...); err != nil {
		return nil, err
	}

	upToDate := true
	for _, w := range work {
		action := UpToDate
		after := w.desc.Digest
		if !w.plan.UpToDate {
			upToDate = false
			action, after = WouldRebase, w.plan.ManifestDescriptor.Digest
		}
		res.Platforms = append(res.Platforms, PlatformResult{Platform: w.name, Action: action, Before: w.desc.Digest, After: after, Plan: w.plan})
		for _, wn := range w.plan.Warnings {
			res.Warnings = append(res.Warnings, rebase.Warning{Code: wn.Code, Message: w.name + ": " + wn.Message})
		}
		res.OldBase, res.NewBase = w.plan.OldBase, w.plan.NewBase
	}
	res.OldBase.Ref, res.NewBase.Ref = from.loc.String(), to.loc.String()
	res.OldBase.Digest, res.NewBase.Digest = from.desc.Digest, to.desc.Digest
	if upToDate {
		res.Action, res.After = UpToDate, img.desc.Digest
		return res, nil
	}

	raw, desc, warnings, err := newIndex(img, to, work, req.KeepAttestations)
	if err != nil {
		return nil, err
	}
	res.Warnings = append(res.Warnings, warnings...)
	res.After = desc.Digest
	if req.Strict && len(res.Warnings) > 0 {
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
// descriptor replaced (platform and annotations kept), attestations dropped
// unless kept, and base annotations moved to the new base.
func newIndex(img, to *doc, work []*platformWork, keepAttestations bool) ([]byte, v1.Descriptor, []rebase.Warning, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(img.raw, &top); err != nil {
		return nil, v1.Descriptor{}, nil, fmt.Errorf("%s: decoding index: %w", img.loc, err)
	}
	idx := *img.index
	idx.Manifests = nil
	byPos := map[int]*platformWork{}
	for _, w := range work {
		byPos[w.pos] = w
	}
	var warnings []rebase.Warning
	for i, d := range img.index.Manifests {
		if w, ok := byPos[i]; ok && !w.plan.UpToDate {
			d.MediaType, d.Digest, d.Size = w.plan.ManifestDescriptor.MediaType, w.plan.ManifestDescriptor.Digest, w.plan.ManifestDescriptor.Size
		}
		if isAttestation(d) {
			ref := d.Annotations["vnd.docker.reference.digest"]
			if !keepAttestations {
				warnings = append(warnings, rebase.Warning{Code: "attestation-dropped",
					Message: fmt.Sprintf("dropped attestation manifest %s (it describes %s, which the rebase replaces); pass --keep-attestations to keep it", d.Digest, orUnknown(ref))})
				continue
			}
			warnings = append(warnings, rebase.Warning{Code: "attestation-stale",
				Message: fmt.Sprintf("kept attestation manifest %s, which describes %s, no longer in the index", d.Digest, orUnknown(ref))})
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

func orUnknown(s string) string {
	if s == "" {
		return "an image of the index"
	}
	return s
}

// writeIndex writes blobs and configs, then the platform manifests by
// digest, then the index under the target tag: a failure at any point
// leaves the tag as it was.
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
	for _, p := range changed {
		wg.Go(func() {
			s, err := target.StartUpload(ctx)
			if err == nil {
				err = s.Commit(ctx, p.ConfigDescriptor, p.Config)
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
			if err := target.PutManifest(ctx, "", p.ManifestDescriptor, p.Manifest); err != nil {
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
		return target.PutManifest(ctx, req.Target.Tag, desc, raw)
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
