package watch_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
	"github.com/image-rebase/image-rebase/internal/version"
	"github.com/image-rebase/image-rebase/internal/watch"
)

const secret = "s3cret-token"

// fixture is a registry, a watcher listening for its notifications, and
// the test's view of the watcher's rounds and logs.
type fixture struct {
	t      *testing.T
	reg    *regtest.Registry
	ln     net.Listener
	url    string
	rounds chan watch.Summary
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
	w      *watch.Watcher
	b      [4]v1.Image // base versions 1..3
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newFixture starts a registry; with events, it sends its notifications
// to the watcher (with the shared secret).
func newFixture(t *testing.T, events bool, opts ...regtest.Option) *fixture {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{t: t, ln: ln, url: "http://" + ln.Addr().String(), rounds: make(chan watch.Summary, 100), logs: &syncBuffer{}}
	if events {
		opts = append(opts, regtest.WithNotifications(fx.url+"/events", http.Header{"Authorization": {"Bearer " + secret}}))
	}
	fx.reg = regtest.Start(t, opts...)
	for v := 1; v <= 3; v++ {
		if fx.b[v], err = testimage.Base(testimage.OCI, fmt.Sprint(v)); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("watcher log:\n%s", fx.logs.String())
		}
	})
	return fx
}

// app builds an application image on b.
func app(t *testing.T, b v1.Image, name string, steps ...testimage.Step) v1.Image {
	t.Helper()
	img, err := testimage.App(b, append(steps, testimage.Copy("COPY app", map[string]string{"app/" + name: name}), testimage.Env("APP="+name))...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// run runs a watcher with cfg (the registry, base:stable, fast retries
// unless set) until the test ends.
func (fx *fixture) run(cfg watch.Config) {
	fx.t.Helper()
	if cfg.Registries == nil {
		cfg.Registries = []watch.Registry{{Host: fx.reg.Host, Bases: []string{"base:stable"}}}
	}
	host := fx.reg.Host
	cfg.NewClient = func() *registry.Client {
		return registry.New(registry.Options{PlainHTTP: []string{host}, Keychain: fx.reg.Keychain(), RetryBackoff: time.Millisecond})
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = 20 * time.Millisecond
	}
	if cfg.Secret == "" {
		cfg.Secret = secret
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(fx.logs, nil))
	cfg.OnRound = func(s watch.Summary) { fx.rounds <- s }
	w, err := watch.New(cfg)
	if err != nil {
		fx.t.Fatal(err)
	}
	fx.w = w
	ctx, cancel := context.WithCancel(context.Background())
	fx.cancel, fx.done = cancel, make(chan error, 1)
	go func() { fx.done <- w.Run(ctx, fx.ln) }()
	fx.t.Cleanup(fx.stop)
}

// start runs a watcher (see run) and waits for its index.
func (fx *fixture) start(cfg watch.Config) {
	fx.t.Helper()
	fx.run(cfg)
	fx.waitIndexed()
}

// stop stops the watcher and waits for Run to return.
func (fx *fixture) stop() {
	if fx.cancel == nil {
		return
	}
	fx.cancel()
	fx.cancel = nil
	select {
	case err := <-fx.done:
		if err != nil {
			fx.t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		fx.t.Error("Run did not return")
	}
}

func (fx *fixture) get(path string) (int, string) {
	fx.t.Helper()
	resp, err := http.Get(fx.url + path)
	if err != nil {
		fx.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (fx *fixture) waitIndexed() {
	fx.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; {
		code, body := fx.get("/healthz")
		if code == http.StatusOK && strings.Contains(body, `"indexed":true`) {
			return
		}
		if time.Now().After(deadline) {
			fx.t.Fatalf("not indexed: %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// round waits for the next round's summary.
func (fx *fixture) round(within time.Duration) watch.Summary {
	fx.t.Helper()
	select {
	case s := <-fx.rounds:
		return s
	case <-time.After(within):
		fx.t.Fatalf("no round within %s", within)
	}
	return watch.Summary{}
}

// noRound checks that no round ends within d.
func (fx *fixture) noRound(d time.Duration) {
	fx.t.Helper()
	select {
	case s := <-fx.rounds:
		fx.t.Fatalf("unexpected round: %+v", s)
	case <-time.After(d):
	}
}

// on reports whether the image ref starts with b's layers.
func (fx *fixture) on(ref string, b v1.Image) bool {
	fx.t.Helper()
	m, err := fx.reg.Image(fx.t, ref).Manifest()
	if err != nil {
		fx.t.Fatal(err)
	}
	bm, err := b.Manifest()
	if err != nil {
		fx.t.Fatal(err)
	}
	if len(m.Layers) < len(bm.Layers) {
		return false
	}
	for i, l := range bm.Layers {
		if m.Layers[i].Digest != l.Digest {
			return false
		}
	}
	return true
}

// metric returns the value of the metric line starting with name{labels}
// on /metrics, or "" when absent.
func (fx *fixture) metric(series string) string {
	fx.t.Helper()
	_, body := fx.get("/metrics")
	for _, l := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			return rest
		}
	}
	return ""
}

// postEvent posts a body to /events with the Authorization header auth.
func (fx *fixture) postEvent(body, auth string) int {
	fx.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, fx.url+"/events", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/vnd.docker.distribution.events.v1+json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fx.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func count(s watch.Summary, action string) int { return s.Counts[action] }

// TestEventRoundRebasesEveryDependent: the registry notifies a push of
// base:stable; every dependent (found by layers, label and annotations)
// moves onto it, nothing else is written, and /metrics tells it.
func TestEventRoundRebasesEveryDependent(t *testing.T) {
	fx := newFixture(t, true)
	reg, b1, b2 := fx.reg, fx.b[1], fx.b[2]
	reg.Push(t, "base:stable", b1)
	reg.Push(t, "base:1.0", b1)
	deps := []string{"app:1", "app:2", "team/svc:1", "labelled:1", "annotated:1"}
	reg.Push(t, "app:1", app(t, b1, "app1"))
	reg.Push(t, "app:2", app(t, b1, "app2"))
	reg.Push(t, "team/svc:1", app(t, b1, "svc"))
	reg.Push(t, "labelled:1", app(t, b1, "labelled", testimage.Label("FROM", "base:stable")))
	reg.Push(t, "annotated:1", app(t, b1, "annotated", testimage.BaseAnnotations(reg.Host+"/base:stable")))
	// On another tag of the base's repository: never moved to stable.
	reg.Push(t, "base:old", fx.b[3])
	reg.Push(t, "pinned:1", app(t, fx.b[3], "pinned"))
	other, _ := testimage.Base(testimage.Docker, "9")
	reg.Push(t, "other:1", other)
	reg.Push(t, "elsewhere:1", app(t, other, "elsewhere"))
	fx.start(watch.Config{})
	if got := fx.metric(`image_rebase_watch_dependent_images{base="` + reg.Host + `/base:stable"}`); got != "5" {
		t.Errorf("dependent_images = %q, want 5", got)
	}
	if got := fx.metric(`image_rebase_watch_stale_images{base="` + reg.Host + `/base:stable"}`); got != "0" {
		t.Errorf("stale_images = %q, want 0", got)
	}
	before := reg.Snapshot(t)

	d2 := reg.Push(t, "base:stable", b2)
	s := fx.round(20 * time.Second)
	if s.Trigger != "event" || s.Digest != d2 || count(s, watch.OutcomeRebased) != 5 || len(s.Images) != 5 {
		t.Fatalf("round %+v: want the 5 dependents rebased onto %s after an event", s, d2)
	}
	for _, d := range deps {
		if !fx.on(d, b2) {
			t.Errorf("%s is not on the new base:stable", d)
		}
	}
	after := reg.Snapshot(t)
	for ref, d := range before {
		changed := after[ref] != d
		want := strings.HasPrefix(ref, "app:") || strings.HasPrefix(ref, "team/") || strings.HasPrefix(ref, "labelled") || strings.HasPrefix(ref, "annotated") || ref == "base:stable"
		if changed != want {
			t.Errorf("%s changed: %v, want %v", ref, changed, want)
		}
	}
	base := `{base="` + reg.Host + `/base:stable"`
	for series, want := range map[string]string{
		`image_rebase_watch_rebases_total` + base + `,outcome="rebased"}`: "5",
		`image_rebase_watch_stale_images` + base + `}`:                    "0",
		`image_rebase_watch_rebase_duration_seconds_count` + base + `}`:   "5",
		`image_rebase_watch_round_duration_seconds_count` + base + `}`:    "1",
	} {
		if got := fx.metric(series); got != want {
			t.Errorf("%s = %q, want %s", series, got, want)
		}
	}
	if got := fx.metric(`image_rebase_watch_events_total{result="base",source="distribution"}`); got == "" || got == "0" {
		t.Errorf("events_total for the base push: %q", got)
	}
	if got := fx.metric(`image_rebase_watch_last_check_timestamp_seconds` + base + `}`); got == "" {
		t.Error("no last_check_timestamp_seconds for the base")
	}
	// The watcher's own writes came back as events: ignored, no new round.
	fx.noRound(time.Second)
	if code, body := fx.get("/healthz"); code != http.StatusOK || !strings.Contains(body, `"status":"ok"`) {
		t.Errorf("/healthz: %d %s", code, body)
	}
	// One JSON log line per action.
	rebased := 0
	for _, l := range strings.Split(strings.TrimSpace(fx.logs.String()), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if v["msg"] == "rebased" {
			rebased++
			if v["image"] == nil || v["before"] == nil || v["after"] == nil {
				t.Errorf("log line %s lacks image, before or after", l)
			}
		}
	}
	if rebased != 5 {
		t.Errorf("%d rebased log lines, want 5", rebased)
	}
}

// TestBurstCoalesces: three pushes of base:stable in a row make one round
// that puts every dependent on the last one, each written once.
func TestBurstCoalesces(t *testing.T) {
	fx := newFixture(t, true)
	reg := fx.reg
	reg.Push(t, "base:stable", fx.b[1])
	for i := range 6 {
		reg.Push(t, fmt.Sprintf("app%d:1", i), app(t, fx.b[1], fmt.Sprint(i)))
	}
	fx.start(watch.Config{Settle: 2 * time.Second})
	reg.Push(t, "base:stable", fx.b[2])
	reg.Push(t, "base:stable", fx.b[3])
	reg.Push(t, "base:stable", fx.b[1])
	d3 := reg.Push(t, "base:stable", fx.b[3])
	s := fx.round(20 * time.Second)
	if s.Digest != d3 || count(s, watch.OutcomeRebased) != 6 {
		t.Fatalf("round %+v: want 6 images rebased onto %s", s, d3)
	}
	for i := range 6 {
		if !fx.on(fmt.Sprintf("app%d:1", i), fx.b[3]) {
			t.Errorf("app%d:1 is not on the last base", i)
		}
	}
	fx.noRound(time.Second)
	if got := fx.metric(`image_rebase_watch_rebases_total{base="` + reg.Host + `/base:stable",outcome="rebased"}`); got != "6" {
		t.Errorf("rebases_total = %s, want 6 (each image written once)", got)
	}
}

// TestPollingOnly: no notifications; the base tag is checked with one
// HEAD request per poll, and a move is followed within a poll interval.
func TestPollingOnly(t *testing.T) {
	var mu sync.Mutex
	var requests []string
	fx := newFixture(t, false, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			requests = append(requests, r.Method+" "+r.URL.Path)
			mu.Unlock()
			h.ServeHTTP(w, r)
		})
	}))
	reg := fx.reg
	reg.Push(t, "base:stable", fx.b[1])
	reg.Push(t, "app:1", app(t, fx.b[1], "app"))
	reg.Push(t, "app:2", app(t, fx.b[1], "app2"))
	fx.start(watch.Config{Poll: 300 * time.Millisecond})
	mu.Lock()
	requests = nil
	mu.Unlock()
	time.Sleep(1500 * time.Millisecond)
	mu.Lock()
	quiet := requests
	mu.Unlock()
	if len(quiet) < 3 {
		t.Errorf("%d requests in 1.5s of polling every 300ms: %v", len(quiet), quiet)
	}
	for _, r := range quiet {
		if r != "HEAD /v2/base/manifests/stable" {
			t.Errorf("while nothing moves, a poll sent %q: want only HEAD of the base tag", r)
		}
	}
	pushed := time.Now()
	d2 := reg.Push(t, "base:stable", fx.b[2])
	s := fx.round(10 * time.Second)
	if s.Trigger != "poll" || s.Digest != d2 || count(s, watch.OutcomeRebased) != 2 {
		t.Fatalf("round %+v", s)
	}
	if took := time.Since(pushed); took > 300*time.Millisecond*11/10+3*time.Second {
		t.Errorf("rebased %s after the push: more than a poll interval and 3s", took)
	}
	if !fx.on("app:1", fx.b[2]) || !fx.on("app:2", fx.b[2]) {
		t.Error("the dependents are not on the new base")
	}
	if got := fx.metric(`image_rebase_watch_polls_total{base="` + reg.Host + `/base:stable",result="changed"}`); got != "1" {
		t.Errorf("polls_total changed = %q, want 1", got)
	}
}

// TestRetriesAndOneBadImage: one image's writes fail for a while (more
// than the registry client's own retries), another's always; the first is
// rebased on a later attempt, the second reported failed, the others are
// rebased, and the round ends.
func TestRetriesAndOneBadImage(t *testing.T) {
	var mu sync.Mutex
	failures := map[string]int{"/v2/flaky/manifests/1": 7, "/v2/broken/manifests/1": 1 << 30}
	fx := newFixture(t, true, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut && strings.Contains(r.UserAgent(), "image-rebase") {
				mu.Lock()
				n := failures[r.URL.Path]
				if n > 0 {
					failures[r.URL.Path] = n - 1
				}
				mu.Unlock()
				if n > 0 {
					http.Error(w, "injected", http.StatusInternalServerError)
					return
				}
			}
			h.ServeHTTP(w, r)
		})
	}))
	reg := fx.reg
	reg.Push(t, "base:stable", fx.b[1])
	for _, r := range []string{"flaky:1", "broken:1", "good:1", "good:2"} {
		reg.Push(t, r, app(t, fx.b[1], r))
	}
	fx.start(watch.Config{Attempts: 3})
	reg.Push(t, "base:stable", fx.b[2])
	s := fx.round(30 * time.Second)
	got := map[string]watch.ImageResult{}
	for _, im := range s.Images {
		got[im.Image[strings.IndexByte(im.Image, '/')+1:]] = im
	}
	if im := got["flaky:1"]; im.Action != watch.OutcomeRebased || im.Attempts != 2 {
		t.Errorf("flaky:1 %+v: want rebased on attempt 2", im)
	}
	if im := got["broken:1"]; im.Action != watch.OutcomeFailed || im.Attempts != 3 || !strings.Contains(im.Error, "500") {
		t.Errorf("broken:1 %+v: want failed after 3 attempts", im)
	}
	for _, r := range []string{"good:1", "good:2"} {
		if got[r].Action != watch.OutcomeRebased || got[r].Attempts != 1 || !fx.on(r, fx.b[2]) {
			t.Errorf("%s %+v: want rebased at once", r, got[r])
		}
	}
	if !fx.on("flaky:1", fx.b[2]) || fx.on("broken:1", fx.b[2]) || !fx.on("broken:1", fx.b[1]) {
		t.Error("flaky:1 must be on the new base, broken:1 untouched on the old one")
	}
	base := `{base="` + reg.Host + `/base:stable",outcome=`
	for outcome, want := range map[string]string{"rebased": "3", "failed": "1", "retried": "3"} {
		if got := fx.metric(`image_rebase_watch_rebases_total` + base + `"` + outcome + `"}`); got != want {
			t.Errorf("rebases_total %s = %q, want %s", outcome, got, want)
		}
	}
	if got := fx.metric(`image_rebase_watch_stale_images{base="` + reg.Host + `/base:stable"}`); got != "1" {
		t.Errorf("stale_images = %q, want 1 (broken:1)", got)
	}
}

