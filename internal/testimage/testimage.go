// Package testimage builds container images in Go, the way a builder stacks
// Dockerfile instructions: a layer and a history entry per file step, an
// empty-layer history entry per config step, the config inherited from the
// parent and then overridden. Every image is of one media-type family (OCI
// or Docker schema 2) for its manifest, config and layer descriptors.
//
// It is used by tests, benchmarks and the demo; it does no I/O and never
// imports the registry, so non-test code may use it. Everything it builds is
// deterministic: the same steps give the same digests.
package testimage

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/compression"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotation keys that a builder sets on an image to name its base
// (OCI image-spec, "pre-defined annotation keys").
const (
	AnnotationBaseName   = "org.opencontainers.image.base.name"
	AnnotationBaseDigest = "org.opencontainers.image.base.digest"
)

// Family is a media-type family: every descriptor of an image built here is
// of the image's family.
type Family string

// The two families of image manifests.
const (
	// OCI is the OCI image-spec family (application/vnd.oci.image.*).
	OCI Family = "oci"
	// Docker is Docker's image manifest v2 schema 2 family
	// (application/vnd.docker.*).
	Docker Family = "docker"
)

// ManifestType is the family's image manifest media type.
func (f Family) ManifestType() types.MediaType {
	if f == Docker {
		return types.DockerManifestSchema2
	}
	return types.OCIManifestSchema1
}

// ConfigType is the family's image config media type.
func (f Family) ConfigType() types.MediaType {
	if f == Docker {
		return types.DockerConfigJSON
	}
	return types.OCIConfigJSON
}

// IndexType is the family's multi-platform index media type.
func (f Family) IndexType() types.MediaType {
	if f == Docker {
		return types.DockerManifestList
	}
	return types.OCIImageIndex
}

// LayerType is the family's layer media type for compression c. Docker
// schema 2 has no zstd layer type: that is an error.
func (f Family) LayerType(c Compression) (types.MediaType, error) {
	switch {
	case f == Docker && (c == Gzip || c == ""):
		return types.DockerLayer, nil
	case f == Docker && c == Uncompressed:
		return types.DockerUncompressedLayer, nil
	case f == Docker:
		return "", fmt.Errorf("docker schema 2 has no %s layer media type", c)
	case c == Gzip || c == "":
		return types.OCILayer, nil
	case c == Zstd:
		return types.OCILayerZStd, nil
	case c == Uncompressed:
		return types.OCIUncompressedLayer, nil
	}
	return "", fmt.Errorf("unknown compression %q", c)
}

// FamilyOfType tells which family a manifest, index, config or layer media
// type belongs to.
func FamilyOfType(mt types.MediaType) (Family, error) {
	s := string(mt)
	switch {
	case strings.HasPrefix(s, "application/vnd.oci."):
		return OCI, nil
	case strings.HasPrefix(s, "application/vnd.docker."):
		return Docker, nil
	}
	return "", fmt.Errorf("media type %q is neither OCI nor Docker", mt)
}

// FamilyOf is the family of img's manifest.
func FamilyOf(img v1.Image) (Family, error) {
	mt, err := img.MediaType()
	if err != nil {
		return "", err
	}
	if mt != types.OCIManifestSchema1 && mt != types.DockerManifestSchema2 {
		return "", fmt.Errorf("manifest media type %q is not an OCI or Docker schema 2 image", mt)
	}
	return FamilyOfType(mt)
}

// Consistent checks that img's manifest, config and layer descriptors are
// all of one family, and returns it.
func Consistent(img v1.Image) (Family, error) {
	f, err := FamilyOf(img)
	if err != nil {
		return "", err
	}
	m, err := img.Manifest()
	if err != nil {
		return "", err
	}
	if m.Config.MediaType != f.ConfigType() {
		return "", fmt.Errorf("%s manifest with config media type %q", f, m.Config.MediaType)
	}
	for i, l := range m.Layers {
		if lf, err := FamilyOfType(l.MediaType); err != nil || lf != f {
			return "", fmt.Errorf("%s manifest with layer %d of media type %q", f, i, l.MediaType)
		}
	}
	return f, nil
}

// Compression is how a layer built from files is stored.
type Compression string

// Layer compressions. Zstd exists only in the OCI family.
const (
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
	Uncompressed Compression = "none"
)

