package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/manifest"
)

// Repo is a repository in a registry. It implements engine.WritableRepo.
type Repo struct {
	c    *Client
	repo name.Repository
}

var (
	_ engine.WritableRepo = (*Repo)(nil)
	_ engine.BlobOpener   = (*Repo)(nil)
	_ engine.SharedTags   = (*Repo)(nil)
)

// SharedTags marks a registry's tags as moved by other clients too
// (engine.SharedTags).
func (r *Repo) SharedTags() {}

// Parse turns a reference into a location. A reference without a registry
// host belongs to defaultRegistry (the REGISTRY argument of the classic
// form) when it is set, else to Docker Hub. write asks for push access.
func (c *Client) Parse(ref, defaultRegistry string, write bool) (engine.Location, error) {
	if defaultRegistry != "" && !ValidHost(defaultRegistry) {
		return engine.Location{}, fmt.Errorf("invalid registry %q: want host[:port]", defaultRegistry)
	}
	opts := c.nameOptions(defaultRegistry)
	if defaultRegistry != "" && c.IsInsecure(defaultRegistry) {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return engine.Location{}, fmt.Errorf("invalid reference %q: %w", ref, err)
	}
	if c.IsInsecure(r.Context().RegistryStr()) {
		r, err = name.ParseReference(r.String(), append(opts, name.Insecure)...)
		if err != nil {
			return engine.Location{}, fmt.Errorf("invalid reference %q: %w", ref, err)
		}
	}
	scope := r.Context().Scope(transport.PullScope)
	if write {
		scope = r.Context().Scope(transport.PushScope)
	}
	c.addScope(r.Context().RegistryStr(), scope)
	loc := engine.Location{Repo: &Repo{c: c, repo: r.Context()}}
	switch r := r.(type) {
	case name.Digest:
		loc.Digest = r.DigestStr()
	case name.Tag:
		loc.Tag = r.TagStr()
	}
	return loc, nil
}

// ParseRegistry splits a registry named as users name one, host[:port] or
// http(s)://host[:port] (a trailing slash allowed), into its host and
// whether it asked for plain HTTP (http://).
func ParseRegistry(arg string) (host string, plainHTTP bool, err error) {
	switch {
	case strings.HasPrefix(arg, "http://"):
		host, plainHTTP = strings.TrimPrefix(arg, "http://"), true
	case strings.HasPrefix(arg, "https://"):
		host = strings.TrimPrefix(arg, "https://")
	default:
		host = arg
	}
	host = strings.TrimSuffix(host, "/")
	if !ValidHost(host) {
		return "", false, fmt.Errorf("invalid registry %q: want host[:port] or http(s)://host[:port]", arg)
	}
	return host, plainHTTP, nil
}

