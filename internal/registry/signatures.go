package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/manifest"
)

var _ engine.SignatureLister = (*Repo)(nil)

// Signatures looks for what signs or describes the image with digest d, with
// two concurrent requests: cosign's signature tag (sha256-<hex>.sig, HEAD)
// and the OCI referrers API (GET /v2/<name>/referrers/<digest>). Where the
// registry has no referrers API (404), it checks the referrers tag schema's
// fallback tag (sha256-<hex>) instead.
func (r *Repo) Signatures(ctx context.Context, d v1.Hash) ([]string, error) {
	tag := d.Algorithm + "-" + d.Hex
	var (
		wg              sync.WaitGroup
		sigExists       bool
		sigErr, refErr  error
		referrers       []v1.Descriptor
		referrersServed bool
	)
	wg.Go(func() { _, sigExists, sigErr = r.Resolve(ctx, tag+".sig") })
	wg.Go(func() { referrers, referrersServed, refErr = r.referrers(ctx, d) })
	wg.Wait()
	var found []string
	if sigErr != nil {
		return nil, sigErr
	}
	if sigExists {
		found = append(found, "cosign signature "+r.repo.Tag(tag+".sig").Name())
	}
	if refErr != nil {
		return nil, refErr
	}
	if referrersServed {
		if len(referrers) > 0 {
			found = append(found, describeReferrers(referrers))
		}
		return found, nil
	}
	_, fallback, err := r.Resolve(ctx, tag)
	if err != nil {
		return nil, err
	}
	if fallback {
		found = append(found, "OCI referrers in "+r.repo.Tag(tag).Name())
	}
	return found, nil
}

// referrers asks the referrers API; served is false when the registry does
// not have it.
func (r *Repo) referrers(ctx context.Context, d v1.Hash) (refs []v1.Descriptor, served bool, err error) {
	u := r.url(fmt.Sprintf("/v2/%s/referrers/%s", r.repo.RepositoryStr(), d))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, false, err
	}
	req.Header.Set("Accept", string(types.OCIImageIndex))
	resp, err := r.do(ctx, req)
	if err != nil {
		return nil, false, &AccessError{Op: "listing referrers of", Ref: r.repo.Digest(d.String()).Name(), Err: err}
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusBadRequest:
		return nil, false, nil
	}
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, false, &AccessError{Op: "listing referrers of", Ref: r.repo.Digest(d.String()).Name(), Err: err}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, manifest.MaxDocumentSize+1))
	if err != nil {
		return nil, false, &AccessError{Op: "listing referrers of", Ref: r.repo.Digest(d.String()).Name(), Err: err}
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, false, &manifest.InvalidError{Ref: r.repo.Digest(d.String()).Name(), What: "referrers answer is not an index: " + err.Error()}
	}
	return idx.Manifests, true, nil
}

// describeReferrers renders "2 OCI referrers (type, type)".
func describeReferrers(refs []v1.Descriptor) string {
	var kinds []string
	seen := map[string]bool{}
	for _, d := range refs {
		k := d.ArtifactType
		if k == "" {
			k = string(d.MediaType)
		}
		if !seen[k] {
			seen[k] = true
			kinds = append(kinds, k)
		}
	}
	s := "s"
	if len(refs) == 1 {
		s = ""
	}
	return fmt.Sprintf("%d OCI referrer%s (%s)", len(refs), s, strings.Join(kinds, ", "))
}
