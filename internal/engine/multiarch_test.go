package engine_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/rebase"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// multi is a registry holding multi-platform fixtures, built in Go.
type multi struct {
	t   *testing.T
	reg *regtest.Registry
	c   *registry.Client
}

func newMulti(t *testing.T, opts ...regtest.Option) *multi {
	reg := regtest.Start(t, opts...)
	return &multi{t: t, reg: reg, c: registry.New(registry.Options{Insecure: []string{reg.Host}})}
}

func (m *multi) loc(s string) engine.Location {
	m.t.Helper()
	l, err := m.c.Parse(s, m.reg.Host, true)
	if err != nil {
		m.t.Fatal(err)
	}
	return l
}

func (m *multi) req(image, from, to string) engine.Request {
	r := engine.Request{Image: m.loc(image), From: m.loc(from), To: m.loc(to)}
	r.Target = r.Image
	return r
}

// img builds an image for p on parent; os.version is set for Windows.
func (m *multi) img(parent v1.Image, p v1.Platform, steps ...testimage.Step) v1.Image {
	m.t.Helper()
	img, err := testimage.Build(parent, testimage.Platform{OS: p.OS, Arch: p.Architecture, Variant: p.Variant}, steps...)
	if err != nil {
		m.t.Fatal(err)
	}
	if p.OSVersion != "" {
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OSVersion = p.OSVersion
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			m.t.Fatal(err)
		}
	}
	return img
}

// entry is one manifest of an index made by index.
type entry struct {
	img v1.Image
	p   *v1.Platform
	ann map[string]string
}

func (m *multi) index(mt types.MediaType, entries ...entry) v1.ImageIndex {
	idx := mutate.IndexMediaType(empty.Index, mt)
	for _, e := range entries {
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: e.img, Descriptor: v1.Descriptor{Platform: e.p, Annotations: e.ann}})
	}
	return idx
}

func (m *multi) readIndex(repoTag string) (*v1.IndexManifest, v1.ImageIndex) {
	m.t.Helper()
	r, _ := name.ParseReference(m.reg.Ref(repoTag))
	idx, err := remote.Index(r)
	if err != nil {
		m.t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		m.t.Fatal(err)
	}
	return im, idx
}

func plat(s string) *v1.Platform {
	parts := strings.Split(s, "/")
	p := &v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) > 2 {
		p.Variant = parts[2]
	}
	return p
}

func layerDigests(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []v1.Hash
	for _, l := range ls {
		d, _ := l.Digest()
		out = append(out, d)
	}
	return out
}

// bases pushes base:1 and base:2 as indexes of the given platforms, and
// returns each platform's image of base:1 and base:2.
func (m *multi) bases(platforms ...string) (b1, b2 map[string]v1.Image) {
	b1, b2 = map[string]v1.Image{}, map[string]v1.Image{}
	var e1, e2 []entry
	for _, p := range platforms {
		b1[p] = m.img(nil, *plat(p), testimage.Copy("COPY os", map[string]string{"etc/os": "one " + p}), testimage.Env("V=1"))
		b2[p] = m.img(nil, *plat(p), testimage.Copy("COPY os", map[string]string{"etc/os": "two " + p}), testimage.Env("V=2"))
		e1 = append(e1, entry{img: b1[p], p: plat(p)})
		e2 = append(e2, entry{img: b2[p], p: plat(p)})
	}
	m.reg.PushIndex(m.t, "base:1", m.index(types.OCIImageIndex, e1...))
	m.reg.PushIndex(m.t, "base:2", m.index(types.OCIImageIndex, e2...))
	return b1, b2
}

func (m *multi) app(parent v1.Image, p string) v1.Image {
	return m.img(parent, *plat(p), testimage.Copy("COPY app", map[string]string{"app/bin": "app " + p}), testimage.Env("APP=on"))
}

// checkOn checks that the image of platform p in idx sits on base and keeps
// the application layer of app.
func (m *multi) checkOn(idx v1.ImageIndex, d v1.Descriptor, base, app v1.Image) {
	m.t.Helper()
	img, err := idx.Image(d.Digest)
	if err != nil {
		m.t.Fatal(err)
	}
	got, want := layerDigests(m.t, img), layerDigests(m.t, base)
	appLayers := layerDigests(m.t, app)
	want = append(want, appLayers[len(appLayers)-1])
	if fmt.Sprint(got) != fmt.Sprint(want) {
		m.t.Errorf("%s: layers %v, want %v", d.Platform, got, want)
	}
	cf, _ := img.ConfigFile()
	bcf, _ := base.ConfigFile()
	if cf.Architecture != bcf.Architecture || cf.Variant != bcf.Variant || !strings.Contains(strings.Join(cf.Config.Env, ","), "V=2") {
		m.t.Errorf("%s: config %s/%s %v", d.Platform, cf.Architecture, cf.Variant, cf.Config.Env)
	}
}