// ValidHost reports whether s is a registry host: a DNS name, an IPv4
// address or a bracketed IPv6 address, with an optional port.
func ValidHost(s string) bool {
	u, err := url.Parse("//" + s)
	if err != nil || u.Host != s || u.User != nil || u.Hostname() == "" {
		return false
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return false
		}
	} else if strings.HasSuffix(s, ":") {
		return false
	}
	h := u.Hostname()
	if strings.Contains(h, ":") {
		return true // IPv6, already checked by url.Parse
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// Name returns "host/repository".
func (r *Repo) Name() string { return r.repo.Name() }

// Registry returns the registry host.
func (r *Repo) Registry() string { return r.repo.RegistryStr() }

func (r *Repo) ref(id string) (name.Reference, error) {
	if strings.Contains(id, ":") {
		return r.repo.Digest(id), nil
	}
	return r.repo.Tag(id), nil
}

func (r *Repo) options(ctx context.Context) ([]remote.Option, error) {
	rt, err := r.c.transport(ctx, r.repo.Registry)
	if err != nil {
		return nil, err
	}
	// Retries happen once, in this package's transport; go-containerregistry's
	// own retry of manifest writes is turned off.
	return []remote.Option{remote.WithTransport(rt), remote.WithContext(ctx), remote.WithRetryBackoff(remote.Backoff{Steps: 1})}, nil
}

// Manifest fetches a manifest by tag or digest.
func (r *Repo) Manifest(ctx context.Context, id string) (v1.Descriptor, []byte, error) {
	ref, err := r.ref(id)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	opts, err := r.options(ctx)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	d, err := remote.Get(ref, opts...)
	if err != nil {
		if ie := invalidDocument(ref.Name(), err); ie != nil {
			return v1.Descriptor{}, nil, ie
		}
		return v1.Descriptor{}, nil, &AccessError{Op: "reading manifest", Ref: ref.Name(), Err: err}
	}
	if d.Size > manifest.MaxDocumentSize {
		return v1.Descriptor{}, nil, &manifest.InvalidError{Ref: ref.Name(), What: fmt.Sprintf("manifest of %d bytes is over the %d byte limit", d.Size, manifest.MaxDocumentSize)}
	}
	return d.Descriptor, d.Manifest, nil
}

// Blob fetches a small blob and checks its size and digest. It never
// reads more than manifest.MaxDocumentSize bytes.
func (r *Repo) Blob(ctx context.Context, d v1.Descriptor) ([]byte, error) {
	ref := r.repo.Digest(d.Digest.String())
	if d.Size > manifest.MaxDocumentSize {
		return nil, &manifest.InvalidError{Ref: ref.Name(), What: fmt.Sprintf("config of %d bytes is over the %d byte limit", d.Size, manifest.MaxDocumentSize)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url(fmt.Sprintf("/v2/%s/blobs/%s", r.repo.RepositoryStr(), d.Digest)).String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.do(ctx, req)
	if err != nil {
		return nil, &AccessError{Op: "reading blob", Ref: ref.Name(), Err: err}
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, &AccessError{Op: "reading blob", Ref: ref.Name(), Err: err}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, manifest.MaxDocumentSize+1))
	if err != nil {
		return nil, &AccessError{Op: "reading blob", Ref: ref.Name(), Err: err}
	}
	if int64(len(b)) != d.Size {
		return nil, &manifest.InvalidError{Ref: ref.Name(), What: fmt.Sprintf("got %d bytes, the descriptor says %d", len(b), d.Size)}
	}
	if h, _, _ := v1.SHA256(bytes.NewReader(b)); h != d.Digest {
		return nil, &manifest.InvalidError{Ref: ref.Name(), What: "content digest is " + h.String()}
	}
	return b, nil
}

// Resolve returns the digest a tag names now.
func (r *Repo) Resolve(ctx context.Context, tag string) (v1.Hash, bool, error) {
	opts, err := r.options(ctx)
	if err != nil {
		return v1.Hash{}, false, err
	}
	d, err := remote.Head(r.repo.Tag(tag), opts...)
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
			return v1.Hash{}, false, nil
		}
		return v1.Hash{}, false, &AccessError{Op: "checking tag", Ref: r.repo.Tag(tag).Name(), Err: err}
	}
	return d.Digest, true, nil
}

