package watch

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/rebase"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/scan"
	"github.com/image-rebase/image-rebase/internal/version"
)

// trigger asks for a round of b: after Settle (a burst of events makes
// one round), or at once; during a round, once that round is done.
func (w *Watcher) trigger(ctx context.Context, b *base, why string, now bool) {
	if w.draining.Load() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case b.round != nil:
		b.pending = why
	case b.settling:
	default:
		b.settling = true
		d := w.cfg.Settle
		if now {
			d = 0
		}
		time.AfterFunc(d, func() { w.startRound(ctx, b, why) })
	}
}

// startRound reads b's current version and queues its stale dependents.
func (w *Watcher) startRound(ctx context.Context, b *base, why string) {
	if ctx.Err() != nil || w.draining.Load() {
		return
	}
	w.mu.Lock()
	indexed := b.g.scanner != nil
	if !indexed {
		// The first index is being built: it rebases what is stale.
		b.settling = false
	}
	w.mu.Unlock()
	if !indexed {
		return
	}
	sc, gen, err := w.scannerOf(ctx, b.g)
	var v scan.BaseVersion
	if err == nil {
		v, err = sc.ReadBase(ctx, b.ref)
	}
	if err != nil {
		w.renewClient(gen, err)
		w.mu.Lock()
		b.retryWait = min(max(2*b.retryWait, w.cfg.RetryBackoff), 2*time.Minute)
		wait := jitter(b.retryWait)
		w.mu.Unlock()
		w.log.Error("reading the base failed", "base", b.ref, "error", oneLine(err), "retryIn", wait.String())
		time.AfterFunc(wait, func() { w.startRound(ctx, b, why) })
		return
	}
	w.m.lastCheck.WithLabelValues(b.ref).Set(float64(time.Now().Unix()))
	w.mu.Lock()
	b.retryWait = 0
	if b.want != (v1.Hash{}) && v.Digest != b.want && time.Since(b.wantSince) < tagLag {
		// Distribution sends the push event before it moves the tag:
		// read again shortly.
		w.mu.Unlock()
		time.AfterFunc(tagLag/20, func() { w.startRound(ctx, b, why) })
		return
	}
	b.want = v1.Hash{}
	b.settling = false
	previous := b.version.Digest
	b.version = v
	b.remember(v.Candidates)
	var keys []string
	for k, d := range b.deps {
		d.stale = d.staleOn(v)
		// An image still in another round (it moved to this base) is
		// rebased there, onto this base.
		if d.stale && w.inRound[k] == nil {
			keys = append(keys, k)
		}
	}
	w.gauges(b)
	if len(keys) == 0 {
		n := len(b.deps)
		w.mu.Unlock()
		w.log.Info("base checked", "base", b.ref, "digest", v.Digest.String(), "trigger", why, "dependents", n, "stale", 0)
		return
	}
	w.roundN++
	r := &round{id: w.roundN, b: b, trigger: why, version: v, started: time.Now(), shared: engine.NewShared(), pending: map[string]bool{}}
	if previous != v.Digest {
		r.previous = previous
	}
	b.round = r
	for _, k := range keys {
		r.pending[k] = true
		w.inRound[k] = r
		b.deps[k].attempts = 0
	}
	w.mu.Unlock()
	w.log.Info("round started", "round", r.id, "base", b.ref, "digest", v.Digest.String(), "trigger", why, "images", len(keys))
	for _, k := range keys {
		w.q.add(k)
	}
}

// tagLag is how long a tag may lag behind the event that told of its push.
const tagLag = 2 * time.Second

// wantVersion records that b's tag was seen naming digest.
func (w *Watcher) wantVersion(b *base, digest string) {
	d, err := v1.NewHash(digest)
	if err != nil {
		return
	}
	w.mu.Lock()
	b.want, b.wantSince = d, time.Now()
	w.mu.Unlock()
}

