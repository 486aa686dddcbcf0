package demo

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"log"
	"sort"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type sample struct {
	ref  string
	desc string
	img  v1.Image
}

// step is one Dockerfile instruction of a sample image: files for a layer,
// or a config change for an empty-layer entry.
type step struct {
	createdBy string
	files     map[string]string
	config    func(*v1.Config)
}

// sampleImages builds base:1, base:2 and app:1 (on base:1) as OCI images.
func sampleImages() ([]sample, error) {
	base := func(version, osRelease string) (v1.Image, error) {
		return build(ociEmpty(), []step{
			{createdBy: "ADD rootfs.tar /", files: map[string]string{"etc/os-release": osRelease, "bin/sh": "#!shell " + version}},
			{createdBy: "COPY ca-certificates /etc/ssl/", files: map[string]string{"etc/ssl/certs.pem": "certs " + version}},
			{createdBy: "COPY libc /lib/", files: map[string]string{"lib/libc.so": "libc " + version}},
			{createdBy: "ENV PATH=/usr/bin:/bin BASE_VERSION=" + version, config: func(c *v1.Config) {
				c.Env = []string{"PATH=/usr/bin:/bin", "BASE_VERSION=" + version}
			}},
			{createdBy: "LABEL org.example.base=" + version, config: func(c *v1.Config) {
				c.Labels = map[string]string{"org.example.base": version}
			}},
			{createdBy: `CMD ["/bin/sh"]`, config: func(c *v1.Config) { c.Cmd = []string{"/bin/sh"} }},
		})
	}
	b1, err := base("1", "VERSION_ID=1.0 (with CVE-2026-0001)")
	if err != nil {
		return nil, err
	}
	b2, err := base("2", "VERSION_ID=1.1 (fixed)")
	if err != nil {
		return nil, err
	}
	app, err := build(b1, []step{
		{createdBy: "LABEL FROM=base:1", config: func(c *v1.Config) { c.Labels["FROM"] = "base:1" }},
		{createdBy: "COPY app /app/", files: map[string]string{"app/server": "the application"}},
		{createdBy: "ENV APP_MODE=production", config: func(c *v1.Config) { c.Env = append(c.Env, "APP_MODE=production") }},
		{createdBy: `CMD ["/app/server"]`, config: func(c *v1.Config) { c.Cmd = []string{"/app/server"} }},
	})
	if err != nil {
		return nil, err
	}
	return []sample{
		{"base:1", "3 layers, BASE_VERSION=1", b1},
		{"base:2", "3 new layers, BASE_VERSION=2 (the security fix)", b2},
		{"app:1", "base:1 + 1 layer, CMD /app/server", app},
	}, nil
}

func ociEmpty() v1.Image {
	return mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
}

// build stacks steps on parent as a builder would: a layer and a history
// entry per file step, an empty-layer history entry per config step.
func build(parent v1.Image, steps []step) (v1.Image, error) {
	img := parent
	for _, s := range steps {
		if s.files == nil {
			cf, err := img.ConfigFile()
			if err != nil {
				return nil, err
			}
			cf = cf.DeepCopy()
			cf.OS, cf.Architecture = "linux", "amd64"
			if cf.Config.Labels == nil {
				cf.Config.Labels = map[string]string{}
			}
			s.config(&cf.Config)
			cf.History = append(cf.History, v1.History{CreatedBy: s.createdBy, EmptyLayer: true})
			if img, err = mutate.ConfigFile(img, cf); err != nil {
				return nil, err
			}
			continue
		}
		l, err := layer(s.files)
		if err != nil {
			return nil, err
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: v1.History{CreatedBy: s.createdBy}}); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	return mutate.ConfigFile(img, cf)
}

// layer makes a deterministic gzip layer holding files.
func layer(files map[string]string) (v1.Layer, error) {
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
		tarball.WithMediaType(types.OCILayer))
}

// listFiles lists the regular files of an image's filesystem, the upper
// layers' versions winning.
func listFiles(img v1.Image) ([]string, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, err
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				rc.Close()
				return nil, err
			}
			data, _ := io.ReadAll(tr)
			seen[h.Name+" ("+string(data)+")"] = true
		}
		rc.Close()
	}
	out := make([]string, 0, len(seen))
	for f := range seen {
		out = append(out, f)
	}
	sort.Strings(out)
	return out, nil
}

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }
