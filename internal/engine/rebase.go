package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/basedetect"
	"github.com/image-rebase/image-rebase/internal/configmerge"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/platform"
	"github.com/image-rebase/image-rebase/internal/rebase"
)

// Request is one rebase to run.
type Request struct {
	// Image is the application image.
	Image Location
	// From is the old base. Leave it unset (nil Repo) to find the old base
	// from what the image records, as Detect says.
	From Location
	// Detect configures base detection, used when From is unset.
	Detect Detect
	// To is the new base. When From is unset it may be unset too: the
	// base the image names is then resolved now and becomes the new base.
	To Location
	// Target is where the result is written; its Repo must be a
	// WritableRepo unless DryRun is set. Usually Image itself.
	Target Location
	// DryRun computes the plan and writes nothing.
	DryRun bool
	// Strict refuses a rebase whose plan has any warning: nothing is
	// written, and the Result (Action Refused) comes with a
	// *rebase.RefusedError.
	Strict bool
	// Force overwrites a target tag that names another image, and skips the
	// lost-update check.
	Force bool
	// AllowCopy lets blobs that cannot be mounted be streamed.
	AllowCopy bool
	// Platforms limits an index rebase to these platforms; empty means all.
	Platforms []v1.Platform
	// KeepOtherPlatforms keeps the platforms Platforms does not select
	// unchanged in the new index; without it such a rebase is refused.
	KeepOtherPlatforms bool
	// KeepAttestations keeps the attestation manifests of the images an
	// index rebase replaces, detached (see newIndex); by default they are
	// dropped with a warning. Attestations of images that stay are kept.
	KeepAttestations bool
	// CheckSignatures looks for the single-platform image's signatures
	// (cosign tags, OCI referrers) to warn that the rebase invalidates them.
	// An index is always checked.
	CheckSignatures bool
	// BackupTag, when set, tags the image as it was read before the target
	// tag moves, so that a registry garbage collection cannot take it.
	BackupTag string
	// ToName is the new base as the user wrote it (base:2), the value the
	// label that names the base takes when the rebase moves the image off
	// the base the label names; empty means To.String().
	ToName string
	// KeepLabel keeps that label as it is, with a warning.
	KeepLabel bool
}

// Action says what a rebase did.
type Action string

// Actions of a Result.
const (
	// Rebased: the new image was written.
	Rebased Action = "rebased"
	// UpToDate: the image already sits on the new base; nothing written.
	UpToDate Action = "up-to-date"
	// WouldRebase: a dry run found that a rebase is needed.
	WouldRebase Action = "would-rebase"
	// Refused: Strict was set and the plan has warnings; nothing written.
	Refused Action = "refused"
)

// Result is the outcome of a rebase.
type Result struct {
	Action Action `json:"action"`
	// Image and Target name the source image and where the result went.
	Image  string `json:"image"`
	Target string `json:"target"`
	// Before is the image's manifest digest; After the result's (equal to
	// Before when up to date).
	Before v1.Hash `json:"before"`
	After  v1.Hash `json:"after"`
	// Replaced is the digest the target tag named before it was moved, if
	// it existed.
	Replaced *v1.Hash `json:"replaced,omitempty"`
	// Backup names the tag that keeps the replaced image, if any.
	Backup      string           `json:"backup,omitempty"`
	OldBase     rebase.BaseRef   `json:"oldBase"`
	NewBase     rebase.BaseRef   `json:"newBase"`
	Transferred Transferred      `json:"transferred"`
	Warnings    []rebase.Warning `json:"warnings"`
	// Notes are the plan's notes (for an index, each platform's, prefixed
	// with the platform): a base matched by content, build metadata
	// dropped.
	Notes []rebase.Note `json:"notes,omitempty"`
	// Plan is the full plan, for --dry-run and -v (single-platform images).
	Plan *rebase.Plan `json:"plan,omitempty"`
	// Platforms holds one result per platform of an index.
	Platforms []PlatformResult `json:"platforms,omitempty"`
	// Detection says how the old base was found, when it was not given.
	Detection *basedetect.Decision `json:"detection,omitempty"`
}