// PutManifest writes a manifest under a tag, or by its digest.
func (r *Repo) PutManifest(ctx context.Context, tag string, d v1.Descriptor, raw []byte) error {
	opts, err := r.options(ctx)
	if err != nil {
		return err
	}
	var ref name.Reference = r.repo.Digest(d.Digest.String())
	if tag != "" {
		ref = r.repo.Tag(tag)
	}
	for attempt := 1; ; attempt++ {
		err := remote.Put(ref, &remote.Descriptor{Descriptor: d, Manifest: raw}, opts...)
		if err == nil {
			return nil
		}
		if attempt > manifestPutRetries || !blobRace(err) {
			return &AccessError{Op: "writing manifest", Ref: ref.Name(), Err: err}
		}
		// Distribution (2.8's filesystem storage) can refuse a manifest
		// while another request commits or mounts one of its blobs into
		// the same repository: the blobs were written, so try again.
		select {
		case <-ctx.Done():
			return &AccessError{Op: "writing manifest", Ref: ref.Name(), Err: err}
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
}

// manifestPutRetries bounds the retries of a manifest refused for a blob
// that another request is committing.
const manifestPutRetries = 3

// blobRace tells a manifest refused because a blob it names is not (yet)
// visible: 400 with DIGEST_INVALID or MANIFEST_BLOB_UNKNOWN.
func blobRace(err error) bool {
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != http.StatusBadRequest {
		return false
	}
	for _, d := range te.Errors {
		if d.Code == transport.DigestInvalidErrorCode || d.Code == transport.ManifestBlobUnknownErrorCode {
			return true
		}
	}
	return false
}

// upload is an open upload session in a registry.
type upload struct {
	r        *Repo
	location string
}

// StartUpload opens an upload session (POST); Commit sends the content (PUT).
func (r *Repo) StartUpload(ctx context.Context) (engine.BlobUpload, error) {
	loc, _, err := r.startUpload(ctx, "", "")
	if err != nil {
		return nil, err
	}
	return &upload{r: r, location: loc}, nil
}

// Commit sends the blob's content and closes the session.
func (u *upload) Commit(ctx context.Context, d v1.Descriptor, data []byte) error {
	return u.r.finishUpload(ctx, u.location, d, bytes.NewReader(data))
}

// Cancel abandons the session.
func (u *upload) Cancel(ctx context.Context) { u.r.cancelUpload(ctx, u.location) }

func (r *Repo) upload(ctx context.Context, d v1.Descriptor, body io.Reader) error {
	loc, _, err := r.startUpload(ctx, "", "")
	if err != nil {
		return err
	}
	return r.finishUpload(ctx, loc, d, body)
}

func (r *Repo) finishUpload(ctx context.Context, loc string, d v1.Descriptor, body io.Reader) error {
	u, err := url.Parse(loc)
	if err != nil {
		return fmt.Errorf("upload location %q: %w", loc, err)
	}
	q := u.Query()
	q.Set("digest", d.Digest.String())
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), body)
	if err != nil {
		return err
	}
	req.ContentLength = d.Size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := r.do(ctx, req)
	if err == nil {
		err = transport.CheckError(resp, http.StatusCreated)
		resp.Body.Close()
	}
	if err != nil {
		// The registry may have stored the blob and lost the answer; the
		// retry then finds the session closed. The blob is what counts.
		if r.hasBlob(ctx, d) {
			return nil
		}
		return &AccessError{Op: "uploading blob", Ref: r.repo.Digest(d.Digest.String()).Name(), Err: err}
	}
	return nil
}

// hasBlob reports whether the repository holds the blob d, with its size.
func (r *Repo) hasBlob(ctx context.Context, d v1.Descriptor) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, r.url(fmt.Sprintf("/v2/%s/blobs/%s", r.repo.RepositoryStr(), d.Digest)).String(), nil)
	if err != nil {
		return false
	}
	resp, err := r.do(ctx, req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK && (resp.ContentLength < 0 || resp.ContentLength == d.Size)
}

func (r *Repo) do(ctx context.Context, req *http.Request) (*http.Response, error) {
	rt, err := r.c.transport(ctx, r.repo.Registry)
	if err != nil {
		return nil, err
	}
	return (&http.Client{Transport: rt, CheckRedirect: capRedirects}).Do(req)
}

func (r *Repo) url(path string) *url.URL {
	return &url.URL{Scheme: r.repo.Scheme(), Host: r.repo.RegistryStr(), Path: path}
}

// startUpload opens an upload session, or mounts digest from repository
// from when both are set. It returns the session's absolute URL, or
// mounted=true when the registry mounted the blob.
func (r *Repo) startUpload(ctx context.Context, digest, from string) (location string, mounted bool, err error) {
	u := r.url(fmt.Sprintf("/v2/%s/blobs/uploads/", r.repo.RepositoryStr()))
	if digest != "" {
		u.RawQuery = url.Values{"mount": {digest}, "from": {from}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return "", false, err
	}
	resp, err := r.do(ctx, req)
	if err != nil {
		return "", false, &AccessError{Op: "starting upload to", Ref: r.repo.Name(), Err: err}
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusCreated, http.StatusAccepted); err != nil {
		return "", false, &AccessError{Op: "starting upload to", Ref: r.repo.Name(), Err: err}
	}
	if resp.StatusCode == http.StatusCreated {
		return "", true, nil
	}
	loc, err := resp.Location()
	if err != nil {
		return "", false, fmt.Errorf("registry %s answered an upload without a Location: %w", r.repo.RegistryStr(), err)
	}
	return loc.String(), false, nil
}

// cancelUpload abandons an upload session (best effort).
func (r *Repo) cancelUpload(ctx context.Context, location string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, location, nil)
	if err != nil {
		return
	}
	if resp, err := r.do(ctx, req); err == nil {
		resp.Body.Close()
	}
}

