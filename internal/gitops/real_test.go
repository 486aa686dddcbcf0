package gitops_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.yaml.in/yaml/v3"

	"github.com/image-rebase/image-rebase/internal/gitops"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// realFile is a file published in a public repository, under
// testdata/real (sources in testdata/real/README.md), with $rebase markers
// added where it had none.
type realFile struct {
	name string
	// sha256 is the digest of the published file: the input without the
	// markers added here.
	sha256  string
	markers gitops.Markers
	// render returns the references the tool that reads the file (chart,
	// Kustomize, kubelet) makes of the pinned file, with the tag each
	// names.
	render func(t *testing.T, out []byte) []rendered
	// line and problem: a file gitops must refuse, without a request.
	line    int
	problem string
}

// rendered is a reference as a consumer of the file composes it.
type rendered struct {
	ref, tag string
}

var realFiles = []realFile{
	{name: "bitnami-nginx-values.yaml", sha256: "6367d73a67ecfcd49bc0503c60907ca674a71ab0443f158e23cf31d28bd316f9", render: renderBitnami},
	{name: "flux-kustomization-digest.yaml", sha256: "5ae87efbd3db3c285e803222c1cd53060381aa5b72a8c7bf0193d0997cd08ec5", markers: gitops.Markers{gitops.ImagePolicyKey}, render: renderKustomize},
	{name: "flux-helmrelease-digest.yaml", sha256: "6540d466d4ef888f26fc9951dd1a1f10f1bde8b53fb3a7af214b93c37f15fefb", markers: gitops.Markers{gitops.ImagePolicyKey}, render: renderFluxHelmRelease},
	{name: "flux-setters-marked.yaml", sha256: "e240a78137c2331993caeb7c44412a753b5bccbf0c0022fa965ecc067c17ecee", markers: gitops.Markers{gitops.ImagePolicyKey}, render: renderContainers},
	{name: "argocd-external-dns-application.yaml", sha256: "6a25f3b01f92b024fc4727a013737555167cca75b883e26313414ccdf4c34669", render: renderArgoHelmValues},
	{name: "k3s-traefik.yaml", sha256: "6648b58d8635eaba81b729089baa73b2c8b3b2703def292abddf39750c6e8fa7", render: renderK3sValuesContent},
	{name: "argocd-application.yaml", sha256: "3c5a1a0407934736094e3a18d971afb067799a05c412b1d15548f35cd4775487", render: renderArgoKustomizeImages},
	{name: "flux-setters-kustomization.yaml", sha256: "06d0437f0f7a6db23413d5935c591cfeb66ed870b87840be279bade253a8b770", markers: gitops.Markers{gitops.ImagePolicyKey},
		line: 28, problem: `image "automation-ns:policy-with-digest": reference "image" has no tag; write REPOSITORY:TAG`},
	{name: "helm-guestbook-deployment.yaml", sha256: "ed6a6955968ae6ed4ae4db91b3f6c3f96becf67032eea4bd83255f7704c99133",
		line: 25, problem: `marker "guestbook": the value is a Helm/Go template expression ({{ ... }}), not an image reference`},
}

// realImages are the images the files name, by repository path and tag.
var realImages = []string{
	"bitnami/nginx:1.29.1-debian-12-r0", "bitnami/git:2.51.0-debian-12-r0", "bitnami/nginx-exporter:1.4.2-debian-12-r9",
	"stefanprodan/podinfo:6.8.0", "my-org/my-app:4.0.6", "library/image:v1.0.0", "external-dns/external-dns:v0.13.2",
	"rancher/mirrored-library-traefik:2.11.10", "argoprojlabs/argocd-e2e-container:0.2", "my-repo/my-app:0.1",
}

// dialLog records the addresses a client dialed.
type dialLog struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dialLog) list() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.addrs)
}

// redirected returns a registry client for which every registry (Docker
// Hub, ghcr.io, quay.io, …) is reg: each connection goes to reg, over TLS
// verified against reg's certificate. The file's references stay as
// published; no request leaves the machine.
func redirected(reg *regtest.Registry) (*registry.Client, *dialLog) {
	log := &dialLog{}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			log.mu.Lock()
			log.addrs = append(log.addrs, addr)
			log.mu.Unlock()
			return dialer.DialContext(ctx, "tcp", reg.Host)
		},
		TLSClientConfig: &tls.Config{RootCAs: reg.CertPool(), ServerName: "localhost"},
	}
	return registry.New(registry.Options{Keychain: reg.Keychain(), Transport: tr}), log
}

