package watch

import (
	"context"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/registry"
)

// pollLoop checks b's tag with one HEAD request every Poll (±10%).
func (w *Watcher) pollLoop(ctx context.Context, b *base) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(jitterFrac(w.cfg.Poll, 0.1)):
		}
		w.poll(ctx, b)
	}
}

func (w *Watcher) poll(ctx context.Context, b *base) {
	client, gen := w.currentClient()
	loc, err := client.Parse(b.ref, "", false)
	var d v1.Hash
	var exists bool
	if err == nil {
		rp, ok := loc.Repo.(*registry.Repo)
		if !ok {
			return
		}
		d, exists, err = rp.Resolve(ctx, b.tag)
		if err == nil && !exists {
			err = fmt.Errorf("%s: no such tag", b.ref)
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			w.renewClient(gen, err)
			w.m.polls.WithLabelValues(b.ref, "error").Inc()
			w.log.Error("poll failed", "base", b.ref, "error", oneLine(err))
		}
		return
	}
	w.m.lastCheck.WithLabelValues(b.ref).Set(float64(time.Now().Unix()))
	w.mu.Lock()
	cur := b.version.Digest
	w.mu.Unlock()
	if cur == (v1.Hash{}) || d == cur {
		// Not indexed yet (the index reads the base), or unchanged.
		w.m.polls.WithLabelValues(b.ref, "unchanged").Inc()
		return
	}
	w.m.polls.WithLabelValues(b.ref, "changed").Inc()
	w.log.Info("base moved", "base", b.ref, "digest", d.String(), "previous", cur.String(), "trigger", "poll")
	w.wantVersion(b, d.String())
	w.trigger(ctx, b, "poll", true)
}