// Step is one instruction. A step with Files or Layer adds a layer and a
// history entry; any other step with CreatedBy or Config edits the config
// and adds an empty-layer history entry; a step with only Annotations
// annotates the manifest and leaves no history.
type Step struct {
	// CreatedBy is the history entry's created_by (the instruction).
	CreatedBy string
	// Comment is the history entry's comment.
	Comment string
	// Files are the new layer's regular files, path (without leading
	// slash) to content. A non-nil empty map makes an empty layer.
	Files map[string]string
	// Layer is a ready-made layer, used instead of Files.
	Layer v1.Layer
	// Compression of the layer made from Files (default Gzip).
	Compression Compression
	// MediaType overrides the layer descriptor's media type, to build a
	// deliberately inconsistent image; leave it empty otherwise.
	MediaType types.MediaType
	// Config edits the config (in a config step; ignored in a layer step).
	Config func(*v1.Config)
	// Annotations are added to the manifest's annotations.
	Annotations map[string]string

	baseName string     // set the base annotations, naming the parent so
	at       *time.Time // set the clock for the steps after it
}

// Compressed returns the step with its layer stored with compression c.
func (s Step) Compressed(c Compression) Step {
	s.Compression = c
	return s
}

// Copy is a file step, like COPY or ADD.
func Copy(createdBy string, files map[string]string) Step {
	return Step{CreatedBy: createdBy, Files: files}
}

// Run is a file step as a builder records RUN: created_by is
// "/bin/sh -c CMD" and files are what the command wrote.
func Run(cmd string, files map[string]string) Step {
	return Step{CreatedBy: "/bin/sh -c " + cmd, Files: files}
}

// AddLayer is a step adding a ready-made layer.
func AddLayer(createdBy string, l v1.Layer) Step {
	return Step{CreatedBy: createdBy, Layer: l}
}

// ConfigStep is a config step with any edit.
func ConfigStep(createdBy string, edit func(*v1.Config)) Step {
	return Step{CreatedBy: createdBy, Config: edit}
}

// Env is a config step setting variables ("K=V"), in place or appended.
func Env(kv ...string) Step {
	return Step{CreatedBy: "ENV " + strings.Join(kv, " "), Config: func(c *v1.Config) {
		for _, e := range kv {
			k := e[:max(0, strings.IndexByte(e+"=", '='))]
			replaced := false
			for i, old := range c.Env {
				if old[:max(0, strings.IndexByte(old+"=", '='))] == k {
					c.Env[i], replaced = e, true
				}
			}
			if !replaced {
				c.Env = append(c.Env, e)
			}
		}
	}}
}

// Label is a config step setting a label.
func Label(k, v string) Step {
	return Step{CreatedBy: "LABEL " + k + "=" + v, Config: func(c *v1.Config) {
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		c.Labels[k] = v
	}}
}

// Cmd is a config step setting CMD.
func Cmd(args ...string) Step {
	return Step{CreatedBy: "CMD " + jsonArgs(args), Config: func(c *v1.Config) { c.Cmd = args }}
}

// Entrypoint is a config step setting ENTRYPOINT.
func Entrypoint(args ...string) Step {
	return Step{CreatedBy: "ENTRYPOINT " + jsonArgs(args), Config: func(c *v1.Config) { c.Entrypoint = args }}
}

// Workdir is a config step setting WORKDIR.
func Workdir(dir string) Step {
	return Step{CreatedBy: "WORKDIR " + dir, Config: func(c *v1.Config) { c.WorkingDir = dir }}
}

// User is a config step setting USER.
func User(u string) Step {
	return Step{CreatedBy: "USER " + u, Config: func(c *v1.Config) { c.User = u }}
}

// Expose is a config step adding an exposed port such as "8080/tcp".
func Expose(port string) Step {
	return Step{CreatedBy: "EXPOSE " + port, Config: func(c *v1.Config) {
		if c.ExposedPorts == nil {
			c.ExposedPorts = map[string]struct{}{}
		}
		c.ExposedPorts[port] = struct{}{}
	}}
}

// Annotate is a step adding a manifest annotation (no history entry).
// Docker schema 2 defines no annotations; a Docker image gets the field all
// the same, as some builders write it.
func Annotate(k, v string) Step {
	return Step{Annotations: map[string]string{k: v}}
}

// BaseAnnotations is a step annotating the manifest with
// org.opencontainers.image.base.name = name and .base.digest = the digest
// of the parent passed to Build or App.
func BaseAnnotations(name string) Step {
	return Step{baseName: name}
}

// At is a step setting the clock: the history entries of the steps after
// it, and the config's created, are stamped t. Without it they are zero.
func At(t time.Time) Step {
	t = t.UTC()
	return Step{at: &t}
}

// Platform is an image's os and architecture.
type Platform struct{ OS, Arch, Variant string }

