package bench

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/image-rebase/image-rebase/internal/cli"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
)

// The benchmarks' request and round-trip counts, asserted: times vary from
// run to run, counts do not, and a change that costs a request or a round
// trip must show here (and in the README's figures, which these defend).
// The scenarios are the benchmarks' own, through the same proxy and
// latency (needed to tell sequential requests from concurrent ones).

// TestRebaseCounts: BenchmarkRebase's image (a base of 3 layers, all
// replaced) takes 14 requests in 5 round trips, and moves no layer byte,
// the registry named http://HOST or HOST with --insecure.
func TestRebaseCounts(t *testing.T) {
	reg := regtest.Start(t)
	app := fixture(t, reg)
	layers := layerDigests(t, reg, "base:1", "base:2")
	for _, l := range must(app.Layers()) {
		layers[must(l.Digest()).String()] = true
	}
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
	defer proxy.Close()
	for _, f := range forms {
		reg.Push(t, "app-"+f.name+":1", app)
		proxy.Reset()
		var out, errb bytes.Buffer
		if code := cli.Main(append(f.args(proxy.Host()), "app-"+f.name+":1", "--from-base", "base:1", "--to-base", "base:2"), &out, &errb); code != 0 {
			t.Fatalf("%s: exit %d: %s", f.name, code, errb.String())
		}
		s := proxy.Stats()
		// No ping (no credentials); 3 manifests; 3 configs, the config
		// upload opened; 3 mounts, the config's content, the tag read
		// again; the manifest; the tag read back.
		late := lateRereads(proxy)
		want := map[string]int{"manifest": 6 + late, "blob": 3, "blob-upload": 5}
		if s.Requests != 14+late || s.RoundTrips != 5+late || fmt.Sprint(s.ByClass) != fmt.Sprint(want) {
			t.Errorf("%s: %d requests in %d round trips %v; want %d in %d %v\n%s", f.name, s.Requests, s.RoundTrips, s.ByClass, 14+late, 5+late, want, logOf(proxy))
		}
		if n := proxy.BytesOf(func(d string) bool { return layers[d] }); n != 0 {
			t.Errorf("%s: %d layer bytes moved, want 0", f.name, n)
		}
	}
}

// TestRebaseIndexCounts: BenchmarkRebaseIndex's two-platform index takes
// 33 requests in 7 round trips.
func TestRebaseIndexCounts(t *testing.T) {
	reg := regtest.Start(t)
	app, layers := indexFixture(t, reg, []string{"amd64", "arm64"})
	reg.PushIndex(t, "app:1", app)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
	defer proxy.Close()
	var out, errb bytes.Buffer
	if code := cli.Main([]string{"http://" + proxy.Host(), "app:1", "--from-base", "base:1", "--to-base", "base:2"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	s := proxy.Stats()
	// The 3 indexes; the 6 platform images (and the signature lookup, 3
	// requests); their 6 configs and 2 config uploads opened; 6 mounts, 2
	// configs' contents, the tag read again; the 2 platform manifests; the
	// index; the tag read back.
	if late := lateRereads(proxy); s.Requests != 33+late || s.RoundTrips != 7+late {
		t.Errorf("%d requests in %d round trips %v; want %d in %d\n%s", s.Requests, s.RoundTrips, s.ByClass, 33+late, 7+late, logOf(proxy))
	}
	if n := proxy.BytesOf(func(d string) bool { return layers[d] }); n != 0 {
		t.Errorf("%d layer bytes moved, want 0", n)
	}
}

// TestBatchCounts: BenchmarkBatch's batch (images in repositories of 10,
// here 20 images in 2 repositories) costs 4 shared requests (the bases'
// documents), 7 per image (manifest, config, upload open and commit, the
// tag read before and after the manifest PUT) and a base's 3 mounts per
// repository; the rerun 1 per image (its manifest) and the bases'
// manifests.
func TestBatchCounts(t *testing.T) {
	reg := regtest.Start(t)
	fixture(t, reg)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
	defer proxy.Close()
	const n, repos = 20, 2
	refs := appsOnBase1(t, reg, "app", n, repos)
	f := runBatch(t, proxy, reg, forms[0], refs)
	late := lateRereads(proxy)
	if f.byAction["rebased"] != n || f.shared != 4 || f.mounts != 3*repos || f.requests != 4+7*n+3*repos+late || f.heads != 2*n+late {
		t.Errorf("batch: %v, %d requests (%d shared, %d mounts, %d tag reads); want %d rebased, %d requests (4 shared, %d mounts, %d tag reads)\n%s",
			f.byAction, f.requests, f.shared, f.mounts, f.heads, n, 4+7*n+3*repos+late, 3*repos, 2*n+late, logOf(proxy))
	}
	f = runBatch(t, proxy, reg, forms[0], refs)
	if f.byAction["up-to-date"] != n || f.requests != 2+n {
		t.Errorf("rerun: %v, %d requests; want %d up to date, %d requests", f.byAction, f.requests, n, 2+n)
	}
}

// lateRereads counts the tag checks a rebase repeated because its writes
// outlasted its first check by more than the engine's 100 ms (timing: the
// race detector, a loaded machine); see proxytest.LateRereads.
func lateRereads(p *proxytest.Proxy) int {
	return proxytest.LateRereads(p.Log(), 100*time.Millisecond)
}

func logOf(p *proxytest.Proxy) string {
	var b bytes.Buffer
	for _, e := range p.Log() {
		fmt.Fprintf(&b, "  %s %s %d\n", e.Method, e.Path, e.Status)
	}
	return b.String()
}
