package engine_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/rebase"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// batchFixture pushes base:1 and base:2 (two layers each) and, per repo,
// images on base:1 (one layer of their own, distinct per image); it returns
// the references "repo:tag" in push order.
func batchFixture(t *testing.T, reg *regtest.Registry, repos map[string]int) (v1.Image, []string) {
	t.Helper()
	base := func(v string) v1.Image {
		img, err := testimage.Build(nil, testimage.Linux,
			testimage.Copy("ADD os", map[string]string{"etc/os": "os " + v}),
			testimage.Copy("COPY lib", map[string]string{"lib/c": "libc " + v}),
			testimage.Env("BASE="+v))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	b1 := base("1")
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", base("2"))
	var refs []string
	for repo, n := range repos {
		for i := range n {
			ref := fmt.Sprintf("%s:%d", repo, i)
			app, err := testimage.Build(b1, testimage.Linux,
				testimage.Copy("COPY app", map[string]string{"app/bin": ref}),
				testimage.Cmd("/app/bin"))
			if err != nil {
				t.Fatal(err)
			}
			reg.Push(t, ref, app)
			refs = append(refs, ref)
		}
	}
	return b1, refs
}

type batchRun struct {
	results map[string]*engine.Result
	errs    map[string]error
}

func runBatch(t *testing.T, host string, s *engine.Shared, refs []string, from, to string, dryRun bool) batchRun {
	t.Helper()
	c := registry.New(registry.Options{Insecure: []string{host}})
	parse := func(ref string, write bool) engine.Location {
		l, err := c.Parse(ref, host, write)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	var reqs []engine.Request
	for _, ref := range refs {
		req := engine.Request{Image: parse(ref, !dryRun), From: parse(from, false), To: parse(to, false), DryRun: dryRun}
		req.Target = req.Image
		reqs = append(reqs, req)
	}
	out := batchRun{results: map[string]*engine.Result{}, errs: map[string]error{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, req := range reqs {
		wg.Go(func() {
			res, err := s.Rebase(context.Background(), req)
			mu.Lock()
			defer mu.Unlock()
			out.results[refs[i]], out.errs[refs[i]] = res, err
		})
	}
	wg.Wait()
	return out
}

func TestBatchSharesBasesAndMounts(t *testing.T) {
	reg := regtest.Start(t)
	_, refs := batchFixture(t, reg, map[string]int{"a": 4, "b": 1})
	// One image in the middle is not built on base:1.
	other, err := testimage.Build(nil, testimage.Linux, testimage.Copy("ADD other", map[string]string{"x": "y"}))
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, "a:broken", other)
	refs = append(refs[:2], append([]string{"a:broken"}, refs[2:]...)...)

	before := map[string]v1.Image{}
	for _, ref := range refs {
		before[ref] = reg.Image(t, ref)
	}
	b1, b2 := reg.Image(t, "base:1"), reg.Image(t, "base:2")

	proxy := proxytest.Start(reg.Host)
	defer proxy.Close()
	s := engine.NewShared()
	s.RecheckAfter = time.Hour
	got := runBatch(t, proxy.Host(), s, refs, "base:1", "base:2", false)

	for _, ref := range refs {
		res, err := got.results[ref], got.errs[ref]
		if ref == "a:broken" {
			var re *rebase.RefusedError
			if !errors.As(err, &re) {
				t.Errorf("%s: want a refusal, got %v", ref, err)
			}
			continue
		}
		if err != nil || res.Action != engine.Rebased {
			t.Fatalf("%s: %v %+v", ref, err, res)
		}
		checkRebased(t, reg, ref, before[ref], b1, b2)
	}

	// Count what went through the proxy.
	baseManifests, baseConfigs, mounts, puts := 0, 0, 0, 0
	mountsPerRepo := map[string]int{}
	baseCfg := map[string]bool{}
	for _, b := range []string{"base:1", "base:2"} {
		cd, _ := reg.Image(t, b).ConfigName()
		baseCfg[cd.String()] = true
	}
	for _, e := range proxy.Log() {
		switch {
		case e.Class == "manifest" && strings.HasPrefix(e.Path, "/v2/base/") && e.Method == http.MethodGet:
			baseManifests++
		case e.Class == "blob" && baseCfg[e.Digest]:
			baseConfigs++
		case e.Class == "blob-upload" && e.Method == http.MethodPost && e.Digest != "":
			mounts++
			mountsPerRepo[strings.Split(e.Path, "/")[2]]++
		case e.Class == "manifest" && e.Method == http.MethodPut:
			puts++
		}
	}
	if baseManifests != 2 || baseConfigs != 2 {
		t.Errorf("bases read %d manifests and %d configs for the batch, want 2 and 2", baseManifests, baseConfigs)
	}
	if mountsPerRepo["a"] != 2 || mountsPerRepo["b"] != 2 || mounts != 4 {
		t.Errorf("mounts per repository %v, want the 2 layers of base:2 once per repository", mountsPerRepo)
	}
	if pre, post := tagReads(proxy.Log()); pre != 0 || post != len(refs)-1 {
		t.Errorf("%d tags read before and %d after writing, want none before (read less than RecheckAfter ago) and each after", pre, post)
	}
	if puts != len(refs)-1 {
		t.Errorf("%d manifests written, want %d", puts, len(refs)-1)
	}
	// In all: the bases' 4 documents for the batch (no ping: no
	// credentials are configured); per image, its manifest and config, the
	// config's upload (open and commit), the manifest and the tag read
	// back = 6; the mounts; and for
	// the broken image its 2 reads and the speculative upload opened and
	// cancelled.
	ok := len(refs) - 1
	if want, got := 4+6*ok+mounts+4, proxy.Stats().Requests; got != want {
		t.Errorf("%d requests, want %d (%v)", got, want, proxy.Stats().ByClass)
	}

	// Rerun: everything is up to date, read only; the broken one still fails.
	snap := reg.Snapshot(t)
	proxy.Reset()
	s2 := engine.NewShared()
	got = runBatch(t, proxy.Host(), s2, refs, "base:1", "base:2", false)
	for _, ref := range refs {
		if ref == "a:broken" {
			if got.errs[ref] == nil {
				t.Error("broken image passed on rerun")
			}
			continue
		}
		if got.errs[ref] != nil || got.results[ref].Action != engine.UpToDate {
			t.Errorf("rerun %s: %v %+v", ref, got.errs[ref], got.results[ref])
		}
	}
	// Only reads: one manifest per image and per base (the broken image
	// opens and cancels a config upload, as a single rebase would).
	for _, e := range proxy.Log() {
		if e.Method == http.MethodPut {
			t.Errorf("rerun wrote %s", e.Path)
		}
	}
	if st := proxy.Stats(); st.ByClass["manifest"] != len(refs)+2 {
		t.Errorf("rerun requests %v: want one manifest read per image and base", st.ByClass)
	}
	if after := reg.Snapshot(t); fmt.Sprint(after) != fmt.Sprint(snap) {
		t.Errorf("rerun wrote: %v -> %v", snap, after)
	}
}

func TestBatchRechecksEveryTagByDefault(t *testing.T) {
	reg := regtest.Start(t)
	_, refs := batchFixture(t, reg, map[string]int{"a": 3})
	proxy := proxytest.Start(reg.Host)
	defer proxy.Close()
	got := runBatch(t, proxy.Host(), engine.NewShared(), refs, "base:1", "base:2", false)
	for _, ref := range refs {
		if got.errs[ref] != nil {
			t.Fatal(got.errs[ref])
		}
	}
	if pre, post := tagReads(proxy.Log()); pre != len(refs) || post != len(refs) {
		t.Errorf("%d tags read before and %d after writing with the default RecheckAfter, want %d and %d", pre, post, len(refs), len(refs))
	}
}

// tagReads counts the tag reads (HEAD) of the log that ended before their
// tag's manifest PUT started, and those that started after it ended.
func tagReads(log []proxytest.Entry) (before, after int) {
	puts := map[string]proxytest.Entry{}
	for _, e := range log {
		if e.Class == "manifest" && e.Method == http.MethodPut {
			puts[e.Path] = e
		}
	}
	for _, e := range log {
		p, ok := puts[e.Path]
		if e.Class != "manifest" || e.Method != http.MethodHead || !ok {
			continue
		}
		switch {
		case !e.End.After(p.Start):
			before++
		case !e.Start.Before(p.End):
			after++
		}
	}
	return before, after
}

// checkRebased asserts that ref, which was orig on oldBase, now has
// newBase's layers and diff_ids, then orig's own above oldBase's, as they
// were.
func checkRebased(t *testing.T, reg *regtest.Registry, ref string, orig, oldBase, newBase v1.Image) {
	t.Helper()
	layersOf := func(img v1.Image) ([]v1.Descriptor, []v1.Hash) {
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		return m.Layers, cf.RootFS.DiffIDs
	}
	ol, od := layersOf(orig)
	bl, _ := layersOf(oldBase)
	nl, nd := layersOf(newBase)
	gl, gd := layersOf(reg.Image(t, ref))
	wantL := append(append([]v1.Descriptor{}, nl...), ol[len(bl):]...)
	wantD := append(append([]v1.Hash{}, nd...), od[len(bl):]...)
	if len(gl) != len(wantL) || len(gd) != len(wantD) {
		t.Fatalf("%s has %d layers and %d diff_ids, want %d: the new base's %d and its own %d", ref, len(gl), len(gd), len(wantL), len(nl), len(ol)-len(bl))
	}
	for i := range wantL {
		if gl[i].Digest != wantL[i].Digest || gd[i] != wantD[i] {
			t.Errorf("%s layer %d is %s (diff_id %s), want %s (%s)", ref, i+1, gl[i].Digest, gd[i], wantL[i].Digest, wantD[i])
		}
	}
}

// TestBatchSharedBaseReadIsRetried: the base's manifest, read once for the
// whole batch, gets another full attempt when its first fails (here: five
// 503s in a row, the retry budget of one request); a base that cannot be
// read at all fails every image with the same BaseReadError after two
// attempts, not twenty.
func TestBatchSharedBaseReadIsRetried(t *testing.T) {
	for _, persistent := range []bool{false, true} {
		t.Run(fmt.Sprintf("persistent=%v", persistent), func(t *testing.T) {
			reg := regtest.Start(t)
			_, refs := batchFixture(t, reg, map[string]int{"a": 10, "b": 10})
			var baseReads atomic.Int32
			proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
				if r.Method == http.MethodGet && r.URL.Path == "/v2/base/manifests/2" {
					if n := baseReads.Add(1); persistent || n <= 5 {
						return proxytest.Fault{Status: http.StatusServiceUnavailable}
					}
				}
				return proxytest.Fault{}
			}))
			defer proxy.Close()
			c := registry.New(registry.Options{Insecure: []string{proxy.Host()}, RetryBackoff: time.Millisecond})
			s := engine.NewShared()
			var wg sync.WaitGroup
			errs := make([]error, len(refs))
			for i, ref := range refs {
				parse := func(r string) engine.Location {
					l, err := c.Parse(r, proxy.Host(), true)
					if err != nil {
						t.Fatal(err)
					}
					return l
				}
				req := engine.Request{Image: parse(ref), From: parse("base:1"), To: parse("base:2")}
				req.Target = req.Image
				wg.Go(func() { _, errs[i] = s.Rebase(context.Background(), req) })
			}
			wg.Wait()
			for i, err := range errs {
				var be *engine.BaseReadError
				switch {
				case !persistent && err != nil:
					t.Errorf("%s: %v", refs[i], err)
				case persistent && (!errors.As(err, &be) || be.Ref != proxy.Host()+"/base:2"):
					t.Errorf("%s: %v, want the base read failure", refs[i], err)
				}
			}
			if n := baseReads.Load(); persistent && n != 10 {
				t.Errorf("%d reads of base:2, want 2 attempts of 5", n)
			}
		})
	}
}

