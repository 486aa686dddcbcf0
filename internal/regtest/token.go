package regtest

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// tokenServer is a bearer-token front door for the registry (WithTokenAuth)
// and the token server that feeds it, both on the registry's host: the
// Docker registry token protocol as clients see it
// (https://distribution.github.io/distribution/spec/auth/token/), with
// opaque tokens remembered here instead of signed JWTs.
type tokenServer struct {
	user, pass string
	realm      string        // set once the server's URL is known
	lifetime   time.Duration // of the tokens issued

	mu      sync.Mutex
	granted map[string]grant // token -> what it grants, until when
	refresh map[string]bool
	asked   []string
	refused int // token requests refused for their length
}

// grant is what a token allows.
type grant struct {
	scopes  map[string][]string // "type:name" -> actions
	expires time.Time
}

// maxTokenURL is the longest token request line accepted, as nginx's
// default large_client_header_buffers (8 KiB) allows in front of a token
// server; longer requests get 414.
const maxTokenURL = 8 << 10

const tokenService = "regtest"

func newTokenServer(user, pass string, lifetime time.Duration) *tokenServer {
	if lifetime <= 0 {
		lifetime = 300 * time.Second
	}
	return &tokenServer{user: user, pass: pass, lifetime: lifetime, granted: map[string]grant{}, refresh: map[string]bool{}}
}

// scope is one resource scope: "repository:app:pull,push".
type scope struct {
	typ, name string
	actions   []string
}

// String renders the scope as in a challenge or a token request.
func (s scope) String() string { return s.typ + ":" + s.name + ":" + strings.Join(s.actions, ",") }

func parseScope(s string) (scope, bool) {
	i, j := strings.Index(s, ":"), strings.LastIndex(s, ":")
	if i < 0 || i == j {
		return scope{}, false
	}
	return scope{typ: s[:i], name: s[i+1 : j], actions: strings.Split(s[j+1:], ",")}, true
}

// repoPath splits a /v2/ path (without the prefix) into the repository and
// the kind of resource, as Distribution's router does.
var repoPath = regexp.MustCompile(`^(.+?)/(manifests/[^/]+|blobs/uploads/[^/]*|blobs/[^/]+|tags/list)$`)

// required lists the scopes a request needs, as Distribution's app does
// before asking its access controller.
func required(r *http.Request) []scope {
	rest, _ := trimV2(r.URL.Path)
	if rest == "" {
		return nil
	}
	if rest == "_catalog" {
		return []scope{{typ: "registry", name: "catalog", actions: []string{"*"}}}
	}
	m := repoPath.FindStringSubmatch(rest)
	if m == nil {
		return nil
	}
	actions := func(method string) []string {
		switch method {
		case http.MethodGet, http.MethodHead:
			return []string{"pull"}
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			return []string{"pull", "push"}
		case http.MethodDelete:
			return []string{"delete"}
		}
		return []string{"pull", "push"}
	}
	need := []scope{{typ: "repository", name: m[1], actions: actions(r.Method)}}
	if from := r.URL.Query().Get("from"); from != "" && r.Method == http.MethodPost {
		need = append(need, scope{typ: "repository", name: from, actions: []string{"pull"}})
	}
	return need
}

// wrap puts the token check in front of the registry and serves /token.
func (ts *tokenServer) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			ts.serveToken(w, r)
			return
		}
		need := required(r)
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			ts.challenge(w, need, "")
			return
		}
		ts.mu.Lock()
		g, known := ts.granted[tok]
		ts.mu.Unlock()
		if !known || time.Now().After(g.expires) {
			ts.challenge(w, need, "invalid_token")
			return
		}
		for _, s := range need {
			have := g.scopes[s.typ+":"+s.name]
			for _, a := range s.actions {
				if !slices.Contains(have, a) && !slices.Contains(have, "*") {
					ts.challenge(w, need, "insufficient_scope")
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (ts *tokenServer) challenge(w http.ResponseWriter, need []scope, errCode string) {
	h := fmt.Sprintf(`Bearer realm=%q,service=%q`, ts.realm, tokenService)
	if len(need) > 0 {
		s := make([]string, len(need))
		for i, n := range need {
			s[i] = n.String()
		}
		h += fmt.Sprintf(`,scope=%q`, strings.Join(s, " "))
	}
	if errCode != "" {
		h += fmt.Sprintf(`,error=%q`, errCode)
	}
	w.Header().Set("WWW-Authenticate", h)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	w.WriteHeader(http.StatusUnauthorized)
	fmt.Fprintln(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}`)
}

func (ts *tokenServer) serveToken(w http.ResponseWriter, r *http.Request) {
	if len(r.URL.RequestURI()) > maxTokenURL {
		ts.mu.Lock()
		ts.refused++
		ts.mu.Unlock()
		http.Error(w, "414 Request-URI Too Large", http.StatusRequestURITooLong)
		return
	}
	var user, pass string
	var scopes []string
	var offline bool
	switch r.Method {
	case http.MethodGet:
		user, pass, _ = r.BasicAuth()
		for _, s := range r.URL.Query()["scope"] {
			scopes = append(scopes, strings.Fields(s)...)
		}
	case http.MethodPost: // OAuth2 (https://distribution.github.io/distribution/spec/auth/oauth/)
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		switch r.PostForm.Get("grant_type") {
		case "password":
			user, pass, offline = r.PostForm.Get("username"), r.PostForm.Get("password"), true
		case "refresh_token":
			ts.mu.Lock()
			ok := ts.refresh[r.PostForm.Get("refresh_token")]
			ts.mu.Unlock()
			if !ok {
				http.Error(w, `{"error":"invalid_grant"}`, http.StatusUnauthorized)
				return
			}
			user, pass = ts.user, ts.pass
		default:
			http.Error(w, `{"error":"unsupported_grant_type"}`, http.StatusBadRequest)
			return
		}
		scopes = strings.Fields(r.PostForm.Get("scope"))
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if ts.user != "" && (subtle.ConstantTimeCompare([]byte(user), []byte(ts.user)) != 1 ||
		subtle.ConstantTimeCompare([]byte(pass), []byte(ts.pass)) != 1) {
		w.Header().Set("WWW-Authenticate", `Basic realm="regtest token server"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
		return
	}
	grants := map[string][]string{}
	for _, s := range scopes {
		sc, ok := parseScope(s)
		if !ok {
			continue
		}
		k := sc.typ + ":" + sc.name
		for _, a := range sc.actions {
			if !slices.Contains(grants[k], a) {
				grants[k] = append(grants[k], a)
			}
		}
	}
	tok := randomHex(16)
	resp := map[string]any{"token": tok, "access_token": tok, "expires_in": int(ts.lifetime / time.Second), "issued_at": time.Now().UTC().Format(time.RFC3339)}
	ts.mu.Lock()
	ts.granted[tok] = grant{scopes: grants, expires: time.Now().Add(ts.lifetime)}
	ts.asked = append(ts.asked, strings.Join(scopes, " "))
	if offline {
		rt := randomHex(16)
		ts.refresh[rt] = true
		resp["refresh_token"] = rt
	}
	ts.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func (ts *tokenServer) tooLong() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.refused
}

func (ts *tokenServer) requests() []string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return slices.Clone(ts.asked)
}
