package demo

import (
	"archive/tar"
	"errors"
	"io"
	"log"
	"sort"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/testimage"
)

type sample struct {
	ref  string
	desc string
	img  v1.Image
}

// sampleImages builds base:1, base:2 and app:1 (on base:1) as OCI images.
func sampleImages() ([]sample, error) {
	base := func(version, osRelease string) (v1.Image, error) {
		return testimage.Build(nil, testimage.Linux,
			testimage.Copy("ADD rootfs.tar /", map[string]string{"etc/os-release": osRelease, "bin/sh": "#!shell " + version}),
			testimage.Copy("COPY ca-certificates /etc/ssl/", map[string]string{"etc/ssl/certs.pem": "certs " + version}),
			testimage.Copy("COPY libc /lib/", map[string]string{"lib/libc.so": "libc " + version}),
			testimage.Env("PATH=/usr/bin:/bin", "BASE_VERSION="+version+".0"),
			testimage.Label("org.example.base", version),
			testimage.Cmd("/bin/sh"),
		)
	}
	b1, err := base("1", "VERSION_ID=1.0 (with CVE-2026-0001)")
	if err != nil {
		return nil, err
	}
	b2, err := base("2", "VERSION_ID=1.1 (fixed)")
	if err != nil {
		return nil, err
	}
	app, err := testimage.Build(b1, testimage.Linux,
		testimage.Label("FROM", "base:1"),
		testimage.Copy("COPY app /app/", map[string]string{"app/server": "the application"}),
		testimage.Env("APP_MODE=production"),
		testimage.Cmd("/app/server"),
	)
	if err != nil {
		return nil, err
	}
	return []sample{
		{"base:1", "3 layers, BASE_VERSION=1.0", b1},
		{"base:2", "3 new layers, BASE_VERSION=2.0 (the security fix)", b2},
		{"app:1", "base:1 + 1 layer, CMD /app/server", app},
	}, nil
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
