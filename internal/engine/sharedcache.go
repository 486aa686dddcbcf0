package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/manifest"
)

// Shared is what the rebases of a batch share, so that a batch costs little
// more than its images' own documents:
//
//   - each base (OLD and NEW, given or found by base detection, by
//     reference) is read once for the whole batch: its manifest, its
//     config, and for an index the platform images the batch's images need;
//   - a blob mounted into a target repository for one image is known to be
//     there for the next images of that repository, which do not mount it
//     again (two images racing for it wait for one mount);
//   - a read of a base that fails is tried again once for the images
//     waiting on it, and a second failure fails them all with one
//     BaseReadError;
//   - the check that an image's tag has not moved since it was read can be
//     skipped, on request, when the read is recent (RecheckAfter).
//
// Each image's own documents are read, planned and written as Rebase does,
// and forgotten when its rebase returns: memory does not grow with the
// number of images. One Shared serves any number of goroutines.
type Shared struct {
	// RecheckAfter, when positive, skips the tag's read before the PUT for
	// an image read less than RecheckAfter ago. Writing in place (and
	// without Force), Rebase reads the tag again alongside the last writes,
	// so that an image pushed meanwhile is not overwritten; skipping that
	// request leaves a push that lands between the image's read and the
	// PUT (up to RecheckAfter plus the writes' round trip) undetected. Zero
	// (the default) reads every tag again, as Rebase does. The tag is read
	// after the PUT in any case.
	RecheckAfter time.Duration

	images imageCache

	mu      sync.Mutex
	docs    map[string]*sharedRead[*doc]
	present map[string]*blobEntry  // "target repo@digest"
	tags    map[string]*tagsEntry  // repository name
	writing map[string]*sync.Mutex // "target repo@manifest digest"
}

type tagsEntry struct {
	done chan struct{}
	tags []string
	err  error
}

type blobEntry struct {
	done chan struct{}
	ok   bool
}

// NewShared returns an empty Shared that re-reads every tag (RecheckAfter 0).
func NewShared() *Shared {
	return &Shared{docs: map[string]*sharedRead[*doc]{}, present: map[string]*blobEntry{}, tags: map[string]*tagsEntry{}, writing: map[string]*sync.Mutex{}, images: imageCache{shared: true}}
}

// Rebase is engine.Rebase for one image of a batch: the same request rounds,
// the same checks and the same result, with the bases' documents and the
// target repositories' mounted blobs shared with the batch's other images.
// A failure concerns this image only.
func (s *Shared) Rebase(ctx context.Context, req Request) (*Result, error) {
	r := &run{shared: s}
	target, err := writableTarget(req)
	if err != nil {
		return nil, err
	}
	var img, from, to *doc
	var errs [3]error
	var existing targetState
	var wg sync.WaitGroup
	wg.Go(func() {
		img, errs[0] = fetchDoc(ctx, req.Image)
		r.readAt = time.Now()
	})
	if req.From.Repo != nil {
		wg.Go(func() {
			from, errs[1] = s.doc(ctx, req.From)
			errs[1] = r.baseErr(req.From.String(), errs[1])
		})
	}
	if req.To.Repo != nil {
		wg.Go(func() {
			to, errs[2] = s.doc(ctx, req.To)
			errs[2] = r.baseErr(req.To.String(), errs[2])
		})
	}
	if target != nil && req.Target.String() != req.Image.String() {
		wg.Go(func() { existing = resolveTarget(ctx, target, req.Target.Tag) })
	}
	wg.Wait()
	if err := firstError(errs[:]...); err != nil {
		return nil, err
	}
	if existing.err != nil {
		return nil, existing.err
	}
	r.existing = existing
	var res *Result
	switch {
	case req.From.Repo == nil:
		// The old base is found from what the image records (Detect);
		// the bases it names are read once for the batch too.
		res, err = rebaseDetectedIn(ctx, req, target, img, to, r)
	case img.kind == manifest.KindIndex:
		res, err = rebaseIndexIn(ctx, req, target, img, from, to, r)
	default:
		res, err = rebaseImageIn(ctx, req, target, img, from, to, r)
	}
	if res != nil && existing.exists {
		res.Replaced = &existing.digest
	}
	return res, err
}

// doc reads the manifest at loc once for the batch (see sharedRead: a
// failed read is tried again by the images that waited on it, and kept
// after a second failure).
func (s *Shared) doc(ctx context.Context, loc Location) (*doc, error) {
	key := loc.String()
	s.mu.Lock()
	e, ok := s.docs[key]
	if !ok {
		e = &sharedRead[*doc]{}
		s.docs[key] = e
	}
	s.mu.Unlock()
	return e.get(ctx, batchAttempts, func() (*doc, error) {
		d, err := fetchDoc(ctx, loc)
		if d != nil {
			d.shared = true
		}
		return d, err
	})
}

// transfer makes g's blobs available in target, mounting only those no
// other image of the batch has mounted (or is mounting) there. A blob whose
// mount failed for another image is tried again for this one.
func (s *Shared) transfer(ctx context.Context, target WritableRepo, g blobGroup, allowCopy bool) (Transferred, error) {
	var mine, theirs []v1.Descriptor
	var mineE, theirsE []*blobEntry
	s.mu.Lock()
	for _, b := range g.blobs {
		key := target.Name() + "@" + b.Digest.String()
		if e, ok := s.present[key]; ok {
			theirs, theirsE = append(theirs, b), append(theirsE, e)
			continue
		}
		e := &blobEntry{done: make(chan struct{})}
		s.present[key] = e
		mine, mineE = append(mine, b), append(mineE, e)
	}
	s.mu.Unlock()

	var t Transferred
	var errs []error
	if len(mine) > 0 {
		var err error
		t, err = target.Transfer(ctx, g.src, mine, allowCopy)
		s.mu.Lock()
		for i, e := range mineE {
			e.ok = err == nil
			if err != nil {
				delete(s.present, target.Name()+"@"+mine[i].Digest.String())
			}
			close(e.done)
		}
		s.mu.Unlock()
		errs = append(errs, err)
	}
	var retry []v1.Descriptor
	for i, e := range theirsE {
		select {
		case <-e.done:
		case <-ctx.Done():
			return t, ctx.Err()
		}
		if !e.ok {
			retry = append(retry, theirs[i])
		}
	}
	if len(retry) > 0 {
		t2, err := target.Transfer(ctx, g.src, retry, allowCopy)
		t = t.Add(t2)
		errs = append(errs, err)
	}
	return t, errors.Join(errs...)
}