// markerRE matches a marker added to a published file.
var markerRE = regexp.MustCompile(`(?m) # \{"\$rebase": "[^"]*"\}$`)

// TestRealFiles runs gitops on files published in public repositories,
// marked, against a registry holding the images they name: the images are
// rebased onto the current image of their base, the output is the golden
// file byte for byte, a second run changes nothing, and the references the
// consuming tool composes from the output parse and name the rebased
// images.
func TestRealFiles(t *testing.T) {
	reg := regtest.Start(t, regtest.WithTLS())
	base := func(v string) v1.Image {
		img, err := testimage.Build(nil, testimage.Linux, testimage.Copy("COPY os /etc/os", map[string]string{"etc/os": "base " + v}), testimage.Env("PATH=/bin"))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	// The FROM label names the base relative to the image's registry:
	// base:1 is library/base:1 on Docker Hub, base:1 elsewhere.
	b1, b2 := base("1"), base("2")
	reg.Push(t, "library/base:1", b1)
	reg.Push(t, "base:1", b1)
	for _, ref := range realImages {
		img, err := testimage.Build(b1, testimage.Linux, testimage.Label("FROM", "base:1"),
			testimage.Copy("COPY app /app", map[string]string{"app": ref}), testimage.Cmd("/app"))
		if err != nil {
			t.Fatal(err)
		}
		reg.Push(t, ref, img)
	}
	reg.Push(t, "library/base:1", b2) // the patched base
	reg.Push(t, "base:1", b2)
	before := tagDigests(t, reg)
	b2Layers, err := b2.Layers()
	if err != nil {
		t.Fatal(err)
	}
	b2Layer, err := b2Layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}

	for _, f := range realFiles {
		t.Run(f.name, func(t *testing.T) {
			in := filepath.Join("testdata/real", f.name)
			input, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%x", sha256.Sum256(markerRE.ReplaceAll(input, nil))); got != f.sha256 {
				t.Fatalf("without its markers, %s is not the published file (sha256 %s, want %s)", in, got, f.sha256)
			}
			path := filepath.Join(t.TempDir(), f.name)
			if err := os.WriteFile(path, input, 0o644); err != nil {
				t.Fatal(err)
			}
			client, dials := redirected(reg)
			opts := gitops.Options{Resolver: &gitops.Rebaser{Parse: client.Parse}, Markers: f.markers}
			rep, err := gitops.Run(context.Background(), []string{path}, opts)
			if err != nil {
				t.Fatal(err)
			}
			out, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			fr := rep.Files[0]

			if f.problem != "" {
				if fr.Status != gitops.Failed || len(fr.Problems) != 1 || fr.Problems[0].Line != f.line || !strings.Contains(fr.Problems[0].Msg, f.problem) {
					t.Fatalf("report %+v, want line %d %q", fr, f.line, f.problem)
				}
				if !bytes.Equal(out, input) || len(dials.list()) != 0 {
					t.Fatalf("a refused file was written or looked up: %v", dials.list())
				}
				return
			}

			if err := rep.Err(); err != nil || fr.Status != gitops.Updated {
				t.Fatalf("status %s: %v", fr.Status, err)
			}
			for _, im := range fr.Images {
				if im.Action != "rebased" || !im.Changed {
					t.Errorf("image %+v", im)
				}
			}
			assertMarkedLinesOnly(t, input, out)
			golden := strings.TrimSuffix(in, filepath.Ext(in)) + ".golden"
			if gitops.Update() {
				if err := os.WriteFile(golden, out, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, want) {
				d, _ := gitops.Diff(golden, want, out)
				t.Fatalf("output differs from %s (go test -update rewrites it):\n%s", golden, d)
			}

			// What the consumer makes of it names the rebased image.
			after := tagDigests(t, reg)
			refs := f.render(t, out)
			if len(refs) != len(fr.Images) {
				t.Fatalf("%d references rendered, %d images marked", len(refs), len(fr.Images))
			}
			hosts := map[string]bool{}
			for _, r := range refs {
				checkRebased(t, reg, r, before, after, b2Layer)
				ref, _ := name.ParseReference(r.ref)
				hosts[ref.Context().RegistryStr()+":443"] = true
			}
			// Each image was looked up on the registry the file names.
			for _, addr := range dials.list() {
				if !hosts[addr] {
					t.Errorf("dialed %s; the file names %v", addr, hosts)
				}
			}

			// Again: up to date and pinned; the file is not touched.
			info, _ := os.Stat(path)
			rep, err = gitops.Run(context.Background(), []string{path}, opts)
			if err != nil || rep.Err() != nil || rep.Files[0].Status != gitops.Unchanged {
				t.Fatalf("second run: %v %v %+v", err, rep.Err(), rep.Files[0])
			}
			again, _ := os.Stat(path)
			if !os.SameFile(info, again) || !info.ModTime().Equal(again.ModTime()) {
				t.Fatal("the second run wrote the file")
			}
		})
	}
}

