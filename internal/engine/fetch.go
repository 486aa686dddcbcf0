package engine

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/platform"
	"github.com/image-rebase/image-rebase/internal/rebase"
)

// doc is one manifest document as fetched: an image manifest or an index.
type doc struct {
	loc   Location
	desc  v1.Descriptor
	raw   []byte
	kind  manifest.Kind
	fam   manifest.Family
	index *v1.IndexManifest
	// image is set for image manifests; its config is filled by config.
	image *manifest.Image

	cfg sharedRead[struct{}]
	// shared marks a base's document read once for a batch: its failures
	// are BaseReadErrors.
	shared bool
}

// config fetches the image's config once, however many goroutines ask (a
// base's, in a batch: see sharedRead).
func (d *doc) config(ctx context.Context) error {
	attempts := singleAttempts
	if d.shared {
		attempts = batchAttempts
	}
	_, err := d.cfg.get(ctx, attempts, func() (struct{}, error) { return struct{}{}, fetchConfig(ctx, d.loc, d.image) })
	if err != nil && d.shared {
		ref := d.loc.String()
		if d.image != nil {
			ref = d.image.Ref // a base's platform image: "base:1 [linux/amd64]"
		}
		return baseReadError(ref, err)
	}
	return err
}

// fetchDoc reads the manifest at loc and parses it as an image or an index.
func fetchDoc(ctx context.Context, loc Location) (*doc, error) {
	desc, raw, err := loc.Repo.Manifest(ctx, loc.ID())
	if err != nil {
		return nil, err
	}
	return parseDoc(loc, desc, raw)
}

func parseDoc(loc Location, desc v1.Descriptor, raw []byte) (*doc, error) {
	d := &doc{loc: loc, desc: desc, raw: raw}
	d.kind, d.fam = manifest.Classify(desc.MediaType, raw)
	switch d.kind {
	case manifest.KindIndex:
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("%s: decoding index: %w", loc, err)
		}
		d.index = idx
	case manifest.KindImage:
		m, fam, err := manifest.ParseImageManifest(loc.String(), desc.MediaType, raw)
		if err != nil {
			return nil, err
		}
		if m.Config.MediaType != "" && m.Config.MediaType != types.OCIConfigJSON && m.Config.MediaType != types.DockerConfigJSON {
			return nil, &manifest.UnsupportedError{Ref: loc.String(), Kind: manifest.KindArtifact, MediaType: m.Config.MediaType}
		}
		d.image = &manifest.Image{Ref: loc.String(), Descriptor: desc, RawManifest: raw, Manifest: m, Family: fam}
	default:
		return nil, &manifest.UnsupportedError{Ref: loc.String(), Kind: d.kind, MediaType: desc.MediaType}
	}
	return d, nil
}

// FetchImage reads a single-platform image: its manifest, then its config.
func FetchImage(ctx context.Context, loc Location) (*manifest.Image, error) {
	d, err := fetchDoc(ctx, loc)
	if err != nil {
		return nil, err
	}
	if d.kind != manifest.KindImage {
		return nil, &manifest.UnsupportedError{Ref: loc.String(), Kind: d.kind, MediaType: d.desc.MediaType}
	}
	return d.image, fetchConfig(ctx, loc, d.image)
}

func fetchConfig(ctx context.Context, loc Location, img *manifest.Image) error {
	if img == nil || img.Config != nil {
		return nil
	}
	raw, err := loc.Repo.Blob(ctx, img.Manifest.Config)
	if err != nil {
		return err
	}
	cfg, err := manifest.ParseConfig(img.Ref, raw)
	if err != nil {
		return err
	}
	img.RawConfig, img.Config = raw, cfg
	return nil
}

// isAttestation tells the manifests of an index that describe another
// manifest (BuildKit provenance and SBOM) from platform images.
func isAttestation(d v1.Descriptor) bool {
	if d.Annotations["vnd.docker.reference.type"] != "" {
		return true
	}
	return d.Platform != nil && d.Platform.OS == "unknown" && d.Platform.Architecture == "unknown"
}

