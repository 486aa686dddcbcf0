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

	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// indexFixture pushes base:1 and base:2 as indexes of the given
// architectures (3 layers per platform, none shared) and returns the app
// index on base:1 (2 layers of its own per platform) and every layer's
// digest.
func indexFixture(b testing.TB, reg *regtest.Registry, benchArches []string) (v1.ImageIndex, map[string]bool) {
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

// BenchmarkRebaseIndex rebases a two- and a four-platform application
// index onto a base index of as many platforms, with image-rebase (the
// registry named --insecure HOST and http://HOST) and with
// go-containerregistry used as a library user would: mutate.Rebase per
// platform, then a new index written with mutate.AppendManifests and
// remote.WriteIndex; then a rerun of image-rebase on the rebased index.
func BenchmarkRebaseIndex(b *testing.B) {
	for _, arches := range [][]string{{"amd64", "arm64"}, {"amd64", "arm64", "ppc64le", "s390x"}} {
		b.Run(fmt.Sprintf("%d-platforms", len(arches)), func(b *testing.B) {
			reg := regtest.Start(b)
			app, layers := indexFixture(b, reg, arches)
			proxy := proxytest.Start(reg.Host, proxytest.WithLatency(latency))
			defer proxy.Close()
			host := proxy.Host()

			names := []string{"insecure", "http", "ggcr", "insecure-rerun"}
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
					reg.PushIndex(b, r+":1", app)
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
				timed("ggcr", func() { must(0, ggcrRebaseIndex(host, r, "base:1", "base:2")) })
			}
			report(b, n, names, ms, func(string) string { return "ggcr" })
		})
	}
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
