package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/image-rebase/image-rebase/internal/proxytest"
)

// watcherProc is a running `image-rebase watch`.
type watcherProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	url  string
	mu   sync.Mutex
	logs []map[string]any
	raw  strings.Builder
	done chan struct{}
	code int
}

// startWatcher runs `image-rebase watch ARGS --listen 127.0.0.1:PORT -o
// json` with r's credentials and waits for its index.
func startWatcher(t *testing.T, r *registryServer, port int, args ...string) *watcherProc {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(binary, append(append([]string{"watch"}, args...), "--listen", addr, "-o", "json")...)
	cmd.Env = r.env()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w := &watcherProc{t: t, cmd: cmd, url: "http://" + addr, done: make(chan struct{})}
	cmd.Stderr = &lockedWriter{w: &w.raw, mu: &w.mu}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var v map[string]any
			w.mu.Lock()
			w.raw.WriteString(sc.Text() + "\n")
			if json.Unmarshal(sc.Bytes(), &v) == nil {
				w.logs = append(w.logs, v)
			} else {
				w.logs = append(w.logs, map[string]any{"msg": "NOT JSON", "line": sc.Text()})
			}
			w.mu.Unlock()
		}
		cmd.Wait()
		w.code = cmd.ProcessState.ExitCode()
		close(w.done)
	}()
	t.Cleanup(func() {
		w.cmd.Process.Kill()
		<-w.done
		if t.Failed() {
			w.mu.Lock()
			t.Logf("watcher output:\n%s", w.raw.String())
			w.mu.Unlock()
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; {
		code, body := w.get("/healthz")
		if code == http.StatusOK && strings.Contains(body, `"indexed":true`) {
			return w
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watcher did not index: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (w *watcherProc) get(path string) (int, string) {
	resp, err := http.Get(w.url + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// lines returns the log lines with msg.
func (w *watcherProc) lines(msg string) []map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []map[string]any
	for _, l := range w.logs {
		if l["msg"] == msg {
			out = append(out, l)
		}
	}
	return out
}

// waitFor waits until there are n log lines with msg and returns them.
func (w *watcherProc) waitFor(msg string, n int, within time.Duration) []map[string]any {
	w.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if ls := w.lines(msg); len(ls) >= n {
			return ls
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("no %d %q log lines within %s", n, msg, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metric returns a series' value on /metrics.
func (w *watcherProc) metric(series string) string {
	_, body := w.get("/metrics")
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			return v
		}
	}
	return ""
}

// stop sends SIGTERM and checks the watcher drains and exits 0.
func (w *watcherProc) stop() {
	w.t.Helper()
	w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(40 * time.Second):
		w.t.Fatal("the watcher did not stop on SIGTERM")
	}
	if w.code != 0 || len(w.lines("stopped")) != 1 {
		w.t.Errorf("after SIGTERM: exit %d, %d stopped lines", w.code, len(w.lines("stopped")))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.logs {
		if l["msg"] == "NOT JSON" {
			w.t.Errorf("a log line is not JSON: %v", l["line"])
		}
	}
}

// kill sends SIGKILL.
func (w *watcherProc) kill() {
	w.cmd.Process.Kill()
	<-w.done
}

// layersOf returns the layer digests of repoTag as skopeo reads them.
func (r *registryServer) layersOf(t *testing.T, repoTag string) []string {
	t.Helper()
	m := parseManifest(t, r.inspect(t, repoTag))
	var out []string
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

// onBase reports whether repoTag starts with base's layers.
func (r *registryServer) onBase(t *testing.T, repoTag string, base []string) bool {
	t.Helper()
	layers := r.layersOf(t, repoTag)
	if len(layers) < len(base) {
		return false
	}
	for i, l := range base {
		if layers[i] != l {
			return false
		}
	}
	return true
}

// digestOf returns the digest of the manifest repoTag names.
func (r *registryServer) digestOf(t *testing.T, repoTag string) string {
	t.Helper()
	return strings.TrimSpace(run(t, "skopeo", "manifest-digest", writeTemp(t, r.inspect(t, repoTag))))
}

// reached reports whether repoTag is on base now, for a wait loop: an
// error (docker-registry may answer 500 to a read of a tag being written)
// is "not yet".
func (r *registryServer) reached(t *testing.T, repoTag string, base []string) bool {
	t.Helper()
	args := append(append([]string{"inspect", "--raw"}, r.tlsFlag("")...), "--creds", r.creds(), "docker://"+r.Host+"/"+repoTag)
	out, err := exec.Command("skopeo", args...).Output()
	if err != nil {
		t.Logf("skopeo inspect %s (retried): %v", repoTag, err)
		return false
	}
	m := parseManifest(t, string(out))
	if len(m.Layers) < len(base) {
		return false
	}
	for i, l := range base {
		if m.Layers[i].Digest != l {
			return false
		}
	}
	return true
}

// copyTag copies src to dst within r (skopeo, the registry mounting the
// layers).
func (r *registryServer) copyTag(t *testing.T, src, dst string) {
	t.Helper()
	args := []string{"copy", "--src-creds", r.creds(), "--dest-creds", r.creds()}
	args = append(append(args, r.tlsFlag("src-")...), r.tlsFlag("dest-")...)
	run(t, "skopeo", append(args, "docker://"+r.Host+"/"+src, "docker://"+r.Host+"/"+dst)...)
}

// buildBase3 builds base version 3 and pushes it as base:3.
func buildBase3(t *testing.T, r *registryServer) {
	t.Helper()
	busybox, _ := os.ReadFile("/bin/busybox")
	buildImage(t, "e2e-base-oci-3", fmt.Sprintf(baseDockerfile, "3"), map[string]string{
		"busybox": string(busybox), "os-release": "VERSION_ID=3\n", "marker": "3",
	}, buildOpts{layers: true})
	r.push(t, "e2e-base-oci-3", "base:3", "oci")
}

// dependents builds the applications of the watch tests and pushes them:
// "app" FROM the registry's base:stable (buildah writes the base
// annotations), in the OCI format, as app:1..app:4 and team/app:1; "svc"
// FROM the local base 1 with LABEL FROM=base:stable, in the Docker format
// (no annotations), as svc:1 and svc:2.
func dependents(t *testing.T, r *registryServer) []string {
	t.Helper()
	ctx := t.TempDir()
	write(t, filepath.Join(ctx, "app.txt"), []byte("watched app"))
	write(t, filepath.Join(ctx, "Dockerfile"), []byte("FROM "+r.Host+"/base:stable\nCOPY app.txt /app/app.txt\nCMD [\"/app/app.txt\"]\n"))
	// --layers=false: buildah 1.28 writes its intermediate image's digest
	// as base.digest with --layers.
	buildah(t, append(append([]string{"bud", "--isolation", "chroot"}, r.tlsFlag("")...), "--creds", r.creds(), "--format", "oci", "--layers=false", "-t", "localhost/e2e-watched-app", ctx)...)
	buildImage(t, "e2e-watched-svc", "FROM localhost/e2e-base-oci-1\nLABEL FROM=base:stable\nCOPY app.txt /app/app.txt\n",
		map[string]string{"app.txt": "watched svc"}, buildOpts{format: "docker"})
	refs := []string{"app:1", "app:2", "app:3", "app:4", "team/app:1", "svc:1", "svc:2"}
	r.push(t, "e2e-watched-app", "app:1", "oci")
	r.push(t, "e2e-watched-svc", "svc:1", "docker")
	for _, ref := range refs {
		switch {
		case ref == "app:1" || ref == "svc:1":
		case strings.HasPrefix(ref, "svc"):
			r.copyTag(t, "svc:1", ref)
		default:
			r.copyTag(t, "app:1", ref)
		}
	}
	return refs
}

// TestWatch: Debian's docker-registry notifies the watcher; base:stable
// moves and every dependent follows it; a burst of pushes; a dependent
// pushed while a round runs; the watcher killed mid-round and restarted;
// polling only.
func TestWatch(t *testing.T) {
	need(t, "buildah", "skopeo", "umoci", "docker-registry")
	port := freePort(t)
	token := randomHex(t, 16)
	r := startRegistry(t, withNotifications(fmt.Sprintf("http://127.0.0.1:%d/events", port), token))
	buildBases(t, r, "oci")
	buildBase3(t, r)
	base := map[int][]string{}
	for v := 1; v <= 3; v++ {
		base[v] = r.layersOf(t, fmt.Sprintf("base:%d", v))
	}
	r.copyTag(t, "base:1", "base:stable")
	deps := dependents(t, r)
	secret := filepath.Join(t.TempDir(), "token")
	write(t, secret, []byte(token+"\n"))
	allOn := func(t *testing.T, v int) {
		t.Helper()
		for _, d := range deps {
			if !r.onBase(t, d, base[v]) {
				t.Errorf("%s is not on base %d", d, v)
			}
		}
	}
	watchArgs := []string{r.Host, "--base", "base:stable", "--secret-file", secret}

	t.Run("webhook", func(t *testing.T) {
		w := startWatcher(t, r, port, append(watchArgs, "-j", "4")...)
		if got := w.metric(`image_rebase_watch_dependent_images{base="` + r.Host + `/base:stable"}`); got != fmt.Sprint(len(deps)) {
			t.Errorf("dependent_images %q, want %d", got, len(deps))
		}
		r.copyTag(t, "base:2", "base:stable")
		done := w.waitFor("round finished", 1, 60*time.Second)[0]
		if done["trigger"] != "event" || done["rebased"] != float64(len(deps)) {
			t.Errorf("round %v: want %d rebased after an event", done, len(deps))
		}
		allOn(t, 2)
		for _, c := range []struct{ ref, file string }{{"app:3", "watched app"}, {"svc:2", "watched svc"}} {
			root := r.unpack(t, c.ref)
			if got := readFile(t, filepath.Join(root, "etc/os-release")); got != "VERSION_ID=2\n" {
				t.Errorf("%s: /etc/os-release %q", c.ref, got)
			}
			if got := readFile(t, filepath.Join(root, "app/app.txt")); got != c.file {
				t.Errorf("%s: /app/app.txt %q", c.ref, got)
			}
		}
		if got := w.metric(`image_rebase_watch_events_total{result="base",source="distribution"}`); got == "" {
			t.Error("no base event counted")
		}
		if got := w.metric(`image_rebase_watch_stale_images{base="` + r.Host + `/base:stable"}`); got != "0" {
			t.Errorf("stale_images %q after the round", got)
		}
		w.stop()
	})

	t.Run("burst", func(t *testing.T) {
		w := startWatcher(t, r, port, watchArgs...)
		for _, v := range []int{3, 1, 3} {
			r.copyTag(t, fmt.Sprintf("base:%d", v), "base:stable")
		}
		// Rounds end when the last push is followed.
		for deadline := time.Now().Add(60 * time.Second); ; {
			ok := true
			for _, d := range deps {
				ok = ok && r.reached(t, d, base[3])
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the dependents did not reach base 3")
			}
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(time.Second)
		rounds := w.lines("round finished")
		if len(rounds) == 0 || len(rounds) > 3 {
			t.Errorf("%d rounds for a burst of 3 pushes", len(rounds))
		}
		for _, l := range append(w.lines("failed"), w.lines("refused")...) {
			t.Errorf("failure: %v", l)
		}
		allOn(t, 3)
		w.stop()
	})

	t.Run("dependent pushed during a round", func(t *testing.T) {
		// An image on base 3, kept aside, pushed to a new repository and a
		// new tag of a known one while the round runs.
		layout := filepath.Join(t.TempDir(), "layout")
		run(t, "skopeo", append(append([]string{"copy"}, r.tlsFlag("src-")...), "--src-creds", r.creds(), "docker://"+r.Host+"/app:1", "oci:"+layout+":late")...)
		w := startWatcher(t, r, port, append(watchArgs, "-j", "1")...)
		r.copyTag(t, "base:2", "base:stable")
		w.waitFor("rebased", 1, 60*time.Second)
		for _, dst := range []string{"late:1", "app:late"} {
			run(t, "skopeo", append(append([]string{"copy"}, r.tlsFlag("dest-")...), "--dest-creds", r.creds(), "oci:"+layout+":late", "docker://"+r.Host+"/"+dst)...)
		}
		for deadline := time.Now().Add(60 * time.Second); !r.reached(t, "late:1", base[2]) || !r.reached(t, "app:late", base[2]); {
			if time.Now().After(deadline) {
				t.Fatal("the dependents pushed during the round were not rebased")
			}
			time.Sleep(200 * time.Millisecond)
		}
		allOn(t, 2)
		w.stop()
	})
	deps = append(deps, "late:1", "app:late")

	t.Run("killed mid-round and restarted", func(t *testing.T) {
		w := startWatcher(t, r, port, append(watchArgs, "-j", "1")...)
		r.copyTag(t, "base:1", "base:stable")
		d1 := r.digestOf(t, "base:1")
		for deadline := time.Now().Add(60 * time.Second); !slices.ContainsFunc(w.lines("rebased"), func(l map[string]any) bool { return l["newBase"] == d1 }); {
			if time.Now().After(deadline) {
				t.Fatal("no image rebased onto base 1")
			}
			time.Sleep(5 * time.Millisecond)
		}
		w.kill()
		moved := 0
		for _, d := range deps {
			// Every tag names a valid image (skopeo inspect checks it), on
			// the old base or the new one.
			switch {
			case r.onBase(t, d, base[1]):
				moved++
			case r.onBase(t, d, base[2]):
			default:
				t.Errorf("%s is on neither base", d)
			}
		}
		if moved == 0 || moved == len(deps) {
			t.Fatalf("%d of %d moved when killed: not mid-round", moved, len(deps))
		}
		w = startWatcher(t, r, port, watchArgs...)
		round := w.waitFor("round finished", 1, 60*time.Second)[0]
		if round["trigger"] != "index" || round["rebased"] != float64(len(deps)-moved) {
			t.Errorf("after the restart: round %v, want the %d left rebased", round, len(deps)-moved)
		}
		allOn(t, 1)
		w.stop()
	})

	t.Run("polling only", func(t *testing.T) {
		// Another port: the registry's notifications do not reach it.
		w := startWatcher(t, r, freePort(t), append(watchArgs, "--poll", "2s")...)
		r.copyTag(t, "base:3", "base:stable")
		pushed := time.Now()
		w.waitFor("round finished", 1, 60*time.Second)
		took := time.Since(pushed)
		round := w.lines("round finished")[0]
		if round["trigger"] != "poll" || round["rebased"] != float64(len(deps)) {
			t.Errorf("round %v", round)
		}
		if took > 2200*time.Millisecond+3*time.Second {
			t.Errorf("rebased %s after the push: more than the poll interval (2s ±10%%) and 3s", took)
		}
		allOn(t, 3)
		if got := w.metric(`image_rebase_watch_polls_total{base="` + r.Host + `/base:stable",result="changed"}`); got != "1" {
			t.Errorf("polls_total changed %q", got)
		}
		w.stop()
	})
}

// TestWatchFailingRegistry: the registry behind a proxy that fails
// requests (503, dropped connections) and, for a while, every manifest
// write; the watcher retries and every dependent ends on the new base.
func TestWatchFailingRegistry(t *testing.T) {
	need(t, "buildah", "skopeo", "docker-registry")
	r := startRegistry(t, withPlainHTTP())
	buildBases(t, r, "oci")
	r.copyTag(t, "base:1", "base:stable")
	buildImage(t, "e2e-failing-app", "FROM localhost/e2e-base-oci-1\nCOPY app.txt /app/app.txt\n", map[string]string{"app.txt": "x"}, buildOpts{})
	deps := []string{"a:1", "b:1", "c:1", "d:1"}
	r.push(t, "e2e-failing-app", "a:1", "oci")
	for _, d := range deps[1:] {
		r.copyTag(t, "a:1", d)
	}
	var failPuts, faults atomic.Int32
	proxy := proxytest.Start(r.Host, proxytest.WithFaults(func(n int, req *http.Request) proxytest.Fault {
		switch {
		case req.Method == http.MethodPut && strings.Contains(req.URL.Path, "/manifests/") && failPuts.Add(-1) >= 0:
			faults.Add(1)
			return proxytest.Fault{Status: http.StatusInternalServerError}
		case n%7 == 0:
			faults.Add(1)
			return proxytest.Fault{Status: http.StatusServiceUnavailable}
		case n%11 == 0:
			faults.Add(1)
			return proxytest.Fault{Drop: true}
		}
		return proxytest.Fault{}
	}))
	defer proxy.Close()
	// The watcher reaches the registry through the proxy: its credentials
	// are the registry's, for the proxy's host.
	auth := filepath.Join(t.TempDir(), "config.json")
	write(t, auth, []byte(strings.ReplaceAll(readFile(t, r.AuthFile), r.Host, proxy.Host())))
	pr := *r
	pr.AuthDir = filepath.Dir(auth)
	w := startWatcher(t, &pr, freePort(t), "http://"+proxy.Host(), "--base", "base:stable", "--poll", "500ms", "--attempts", "6")
	failPuts.Store(30) // more than the client's own retries (5) of each of the 4 writes
	r.copyTag(t, "base:2", "base:stable")
	round := w.waitFor("round finished", 1, 120*time.Second)[0]
	if round["rebased"] != float64(len(deps)) {
		t.Errorf("round %v: want %d rebased", round, len(deps))
	}
	if len(w.lines("retried")) == 0 {
		t.Error("no attempt was retried")
	}
	base2 := r.layersOf(t, "base:2")
	for _, d := range deps {
		if !r.onBase(t, d, base2) {
			t.Errorf("%s is not on the new base", d)
		}
	}
	t.Logf("%d faults injected, %d retried attempts", faults.Load(), len(w.lines("retried")))
	w.stop()
}