// selectChild finds the image of an index that serves platform p.
func selectChild(d *doc, p v1.Platform) (v1.Descriptor, error) {
	var have []string
	for _, m := range d.index.Manifests {
		if m.Platform == nil || isAttestation(m) {
			continue
		}
		if platform.Matches(p, *m.Platform) {
			return m, nil
		}
		have = append(have, platform.String(*m.Platform))
	}
	return v1.Descriptor{}, &noPlatformError{ref: d.loc.String(), want: platform.String(p), have: have}
}

type noPlatformError struct {
	ref, want string
	have      []string
}

func (e *noPlatformError) Error() string {
	return fmt.Sprintf("%s has no %s image (it has %s)", e.ref, e.want, strings.Join(e.have, ", "))
}

// As makes a missing platform a refusal (exit code 4): the images were
// read, the rebase cannot be done as asked.
func (e *noPlatformError) As(target any) bool {
	if t, ok := target.(**rebase.RefusedError); ok {
		*t = &rebase.RefusedError{Reason: e.Error()}
		return true
	}
	return false
}

// imageCache fetches each platform image once per run, however many
// platforms or images ask for it: its manifest first, its config (through
// doc.config) only when a plan needs it.
type imageCache struct {
	// shared marks a batch's cache of its bases' images: its failures are
	// BaseReadErrors.
	shared bool

	mu sync.Mutex
	m  map[string]*cacheEntry
}

type cacheEntry = sharedRead[*doc]

// get returns the image with digest dg in repo, named ref in messages:
// its manifest, then its config.
func (c *imageCache) get(ctx context.Context, repo Repo, dg v1.Hash, ref string) (*manifest.Image, error) {
	d, err := c.getDoc(ctx, repo, dg, ref)
	if err != nil {
		return nil, err
	}
	if err := d.config(ctx); err != nil {
		return nil, err
	}
	return d.image, nil
}

// getDoc returns the manifest of the image with digest dg in repo, named
// ref in messages. Its config is read by the doc's config method, when a
// plan needs it.
func (c *imageCache) getDoc(ctx context.Context, repo Repo, dg v1.Hash, ref string) (*doc, error) {
	key := repo.Name() + "@" + dg.String()
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]*cacheEntry{}
	}
	e, ok := c.m[key]
	if !ok {
		e = &cacheEntry{}
		c.m[key] = e
	}
	c.mu.Unlock()
	attempts := singleAttempts
	if c.shared {
		attempts = batchAttempts
	}
	d, err := e.get(ctx, attempts, func() (*doc, error) {
		loc := Location{Repo: repo, Digest: dg.String()}
		d, err := fetchDoc(ctx, loc)
		if err == nil && d.kind != manifest.KindImage {
			err = &manifest.UnsupportedError{Ref: loc.String(), Kind: d.kind, MediaType: d.desc.MediaType}
		}
		if err != nil {
			return nil, err
		}
		d.image.Ref, d.shared = ref, c.shared
		return d, nil
	})
	if err != nil && c.shared {
		return nil, baseReadError(ref, err)
	}
	return d, err
}

// child returns the manifest of the image of d that serves p: d itself when
// it is an image, else the matching child of the index.
func (c *imageCache) child(ctx context.Context, d *doc, p v1.Platform) (*doc, error) {
	if d.kind == manifest.KindImage {
		return d, nil
	}
	desc, err := selectChild(d, p)
	if err != nil {
		return nil, err
	}
	return c.getDoc(ctx, d.loc.Repo, desc.Digest, fmt.Sprintf("%s [%s]", d.loc, platform.String(*desc.Platform)))
}

// forPlatform returns the single-platform image of d that serves p, config
// included: d itself when it is an image, else the matching child of the
// index.
func (c *imageCache) forPlatform(ctx context.Context, d *doc, p v1.Platform) (*manifest.Image, error) {
	cd, err := c.child(ctx, d, p)
	if err != nil {
		return nil, err
	}
	if err := cd.config(ctx); err != nil {
		return nil, err
	}
	return cd.image, nil
}
