package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// lazyAuth reaches a registry for which no credentials are configured. It
// sends requests as they are, without pinging the registry first: most
// registries reached anonymously need no authentication, and the ping would
// cost a round trip before every other request. When the registry answers
// 401 with a bearer challenge (a token registry such as Docker Hub, which
// hands out anonymous tokens), it authenticates as the client does after a
// ping (see tokenTransport), with that challenge, and sends the request
// again; every later request goes through that transport. A registry that
// asks for a password (a basic challenge) gets the 401 back: there is none
// to give.
type lazyAuth struct {
	reg   name.Registry
	inner http.RoundTripper // the unauthenticated transport
	c     *Client

	handshake sync.Mutex // held while the challenge is turned into a transport
	mu        sync.Mutex
	authed    http.RoundTripper
}

func (a *lazyAuth) RoundTrip(r *http.Request) (*http.Response, error) {
	if rt := a.current(); rt != nil {
		return rt.RoundTrip(r)
	}
	resp, err := a.inner.RoundTrip(r)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || !sameHost(r.URL.Host, a.reg.RegistryStr(), r.URL.Scheme) {
		return resp, err
	}
	if !strings.HasPrefix(strings.ToLower(resp.Header.Get("WWW-Authenticate")), "bearer ") {
		return resp, nil
	}
	again, ok := rewind(r)
	if !ok {
		return resp, nil
	}
	rt, err := a.authenticate(r.Context(), resp)
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("authenticating to %s: %w", a.reg.RegistryStr(), err)
	}
	return rt.RoundTrip(again)
}

func (a *lazyAuth) current() http.RoundTripper {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.authed
}

// authenticate turns the challenge of a 401 answer into the authenticated
// transport, once for the registry: go-containerregistry's ping, fed with
// that answer, parses the challenge.
func (a *lazyAuth) authenticate(ctx context.Context, challenge *http.Response) (http.RoundTripper, error) {
	a.handshake.Lock()
	defer a.handshake.Unlock()
	if rt := a.current(); rt != nil {
		return rt, nil
	}
	pr, err := transport.Ping(ctx, a.reg, &cannedPing{inner: a.inner, host: a.reg.RegistryStr(), answer: challenge})
	if err != nil {
		return nil, err
	}
	rt, err := a.c.authenticated(a.reg, authn.Anonymous, a.inner, pr)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.authed = rt
	a.mu.Unlock()
	return rt, nil
}

// cannedPing answers go-containerregistry's ping (GET /v2/ on the registry)
// with an answer already received, and passes every other request on.
type cannedPing struct {
	inner  http.RoundTripper
	host   string
	answer *http.Response // its status, headers and request are replayed
}

func (p *cannedPing) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet || !sameHost(r.URL.Host, p.host, r.URL.Scheme) || strings.TrimSuffix(r.URL.Path, "/") != "/v2" {
		return p.inner.RoundTrip(r)
	}
	// The scheme the answer came over tells which one the registry speaks.
	req := r.Clone(r.Context())
	if p.answer.Request != nil {
		req.URL.Scheme = p.answer.Request.URL.Scheme
	}
	return &http.Response{
		Status:     p.answer.Status,
		StatusCode: p.answer.StatusCode,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     p.answer.Header.Clone(),
		Body:       http.NoBody,
		Request:    req,
	}, nil
}

// wrapped makes rt a transport go-containerregistry's remote package uses
// as it is, without pinging the registry again.
func wrapped(reg name.Registry, rt http.RoundTripper) (http.RoundTripper, error) {
	return transport.FromToken(reg, authn.Anonymous, rt, &transport.Challenge{Scheme: "basic"}, &transport.Token{})
}
