package engine_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// requestAt returns a rebase request of host's app:1 from base:1 to the
// given new base, in place, with a fresh client.
func requestAt(t *testing.T, host, to string) engine.Request {
	t.Helper()
	c := registry.New(registry.Options{Insecure: []string{host}, RetryBackoff: time.Millisecond})
	loc := func(s string) engine.Location {
		l, err := c.Parse(s, host, true)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	req := engine.Request{Image: loc("app:1"), From: loc("base:1"), To: loc(to)}
	req.Target = req.Image
	return req
}

// pushOther pushes an unrelated image to reg's app:1 (another client's
// push) and returns its digest.
func pushOther(t *testing.T, reg *regtest.Registry, seed string) v1.Hash {
	other, err := testimage.Build(nil, testimage.Linux, testimage.Copy("COPY other", map[string]string{"other": seed}))
	if err != nil {
		t.Error(err)
		return v1.Hash{}
	}
	ref, _ := name.ParseReference(reg.Ref("app:1"))
	if err := remote.Write(ref, other); err != nil {
		t.Error(err)
	}
	d, _ := other.Digest()
	return d
}

// TestTwoWritersRace: two rebases of app:1 onto different new bases both
// read it, both find it unchanged just before writing, and write one after
// the other. The one whose result was replaced says so (naming both
// digests), instead of reporting success.
func TestTwoWritersRace(t *testing.T) {
	reg, arm, release := racingRegistry(t)
	app := faultFixture(t, reg)
	reg.Push(t, "app:1", app)
	b3, err := testimage.Build(nil, testimage.Linux, testimage.Copy("ADD os", map[string]string{"os": "3"}), testimage.Copy("ADD lib", map[string]string{"lib": "3"}))
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, "base:3", b3)
	arm()
	defer release()

	type outcome struct {
		res *engine.Result
		err error
	}
	out := make([]outcome, 2)
	var wg sync.WaitGroup
	for i, to := range []string{"base:2", "base:3"} {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out[i].res, out[i].err = engine.Rebase(ctx, requestAt(t, reg.Host, to))
		})
	}
	wg.Wait()
	var won, lost int = -1, -1
	for i, o := range out {
		switch {
		case o.err == nil && o.res.Action == engine.Rebased:
			won = i
		case o.err != nil:
			lost = i
		}
	}
	if won < 0 || lost < 0 {
		t.Fatalf("want one success and one failure, got %v / %v", out[0].err, out[1].err)
	}
	var lu *engine.LostUpdateError
	if !errors.As(out[lost].err, &lu) {
		t.Fatalf("the replaced writer says %v, want a lost update", out[lost].err)
	}
	now, _ := reg.Digest(t, "app:1")
	if now != out[won].res.After.String() || lu.Now.String() != now {
		t.Errorf("app:1 is %s; the winner wrote %s; the loser says it now names %s", now, out[won].res.After, lu.Now)
	}
	msg := out[lost].err.Error()
	if !strings.Contains(msg, lu.Written.String()) || !strings.Contains(msg, now) || !strings.Contains(msg, "app@"+lu.Written.String()) {
		t.Errorf("message %q does not name both digests and where the result stays", msg)
	}
	if _, ok := reg.Digest(t, "app@"+lu.Written.String()); !ok {
		t.Errorf("the replaced result %s is gone from the registry", lu.Written)
	}
}

// racingRegistry is a registry whose first two manifest PUTs to app:1 are
// held until both have arrived, then stored one after the other; the
// first's answer comes only after the second is stored, so that its writer
// reads the tag back after the other's write. arm starts the race (after
// the test's own pushes); release unblocks everything.
func racingRegistry(t *testing.T) (*regtest.Registry, func(), func()) {
	var armed atomic.Bool
	var mu sync.Mutex
	arrived := 0
	both, firstStored, secondStored := make(chan struct{}), make(chan struct{}), make(chan struct{})
	stop := make(chan struct{})
	wait := func(c chan struct{}) {
		select {
		case <-c:
		case <-stop:
		case <-time.After(15 * time.Second):
		}
	}
	reg := regtest.Start(t, regtest.WithHandler(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPut || r.URL.Path != "/v2/app/manifests/1" || !armed.Load() {
				next.ServeHTTP(w, r)
				return
			}
			mu.Lock()
			n := arrived
			arrived++
			mu.Unlock()
			switch n {
			case 0:
				wait(both)
				rec := httptest.NewRecorder()
				next.ServeHTTP(rec, r)
				close(firstStored)
				wait(secondStored)
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(rec.Body.Bytes())
			case 1:
				close(both)
				wait(firstStored)
				next.ServeHTTP(w, r)
				close(secondStored)
			default:
				next.ServeHTTP(w, r)
			}
		})
	}))
	var once sync.Once
	return reg, func() { armed.Store(true) }, func() { once.Do(func() { close(stop) }) }
}

