package cli_test

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/configuration"
	"go.yaml.in/yaml/v3"

	"github.com/image-rebase/image-rebase/internal/cli"
	"github.com/image-rebase/image-rebase/internal/watch"
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

// yamlBlocks returns the ```yaml blocks of a Markdown file.
func yamlBlocks(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, part := range strings.Split(string(b), "```yaml\n")[1:] {
		out = append(out, part[:strings.Index(part, "```")])
	}
	return out
}

// TestWatchRecipes: the YAML of README.md and docs/watch.md is valid: the
// Deployment's command line parses with the real command, the
// configuration file with watch.ParseFile, the notifications snippet as
// Distribution's own configuration (unknown keys refused).
func TestWatchRecipes(t *testing.T) {
	seen := map[string]int{}
	for _, file := range []string{"../../README.md", "../../docs/watch.md"} {
		for _, block := range yamlBlocks(t, file) {
			dec := yaml.NewDecoder(strings.NewReader(block))
			for {
				var doc map[string]any
				err := dec.Decode(&doc)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("%s: %v\n%s", file, err, block)
				}
				switch {
				case doc["kind"] == "Deployment":
					seen["deployment"]++
					var d struct {
						Spec struct {
							Replicas int
							Template struct {
								Spec struct {
									Containers []struct{ Args []string }
								}
							}
						}
					}
					remarshal(t, doc, &d)
					if d.Spec.Replicas != 1 || len(d.Spec.Template.Spec.Containers) != 1 {
						t.Fatalf("%s: a Deployment of %d replicas, %d containers", file, d.Spec.Replicas, len(d.Spec.Template.Spec.Containers))
					}
					args := d.Spec.Template.Spec.Containers[0].Args
					root := cli.NewCommand(io.Discard, io.Discard)
					cmd, rest, err := root.Find(args)
					if err != nil || cmd.Name() != "watch" {
						t.Fatalf("%s: %v finds %v, %v", file, args, cmd.Name(), err)
					}
					if err := cmd.ParseFlags(rest); err != nil || len(cmd.Flags().Args()) != 1 {
						t.Errorf("%s: %v: %v, arguments %v", file, args, err, cmd.Flags().Args())
					}
				case doc["notifications"] != nil:
					seen["notifications"]++
					var c struct {
						Notifications configuration.Notifications `yaml:"notifications"`
					}
					d := yaml.NewDecoder(strings.NewReader(block))
					d.KnownFields(true)
					if err := d.Decode(&c); err != nil {
						t.Fatalf("%s: not Distribution's notifications configuration: %v", file, err)
					}
					e := c.Notifications.Endpoints[0]
					if !strings.HasSuffix(e.URL, "/events") || !strings.HasPrefix(e.Headers.Get("Authorization"), "Bearer ") || e.Timeout == 0 {
						t.Errorf("%s: endpoint %+v", file, e)
					}
				case doc["registries"] != nil:
					seen["config"]++
					f, err := watch.ParseFile([]byte(block))
					if err != nil || len(f.Registries) == 0 {
						t.Errorf("%s: configuration file: %v", file, err)
					}
				}
			}
		}
	}
	if seen["deployment"] != 2 || seen["notifications"] != 2 || seen["config"] != 1 {
		t.Errorf("recipes found: %v", seen)
	}
}

func remarshal(t *testing.T, in, out any) {
	t.Helper()
	b, err := yaml.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
}