// PlatformResult is the outcome for one platform of an index.
type PlatformResult struct {
	Platform string       `json:"platform"`
	Action   Action       `json:"action"`
	Before   v1.Hash      `json:"before"`
	After    v1.Hash      `json:"after"`
	Plan     *rebase.Plan `json:"plan,omitempty"`
	// Detection says how this platform's old base was found, in automatic
	// mode.
	Detection *basedetect.Decision `json:"detection,omitempty"`
}

// TargetExistsError reports a target tag that names another image.
type TargetExistsError struct {
	Target string
	Digest v1.Hash
}

// Error suggests --force.
func (e *TargetExistsError) Error() string {
	return fmt.Sprintf("target %s already exists (%s) and is not the image being rebased; pass --force to overwrite it", e.Target, e.Digest)
}

// Rebase reads the image and both bases, plans the rebase and, unless it is
// up to date or a dry run, writes the result. Independent requests run
// concurrently, in five rounds for a single-platform image: the manifests
// (with the target tag when it is not the image), the configs (with the
// opening of the config upload when a write is likely), the blobs and the
// config (with the tag read again), the manifest, and in a registry the tag
// read back (see tagGuard). Indexes are rebased platform by platform. Without
// req.From the old base is found from the image (see Detect): two rounds
// more, as the label that names the base is in the image's config. The
// image's signatures are looked for alongside (see CheckSignatures).
func Rebase(ctx context.Context, req Request) (*Result, error) {
	target, err := writableTarget(req)
	if err != nil {
		return nil, err
	}
	locs := []Location{req.Image, req.From, req.To}
	docs := make([]*doc, len(locs))
	errs := make([]error, len(locs))
	var existing targetState
	var wg sync.WaitGroup
	for i, loc := range locs {
		if loc.Repo != nil {
			wg.Go(func() { docs[i], errs[i] = fetchDoc(ctx, loc) })
		}
	}
	if target != nil && req.Target.String() != req.Image.String() {
		wg.Go(func() { existing = resolveTarget(ctx, target, req.Target.Tag) })
	}
	wg.Wait()
	if err := firstError(errs...); err != nil {
		return nil, err
	}
	if existing.err != nil {
		return nil, existing.err
	}
	// A target tag that exists is refused (unless Force) once the result is
	// known: when it already names the result, the rebase is up to date.
	r := &run{existing: existing}
	sigs := startSignatureCheck(ctx, req, docs[0])
	var res *Result
	if req.From.Repo == nil {
		res, err = rebaseDetectedIn(ctx, req, target, docs[0], docs[2], r)
	} else if docs[0].kind == manifest.KindIndex {
		res, err = rebaseIndexIn(ctx, req, target, docs[0], docs[1], docs[2], r)
	} else {
		res, err = rebaseImageIn(ctx, req, target, docs[0], docs[1], docs[2], r)
	}
	if res != nil && existing.exists {
		res.Replaced = &existing.digest
	}
	if w := sigs.warnings(res); err == nil && len(w) > 0 {
		res.Warnings = append(slices.Clone(res.Warnings), w...)
	}
	return res, err
}

