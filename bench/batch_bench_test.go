package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/image-rebase/image-rebase/internal/cli"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// batchSize is the number of application images of BenchmarkBatch.
const batchSize = 100

// appsOnBase1 pushes n distinct application images on base:1 (the fixture's
// base, 3 layers), spread over repos repositories as prefix<i%repos>:<i>,
// and returns their references.
func appsOnBase1(b testing.TB, reg *regtest.Registry, prefix string, n, repos int) []string {
	b1 := reg.Image(b, "base:1")
	var refs []string
	for i := range n {
		ref := fmt.Sprintf("%s%d:%d", prefix, i%repos, i)
		img, err := testimage.Build(b1, testimage.Linux,
			testimage.Copy("COPY app", map[string]string{"app/server": strings.Repeat(ref, 1000)}),
			testimage.Env("APP="+ref))
		if err != nil {
			b.Fatal(err)
		}
		reg.Push(b, ref, img)
		refs = append(refs, ref)
	}
	return refs
}

// batchFigures are one batch run's measures.
type batchFigures struct {
	wall            time.Duration
	requests        int
	roundTrips      int
	shared          int // ping and the bases' manifests and configs
	mounts          int
	heads           int
	byAction        map[string]int
	allocPerImage   float64
	peakHeapInUseMB float64
}

// batchRegistry is how a batch names the registry in each form: -r HOST
// with --insecure, or -r http://HOST.
func batchRegistry(f form, host string) []string {
	if f.name == "insecure" {
		return []string{"--insecure", "-r", host}
	}
	return []string{"-r", "http://" + host}
}

// runBatch runs `image-rebase batch` on refs through the proxy, the
// registry named as f says, and measures it.
func runBatch(b testing.TB, proxy *proxytest.Proxy, reg *regtest.Registry, f form, refs []string, extra ...string) batchFigures {
	file := filepath.Join(b.TempDir(), "images")
	if err := os.WriteFile(file, []byte(strings.Join(refs, "\n")+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	baseDocs := map[string]bool{}
	for _, r := range []string{"base:1", "base:2"} {
		d, _ := reg.Image(b, r).ConfigName()
		baseDocs[d.String()] = true
	}

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				runtime.ReadMemStats(&m)
				if m.HeapInuse > peak.Load() {
					peak.Store(m.HeapInuse)
				}
			}
		}
	}()

	proxy.Reset()
	var out, errb bytes.Buffer
	start := time.Now()
	args := append(append([]string{"batch"}, batchRegistry(f, proxy.Host())...), "-f", file, "--from-base", "base:1", "--to-base", "base:2", "-o", "json")
	code := cli.Main(append(args, extra...), &out, &errb)
	fig := batchFigures{wall: time.Since(start), byAction: map[string]int{}, roundTrips: proxy.Stats().RoundTrips}
	close(stop)
	<-sampled
	runtime.ReadMemStats(&after)
	if code != 0 {
		b.Fatalf("batch: exit %d: %s\n%s", code, errb.String(), out.String())
	}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var v struct{ Action string }
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			b.Fatal(err)
		}
		if v.Action != "" {
			fig.byAction[v.Action]++
		}
	}
	for _, e := range proxy.Log() {
		fig.requests++
		switch {
		case e.Class == "ping",
			e.Class == "manifest" && strings.HasPrefix(e.Path, "/v2/base/"),
			e.Class == "blob" && baseDocs[e.Digest]:
			fig.shared++
		case e.Class == "blob-upload" && e.Method == "POST" && e.Digest != "":
			fig.mounts++
		case e.Class == "manifest" && e.Method == "HEAD":
			fig.heads++
		}
	}
	fig.allocPerImage = float64(after.TotalAlloc-before.TotalAlloc) / float64(len(refs))
	fig.peakHeapInUseMB = float64(peak.Load()-min(peak.Load(), before.HeapInuse)) / (1 << 20)
	return fig
}

// all is every request of the run per image, shared documents included.
func (f batchFigures) all(n int) float64 { return float64(f.requests) / float64(n) }

func (f batchFigures) perImage(n int) float64 { return float64(f.requests-f.shared) / float64(n) }

// runs collects a case's figures over the iterations.
type runs []batchFigures

func (rs runs) walls() []time.Duration {
	var ds []time.Duration
	for _, f := range rs {
		ds = append(ds, f.wall)
	}
	return ds
}

// wall is "median (min–max)" of the wall times.
func (rs runs) wall() string { return spreadString(rs.walls()) }

// median is the median wall time in seconds.
func (rs runs) median() float64 {
	m, _, _ := spread(rs.walls())
	return m.Seconds()
}

// last is the last iteration's figures (requests do not vary).
func (rs runs) last() batchFigures { return rs[len(rs)-1] }