func rebaseOK(t *testing.T, req engine.Request) *engine.Result {
	t.Helper()
	res, err := engine.Rebase(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// refused runs a rebase that must be refused, with a message holding every
// want, and must write nothing.
func refused(t *testing.T, reg *regtest.Registry, req engine.Request, want ...string) {
	t.Helper()
	before := fmt.Sprint(reg.Snapshot(t))
	_, err := engine.Rebase(context.Background(), req)
	var re *rebase.RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T), want a refusal", err, err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	if after := fmt.Sprint(reg.Snapshot(t)); after != before {
		t.Errorf("a refused rebase wrote: %s → %s", before, after)
	}
}

func TestIndexAppOnIndexBasesDockerList(t *testing.T) {
	m := newMulti(t)
	b1, b2 := m.bases("linux/amd64", "linux/arm64", "linux/arm/v7")
	var es []entry
	apps := map[string]v1.Image{}
	for _, p := range []string{"linux/arm/v7", "linux/amd64", "linux/arm64"} { // not the bases' order
		apps[p] = m.app(b1[p], p)
		es = append(es, entry{img: apps[p], p: plat(p), ann: map[string]string{"org.example.platform": p}})
	}
	idx := mutate.Annotations(m.index(types.DockerManifestList, es...), map[string]string{"org.example.top": "kept"}).(v1.ImageIndex)
	m.reg.PushIndex(t, "app:1", idx)
	res := rebaseOK(t, m.req("app:1", "base:1", "base:2"))
	if res.Action != engine.Rebased || len(res.Platforms) != 3 {
		t.Fatalf("result %+v", res)
	}
	im, got := m.readIndex("app:1")
	if im.MediaType != types.DockerManifestList || im.Annotations["org.example.top"] != "kept" {
		t.Errorf("index media type %s, annotations %v", im.MediaType, im.Annotations)
	}
	for i, p := range []string{"linux/arm/v7", "linux/amd64", "linux/arm64"} {
		d := im.Manifests[i]
		if !d.Platform.Equals(*plat(p)) || d.Annotations["org.example.platform"] != p {
			t.Errorf("entry %d: %v %v, want %s (order, platform and annotations kept)", i, d.Platform, d.Annotations, p)
		}
		m.checkOn(got, d, b2[p], apps[p])
	}
}

func TestIndexAppOnSinglePlatformBases(t *testing.T) {
	m := newMulti(t)
	amd := *plat("linux/amd64")
	s1 := m.img(nil, amd, testimage.Copy("COPY os", map[string]string{"etc/os": "one"}), testimage.Env("V=1"))
	s2 := m.img(nil, amd, testimage.Copy("COPY os", map[string]string{"etc/os": "two"}), testimage.Env("V=2"))
	m.reg.Push(t, "single:1", s1)
	m.reg.Push(t, "single:2", s2)
	app := m.app(s1, "linux/amd64")
	m.reg.PushIndex(t, "app:1", m.index(types.OCIImageIndex, entry{img: app, p: &amd}))
	rebaseOK(t, m.req("app:1", "single:1", "single:2"))
	im, got := m.readIndex("app:1")
	m.checkOn(got, im.Manifests[0], s2, app)

	// An arm64 platform cannot move onto an amd64 base: refused, naming it.
	arm := m.app(m.img(nil, *plat("linux/arm64"), testimage.Copy("COPY os", map[string]string{"etc/os": "one"})), "linux/arm64")
	m.reg.PushIndex(t, "app:2", m.index(types.OCIImageIndex, entry{img: m.app(s1, "linux/amd64"), p: &amd}, entry{img: arm, p: plat("linux/arm64")}))
	refused(t, m.reg, m.req("app:2", "single:1", "single:2"), "linux/arm64")
}