// MountRefusedError reports that a registry would not mount a blob and no
// copy was allowed.
type MountRefusedError struct {
	Digest v1.Hash
	From   string
	To     string
	Size   int64
	// Local is true when From is not a registry (an OCI layout, an
	// archive): the layer can only be uploaded.
	Local bool
}

// Error explains how to proceed.
func (e *MountRefusedError) Error() string {
	if e.Local {
		return fmt.Sprintf("layer %s exists only in %s, not in a registry: writing the result into %s uploads it; rerun with --allow-copy to upload its %d bytes", e.Digest, e.From, e.To, e.Size)
	}
	return fmt.Sprintf("cannot mount layer %s from %s into %s without copying it; rerun with --allow-copy to stream its %d bytes registry to registry", e.Digest, e.From, e.To, e.Size)
}

// Transfer mounts each blob from src, at most Options.Transfers at once
// across the client. A blob the registry will not mount is streamed from
// src only when allowCopy is set.
func (r *Repo) Transfer(ctx context.Context, src engine.Repo, blobs []v1.Descriptor, allowCopy bool) (engine.Transferred, error) {
	type result struct {
		copied int64 // bytes streamed; 0 when mounted
		err    error
	}
	results := make([]result, len(blobs))
	done := make(chan struct{})
	for i, d := range blobs {
		go func() {
			defer func() { done <- struct{}{} }()
			select {
			case r.c.transfers <- struct{}{}:
				defer func() { <-r.c.transfers }()
			case <-ctx.Done():
				results[i].err = ctx.Err()
				return
			}
			results[i].copied, results[i].err = r.transferOne(ctx, src, d, allowCopy)
		}()
	}
	for range blobs {
		<-done
	}
	var t engine.Transferred
	var errs []error
	for _, res := range results {
		switch {
		case res.err != nil:
			errs = append(errs, res.err)
		case res.copied > 0:
			t.Copied++
			t.CopiedBytes += res.copied
		default:
			t.Mounted++
		}
	}
	return t, errors.Join(errs...)
}

// transferOne returns the bytes copied, 0 when mounted.
func (r *Repo) transferOne(ctx context.Context, src engine.Repo, d v1.Descriptor, allowCopy bool) (int64, error) {
	from, sameRegistry := src.(*Repo)
	if sameRegistry && from.Registry() == r.Registry() {
		loc, mounted, err := r.startUpload(ctx, d.Digest.String(), from.repo.RepositoryStr())
		if err != nil {
			return 0, err
		}
		if mounted {
			return 0, nil
		}
		r.cancelUpload(ctx, loc)
	}
	if !allowCopy {
		return 0, &MountRefusedError{Digest: d.Digest, From: src.Name(), To: r.Name(), Size: d.Size, Local: !sameRegistry}
	}
	return r.copyBlob(ctx, src, d)
}

// copyBlob streams a blob from src into r; used only with --allow-copy.
func (r *Repo) copyBlob(ctx context.Context, src engine.Repo, d v1.Descriptor) (int64, error) {
	s, ok := src.(engine.BlobOpener)
	if !ok {
		return 0, fmt.Errorf("copying %s from %s: it cannot stream blobs", d.Digest, src.Name())
	}
	rc, err := s.OpenBlob(ctx, d)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	if err := r.upload(ctx, d, rc); err != nil {
		return 0, err
	}
	return d.Size, nil
}

// OpenBlob streams a blob of the repository (engine.BlobOpener).
func (r *Repo) OpenBlob(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	ref := r.repo.Digest(d.Digest.String())
	opts, err := r.options(ctx)
	if err != nil {
		return nil, err
	}
	l, err := remote.Layer(ref, opts...)
	if err != nil {
		return nil, &AccessError{Op: "reading blob", Ref: ref.Name(), Err: err}
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, &AccessError{Op: "reading blob", Ref: ref.Name(), Err: err}
	}
	return rc, nil
}
