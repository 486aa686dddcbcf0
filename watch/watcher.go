// Package watch keeps the images of registries on the current version of
// their bases, without a person: a long-running process that notices a
// base tag moving (a registry notification, or polling) and rebases every
// image built on it.
//
// The watcher keeps, in memory, an index of each base's dependents (the
// images on it, found as package scan finds them: layers, annotations,
// label), built at start and refreshed on an interval and when a push
// names a repository it does not know. When a base moves, a round rebases
// its stale dependents, Jobs at a time, each as a single rebase would
// (engine.Shared, the lost-update check on every tag); a burst of events
// makes one round, one image is never rebased by two workers at once,
// failures are retried with backoff, one image's failure never stops the
// others. Everything it needs is in the registries: after a restart it
// builds the index again and rebases whatever is stale.
package watch

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/engine"
	"github.com/image-rebase/image-rebase/manifest"
	"github.com/image-rebase/image-rebase/rebase"
	"github.com/image-rebase/image-rebase/registry"
	"github.com/image-rebase/image-rebase/scan"
)

// Registry is one registry whose images are kept on their bases.
type Registry struct {
	// Host is "host[:port]"; names without a host are in it.
	Host string
	// Bases name the watched base tags ("base:stable", or a full
	// reference to a base in another registry).
	Bases []string
	// Repos limits the dependents to these repositories; empty: every
	// repository of the catalog.
	Repos []string
}

// Config is what a Watcher watches and how.
type Config struct {
	Registries []Registry
	// NewClient returns a registry client (credentials, TLS, plain HTTP
	// registries). A new one replaces the current one when a registry
	// could not be connected to.
	NewClient func() *registry.Client
	// Jobs is the number of rebases at once (default 32).
	Jobs int
	// Poll, when positive, checks every base tag with one HEAD request
	// this often, ±10% (jitter).
	Poll time.Duration
	// Refresh is how often the dependents index is built again (default
	// 10m).
	Refresh time.Duration
	// Settle is how long a round waits after the first event of a burst
	// before it starts (default 200ms).
	Settle time.Duration
	// Label names the label that names an image's base (default FROM).
	Label string
	// AllowCopy, Strict and BackupTag are a single rebase's options.
	AllowCopy bool
	Strict    bool
	BackupTag string
	// Attempts is the number of attempts per image and round (default 5);
	// RetryBackoff the first wait between them, doubling (default 1s, at
	// most 2m, with jitter).
	Attempts     int
	RetryBackoff time.Duration
	// RebaseTimeout bounds one attempt (default 5m).
	RebaseTimeout time.Duration
	// Secret, when set, is the bearer token POST /events requires.
	Secret string
	// Notify, when set, receives a JSON Summary of each round (POST).
	Notify string
	// NotifyClient posts to Notify (default: a client with a 10s timeout).
	NotifyClient *http.Client
	// DrainTimeout bounds the rebases in flight after the context of Run
	// ends (default 25s); those still running then are cancelled (a
	// cancelled rebase writes nothing).
	DrainTimeout time.Duration
	// Logger receives one line per action (default: discard).
	Logger *slog.Logger
	// OnRound, when set, is called with each round's summary.
	OnRound func(Summary)
}

// Watcher keeps dependents on their bases. Create it with New, run it
// with Run.
type Watcher struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics
	q      *queue
	groups []*group

	clientMu  sync.Mutex
	client    *registry.Client
	clientGen int

	// mu guards the index (bases' dependents and versions), rounds and
	// the image → dependent map.
	mu      sync.Mutex
	deps    map[string]*dep   // image reference → its entry
	inRound map[string]*round // image reference → the round waiting for it
	written map[string]time.Time
	roundN  int

	draining atomic.Bool
	runCtx   context.Context // Run's: ends when the watcher stops accepting work
	indexed  atomic.Int32    // groups whose index is built
	bg       sync.WaitGroup
	bgSem    chan struct{}
}