func TestSingleAppOnIndexBases(t *testing.T) {
	m := newMulti(t)
	b1, b2 := m.bases("linux/amd64", "linux/arm64")
	app := m.app(b1["linux/arm64"], "linux/arm64")
	m.reg.Push(t, "app:1", app)
	res := rebaseOK(t, m.req("app:1", "base:1", "base:2"))
	if res.Action != engine.Rebased {
		t.Fatalf("result %+v", res)
	}
	got := m.reg.Image(t, "app:1")
	want := append(layerDigests(t, b2["linux/arm64"]), layerDigests(t, app)[1])
	if fmt.Sprint(layerDigests(t, got)) != fmt.Sprint(want) {
		t.Errorf("layers %v, want the arm64 image of base:2 then the app's: %v", layerDigests(t, got), want)
	}
}

func TestPlatformFilter(t *testing.T) {
	m := newMulti(t)
	b1, b2 := m.bases("linux/amd64", "linux/arm64")
	apps := map[string]v1.Image{}
	var es []entry
	for _, p := range []string{"linux/amd64", "linux/arm64"} {
		apps[p] = m.app(b1[p], p)
		es = append(es, entry{img: apps[p], p: plat(p)})
	}
	m.reg.PushIndex(t, "app:1", m.index(types.OCIImageIndex, es...))
	before, _ := m.readIndex("app:1")

	req := m.req("app:1", "base:1", "base:2")
	req.Platforms = []v1.Platform{*plat("linux/arm64")}
	refused(t, m.reg, req, "linux/amd64", "--keep-other-platforms")

	req.KeepOtherPlatforms = true
	res := rebaseOK(t, req)
	if len(res.Platforms) != 1 || res.Platforms[0].Platform != "linux/arm64" {
		t.Fatalf("platforms %+v", res.Platforms)
	}
	im, got := m.readIndex("app:1")
	if len(im.Manifests) != 2 || im.Manifests[0].Digest != before.Manifests[0].Digest || !im.Manifests[0].Platform.Equals(*plat("linux/amd64")) {
		t.Errorf("amd64 entry %+v, want it unchanged (%s)", im.Manifests[0], before.Manifests[0].Digest)
	}
	if im.Manifests[1].Digest == before.Manifests[1].Digest {
		t.Fatalf("arm64 not rebased")
	}
	m.checkOn(got, im.Manifests[1], b2["linux/arm64"], apps["linux/arm64"])

	req.Platforms = []v1.Platform{*plat("windows/amd64")}
	refused(t, m.reg, req, "selects none")
}