// Linux is linux/amd64.
var Linux = Platform{OS: "linux", Arch: "amd64"}

// String is "os/arch[/variant]".
func (p Platform) String() string {
	s := p.OS + "/" + p.Arch
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// PlatformOf reads the platform from img's config.
func PlatformOf(img v1.Image) (Platform, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return Platform{}, err
	}
	return Platform{OS: cf.OS, Arch: cf.Architecture, Variant: cf.Variant}, nil
}

// Scratch returns an empty image of family f, a Family or a plain string
// ("docker" is Docker, anything else OCI): no layers, an empty config of the
// family's media type.
func Scratch[F ~string](f F) v1.Image {
	fam := Family(f)
	return mutate.ConfigMediaType(mutate.MediaType(empty.Image, fam.ManifestType()), fam.ConfigType())
}

// Build stacks steps on parent (nil: an OCI scratch image) for platform p,
// in parent's family. The parent's layers, diff_ids, history and config are
// inherited; its manifest annotations are not (builders do not carry them
// over): the result has only those of Annotate and BaseAnnotations steps.
func Build(parent v1.Image, p Platform, steps ...Step) (v1.Image, error) {
	if parent == nil {
		parent = Scratch(OCI)
	}
	f, err := Consistent(parent)
	if err != nil {
		return nil, fmt.Errorf("parent: %w", err)
	}
	img, err := withoutAnnotations(parent, f)
	if err != nil {
		return nil, err
	}
	var (
		clock       v1.Time
		annotations map[string]string
	)
	annotate := func(k, v string) {
		if annotations == nil {
			annotations = map[string]string{}
		}
		annotations[k] = v
	}
	for i, s := range steps {
		if s.at != nil {
			clock = v1.Time{Time: *s.at}
			continue
		}
		if s.baseName != "" {
			d, err := parent.Digest()
			if err != nil {
				return nil, err
			}
			annotate(AnnotationBaseName, s.baseName)
			annotate(AnnotationBaseDigest, d.String())
		}
		for k, v := range s.Annotations {
			annotate(k, v)
		}
		hist := v1.History{Created: clock, CreatedBy: s.CreatedBy, Comment: s.Comment}
		switch {
		case s.Files != nil || s.Layer != nil:
			l, mt := s.Layer, s.MediaType
			if l == nil {
				lt, err := f.LayerType(s.Compression)
				if err != nil {
					return nil, fmt.Errorf("step %d (%s): %w", i, s.CreatedBy, err)
				}
				if l, err = Layer(s.Files, lt); err != nil {
					return nil, fmt.Errorf("step %d (%s): %w", i, s.CreatedBy, err)
				}
			}
			if mt == "" {
				if mt, err = l.MediaType(); err != nil {
					return nil, err
				}
			}
			if img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: mt, History: hist}); err != nil {
				return nil, err
			}
		case s.Config != nil || s.CreatedBy != "":
			cf, err := img.ConfigFile()
			if err != nil {
				return nil, err
			}
			cf = cf.DeepCopy()
			if s.Config != nil {
				s.Config(&cf.Config)
			}
			hist.EmptyLayer = true
			cf.History = append(cf.History, hist)
			if img, err = mutate.ConfigFile(img, cf); err != nil {
				return nil, err
			}
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Arch, p.Variant
	if !clock.IsZero() {
		cf.Created = clock
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	if annotations != nil {
		img = mutate.Annotations(img, annotations).(v1.Image)
	}
	return img, nil
}

// App stacks steps on base as a builder does for "FROM base": base's
// layers, then the steps' layers; base's diff_ids and history, then the
// steps' entries; base's config, then the steps' edits; base's platform.
// Add BaseAnnotations(name) to name the base in the manifest.
func App(base v1.Image, steps ...Step) (v1.Image, error) {
	if base == nil {
		return nil, errors.New("App needs a base image")
	}
	p, err := PlatformOf(base)
	if err != nil {
		return nil, err
	}
	return Build(base, p, steps...)
}

// withoutAnnotations returns img unchanged, or rebuilt from scratch with
// the same layers, descriptors and config when its manifest has
// annotations (mutate can add annotations, not remove them).
func withoutAnnotations(img v1.Image, f Family) (v1.Image, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	if len(m.Annotations) == 0 && m.Subject == nil {
		return img, nil
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		d := m.Layers[i]
		adds[i] = mutate.Addendum{Layer: l, MediaType: d.MediaType, Annotations: d.Annotations, URLs: d.URLs}
	}
	out, err := mutate.Append(Scratch(f), adds...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	return mutate.ConfigFile(out, cf.DeepCopy())
}

// Layer makes a deterministic layer holding files (regular files, mode
// 0755, sorted by name, mtime 0), stored as media type mt says: gzip for
// the .tar.gzip/+gzip types, zstd for +zstd, as is for plain tar.
func Layer(files map[string]string, mt types.MediaType) (v1.Layer, error) {
	data, err := Tar(files)
	if err != nil {
		return nil, err
	}
	opener := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	switch mt {
	case types.OCILayer, types.DockerLayer, types.OCIRestrictedLayer, types.DockerForeignLayer:
		return tarball.LayerFromOpener(opener, tarball.WithMediaType(mt), tarball.WithCompressedCaching)
	case types.OCILayerZStd:
		return tarball.LayerFromOpener(opener, tarball.WithMediaType(mt), tarball.WithCompression(compression.ZStd), tarball.WithCompressedCaching)
	case types.OCIUncompressedLayer, types.DockerUncompressedLayer, types.OCIUncompressedRestrictedLayer:
		return static.NewLayer(data, mt), nil
	}
	return nil, fmt.Errorf("unsupported layer media type %q", mt)
}

// MustLayer is Layer that panics on error (for fixtures).
func MustLayer(files map[string]string, mt types.MediaType) v1.Layer {
	l, err := Layer(files, mt)
	if err != nil {
		panic(err)
	}
	return l
}

// Tar is the uncompressed tar stream of a layer holding files.
func Tar(files map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o755, Size: int64(len(files[n])), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write([]byte(files[n])); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Index assembles a multi-platform index of family f from images, each
// entry carrying its image's platform.
func Index(f Family, imgs ...v1.Image) (v1.ImageIndex, error) {
	adds := make([]mutate.IndexAddendum, len(imgs))
	for i, img := range imgs {
		p, err := PlatformOf(img)
		if err != nil {
			return nil, err
		}
		mt, err := img.MediaType()
		if err != nil {
			return nil, err
		}
		adds[i] = mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: mt,
			Platform:  &v1.Platform{OS: p.OS, Architecture: p.Arch, Variant: p.Variant},
		}}
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, f.IndexType()), adds...), nil
}