// TestPushWindow: the tag is read alongside the last writes before the
// manifest PUT. A push before that read is detected (nothing written); a
// push that reaches the registry between that read and the PUT is the one
// window a registry without conditional writes leaves open: it is
// overwritten, and stays in the registry by digest.
func TestPushWindow(t *testing.T) {
	for _, c := range []struct {
		name     string
		when     func(r *http.Request) bool // push before forwarding this request
		detected bool
	}{
		{"at the upload session, before the read", func(r *http.Request) bool {
			return r.Method == http.MethodPost && r.URL.Query().Get("mount") == "" && strings.HasSuffix(r.URL.Path, "/app/blobs/uploads/")
		}, true},
		{"after the read, just before the PUT", func(r *http.Request) bool {
			return r.Method == http.MethodPut && r.URL.Path == "/v2/app/manifests/1"
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			reg := regtest.Start(t)
			reg.Push(t, "app:1", faultFixture(t, reg))
			var pushed atomic.Bool
			var other v1.Hash
			proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
				if c.when(r) && !pushed.Swap(true) {
					other = pushOther(t, reg, "y")
				}
				return proxytest.Fault{}
			}))
			defer proxy.Close()
			res, err := engine.Rebase(context.Background(), requestAt(t, proxy.Host(), "base:2"))
			now, _ := reg.Digest(t, "app:1")
			if c.detected {
				if err == nil || !strings.Contains(err.Error(), "moved to "+other.String()) || !strings.Contains(err.Error(), "unchanged, no tag written") {
					t.Fatalf("err = %v, want the push detected and nothing written", err)
				}
				if now != other.String() {
					t.Fatalf("app:1 = %s, want the push %s kept", now, other)
				}
				return
			}
			if err != nil || now != res.After.String() {
				t.Fatalf("a push in the window: %v, app:1 = %s", err, now)
			}
			if _, ok := reg.Digest(t, "app@"+other.String()); !ok {
				t.Errorf("the overwritten push %s is gone from the registry", other)
			}
		})
	}
}

// TestSlowWritesReadTheTagAgain: when the writes before the PUT outlast
// the tag's read (a slow upload), the tag is read once more just before
// the PUT, so that a push during the slow writes is still detected; with
// --backup-tag, the failure says that the backup tag was written.
func TestSlowWritesReadTheTagAgain(t *testing.T) {
	for _, backup := range []bool{false, true} {
		t.Run(fmt.Sprintf("backup=%v", backup), func(t *testing.T) {
			reg := regtest.Start(t)
			orig := reg.Push(t, "app:1", faultFixture(t, reg))
			var heads atomic.Int32
			var other atomic.Pointer[v1.Hash]
			proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
				switch {
				case r.Method == http.MethodHead && r.URL.Path == "/v2/app/manifests/1":
					heads.Add(1)
				case r.Method == http.MethodPut && r.URL.Query().Get("digest") != "" && strings.Contains(r.URL.Path, "/app/blobs/uploads/"):
					// The config's upload is slow; someone pushes meanwhile,
					// after the tag's read was answered.
					go func() {
						time.Sleep(100 * time.Millisecond)
						d := pushOther(t, reg, "z")
						other.Store(&d)
					}()
					return proxytest.Fault{Delay: 400 * time.Millisecond}
				}
				return proxytest.Fault{}
			}))
			defer proxy.Close()
			req := requestAt(t, proxy.Host(), "base:2")
			if backup {
				req.BackupTag = "1-prev"
			}
			_, err := engine.Rebase(context.Background(), req)
			o := other.Load()
			if o == nil || err == nil || !strings.Contains(err.Error(), "moved to "+o.String()) {
				t.Fatalf("err = %v, want the push during the slow upload detected", err)
			}
			if heads.Load() != 2 {
				t.Errorf("the tag was read %d times before the failure, want 2", heads.Load())
			}
			prev, hasPrev := reg.Digest(t, "app:1-prev")
			switch {
			case backup && (!hasPrev || prev != orig.String() || !strings.Contains(err.Error(), "the backup tag "+proxy.Host()+"/app:1-prev was written")):
				t.Errorf("backup: app:1-prev = %s %v; err %v: want it written and said so", prev, hasPrev, err)
			case !backup && !strings.Contains(err.Error(), "unchanged, no tag written"):
				t.Errorf("err %v does not say that nothing was written", err)
			}
		})
	}
}