// staleOn says whether d is not on version v of its base.
func (d *dep) staleOn(v scan.BaseVersion) bool {
	for _, c := range v.Candidates {
		if d.f.Layers != nil && d.f.StartsWith(c) || d.f.Layers == nil && d.on == c.Digest {
			return false
		}
	}
	return true
}

// process makes one attempt at one image.
func (w *Watcher) process(ctx context.Context, key string) {
	w.mu.Lock()
	d := w.deps[key]
	r := w.inRound[key]
	if d == nil {
		w.mu.Unlock()
		w.final(key, nil, ImageResult{Image: key, Action: OutcomeGone, Error: "no longer a dependent"})
		return
	}
	b := d.b
	f, reidentify, dropFrom := d.f, d.reidentify, d.dropFrom
	d.attempts++
	attempt := d.attempts
	shared := engine.NewShared()
	if r != nil {
		shared = r.shared
	}
	w.mu.Unlock()

	start := time.Now()
	client, gen := w.currentClient()
	if reidentify {
		var done bool
		if f, done = w.reidentify(ctx, b, key, attempt); done {
			return
		}
	}
	if dropFrom {
		f.From = ""
	}
	req, err := w.request(client, b, f)
	if err != nil {
		w.finish(b, key, attempt, nil, err, time.Since(start), gen)
		return
	}
	unlock := w.lockImage(f.Digest.String())
	rctx, cancel := context.WithTimeout(ctx, w.cfg.RebaseTimeout)
	res, err := shared.Rebase(rctx, req)
	cancel()
	unlock()
	w.finish(b, key, attempt, res, err, time.Since(start), gen)
}

// reidentify finds key's base again; done is true when nothing is left
// to do (the outcome is recorded).
func (w *Watcher) reidentify(ctx context.Context, b *base, key string, attempt int) (scan.Finding, bool) {
	repo, tag := splitRef(key)
	sc, gen, err := w.scannerOf(ctx, b.g)
	var f scan.Finding
	var keep bool
	if err == nil {
		f, keep, err = sc.Image(ctx, repo, tag)
	}
	switch {
	case errors.Is(err, engine.ErrNotFound):
		w.forget(key)
		w.final(key, b, ImageResult{Image: key, Action: OutcomeGone, Error: oneLine(err), Attempts: attempt})
		return f, true
	case err != nil:
		w.finish(b, key, attempt, nil, err, 0, gen)
		return f, true
	case !keep || f.Reason != "":
		w.forget(key)
		w.final(key, b, ImageResult{Image: key, Action: OutcomeGone, Error: "no longer on a watched base", Attempts: attempt})
		return f, true
	}
	w.mu.Lock()
	nb := w.place(b.g, f)
	w.mu.Unlock()
	if nb != b || !f.Stale {
		// Moved to another base, or already up to date (someone else
		// rebased it): nothing to do for this round.
		w.m.rebases.WithLabelValues(b.ref, OutcomeUpToDate).Inc()
		w.log.Info(OutcomeUpToDate, "image", key, "base", f.To, "digest", f.Digest.String(), "attempt", attempt, "reason", "found up to date when read again")
		w.final(key, b, ImageResult{Image: key, Action: OutcomeUpToDate, Before: f.Digest, After: f.Digest, Attempts: attempt})
		if nb != nil && f.Stale {
			w.trigger(ctx, nb, "push", false)
		}
		return f, true
	}
	return f, false
}