// rebaseImageIn rebases a single-platform image within a run.
//
// Rounds after the manifests: an image already on NEW (its layers start
// with NEW's) is up to date, decided from the manifests alone, with no
// further request. Otherwise the configs are read with the config upload
// opened alongside, then apply writes (see Rebase). A base given as an
// index costs one round more (the index names the platform image, which
// names its config): the platform image the image most likely needs (see
// likelyPlatform) is read alongside the image's config, and read again only
// if the config shows another platform.
func rebaseImageIn(ctx context.Context, req Request, target WritableRepo, img, from, to *doc, r *run) (*Result, error) {
	if to.kind == manifest.KindImage && onBaseByDigest(img.image, to.image) {
		return upToDate(req, img, to.image), nil
	}
	cache := r.bases()
	guess := likelyPlatform(img, from, to)
	var session BlobUpload
	var sessionErr error
	cancel := func() {
		if session != nil {
			session.Cancel(context.WithoutCancel(ctx))
		}
	}
	// The image's config; each base's config, or for an index the
	// manifest of its likely platform image; the config upload when NEW's
	// layers are known not to be under the image's.
	bases := []*doc{from, to}
	guessed := make([]*doc, len(bases))
	errs := make([]error, len(bases))
	var imgErr error
	var wg sync.WaitGroup
	wg.Go(func() { imgErr = img.config(ctx) })
	for i, d := range bases {
		if d.kind == manifest.KindImage {
			wg.Go(func() { errs[i] = d.config(ctx) })
			continue
		}
		// A wrong guess costs a request, not an error: the right
		// platform image is read once the config names it.
		wg.Go(func() { guessed[i], _ = cache.child(ctx, d, guess) })
	}
	if target != nil && to.kind == manifest.KindImage {
		wg.Go(func() { session, sessionErr = target.StartUpload(ctx) })
	}
	wg.Wait()
	if err := firstError(imgErr, errs[0], errs[1], sessionErr); err != nil {
		cancel()
		return nil, err
	}

	// Bases given as indexes: the platform image that serves the image's
	// platform (the guessed one when right), then its config.
	p := platform.OfConfig(img.image.Config)
	images := make([]*manifest.Image, len(bases))
	current := false
	for i, d := range bases {
		if d.kind == manifest.KindImage {
			images[i] = d.image
			continue
		}
		wg.Go(func() {
			cd := guessed[i]
			if want, err := selectChild(d, p); err != nil || cd == nil || cd.desc.Digest != want.Digest {
				if cd, errs[i] = cache.child(ctx, d, p); errs[i] != nil {
					return
				}
			}
			if i == 1 {
				if onBaseByDigest(img.image, cd.image) {
					images[i], current = cd.image, true
					return
				}
				if target != nil {
					wg.Go(func() { session, sessionErr = target.StartUpload(ctx) })
				}
			}
			if errs[i] = cd.config(ctx); errs[i] == nil {
				images[i] = cd.image
			}
		})
	}
	wg.Wait()
	if current {
		cancel()
		return upToDate(req, img, images[1]), nil
	}
	if err := firstError(errs[0], errs[1], sessionErr); err != nil {
		cancel()
		return nil, err
	}
	plan, err := explicitPlan(req, img.image, images[0], images[1])
	if err != nil {
		cancel()
		return nil, err
	}
	res, err := apply(ctx, req, plan, session, r)
	if err != nil || res.Action != Rebased {
		cancel()
	}
	return res, err
}

// onBaseByDigest reports whether img's layers start with base's by blob
// digest: img is built on base (or was rebased onto it). Equal digests are
// equal content, so the planner, which decides by diff_id with the configs
// read, finds the same and plans the image against base itself; for an
// explicit rebase onto base nothing changes, except a base label that names
// the old base (see upToDate). The manifests alone settle it: no config is
// read. An image on base by content only (other blobs) is left to the
// planner.
func onBaseByDigest(img, base *manifest.Image) bool {
	return len(base.Manifest.Layers) > 0 && rebase.HasLayerPrefix(img.Manifest.Layers, base.Manifest.Layers)
}

// upToDate is the result for an image already on nw (onBaseByDigest),
// decided from the manifests: nothing is written and no config was read.
// What only the configs could show is left as it is: a new config of nw on
// the same layers (the planner plans an image on nw against nw itself and
// finds nothing to change either), and a base label still naming the old
// base, on an image put on nw by another tool (an explicit rebase by this
// one moves the label when it moves the image; a rerun does not read it).
func upToDate(req Request, img *doc, nw *manifest.Image) *Result {
	plan := upToDatePlan(img, nw)
	return &Result{
		Action:   UpToDate,
		Image:    req.Image.String(),
		Target:   req.Target.String(),
		Before:   img.desc.Digest,
		After:    img.desc.Digest,
		OldBase:  plan.OldBase,
		NewBase:  plan.NewBase,
		Warnings: plan.Warnings,
		Plan:     plan,
	}
}