// TestBackupTagOnlyWhenTheTagMoves: a rebase refused because the tag moved
// writes no backup tag.
func TestBackupTagOnlyWhenTheTagMoves(t *testing.T) {
	reg := regtest.Start(t)
	reg.Push(t, "app:1", faultFixture(t, reg))
	var pushed atomic.Bool
	proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
		if r.Method == http.MethodPost && r.URL.Query().Get("mount") == "" && strings.HasSuffix(r.URL.Path, "/app/blobs/uploads/") && !pushed.Swap(true) {
			pushOther(t, reg, "w")
		}
		return proxytest.Fault{}
	}))
	defer proxy.Close()
	req := requestAt(t, proxy.Host(), "base:2")
	req.BackupTag = "1-prev"
	_, err := engine.Rebase(context.Background(), req)
	if err == nil || !strings.Contains(err.Error(), "moved to") || !strings.Contains(err.Error(), "no tag written") {
		t.Fatalf("err = %v", err)
	}
	if d, ok := reg.Digest(t, "app:1-prev"); ok {
		t.Errorf("app:1-prev was written (%s) by a refused rebase", d)
	}
}

// TestSameResultWrittenMeanwhileIsUpToDate: another run wrote the very
// digest this one would write: up to date, not "moved".
func TestSameResultWrittenMeanwhileIsUpToDate(t *testing.T) {
	reg := regtest.Start(t)
	reg.Push(t, "app:1", faultFixture(t, reg))
	var other *engine.Result
	var pushed atomic.Bool
	var proxy *proxytest.Proxy
	proxy = proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
		if r.Method == http.MethodPost && r.URL.Query().Get("mount") == "" && strings.HasSuffix(r.URL.Path, "/app/blobs/uploads/") && !pushed.Swap(true) {
			// The other run names the bases as this one does (the result
			// records the new base's reference).
			var err error
			if other, err = engine.Rebase(context.Background(), requestAt(t, proxy.Host(), "base:2")); err != nil {
				t.Error(err)
			}
		}
		return proxytest.Fault{}
	}))
	defer proxy.Close()
	res, err := engine.Rebase(context.Background(), requestAt(t, proxy.Host(), "base:2"))
	if err != nil || other == nil || res.Action != engine.UpToDate || res.After != other.After {
		t.Fatalf("%v %+v, want up to date with the other run's %v", err, res, other)
	}
}

// TestTargetTagCreatedMeanwhile: -t names a tag that did not exist; someone
// creates it during the rebase: refused, nothing written. A target that
// already names the result is up to date.
func TestTargetTagCreatedMeanwhile(t *testing.T) {
	reg := regtest.Start(t)
	reg.Push(t, "app:1", faultFixture(t, reg))
	var pushed atomic.Bool
	proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
		if r.Method == http.MethodPost && r.URL.Query().Get("mount") == "" && strings.HasSuffix(r.URL.Path, "/app/blobs/uploads/") && !pushed.Swap(true) {
			other, _ := testimage.Build(nil, testimage.Linux, testimage.Copy("COPY x", map[string]string{"x": "x"}))
			ref, _ := name.ParseReference(reg.Ref("app:new"))
			if err := remote.Write(ref, other); err != nil {
				t.Error(err)
			}
		}
		return proxytest.Fault{}
	}))
	defer proxy.Close()
	req := requestAt(t, proxy.Host(), "base:2")
	c := registry.New(registry.Options{Insecure: []string{proxy.Host()}})
	var err error
	if req.Target, err = c.Parse("app:new", proxy.Host(), true); err != nil {
		t.Fatal(err)
	}
	_, err = engine.Rebase(context.Background(), req)
	if err == nil || !strings.Contains(err.Error(), "was created meanwhile") || !strings.Contains(err.Error(), "no tag written") {
		t.Fatalf("err = %v, want the new tag detected", err)
	}
	// Written for real (to another tag), then again to that tag: up to date.
	req.Target, _ = c.Parse("app:done", proxy.Host(), true)
	first, err := engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := engine.Rebase(context.Background(), req)
	if err != nil || again.Action != engine.UpToDate || again.After != first.After {
		t.Fatalf("second run to the same -t: %v %+v, want up to date", err, again)
	}
}

// TestConcurrentPushIsDetectedIndex: the same for an index: a push to the
// tag during the rebase is detected before the index is written.
func TestConcurrentPushIsDetectedIndex(t *testing.T) {
	reg := regtest.Start(t)
	reg.PushIndex(t, "app:1", indexFixture(t, reg))
	var pushed atomic.Bool
	var other v1.Hash
	proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
		if r.Method == http.MethodPost && r.URL.Query().Get("mount") == "" && strings.HasSuffix(r.URL.Path, "/app/blobs/uploads/") && !pushed.Swap(true) {
			other = pushOther(t, reg, "i")
		}
		return proxytest.Fault{}
	}))
	defer proxy.Close()
	_, err := engine.Rebase(context.Background(), requestAt(t, proxy.Host(), "base:2"))
	if err == nil || !strings.Contains(err.Error(), "moved to "+other.String()) || !strings.Contains(err.Error(), "no tag written") {
		t.Fatalf("err = %v, want the push detected", err)
	}
	if now, _ := reg.Digest(t, "app:1"); now != other.String() {
		t.Fatalf("app:1 = %s, want the push %s kept", now, other)
	}
}
