package registry

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Token groups bound the scopes asked in one token request: a token server's
// URL lists every scope, and proxies in front of token servers refuse long
// URLs (nginx: 8 KiB). A batch over thousands of repositories asks for one
// token per group of repositories instead of one for them all.
const (
	// maxGroupRepos is the most repositories a token is asked for.
	maxGroupRepos = 32
	// maxGroupBytes bounds the scopes' total length in a token request.
	maxGroupBytes = 2048
)

// defaultTokenLifetime is a token's lifetime when the token server does
// not say (the token specification's default).
const defaultTokenLifetime = 60 * time.Second

// scopeBook records, for one registry, the access asked for each
// repository and the token group each repository belongs to. Groups are
// filled in the order repositories are named, so that the images of a batch
// listed together share tokens.
type scopeBook struct {
	actions map[string][]string // resource ("repository:app") → actions
	groupOf map[string]*tokenGroup
	groups  []*tokenGroup
	// sources are the latest mount sources' scopes ("repository:base:pull"),
	// asked with every new token so that the next groups' tokens cover
	// their mounts from the start.
	sources []string
}

// maxSources bounds the mount sources asked with every token.
const maxSources = 4

func newScopeBook() *scopeBook {
	return &scopeBook{actions: map[string][]string{}, groupOf: map[string]*tokenGroup{}}
}

// add records scope ("repository:app:push,pull", "registry:catalog:*") and
// returns the group of its resource.
func (b *scopeBook) add(scope string) *tokenGroup {
	i := strings.LastIndexByte(scope, ':')
	if i < 0 {
		i = len(scope)
	}
	res, acts := scope[:i], strings.Split(scope[min(i+1, len(scope)):], ",")
	for _, a := range acts {
		if a != "" && !slices.Contains(b.actions[res], a) {
			b.actions[res] = append(b.actions[res], a)
		}
	}
	if g, ok := b.groupOf[res]; ok {
		return g
	}
	var g *tokenGroup
	if n := len(b.groups); n > 0 && len(b.groups[n-1].resources) < maxGroupRepos && b.groups[n-1].size+len(scope) <= maxGroupBytes {
		g = b.groups[n-1]
	} else {
		g = &tokenGroup{}
		b.groups = append(b.groups, g)
	}
	g.resources = append(g.resources, res)
	g.size += len(scope) + 1
	b.groupOf[res] = g
	return g
}

// scope renders a resource's scope with the actions recorded for it.
func (b *scopeBook) scope(res string) string {
	return res + ":" + strings.Join(b.actions[res], ",")
}

// tokenGroup holds the token of a group of repositories, until it expires.
type tokenGroup struct {
	resources []string // the group's repositories, as "repository:NAME"
	size      int
	// extra are scopes the group's requests need beyond their own
	// repositories: the source of a cross-repository mount, scopes a
	// registry's challenge named.
	extra []string

	mu      sync.Mutex // held while a token is asked for
	token   string
	covers  map[string]bool // "resource:action" the token was asked for
	expires time.Time
}

// tokenTransport authenticates to a registry that asks for bearer tokens
// (Docker Hub, Harbor, GitLab, cloud registries): one token per group of at
// most maxGroupRepos repositories, asked for when a request first needs it
// and kept until shortly before it expires. A request is sent with a token
// that covers it (its repository and, for a mount, the source repository);
// a 401 from the registry adds the scope its challenge names and is sent
// once more with a new token. Requests to other hosts (blob storage a
// registry redirects to) never carry the token.
type tokenTransport struct {
	inner     http.RoundTripper
	c         *Client
	reg       name.Registry
	auth      authn.Authenticator
	challenge *transport.Challenge
	scheme    string
}

// repoOfPath finds the repository of a registry API path.
var repoOfPath = regexp.MustCompile(`^/v2/(.+?)/(manifests/[^/]+|blobs/uploads/[^/]*|blobs/[^/]+|tags/list|referrers/[^/]+)$`)

func (t *tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !sameHost(r.URL.Host, t.reg.RegistryStr(), t.scheme) {
		return t.inner.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.URL.Scheme = t.scheme
	need := t.needs(r)
	if len(need) == 0 {
		return t.inner.RoundTrip(r)
	}
	g := t.c.groupFor(t.reg.RegistryStr(), need)
	tok, err := t.token(r.Context(), g, need, "")
	if err != nil {
		return nil, err
	}
	r.Header.Set("Authorization", "Bearer "+tok)
	resp, err := t.inner.RoundTrip(r)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	// The registry wants another scope, or no longer honours the token.
	scopes := challengeScopes(resp)
	replay := r.Body == nil || r.Body == http.NoBody || r.GetBody != nil
	if !replay {
		return resp, nil
	}
	t.c.addExtra(t.reg.RegistryStr(), g, scopes)
	if tok, err = t.token(r.Context(), g, append(need, scopes...), tok); err != nil {
		resp.Body.Close()
		return nil, err
	}
	resp.Body.Close()
	again := r.Clone(r.Context())
	if r.GetBody != nil {
		if again.Body, err = r.GetBody(); err != nil {
			return nil, err
		}
	}
	again.Header.Set("Authorization", "Bearer "+tok)
	return t.inner.RoundTrip(again)
}

// needs lists the scopes a request needs: its repository's, as recorded
// (or pull for a read, push and pull for a write of a repository not
// named before), and pull on the source of a mount.
func (t *tokenTransport) needs(r *http.Request) []string {
	if r.URL.Path == "/v2/_catalog" {
		return []string{"registry:catalog:*"}
	}
	m := repoOfPath.FindStringSubmatch(r.URL.Path)
	if m == nil {
		return nil
	}
	action := "push,pull"
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		action = "pull"
	}
	need := []string{"repository:" + m[1] + ":" + action}
	if from := r.URL.Query().Get("from"); from != "" && r.Method == http.MethodPost {
		need = append(need, "repository:"+from+":pull")
	}
	return need
}

