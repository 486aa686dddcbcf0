package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// measured runs the binary and returns its exit code, stderr, wall time and
// peak resident memory.
func measured(t *testing.T, args ...string) (code int, stderr string, wall time.Duration, maxRSS int64) {
	t.Helper()
	// GNU time reports the binary's own peak: the rusage of a child that
	// this (large, -race) test process starts would also count the
	// parent's memory at the fork, which Linux carries into the child.
	need(t, "/usr/bin/time")
	report := filepath.Join(t.TempDir(), "rss")
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", report, binary}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+t.TempDir())
	var errb bytes.Buffer
	cmd.Stderr = &errb
	start := time.Now()
	err := cmd.Run()
	wall = time.Since(start)
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running image-rebase: %v", err)
	}
	kib, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("reading the peak memory: %v", err)
	}
	// GNU time adds a line when the command exits non-zero.
	lines := strings.Fields(strings.TrimSpace(string(kib)))
	if len(lines) == 0 {
		t.Fatalf("no peak memory reported")
	}
	n, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	if err != nil {
		t.Fatalf("peak memory %q: %v", kib, err)
	}
	return code, errb.String(), wall, n << 10
}

// pushBases pushes base:1, base:2 and app:1 on base:1 to reg.
func pushBases(t *testing.T, reg *regtest.Registry) {
	t.Helper()
	b1, err := testimage.Base(testimage.OCI, "1")
	if err != nil {
		t.Fatal(err)
	}
	b2, err := testimage.Base(testimage.OCI, "2")
	if err != nil {
		t.Fatal(err)
	}
	app, err := testimage.App(b1, testimage.AppSteps("base:1")...)
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", b2)
	reg.Push(t, "app:1", app)
}

// TestHostileRegistryEndsFast runs the binary against registries that
// redirect a blob to itself forever, or serve a 100 MB manifest with or
// without its length: each run ends within 3 s and 80 MB of memory, with
// one line saying why.
func TestHostileRegistryEndsFast(t *testing.T) {
	junk := func(w http.ResponseWriter, withLength bool) {
		const size = 100 << 20
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		if withLength {
			w.Header().Set("Content-Length", strconv.Itoa(size))
		}
		w.WriteHeader(http.StatusOK)
		chunk := bytes.Repeat([]byte("x"), 1<<20)
		for range size >> 20 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
	for _, c := range []struct {
		name  string
		serve func(w http.ResponseWriter, r *http.Request) bool
		code  int
		says  string
	}{
		{"redirect loop", func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v2/app/blobs/") {
				http.Redirect(w, r, r.URL.Path+"?n="+strconv.Itoa(len(r.URL.RawQuery)), http.StatusFound)
				return true
			}
			return false
		}, 3, "redirect loop"},
		{"100 MB manifest with Content-Length", func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodGet && r.URL.Path == "/v2/app/manifests/1" {
				junk(w, true)
				return true
			}
			return false
		}, 4, "over the 4194304 byte limit"},
		{"100 MB manifest without Content-Length", func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodGet && r.URL.Path == "/v2/app/manifests/1" {
				junk(w, false)
				return true
			}
			return false
		}, 4, "over the 4194304 byte limit"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var hostile atomic.Bool
			reg := regtest.Start(t, regtest.WithHandler(func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if hostile.Load() && c.serve(w, r) {
						return
					}
					next.ServeHTTP(w, r)
				})
			}))
			pushBases(t, reg)
			hostile.Store(true)
			code, stderr, wall, rss := measured(t, "http://"+reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2")
			t.Logf("exit %d in %s, peak RSS %d MiB: %s", code, wall.Round(time.Millisecond), rss>>20, strings.TrimSpace(stderr))
			if code != c.code || !strings.Contains(stderr, c.says) || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "nothing written") {
				t.Errorf("exit %d, %q; want exit %d and one line saying %q and that nothing was written", code, stderr, c.code, c.says)
			}
			if wall > 3*time.Second {
				t.Errorf("took %s, want at most 3 s", wall)
			}
			if rss > 80<<20 {
				t.Errorf("peak memory %d MiB, want at most 80", rss>>20)
			}
		})
	}
}

// TestTwoProcessesRaceForOneTag runs two image-rebase processes that move
// app:1 onto different new bases at the same time; the registry holds both
// manifest PUTs until both have arrived, so that both processes found the
// tag unchanged just before writing. The one whose result the other
// replaced exits 1 naming both digests; the other exits 0.
func TestTwoProcessesRaceForOneTag(t *testing.T) {
	var armed atomic.Bool
	var mu sync.Mutex
	arrived := 0
	both, firstStored, secondStored := make(chan struct{}), make(chan struct{}), make(chan struct{})
	wait := func(c chan struct{}) {
		select {
		case <-c:
		case <-time.After(20 * time.Second):
		}
	}
	reg := regtest.Start(t, regtest.WithHandler(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !armed.Load() || r.Method != http.MethodPut || r.URL.Path != "/v2/app/manifests/1" {
				next.ServeHTTP(w, r)
				return
			}
			mu.Lock()
			n := arrived
			arrived++
			mu.Unlock()
			switch n {
			case 0:
				// Stored first; answered only after the second is stored.
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
	pushBases(t, reg)
	b3, err := testimage.Base(testimage.OCI, "3")
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, "base:3", b3)
	armed.Store(true)

	type outcome struct {
		code   int
		stderr string
	}
	out := make([]outcome, 2)
	var wg sync.WaitGroup
	for i, to := range []string{"base:2", "base:3"} {
		wg.Go(func() {
			out[i].code, out[i].stderr, _, _ = measured(t, "http://"+reg.Host, "app:1", "--from-base", "base:1", "--to-base", to)
		})
	}
	wg.Wait()
	codes := fmt.Sprint(out[0].code, out[1].code)
	if codes != "0 1" && codes != "1 0" {
		t.Fatalf("exit codes %s, want one 0 and one 1:\n%s\n%s", codes, out[0].stderr, out[1].stderr)
	}
	loser := out[0]
	if loser.code == 0 {
		loser = out[1]
	}
	now, _ := reg.Digest(t, "app:1")
	m := regexp.MustCompile(`wrote (sha256:[0-9a-f]{64}) there`).FindStringSubmatch(loser.stderr)
	if m == nil || !strings.Contains(loser.stderr, "moved to "+now) || strings.Count(loser.stderr, "\n") != 1 {
		t.Fatalf("the replaced writer says %q; want one line naming the digest now there (%s) and the one it wrote", loser.stderr, now)
	}
	if _, ok := reg.Digest(t, "app@"+m[1]); !ok {
		t.Errorf("the replaced result %s is gone from the registry", m[1])
	}
}
