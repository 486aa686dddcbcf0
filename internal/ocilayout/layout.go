// Package ocilayout stores images in an OCI image layout directory
// (oci:PATH[:TAG]): blobs under blobs/<algorithm>/<hex>, tags as
// org.opencontainers.image.ref.name annotations in index.json. A Layout is
// an engine.WritableRepo. Writes are atomic: each blob is written to a
// temporary file and renamed into place, and index.json is replaced last,
// the same way, so that a failed or interrupted run leaves the layout as it
// was (at most with unreferenced blobs).
package ocilayout

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/progress"
)

// RefName is the annotation that holds a tag in index.json.
const RefName = "org.opencontainers.image.ref.name"

// layoutVersion is the content of the oci-layout file.
const layoutVersion = `{"imageLayoutVersion":"1.0.0"}`

// Layout is an OCI image layout directory. It implements
// engine.WritableRepo and engine.BlobOpener.
type Layout struct {
	dir      string
	name     string
	progress io.Writer

	mu sync.Mutex // serialises index.json updates within the process
}

var (
	_ engine.WritableRepo = (*Layout)(nil)
	_ engine.BlobOpener   = (*Layout)(nil)
)

// Options configure a Layout.
type Options struct {
	// Name is the repository name shown to users; "oci:DIR" when empty.
	Name string
	// Progress, when not nil, receives a progress line per copied blob
	// (meant for a terminal).
	Progress io.Writer
}

// New returns the layout in dir. It does no I/O: a missing directory reads
// as an empty layout and is created by the first write.
func New(dir string, o Options) *Layout {
	if o.Name == "" {
		o.Name = "oci:" + dir
	}
	return &Layout{dir: dir, name: o.Name, progress: o.Progress}
}

// Dir returns the layout's directory.
func (l *Layout) Dir() string { return l.dir }

// Name returns "oci:DIR" (or the name given in Options).
func (l *Layout) Name() string { return l.name }

func (l *Layout) path() layout.Path { return layout.Path(l.dir) }

func (l *Layout) blobPath(h v1.Hash) string {
	return filepath.Join(l.dir, "blobs", h.Algorithm, h.Hex)
}

// NotFoundError reports a tag or digest the layout does not hold.
type NotFoundError struct {
	Repo string
	ID   string
}

// Error names what is missing.
func (e *NotFoundError) Error() string {
	return fmt.Sprintf("%s: no image %s", e.Repo, e.ID)
}

// Index reads index.json; a layout that does not exist yet has an empty
// index.
func (l *Layout) Index() (*v1.IndexManifest, error) {
	idx, _, err := l.readIndex()
	return idx, err
}

func (l *Layout) readIndex() (*v1.IndexManifest, []byte, error) {
	raw, err := os.ReadFile(filepath.Join(l.dir, "index.json"))
	if errors.Is(err, os.ErrNotExist) {
		return &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: reading index.json: %w", l.name, err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: decoding index.json: %w", l.name, err)
	}
	return idx, raw, nil
}

// Lookup finds the index.json entry of a tag; the empty tag names the only
// entry of a layout that holds one image.
func (l *Layout) Lookup(tag string) (v1.Descriptor, bool, error) {
	idx, err := l.Index()
	if err != nil {
		return v1.Descriptor{}, false, err
	}
	return FindTag(l.name, idx, tag)
}

// FindTag finds the entry of idx (an index.json) that tag names: the one
// annotated with it, or for the empty tag the only entry. name is used in
// errors.
func FindTag(name string, idx *v1.IndexManifest, tag string) (v1.Descriptor, bool, error) {
	if tag == "" {
		switch len(idx.Manifests) {
		case 0:
			return v1.Descriptor{}, false, nil
		case 1:
			return idx.Manifests[0], true, nil
		}
		return v1.Descriptor{}, false, fmt.Errorf("%s holds %d images; name one with :TAG", name, len(idx.Manifests))
	}
	var found []v1.Descriptor
	for _, d := range idx.Manifests {
		if d.Annotations[RefName] == tag {
			found = append(found, d)
		}
	}
	switch len(found) {
	case 0:
		return v1.Descriptor{}, false, nil
	case 1:
		return found[0], true, nil
	}
	return v1.Descriptor{}, false, fmt.Errorf("%s: tag %s names %d images in index.json", name, tag, len(found))
}

