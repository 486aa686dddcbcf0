// Package testimage builds container images in Go, the way a builder stacks
// Dockerfile instructions: a layer and a history entry per file step, an
// empty-layer history entry per config step. Used by tests, benchmarks and
// the demo; it does no I/O.
package testimage

import (
	"archive/tar"
	"bytes"
	"io"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Step is one instruction: Files make a layer; otherwise Config edits the
// config in an empty-layer step.
type Step struct {
	CreatedBy string
	Files     map[string]string
	Config    func(*v1.Config)
}

// Copy is a file step.
func Copy(createdBy string, files map[string]string) Step {
	return Step{CreatedBy: createdBy, Files: files}
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
	return Step{CreatedBy: "CMD " + strings.Join(args, " "), Config: func(c *v1.Config) { c.Cmd = args }}
}

// Platform is an image's os and architecture.
type Platform struct{ OS, Arch, Variant string }

// Linux is linux/amd64.
var Linux = Platform{OS: "linux", Arch: "amd64"}

// Scratch returns an empty image of the given family ("oci" or "docker").
func Scratch(family string) v1.Image {
	if family == "docker" {
		return mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.DockerManifestSchema2), types.DockerConfigJSON)
	}
	return mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
}

// Build stacks steps on parent (nil: an OCI scratch image) for platform p.
// Layers take the parent manifest's family.
func Build(parent v1.Image, p Platform, steps ...Step) (v1.Image, error) {
	if parent == nil {
		parent = Scratch("oci")
	}
	mt, err := parent.MediaType()
	if err != nil {
		return nil, err
	}
	layerType := types.OCILayer
	if mt == types.DockerManifestSchema2 {
		layerType = types.DockerLayer
	}
	img := parent
	for _, s := range steps {
		if s.Files == nil {
			cf, err := img.ConfigFile()
			if err != nil {
				return nil, err
			}
			cf = cf.DeepCopy()
			if s.Config != nil {
				s.Config(&cf.Config)
			}
			cf.History = append(cf.History, v1.History{CreatedBy: s.CreatedBy, EmptyLayer: true})
			if img, err = mutate.ConfigFile(img, cf); err != nil {
				return nil, err
			}
			continue
		}
		l, err := Layer(s.Files, layerType)
		if err != nil {
			return nil, err
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: layerType, History: v1.History{CreatedBy: s.CreatedBy}}); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Arch, p.Variant
	return mutate.ConfigFile(img, cf)
}

// Layer makes a deterministic gzip layer holding files, sorted by name.
func Layer(files map[string]string, mt types.MediaType) (v1.Layer, error) {
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
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(mt))
}
