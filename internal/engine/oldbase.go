package engine

import (
	"context"
	"fmt"
	"slices"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/manifest"
)

// TagLister is implemented by repositories that can list their tags. It is
// optional: without it the old base of an image whose base tag has moved
// cannot be looked for among the base repository's other tags.
type TagLister interface {
	// Tags lists the repository's tags.
	Tags(ctx context.Context) ([]string, error)
}

// Bounds of the search for an old base among a repository's tags: the tags
// read (manifests), the configs read to compare diff_ids when layer digests
// differ (another compression), and the reads in flight at once.
const (
	maxTagsSearched   = 200
	maxConfigsByTag   = 32
	tagSearchParallel = 8
)

// tagMatch is the outcome of a search for the old base among tags.
type tagMatch struct {
	// img is the old base found (its config read), nil when none matched.
	img *manifest.Image
	// tags are the tags that name it.
	tags []string
	// listed is false when the repository cannot list its tags; searched
	// is the number of tags read; truncated is true when the repository
	// had more than maxTagsSearched.
	listed    bool
	searched  int
	truncated bool
}

// oldBaseByTags looks through the tags of repo for the image (for an index,
// its image for platform p) whose layers are img's bottom layers, compared
// by diff_id so that a re-compressed copy matches too. layers is the old
// base's layer count when the image's history tells it (candidates with
// more are not read further), or 0; the longest match is returned. The tag skip (the one that names the new base, already
// read) is not read again. The image must have its config.
func oldBaseByTags(ctx context.Context, repo Repo, skip string, img *manifest.Image, p v1.Platform, layers int, r *run) (*tagMatch, error) {
	lister, ok := repo.(TagLister)
	if !ok {
		return &tagMatch{}, nil
	}
	tags, err := r.listTags(ctx, lister, repo.Name())
	if err != nil {
		return nil, fmt.Errorf("listing the tags of %s: %w", repo.Name(), err)
	}
	tags = slices.DeleteFunc(tags, func(t string) bool { return t == skip })
	slices.Sort(tags)
	m := &tagMatch{listed: true, searched: len(tags)}
	if len(tags) > maxTagsSearched {
		// The newest tags sort last more often than not (1.2, 1.3...); a
		// base the image was built on is usually among the recent ones.
		tags, m.truncated, m.searched = tags[len(tags)-maxTagsSearched:], true, maxTagsSearched
	}

	type found struct {
		img    *manifest.Image // the single-platform image
		config func() error    // reads its config (once)
		layers int
		match  bool
	}
	// Each tag's manifest (for an index, its platform image's), matched by
	// layer digest.
	var mu sync.Mutex
	byDigest := map[v1.Hash][]string{} // image digest → tags
	cands := map[v1.Hash]*found{}
	each := func(n int, do func(i int)) {
		sem := make(chan struct{}, tagSearchParallel)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				do(i)
			})
		}
		wg.Wait()
	}
	each(len(tags), func(i int) {
		f, config := readCandidate(ctx, repo, tags[i], p, r)
		if f == nil {
			return // a tag that cannot be read, or has no such platform, is not the base
		}
		n := len(f.Manifest.Layers)
		if n == 0 || n > len(img.Manifest.Layers) || (layers > 0 && n > layers) {
			return
		}
		match := slices.EqualFunc(f.Manifest.Layers, img.Manifest.Layers[:n], func(a, b v1.Descriptor) bool { return a.Digest == b.Digest })
		dg := f.Descriptor.Digest
		mu.Lock()
		defer mu.Unlock()
		byDigest[dg] = append(byDigest[dg], tags[i])
		if _, seen := cands[dg]; !seen {
			cands[dg] = &found{img: f, config: config, layers: n, match: match}
		}
	})
	// The longest match: with layers given, one of exactly that many if
	// any, else a shorter one (the caller decides what that means).
	longest := func() *found {
		var best *found
		for _, f := range cands {
			if f.match && (best == nil || f.layers > best.layers || (f.layers == best.layers && f.img.Descriptor.Digest.String() < best.img.Descriptor.Digest.String())) {
				best = f
			}
		}
		return best
	}
	// Candidates that would beat the match by digest (or there is none)
	// but whose blobs differ, maybe compressed otherwise: their diff_ids
	// decide, read for the longest first, at most maxConfigsByTag.
	best := longest()
	var open []*found
	for _, f := range cands {
		if !f.match && (best == nil || f.layers > best.layers) {
			open = append(open, f)
		}
	}
	slices.SortFunc(open, func(a, b *found) int { return b.layers - a.layers })
	open = open[:min(len(open), maxConfigsByTag)]
	each(len(open), func(i int) {
		f := open[i]
		if f.config() == nil && slices.Equal(f.img.Config.RootFS.DiffIDs, img.Config.RootFS.DiffIDs[:min(f.layers, len(img.Config.RootFS.DiffIDs))]) {
			mu.Lock()
			f.match = true
			mu.Unlock()
		}
	})
	if best = longest(); best == nil {
		return m, nil
	}
	m.tags = slices.Sorted(slices.Values(byDigest[best.img.Descriptor.Digest]))
	m.img = best.img
	if err := best.config(); err != nil {
		return nil, err
	}
	return m, nil
}

// readCandidate reads the image tag names in repo, or for an index its
// image for platform p, and a function that reads its config once; nil
// when it cannot be read.
func readCandidate(ctx context.Context, repo Repo, tag string, p v1.Platform, r *run) (*manifest.Image, func() error) {
	d, err := r.base(ctx, Location{Repo: repo, Tag: tag})
	if err != nil {
		return nil, nil
	}
	if d.kind == manifest.KindImage {
		return d.image, func() error { return d.config(ctx) }
	}
	child, err := selectChild(d, p)
	if err != nil {
		return nil, nil
	}
	// The platform image's manifest only: its config is read when its
	// layers leave the match open, or when it is the one found.
	cd, err := r.base(ctx, Location{Repo: repo, Digest: child.Digest.String()})
	if err != nil || cd.kind != manifest.KindImage {
		return nil, nil
	}
	return cd.image, func() error { return cd.config(ctx) }
}