// TestDependentPushedDuringARound: while a round runs (a slow registry),
// a new repository and a new tag of a known one are pushed on the old
// base; both are rebased, in the same round.
func TestDependentPushedDuringARound(t *testing.T) {
	slow := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.UserAgent(), "image-rebase") {
				time.Sleep(30 * time.Millisecond)
			}
			h.ServeHTTP(w, r)
		})
	}
	fx := newFixture(t, true, regtest.WithHandler(slow))
	reg := fx.reg
	reg.Push(t, "base:stable", fx.b[1])
	for i := range 12 {
		reg.Push(t, fmt.Sprintf("app:%d", i), app(t, fx.b[1], fmt.Sprint(i)))
	}
	fx.start(watch.Config{Jobs: 2, Settle: 10 * time.Millisecond})
	reg.Push(t, "base:stable", fx.b[2])
	// Wait for the round to start writing, then push.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(fx.logs.String(), `"msg":"rebased"`); {
		if time.Now().After(deadline) {
			t.Fatal("the round did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	reg.Push(t, "late:1", app(t, fx.b[1], "late"))
	reg.Push(t, "app:late", app(t, fx.b[1], "app late"))
	s := fx.round(30 * time.Second)
	if count(s, watch.OutcomeRebased) != 14 {
		// The late ones may have made a round of their own.
		s2 := fx.round(10 * time.Second)
		if count(s, watch.OutcomeRebased)+count(s2, watch.OutcomeRebased) != 14 {
			t.Fatalf("rounds %+v, %+v: want 14 images rebased", s, s2)
		}
	}
	for _, r := range []string{"late:1", "app:late", "app:0", "app:11"} {
		if !fx.on(r, fx.b[2]) {
			t.Errorf("%s is not on the new base", r)
		}
	}
}

// TestOverwrittenDuringItsRebase: a dependent pushed again between the
// watcher's read and its write is not overwritten (the lost-update
// check); the new image is rebased on a later attempt.
func TestOverwrittenDuringItsRebase(t *testing.T) {
	var once sync.Once
	var fx *fixture
	var replacement v1.Image
	fx = newFixture(t, true, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// The watcher's lost-update check of app:1: someone pushes first.
			if r.Method == http.MethodHead && r.URL.Path == "/v2/app/manifests/1" && strings.Contains(r.UserAgent(), "image-rebase") && replacement != nil {
				once.Do(func() { fx.reg.Push(fx.t, "app:1", replacement) })
			}
			h.ServeHTTP(w, r)
		})
	}))
	reg := fx.reg
	reg.Push(t, "base:stable", fx.b[1])
	reg.Push(t, "app:1", app(t, fx.b[1], "first"))
	replacement = app(t, fx.b[1], "second")
	fx.start(watch.Config{})
	reg.Push(t, "base:stable", fx.b[2])
	s := fx.round(20 * time.Second)
	if len(s.Images) != 1 || s.Images[0].Action != watch.OutcomeRebased || s.Images[0].Attempts != 2 {
		t.Fatalf("round %+v: want app:1 rebased on attempt 2", s)
	}
	img := reg.Image(t, "app:1")
	if !fx.on("app:1", fx.b[2]) {
		t.Fatal("app:1 is not on the new base")
	}
	layers, _ := img.Layers()
	files, _ := testimage.Files(layers[len(layers)-1])
	if files["app/second"] != "second" {
		t.Errorf("app:1 is the rebase of the image it replaced: top layers %v", files)
	}
}

