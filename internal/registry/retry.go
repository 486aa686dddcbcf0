package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/image-rebase/image-rebase/internal/manifest"
)

// retryPolicy says how requests are retried.
type retryPolicy struct {
	// attempts is the most tries of one request.
	attempts int
	// base is the first backoff; each next one doubles, with ±20% jitter.
	base time.Duration
	// maxWait caps a Retry-After a registry asks for.
	maxWait time.Duration
}

var defaultRetry = retryPolicy{attempts: 5, base: 250 * time.Millisecond, maxWait: 30 * time.Second}

// retryTransport retries requests that are safe to send again (GET, HEAD,
// DELETE, PUT and POST whose body can be replayed) on connection errors,
// 408, 429 and 5xx answers, with exponential backoff and jitter. A 429 or
// 503 with Retry-After waits as long as the registry asks (capped).
type retryTransport struct {
	inner  http.RoundTripper
	policy retryPolicy
}

func (t *retryTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	replayable := r.Body == nil || r.Body == http.NoBody || r.GetBody != nil
	var resp *http.Response
	var err error
	for attempt := 1; ; attempt++ {
		req := r
		if attempt > 1 && r.GetBody != nil {
			body, gerr := r.GetBody()
			if gerr != nil {
				return nil, gerr
			}
			req = r.Clone(r.Context())
			req.Body = body
		}
		resp, err = t.inner.RoundTrip(req)
		if err == nil && r.Method == http.MethodGet {
			err = bufferSmall(r, resp)
		}
		if !replayable || attempt >= t.policy.attempts || !retriable(resp, err, r.Context()) {
			break
		}
		wait := t.backoff(attempt, resp)
		if resp != nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		if deadline, ok := r.Context().Deadline(); ok && time.Until(deadline) < wait {
			break
		}
		select {
		case <-time.After(wait):
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.Method, redactedURL(r), err)
	}
	return resp, nil
}

// bufferSmall reads a small answer (a manifest or a config) whole, so that a
// connection cut in its body becomes an error this transport can retry.
// Large bodies (layers, only with --allow-copy) stream. A manifest is never
// read past manifest.MaxDocumentSize, whether or not the registry announced
// its length: memory stays bounded whatever a registry sends.
func bufferSmall(r *http.Request, resp *http.Response) error {
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	isManifest := strings.Contains(r.URL.Path, "/manifests/")
	if isManifest && resp.ContentLength > maxBuffered {
		resp.Body.Close()
		return &tooLargeError{url: redactedURL(r), size: resp.ContentLength}
	}
	if !isManifest && (resp.ContentLength < 0 || resp.ContentLength > maxBuffered) {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBuffered+1))
	resp.Body.Close()
	if err != nil {
		return err
	}
	if len(b) > maxBuffered {
		return &tooLargeError{url: redactedURL(r), size: -1}
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	resp.ContentLength = int64(len(b))
	return nil
}

// maxBuffered is the largest answer bufferSmall reads whole, and the
// largest manifest read at all.
const maxBuffered = manifest.MaxDocumentSize

// permanent is implemented by errors that no retry can cure: a document
// over the size limit, a body that does not match its digest, a redirect
// loop.
type permanent interface{ permanent() }

// documentError is a document a registry served that cannot be used: too
// large, or not matching its digest. It makes a manifest.InvalidError.
type documentError interface {
	error
	what() string
}

// invalidDocument turns a documentError in err's chain into a
// manifest.InvalidError about ref; it returns nil when there is none.
func invalidDocument(ref string, err error) error {
	var de documentError
	if !errors.As(err, &de) {
		return nil
	}
	return &manifest.InvalidError{Ref: ref, What: de.what()}
}

// tooLargeError is a manifest over manifest.MaxDocumentSize.
type tooLargeError struct {
	url  string
	size int64 // -1 when the registry did not say
}

func (e *tooLargeError) Error() string { return e.url + ": " + e.what() }

func (e *tooLargeError) what() string {
	if e.size < 0 {
		return fmt.Sprintf("manifest over the %d byte limit (reading stopped there)", manifest.MaxDocumentSize)
	}
	return fmt.Sprintf("manifest of %d bytes is over the %d byte limit (not read)", e.size, manifest.MaxDocumentSize)
}

func (*tooLargeError) permanent() {}

func retriable(resp *http.Response, err error, ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	if err != nil {
		// No retry cures a permanent error, nor a refused TLS handshake.
		var p permanent
		return !errors.As(err, &p) && !tlsRefused(err)
	}
	switch resp.StatusCode {
	case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

func (t *retryTransport) backoff(attempt int, resp *http.Response) time.Duration {
	if resp != nil {
		if d, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
			return min(d, t.policy.maxWait)
		}
	}
	d := t.policy.base << (attempt - 1)
	jitter := 0.8 + 0.4*rand.Float64()
	return time.Duration(float64(d) * jitter)
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(0, time.Until(t)), true
	}
	return 0, false
}

func redactedURL(r *http.Request) string {
	u := *r.URL
	u.RawQuery, u.User, u.Fragment = "", nil, ""
	return u.String()
}