// Manifest reads the manifest a tag or digest names.
func (l *Layout) Manifest(ctx context.Context, id string) (v1.Descriptor, []byte, error) {
	idx, err := l.Index()
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	var d v1.Descriptor
	if strings.Contains(id, ":") {
		h, err := v1.NewHash(id)
		if err != nil {
			return v1.Descriptor{}, nil, fmt.Errorf("%s: invalid digest %q: %w", l.name, id, err)
		}
		d = v1.Descriptor{Digest: h, Size: -1}
		for _, m := range idx.Manifests {
			if m.Digest == h {
				d = m
			}
		}
	} else {
		var ok bool
		if d, ok, err = FindTag(l.name, idx, id); err != nil {
			return v1.Descriptor{}, nil, err
		} else if !ok {
			return v1.Descriptor{}, nil, &NotFoundError{Repo: l.name, ID: id}
		}
	}
	raw, err := l.readSmall(d.Digest, d.Size, "manifest")
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	if d.MediaType == "" {
		d.MediaType = SniffMediaType(raw)
	}
	d.Size = int64(len(raw))
	return v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}, raw, nil
}

// SniffMediaType returns the mediaType field of a manifest document.
func SniffMediaType(raw []byte) types.MediaType {
	var m struct {
		MediaType types.MediaType `json:"mediaType"`
	}
	json.Unmarshal(raw, &m) //nolint:errcheck // an unreadable document is classified later
	return m.MediaType
}

// readSmall reads a manifest or config blob and verifies it; size -1 means
// unknown.
func (l *Layout) readSmall(h v1.Hash, size int64, what string) ([]byte, error) {
	if size > manifest.MaxDocumentSize {
		return nil, fmt.Errorf("%s: %s %s is %d bytes, over the %d byte limit", l.name, what, h, size, manifest.MaxDocumentSize)
	}
	f, err := os.Open(l.blobPath(h))
	if errors.Is(err, os.ErrNotExist) {
		return nil, &NotFoundError{Repo: l.name, ID: h.String()}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: reading %s: %w", l.name, what, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, manifest.MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: reading %s %s: %w", l.name, what, h, err)
	}
	if len(b) > manifest.MaxDocumentSize {
		return nil, fmt.Errorf("%s: %s %s is over the %d byte limit", l.name, what, h, manifest.MaxDocumentSize)
	}
	if size >= 0 && int64(len(b)) != size {
		return nil, fmt.Errorf("%s: %s %s: %d bytes, descriptor says %d", l.name, what, h, len(b), size)
	}
	if got, _, _ := v1.SHA256(bytes.NewReader(b)); got != h {
		return nil, fmt.Errorf("%s: %s %s: content digest is %s", l.name, what, h, got)
	}
	return b, nil
}

// Blob reads a small blob (a config) and verifies it.
func (l *Layout) Blob(ctx context.Context, d v1.Descriptor) ([]byte, error) {
	return l.readSmall(d.Digest, d.Size, "blob")
}

// OpenBlob streams a blob.
func (l *Layout) OpenBlob(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	rc, err := l.path().Blob(d.Digest)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, &NotFoundError{Repo: l.name, ID: d.Digest.String()}
		}
		return nil, fmt.Errorf("%s: opening blob %s: %w", l.name, d.Digest, err)
	}
	return rc, nil
}

// Has reports whether the layout holds blob d with its size.
func (l *Layout) Has(d v1.Descriptor) bool {
	fi, err := os.Stat(l.blobPath(d.Digest))
	return err == nil && fi.Mode().IsRegular() && fi.Size() == d.Size
}

// Resolve returns the digest a tag names.
func (l *Layout) Resolve(ctx context.Context, tag string) (v1.Hash, bool, error) {
	d, ok, err := l.Lookup(tag)
	return d.Digest, ok, err
}

