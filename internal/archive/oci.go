package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/ocilayout"
)

// OCI is an oci-archive: a tar of an OCI image layout. It implements
// engine.WritableRepo and engine.BlobOpener.
type OCI struct {
	file     string
	name     string
	progress io.Writer

	mu       sync.Mutex
	loaded   bool
	tar      *tarFile
	index    *v1.IndexManifest
	indexRaw []byte
	staging  *ocilayout.Layout // new blobs, until the archive is written
}

var (
	_ engine.WritableRepo = (*OCI)(nil)
	_ engine.BlobOpener   = (*OCI)(nil)
)

// Options configure an archive.
type Options struct {
	// Progress, when not nil, receives a progress line per copied blob.
	Progress io.Writer
}

// NewOCI returns the oci-archive in file. It does no I/O: a missing file
// reads as an empty archive and is created by the first write.
func NewOCI(file string, o Options) *OCI {
	return &OCI{file: file, name: "oci-archive:" + file, progress: o.Progress}
}

// Name returns "oci-archive:FILE".
func (a *OCI) Name() string { return a.name }

// load indexes the archive once (again after each write).
func (a *OCI) load() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.loaded {
		return nil
	}
	t, exists, err := openTar(a.file)
	if err != nil {
		return fmt.Errorf("%s: %w", a.name, err)
	}
	a.tar, a.index, a.indexRaw = t, &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}, nil
	if exists {
		raw, err := t.read("index.json", manifest.MaxDocumentSize)
		if err != nil {
			return fmt.Errorf("%s: not an OCI archive: %w", a.name, err)
		}
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return fmt.Errorf("%s: decoding index.json: %w", a.name, err)
		}
		a.index, a.indexRaw = idx, raw
	}
	a.loaded = true
	return nil
}

func blobName(h v1.Hash) string { return path.Join("blobs", h.Algorithm, h.Hex) }

// inTar reports whether the archive holds blob d.
func (a *OCI) inTar(d v1.Descriptor) bool {
	e, ok := a.tar.lookup(blobName(d.Digest))
	return ok && e.size == d.Size
}

func (a *OCI) has(d v1.Descriptor) bool {
	s := a.staged()
	return a.inTar(d) || (s != nil && s.Has(d))
}

// staged returns the staging layout, nil before the first write.
func (a *OCI) staged() *ocilayout.Layout {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.staging
}

// Manifest reads the manifest a tag or digest names.
func (a *OCI) Manifest(ctx context.Context, id string) (v1.Descriptor, []byte, error) {
	if err := a.load(); err != nil {
		return v1.Descriptor{}, nil, err
	}
	d := v1.Descriptor{Size: -1}
	if strings.Contains(id, ":") {
		h, err := v1.NewHash(id)
		if err != nil {
			return v1.Descriptor{}, nil, fmt.Errorf("%s: invalid digest %q: %w", a.name, id, err)
		}
		d.Digest = h
		for _, m := range a.index.Manifests {
			if m.Digest == h {
				d = m
			}
		}
	} else {
		found, ok, err := ocilayout.FindTag(a.name, a.index, id)
		if err != nil {
			return v1.Descriptor{}, nil, err
		}
		if !ok {
			return v1.Descriptor{}, nil, &ocilayout.NotFoundError{Repo: a.name, ID: id}
		}
		d = found
	}
	raw, err := a.Blob(ctx, d)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	if d.MediaType == "" {
		d.MediaType = ocilayout.SniffMediaType(raw)
	}
	return v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: int64(len(raw))}, raw, nil
}

// Blob reads a small blob and verifies it; d.Size -1 means unknown.
func (a *OCI) Blob(ctx context.Context, d v1.Descriptor) ([]byte, error) {
	if err := a.load(); err != nil {
		return nil, err
	}
	if d.Size > manifest.MaxDocumentSize {
		return nil, fmt.Errorf("%s: blob %s is %d bytes, over the %d byte limit", a.name, d.Digest, d.Size, manifest.MaxDocumentSize)
	}
	if s := a.staged(); s != nil {
		if b, err := s.Blob(ctx, d); err == nil {
			return b, nil
		}
	}
	b, err := a.tar.read(blobName(d.Digest), manifest.MaxDocumentSize)
	if err != nil {
		return nil, &ocilayout.NotFoundError{Repo: a.name, ID: d.Digest.String()}
	}
	return verify(a.name, d, b)
}

func verify(name string, d v1.Descriptor, b []byte) ([]byte, error) {
	if d.Size >= 0 && int64(len(b)) != d.Size {
		return nil, fmt.Errorf("%s: blob %s: %d bytes, descriptor says %d", name, d.Digest, len(b), d.Size)
	}
	if h, _, _ := v1.SHA256(bytes.NewReader(b)); h != d.Digest {
		return nil, fmt.Errorf("%s: blob %s: content digest is %s", name, d.Digest, h)
	}
	return b, nil
}

// OpenBlob streams a blob.
func (a *OCI) OpenBlob(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	if err := a.load(); err != nil {
		return nil, err
	}
	if s := a.staged(); s != nil && s.Has(d) {
		return s.OpenBlob(ctx, d)
	}
	rc, _, err := a.tar.open(blobName(d.Digest))
	if err != nil {
		return nil, &ocilayout.NotFoundError{Repo: a.name, ID: d.Digest.String()}
	}
	return rc, nil
}