// upToDatePlan says what the planner would of an image already on nw: it
// sits on nw, its own layers kept, nothing to write.
func upToDatePlan(img *doc, nw *manifest.Image) *rebase.Plan {
	n := len(nw.Manifest.Layers)
	base := rebase.BaseRef{Ref: nw.Ref, Digest: nw.Descriptor.Digest, Layers: n}
	return &rebase.Plan{
		Image:              img.image.Ref,
		ImageDigest:        img.desc.Digest,
		ImageDescriptor:    img.desc,
		ImageManifest:      img.raw,
		OldBase:            base,
		NewBase:            base,
		UpToDate:           true,
		Removed:            nw.Manifest.Layers,
		Added:              nw.Manifest.Layers,
		Kept:               img.image.Manifest.Layers[n:],
		Family:             img.image.Family,
		Manifest:           img.raw,
		ManifestDescriptor: img.desc,
		ConfigDescriptor:   img.image.Manifest.Config,
		Changes:            []configmerge.Change{},
		Warnings:           []rebase.Warning{},
	}
}

// likelyPlatform guesses, before the image's config is read, the platform
// of a single-platform image whose bases are indexes, so that the bases'
// platform images are read alongside that config: the platform of the
// bases' image that the image's base-digest annotation names, else this
// machine's (linux), else linux/amd64, else the first the index lists.
func likelyPlatform(img *doc, bases ...*doc) v1.Platform {
	var children []v1.Descriptor
	for _, d := range bases {
		if d.kind != manifest.KindIndex {
			continue
		}
		for _, c := range d.index.Manifests {
			if c.Platform != nil && !isAttestation(c) {
				children = append(children, c)
			}
		}
	}
	if dg := img.image.Manifest.Annotations[manifest.BaseDigestAnnotation]; dg != "" {
		for _, c := range children {
			if c.Digest.String() == dg {
				return *c.Platform
			}
		}
	}
	for _, want := range []v1.Platform{{OS: "linux", Architecture: runtime.GOARCH}, {OS: "linux", Architecture: "amd64"}} {
		for _, c := range children {
			if platform.Matches(want, *c.Platform) {
				return *c.Platform
			}
		}
	}
	if len(children) > 0 {
		return *children[0].Platform
	}
	return v1.Platform{OS: "linux", Architecture: "amd64"}
}

// Plan computes the plan of moving img from old to nw.
func Plan(img, old, nw *manifest.Image) (*rebase.Plan, error) {
	return planWith(img, old, nw, "", "", "")
}

// planWith is Plan with the new base's reference for the result's base
// annotations (empty: nw.Ref), and the label that names the base and its
// new value (see baseLabel).
func planWith(img, old, nw *manifest.Image, newName, label, relabel string) (*rebase.Plan, error) {
	ob, err := rebase.BaseFromImage(old)
	if err != nil {
		return nil, err
	}
	nb, err := rebase.BaseFromImage(nw)
	if err != nil {
		return nil, err
	}
	nb.Name = newName
	return rebase.New(rebase.Input{Image: img, Old: ob, New: nb, BaseLabel: label, Relabel: relabel})
}

// explicitPlan plans an explicit rebase (--from-base): when the image's
// label names the old base's repository, the label is moved to the new
// base unless req.KeepLabel, which warns instead.
func explicitPlan(req Request, img, old, nw *manifest.Image) (*rebase.Plan, error) {
	label, relabel, warning := baseLabel(req, img, req.From)
	plan, err := planWith(img, old, nw, req.To.String(), label, relabel)
	if err != nil || warning == nil || plan.UpToDate {
		return plan, err
	}
	plan.Warnings = append(plan.Warnings, *warning)
	return plan, nil
}

