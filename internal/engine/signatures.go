package engine

import (
	"context"
	"fmt"
	"strings"

	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/rebase"
)

// signatureCheck looks for the image's signatures in the background, while
// the rebase reads and writes: it costs requests but no round trip.
type signatureCheck struct {
	done  chan struct{}
	found []string
	err   error
}

// startSignatureCheck starts the check when the image's repository can list
// signatures and the check is wanted: always for an index (whose rebase
// reads for several rounds anyway), for a single image only when
// req.CheckSignatures asks, so that the common path keeps its request count.
// It returns nil when no check runs.
func startSignatureCheck(ctx context.Context, req Request, img *doc) *signatureCheck {
	lister, ok := req.Image.Repo.(SignatureLister)
	if !ok || (img.kind != manifest.KindIndex && !req.CheckSignatures) {
		return nil
	}
	c := &signatureCheck{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.found, c.err = lister.Signatures(ctx, img.desc.Digest)
	}()
	return c
}

// warnings waits for the check and says what the rebase invalidates.
func (c *signatureCheck) warnings(res *Result) []rebase.Warning {
	if c == nil {
		return nil
	}
	<-c.done
	if res == nil || res.Action == UpToDate {
		return nil
	}
	if c.err != nil {
		return []rebase.Warning{{Code: "signature-check-failed", Message: fmt.Sprintf("could not check %s for signatures: %v", res.Before, c.err)}}
	}
	if len(c.found) == 0 {
		return nil
	}
	verb := "do not cover"
	if res.Action == WouldRebase {
		verb = "would not cover"
	}
	return []rebase.Warning{{Code: "signatures-invalidated",
		Message: fmt.Sprintf("%s has signatures or referrers (%s) that %s the rebased image %s: sign it again", res.Before, strings.Join(c.found, "; "), verb, res.After)}}
}