// TestRestartRebasesWhatIsStale: the base moved while no watcher ran; at
// start, the dependents that name it (annotation, label) are rebased, the
// one that names nothing on the untagged old version is not found.
func TestRestartRebasesWhatIsStale(t *testing.T) {
	fx := newFixture(t, false)
	reg := fx.reg
	reg.Push(t, "base:stable", fx.b[1])
	reg.Push(t, "annotated:1", app(t, fx.b[1], "a", testimage.BaseAnnotations(reg.Host+"/base:stable")))
	reg.Push(t, "labelled:1", app(t, fx.b[1], "l", testimage.Label("FROM", "base:stable")))
	reg.Push(t, "anonymous:1", app(t, fx.b[1], "n"))
	reg.Push(t, "fresh:1", app(t, fx.b[2], "f"))
	reg.Push(t, "base:stable", fx.b[2])
	fx.start(watch.Config{})
	s := fx.round(20 * time.Second)
	if s.Trigger != "index" || count(s, watch.OutcomeRebased) != 2 || len(s.Images) != 2 {
		t.Fatalf("round %+v: want annotated:1 and labelled:1 rebased at start", s)
	}
	if !fx.on("annotated:1", fx.b[2]) || !fx.on("labelled:1", fx.b[2]) || !fx.on("anonymous:1", fx.b[1]) {
		t.Error("wrong images moved")
	}
	fx.noRound(500 * time.Millisecond)
}