// Resolve returns the digest a tag names.
func (a *OCI) Resolve(ctx context.Context, tag string) (v1.Hash, bool, error) {
	if err := a.load(); err != nil {
		return v1.Hash{}, false, err
	}
	d, ok, err := ocilayout.FindTag(a.name, a.index, tag)
	return d.Digest, ok, err
}

// stage returns the staging layout, created on first use.
func (a *OCI) stage() (*ocilayout.Layout, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.staging == nil {
		dir, err := stagingDir(a.file)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", a.name, err)
		}
		a.staging = ocilayout.New(dir, ocilayout.Options{Name: a.name, Progress: a.progress})
	}
	return a.staging, nil
}

// Transfer copies the blobs the archive lacks into its staging area.
func (a *OCI) Transfer(ctx context.Context, src engine.Repo, blobs []v1.Descriptor, allowCopy bool) (engine.Transferred, error) {
	if err := a.load(); err != nil {
		return engine.Transferred{}, err
	}
	var t engine.Transferred
	var missing []v1.Descriptor
	for _, d := range blobs {
		if a.inTar(d) {
			t.Mounted++
		} else {
			missing = append(missing, d)
		}
	}
	if len(missing) == 0 {
		return t, nil
	}
	s, err := a.stage()
	if err != nil {
		return t, err
	}
	st, err := s.Transfer(ctx, src, missing, allowCopy)
	return t.Add(st), err
}

// StartUpload opens an upload into the staging area.
func (a *OCI) StartUpload(ctx context.Context) (engine.BlobUpload, error) {
	s, err := a.stage()
	if err != nil {
		return nil, err
	}
	return s.StartUpload(ctx)
}

// PutManifest stages the manifest; with a tag it then writes the whole
// archive: every blob reachable from the new index.json, index.json last,
// to a temporary file renamed over the old archive.
func (a *OCI) PutManifest(ctx context.Context, tag string, d v1.Descriptor, raw []byte) error {
	if err := a.load(); err != nil {
		return err
	}
	if _, err := verify(a.name, d, raw); err != nil {
		return err
	}
	refs, err := ocilayout.References(d, raw)
	if err != nil {
		return fmt.Errorf("%s: %w", a.name, err)
	}
	for _, r := range refs {
		if !a.has(r) {
			return fmt.Errorf("%s: manifest %s references %s, which the archive does not hold; archive left unchanged", a.name, d.Digest, r.Digest)
		}
	}
	s, err := a.stage()
	if err != nil {
		return err
	}
	if err := s.WriteBlob(ctx, d, bytes.NewReader(raw)); err != nil {
		return fmt.Errorf("%s: %w", a.name, err)
	}
	if tag == "" {
		return nil
	}
	newIndex, err := ocilayout.Retag(a.indexRaw, a.index, tag, d)
	if err != nil {
		return fmt.Errorf("%s: %w", a.name, err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(newIndex))
	if err != nil {
		return err
	}
	blobs, err := a.reachable(ctx, idx.Manifests)
	if err != nil {
		return err
	}
	err = writeArchive(a.file, func(tw *tar.Writer) error {
		layout := []byte(`{"imageLayoutVersion":"1.0.0"}`)
		if err := addFile(tw, "oci-layout", int64(len(layout)), bytes.NewReader(layout)); err != nil {
			return err
		}
		for _, b := range blobs {
			open := func() (io.ReadCloser, error) { return a.OpenBlob(ctx, b) }
			if err := copyFile(tw, blobName(b.Digest), b.Size, open); err != nil {
				return err
			}
		}
		return addFile(tw, "index.json", int64(len(newIndex)), bytes.NewReader(newIndex))
	})
	if err != nil {
		return err
	}
	a.Close()
	a.mu.Lock()
	a.loaded = false
	a.mu.Unlock()
	return nil
}

// reachable lists, each once, the blobs the index entries need: the
// manifests and, recursively, what they reference.
func (a *OCI) reachable(ctx context.Context, roots []v1.Descriptor) ([]v1.Descriptor, error) {
	seen := map[v1.Hash]bool{}
	var out []v1.Descriptor
	var walk func(d v1.Descriptor, isManifest bool) error
	walk = func(d v1.Descriptor, isManifest bool) error {
		if seen[d.Digest] {
			return nil
		}
		seen[d.Digest] = true
		if !a.has(d) {
			return fmt.Errorf("%s: blob %s is missing; archive left unchanged", a.name, d.Digest)
		}
		out = append(out, d)
		if !isManifest {
			return nil
		}
		raw, err := a.Blob(ctx, d)
		if err != nil {
			return err
		}
		kind, _ := manifest.Classify(d.MediaType, raw)
		refs, err := ocilayout.References(d, raw)
		if err != nil {
			return fmt.Errorf("%s: %w", a.name, err)
		}
		for _, r := range refs {
			if err := walk(r, kind == manifest.KindIndex); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range roots {
		if err := walk(r, true); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Close removes the staging area (nothing is written after Close).
func (a *OCI) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.staging == nil {
		return nil
	}
	err := os.RemoveAll(a.staging.Dir())
	a.staging = nil
	return err
}
