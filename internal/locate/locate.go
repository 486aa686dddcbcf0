// Package locate turns the image references users type into
// engine.Locations, in registries or in local storage:
//
//	oci:PATH[:TAG]                 an OCI image layout directory
//	oci-archive:FILE[:TAG]         a tar of an OCI image layout
//	docker-archive:FILE[:NAME:TAG] a docker save / docker load archive
//	docker://HOST/REPO:TAG         a registry (the prefix is optional)
//	HOST/REPO:TAG, REPO@DIGEST     a registry
//
// as skopeo spells them. Without a TAG, a local reference names the only
// image the layout or archive holds.
package locate

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"

	"github.com/image-rebase/image-rebase/internal/archive"
	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/ocilayout"
	"github.com/image-rebase/image-rebase/internal/registry"
)

// Transport prefixes of local references.
const (
	OCI           = "oci:"
	OCIArchive    = "oci-archive:"
	DockerArchive = "docker-archive:"
	Docker        = "docker://"
)

// Resolver parses references. Each layout or archive is opened once, so
// that every reference to it shares one Repo (and an archive written as
// the target sees the blobs staged for it).
type Resolver struct {
	// Registry parses registry references.
	Registry *registry.Client
	// DefaultRegistry is the registry of references without a host (the
	// REGISTRY argument); Docker Hub when empty.
	DefaultRegistry string
	// Progress receives progress lines while local targets copy blobs;
	// nil for none.
	Progress io.Writer

	mu    sync.Mutex
	repos map[string]engine.Repo // by transport and absolute path
}

// closer is a local storage that holds temporary files until closed.
type closer interface{ Close() error }

// Parse returns the location ref names. write says the location will be
// written: a local one then needs a tag.
func (r *Resolver) Parse(ref string, write bool) (engine.Location, error) {
	transport, rest, local := split(ref)
	if !local {
		if r.Registry == nil {
			return engine.Location{}, fmt.Errorf("%s: no registry access", ref)
		}
		return r.Registry.Parse(strings.TrimPrefix(ref, Docker), r.DefaultRegistry, write)
	}
	path, tag, _ := strings.Cut(rest, ":")
	if path == "" {
		return engine.Location{}, fmt.Errorf("invalid reference %q: want %sPATH[:TAG]", ref, transport)
	}
	if strings.Contains(tag, "@") || (transport != DockerArchive && strings.ContainsAny(tag, ":/")) {
		return engine.Location{}, fmt.Errorf("invalid reference %q: the tag %q is not a tag (digests are not supported for %s)", ref, tag, strings.TrimSuffix(transport, ":"))
	}
	if write && tag == "" {
		return engine.Location{}, fmt.Errorf("%s: name the tag to write, e.g. %s%s:%s", ref, transport, path, exampleTag(transport))
	}
	repo, err := r.open(transport, path)
	if err != nil {
		return engine.Location{}, err
	}
	return engine.Location{Repo: repo, Tag: tag}, nil
}

func exampleTag(transport string) string {
	if transport == DockerArchive {
		return "app:2"
	}
	return "2"
}

// split tells local references from registry ones.
func split(ref string) (transport, rest string, local bool) {
	for _, t := range []string{OCIArchive, DockerArchive, OCI} {
		if strings.HasPrefix(ref, t) {
			return t, strings.TrimPrefix(ref, t), true
		}
	}
	return "", ref, false
}

// IsLocal reports whether ref names a layout or an archive.
func IsLocal(ref string) bool {
	_, _, local := split(ref)
	return local
}

func (r *Resolver) open(transport, path string) (engine.Repo, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("%s%s: %w", transport, path, err)
	}
	key := transport + abs
	r.mu.Lock()
	defer r.mu.Unlock()
	if repo, ok := r.repos[key]; ok {
		return repo, nil
	}
	var repo engine.Repo
	switch transport {
	case OCI:
		repo = ocilayout.New(path, ocilayout.Options{Progress: r.Progress})
	case OCIArchive:
		repo = archive.NewOCI(path, archive.Options{Progress: r.Progress})
	case DockerArchive:
		repo = archive.NewDocker(path, archive.Options{Progress: r.Progress})
	}
	if r.repos == nil {
		r.repos = map[string]engine.Repo{}
	}
	r.repos[key] = repo
	return repo, nil
}

// WithTag returns the reference of tag in the repository of loc: for a
// registry or a layout, the repository with a new tag ("host/app:2",
// "oci:DIR:2"); for a docker-archive, the image's name with a new tag
// ("docker-archive:FILE:app:2").
func WithTag(loc engine.Location, tag string) string {
	name := loc.Repo.Name()
	if strings.HasPrefix(name, DockerArchive) {
		image := loc.Tag
		if i := strings.LastIndexByte(image, ':'); i > strings.LastIndexByte(image, '/') {
			image = image[:i]
		}
		if image == "" {
			image = "image"
		}
		return name + ":" + image + ":" + tag
	}
	return name + ":" + tag
}

// Close removes the temporary files of every archive opened.
func (r *Resolver) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, repo := range r.repos {
		if c, ok := repo.(closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}