// TestEventsEndpoint: the secret, bad bodies, a Harbor webhook.
func TestEventsEndpoint(t *testing.T) {
	fx := newFixture(t, false)
	reg := fx.reg
	reg.Push(t, "base:stable", fx.b[1])
	reg.Push(t, "app:1", app(t, fx.b[1], "app"))
	fx.start(watch.Config{})
	d2 := reg.Push(t, "base:stable", fx.b[2])
	harbor := fmt.Sprintf(`{"type":"PUSH_ARTIFACT","occur_at":1,"operator":"admin","event_data":{"resources":[{"digest":%q,"tag":"stable","resource_url":"%s/base:stable"}],"repository":{"name":"base","namespace":"","repo_full_name":"base"}}}`, d2, reg.Host)
	if code := fx.postEvent(harbor, ""); code != http.StatusUnauthorized {
		t.Errorf("no Authorization: %d, want 401", code)
	}
	if code := fx.postEvent(harbor, "Bearer wrong"); code != http.StatusUnauthorized {
		t.Errorf("a wrong secret: %d, want 401", code)
	}
	if code := fx.postEvent(`{"hello":1}`, "Bearer "+secret); code != http.StatusBadRequest {
		t.Errorf("a body of neither kind: %d, want 400", code)
	}
	fx.noRound(500 * time.Millisecond)
	if code := fx.postEvent(harbor, "Bearer "+secret); code != http.StatusAccepted {
		t.Fatalf("a Harbor push: %d, want 202", code)
	}
	s := fx.round(10 * time.Second)
	if s.Trigger != "event" || count(s, watch.OutcomeRebased) != 1 || !fx.on("app:1", fx.b[2]) {
		t.Fatalf("round %+v", s)
	}
	for series, want := range map[string]string{
		`image_rebase_watch_events_total{result="unauthorized",source="unknown"}`: "2",
		`image_rebase_watch_events_total{result="invalid",source="unknown"}`:      "1",
		`image_rebase_watch_events_total{result="base",source="harbor"}`:          "1",
	} {
		if got := fx.metric(series); got != want {
			t.Errorf("%s = %q, want %s", series, got, want)
		}
	}
}