// baseLabel returns the label of img that names its base (-l, or FROM)
// and, when it names the repository of old (the base the rebase moves the
// image off) and another reference than the new base, the value it takes:
// the new base as the user wrote it. With req.KeepLabel the value stays
// and a warning says that the next automatic rebase would go back to it.
func baseLabel(req Request, img *manifest.Image, old Location) (label, relabel string, warning *rebase.Warning) {
	label = req.Detect.Label
	if label == "" {
		label = basedetect.DefaultLabel
	}
	value, ok := img.Config.Config.Labels[label]
	if !ok {
		return "", "", nil
	}
	to := req.ToName
	if to == "" && req.To.Repo != nil {
		to = req.To.String()
	}
	if to == "" || old.Repo == nil || value == to {
		return label, "", nil
	}
	if req.Detect.Resolve == nil {
		// No resolver (a library caller): the label names old's
		// repository when it is that repository's name, or the end of it
		// (base:1 for host/base).
		repo := basedetect.RepoOf(value)
		if repo != old.Repo.Name() && !strings.HasSuffix(old.Repo.Name(), "/"+repo) {
			return label, "", nil
		}
		if host, _, ok := strings.Cut(old.Repo.Name(), "/"); ok && repo != old.Repo.Name() {
			to = strings.TrimPrefix(to, host+"/")
		}
	} else {
		named, err := req.Detect.resolve(value, true)
		if err != nil || named.Repo.Name() != old.Repo.Name() {
			return label, "", nil
		}
		if newLoc, err := req.Detect.resolve(to, true); err == nil && newLoc.String() == named.String() {
			return label, "", nil
		}
		// A label written relative to its registry stays relative.
		if prefix, ok := strings.CutSuffix(named.String(), value); ok && prefix != "" && strings.HasPrefix(to, prefix) {
			to = strings.TrimPrefix(to, prefix)
		}
	}
	if to == value {
		return label, "", nil
	}
	if req.KeepLabel {
		return label, "", &rebase.Warning{Code: "label-kept", Message: fmt.Sprintf(
			"label %s=%s still names the old base (--keep-label); an automatic rebase (image-rebase IMAGE, scan --stale | batch) follows it back to %s", label, value, value)}
	}
	return label, to, nil
}

type targetState struct {
	digest v1.Hash
	exists bool
	err    error
}

func resolveTarget(ctx context.Context, target WritableRepo, tag string) targetState {
	var s targetState
	if tag != "" {
		s.digest, s.exists, s.err = target.Resolve(ctx, tag)
	}
	return s
}

func writableTarget(req Request) (WritableRepo, error) {
	if req.DryRun {
		return nil, nil
	}
	target, ok := req.Target.Repo.(WritableRepo)
	if !ok {
		return nil, fmt.Errorf("%s cannot be written to", req.Target.Repo.Name())
	}
	return target, nil
}

