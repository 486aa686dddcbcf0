package bench

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/cli"
	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

var benchArches = []string{"amd64", "arm64"}

// indexFixture pushes base:1 and base:2 as two-platform indexes (3 layers
// per platform, none shared) and returns the two-platform app index on
// base:1 (2 layers of its own per platform) and every layer's digest.
func indexFixture(b testing.TB, reg *regtest.Registry) (v1.ImageIndex, map[string]bool) {
	layers := map[string]bool{}
	note := func(img v1.Image) v1.Image {
		for _, l := range must(img.Layers()) {
			layers[must(l.Digest()).String()] = true
		}
		return img
	}
	index := func(imgs map[string]v1.Image) v1.ImageIndex {
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		for _, a := range benchArches {
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: imgs[a], Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: a}}})
		}
		return idx
	}
	base := func(v, arch string) v1.Image {
		return note(must(testimage.Build(nil, testimage.Platform{OS: "linux", Arch: arch},
			testimage.Copy("ADD os", map[string]string{"etc/os-release": "v" + v + arch, "bin/sh": "sh " + v + arch}),
			testimage.Copy("COPY lib", map[string]string{"lib/libc.so": "libc " + v + arch}),
			testimage.Copy("COPY certs", map[string]string{"etc/ssl/certs.pem": "certs " + v + arch}),
			testimage.Env("PATH=/usr/bin", "BASE="+v))))
	}
	b1, b2, apps := map[string]v1.Image{}, map[string]v1.Image{}, map[string]v1.Image{}
	for _, a := range benchArches {
		b1[a], b2[a] = base("1", a), base("2", a)
		apps[a] = note(must(testimage.Build(b1[a], testimage.Platform{OS: "linux", Arch: a},
			testimage.Copy("COPY app", map[string]string{"app/server": string(bytes.Repeat([]byte(a[:1]), 1<<20))}),
			testimage.Copy("COPY conf", map[string]string{"app/conf": "conf " + a}),
			testimage.Env("MODE=prod"))))
	}
	reg.PushIndex(b, "base:1", index(b1))
	reg.PushIndex(b, "base:2", index(b2))
	return index(apps), layers
}

// BenchmarkRebaseIndex rebases a two-platform application index onto a
// two-platform base, with image-rebase and with go-containerregistry used
// as a library user would: mutate.Rebase per platform, then a new index
// written with mutate.AppendManifests and remote.WriteIndex.
func BenchmarkRebaseIndex(b *testing.B) {
	reg := regtest.Start(b)
	app, layers := indexFixture(b, reg)
	proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
	defer proxy.Close()
	host := proxy.Host()

	var ours, ggcr measure
	n := 0
	for b.Loop() {
		n++
		repoA, repoB := fmt.Sprintf("app-ir-%d", n), fmt.Sprintf("app-ggcr-%d", n)
		reg.PushIndex(b, repoA+":1", app)
		reg.PushIndex(b, repoB+":1", app)

		proxy.Reset()
		start := time.Now()
		var out, errb bytes.Buffer
		if code := cli.Main([]string{"http://" + host, repoA + ":1", "--from-base", "base:1", "--to-base", "base:2"}, &out, &errb); code != 0 {
			b.Fatalf("image-rebase: exit %d: %s", code, errb.String())
		}
		ours.add(proxy, layers, time.Since(start))

		proxy.Reset()
		start = time.Now()
		if err := ggcrRebaseIndex(host, repoB+":1", "base:1", "base:2"); err != nil {
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

// ggcrRebaseIndex rebases each platform of an index with mutate.Rebase onto
// the matching images of the base indexes, and writes the new index.
func ggcrRebaseIndex(host, image, oldBase, newBase string) error {
	get := func(s string) (name.Reference, v1.ImageIndex, *v1.IndexManifest, error) {
		ref, err := name.ParseReference(host+"/"+s, name.Insecure)
		if err != nil {
			return nil, nil, nil, err
		}
		idx, err := remote.Index(ref)
		if err != nil {
			return nil, nil, nil, err
		}
		im, err := idx.IndexManifest()
		return ref, idx, im, err
	}
	ref, orig, origM, err := get(image)
	if err != nil {
		return err
	}
	_, old, oldM, err := get(oldBase)
	if err != nil {
		return err
	}
	_, nw, nwM, err := get(newBase)
	if err != nil {
		return err
	}
	child := func(idx v1.ImageIndex, im *v1.IndexManifest, p *v1.Platform) (v1.Image, error) {
		for _, d := range im.Manifests {
			if d.Platform != nil && d.Platform.Satisfies(*p) {
				return idx.Image(d.Digest)
			}
		}
		return nil, fmt.Errorf("no %s image", p)
	}
	out := mutate.IndexMediaType(empty.Index, origM.MediaType)
	for _, d := range origM.Manifests {
		img, err := orig.Image(d.Digest)
		if err != nil {
			return err
		}
		o, err := child(old, oldM, d.Platform)
		if err != nil {
			return err
		}
		nb, err := child(nw, nwM, d.Platform)
		if err != nil {
			return err
		}
		rebased, err := mutate.Rebase(img, o, nb)
		if err != nil {
			return err
		}
		out = mutate.AppendManifests(out, mutate.IndexAddendum{Add: rebased, Descriptor: v1.Descriptor{Platform: d.Platform, Annotations: d.Annotations}})
	}
	return remote.WriteIndex(ref, out)
}