// TestNotifyAndDrain: each round is posted to --notify; when the context
// ends in the middle of a slow round, the rebases in flight finish, the
// others are not started, the round is posted as interrupted, Run returns
// and /events refuses work.
func TestNotifyAndDrain(t *testing.T) {
	got := make(chan watch.Summary, 10)
	hook := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var s watch.Summary
		if r.Header.Get("Content-Type") != "application/json" || r.UserAgent() != version.UserAgent() || json.NewDecoder(r.Body).Decode(&s) != nil {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		got <- s
	})}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hook.Serve(hl)
	defer hook.Close()

	var slow sync.Map
	fx := newFixture(t, true, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, ok := slow.Load("on"); ok && r.Method == http.MethodPut {
				time.Sleep(300 * time.Millisecond)
			}
			h.ServeHTTP(w, r)
		})
	}))
	reg := fx.reg
	reg.Push(t, "base:stable", fx.b[1])
	for i := range 3 {
		reg.Push(t, fmt.Sprintf("app:%d", i), app(t, fx.b[1], fmt.Sprint(i)))
	}
	fx.start(watch.Config{Notify: "http://" + hl.Addr().String() + "/hook", Jobs: 1})
	d2 := reg.Push(t, "base:stable", fx.b[2])
	s := <-got
	if s.Version != version.String() || s.Digest != d2 || s.Base != reg.Host+"/base:stable" || s.Counts["rebased"] != 3 || len(s.Images) != 3 || s.Images[0].Before == s.Images[0].After {
		t.Fatalf("posted summary %+v", s)
	}

	for i := 3; i < 8; i++ {
		reg.Push(t, fmt.Sprintf("app:%d", i), app(t, fx.b[2], fmt.Sprint(i)))
	}
	slow.Store("on", true)
	reg.Push(t, "base:stable", fx.b[3])
	for deadline := time.Now().Add(10 * time.Second); strings.Count(fx.logs.String(), `"msg":"round started"`) < 2; {
		if time.Now().After(deadline) {
			t.Fatal("the second round did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the first rebase is in flight
	start := time.Now()
	fx.stop()
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("drain took %s", took)
	}
	select {
	case s = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the interrupted round was not posted")
	}
	if !s.Interrupted || s.Counts["interrupted"] == 0 || s.Counts["rebased"] == 0 || s.Counts["rebased"]+s.Counts["interrupted"] != 8 {
		t.Errorf("interrupted round %+v: want some rebased, the rest interrupted", s.Counts)
	}
	for i := range 8 {
		ref := fmt.Sprintf("app:%d", i)
		if !fx.on(ref, fx.b[3]) && !fx.on(ref, fx.b[2]) && !fx.on(ref, fx.b[1]) {
			t.Errorf("%s is on no base version: half-written?", ref)
		}
	}
	rec := httptest.NewRecorder()
	fx.w.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/events", strings.NewReader(`{"events":[]}`)))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("/events after the drain: %d, want 503", rec.Code)
	}
}

