// Package engine runs a rebase: it reads the image and its bases from
// storage, asks the rebase package for a plan, and applies it. Storage is
// behind small interfaces so that registries, OCI layouts and archives share
// one engine.
package engine

import (
	"context"
	"errors"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ErrNotFound is matched (errors.Is) by the errors of Repo.Manifest when
// the manifest does not exist.
var ErrNotFound = errors.New("not found")

// Repo is one repository of images in some storage.
type Repo interface {
	// Name is the repository's name as shown to users, e.g. "host/app".
	Name() string
	// Manifest fetches the manifest that id (a tag or a digest) names. It
	// returns the manifest's descriptor (media type as served) and its
	// bytes, verified against the digest. A missing manifest gives an error
	// that matches ErrNotFound.
	Manifest(ctx context.Context, id string) (v1.Descriptor, []byte, error)
	// Blob fetches a small blob, such as a config, verified against its
	// digest and refused when larger than manifest.MaxDocumentSize.
	Blob(ctx context.Context, d v1.Descriptor) ([]byte, error)
}

// WritableRepo is a Repo that images can be written to.
type WritableRepo interface {
	Repo
	// Transfer makes the blobs, which src holds, available in this
	// repository. It must not move their bytes (a registry mounts them)
	// unless allowCopy is true; then it reports what was copied.
	Transfer(ctx context.Context, src Repo, blobs []v1.Descriptor, allowCopy bool) (Transferred, error)
	// StartUpload opens the upload of one small blob (a config) before its
	// content is known, so that the request overlaps with reads.
	StartUpload(ctx context.Context) (BlobUpload, error)
	// PutManifest stores a manifest under tag (or by digest alone when tag
	// is empty).
	PutManifest(ctx context.Context, tag string, d v1.Descriptor, raw []byte) error
	// Resolve returns the digest a tag names now, and false when the tag
	// does not exist.
	Resolve(ctx context.Context, tag string) (v1.Hash, bool, error)
}

// SharedTags is implemented by storage whose tags other clients may move at
// any time, and which stores a manifest as written (a registry): after
// moving such a tag, a rebase reads it back, to catch another writer that
// replaced its result. Local layouts and archives, written atomically by one
// rebase at a time, do not implement it.
type SharedTags interface {
	// SharedTags marks the storage.
	SharedTags()
}

// BlobOpener is a Repo that can stream any blob it holds. Targets that
// must copy blobs (local layouts and archives, or a registry with
// --allow-copy) read their sources through it.
type BlobOpener interface {
	// OpenBlob streams the blob d. The reader is not verified: the
	// receiving side checks size and digest.
	OpenBlob(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error)
}

// BlobUpload is an upload opened by StartUpload: commit it once, or cancel it.
type BlobUpload interface {
	// Commit stores data as the blob d.
	Commit(ctx context.Context, d v1.Descriptor, data []byte) error
	// Cancel abandons the upload (best effort).
	Cancel(ctx context.Context)
}

// Transferred reports how blobs reached a repository.
type Transferred struct {
	// Mounted counts blobs made available without moving bytes.
	Mounted int `json:"mounted"`
	// Copied counts blobs whose bytes were streamed, CopiedBytes their size.
	Copied      int   `json:"copied"`
	CopiedBytes int64 `json:"copiedBytes"`
}

// Add sums two reports.
func (t Transferred) Add(o Transferred) Transferred {
	return Transferred{Mounted: t.Mounted + o.Mounted, Copied: t.Copied + o.Copied, CopiedBytes: t.CopiedBytes + o.CopiedBytes}
}

// Location names one image: a repository and a tag or digest.
type Location struct {
	Repo Repo
	// Tag is the tag, or empty when the image is named by digest.
	Tag string
	// Digest is the digest, or empty when the image is named by tag.
	Digest string
}

// ID is the tag or digest that names the image within its repository.
func (l Location) ID() string {
	if l.Digest != "" {
		return l.Digest
	}
	return l.Tag
}

// String renders the location as a reference, e.g. "host/app:1".
func (l Location) String() string {
	if l.Digest == "" && l.Tag == "" {
		// A local layout or archive's only image.
		return l.Repo.Name()
	}
	if l.Digest != "" {
		return l.Repo.Name() + "@" + l.Digest
	}
	return l.Repo.Name() + ":" + l.Tag
}

// SignatureLister is implemented by repositories that can find what signs
// or describes an image (cosign signature tags, OCI referrers). It is
// optional: without it the engine does not look for signatures.
type SignatureLister interface {
	// Signatures describes, one entry per kind, what refers to the image
	// with digest d; none means nothing was found.
	Signatures(ctx context.Context, d v1.Hash) ([]string, error)
}
