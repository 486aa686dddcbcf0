package registry

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// schemeTransport sends the requests meant for one registry over the scheme
// that registry speaks: HTTPS for a registry not named insecure, plain HTTP
// for one named http://HOST, and for one named with --insecure, HTTPS first
// and plain HTTP when the HTTPS attempt fails (a plain-HTTP server answers
// a TLS handshake in plain text). The scheme that answered is kept for the
// next requests, so a plain-HTTP registry named with --insecure costs one
// failed TLS handshake per connection of the first round of requests, and
// no round trip of its own (go-containerregistry's ping waits 300 ms
// before trying HTTP unless the HTTPS attempt fails fast).
//
// A registry named http://HOST that answers 400 before it answered anything
// else is checked for TLS (see speaksTLS), so that the error says it
// speaks HTTPS.
type schemeTransport struct {
	inner http.RoundTripper
	host  string
	// plain is set for a registry named http://HOST.
	plain bool

	mu        sync.Mutex
	scheme    string // "" while unknown
	confirmed bool   // a plain registry answered other than 400
}

func (s *schemeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !sameHost(r.URL.Host, s.host, r.URL.Scheme) {
		return s.inner.RoundTrip(r)
	}
	s.mu.Lock()
	scheme, confirmed := s.scheme, s.confirmed
	s.mu.Unlock()
	if s.plain && !confirmed {
		return s.plainAnswer(r)
	}
	if scheme != "" {
		return s.inner.RoundTrip(withScheme(r, scheme))
	}
	resp, err := s.inner.RoundTrip(withScheme(r, "https"))
	if err == nil {
		s.learn("https")
		return resp, nil
	}
	again, ok := rewind(r)
	if r.Context().Err() != nil || !ok {
		return nil, err
	}
	resp, herr := s.inner.RoundTrip(withScheme(again, "http"))
	if herr != nil {
		return nil, fmt.Errorf("over HTTPS: %v; over HTTP: %w", err, herr)
	}
	s.learn("http")
	return resp, nil
}

// plainAnswer sends r over plain HTTP to a registry named http://HOST that
// has not answered yet: a 400 from a server that completes a TLS handshake
// means the registry speaks HTTPS.
func (s *schemeTransport) plainAnswer(r *http.Request) (*http.Response, error) {
	resp, err := s.inner.RoundTrip(withScheme(r, "http"))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusBadRequest {
		s.mu.Lock()
		s.confirmed = true
		s.mu.Unlock()
		return resp, nil
	}
	if terr := speaksTLS(r.Context(), s.host, &transport.Error{StatusCode: http.StatusBadRequest}); !isStatus400(terr) {
		resp.Body.Close()
		return nil, terr
	}
	return resp, nil
}

// isStatus400 tells speaksTLS's answer when the server does not speak TLS:
// the 400 it was given.
func isStatus400(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusBadRequest
}

func (s *schemeTransport) learn(scheme string) {
	s.mu.Lock()
	s.scheme = scheme
	s.mu.Unlock()
}

// withScheme returns r sent over scheme (r itself when it already is).
func withScheme(r *http.Request, scheme string) *http.Request {
	if r.URL.Scheme == scheme {
		return r
	}
	c := r.Clone(r.Context())
	c.URL.Scheme = scheme
	return c
}

// rewind returns r ready to be sent again: its body, if any, read anew.
func rewind(r *http.Request) (*http.Request, bool) {
	if r.Body == nil || r.Body == http.NoBody {
		return r, true
	}
	if r.GetBody == nil {
		return nil, false
	}
	body, err := r.GetBody()
	if err != nil {
		return nil, false
	}
	c := r.Clone(r.Context())
	c.Body = body
	return c, true
}

// tlsRefused reports a TLS handshake that fails the same way however often
// it is tried: a server that answers in plain HTTP, an untrusted or
// mismatched certificate, a TLS alert.
func tlsRefused(err error) bool {
	var (
		header  tls.RecordHeaderError
		verify  *tls.CertificateVerificationError
		alert   tls.AlertError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		invalid x509.CertificateInvalidError
	)
	return errors.As(err, &header) || errors.As(err, &verify) || errors.As(err, &alert) ||
		errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &invalid)
}
