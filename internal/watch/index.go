package watch

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/scan"
)

// indexLoop builds g's index at start (trying again with backoff until it
// succeeds) and then every Refresh.
func (w *Watcher) indexLoop(ctx context.Context, g *group) {
	wait := w.cfg.RetryBackoff
	first := true
	for ctx.Err() == nil {
		err := w.buildIndex(ctx, g, first)
		next := w.cfg.Refresh
		if err != nil && ctx.Err() == nil {
			next, wait = jitter(wait), min(2*wait, 2*time.Minute)
		} else if err == nil {
			first, wait = false, w.cfg.RetryBackoff
		}
		select {
		case <-ctx.Done():
		case <-time.After(next):
		}
	}
}

// buildIndex walks g's registry and replaces its dependents index; the
// stale dependents are rebased.
func (w *Watcher) buildIndex(ctx context.Context, g *group, first bool) error {
	w.mu.Lock()
	if g.busy {
		w.mu.Unlock()
		return nil
	}
	g.busy = true
	var known []scan.Candidate
	for _, b := range g.bases {
		known = append(known, b.known...)
	}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		g.busy = false
		w.mu.Unlock()
	}()

	start := time.Now()
	client, gen := w.currentClient()
	sc, repos, found, err := w.walk(ctx, client, g, known)
	if err != nil {
		w.renewClient(gen, err)
		w.m.indexes.WithLabelValues(g.reg.Host, "error").Inc()
		w.log.Error("index failed", "registry", g.reg.Host, "error", oneLine(err))
		return err
	}
	w.m.indexes.WithLabelValues(g.reg.Host, "ok").Inc()
	w.mu.Lock()
	g.scanner, g.gen = sc, gen
	g.repos = map[string]bool{}
	for _, r := range repos {
		g.repos[r] = true
	}
	now := time.Now()
	for i, v := range sc.Current() {
		b := g.bases[i]
		b.version = v
		b.remember(v.Candidates)
		w.m.lastCheck.WithLabelValues(b.ref).Set(float64(now.Unix()))
	}
	byBase := map[string][]scan.Finding{}
	unreadable := 0
	for _, f := range found {
		if f.Reason != "" {
			unreadable++
			continue
		}
		byBase[f.To] = append(byBase[f.To], f)
	}
	stale := 0
	for _, b := range g.bases {
		old := b.deps
		b.deps = map[string]*dep{}
		for _, f := range byBase[b.ref] {
			d := &dep{b: b, f: f, stale: f.Stale}
			if o := old[f.Image]; o != nil && o.f.Digest == f.Digest {
				d.attempts = o.attempts
			}
			b.deps[f.Image] = d
			w.deps[f.Image] = d
			if d.stale {
				stale++
			}
		}
		for k := range old {
			if b.deps[k] == nil && w.deps[k] != nil && w.deps[k].b == b {
				delete(w.deps, k)
			}
		}
		w.gauges(b)
	}
	w.mu.Unlock()
	w.log.Info("index built", "registry", g.reg.Host, "repositories", len(repos), "dependents", len(found)-unreadable,
		"stale", stale, "unreadable", unreadable, "seconds", time.Since(start).Seconds())
	for _, b := range g.bases {
		w.mu.Lock()
		has := b.hasStale()
		w.mu.Unlock()
		if has {
			w.trigger(ctx, b, "index", first)
		}
	}
	if first {
		w.indexed.Add(1)
	}
	return nil
}