// Transfer copies into the layout the blobs it lacks, streaming them from
// src, which must be an engine.BlobOpener. Copying is inherent to a local
// target, so allowCopy is not needed. Blobs already present, or hard-linked
// from another layout on the same file system, count as mounted.
func (l *Layout) Transfer(ctx context.Context, src engine.Repo, blobs []v1.Descriptor, allowCopy bool) (engine.Transferred, error) {
	var t engine.Transferred
	for _, d := range blobs {
		if l.Has(d) {
			t.Mounted++
			continue
		}
		if other, ok := src.(*Layout); ok && other.Has(d) && l.link(other, d) == nil {
			t.Mounted++
			continue
		}
		opener, ok := src.(engine.BlobOpener)
		if !ok {
			return t, fmt.Errorf("copying %s from %s to %s: the source cannot stream blobs", d.Digest, src.Name(), l.name)
		}
		rc, err := opener.OpenBlob(ctx, d)
		if err != nil {
			return t, fmt.Errorf("copying %s from %s to %s: %w", d.Digest, src.Name(), l.name, err)
		}
		err = l.WriteBlob(ctx, d, progress.Reader(l.progress, d, rc))
		rc.Close()
		if err != nil {
			return t, fmt.Errorf("copying %s from %s to %s: %w", d.Digest, src.Name(), l.name, err)
		}
		t.Copied++
		t.CopiedBytes += d.Size
	}
	return t, nil
}

// link hard-links blob d from another layout.
func (l *Layout) link(other *Layout, d v1.Descriptor) error {
	dst := l.blobPath(d.Digest)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.Link(other.blobPath(d.Digest), dst)
}

// WriteBlob stores the content r as blob d: written to a temporary file
// beside its final name, checked against d's size and digest, synced and
// renamed. On failure nothing is left behind.
func (l *Layout) WriteBlob(ctx context.Context, d v1.Descriptor, r io.Reader) error {
	if l.Has(d) {
		return nil
	}
	dst := l.blobPath(d.Digest)
	if err := l.ensureLayout(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("%s: %w", l.name, err)
	}
	h, err := hasher(d.Digest)
	if err != nil {
		return err
	}
	return writeAtomic(dst, func(f *os.File) error {
		n, err := io.Copy(io.MultiWriter(f, h), &ctxReader{ctx: ctx, r: r})
		if err != nil {
			return err
		}
		if n != d.Size {
			return fmt.Errorf("blob %s: got %d bytes, descriptor says %d", d.Digest, n, d.Size)
		}
		if got := fmt.Sprintf("%x", h.Sum(nil)); got != d.Digest.Hex {
			return fmt.Errorf("blob %s: content digest is %s:%s", d.Digest, d.Digest.Algorithm, got)
		}
		return nil
	})
}

func hasher(h v1.Hash) (hash.Hash, error) {
	if h.Algorithm != "sha256" {
		return nil, fmt.Errorf("blob %s: unsupported digest algorithm", h)
	}
	return sha256.New(), nil
}

// writeAtomic writes a file through a temporary file in the same directory,
// synced then renamed over path. The temporary file is removed on failure.
func writeAtomic(path string, fill func(*os.File) error) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = fill(f); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// syncDir makes a rename durable (best effort).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync() //nolint:errcheck // best effort
		d.Close()
	}
}

// ensureLayout creates the directory and its oci-layout file when missing.
func (l *Layout) ensureLayout() error {
	p := filepath.Join(l.dir, "oci-layout")
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return fmt.Errorf("creating layout %s: %w", l.dir, err)
	}
	if err := writeAtomic(p, func(f *os.File) error {
		_, err := f.WriteString(layoutVersion)
		return err
	}); err != nil {
		return fmt.Errorf("%s: writing oci-layout: %w", l.name, err)
	}
	return nil
}

// upload is a config upload into a layout.
type upload struct{ l *Layout }

// StartUpload returns an upload; a layout needs no session.
func (l *Layout) StartUpload(ctx context.Context) (engine.BlobUpload, error) {
	return upload{l: l}, nil
}

// Commit writes the blob atomically.
func (u upload) Commit(ctx context.Context, d v1.Descriptor, data []byte) error {
	if int64(len(data)) != d.Size {
		return fmt.Errorf("%s: blob %s: %d bytes, descriptor says %d", u.l.name, d.Digest, len(data), d.Size)
	}
	if err := u.l.WriteBlob(ctx, d, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("%s: writing blob %s: %w", u.l.name, d.Digest, err)
	}
	return nil
}

// Cancel does nothing: an uncommitted upload left no file.
func (u upload) Cancel(context.Context) {}

