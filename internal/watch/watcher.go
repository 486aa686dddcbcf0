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

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/scan"
	"github.com/image-rebase/image-rebase/internal/version"
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

	// sameImage serialises the rebases of tags that name the same image.
	sameMu    sync.Mutex
	sameImage map[string]*imageLock

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
	// Version is the version of image-rebase that ran the round.
	Version  string `json:"version"`
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
		written: map[string]time.Time{}, sameImage: map[string]*imageLock{}, bgSem: make(chan struct{}, cfg.Jobs), runCtx: context.Background()}
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

// Run serves Handler on ln and keeps the dependents on their bases until
// ctx ends; then it drains: no new work is accepted (/events and /healthz
// answer 503), the rebases in flight finish (within DrainTimeout), and
// the rounds they belong to are summarised.
func (w *Watcher) Run(ctx context.Context, ln net.Listener) error {
	w.runCtx = ctx
	srv := &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	w.log.Info("watching", "version", version.String(), "listen", ln.Addr().String(), "registries", len(w.groups), "jobs", w.cfg.Jobs, "poll", w.cfg.Poll.String())

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

// imageLock is held while an image (by digest) is rebased under one of
// its tags.
type imageLock struct {
	mu sync.Mutex
	n  int
}

// lockImage waits until no other tag naming the image of digest d is being
// rebased, and returns the unlock. Such tags get the same result: their
// rebases write the same config and manifest, and a registry may fail one
// of two concurrent writes of one blob (Distribution's filesystem storage
// answers DIGEST_INVALID). One after the other, the second finds the
// blobs there.
func (w *Watcher) lockImage(d string) func() {
	w.sameMu.Lock()
	l := w.sameImage[d]
	if l == nil {
		l = &imageLock{}
		w.sameImage[d] = l
	}
	l.n++
	w.sameMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		w.sameMu.Lock()
		if l.n--; l.n == 0 {
			delete(w.sameImage, d)
		}
		w.sameMu.Unlock()
	}
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

// oneLine folds a (possibly joined) error into a single line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}
