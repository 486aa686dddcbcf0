package bench

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/image-rebase/image-rebase/cli"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
)

// The benchmarks' request and round-trip counts, asserted: times vary from
// run to run, counts do not, and a change that costs a request or a round
// trip must show here (and in the README's figures, which these defend).
// The scenarios are the benchmarks' own, through the same proxy and
// latency (needed to tell sequential requests from concurrent ones).

// TestRebaseCounts: BenchmarkRebase's image (a base of 3 layers, all
// replaced) takes 15 requests in 6 round trips, and moves no layer byte.
func TestRebaseCounts(t *testing.T) {
	reg := regtest.Start(t)
	app := fixture(t, reg)
	layers := layerDigests(t, reg, "base:1", "base:2")
	for _, l := range must(app.Layers()) {
		layers[must(l.Digest()).String()] = true
	}
	reg.Push(t, "app:1", app)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
	defer proxy.Close()
	var out, errb bytes.Buffer
	if code := cli.Main([]string{"http://" + proxy.Host(), "app:1", "--from-base", "base:1", "--to-base", "base:2"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	s := proxy.Stats()
	// ping; 3 manifests; 3 configs, the config upload opened; 3 mounts,
	// the config's content, the tag read again; the manifest; the tag read
	// back.
	want := map[string]int{"ping": 1, "manifest": 6, "blob": 3, "blob-upload": 5}
	if s.Requests != 15 || s.RoundTrips != 6 || fmt.Sprint(s.ByClass) != fmt.Sprint(want) {
		t.Errorf("%d requests in %d round trips %v; want 15 in 6 %v\n%s", s.Requests, s.RoundTrips, s.ByClass, want, logOf(proxy))
	}
	if n := proxy.BytesOf(func(d string) bool { return layers[d] }); n != 0 {
		t.Errorf("%d layer bytes moved, want 0", n)
	}
}

// TestRebaseIndexCounts: BenchmarkRebaseIndex's two-platform index takes
// 34 requests in 9 round trips.
func TestRebaseIndexCounts(t *testing.T) {
	reg := regtest.Start(t)
	app, layers := indexFixture(t, reg)
	reg.PushIndex(t, "app:1", app)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
	defer proxy.Close()
	var out, errb bytes.Buffer
	if code := cli.Main([]string{"http://" + proxy.Host(), "app:1", "--from-base", "base:1", "--to-base", "base:2"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	s := proxy.Stats()
	if s.Requests != 34 || s.RoundTrips != 9 {
		t.Errorf("%d requests in %d round trips %v; want 34 in 9\n%s", s.Requests, s.RoundTrips, s.ByClass, logOf(proxy))
	}
	if n := proxy.BytesOf(func(d string) bool { return layers[d] }); n != 0 {
		t.Errorf("%d layer bytes moved, want 0", n)
	}
}

// TestBatchCounts: BenchmarkBatch's batch (images in repositories of 10,
// here 20 images in 2 repositories) costs 5 shared requests (the ping and
// the bases' documents), 7 per image (manifest, config, upload open and
// commit, the tag read before and after the manifest PUT) and a base's 3
// mounts per repository; the rerun 2 per image.
func TestBatchCounts(t *testing.T) {
	reg := regtest.Start(t)
	fixture(t, reg)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
	defer proxy.Close()
	const n, repos = 20, 2
	refs := appsOnBase1(t, reg, "app", n, repos)
	f := runBatch(t, proxy, reg, refs)
	if f.byAction["rebased"] != n || f.shared != 5 || f.mounts != 3*repos || f.requests != 5+7*n+3*repos || f.heads != 2*n {
		t.Errorf("batch: %v, %d requests (%d shared, %d mounts, %d tag reads); want %d rebased, %d requests (5 shared, %d mounts, %d tag reads)\n%s",
			f.byAction, f.requests, f.shared, f.mounts, f.heads, n, 5+7*n+3*repos, 3*repos, 2*n, logOf(proxy))
	}
	f = runBatch(t, proxy, reg, refs)
	if f.byAction["up-to-date"] != n || f.requests != 5+2*n {
		t.Errorf("rerun: %v, %d requests; want %d up to date, %d requests", f.byAction, f.requests, n, 5+2*n)
	}
}

func logOf(p *proxytest.Proxy) string {
	var b bytes.Buffer
	for _, e := range p.Log() {
		fmt.Fprintf(&b, "  %s %s %d\n", e.Method, e.Path, e.Status)
	}
	return b.String()
}