// PutManifest writes the manifest blob and, when tag is set, points the
// tag at it in index.json, which is replaced last. Every blob the manifest
// references (config and layers, or an index's manifests) must already be in
// the layout: a tag never names an incomplete image.
func (l *Layout) PutManifest(ctx context.Context, tag string, d v1.Descriptor, raw []byte) error {
	if got, n, _ := v1.SHA256(bytes.NewReader(raw)); got != d.Digest || n != d.Size {
		return fmt.Errorf("%s: manifest does not match its descriptor %s", l.name, d.Digest)
	}
	if err := l.checkComplete(d, raw); err != nil {
		return err
	}
	if err := l.WriteBlob(ctx, d, bytes.NewReader(raw)); err != nil {
		return fmt.Errorf("%s: writing manifest %s: %w", l.name, d.Digest, err)
	}
	if tag == "" {
		return nil
	}
	return l.SetTag(tag, v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
}

// checkComplete verifies that the blobs a manifest references are present.
func (l *Layout) checkComplete(d v1.Descriptor, raw []byte) error {
	refs, err := References(d, raw)
	if err != nil {
		return fmt.Errorf("%s: %w", l.name, err)
	}
	for _, r := range refs {
		if !l.Has(r) {
			return fmt.Errorf("%s: manifest %s references %s, which the layout does not hold; index.json left unchanged", l.name, d.Digest, r.Digest)
		}
	}
	return nil
}

// References lists the blobs a manifest document needs: an index's
// manifests, or an image's config and layers (foreign layers excepted).
func References(d v1.Descriptor, raw []byte) ([]v1.Descriptor, error) {
	var refs []v1.Descriptor
	kind, _ := manifest.Classify(d.MediaType, raw)
	if kind == manifest.KindIndex {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("decoding index %s: %w", d.Digest, err)
		}
		return idx.Manifests, nil
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("decoding manifest %s: %w", d.Digest, err)
	}
	for _, r := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if r.Digest.Hex != "" && !manifest.IsForeign(r) {
			refs = append(refs, r)
		}
	}
	return refs, nil
}

// SetTag points tag at d in index.json: the entries naming tag are
// replaced, every other entry and field is kept. index.json is written to
// a temporary file and renamed over the old one.
func (l *Layout) SetTag(tag string, d v1.Descriptor) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.ensureLayout(); err != nil {
		return err
	}
	idx, raw, err := l.readIndex()
	if err != nil {
		return err
	}
	out, err := Retag(raw, idx, tag, d)
	if err != nil {
		return fmt.Errorf("%s: %w", l.name, err)
	}
	if err := writeIndexFile(filepath.Join(l.dir, "index.json"), out); err != nil {
		return fmt.Errorf("%s: writing index.json: %w", l.name, err)
	}
	return nil
}

// Retag returns index.json (raw, parsed as idx; raw nil for a new layout)
// with tag pointing at d: the entries naming tag are dropped and d appended
// with the tag annotation; every other entry and field is kept as it was.
func Retag(raw []byte, idx *v1.IndexManifest, tag string, d v1.Descriptor) ([]byte, error) {
	top := map[string]json.RawMessage{}
	if raw != nil {
		if err := json.Unmarshal(raw, &top); err != nil {
			return nil, fmt.Errorf("decoding index.json: %w", err)
		}
	} else {
		top["schemaVersion"] = json.RawMessage(`2`)
		top["mediaType"] = json.RawMessage(`"` + types.OCIImageIndex + `"`)
	}
	var entries []json.RawMessage
	if m, ok := top["manifests"]; ok {
		if err := json.Unmarshal(m, &entries); err != nil {
			return nil, fmt.Errorf("decoding index.json: %w", err)
		}
	}
	if len(entries) != len(idx.Manifests) {
		return nil, errors.New("index.json is inconsistent")
	}
	kept := []json.RawMessage{}
	for i, e := range idx.Manifests {
		if e.Annotations[RefName] != tag {
			kept = append(kept, entries[i])
		}
	}
	d = v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, Annotations: map[string]string{RefName: tag}}
	b, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	kept = append(kept, b)
	if top["manifests"], err = json.Marshal(kept); err != nil {
		return nil, err
	}
	return json.Marshal(top)
}

// writeIndexFile replaces index.json; a variable so that tests can inject a
// failure at the last step.
var writeIndexFile = func(path string, data []byte) error {
	return writeAtomic(path, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// ctxReader stops a copy when the context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