// overlapRepo is a registry repository that records how many writes of one
// manifest digest were in flight at once.
type overlapRepo struct {
	engine.WritableRepo
	mu       sync.Mutex
	inFlight map[v1.Hash]int
	max      int
}

func (o *overlapRepo) PutManifest(ctx context.Context, tag string, d v1.Descriptor, raw []byte) error {
	o.mu.Lock()
	o.inFlight[d.Digest]++
	o.max = max(o.max, o.inFlight[d.Digest])
	o.mu.Unlock()
	time.Sleep(20 * time.Millisecond) // a registry's write takes time
	err := o.WritableRepo.PutManifest(ctx, tag, d, raw)
	o.mu.Lock()
	o.inFlight[d.Digest]--
	o.mu.Unlock()
	return err
}

// Tags of one image give one result: a batch writes that manifest one tag
// after the other (Debian's docker-registry failed one of two concurrent
// writes of one manifest with DIGEST_INVALID).
func TestBatchWritesOneManifestOnceAtATime(t *testing.T) {
	reg := regtest.Start(t)
	b1, _ := batchFixture(t, reg, nil)
	app, err := testimage.Build(b1, testimage.Linux, testimage.Copy("COPY app", map[string]string{"app": "same"}))
	if err != nil {
		t.Fatal(err)
	}
	c := registry.New(registry.Options{Insecure: []string{reg.Host}})
	repo := &overlapRepo{inFlight: map[v1.Hash]int{}}
	var reqs []engine.Request
	for i := range 6 {
		tag := fmt.Sprint("t", i)
		reg.Push(t, "app:"+tag, app)
		img, err := c.Parse("app:"+tag, reg.Host, true)
		if err != nil {
			t.Fatal(err)
		}
		if repo.WritableRepo == nil {
			repo.WritableRepo = img.Repo.(engine.WritableRepo)
		}
		img.Repo = repo
		from, _ := c.Parse("base:1", reg.Host, false)
		to, _ := c.Parse("base:2", reg.Host, false)
		reqs = append(reqs, engine.Request{Image: img, Target: img, From: from, To: to})
	}
	s := engine.NewShared()
	var wg sync.WaitGroup
	for _, req := range reqs {
		wg.Go(func() {
			if res, err := s.Rebase(context.Background(), req); err != nil || res.Action != engine.Rebased {
				t.Errorf("%s: %v %+v", req.Image, err, res)
			}
		})
	}
	wg.Wait()
	if repo.max != 1 {
		t.Errorf("%d writes of one manifest in flight at once, want 1", repo.max)
	}
}

