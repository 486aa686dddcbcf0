package testimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func readAll(t *testing.T, open func() (io.ReadCloser, error)) []byte {
	t.Helper()
	rc, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func TestLayerStorageFollowsMediaType(t *testing.T) {
	files := map[string]string{"b/two": "2", "a/one": "1"}
	tarBytes := must[[]byte](t)(Tar(files))
	if !bytes.Equal(tarBytes, must[[]byte](t)(Tar(files))) {
		t.Fatal("Tar is not deterministic")
	}
	magic := map[string][]byte{"gzip": {0x1f, 0x8b}, "zstd": {0x28, 0xb5, 0x2f, 0xfd}}
	cases := []struct {
		mt   types.MediaType
		comp string
	}{
		{types.OCILayer, "gzip"},
		{types.DockerLayer, "gzip"},
		{types.OCILayerZStd, "zstd"},
		{types.OCIUncompressedLayer, "none"},
		{types.DockerUncompressedLayer, "none"},
	}
	for _, c := range cases {
		t.Run(string(c.mt), func(t *testing.T) {
			l := must[v1.Layer](t)(Layer(files, c.mt))
			if mt := must[types.MediaType](t)(l.MediaType()); mt != c.mt {
				t.Errorf("media type %s, want %s", mt, c.mt)
			}
			comp := readAll(t, l.Compressed)
			if d := must[v1.Hash](t)(l.Digest()); d.String() != sha(comp) {
				t.Errorf("digest %s, but the blob hashes to %s", d, sha(comp))
			}
			if n := must[int64](t)(l.Size()); n != int64(len(comp)) {
				t.Errorf("size %d, blob is %d bytes", n, len(comp))
			}
			if d := must[v1.Hash](t)(l.DiffID()); d.String() != sha(tarBytes) {
				t.Errorf("diff_id %s, want sha256 of the tar %s", d, sha(tarBytes))
			}
			if c.comp == "none" {
				if !bytes.Equal(comp, tarBytes) {
					t.Error("uncompressed layer blob is not the tar")
				}
			} else if !bytes.HasPrefix(comp, magic[c.comp]) {
				t.Errorf("blob starts % x, want %s magic", comp[:4], c.comp)
			}
			if !bytes.Equal(readAll(t, l.Uncompressed), tarBytes) {
				t.Error("uncompressed stream is not the tar")
			}
			got := must[map[string]string](t)(Files(l))
			if fmt.Sprint(got) != fmt.Sprint(files) {
				t.Errorf("files %v, want %v", got, files)
			}
			again := must[v1.Layer](t)(Layer(files, c.mt))
			if must[v1.Hash](t)(again.Digest()) != must[v1.Hash](t)(l.Digest()) {
				t.Error("layer digest is not deterministic")
			}
		})
	}
	if _, err := Layer(files, types.OCIManifestSchema1); err == nil {
		t.Error("a manifest media type was accepted as a layer type")
	}
}

// checkImage verifies every descriptor against the bytes it names, the
// config's diff_ids against the layers, and that the raw manifest uses one
// media-type family.
func checkImage(t *testing.T, img v1.Image, want Family) {
	t.Helper()
	raw := must[[]byte](t)(img.RawManifest())
	if d := must[v1.Hash](t)(img.Digest()); d.String() != sha(raw) {
		t.Errorf("image digest %s, manifest hashes to %s", d, sha(raw))
	}
	var doc struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        struct {
			MediaType string `json:"mediaType"`
			Digest    string `json:"digest"`
			Size      int64  `json:"size"`
		} `json:"config"`
		Layers []struct {
			MediaType string `json:"mediaType"`
			Digest    string `json:"digest"`
			Size      int64  `json:"size"`
		} `json:"layers"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.SchemaVersion != 2 || doc.MediaType != string(want.ManifestType()) {
		t.Errorf("manifest schemaVersion %d mediaType %q, want 2 %q", doc.SchemaVersion, doc.MediaType, want.ManifestType())
	}
	cfgRaw := must[[]byte](t)(img.RawConfigFile())
	if doc.Config.MediaType != string(want.ConfigType()) || doc.Config.Digest != sha(cfgRaw) || doc.Config.Size != int64(len(cfgRaw)) {
		t.Errorf("config descriptor %+v, want %s %s %d", doc.Config, want.ConfigType(), sha(cfgRaw), len(cfgRaw))
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(cfgRaw, &cfg); err != nil {
		t.Fatal(err)
	}
	layers := must[[]v1.Layer](t)(img.Layers())
	if len(layers) != len(doc.Layers) || len(cfg.RootFS.DiffIDs) != len(doc.Layers) {
		t.Fatalf("%d layers, %d descriptors, %d diff_ids", len(layers), len(doc.Layers), len(cfg.RootFS.DiffIDs))
	}
	for i, l := range layers {
		d := doc.Layers[i]
		if f, err := FamilyOfType(types.MediaType(d.MediaType)); err != nil || f != want {
			t.Errorf("layer %d media type %q is not %s", i, d.MediaType, want)
		}
		blob := readAll(t, l.Compressed)
		if d.Digest != sha(blob) || d.Size != int64(len(blob)) {
			t.Errorf("layer %d descriptor %s/%d, blob %s/%d", i, d.Digest, d.Size, sha(blob), len(blob))
		}
		if got := cfg.RootFS.DiffIDs[i].String(); got != sha(readAll(t, l.Uncompressed)) {
			t.Errorf("diff_id %d is %s, not the sha256 of the layer's tar", i, got)
		}
	}
	nonEmpty := 0
	for _, h := range cfg.History {
		if !h.EmptyLayer {
			nonEmpty++
		}
	}
	if nonEmpty != len(layers) {
		t.Errorf("%d non-empty history entries for %d layers", nonEmpty, len(layers))
	}
	if f, err := Consistent(img); err != nil || f != want {
		t.Errorf("Consistent = %s, %v; want %s", f, err, want)
	}
}

func TestBasesAndAppInBothFamilies(t *testing.T) {
	for _, f := range []Family{OCI, Docker} {
		t.Run(string(f), func(t *testing.T) {
			b1 := must[v1.Image](t)(Base(f, "1"))
			b2 := must[v1.Image](t)(Base(f, "2"))
			app := must[v1.Image](t)(App(b1, AppSteps("base:1")...))
			for name, img := range map[string]v1.Image{"base1": b1, "base2": b2, "app": app} {
				t.Run(name, func(t *testing.T) { checkImage(t, img, f) })
			}
			if n := len(must[[]v1.Layer](t)(b1.Layers())); n != 3 {
				t.Errorf("base has %d layers, want 3", n)
			}
			same := must[v1.Image](t)(Base(f, "1"))
			if must[v1.Hash](t)(same.Digest()) != must[v1.Hash](t)(b1.Digest()) {
				t.Error("building the same base twice gave two digests")
			}
			l1 := must[[]v1.Layer](t)(b1.Layers())
			l2 := must[[]v1.Layer](t)(b2.Layers())
			for i := range l1 {
				if must[v1.Hash](t)(l1[i].Digest()) == must[v1.Hash](t)(l2[i].Digest()) {
					t.Errorf("bases 1 and 2 share layer %d", i)
				}
			}
			c1 := must[*v1.ConfigFile](t)(b1.ConfigFile())
			c2 := must[*v1.ConfigFile](t)(b2.ConfigFile())
			if !slices.Contains(c1.Config.Env, "BASEVER=1") || !slices.Contains(c2.Config.Env, "BASEVER=2") ||
				!slices.Contains(c1.Config.Env, "PATH=/usr/local/bin:/usr/bin:/bin") {
				t.Errorf("env: %v / %v", c1.Config.Env, c2.Config.Env)
			}
			if slices.Contains(c1.Config.Env, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt") || !slices.Contains(c2.Config.Env, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt") {
				t.Errorf("only base 2 should set SSL_CERT_FILE: %v / %v", c1.Config.Env, c2.Config.Env)
			}
			if c1.Config.WorkingDir != "/" || fmt.Sprint(c1.Config.Cmd) != "[/bin/sh]" || c1.Config.Labels["org.opencontainers.image.version"] != "1" {
				t.Errorf("base config %+v", c1.Config)
			}
			if c1.OS != "linux" || c1.Architecture != "amd64" || c1.RootFS.Type != "layers" {
				t.Errorf("base platform %s/%s rootfs %q", c1.OS, c1.Architecture, c1.RootFS.Type)
			}
		})
	}
}

func TestAppStacksOnBaseLikeABuilder(t *testing.T) {
	base := must[v1.Image](t)(Build(Scratch(OCI), Platform{OS: "linux", Arch: "arm64", Variant: "v8"},
		append(BaseSteps("1"), Annotate("org.example.base-only", "x"))...))
	if m := must[*v1.Manifest](t)(base.Manifest()); m.Annotations["org.example.base-only"] != "x" {
		t.Fatalf("base annotations %v", m.Annotations)
	}
	app := must[v1.Image](t)(App(base, append(AppSteps("reg.example/base:1"), BaseAnnotations("reg.example/base:1"))...))
	checkImage(t, app, OCI)

	bm := must[*v1.Manifest](t)(base.Manifest())
	am := must[*v1.Manifest](t)(app.Manifest())
	if len(am.Layers) != len(bm.Layers)+2 {
		t.Fatalf("app has %d layers, base %d: want base's + 2", len(am.Layers), len(bm.Layers))
	}
	for i, d := range bm.Layers {
		if am.Layers[i].Digest != d.Digest || am.Layers[i].MediaType != d.MediaType || am.Layers[i].Size != d.Size {
			t.Errorf("app layer %d %v is not base layer %v", i, am.Layers[i], d)
		}
	}
	bc := must[*v1.ConfigFile](t)(base.ConfigFile())
	ac := must[*v1.ConfigFile](t)(app.ConfigFile())
	if !slices.Equal(ac.RootFS.DiffIDs[:len(bc.RootFS.DiffIDs)], bc.RootFS.DiffIDs) {
		t.Error("app diff_ids do not start with the base's")
	}
	if !slices.Equal(ac.History[:len(bc.History)], bc.History) {
		t.Error("app history does not start with the base's")
	}
	var appHist []string
	for _, h := range ac.History[len(bc.History):] {
		appHist = append(appHist, fmt.Sprintf("%s/%v", h.CreatedBy, h.EmptyLayer))
	}
	want := []string{"LABEL FROM=reg.example/base:1/true", "COPY server /app//false", "COPY config.yaml /app//false",
		"ENV APP_MODE=production/true", "WORKDIR /app/true", `CMD ["/app/server"]/true`}
	if !slices.Equal(appHist, want) {
		t.Errorf("app history\n%q\nwant\n%q", appHist, want)
	}
	if !slices.Equal(ac.Config.Env, append(slices.Clone(bc.Config.Env), "APP_MODE=production")) {
		t.Errorf("env %v: want the base's then APP_MODE", ac.Config.Env)
	}
	if ac.Config.Labels["org.example.base"] != "testos" || ac.Config.Labels["FROM"] != "reg.example/base:1" {
		t.Errorf("labels %v: want the base's plus FROM", ac.Config.Labels)
	}
	if ac.Config.WorkingDir != "/app" || fmt.Sprint(ac.Config.Cmd) != "[/app/server]" {
		t.Errorf("workdir %q cmd %v", ac.Config.WorkingDir, ac.Config.Cmd)
	}
	if ac.OS != "linux" || ac.Architecture != "arm64" || ac.Variant != "v8" {
		t.Errorf("app platform %s/%s/%s, want the base's", ac.OS, ac.Architecture, ac.Variant)
	}
	if fmt.Sprint(bc.Config.Cmd) != "[/bin/sh]" {
		t.Error("building the app changed the base's config")
	}
	bd := must[v1.Hash](t)(base.Digest())
	if am.Annotations[AnnotationBaseName] != "reg.example/base:1" || am.Annotations[AnnotationBaseDigest] != bd.String() {
		t.Errorf("app annotations %v, want base name and digest %s", am.Annotations, bd)
	}
	if _, ok := am.Annotations["org.example.base-only"]; ok {
		t.Error("the base's manifest annotations were inherited")
	}
	if _, err := App(nil); err == nil {
		t.Error("App(nil) succeeded")
	}
}

func TestCompressionsAndFamilies(t *testing.T) {
	app := must[v1.Image](t)(App(must[v1.Image](t)(Base(OCI, "1")),
		Copy("COPY z", map[string]string{"z": "z"}).Compressed(Zstd),
		Copy("COPY u", map[string]string{"u": "u"}).Compressed(Uncompressed)))
	checkImage(t, app, OCI)
	m := must[*v1.Manifest](t)(app.Manifest())
	if got := []types.MediaType{m.Layers[3].MediaType, m.Layers[4].MediaType}; got[0] != types.OCILayerZStd || got[1] != types.OCIUncompressedLayer {
		t.Errorf("layer types %v", got)
	}

	dockerBase := must[v1.Image](t)(Base(Docker, "1"))
	if _, err := App(dockerBase, Copy("COPY z", map[string]string{"z": "z"}).Compressed(Zstd)); err == nil || !strings.Contains(err.Error(), "zstd") {
		t.Errorf("zstd layer in a Docker image: err = %v", err)
	}
	dapp := must[v1.Image](t)(App(dockerBase, Copy("COPY u", map[string]string{"u": "u"}).Compressed(Uncompressed)))
	checkImage(t, dapp, Docker)
	if mt := must[*v1.Manifest](t)(dapp.Manifest()).Layers[3].MediaType; mt != types.DockerUncompressedLayer {
		t.Errorf("uncompressed Docker layer type %s", mt)
	}

	// Scratch takes a plain string too.
	for name, want := range map[string]Family{"docker": Docker, "oci": OCI, "": OCI} {
		if f, err := Consistent(Scratch(name)); err != nil || f != want {
			t.Errorf("Scratch(%q) is %s %v, want %s", name, f, err, want)
		}
	}

	// go-containerregistry's empty.Image is a Docker schema 2 scratch image.
	fromEmpty := must[v1.Image](t)(Build(empty.Image, Linux, Copy("COPY e", map[string]string{"e": "e"})))
	checkImage(t, fromEmpty, Docker)

	// A deliberately inconsistent image is caught by Consistent.
	mixed := must[v1.Image](t)(App(dockerBase, Step{CreatedBy: "COPY", Files: map[string]string{"m": "m"}, MediaType: types.OCILayer}))
	if _, err := Consistent(mixed); err == nil {
		t.Error("Consistent accepted an OCI layer in a Docker manifest")
	}
	if _, err := App(mixed); err == nil {
		t.Error("App accepted an inconsistent parent")
	}
}

func TestClockAndConfigSteps(t *testing.T) {
	when := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	img := must[v1.Image](t)(Build(nil, Linux,
		Copy("COPY a", map[string]string{"a": "a"}),
		At(when),
		Env("A=1", "B=2"), Env("A=3"),
		Entrypoint("/bin/app", "--flag"), User("1000"), Expose("8080/tcp"),
		ConfigStep("HEALTHCHECK NONE", func(c *v1.Config) { c.StopSignal = "SIGTERM" }),
		Step{CreatedBy: "RUN true", Comment: "no change"},
		AddLayer("COPY b", MustLayer(map[string]string{"b": "b"}, types.OCILayer)),
	))
	checkImage(t, img, OCI)
	cf := must[*v1.ConfigFile](t)(img.ConfigFile())
	if !cf.Created.Time.Equal(when) {
		t.Errorf("config created %v, want %v", cf.Created, when)
	}
	if !cf.History[0].Created.IsZero() || !cf.History[1].Created.Time.Equal(when) {
		t.Errorf("history created %v, %v", cf.History[0].Created, cf.History[1].Created)
	}
	if fmt.Sprint(cf.Config.Env) != "[A=3 B=2]" {
		t.Errorf("env %v: ENV A=3 should replace A in place", cf.Config.Env)
	}
	if fmt.Sprint(cf.Config.Entrypoint) != "[/bin/app --flag]" || cf.Config.User != "1000" || cf.Config.StopSignal != "SIGTERM" {
		t.Errorf("config %+v", cf.Config)
	}
	if _, ok := cf.Config.ExposedPorts["8080/tcp"]; !ok {
		t.Errorf("exposed ports %v", cf.Config.ExposedPorts)
	}
	last := cf.History[len(cf.History)-2]
	if last.CreatedBy != "RUN true" || last.Comment != "no change" || !last.EmptyLayer {
		t.Errorf("history %+v", last)
	}
}

func TestIndex(t *testing.T) {
	for _, f := range []Family{OCI, Docker} {
		amd := must[v1.Image](t)(Build(Scratch(f), Linux, BaseSteps("1")...))
		arm := must[v1.Image](t)(Build(Scratch(f), Platform{OS: "linux", Arch: "arm64"}, BaseSteps("1")...))
		idx := must[v1.ImageIndex](t)(Index(f, amd, arm))
		im := must[*v1.IndexManifest](t)(idx.IndexManifest())
		if im.MediaType != f.IndexType() || len(im.Manifests) != 2 {
			t.Fatalf("%s index %s with %d manifests", f, im.MediaType, len(im.Manifests))
		}
		for i, want := range []v1.Image{amd, arm} {
			d := im.Manifests[i]
			p := must[Platform](t)(PlatformOf(want))
			if d.Digest != must[v1.Hash](t)(want.Digest()) || d.MediaType != f.ManifestType() || d.Platform == nil || d.Platform.Architecture != p.Arch {
				t.Errorf("%s index entry %d: %+v", f, i, d)
			}
		}
	}
}
