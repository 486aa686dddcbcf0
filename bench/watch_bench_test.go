package bench

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/watch"
)

// watchPoll is the poll interval of BenchmarkWatch/poll.
const watchPoll = time.Second

// BenchmarkWatch measures `image-rebase watch` from a push of base:stable
// to the last of its 100 dependents rebased (10 repositories × 10 tags,
// base of 3 layers all replaced), the registry behind the proxy adding
// 50 ms to each of the watcher's requests. Each iteration moves
// base:stable (alternately to base:2 and back to base:1), pushed straight
// to the registry, and waits for the watcher's round to end.
//
//   - webhook: the registry notifies the watcher (Distribution's
//     notifications, POST /events);
//   - poll: no notifications; the watcher checks base:stable every second.
func BenchmarkWatch(b *testing.B) {
	for _, mode := range []string{"webhook", "poll"} {
		b.Run(mode, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			var opts []regtest.Option
			cfg := watch.Config{}
			if mode == "webhook" {
				opts = append(opts, regtest.WithNotifications("http://"+ln.Addr().String()+"/events", nil))
			} else {
				cfg.Poll = watchPoll
			}
			reg := regtest.Start(b, opts...)
			fixture(b, reg)
			bases := []string{"base:1", "base:2"}
			versions := make([]string, 2)
			for i, t := range bases {
				d, _ := reg.Digest(b, t)
				versions[i] = d
				reg.Push(b, "base:stable", reg.Image(b, t))
			}
			reg.Push(b, "base:stable", reg.Image(b, "base:1"))
			refs := appsOnBase1(b, reg, "app", batchSize, 10)
			proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
			defer proxy.Close()

			rounds := make(chan watch.Summary, 16)
			cfg.Registries = []watch.Registry{{Host: proxy.Host(), Bases: []string{"base:stable"}}}
			cfg.NewClient = func() *registry.Client {
				return registry.New(registry.Options{PlainHTTP: []string{proxy.Host()}, Keychain: reg.Keychain()})
			}
			cfg.OnRound = func(s watch.Summary) { rounds <- s }
			w, err := watch.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx, ln) }()
			defer func() { cancel(); <-done }()
			waitIndexed(b, "http://"+ln.Addr().String())

			var total, worst, inRounds time.Duration
			requests := 0
			n := 0
			for b.Loop() {
				n++
				next := n % 2 // base:2, base:1, base:2, ...
				proxy.Reset()
				reg.Push(b, "base:stable", reg.Image(b, bases[next]))
				start := time.Now()
				var s watch.Summary
				select {
				case s = <-rounds:
				case <-time.After(60 * time.Second):
					b.Fatal("no round within 60s")
				}
				took := time.Since(start)
				if s.Counts[watch.OutcomeRebased] != batchSize || s.Digest.String() != versions[next] {
					b.Fatalf("round %d: %v onto %s, want %d rebased onto %s", n, s.Counts, s.Digest, batchSize, versions[next])
				}
				total += took
				inRounds += time.Duration(s.Seconds * float64(time.Second))
				worst = max(worst, took)
				requests += proxy.Stats().Requests
				b.StopTimer()
				// Every dependent is on the new version (outside the timing).
				want := reg.Image(b, bases[next])
				wm, _ := want.Manifest()
				for _, ref := range refs[:10] {
					m, _ := reg.Image(b, ref).Manifest()
					if m.Layers[0].Digest != wm.Layers[0].Digest {
						b.Fatalf("%s is not on %s", ref, bases[next])
					}
				}
				b.StartTimer()
			}
			mean := total / time.Duration(n)
			b.ReportMetric(mean.Seconds(), "push-to-last-rebased-s")
			b.ReportMetric(worst.Seconds(), "worst-s")
			b.ReportMetric((inRounds / time.Duration(n)).Seconds(), "round-s")
			b.ReportMetric(float64(requests)/float64(n)/batchSize, "requests/image")
			budget := 3 * time.Second
			if mode == "poll" {
				budget += watchPoll * 11 / 10
			}
			b.Logf("%s: base push to the last of %d dependents rebased: mean %s, worst %s over %d pushes (target %s); %.1f requests per image",
				mode, batchSize, mean.Round(time.Millisecond), worst.Round(time.Millisecond), n, budget, float64(requests)/float64(n)/batchSize)
		})
	}
}

// waitIndexed waits for the watcher at url to have built its index.
func waitIndexed(b *testing.B, url string) {
	for deadline := time.Now().Add(60 * time.Second); ; {
		if resp, err := http.Get(url + "/healthz"); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), `"indexed":true`) {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("the watcher did not index")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