// BaseSteps are the instructions of the standard test base image at
// version v: three layers (an OS tree, CA certificates, a libc) and a
// config with PATH, BASEVER, labels, a working directory and a CMD. Every
// layer's content and BASEVER depend on v; every version but "1" also sets
// SSL_CERT_FILE, so bases of different versions differ in config keys too.
func BaseSteps(v string) []Step {
	steps := []Step{
		Copy("ADD rootfs.tar /", map[string]string{
			"etc/os-release": "NAME=testos\nVERSION_ID=" + v + "\n",
			"bin/sh":         "#!shell " + v + "\n",
		}),
		Copy("COPY ca-certificates.crt /etc/ssl/certs/", map[string]string{"etc/ssl/certs/ca-certificates.crt": "certs " + v + "\n"}),
		Copy("COPY libc.so /lib/", map[string]string{"lib/libc.so": "libc " + v + "\n"}),
		Env("PATH=/usr/local/bin:/usr/bin:/bin", "BASEVER="+v),
		Label("org.opencontainers.image.version", v),
		Label("org.example.base", "testos"),
		Workdir("/"),
		Cmd("/bin/sh"),
	}
	if v != "1" {
		steps = append(steps, Env("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"))
	}
	return steps
}

// Base builds the standard test base image at version v in family f for
// linux/amd64 (see BaseSteps).
func Base(f Family, v string) (v1.Image, error) {
	return Build(Scratch(f), Linux, BaseSteps(v)...)
}

// AppSteps are the instructions of the standard test application built
// FROM baseName: a LABEL naming the base, two layers of its own, an ENV,
// a WORKDIR and a CMD overriding the base's.
func AppSteps(baseName string) []Step {
	return []Step{
		Label("FROM", baseName),
		Copy("COPY server /app/", map[string]string{"app/server": "#!the application\n"}),
		Copy("COPY config.yaml /app/", map[string]string{"app/config.yaml": "mode: production\n"}),
		Env("APP_MODE=production"),
		Workdir("/app"),
		Cmd("/app/server"),
	}
}

// jsonArgs renders args as a Dockerfile exec-form list.
func jsonArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = fmt.Sprintf("%q", a)
	}
	return "[" + strings.Join(q, ",") + "]"
}

// Files returns the regular files of an uncompressed layer stream, for
// assertions.
func Files(l v1.Layer) (map[string]string, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	out := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		out[h.Name] = string(b)
	}
}