// BenchmarkBatch rebases 100 application images on one base (3 layers,
// all replaced) with `image-rebase batch`, the registry named --insecure
// HOST and http://HOST, in 10 repositories of 10 tags, then runs the batch
// again on the up-to-date images; then variants (-j 16, 100 repositories of
// one tag, the tags' reads before the PUT skipped with --recheck-after 1h,
// 25 images for memory). go-containerregistry's
// rebase path rebases copies of the same 100 images one by one. -short runs
// go-containerregistry on 10 images and scales its time to 100. The
// figures of every iteration are reported together at the end: wall times
// as median (min–max), requests (which do not vary) once.
func BenchmarkBatch(b *testing.B) {
	reg := regtest.Start(b)
	fixture(b, reg)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
	defer proxy.Close()
	insecure, http := forms[0], forms[1]

	cases := map[string]runs{}
	var ggcrWalls []time.Duration
	var ggcrReqs float64
	ggcrN := batchSize
	if testing.Short() {
		ggcrN = 10
	}
	n := 0
	for b.Loop() {
		n++
		p := fmt.Sprintf("r%d-", n)
		ggcrRefs := appsOnBase1(b, reg, p+"ggcr", ggcrN, 10)
		apps := func(name string, n, repos int) []string { return appsOnBase1(b, reg, p+name, n, repos) }
		measure := func(name string, f form, refs []string, action string, extra ...string) {
			fig := runBatch(b, proxy, reg, f, refs, extra...)
			if fig.byAction[action] != len(refs) {
				b.Fatalf("%s: %v, want %d %s", name, fig.byAction, len(refs), action)
			}
			cases[name] = append(cases[name], fig)
		}

		refs := apps("app", batchSize, 10)
		measure("batch", insecure, refs, "rebased")
		measure("rerun", insecure, refs, "up-to-date")
		refs = apps("http", batchSize, 10)
		measure("http-batch", http, refs, "rebased")
		measure("http-rerun", http, refs, "up-to-date")
		measure("j16", insecure, apps("j16", batchSize, 10), "rebased", "-j", "16")
		measure("100repos", insecure, apps("solo", batchSize, batchSize), "rebased")
		measure("skip", insecure, apps("skip", batchSize, 10), "rebased", "--recheck-after", "1h")
		measure("25images", insecure, apps("quarter", batchSize/4, 10), "rebased")

		proxy.Reset()
		start := time.Now()
		for _, ref := range ggcrRefs {
			if err := ggcrRebase(proxy.Host(), ref, "base:1", "base:2"); err != nil {
				b.Fatal(err)
			}
		}
		ggcrWalls = append(ggcrWalls, time.Since(start)*time.Duration(batchSize)/time.Duration(ggcrN))
		ggcrReqs = float64(proxy.Stats().Requests) / float64(ggcrN)
	}

	ggcr, _, _ := spread(ggcrWalls)
	batch, rerun := cases["batch"], cases["rerun"]
	bl, rl := batch.last(), rerun.last()
	for _, k := range []string{"batch", "rerun", "http-batch", "http-rerun", "j16", "100repos", "skip", "25images"} {
		b.ReportMetric(cases[k].median(), k+"-s")
	}
	b.ReportMetric(float64(bl.requests), "batch-requests")
	b.ReportMetric(bl.perImage(batchSize), "requests/image")
	b.ReportMetric(float64(bl.requests-bl.shared-bl.mounts)/batchSize, "requests/image-without-mounts")
	b.ReportMetric(rl.all(batchSize), "rerun-requests/image")
	b.ReportMetric(float64(rl.roundTrips), "rerun-roundtrips")
	b.ReportMetric(cases["100repos"].last().perImage(batchSize), "100repos-requests/image")
	b.ReportMetric(cases["skip"].last().perImage(batchSize), "skip-recheck-requests/image")
	b.ReportMetric(ggcr.Seconds(), "ggcr-s")
	b.ReportMetric(ggcrReqs, "ggcr-requests/image")
	b.ReportMetric(batch.median()/ggcr.Seconds(), "batch-time/ggcr")
	b.ReportMetric(bl.allocPerImage/1024, "alloc-KiB/image")
	b.ReportMetric(bl.peakHeapInUseMB, "peak-heap-MiB")
	b.ReportMetric(cases["25images"].last().peakHeapInUseMB, "25images-peak-heap-MiB")

	b.Logf("%d runs; wall times: median (min–max)", n)
	b.Logf("batch, --insecure HOST, 10 repositories × 10 tags: %s, %d requests (%d shared: base documents; %d mounts), %.2f requests/image after the shared documents, %.2f without mounts, %d tag reads",
		batch.wall(), bl.requests, bl.shared, bl.mounts, bl.perImage(batchSize), float64(bl.requests-bl.shared-bl.mounts)/batchSize, bl.heads)
	b.Logf("rerun (all up to date): %s, %d requests, %.2f requests/image (all requests), %d round trips", rerun.wall(), rl.requests, rl.all(batchSize), rl.roundTrips)
	b.Logf("http://HOST: batch %s (%d requests), rerun %s (%d requests)", cases["http-batch"].wall(), cases["http-batch"].last().requests, cases["http-rerun"].wall(), cases["http-rerun"].last().requests)
	b.Logf("-j 16: batch %s; 100 repositories × 1 tag: %s, %.2f requests/image (%d mounts); --recheck-after 1h (no tag read before the PUT): %s, %.2f requests/image",
		cases["j16"].wall(), cases["100repos"].wall(), cases["100repos"].last().perImage(batchSize), cases["100repos"].last().mounts, cases["skip"].wall(), cases["skip"].last().perImage(batchSize))
	b.Logf("go-containerregistry one by one: %s for 100 (measured on %d), %.1f requests/image; the batch takes %.3f× its time (medians)",
		spreadString(ggcrWalls), ggcrN, ggcrReqs, batch.median()/ggcr.Seconds())
	b.Logf("memory (client, in-process registry and proxy together): %.0f KiB allocated per image; peak heap in use +%.1f MiB for 100 images, +%.1f MiB for 25, +%.1f MiB for 100 repositories",
		bl.allocPerImage/1024, bl.peakHeapInUseMB, cases["25images"].last().peakHeapInUseMB, cases["100repos"].last().peakHeapInUseMB)
}
