package bench

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/image-rebase/image-rebase/cli"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// latency is added to every request, as if the registry were remote.
const latency = 50 * time.Millisecond

// fixture pushes base:1 and base:2 (3 layers each, none shared: the worst
// case) straight to the registry, and returns a builder of app images on
// base:1 (2 layers of their own).
func fixture(b testing.TB, reg *regtest.Registry) v1.Image {
	base := func(v string) v1.Image {
		img, err := testimage.Build(nil, testimage.Linux,
			testimage.Copy("ADD os", map[string]string{"etc/os-release": "v" + v, "bin/sh": "sh " + v}),
			testimage.Copy("COPY lib", map[string]string{"lib/libc.so": "libc " + v}),
			testimage.Copy("COPY certs", map[string]string{"etc/ssl/certs.pem": "certs " + v}),
			testimage.Env("PATH=/usr/bin", "BASE="+v))
		if err != nil {
			b.Fatal(err)
		}
		return img
	}
	b1 := base("1")
	reg.Push(b, "base:1", b1)
	reg.Push(b, "base:2", base("2"))
	app, err := testimage.Build(b1, testimage.Linux,
		testimage.Copy("COPY app", map[string]string{"app/server": string(bytes.Repeat([]byte("x"), 1<<20))}),
		testimage.Copy("COPY conf", map[string]string{"app/conf": "conf"}),
		testimage.Env("MODE=prod"))
	if err != nil {
		b.Fatal(err)
	}
	return app
}

type measure struct {
	requests, roundTrips int
	blobBytes            int64
	wall                 time.Duration
}

func (m *measure) add(p *proxytest.Proxy, layers map[string]bool, d time.Duration) {
	s := p.Stats()
	m.requests += s.Requests
	m.roundTrips += s.RoundTrips
	m.blobBytes += p.BytesOf(func(d string) bool { return layers[d] })
	m.wall += d
}

// layerDigests lists the layers of the images, to tell layer bytes from
// config bytes.
func layerDigests(b testing.TB, reg *regtest.Registry, refs ...string) map[string]bool {
	out := map[string]bool{}
	for _, r := range refs {
		ls, err := reg.Image(b, r).Layers()
		if err != nil {
			b.Fatal(err)
		}
		for _, l := range ls {
			d, _ := l.Digest()
			out[d.String()] = true
		}
	}
	return out
}

func (m measure) per(n int) string {
	return fmt.Sprintf("%.1f requests, %.1f round trips, %d layer bytes, %s", float64(m.requests)/float64(n),
		float64(m.roundTrips)/float64(n), m.blobBytes/int64(n), (m.wall / time.Duration(n)).Round(time.Millisecond))
}

// BenchmarkRebase rebases one application image (base of 3 layers, all
// replaced) with image-rebase and with go-containerregistry's rebase path,
// each iteration on fresh copies of the same image, and reports both and
// their ratios.
func BenchmarkRebase(b *testing.B) {
	reg := regtest.Start(b)
	app := fixture(b, reg)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
	defer proxy.Close()
	host := proxy.Host()

	layers := layerDigests(b, reg, "base:1", "base:2")
	for _, l := range must(app.Layers()) {
		layers[must(l.Digest()).String()] = true
	}
	var ours, ggcr measure
	n := 0
	for b.Loop() {
		n++
		repoA, repoB := fmt.Sprintf("app-ir-%d", n), fmt.Sprintf("app-ggcr-%d", n)
		reg.Push(b, repoA+":1", app)
		reg.Push(b, repoB+":1", app)

		proxy.Reset()
		start := time.Now()
		var out, errb bytes.Buffer
		if code := cli.Main([]string{"http://" + host, repoA + ":1", "--from-base", "base:1", "--to-base", "base:2"}, &out, &errb); code != 0 {
			b.Fatalf("image-rebase: exit %d: %s", code, errb.String())
		}
		ours.add(proxy, layers, time.Since(start))

		proxy.Reset()
		start = time.Now()
		if err := ggcrRebase(host, repoB+":1", "base:1", "base:2"); err != nil {
			b.Fatal(err)
		}
		ggcr.add(proxy, layers, time.Since(start))
	}
	b.ReportMetric(float64(ours.requests)/float64(n), "requests/op")
	b.ReportMetric(float64(ours.roundTrips)/float64(n), "roundtrips/op")
	b.ReportMetric(float64(ours.blobBytes)/float64(n), "layerbytes/op")
	b.ReportMetric(float64(ggcr.requests)/float64(n), "ggcr-requests/op")
	b.ReportMetric(float64(ggcr.roundTrips)/float64(n), "ggcr-roundtrips/op")
	b.ReportMetric(float64(ggcr.blobBytes)/float64(n), "ggcr-layerbytes/op")
	b.ReportMetric(float64(ggcr.requests)/float64(ours.requests), "x-fewer-requests")
	b.ReportMetric(float64(ggcr.wall)/float64(ours.wall), "x-faster")
	b.Logf("image-rebase: %s", ours.per(n))
	b.Logf("ggcr rebase:  %s", ggcr.per(n))
}

// ggcrRebase is go-containerregistry's rebase path, as `crane rebase` runs it.
func ggcrRebase(host, image, oldBase, newBase string) error {
	get := func(s string) (name.Reference, v1.Image, error) {
		ref, err := name.ParseReference(host+"/"+s, name.Insecure)
		if err != nil {
			return nil, nil, err
		}
		img, err := remote.Image(ref)
		return ref, img, err
	}
	ref, orig, err := get(image)
	if err != nil {
		return err
	}
	_, old, err := get(oldBase)
	if err != nil {
		return err
	}
	_, nw, err := get(newBase)
	if err != nil {
		return err
	}
	rebased, err := mutate.Rebase(orig, old, nw)
	if err != nil {
		return err
	}
	return remote.Write(ref, rebased)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