// group is one Registry: its bases and the scanner of its last index.
type group struct {
	reg     Registry
	bases   []*base
	scanner *scan.Scanner
	gen     int             // the client generation of scanner
	repos   map[string]bool // repositories known, "host/repo"
	busy    bool            // an index build is running
}

// base is one watched base tag and its dependents.
type base struct {
	g   *group
	ref string // as the findings' To: "host/base:stable"
	tag string // "" for a base given by digest (never moves)

	version  scan.BaseVersion // current, as last read
	known    []scan.Candidate // versions seen, most recent last
	deps     map[string]*dep
	round    *round
	settling bool
	// want is the digest an event or a poll saw the tag name, at
	// wantSince: a registry may tell of a push before the tag is moved.
	want      v1.Hash
	wantSince time.Time
	pending   string // a trigger that came during a round
	retryWait time.Duration
}

// dep is one dependent image.
type dep struct {
	b *base
	f scan.Finding
	// on is the digest of the base version it was last put on, when its
	// layers are not known (after a rebase).
	on       v1.Hash
	stale    bool
	attempts int
	// reidentify: find the image's base again before the next attempt
	// (after a failure, the index may be out of date).
	reidentify bool
	// dropFrom: a document was not found; the next attempt finds the old
	// base from the image (the version the index names may be deleted).
	dropFrom bool
}

// round is the rebase of a base's stale dependents after it moved.
type round struct {
	id       int
	b        *base
	trigger  string
	version  scan.BaseVersion
	previous v1.Hash
	started  time.Time
	shared   *engine.Shared
	pending  map[string]bool
	images   []ImageResult
}

// Summary is a finished round, as logged, posted to Config.Notify and
// passed to Config.OnRound.
type Summary struct {
	Round    int    `json:"round"`
	Registry string `json:"registry"`
	Base     string `json:"base"`
	// Digest is the version of the base the round rebased onto;
	// Previous the one before it, when known.
	Digest   v1.Hash `json:"digest"`
	Previous v1.Hash `json:"previous,omitzero"`
	// Trigger says what started the round: event, poll, index (the
	// index found stale images: at start, on its interval, or for a new
	// repository), push (a stale dependent was pushed).
	Trigger string        `json:"trigger"`
	Started time.Time     `json:"started"`
	Seconds float64       `json:"seconds"`
	Images  []ImageResult `json:"images"`
	// Counts holds the number of images per final outcome.
	Counts map[string]int `json:"counts"`
	// Interrupted is true when the watcher stopped before every image was
	// done; those not done are "interrupted".
	Interrupted bool `json:"interrupted,omitempty"`
}

// ImageResult is one image's final outcome in a round.
type ImageResult struct {
	Image    string  `json:"image"`
	Action   string  `json:"action"`
	Before   v1.Hash `json:"before,omitzero"`
	After    v1.Hash `json:"after,omitzero"`
	Error    string  `json:"error,omitempty"`
	Attempts int     `json:"attempts"`
}