// TestRealFileUnmarkedRegistry: Bitnami values whose registry field is
// not marked are refused before any request, so bitnami/nginx is never
// looked up without its registry.
func TestRealFileUnmarkedRegistry(t *testing.T) {
	reg := regtest.Start(t, regtest.WithTLS())
	input, err := os.ReadFile("testdata/real/bitnami-nginx-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	input = bytes.Replace(input, []byte(` # {"$rebase": "nginx:registry"}`), nil, 1)
	path := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(path, input, 0o644); err != nil {
		t.Fatal(err)
	}
	client, dials := redirected(reg)
	rep, err := gitops.Run(context.Background(), []string{path}, gitops.Options{Resolver: &gitops.Pinner{Parse: client.Parse}})
	if err != nil {
		t.Fatal(err)
	}
	fr := rep.Files[0]
	want := `image "nginx": the repository at line 88 has a sibling "registry" field (line 87) that is not marked; mark it {"$rebase": "nginx:registry"}`
	if fr.Status != gitops.Failed || len(fr.Problems) != 1 || fr.Problems[0].Line != 88 || !strings.Contains(fr.Problems[0].Msg, want) {
		t.Fatalf("report %+v", fr)
	}
	out, _ := os.ReadFile(path)
	if !bytes.Equal(out, input) || len(dials.list()) != 0 {
		t.Fatalf("written or looked up: %v", dials.list())
	}
}

// tagDigests returns the digest each of realImages names on reg. The
// catalog is not walked: the Distribution in-memory storage leaves out of
// it a repository whose last path component repeats the one before
// (external-dns/external-dns).
func tagDigests(t *testing.T, reg *regtest.Registry) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, ref := range realImages {
		d, err := reg.Image(t, ref).Digest()
		if err != nil {
			t.Fatal(err)
		}
		out[ref] = d.String()
	}
	return out
}

// checkRebased checks that a rendered reference parses, and names by
// digest the image its tag names after the run: a new one, on the new
// base.
func checkRebased(t *testing.T, reg *regtest.Registry, r rendered, before, after map[string]string, b2Layer v1.Hash) {
	t.Helper()
	ref, err := name.ParseReference(r.ref)
	if err != nil {
		t.Fatalf("the consumer's reference %q does not parse: %v", r.ref, err)
	}
	d, ok := ref.(name.Digest)
	if !ok {
		t.Fatalf("%q does not pin a digest", r.ref)
	}
	key := d.Context().RepositoryStr() + ":" + r.tag
	if after[key] != d.DigestStr() || before[key] == "" || before[key] == after[key] {
		t.Fatalf("%q: %s was %s, is %s", r.ref, key, before[key], after[key])
	}
	layers, err := reg.Image(t, d.Context().RepositoryStr()+"@"+d.DigestStr()).Layers()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := layers[0].Digest(); err != nil || got != b2Layer {
		t.Fatalf("%q is not on the new base: first layer %s", r.ref, got)
	}
}

// assertMarkedLinesOnly checks that out differs from in only on lines
// that hold a marker.
func assertMarkedLinesOnly(t *testing.T, in, out []byte) {
	t.Helper()
	a, b := strings.Split(string(in), "\n"), strings.Split(string(out), "\n")
	if len(a) != len(b) {
		t.Fatalf("%d lines became %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] && !strings.Contains(a[i], `{"$rebase"`) && !strings.Contains(a[i], `{"$imagepolicy"`) {
			t.Errorf("line %d changed but holds no marker:\n- %s\n+ %s", i+1, a[i], b[i])
		}
	}
}

// decode reads every document of data.
func decode(t *testing.T, data []byte) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []map[string]any
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			break
		}
		docs = append(docs, m)
	}
	if len(docs) == 0 {
		t.Fatal("no document")
	}
	return docs
}

// dig follows keys (and sequence indexes as ints) into v.
func dig(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("no mapping at %v", p)
			}
			v = m[k]
		case int:
			s, ok := v.([]any)
			if !ok || k >= len(s) {
				t.Fatalf("no sequence item at %v", p)
			}
			v = s[k]
		}
	}
	return v
}

