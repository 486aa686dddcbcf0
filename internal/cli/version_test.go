package cli_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/version"
)

// TestVersionCommand: "version" and "--version" print the build's version,
// revision and Go version on one line; -o json the same fields.
func TestVersionCommand(t *testing.T) {
	want := version.Get().String() + "\n"
	if !strings.HasPrefix(want, "image-rebase "+version.String()+" (") || !strings.Contains(want, runtime.Version()) {
		t.Fatalf("the version line %q lacks the version or %s", want, runtime.Version())
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, stderr := run(t, args...)
		if code != 0 || out != want || stderr != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %q", args, code, out, stderr, want)
		}
	}
	code, out, _ := run(t, "version", "-o", "json")
	var got version.Info
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil || got != version.Get() {
		t.Errorf("version -o json: exit %d, %v: %s", code, err, out)
	}
	if code, _, stderr := run(t, "version", "extra"); code != 2 || !strings.Contains(stderr, "no arguments") {
		t.Errorf("version extra: exit %d, %q", code, stderr)
	}
}

// TestVersionInJSONAndUserAgent: every JSON object the commands print
// carries the version, and every request to the registry (the token
// server's included) names image-rebase/VERSION as its User-Agent.
func TestVersionInJSONAndUserAgent(t *testing.T) {
	var mu sync.Mutex
	agents := map[string]int{}
	reg := regtest.Start(t, regtest.WithTokenAuth(), regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			agents[r.UserAgent()]++
			mu.Unlock()
			h.ServeHTTP(w, r)
		})
	}))
	fixture(t, reg)
	mu.Lock()
	clear(agents) // the fixture's own pushes
	mu.Unlock()

	h := "http://" + reg.Host
	dir := t.TempDir()
	values := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(values, []byte("image: "+reg.Ref("app:1")+" # {\"$rebase\": \"app\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		args  []string
		lines bool // one object per line, else one indented object
	}{
		{"rebase", []string{h, "app:1", "--from-base", "base:1", "--to-base", "base:2", "--dry-run", "-o", "json"}, false},
		{"batch", []string{"batch", "-r", h, "app:1", "--from-base", "base:1", "--to-base", "base:2", "--dry-run", "-o", "json"}, true},
		{"scan", []string{"scan", h, "--base", "base:2", "-o", "json"}, true},
		{"gitops", []string{"gitops", dir, "--pin-only", "--insecure", "--dry-run", "-o", "json"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := run(t, tc.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			objects := []string{out}
			if tc.lines {
				objects = strings.Split(strings.TrimSpace(out), "\n")
			}
			for _, o := range objects {
				var v struct{ Version *string }
				if err := json.Unmarshal([]byte(o), &v); err != nil || v.Version == nil || *v.Version != version.String() {
					t.Errorf("%v: %s", err, o)
				}
				if !strings.HasPrefix(o, `{"version":`) && !strings.HasPrefix(o, "{\n  \"version\":") {
					t.Errorf("the version is not the first field: %s", o)
				}
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	want := "image-rebase/" + version.String() + " go-containerregistry"
	n := 0
	for ua, c := range agents {
		n += c
		if !strings.HasPrefix(ua, want) {
			t.Errorf("%d requests with User-Agent %q, want %q…", c, ua, want)
		}
	}
	if n < 10 || len(agents) != 1 {
		t.Errorf("%d requests recorded, User-Agents %v", n, agents)
	}
}
