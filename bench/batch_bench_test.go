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

	"github.com/image-rebase/image-rebase/cli"
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
	shared          int // ping and the bases' manifests and configs
	mounts          int
	heads           int
	byAction        map[string]int
	allocPerImage   float64
	peakHeapInUseMB float64
}

// runBatch runs `image-rebase batch` on refs through the proxy and measures
// it.
func runBatch(b testing.TB, proxy *proxytest.Proxy, reg *regtest.Registry, refs []string, extra ...string) batchFigures {
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
	args := append([]string{"batch", "-r", "http://" + proxy.Host(), "-f", file, "--from-base", "base:1", "--to-base", "base:2", "-o", "json"}, extra...)
	code := cli.Main(args, &out, &errb)
	f := batchFigures{wall: time.Since(start), byAction: map[string]int{}}
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
			f.byAction[v.Action]++
		}
	}
	for _, e := range proxy.Log() {
		f.requests++
		switch {
		case e.Class == "ping",
			e.Class == "manifest" && strings.HasPrefix(e.Path, "/v2/base/"),
			e.Class == "blob" && baseDocs[e.Digest]:
			f.shared++
		case e.Class == "blob-upload" && e.Method == "POST" && e.Digest != "":
			f.mounts++
		case e.Class == "manifest" && e.Method == "HEAD":
			f.heads++
		}
	}
	f.allocPerImage = float64(after.TotalAlloc-before.TotalAlloc) / float64(len(refs))
	f.peakHeapInUseMB = float64(peak.Load()-min(peak.Load(), before.HeapInuse)) / (1 << 20)
	return f
}

func (f batchFigures) perImage(n int) float64 { return float64(f.requests-f.shared) / float64(n) }

// BenchmarkBatch rebases 100 application images on one base (3 layers,
// all replaced) with `image-rebase batch`, in 10 repositories of 10 tags
// and in 100 repositories of one tag, then runs the batch again on the
// up-to-date images; the same batch at -j 16, and with the tags' reads
// before the PUT skipped (--recheck-after 1h); go-containerregistry's
// rebase path rebases copies of the same 100 images one by one. -short
// runs go-containerregistry on 10 images and scales its time to 100.
func BenchmarkBatch(b *testing.B) {
	reg := regtest.Start(b)
	fixture(b, reg)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
	defer proxy.Close()

	n := 0
	for b.Loop() {
		n++
		p := fmt.Sprintf("r%d-", n)
		tenByTen := appsOnBase1(b, reg, p+"app", batchSize, 10)
		hundred := appsOnBase1(b, reg, p+"solo", batchSize, batchSize)
		ggcrN := batchSize
		if testing.Short() {
			ggcrN = 10
		}
		ggcrRefs := appsOnBase1(b, reg, p+"ggcr", ggcrN, 10)

		batch := runBatch(b, proxy, reg, tenByTen)
		if batch.byAction["rebased"] != batchSize {
			b.Fatalf("batch: %v", batch.byAction)
		}
		rerun := runBatch(b, proxy, reg, tenByTen)
		if rerun.byAction["up-to-date"] != batchSize {
			b.Fatalf("rerun: %v", rerun.byAction)
		}
		solo := runBatch(b, proxy, reg, hundred)
		quarter := runBatch(b, proxy, reg, appsOnBase1(b, reg, p+"quarter", batchSize/4, 10))
		j16 := runBatch(b, proxy, reg, appsOnBase1(b, reg, p+"j16", batchSize, 10), "-j", "16")
		skip := runBatch(b, proxy, reg, appsOnBase1(b, reg, p+"skip", batchSize, 10), "--recheck-after", "1h")

		proxy.Reset()
		start := time.Now()
		for _, ref := range ggcrRefs {
			if err := ggcrRebase(proxy.Host(), ref, "base:1", "base:2"); err != nil {
				b.Fatal(err)
			}
		}
		ggcrWall := time.Since(start) * time.Duration(batchSize) / time.Duration(ggcrN)
		ggcrReqs := float64(proxy.Stats().Requests) / float64(ggcrN)

		b.ReportMetric(batch.wall.Seconds(), "batch-s")
		b.ReportMetric(float64(batch.requests), "batch-requests")
		b.ReportMetric(batch.perImage(batchSize), "requests/image")
		b.ReportMetric(float64(batch.requests-batch.shared-batch.mounts)/batchSize, "requests/image-without-mounts")
		b.ReportMetric(rerun.wall.Seconds(), "rerun-s")
		b.ReportMetric(rerun.perImage(batchSize), "rerun-requests/image")
		b.ReportMetric(solo.wall.Seconds(), "100repos-s")
		b.ReportMetric(solo.perImage(batchSize), "100repos-requests/image")
		b.ReportMetric(skip.wall.Seconds(), "skip-recheck-s")
		b.ReportMetric(skip.perImage(batchSize), "skip-recheck-requests/image")
		b.ReportMetric(j16.wall.Seconds(), "j16-s")
		b.ReportMetric(ggcrWall.Seconds(), "ggcr-s")
		b.ReportMetric(ggcrReqs, "ggcr-requests/image")
		b.ReportMetric(ggcrWall.Seconds()/batch.wall.Seconds(), "x-faster")
		b.ReportMetric(batch.allocPerImage/1024, "alloc-KiB/image")
		b.ReportMetric(batch.peakHeapInUseMB, "peak-heap-MiB")
		b.ReportMetric(quarter.peakHeapInUseMB, "25images-peak-heap-MiB")
		b.Logf("batch, 10 repositories × 10 tags: %s, %d requests (%d shared: ping and base documents; %d mounts), %.2f requests/image after the shared documents, %.2f without mounts, %d tag reads",
			batch.wall.Round(time.Millisecond), batch.requests, batch.shared, batch.mounts, batch.perImage(batchSize), float64(batch.requests-batch.shared-batch.mounts)/batchSize, batch.heads)
		b.Logf("rerun (all up to date): %s, %d requests, %.2f requests/image", rerun.wall.Round(time.Millisecond), rerun.requests, rerun.perImage(batchSize))
		b.Logf("batch, 100 repositories × 1 tag: %s, %d requests (%d mounts), %.2f requests/image", solo.wall.Round(time.Millisecond), solo.requests, solo.mounts, solo.perImage(batchSize))
		b.Logf("batch with --recheck-after 1h (no tag read before the PUT): %s, %.2f requests/image, %d tag reads", skip.wall.Round(time.Millisecond), skip.perImage(batchSize), skip.heads)
		b.Logf("-j 16: batch %s", j16.wall.Round(time.Millisecond))
		b.Logf("go-containerregistry one by one: %s for 100 (measured on %d), %.1f requests/image", ggcrWall.Round(time.Millisecond), ggcrN, ggcrReqs)
		b.Logf("memory (client, in-process registry and proxy together): %.0f KiB allocated per image; peak heap in use +%.1f MiB for 100 images, +%.1f MiB for 25 (%.0f KiB allocated per image), +%.1f MiB for 100 repositories",
			batch.allocPerImage/1024, batch.peakHeapInUseMB, quarter.peakHeapInUseMB, quarter.allocPerImage/1024, solo.peakHeapInUseMB)
	}
}