// request is the single rebase of f onto b: from the version of the base
// f is on when known (else found from the image, as a single rebase does),
// to b's tag, in place, with the lost-update check.
func (w *Watcher) request(client *registry.Client, b *base, f scan.Finding) (engine.Request, error) {
	var req engine.Request
	var err error
	if req.Image, err = client.Parse(f.Image, "", true); err != nil {
		return req, err
	}
	if f.From != "" {
		if req.From, err = client.Parse(f.From, "", false); err != nil {
			return req, err
		}
	}
	if req.To, err = client.Parse(b.ref, "", false); err != nil {
		return req, err
	}
	req.Target = req.Image
	req.Detect = engine.Detect{Label: w.cfg.Label, Resolve: func(ref string, relative bool) (engine.Location, error) {
		reg := ""
		if relative {
			reg = b.g.reg.Host
		}
		return client.Parse(ref, reg, false)
	}}
	req.AllowCopy, req.Strict = w.cfg.AllowCopy, w.cfg.Strict
	if w.cfg.BackupTag != "" && req.Image.Tag != "" {
		req.BackupTag = strings.ReplaceAll(w.cfg.BackupTag, "{tag}", req.Image.Tag)
	}
	return req, nil
}

// finish records an attempt: success, a retry after backoff, or the final
// failure.
func (w *Watcher) finish(b *base, key string, attempt int, res *engine.Result, err error, took time.Duration, gen int) {
	if took > 0 {
		w.m.duration.WithLabelValues(b.ref).Observe(took.Seconds())
	}
	if err == nil {
		action := OutcomeRebased
		if res.Action == engine.UpToDate {
			action = OutcomeUpToDate
		}
		w.mu.Lock()
		if d := w.deps[key]; d != nil && d.b == b {
			d.f.Digest, d.f.Layers, d.f.DiffIDs, d.stale, d.reidentify, d.dropFrom = res.After, nil, nil, false, false, false
			d.on = res.NewBase.Digest
			if res.NewBase.Digest != (v1.Hash{}) {
				repo, _ := splitRef(b.ref)
				d.f.From = repo + "@" + res.NewBase.Digest.String()
			}
			w.gauges(b)
		}
		if action == OutcomeRebased {
			w.written[res.After.String()] = time.Now()
		}
		w.mu.Unlock()
		w.m.rebases.WithLabelValues(b.ref, action).Inc()
		w.log.Info(action, "image", key, "base", b.ref, "before", res.Before.String(), "after", res.After.String(),
			"newBase", res.NewBase.Digest.String(), "attempt", attempt, "seconds", took.Seconds())
		w.final(key, b, ImageResult{Image: key, Action: action, Before: res.Before, After: res.After, Attempts: attempt})
		return
	}
	w.renewClient(gen, err)
	msg := oneLine(err)
	w.mu.Lock()
	d := w.deps[key]
	if d != nil {
		d.reidentify = true
		d.dropFrom = errors.Is(err, engine.ErrNotFound)
	}
	w.mu.Unlock()
	switch {
	case d == nil:
		w.final(key, b, ImageResult{Image: key, Action: OutcomeGone, Error: msg, Attempts: attempt})
	case permanent(err) && attempt > 1:
		w.m.rebases.WithLabelValues(b.ref, OutcomeRefused).Inc()
		w.log.Warn(OutcomeRefused, "image", key, "base", b.ref, "attempt", attempt, "error", msg)
		w.final(key, b, ImageResult{Image: key, Action: OutcomeRefused, Error: msg, Attempts: attempt})
	case permanent(err):
		// The index may be out of date (the image was pushed again): try
		// once more at once, with its base found again.
		w.m.rebases.WithLabelValues(b.ref, OutcomeRetried).Inc()
		w.log.Info(OutcomeRetried, "image", key, "base", b.ref, "attempt", attempt, "error", msg, "retryIn", "0s")
		w.q.add(key)
	case attempt >= w.cfg.Attempts:
		w.m.rebases.WithLabelValues(b.ref, OutcomeFailed).Inc()
		w.log.Error(OutcomeFailed, "image", key, "base", b.ref, "attempt", attempt, "error", msg)
		w.final(key, b, ImageResult{Image: key, Action: OutcomeFailed, Error: msg, Attempts: attempt})
	default:
		wait := jitter(min(w.cfg.RetryBackoff<<(attempt-1), 2*time.Minute))
		w.m.rebases.WithLabelValues(b.ref, OutcomeRetried).Inc()
		w.log.Warn(OutcomeRetried, "image", key, "base", b.ref, "attempt", attempt, "error", msg, "retryIn", wait.String())
		w.q.addAfter(key, wait)
	}
}