// run is the state of one image's rebase: shared with a batch's other
// images when shared is set. A nil run (Apply) is a single rebase whose
// target was not read beforehand.
type run struct {
	shared *Shared
	// readAt is when the image's manifest was read (batch only).
	readAt time.Time
	// existing is the target tag as read with the image, when the target
	// is not the image itself (-t).
	existing targetState
}

// batch reports whether the run belongs to a batch.
func (r *run) batch() bool { return r != nil && r.shared != nil }

// bases returns the cache of the bases' platform images: the batch's, or a
// new one for a single rebase.
func (r *run) bases() *imageCache {
	if !r.batch() {
		return &imageCache{}
	}
	return &r.shared.images
}

// recheck says whether the target tag must be read again before it is
// written in place.
func (r *run) recheck() bool {
	return !r.batch() || time.Since(r.readAt) >= r.shared.RecheckAfter
}

// targetTaken refuses a target tag (-t) that names another image than the
// result (unless Force), and reports upToDate when it names the result.
func (r *run) targetTaken(req Request, result v1.Hash) (upToDate bool, err error) {
	if r == nil || !r.existing.exists || req.Force {
		return false, nil
	}
	if r.existing.digest == result {
		return true, nil
	}
	return false, &TargetExistsError{Target: req.Target.String(), Digest: r.existing.digest}
}

// base reads a base's manifest: once for the batch within a batch run.
func (r *run) base(ctx context.Context, loc Location) (*doc, error) {
	if !r.batch() {
		return fetchDoc(ctx, loc)
	}
	d, err := r.shared.doc(ctx, loc)
	return d, r.baseErr(loc.String(), err)
}

// putManifest writes a manifest. Within a batch, two images whose results
// are the same manifest (two tags of one image) write it one after the
// other: Distribution's filesystem storage can fail one of two concurrent
// writes of one manifest with DIGEST_INVALID.
func (r *run) putManifest(ctx context.Context, target WritableRepo, tag string, d v1.Descriptor, raw []byte) error {
	if r.batch() {
		s := r.shared
		key := target.Name() + "@" + d.Digest.String()
		s.mu.Lock()
		m, ok := s.writing[key]
		if !ok {
			m = &sync.Mutex{}
			s.writing[key] = m
		}
		s.mu.Unlock()
		m.Lock()
		defer m.Unlock()
	}
	return target.PutManifest(ctx, tag, d, raw)
}

// listTags lists a repository's tags: once for the batch within a run.
func (r *run) listTags(ctx context.Context, l TagLister, repo string) ([]string, error) {
	if !r.batch() {
		return l.Tags(ctx)
	}
	s := r.shared
	s.mu.Lock()
	e, ok := s.tags[repo]
	if !ok {
		e = &tagsEntry{done: make(chan struct{})}
		s.tags[repo] = e
	}
	s.mu.Unlock()
	if !ok {
		e.tags, e.err = l.Tags(ctx)
		if e.err != nil {
			// Not kept: the next image asks again.
			s.mu.Lock()
			delete(s.tags, repo)
			s.mu.Unlock()
		}
		close(e.done)
	}
	select {
	case <-e.done:
		return slices.Clone(e.tags), e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// transfer makes g's blobs available in target.
func (r *run) transfer(ctx context.Context, target WritableRepo, g blobGroup, allowCopy bool) (Transferred, error) {
	if !r.batch() {
		return target.Transfer(ctx, g.src, g.blobs, allowCopy)
	}
	return r.shared.transfer(ctx, target, g, allowCopy)
}

// RebaseAll rebases every request with s, jobs at a time (at least one),
// in order of the slice, and calls done once per request as it finishes,
// from one goroutine at a time: with its index, its result and error, and
// how long it took. A failure concerns its image only. Once ctx ends, the
// requests not started yet are not started: each is reported with an
// error "not started: " and the context's cause. RebaseAll returns when
// every request was reported.
func (s *Shared) RebaseAll(ctx context.Context, reqs []Request, jobs int, done func(i int, res *Result, err error, took time.Duration)) {
	type outcome struct {
		i    int
		res  *Result
		err  error
		took time.Duration
	}
	results := make(chan outcome)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(max(jobs, 1), len(reqs)) {
		wg.Go(func() {
			for i := range next {
				start := time.Now()
				res, err := s.Rebase(ctx, reqs[i])
				results <- outcome{i, res, err, time.Since(start)}
			}
		})
	}
	go func() {
		var notStarted []int
		for i := range reqs {
			if ctx.Err() != nil {
				notStarted = append(notStarted, i)
				continue
			}
			select {
			case next <- i:
			case <-ctx.Done():
				notStarted = append(notStarted, i)
			}
		}
		close(next)
		for _, i := range notStarted {
			results <- outcome{i: i, err: fmt.Errorf("not started: %w", context.Cause(ctx))}
		}
		wg.Wait()
		close(results)
	}()
	for o := range results {
		done(o.i, o.res, o.err, o.took)
	}
}