// token returns a token of g that covers need, asking the token server for
// one when g has none, it expires soon, it does not cover need, or it is
// stale (the token the registry just refused).
func (t *tokenTransport) token(ctx context.Context, g *tokenGroup, need []string, stale string) (string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.token != "" && g.token != stale && time.Now().Before(g.expires) && covers(g.covers, need) {
		return g.token, nil
	}
	scopes := t.c.groupScopes(t.reg.RegistryStr(), g)
	for _, s := range need {
		if !slices.Contains(scopes, s) {
			scopes = append(scopes, s)
		}
	}
	cfg, err := authn.Authorization(ctx, t.auth)
	if err != nil {
		return "", fmt.Errorf("reading credentials for %s: %w", t.reg.RegistryStr(), err)
	}
	if cfg.RegistryToken != "" {
		// A registry token from the credentials file serves every scope.
		g.token, g.covers, g.expires = cfg.RegistryToken, everything, time.Now().Add(100*365*24*time.Hour)
		return g.token, nil
	}
	asked := time.Now()
	tok, err := transport.Exchange(ctx, t.reg, t.auth, t.inner, scopes, t.challenge)
	if err != nil {
		return "", fmt.Errorf("asking %s for a token: %w", t.challenge.Parameters["realm"], err)
	}
	life := time.Duration(tok.ExpiresIn) * time.Second
	if life <= 0 {
		life = defaultTokenLifetime
	}
	g.token = tok.Token
	if g.token == "" {
		g.token = tok.AccessToken
	}
	// Renewed a little before it expires: a tenth of its life, at most 30 s.
	g.expires = asked.Add(life - min(life/10, 30*time.Second))
	g.covers = map[string]bool{}
	for _, s := range scopes {
		for _, k := range expand(s) {
			g.covers[k] = true
		}
	}
	return g.token, nil
}

// everything marks a token that serves any scope.
var everything = map[string]bool{"*": true}

// covers reports whether a token asked for have serves need.
func covers(have map[string]bool, need []string) bool {
	if have["*"] {
		return true
	}
	for _, s := range need {
		for _, k := range expand(s) {
			if !have[k] {
				return false
			}
		}
	}
	return true
}

// expand splits "repository:app:push,pull" into "repository:app:push" and
// "repository:app:pull".
func expand(scope string) []string {
	i := strings.LastIndexByte(scope, ':')
	if i < 0 {
		return []string{scope}
	}
	var out []string
	for _, a := range strings.Split(scope[i+1:], ",") {
		out = append(out, scope[:i+1]+a)
	}
	return out
}

// challengeScopes returns the scopes a 401's Bearer challenge names.
func challengeScopes(resp *http.Response) []string {
	var out []string
	for _, h := range resp.Header.Values("WWW-Authenticate") {
		scheme, params, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "bearer") {
			continue
		}
		for _, p := range splitParams(params) {
			k, v, _ := strings.Cut(p, "=")
			if strings.TrimSpace(k) == "scope" {
				out = append(out, strings.Fields(strings.Trim(v, `"`))...)
			}
		}
	}
	return out
}

// splitParams splits `a="x,y",b="z"` at the commas outside quotes.
func splitParams(s string) []string {
	var out []string
	quoted, start := false, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

// sameHost reports whether host (of a request URL) is the registry reg,
// default ports included.
func sameHost(host, reg, scheme string) bool {
	return canonical(host, scheme) == canonical(reg, scheme)
}

func canonical(host, scheme string) string {
	if h, p, err := net.SplitHostPort(host); err == nil {
		return net.JoinHostPort(h, p)
	}
	port := "443"
	if scheme == "http" {
		port = "80"
	}
	return net.JoinHostPort(strings.Trim(host, "[]"), port)
}

// groupFor returns the token group of the first scope of need (the
// request's repository), recording it if the repository was not named
// before, and records the others (a mount's source) as the group's extras.
func (c *Client) groupFor(reg string, need []string) *tokenGroup {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.book(reg)
	res := need[0][:strings.LastIndexByte(need[0], ':')]
	g, ok := b.groupOf[res]
	if !ok {
		g = b.add(need[0])
	}
	for _, s := range need[1:] {
		if !slices.Contains(g.extra, s) {
			g.extra = append(g.extra, s)
		}
		if !slices.Contains(b.sources, s) {
			b.sources = append(b.sources, s)
			if len(b.sources) > maxSources {
				b.sources = b.sources[1:]
			}
		}
	}
	return g
}

// addExtra records scopes a registry's challenge asked for in g's requests.
func (c *Client) addExtra(reg string, g *tokenGroup, scopes []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range scopes {
		if !slices.Contains(g.extra, s) {
			g.extra = append(g.extra, s)
		}
	}
}

// groupScopes lists the scopes to ask for g's token: its repositories' and
// its extras.
func (c *Client) groupScopes(reg string, g *tokenGroup) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.book(reg)
	var out []string
	for _, res := range g.resources {
		out = append(out, b.scope(res))
	}
	for _, s := range slices.Concat(g.extra, b.sources) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// book returns the scope book of reg; c.mu is held.
func (c *Client) book(reg string) *scopeBook {
	b, ok := c.scopes[reg]
	if !ok {
		b = newScopeBook()
		c.scopes[reg] = b
	}
	return b
}