// TestRegistryDownAtStart: the registry answers nothing but 503 when the
// watcher starts, and the watcher indexes once the registry is back. With
// credentials configured the client pings the registry and keeps a failed
// ping, so the watcher makes a new client; without, the client pings
// nothing and keeps no failure: its next requests reach the registry.
func TestRegistryDownAtStart(t *testing.T) {
	for _, credentials := range []bool{true, false} {
		t.Run(fmt.Sprintf("credentials=%v", credentials), func(t *testing.T) {
			var down atomic.Bool
			opts := []regtest.Option{regtest.WithHandler(func(h http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if down.Load() && strings.Contains(r.UserAgent(), "image-rebase") {
						http.Error(w, "down", http.StatusServiceUnavailable)
						return
					}
					h.ServeHTTP(w, r)
				})
			})}
			if credentials {
				opts = append(opts, regtest.WithBasicAuth("watcher", "s3cret"))
			}
			fx := newFixture(t, true, opts...)
			reg := fx.reg
			reg.Push(t, "base:stable", fx.b[1])
			reg.Push(t, "app:1", app(t, fx.b[1], "app"))
			down.Store(true)
			fx.run(watch.Config{})
			seen := `"msg":"index failed"`
			if credentials {
				seen = `"msg":"new registry connection"`
			}
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(fx.logs.String(), seen); {
				if time.Now().After(deadline) {
					t.Fatalf("no %s after the registry failed", seen)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if code, body := fx.get("/healthz"); code != http.StatusOK || !strings.Contains(body, `"indexed":false`) {
				t.Errorf("/healthz while the registry is down: %d %s", code, body)
			}
			down.Store(false)
			fx.waitIndexed()
			reg.Push(t, "base:stable", fx.b[2])
			if s := fx.round(20 * time.Second); count(s, watch.OutcomeRebased) != 1 || !fx.on("app:1", fx.b[2]) {
				t.Fatalf("round %+v", s)
			}
			if got := fx.metric(`image_rebase_watch_index_builds_total{registry="` + reg.Host + `",result="error"}`); got == "" || got == "0" {
				t.Errorf("index_builds_total error = %q", got)
			}
		})
	}
}