// New checks cfg and returns a Watcher.
func New(cfg Config) (*Watcher, error) {
	if len(cfg.Registries) == 0 {
		return nil, errors.New("no registry to watch")
	}
	if cfg.NewClient == nil {
		return nil, errors.New("no registry client")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.Refresh, 10*time.Minute)
	def(&cfg.Settle, 200*time.Millisecond)
	def(&cfg.RetryBackoff, time.Second)
	def(&cfg.RebaseTimeout, 5*time.Minute)
	def(&cfg.DrainTimeout, 25*time.Second)
	if cfg.Jobs < 1 {
		cfg.Jobs = 32
	}
	if cfg.Attempts < 1 {
		cfg.Attempts = 5
	}
	if cfg.NotifyClient == nil {
		cfg.NotifyClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	w := &Watcher{cfg: cfg, log: cfg.Logger, q: newQueue(), deps: map[string]*dep{}, inRound: map[string]*round{},
		written: map[string]time.Time{}, bgSem: make(chan struct{}, cfg.Jobs), runCtx: context.Background()}
	w.m = newMetrics(func() float64 { return float64(w.q.length()) })
	w.client = cfg.NewClient()
	hosts := map[string]bool{}
	for _, r := range cfg.Registries {
		if hosts[r.Host] {
			return nil, fmt.Errorf("registry %s is given twice", r.Host)
		}
		hosts[r.Host] = true
		if len(r.Bases) == 0 {
			return nil, fmt.Errorf("registry %s: no base to watch", r.Host)
		}
		// The bases and repositories are parsed now: a bad one is an
		// error before anything is read.
		sc, err := scan.New(w.client, scan.Options{Registry: r.Host, Bases: r.Bases, Repos: r.Repos})
		if err != nil {
			return nil, fmt.Errorf("registry %s: %w", r.Host, err)
		}
		g := &group{reg: r, repos: map[string]bool{}}
		refs := sc.BaseRefs()
		for i, ref := range refs {
			if slices.Contains(refs[:i], ref) {
				return nil, fmt.Errorf("registry %s: base %s is given twice", r.Host, ref)
			}
			b := &base{g: g, ref: ref, deps: map[string]*dep{}}
			if !strings.Contains(ref, "@") {
				b.tag = ref[strings.LastIndexByte(ref, ':')+1:]
			}
			g.bases = append(g.bases, b)
			w.m.stale.WithLabelValues(ref).Set(0)
			w.m.deps.WithLabelValues(ref).Set(0)
		}
		w.groups = append(w.groups, g)
	}
	return w, nil
}

// Handler serves POST /events, GET /healthz and GET /metrics.
func (w *Watcher) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /events", w.events)
	mux.HandleFunc("GET /healthz", w.healthz)
	mux.Handle("GET /metrics", w.m.handler())
	return mux
}

// Run serves Handler on ln and keeps the dependents on their bases until
// ctx ends; then it drains: no new work is accepted (/events and /healthz
// answer 503), the rebases in flight finish (within DrainTimeout), and
// the rounds they belong to are summarised.
func (w *Watcher) Run(ctx context.Context, ln net.Listener) error {
	w.runCtx = ctx
	srv := &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	w.log.Info("watching", "listen", ln.Addr().String(), "registries", len(w.groups), "jobs", w.cfg.Jobs, "poll", w.cfg.Poll.String())

	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var workers sync.WaitGroup
	for range w.cfg.Jobs {
		workers.Go(func() {
			for {
				key, ok := w.q.get()
				if !ok {
					return
				}
				w.process(work, key)
				w.q.done(key)
			}
		})
	}
	var loops sync.WaitGroup
	for _, g := range w.groups {
		loops.Go(func() { w.indexLoop(ctx, g) })
		if w.cfg.Poll > 0 {
			for _, b := range g.bases {
				if b.tag != "" {
					loops.Go(func() { w.pollLoop(ctx, b) })
				}
			}
		}
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		err = fmt.Errorf("serving %s: %w", ln.Addr(), err)
	}
	w.draining.Store(true)
	dropped := w.q.shutdown()
	deadline := time.Now().Add(w.cfg.DrainTimeout)
	w.log.Info("draining: finishing the rebases in flight", "notStarted", len(dropped), "deadline", w.cfg.DrainTimeout.String())
	done := make(chan struct{})
	go func() { workers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Until(deadline)):
		w.log.Warn("drain deadline reached: cancelling the rebases in flight (nothing half-written)")
		cancelWork()
		<-done
	}
	loops.Wait()
	w.interruptRounds()
	bgDone := make(chan struct{})
	go func() { w.bg.Wait(); close(bgDone) }()
	select {
	case <-bgDone:
	case <-time.After(max(time.Until(deadline), time.Second)):
	}
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	srv.Shutdown(shutCtx)
	w.log.Info("stopped")
	return err
}

