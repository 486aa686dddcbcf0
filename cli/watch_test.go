package cli_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWatchBadInputs: each bad command line or configuration is one line
// on stderr and exit 2, before anything is contacted or listened on.
func TestWatchBadInputs(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := file("good.yaml", "registries:\n  - registry: http://127.0.0.1:1\n    bases: [base:stable]\n")
	empty := file("empty-secret", "\n")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"nothing to watch", []string{"watch"}, "nothing to watch"},
		{"REGISTRY without --base", []string{"watch", "127.0.0.1:1"}, "needs --base"},
		{"--base without REGISTRY", []string{"watch", "--base", "base:1"}, "go with REGISTRY"},
		{"two registries", []string{"watch", "a.example.com", "b.example.com", "--base", "b:1"}, "at most one REGISTRY"},
		{"a bad registry", []string{"watch", "http://", "--base", "b:1"}, "invalid registry"},
		{"a bad base", []string{"watch", "127.0.0.1:1", "--base", "Base:UPPER!"}, "--base"},
		{"a base twice", []string{"watch", "127.0.0.1:1", "--base", "b:1", "--base", "127.0.0.1:1/b:1"}, "given twice"},
		{"a bad output", []string{"watch", "127.0.0.1:1", "--base", "b:1", "-o", "yaml"}, "--output"},
		{"no such config", []string{"watch", "--config", filepath.Join(dir, "nope.yaml")}, "--config"},
		{"a misspelt key", []string{"watch", "--config", file("bad.yaml", "pol: 5m\n")}, "field pol not found"},
		{"an empty secret", []string{"watch", "--config", good, "--secret-file", empty}, "is empty"},
		{"no secret file", []string{"watch", "--config", good, "--secret-file", filepath.Join(dir, "none")}, "--secret-file"},
		{"a bad notify URL", []string{"watch", "--config", good, "--notify", "ci.example.com/hook"}, "--notify"},
		{"-j 0", []string{"watch", "--config", good, "-j", "0"}, "-j 0"},
		{"a negative poll", []string{"watch", "--config", good, "--poll", "-1s"}, "--poll"},
		{"an unknown flag", []string{"watch", "--config", good, "--pol", "1s"}, "unknown flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := run(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 || out != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", code, out, stderr, tc.want)
			}
		})
	}
}

// TestWatchFlagsWinOverTheFile: the file's listen address is taken unless
// --listen is given (a port already in use makes the run fail there, after
// every setting was read).
func TestWatchFlagsWinOverTheFile(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg := filepath.Join(t.TempDir(), "watch.yaml")
	os.WriteFile(cfg, []byte("listen: "+busy.Addr().String()+"\nregistries:\n  - registry: http://127.0.0.1:1\n    bases: [base:stable]\n"), 0o600)
	code, _, stderr := run(t, "watch", "--config", cfg)
	if code != 1 || !strings.Contains(stderr, "--listen") || !strings.Contains(stderr, busy.Addr().String()) {
		t.Errorf("the file's listen address: exit %d, %q", code, stderr)
	}
	code, _, stderr = run(t, "watch", "--config", cfg, "--listen", "127.0.0.1:-1")
	if code != 1 || !strings.Contains(stderr, "127.0.0.1:-1") {
		t.Errorf("--listen over the file: exit %d, %q", code, stderr)
	}
}