// TestAttestations: an attestation manifest of a replaced image is dropped
// with a warning, or kept detached (its vnd.docker.reference.digest
// annotation removed) with --keep-attestations, so that the index never
// claims it describes an image no longer there; one of an image that stays
// in the index (a platform --platform leaves) stays as it is.
func TestAttestations(t *testing.T) {
	m := newMulti(t)
	b1, _ := m.bases("linux/amd64", "linux/arm64")
	var es []entry
	for _, p := range []string{"linux/amd64", "linux/arm64"} {
		es = append(es, entry{img: m.app(b1[p], p), p: plat(p)})
	}
	unknown := &v1.Platform{OS: "unknown", Architecture: "unknown"}
	var describes, attests []v1.Hash
	for i, p := range []string{"linux/amd64", "linux/arm64"} {
		d, _ := es[i].img.Digest()
		attest := m.img(nil, *unknown, testimage.Copy("SBOM", map[string]string{"sbom.spdx.json": `{"for":"` + p + `"}`}))
		ad, _ := attest.Digest()
		describes, attests = append(describes, d), append(attests, ad)
		es = append(es, entry{img: attest, p: unknown, ann: map[string]string{
			"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": d.String()}})
	}
	idx := m.index(types.OCIImageIndex, es...)
	for _, tag := range []string{"drop", "keep", "one-platform"} {
		m.reg.PushIndex(t, "app:"+tag, idx)
	}
	codes := func(ws []rebase.Warning) string {
		var out []string
		for _, w := range ws {
			out = append(out, w.Code)
		}
		return strings.Join(out, ",")
	}

	res := rebaseOK(t, m.req("app:drop", "base:1", "base:2"))
	if codes(res.Warnings) != "attestation-dropped,attestation-dropped" || !strings.Contains(res.Warnings[0].Message, describes[0].String()) {
		t.Errorf("warnings %+v, want each attestation dropped, naming the image it describes", res.Warnings)
	}
	if im, _ := m.readIndex("app:drop"); len(im.Manifests) != 2 {
		t.Errorf("%d manifests, want the attestations dropped", len(im.Manifests))
	}

	req := m.req("app:keep", "base:1", "base:2")
	req.KeepAttestations = true
	res = rebaseOK(t, req)
	im, _ := m.readIndex("app:keep")
	if len(im.Manifests) != 4 || im.Manifests[2].Digest != attests[0] || im.Manifests[3].Digest != attests[1] {
		t.Fatalf("manifests %+v, want the attestations kept in place", im.Manifests)
	}
	for _, d := range im.Manifests {
		if d.Digest == describes[0] || d.Digest == describes[1] {
			t.Fatalf("an old image is still in the index")
		}
		if ref, ok := d.Annotations["vnd.docker.reference.digest"]; ok {
			t.Errorf("entry %s still claims to describe %s, which is not in the index", d.Digest, ref)
		}
	}
	if im.Manifests[2].Annotations["vnd.docker.reference.type"] != "attestation-manifest" {
		t.Errorf("kept attestation annotations %v, want it still marked as an attestation", im.Manifests[2].Annotations)
	}
	if codes(res.Warnings) != "attestation-detached,attestation-detached" || !strings.Contains(res.Warnings[0].Message, describes[0].String()) || !strings.Contains(res.Warnings[0].Message, "no longer in the index") {
		t.Errorf("warnings %+v, want each attestation kept detached, naming %s as no longer in the index", res.Warnings, describes[0])
	}

	// Only arm64 rebased: the amd64 image stays, and so does its
	// attestation, as it was; arm64's is dropped.
	req = m.req("app:one-platform", "base:1", "base:2")
	req.Platforms, req.KeepOtherPlatforms = []v1.Platform{*plat("linux/arm64")}, true
	res = rebaseOK(t, req)
	im, _ = m.readIndex("app:one-platform")
	if len(im.Manifests) != 3 || im.Manifests[0].Digest != describes[0] || im.Manifests[2].Digest != attests[0] ||
		im.Manifests[2].Annotations["vnd.docker.reference.digest"] != describes[0].String() {
		t.Errorf("manifests %+v, want amd64 and its attestation unchanged, arm64's attestation dropped", im.Manifests)
	}
	if codes(res.Warnings) != "attestation-dropped" || !strings.Contains(res.Warnings[0].Message, describes[1].String()) {
		t.Errorf("warnings %+v, want only arm64's attestation dropped", res.Warnings)
	}
}