// permanent tells the failures another attempt cannot fix: the rebase
// cannot be done as asked.
func permanent(err error) bool {
	var (
		re *rebase.RefusedError
		me *manifest.UnsupportedError
		te *engine.TargetExistsError
		mr *registry.MountRefusedError
	)
	return errors.As(err, &re) || errors.As(err, &me) || errors.As(err, &te) || errors.As(err, &mr)
}

// final records key's final outcome in its round, if any; the round ends
// with its last image.
func (w *Watcher) final(key string, b *base, res ImageResult) {
	if res.Action == OutcomeGone {
		w.log.Info(OutcomeGone, "image", key, "reason", res.Error)
		if b != nil {
			w.m.rebases.WithLabelValues(b.ref, OutcomeGone).Inc()
		}
	}
	w.mu.Lock()
	if d := w.deps[key]; d != nil {
		d.attempts = 0
	}
	r := w.inRound[key]
	if r == nil || !r.pending[key] {
		w.mu.Unlock()
		return
	}
	delete(w.inRound, key)
	delete(r.pending, key)
	r.images = append(r.images, res)
	if len(r.pending) > 0 {
		w.mu.Unlock()
		return
	}
	rb := r.b
	rb.round = nil
	again := rb.pending
	rb.pending = ""
	w.mu.Unlock()
	w.endRound(r, false)
	if again != "" {
		w.trigger(w.runCtx, rb, again, true)
	}
}

// endRound summarises a round: a log line, the metric, OnRound, Notify.
func (w *Watcher) endRound(r *round, interrupted bool) {
	s := Summary{Version: version.String(), Round: r.id, Registry: r.b.g.reg.Host, Base: r.b.ref, Digest: r.version.Digest, Previous: r.previous,
		Trigger: r.trigger, Started: r.started, Seconds: time.Since(r.started).Seconds(), Images: r.images,
		Counts: map[string]int{}, Interrupted: interrupted}
	slices.SortFunc(s.Images, func(a, b ImageResult) int { return strings.Compare(a.Image, b.Image) })
	for _, im := range s.Images {
		s.Counts[im.Action]++
	}
	if !interrupted {
		w.m.rounds.WithLabelValues(r.b.ref).Observe(s.Seconds)
	}
	attrs := []any{"round", s.Round, "base", s.Base, "digest", s.Digest.String(), "trigger", s.Trigger, "images", len(s.Images), "seconds", s.Seconds}
	for _, o := range []string{OutcomeRebased, OutcomeUpToDate, OutcomeRefused, OutcomeFailed, OutcomeGone, notStarted} {
		if n := s.Counts[o]; n > 0 {
			attrs = append(attrs, o, n)
		}
	}
	if interrupted {
		w.log.Warn("round interrupted", attrs...)
	} else {
		w.log.Info("round finished", attrs...)
	}
	if w.cfg.OnRound != nil {
		w.cfg.OnRound(s)
	}
	if w.cfg.Notify != "" {
		w.bg.Go(func() { w.notify(s) })
	}
}

// notStarted is the action of the images of a round the watcher stopped
// before they were done.
const notStarted = "interrupted"

// interruptRounds ends the rounds still open when the watcher stops.
func (w *Watcher) interruptRounds() {
	w.mu.Lock()
	var open []*round
	for _, g := range w.groups {
		for _, b := range g.bases {
			if r := b.round; r != nil {
				for k := range r.pending {
					r.images = append(r.images, ImageResult{Image: k, Action: notStarted})
					delete(w.inRound, k)
				}
				r.pending = nil
				b.round = nil
				open = append(open, r)
			}
		}
	}
	w.mu.Unlock()
	for _, r := range open {
		w.endRound(r, true)
	}
}