func firstError(errs ...error) error {
	// Report the first failure only: the others usually share its cause
	// (an unreachable registry, missing credentials).
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Apply writes a plan to req.Target: the blobs the target lacks (mounted)
// and the config together, then the manifest. session, if not nil, is an
// upload already opened for the config. Nothing is written for an up-to-date
// plan or a dry run. Writing in place, the image's tag is read again
// alongside the last writes (unless req.Force): if someone pushed meanwhile,
// no tag is written; after the manifest PUT the tag is read back, and a
// result replaced right away by another writer is a *LostUpdateError. A
// failure once the writes began is a *WriteError that says what was written.
func Apply(ctx context.Context, req Request, plan *rebase.Plan, session BlobUpload) (*Result, error) {
	return apply(ctx, req, plan, session, nil)
}

// apply is Apply within a run (nil: a target not read beforehand).
func apply(ctx context.Context, req Request, plan *rebase.Plan, session BlobUpload, r *run) (*Result, error) {
	res := &Result{
		Image:    req.Image.String(),
		Target:   req.Target.String(),
		Before:   plan.ImageDigest,
		After:    plan.ManifestDescriptor.Digest,
		OldBase:  plan.OldBase,
		NewBase:  plan.NewBase,
		Warnings: plan.Warnings,
		Notes:    plan.Notes,
		Plan:     plan,
	}
	switch {
	case plan.UpToDate:
		res.Action, res.After = UpToDate, plan.ImageDigest
		return res, nil
	case req.Strict && len(plan.Warnings) > 0:
		res.Action = Refused
		return res, strictRefusal(res.Warnings)
	case req.DryRun:
		res.Action = WouldRebase
		return res, nil
	}
	target, err := writableTarget(req)
	if err != nil {
		return nil, err
	}

	if up, err := r.targetTaken(req, plan.ManifestDescriptor.Digest); up || err != nil {
		if up {
			res.Action = UpToDate
		}
		return res, err
	}

	// The blobs and the config, with the tag read alongside; then the tag
	// moves (see tagGuard.commit).
	guard := newGuard(req, target, r, plan.ImageDigest, plan.ManifestDescriptor.Digest)
	groups := missingBlobs(req, plan)
	var wg sync.WaitGroup
	errs := make([]error, len(groups)+1)
	reports := make([]Transferred, len(groups))
	for i, g := range groups {
		wg.Go(func() { reports[i], errs[i] = r.transfer(ctx, target, g, req.AllowCopy) })
	}
	wg.Go(func() {
		if session == nil {
			if session, errs[len(groups)] = target.StartUpload(ctx); errs[len(groups)] != nil {
				return
			}
		}
		errs[len(groups)] = session.Commit(ctx, plan.ConfigDescriptor, plan.Config)
	})
	if guard.check {
		wg.Go(func() { guard.readTag(ctx) })
	}
	wg.Wait()
	for _, r := range reports {
		res.Transferred = res.Transferred.Add(r)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, unchanged(req, err)
	}
	upToDate, backupTag, warnings, err := guard.commit(ctx, plan.ImageDescriptor, plan.ImageManifest, func() error {
		return r.putManifest(ctx, target, req.Target.Tag, plan.ManifestDescriptor, plan.Manifest)
	})
	if err != nil {
		return nil, err
	}
	if upToDate {
		// Another run wrote this very result meanwhile.
		res.Action = UpToDate
		return res, nil
	}
	if req.Target.String() == req.Image.String() && req.Target.Tag != "" {
		d := plan.ImageDigest
		res.Replaced = &d
	}
	res.Backup = backupTag
	res.Warnings = append(slices.Clone(res.Warnings), warnings...)
	res.Action = Rebased
	return res, nil
}

// strictRefusal is the error of a Strict rebase that has warnings.
func strictRefusal(ws []rebase.Warning) error {
	var parts []string
	for _, w := range ws {
		parts = append(parts, w.Code+": "+w.Message)
	}
	return &rebase.RefusedError{Reason: fmt.Sprintf("--strict: %d warning(s), nothing written: %s", len(ws), strings.Join(parts, "; "))}
}

type blobGroup struct {
	src   Repo
	blobs []v1.Descriptor
}

// backup tags the image as read in the image's repository, by writing its
// manifest again under req.BackupTag (its blobs are already there).
func backup(ctx context.Context, req Request, d v1.Descriptor, raw []byte) error {
	repo, ok := req.Image.Repo.(WritableRepo)
	if !ok {
		return fmt.Errorf("%s cannot be written to for the backup tag", req.Image.Repo.Name())
	}
	if err := repo.PutManifest(ctx, req.BackupTag, d, raw); err != nil {
		return fmt.Errorf("writing backup tag %s: %w", req.BackupTag, err)
	}
	return nil
}

// missingBlobs lists the result's layers that the target repository may
// lack, grouped by the repository to mount them from. Layers the target
// already references (the image's own, when writing in place) are skipped,
// and so are foreign layers, which are never pushed.
func missingBlobs(req Request, plan *rebase.Plan) []blobGroup {
	present := map[v1.Hash]bool{}
	targetName := req.Target.Repo.Name()
	if req.Image.Repo.Name() == targetName {
		for _, l := range plan.Removed {
			present[l.Digest] = true
		}
		for _, l := range plan.Kept {
			present[l.Digest] = true
		}
	}
	if req.To.Repo.Name() == targetName {
		for _, l := range plan.Added {
			present[l.Digest] = true
		}
	}
	var groups []blobGroup
	add := func(src Repo, layers []v1.Descriptor) {
		g := blobGroup{src: src}
		for _, l := range layers {
			if !present[l.Digest] && !manifest.IsForeign(l) {
				present[l.Digest] = true
				g.blobs = append(g.blobs, l)
			}
		}
		if len(g.blobs) > 0 {
			groups = append(groups, g)
		}
	}
	add(req.To.Repo, plan.Added)
	add(req.Image.Repo, plan.Kept)
	return groups
}