// currentClient returns the registry client and its generation.
func (w *Watcher) currentClient() (*registry.Client, int) {
	w.clientMu.Lock()
	defer w.clientMu.Unlock()
	return w.client, w.clientGen
}

// renewClient replaces the client of generation gen when err says a
// registry could not be connected to: a client keeps such a failure, and
// a long-running process must try again.
func (w *Watcher) renewClient(gen int, err error) {
	var ae *registry.AccessError
	if !errors.As(err, &ae) || ae.Op != "connecting to" {
		return
	}
	w.clientMu.Lock()
	defer w.clientMu.Unlock()
	if w.clientGen == gen {
		w.client, w.clientGen = w.cfg.NewClient(), gen+1
		w.log.Info("new registry connection", "reason", oneLine(err))
	}
}

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
		if d.stale {
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
		if d.f.Layers != nil && rebase.HasLayerPrefix(d.f.Layers, c.Layers) || d.f.Layers == nil && d.on == c.Digest {
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
	rctx, cancel := context.WithTimeout(ctx, w.cfg.RebaseTimeout)
	res, err := shared.Rebase(rctx, req)
	cancel()
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
			d.f.Digest, d.f.Layers, d.stale, d.reidentify, d.dropFrom = res.After, nil, false, false, false
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

// final records key's final outcome in its round, if any; the round ends
// with its last image.
func (w *Watcher) final(key string, b *base, res ImageResult) {
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
	s := Summary{Round: r.id, Registry: r.b.g.reg.Host, Base: r.b.ref, Digest: r.version.Digest, Previous: r.previous,
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

// notify posts s to Config.Notify, trying three times.
func (w *Watcher) notify(s Summary) {
	body, err := json.Marshal(s)
	if err != nil {
		w.log.Error("notify failed", "round", s.Round, "error", err.Error())
		return
	}
	wait := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err = w.post(body)
		if err == nil {
			w.log.Info("notified", "round", s.Round, "url", redact(w.cfg.Notify))
			return
		}
		if attempt == 3 {
			w.log.Error("notify failed", "round", s.Round, "url", redact(w.cfg.Notify), "error", oneLine(err))
			return
		}
		time.Sleep(jitter(wait))
		wait *= 2
	}
}

func (w *Watcher) post(body []byte) error {
	req, err := http.NewRequest(http.MethodPost, w.cfg.Notify, strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "image-rebase-watch")
	resp, err := w.cfg.NotifyClient.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s", redact(w.cfg.Notify), resp.Status)
	}
	return nil
}

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
		_, ours := w.written[p.Digest]
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

// indexRepo indexes a repository a push named that the index does not
// know.
func (w *Watcher) indexRepo(ctx context.Context, g *group, repo string) {
	sc, gen, err := w.scannerOf(ctx, g)
	var found []scan.Finding
	if err == nil {
		found, err = sc.WalkRepos(ctx, []string{repo})
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
	w.log.Info("repository indexed", "repository", g.reg.Host+"/"+repo, "images", len(found))
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

// splitRef splits "host/repo:tag" into "host/repo" and "tag".
func splitRef(ref string) (string, string) {
	i := strings.LastIndexByte(ref, ':')
	if i < 0 || i < strings.LastIndexByte(ref, '/') {
		return ref, "latest"
	}
	return ref[:i], ref[i+1:]
}

// jitter returns d ± 20%.
func jitter(d time.Duration) time.Duration { return jitterFrac(d, 0.2) }

func jitterFrac(d time.Duration, f float64) time.Duration {
	return time.Duration(float64(d) * (1 - f + 2*f*rand.Float64()))
}

// redact drops a URL's user information and query, which may hold secrets.
func redact(s string) string {
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	if i := strings.Index(s, "://"); i >= 0 {
		if j := strings.IndexByte(s[i+3:], '@'); j >= 0 && !strings.Contains(s[i+3:i+3+j], "/") {
			s = s[:i+3] + s[i+4+j:]
		}
	}
	return s
}

// oneLine folds a (possibly joined) error into a single line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}
