package bench

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/cli"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// latency is added to every request, as if the registry were remote.
const latency = 50 * time.Millisecond

// fixture pushes base:1 and base:2 (3 layers each, none shared: the worst
// case) straight to the registry, and the same two as the linux/amd64
// images of two-platform indexes mbase:1 and mbase:2 (their linux/arm64
// images have other layers), and returns an app image on base:1 (2 layers
// of its own), which is also on mbase:1.
func fixture(b testing.TB, reg *regtest.Registry) v1.Image {
	base := func(v string, p testimage.Platform) v1.Image {
		img, err := testimage.Build(nil, p,
			testimage.Copy("ADD os", map[string]string{"etc/os-release": "v" + v + p.Arch, "bin/sh": "sh " + v + p.Arch}),
			testimage.Copy("COPY lib", map[string]string{"lib/libc.so": "libc " + v + p.Arch}),
			testimage.Copy("COPY certs", map[string]string{"etc/ssl/certs.pem": "certs " + v + p.Arch}),
			testimage.Env("PATH=/usr/bin", "BASE="+v))
		if err != nil {
			b.Fatal(err)
		}
		return img
	}
	arm := testimage.Platform{OS: "linux", Arch: "arm64"}
	for _, v := range []string{"1", "2"} {
		amd := base(v, testimage.Linux)
		reg.Push(b, "base:"+v, amd)
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		for _, img := range []v1.Image{amd, base(v, arm)} {
			p := must(testimage.PlatformOf(img))
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: p.OS, Architecture: p.Arch}}})
		}
		reg.PushIndex(b, "mbase:"+v, idx)
	}
	app, err := testimage.Build(reg.Image(b, "base:1"), testimage.Linux,
		testimage.Copy("COPY app", map[string]string{"app/server": string(bytes.Repeat([]byte("x"), 1<<20))}),
		testimage.Copy("COPY conf", map[string]string{"app/conf": "conf"}),
		testimage.Env("MODE=prod"))
	if err != nil {
		b.Fatal(err)
	}
	return app
}

// form is a way users name the registry on the command line.
type form struct {
	name string
	args func(host string) []string // the registry's part of the arguments
}

// forms: a plain-HTTP registry named http://HOST (the REGISTRY argument),
// and named HOST with --insecure, as most users type it for a test
// registry.
var forms = []form{
	{"insecure", func(host string) []string { return []string{"--insecure", host} }},
	{"http", func(host string) []string { return []string{"http://" + host} }},
}

// rebaseCLI runs image-rebase on the registry at host, named as f says.
func rebaseCLI(b *testing.B, f form, host string, args ...string) {
	var out, errb bytes.Buffer
	if code := cli.Main(append(f.args(host), args...), &out, &errb); code != 0 {
		b.Fatalf("image-rebase %s: exit %d: %s", f.name, code, errb.String())
	}
}

// measure sums a case's requests, round trips and layer bytes over the
// iterations and keeps each iteration's wall time.
type measure struct {
	requests, roundTrips int
	blobBytes            int64
	walls                []time.Duration
}

func (m *measure) add(p *proxytest.Proxy, layers map[string]bool, d time.Duration) {
	s := p.Stats()
	m.requests += s.Requests
	m.roundTrips += s.RoundTrips
	m.blobBytes += p.BytesOf(func(d string) bool { return layers[d] })
	m.walls = append(m.walls, d)
}

// spread returns the median, the least and the greatest of ds. The median
// is what the README reports: the machine is shared, and a run that waits
// for the CPU says nothing about the tool.
func spread(ds []time.Duration) (median, lo, hi time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[0], s[len(s)-1]
}

// spreadString renders spread as "median (min–max)".
func spreadString(ds []time.Duration) string {
	m, lo, hi := spread(ds)
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	if len(ds) == 1 {
		return r(m).String()
	}
	return fmt.Sprintf("%s (%s–%s)", r(m), r(lo), r(hi))
}

// median is the median wall time.
func (m measure) median() time.Duration {
	med, _, _ := spread(m.walls)
	return med
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
		float64(m.roundTrips)/float64(n), m.blobBytes/int64(n), spreadString(m.walls))
}

// report writes the measures of each case and, for each case of ours, its
// wall-time ratio to go-containerregistry's case that ggcr names.
func report(b *testing.B, n int, names []string, ms map[string]*measure, ggcrOf func(string) string) {
	for _, k := range names {
		m := ms[k]
		ggcr := ggcrOf(k)
		b.ReportMetric(float64(m.requests)/float64(n), k+"-requests/op")
		b.ReportMetric(float64(m.roundTrips)/float64(n), k+"-roundtrips/op")
		b.ReportMetric(float64(m.blobBytes)/float64(n), k+"-layerbytes/op")
		b.ReportMetric(m.median().Seconds()*1000, k+"-ms/op")
		line := fmt.Sprintf("%-22s %s", k+":", m.per(n))
		if k != ggcr && ms[ggcr] != nil {
			r := float64(m.median()) / float64(ms[ggcr].median())
			b.ReportMetric(r, k+"-time/ggcr")
			line += fmt.Sprintf("; median %.2f× go-containerregistry's", r)
		}
		b.Logf("%s", line)
	}
}

// BenchmarkRebase rebases one application image (base of 3 layers, all
// replaced) with image-rebase, the registry named as users type it
// (--insecure HOST and http://HOST), and with go-containerregistry's rebase
// path, each iteration on fresh copies of the same image; then the same
// image with its bases given as two-platform indexes (mbase), by both; then
// a rerun of image-rebase on an image already rebased.
func BenchmarkRebase(b *testing.B) {
	reg := regtest.Start(b)
	app := fixture(b, reg)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
	defer proxy.Close()
	host := proxy.Host()

	layers := layerDigests(b, reg, "base:1", "base:2", "mbase:1", "mbase:2")
	for _, l := range must(app.Layers()) {
		layers[must(l.Digest()).String()] = true
	}
	names := []string{"insecure", "http", "ggcr", "insecure-indexbases", "ggcr-indexbases", "insecure-rerun"}
	ms := map[string]*measure{}
	for _, k := range names {
		ms[k] = &measure{}
	}
	timed := func(k string, f func()) {
		proxy.Reset()
		start := time.Now()
		f()
		ms[k].add(proxy, layers, time.Since(start))
	}
	n := 0
	for b.Loop() {
		n++
		repo := func(k string) string {
			r := fmt.Sprintf("app-%s-%d", k, n)
			reg.Push(b, r+":1", app)
			return r + ":1"
		}
		for _, f := range forms {
			r := repo(f.name)
			timed(f.name, func() { rebaseCLI(b, f, host, r, "--from-base", "base:1", "--to-base", "base:2") })
			if f.name == "insecure" {
				timed("insecure-rerun", func() { rebaseCLI(b, f, host, r, "--from-base", "base:1", "--to-base", "base:2") })
			}
		}
		r := repo("ggcr")
		timed("ggcr", func() { must(0, ggcrRebase(host, r, "base:1", "base:2")) })
		r = repo("ir-mbase")
		timed("insecure-indexbases", func() { rebaseCLI(b, forms[0], host, r, "--from-base", "mbase:1", "--to-base", "mbase:2") })
		r = repo("ggcr-mbase")
		timed("ggcr-indexbases", func() { must(0, ggcrRebase(host, r, "mbase:1", "mbase:2")) })
	}
	report(b, n, names, ms, func(k string) string {
		if strings.HasSuffix(k, "indexbases") {
			return "ggcr-indexbases"
		}
		return "ggcr"
	})
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