// TestRebaseAll: every request is reported once, jobs at a time; once the
// context ends, the requests not started are reported as such and none
// is started.
func TestRebaseAll(t *testing.T) {
	var inFlight, most atomic.Int32
	reg := regtest.Start(t, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") {
				n := inFlight.Add(1)
				defer inFlight.Add(-1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(20 * time.Millisecond)
			}
			h.ServeHTTP(w, r)
		})
	}))
	_, refs := batchFixture(t, reg, map[string]int{"a": 5, "b": 2})
	c := registry.New(registry.Options{Insecure: []string{reg.Host}})
	requests := func() []engine.Request {
		var reqs []engine.Request
		for _, ref := range refs {
			img, err := c.Parse(ref, reg.Host, true)
			if err != nil {
				t.Fatal(err)
			}
			from, _ := c.Parse("base:1", reg.Host, false)
			to, _ := c.Parse("base:2", reg.Host, false)
			reqs = append(reqs, engine.Request{Image: img, Target: img, From: from, To: to})
		}
		return reqs
	}

	reported := map[int]string{}
	engine.NewShared().RebaseAll(context.Background(), requests(), 2, func(i int, res *engine.Result, err error, took time.Duration) {
		if _, twice := reported[i]; twice {
			t.Errorf("request %d reported twice", i)
		}
		reported[i] = fmt.Sprint(err)
		if err != nil || res.Action != engine.Rebased || took <= 0 {
			t.Errorf("%s: %v, %v, %s", refs[i], res, err, took)
		}
	})
	if len(reported) != len(refs) || most.Load() > 2 || most.Load() < 1 {
		t.Errorf("%d of %d reported; at most %d manifest writes at once, want 1 or 2", len(reported), len(refs), most.Load())
	}

	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errors.New("interrupted"))
	before := reg.Snapshot(t)
	n := 0
	engine.NewShared().RebaseAll(ctx, requests(), 4, func(i int, res *engine.Result, err error, _ time.Duration) {
		n++
		if res != nil || err == nil || err.Error() != "not started: interrupted" {
			t.Errorf("%s after the context ended: %v, %v", refs[i], res, err)
		}
	})
	if n != len(refs) || fmt.Sprint(reg.Snapshot(t)) != fmt.Sprint(before) {
		t.Errorf("%d of %d reported; registry %v → %v", n, len(refs), before, reg.Snapshot(t))
	}
}