// str renders a scalar as a chart or Kustomize reads it.
func str(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// renderBitnami composes each image as the Bitnami common chart does
// (common.images.image: REGISTRY/REPOSITORY@DIGEST when a digest is set,
// else REGISTRY/REPOSITORY:TAG), and as REGISTRY/REPOSITORY:TAG@DIGEST.
func renderBitnami(t *testing.T, out []byte) []rendered {
	values := decode(t, out)[0]
	var refs []rendered
	for _, path := range [][]any{{"image"}, {"cloneStaticSiteFromGit", "image"}, {"metrics", "image"}} {
		image := dig(t, values, path...)
		reg, repo, tag, digest := str(dig(t, image, "registry")), str(dig(t, image, "repository")), str(dig(t, image, "tag")), str(dig(t, image, "digest"))
		if digest == "" {
			t.Fatalf("%v: no digest", path)
		}
		refs = append(refs, rendered{reg + "/" + repo + ":" + tag + "@" + digest, tag})
		if r := (rendered{reg + "/" + repo + "@" + digest, tag}); !slices.Contains(refs, r) {
			checkParses(t, r.ref)
		}
	}
	return refs
}

func checkParses(t *testing.T, ref string) {
	t.Helper()
	if _, err := name.NewDigest(ref); err != nil {
		t.Fatalf("%q does not parse: %v", ref, err)
	}
}

// renderKustomize composes the first images entry as Kustomize's image
// transformer does: NEWNAME (or NAME), then :NEWTAG, then @DIGEST.
func renderKustomize(t *testing.T, out []byte) []rendered {
	entry := dig(t, decode(t, out)[0], "images", 0)
	ref := str(dig(t, entry, "newName"))
	if ref == "" {
		ref = str(dig(t, entry, "name"))
	}
	tag := str(dig(t, entry, "newTag"))
	if tag != "" {
		ref += ":" + tag
	}
	if d := str(dig(t, entry, "digest")); d != "" {
		ref += "@" + d
	}
	return []rendered{{ref, tag}}
}

// renderFluxHelmRelease composes a chart's repository:tag@digest.
func renderFluxHelmRelease(t *testing.T, out []byte) []rendered {
	image := dig(t, decode(t, out)[0], "spec", "values", "image")
	tag := str(dig(t, image, "tag"))
	return []rendered{{str(dig(t, image, "repository")) + ":" + tag + "@" + str(dig(t, image, "digest")), tag}}
}

// renderContainers reads the containers' image fields, as the kubelet
// does.
func renderContainers(t *testing.T, out []byte) []rendered {
	containers := dig(t, decode(t, out)[0], "spec", "jobTemplate", "spec", "template", "spec", "containers").([]any)
	var refs []rendered
	for _, c := range containers {
		ref := str(dig(t, c, "image"))
		refs = append(refs, rendered{ref, tagOf(ref)})
	}
	return refs
}

// tagOf returns the tag of REPOSITORY:TAG@DIGEST.
func tagOf(ref string) string {
	rest, _, _ := strings.Cut(ref, "@")
	return rest[strings.LastIndexByte(rest, ':')+1:]
}

// helmValues renders image.repository:image.tag from values given as a
// string.
func helmValues(t *testing.T, text any) []rendered {
	s, ok := text.(string)
	if !ok {
		t.Fatalf("values are %T, not a string", text)
	}
	image := dig(t, decode(t, []byte(s))[0], "image")
	ref := str(dig(t, image, "repository")) + ":" + str(dig(t, image, "tag"))
	return []rendered{{ref, tagOf(ref)}}
}

// renderArgoHelmValues reads spec.source.helm.values, a string.
func renderArgoHelmValues(t *testing.T, out []byte) []rendered {
	return helmValues(t, dig(t, decode(t, out)[0], "spec", "source", "helm", "values"))
}

// renderK3sValuesContent reads the traefik HelmChart's valuesContent.
func renderK3sValuesContent(t *testing.T, out []byte) []rendered {
	return helmValues(t, dig(t, decode(t, out)[1], "spec", "valuesContent"))
}

// renderArgoKustomizeImages reads spec.source.kustomize.images, whose
// items are REFERENCE or NAME=REFERENCE overrides.
func renderArgoKustomizeImages(t *testing.T, out []byte) []rendered {
	var refs []rendered
	for _, item := range dig(t, decode(t, out)[0], "spec", "source", "kustomize", "images").([]any) {
		s := str(item)
		if _, ref, ok := strings.Cut(s, "="); ok {
			s = ref
		}
		refs = append(refs, rendered{s, tagOf(s)})
	}
	return refs
}
