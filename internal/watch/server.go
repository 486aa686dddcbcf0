package watch

import (
	"crypto/subtle"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Handler serves POST /events, GET /healthz and GET /metrics.
func (w *Watcher) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /events", w.events)
	mux.HandleFunc("GET /healthz", w.healthz)
	mux.Handle("GET /metrics", w.m.handler())
	return mux
}

// events serves POST /events.
func (w *Watcher) events(rw http.ResponseWriter, r *http.Request) {
	if w.draining.Load() {
		http.Error(rw, "draining", http.StatusServiceUnavailable)
		return
	}
	if w.cfg.Secret != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(w.cfg.Secret)) != 1 {
			w.m.events.WithLabelValues("unknown", "unauthorized").Inc()
			w.log.Warn("event refused", "remote", r.RemoteAddr, "reason", "missing or wrong Authorization: Bearer")
			http.Error(rw, "unauthorized", http.StatusUnauthorized)
			return
		}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		http.Error(rw, "reading the body: "+err.Error(), http.StatusBadRequest)
		return
	}
	ev, err := ParseEvents(body)
	if err != nil {
		w.m.events.WithLabelValues("unknown", "invalid").Inc()
		w.log.Warn("event refused", "remote", r.RemoteAddr, "reason", oneLine(err))
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	if ev.Skipped > 0 {
		w.m.events.WithLabelValues(ev.Source, "ignored").Add(float64(ev.Skipped))
	}
	for _, p := range ev.Pushes {
		w.onPush(ev.Source, p)
	}
	rw.WriteHeader(http.StatusAccepted)
}

// onPush acts on a pushed tag: a watched base moved (a round), our own
// write (nothing), or an image to index (in the background).
func (w *Watcher) onPush(source string, p Push) {
	ctx := w.runCtx
	groups := w.groupsFor(p.Host)
	result := "ignored"
	for _, g := range groups {
		ref := g.reg.Host + "/" + p.Repository + ":" + p.Tag
		var hit *base
		for _, b := range g.bases {
			if b.ref == ref {
				hit = b
			}
		}
		if hit != nil {
			result = "base"
			w.log.Info("base moved", "base", hit.ref, "digest", p.Digest, "trigger", "event", "source", source)
			w.wantVersion(hit, p.Digest)
			w.trigger(ctx, hit, "event", false)
			continue
		}
		w.mu.Lock()
		// Our own writes come back as events: by digest once written, and
		// while the image is in a round (its rebase reads it again).
		_, ours := w.written[p.Digest]
		ours = ours || w.inRound[ref] != nil
		w.pruneWritten()
		known := g.repos[g.reg.Host+"/"+p.Repository]
		indexed := g.scanner != nil
		w.mu.Unlock()
		if ours || !indexed || len(g.reg.Repos) > 0 && !slices.Contains(g.reg.Repos, p.Repository) {
			continue
		}
		result = "image"
		if !known {
			w.background(func() { w.indexRepo(ctx, g, p.Repository) })
		} else {
			w.background(func() { w.indexImage(ctx, g, p.Repository, p.Tag) })
		}
	}
	w.m.events.WithLabelValues(source, result).Inc()
}

// groupsFor returns the registries an event's host names: that one if it
// is watched, else all (the host a pusher uses may not be the one the
// watcher uses).
func (w *Watcher) groupsFor(host string) []*group {
	for _, g := range w.groups {
		if g.reg.Host == host {
			return []*group{g}
		}
	}
	return w.groups
}

// background runs f, at most Jobs at a time, until the watcher stops.
func (w *Watcher) background(f func()) {
	w.bg.Go(func() {
		w.bgSem <- struct{}{}
		defer func() { <-w.bgSem }()
		if !w.draining.Load() {
			f()
		}
	})
}

// pruneWritten forgets the digests written more than ten minutes ago
// (w.mu held).
func (w *Watcher) pruneWritten() {
	if len(w.written) < 1024 {
		return
	}
	for d, t := range w.written {
		if time.Since(t) > 10*time.Minute {
			delete(w.written, d)
		}
	}
}

// healthz serves GET /healthz: 200 while running (with whether every
// index is built), 503 while draining.
func (w *Watcher) healthz(rw http.ResponseWriter, _ *http.Request) {
	status, code := "ok", http.StatusOK
	if w.draining.Load() {
		status, code = "draining", http.StatusServiceUnavailable
	}
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	json.NewEncoder(rw).Encode(map[string]any{"status": status, "indexed": int(w.indexed.Load()) == len(w.groups)})
}