// walk reads g's registry: the bases, the repositories and their images.
func (w *Watcher) walk(ctx context.Context, client *registry.Client, g *group, known []scan.Candidate) (*scan.Scanner, []string, []scan.Finding, error) {
	sc, err := scan.New(client, w.scanOptions(g, known))
	if err != nil {
		return nil, nil, nil, err
	}
	if err := sc.ReadBases(ctx); err != nil {
		return nil, nil, nil, err
	}
	repos, err := sc.Repositories(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	found, err := sc.WalkRepos(ctx, repos)
	if err != nil {
		return nil, nil, nil, err
	}
	return sc, repos, found, nil
}

// scanOptions are the options of g's scans: a dependent of a base tag is
// an image on that very tag (a version it names or named while the
// watcher ran, or named by the image), never one on another tag of the
// repository (base:1.2 when base:stable is watched): the watcher does not
// move an image to a tag it was not built from.
func (w *Watcher) scanOptions(g *group, known []scan.Candidate) scan.Options {
	return scan.Options{Registry: g.reg.Host, Bases: g.reg.Bases, Repos: g.reg.Repos, Label: w.cfg.Label,
		Jobs: w.cfg.Jobs, Known: known, SameTag: true}
}

// scannerOf returns g's scanner, built again (its bases read) when the
// client it uses was replaced; nil before the first index.
func (w *Watcher) scannerOf(ctx context.Context, g *group) (*scan.Scanner, int, error) {
	client, gen := w.currentClient()
	w.mu.Lock()
	sc, sgen := g.scanner, g.gen
	var known []scan.Candidate
	for _, b := range g.bases {
		known = append(known, b.known...)
	}
	w.mu.Unlock()
	if sc == nil {
		return nil, gen, errors.New("the index is not built yet")
	}
	if sgen == gen {
		return sc, gen, nil
	}
	sc, err := scan.New(client, w.scanOptions(g, known))
	if err == nil {
		err = sc.ReadBases(ctx)
	}
	if err != nil {
		return nil, gen, err
	}
	w.mu.Lock()
	if g.gen != gen {
		g.scanner, g.gen = sc, gen
	}
	w.mu.Unlock()
	return sc, gen, nil
}

// remember adds versions of the base to those it keeps (the 16 most
// recent), so that images on them are found once no tag names them.
func (b *base) remember(cs []scan.Candidate) {
	for _, c := range cs {
		if !slices.ContainsFunc(b.known, func(k scan.Candidate) bool { return k.Digest == c.Digest && k.Ref == c.Ref }) {
			b.known = append(b.known, c)
		}
	}
	if n := len(b.known); n > 16 {
		b.known = b.known[n-16:]
	}
}

func (b *base) hasStale() bool {
	for _, d := range b.deps {
		if d.stale {
			return true
		}
	}
	return false
}

// gauges sets b's stale and dependents gauges (w.mu held).
func (w *Watcher) gauges(b *base) {
	n := 0
	for _, d := range b.deps {
		if d.stale {
			n++
		}
	}
	w.m.stale.WithLabelValues(b.ref).Set(float64(n))
	w.m.deps.WithLabelValues(b.ref).Set(float64(len(b.deps)))
}

// forget removes key from the index.
func (w *Watcher) forget(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if d := w.deps[key]; d != nil {
		delete(d.b.deps, key)
		delete(w.deps, key)
		w.gauges(d.b)
	}
}

// place puts finding f in the index of group g (w.mu held) and returns
// its base, nil when it is on none of g's bases.
func (w *Watcher) place(g *group, f scan.Finding) *base {
	var nb *base
	for _, b := range g.bases {
		if b.ref == f.To {
			nb = b
		}
	}
	old := w.deps[f.Image]
	if old != nil && old.b != nb {
		delete(old.b.deps, f.Image)
		w.gauges(old.b)
	}
	if nb == nil {
		delete(w.deps, f.Image)
		return nil
	}
	d := &dep{b: nb, f: f, stale: f.Stale}
	if old != nil && old.b == nb {
		d.attempts = old.attempts
	}
	nb.deps[f.Image] = d
	w.deps[f.Image] = d
	w.gauges(nb)
	return nb
}

// indexRepo indexes a repository a push named that the index does not
// know.
func (w *Watcher) indexRepo(ctx context.Context, g *group, repo string) {
	sc, gen, err := w.scannerOf(ctx, g)
	var found []scan.Finding
	if err == nil {
		// Distribution sends the push event before it moves the tag: a
		// repository without tags yet, or a tag not readable yet, is read
		// again shortly.
		for wait := tagLag / 20; ; wait *= 2 {
			found, err = sc.WalkRepos(ctx, []string{repo})
			lagging := err == nil && (len(found) == 0 || slices.ContainsFunc(found, func(f scan.Finding) bool { return f.Reason != "" }))
			if !lagging || wait > tagLag {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}
	if err != nil {
		w.renewClient(gen, err)
		w.log.Error("indexing a new repository failed", "repository", g.reg.Host+"/"+repo, "error", oneLine(err))
		return
	}
	w.mu.Lock()
	g.repos[g.reg.Host+"/"+repo] = true
	var hit []*base
	for _, f := range found {
		if f.Reason != "" {
			continue
		}
		if b := w.place(g, f); b != nil && f.Stale && !slices.Contains(hit, b) {
			hit = append(hit, b)
		}
	}
	w.mu.Unlock()
	attrs := []any{"repository", g.reg.Host + "/" + repo, "images", len(found)}
	for _, f := range found {
		if f.Reason != "" {
			attrs = append(attrs, "unreadable", f.Image+": "+f.Reason)
			break
		}
	}
	w.log.Info("repository indexed", attrs...)
	for _, b := range hit {
		w.staleFound(ctx, b)
	}
}

// indexImage indexes one pushed image of a known repository.
func (w *Watcher) indexImage(ctx context.Context, g *group, repo, tag string) {
	sc, gen, err := w.scannerOf(ctx, g)
	var f scan.Finding
	var keep bool
	if err == nil {
		// Distribution sends the push event before it moves the tag: a
		// tag not found yet is read again shortly.
		for wait := tagLag / 20; ; wait *= 2 {
			f, keep, err = sc.Image(ctx, repo, tag)
			if !errors.Is(err, engine.ErrNotFound) || wait > tagLag {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}
	key := g.reg.Host + "/" + repo + ":" + tag
	if err != nil {
		w.renewClient(gen, err)
		w.log.Error("indexing a pushed image failed", "image", key, "error", oneLine(err))
		return
	}
	if !keep || f.Reason != "" {
		w.forget(key)
		return
	}
	w.mu.Lock()
	b := w.place(g, f)
	w.mu.Unlock()
	w.log.Info("image indexed", "image", key, "base", f.To, "stale", f.Stale)
	if b != nil && f.Stale {
		w.staleFound(ctx, b)
	}
}

// staleFound rebases b's stale dependents: in the running round when
// there is one, else in a new round.
func (w *Watcher) staleFound(ctx context.Context, b *base) {
	w.mu.Lock()
	r := b.round
	var add []string
	if r != nil {
		for k, d := range b.deps {
			if d.stale && !r.pending[k] && w.inRound[k] == nil {
				r.pending[k] = true
				w.inRound[k] = r
				add = append(add, k)
			}
		}
	}
	w.mu.Unlock()
	if r == nil {
		w.trigger(ctx, b, "push", false)
		return
	}
	for _, k := range add {
		w.q.add(k)
	}
}
