package registry

import (
	"fmt"
	"net/http"
)

// maxRedirects is the most redirects one request may follow, as Go's
// default client allows. go-containerregistry's fetcher installs its own
// redirect check, which drops Go's cap: a registry that redirects a blob to
// itself would be followed until --timeout.
const maxRedirects = 10

// redirectCap fails a request that has followed maxRedirects redirects
// already. It sits outside the retries: a loop is not transient.
type redirectCap struct {
	inner http.RoundTripper
}

func (t redirectCap) RoundTrip(r *http.Request) (*http.Response, error) {
	hops := 0
	first := r
	for prev := r.Response; prev != nil && prev.Request != nil; prev = prev.Request.Response {
		hops++
		first = prev.Request
	}
	if hops >= maxRedirects {
		return nil, &redirectLoopError{url: redactedURL(first), hops: hops}
	}
	return t.inner.RoundTrip(r)
}

// capRedirects is an http.Client's redirect check with the same cap and
// message as redirectCap.
func capRedirects(r *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return &redirectLoopError{url: redactedURL(via[0]), hops: len(via)}
	}
	return nil
}

// redirectLoopError is a request redirected more than maxRedirects times.
type redirectLoopError struct {
	url  string
	hops int
}

func (e *redirectLoopError) Error() string {
	return fmt.Sprintf("redirect loop: %s was redirected %d times; giving up", e.url, e.hops)
}

func (*redirectLoopError) permanent() {}