// TestTagsOfOneImageOneAtATime: tags naming the same image get the same
// result; their manifest writes never overlap (a registry may fail one of
// two concurrent writes of a blob), and each is rebased at once.
func TestTagsOfOneImageOneAtATime(t *testing.T) {
	var mu sync.Mutex
	inFlight, most := map[string]int{}, 0
	fx := newFixture(t, true, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPut || !strings.Contains(r.URL.Path, "/manifests/") || !strings.Contains(r.UserAgent(), "image-rebase") {
				h.ServeHTTP(w, r)
				return
			}
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			d := string(body) // the same document is the same digest
			mu.Lock()
			inFlight[d]++
			most = max(most, inFlight[d])
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
			h.ServeHTTP(w, r)
			mu.Lock()
			inFlight[d]--
			mu.Unlock()
		})
	}))
	reg := fx.reg
	reg.Push(t, "base:stable", fx.b[1])
	img := app(t, fx.b[1], "same")
	for _, ref := range []string{"app:1", "app:2", "app:latest", "app:stable", "other:1"} {
		reg.Push(t, ref, img)
	}
	reg.Push(t, "app:different", app(t, fx.b[1], "different"))
	fx.start(watch.Config{})
	reg.Push(t, "base:stable", fx.b[2])
	s := fx.round(20 * time.Second)
	if count(s, watch.OutcomeRebased) != 6 {
		t.Fatalf("round %+v", s)
	}
	for _, im := range s.Images {
		if im.Attempts != 1 {
			t.Errorf("%s: %d attempts", im.Image, im.Attempts)
		}
	}
	if most != 1 {
		t.Errorf("%d writes of one manifest at once, want 1", most)
	}
}