// TestWindowsForeignLayers: Windows-like Docker images whose base layer is
// foreign (urls, not in the registry). The rebase must never ask the
// registry to mount it, and the registry (Distribution checks foreign
// layers' urls, not their blobs) must accept the result. The OS build
// (os.version without its revision) must not change.
func TestWindowsForeignLayers(t *testing.T) {
	var mu sync.Mutex
	var mounts []string
	m := newMulti(t, regtest.WithAllowedURLs(`^https://mcr\.example\.com/`), regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if d := r.URL.Query().Get("mount"); d != "" {
				mu.Lock()
				mounts = append(mounts, d)
				mu.Unlock()
			}
			h.ServeHTTP(w, r)
		})
	}))
	win := func(osVersion, content string) v1.Image {
		foreign, err := testimage.Layer(map[string]string{"Files/windows": content}, types.DockerForeignLayer)
		if err != nil {
			t.Fatal(err)
		}
		img, err := mutate.Append(testimage.Scratch("docker"), mutate.Addendum{Layer: foreign, MediaType: types.DockerForeignLayer,
			URLs: []string{"https://mcr.example.com/layers/" + content}, History: v1.History{CreatedBy: "Apply image " + osVersion}})
		if err != nil {
			t.Fatal(err)
		}
		return m.img(img, v1.Platform{OS: "windows", Architecture: "amd64", OSVersion: osVersion},
			testimage.Copy("Install update", map[string]string{"Files/update": content}), testimage.Env("V="+content))
	}
	b1, b2 := win("10.0.17763.100", "1"), win("10.0.17763.200", "2")
	other := win("10.0.20348.100", "2022")
	p := func(img v1.Image) *v1.Platform {
		cf, _ := img.ConfigFile()
		return &v1.Platform{OS: "windows", Architecture: "amd64", OSVersion: cf.OSVersion}
	}
	m.reg.PushIndex(t, "win:1", m.index(types.DockerManifestList, entry{img: b1, p: p(b1)}))
	m.reg.PushIndex(t, "win:2", m.index(types.DockerManifestList, entry{img: other, p: p(other)}, entry{img: b2, p: p(b2)}))
	m.reg.PushIndex(t, "win:2022", m.index(types.DockerManifestList, entry{img: other, p: p(other)}))
	app := m.img(b1, *p(b1), testimage.Copy("COPY app", map[string]string{"app/app.exe": "app"}))
	m.reg.PushIndex(t, "app:1", m.index(types.DockerManifestList, entry{img: app, p: p(app)}))
	foreign1, foreign2 := layerDigests(t, b1)[0], layerDigests(t, b2)[0]
	if m.reg.BlobExists(t, "win", foreign2) {
		t.Fatalf("the fixture pushed the foreign layer")
	}

	refused(t, m.reg, m.req("app:1", "win:1", "win:2022"), "windows/amd64 (10.0.17763.100)", "10.0.20348.100")

	res := rebaseOK(t, m.req("app:1", "win:1", "win:2"))
	if res.Action != engine.Rebased {
		t.Fatalf("result %+v", res)
	}
	for _, d := range mounts {
		if d == foreign1.String() || d == foreign2.String() {
			t.Errorf("asked the registry to mount foreign layer %s", d)
		}
	}
	im, idx := m.readIndex("app:1")
	got, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	mf, _ := got.Manifest()
	l0 := mf.Layers[0]
	if l0.Digest != foreign2 || l0.MediaType != types.DockerForeignLayer || len(l0.URLs) != 1 || l0.URLs[0] != "https://mcr.example.com/layers/2" {
		t.Errorf("base layer %+v, want win:2's foreign layer with its urls", l0)
	}
	if mf.MediaType != types.DockerManifestSchema2 || im.Manifests[0].Platform.OSVersion != "10.0.17763.100" {
		t.Errorf("manifest %s, platform %+v", mf.MediaType, im.Manifests[0].Platform)
	}
	if cf, _ := got.ConfigFile(); cf.OSVersion != "10.0.17763.200" {
		t.Errorf("config os.version %q, want the new base's", cf.OSVersion)
	}
}

func TestArmVariants(t *testing.T) {
	m := newMulti(t)
	// base:1 and base:2 serve arm v6 and arm64 with variant v8.
	b1, b2 := m.bases("linux/arm/v6", "linux/arm64/v8")
	for _, c := range []struct {
		name, app, base string
		ok              bool
	}{
		{"arm v7 is not arm v6", "linux/arm/v7", "linux/arm/v6", false},
		{"arm64 without variant is arm64 v8", "linux/arm64", "linux/arm64/v8", true},
		{"arm64 v8", "linux/arm64/v8", "linux/arm64/v8", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			tag := "app:" + strings.NewReplacer("/", "-").Replace(c.app)
			parent := b1[c.base]
			if parent == nil {
				parent = m.img(nil, *plat(c.app), testimage.Copy("COPY os", map[string]string{"etc/os": "own"}))
			}
			app := m.app(parent, c.app)
			m.reg.PushIndex(t, tag, m.index(types.OCIImageIndex, entry{img: app, p: plat(c.app)}))
			req := m.req(tag, "base:1", "base:2")
			if !c.ok {
				refused(t, m.reg, req, c.app)
				return
			}
			rebaseOK(t, req)
			im, idx := m.readIndex(tag)
			m.checkOn(idx, im.Manifests[0], b2[c.base], app)
		})
	}
}

// A library caller's request has no resolver: the label that names the old
// base's repository still moves to the new base.
func TestLabelMovesWithoutResolver(t *testing.T) {
	m := newMulti(t)
	b1, err := testimage.Base(testimage.OCI, "1")
	if err != nil {
		t.Fatal(err)
	}
	b2, err := testimage.Base(testimage.OCI, "2")
	if err != nil {
		t.Fatal(err)
	}
	app, err := testimage.App(b1, testimage.AppSteps("base:1")...)
	if err != nil {
		t.Fatal(err)
	}
	m.reg.Push(t, "base:1", b1)
	m.reg.Push(t, "base:2", b2)
	m.reg.Push(t, "app:1", app)
	rebaseOK(t, m.req("app:1", "base:1", "base:2"))
	cf, err := m.reg.Image(t, "app:1").ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Labels["FROM"]; got != "base:2" {
		t.Errorf("label FROM=%q, want base:2 (relative, as the image wrote it)", got)
	}
}
