package cli_test

import (
	"errors"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/image-rebase/image-rebase/internal/cli"
)

// TestCIRecipes: the recipes of docs/ci.md (GitLab CI, GitHub Actions, a
// Kubernetes CronJob) are valid YAML, each runs "scan --stale -o json |
// batch -f -" and then "gitops --pin-only", and every image-rebase command
// line in them, in docs/container.md and in the workflow of
// docs/gitops.md parses with the real command line, flags included.
func TestCIRecipes(t *testing.T) {
	nightly := regexp.MustCompile(`image-rebase scan [^|\n]*--stale -o json \| image-rebase batch -f -`)
	kinds := map[string]bool{}
	for i, block := range yamlBlocks(t, "../../docs/ci.md") {
		docs := decodeAll(t, block)
		var cmds [][]string
		for _, d := range docs {
			cmds = append(cmds, commandLines(d)...)
		}
		switch {
		case strings.Contains(block, "stages:"):
			kinds["gitlab"] = true
		case strings.Contains(block, "runs-on:"):
			kinds["github"] = true
		case len(docs) == 1 && docs[0].(map[string]any)["kind"] == "CronJob":
			kinds["cronjob"] = true
		}
		var scans, pins int
		for _, args := range cmds {
			checkCommandLine(t, "docs/ci.md", args)
			switch {
			case args[0] == "scan":
				scans++
			case args[0] == "gitops" && strings.Contains(strings.Join(args, " "), "--pin-only"):
				pins++
			}
		}
		if !nightly.MatchString(block) || scans != 1 || pins != 1 {
			t.Errorf("docs/ci.md block %d: %d scans, %d pins, scan | batch: %v; want scan --stale -o json | batch -f -, then gitops --pin-only", i+1, scans, pins, nightly.MatchString(block))
		}
	}
	if len(kinds) != 3 {
		t.Errorf("recipes found: %v; want gitlab, github and cronjob", kinds)
	}

	// The shell blocks of the docs that show the tool at work.
	n := 0
	for _, file := range []string{"../../docs/ci.md", "../../docs/container.md"} {
		for _, block := range fencedBlocks(t, file, "sh") {
			for _, args := range shellCommands(block) {
				checkCommandLine(t, file, args)
				n++
			}
		}
	}
	for _, block := range yamlBlocks(t, "../../docs/gitops.md") {
		if strings.HasPrefix(block, "# .github/workflows/") {
			for _, d := range decodeAll(t, block) {
				for _, args := range commandLines(d) {
					checkCommandLine(t, "docs/gitops.md", args)
					n++
				}
			}
		}
	}
	if n < 7 {
		t.Errorf("only %d command lines found in the docs' shell blocks and gitops.md's workflow", n)
	}
}

// checkCommandLine parses args (after "image-rebase") as the command line
// does before running: the subcommand, its flags, the number of
// arguments, and the value of -o.
func checkCommandLine(t *testing.T, file string, args []string) {
	t.Helper()
	root := cli.NewCommand(io.Discard, io.Discard)
	cmd, rest, err := root.Find(args)
	if err != nil {
		t.Errorf("%s: image-rebase %q: %v", file, args, err)
		return
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Errorf("%s: image-rebase %q: %v", file, args, err)
		return
	}
	for _, check := range []func() error{
		func() error { return cmd.ValidateArgs(cmd.Flags().Args()) },
		cmd.ValidateRequiredFlags,
		cmd.ValidateFlagGroups,
	} {
		if err := check(); err != nil {
			t.Errorf("%s: image-rebase %q: %v", file, args, err)
		}
	}
	if o := cmd.Flags().Lookup("output"); o != nil && o.Value.String() != "text" && o.Value.String() != "json" {
		t.Errorf("%s: image-rebase %q: -o %s", file, args, o.Value)
	}
}

// decodeAll decodes every YAML document of block, failing the test on
// invalid YAML.
func decodeAll(t *testing.T, block string) []any {
	t.Helper()
	var out []any
	dec := yaml.NewDecoder(strings.NewReader(block))
	for {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("invalid YAML: %v\n%s", err, block)
		}
		out = append(out, doc)
	}
}

// scriptKeys are the keys whose values are shell scripts: GitLab's
// script and before_script, GitHub's run.
var scriptKeys = map[string]bool{"script": true, "before_script": true, "after_script": true, "run": true}

// commandLines finds the image-rebase command lines of a decoded YAML
// document: in shell scripts (GitLab's script, GitHub's run, a
// container's command and args), and as the arguments of a Kubernetes
// container of the tool's image that keeps its entry point.
func commandLines(doc any) [][]string {
	var out [][]string
	var walk func(v any, script bool)
	walk = func(v any, script bool) {
		switch v := v.(type) {
		case string:
			if script {
				out = append(out, shellCommands(v)...)
			}
		case []any:
			for _, x := range v {
				walk(x, script)
			}
		case map[string]any:
			image, _ := v["image"].(string)
			if args, ok := v["args"].([]any); ok && v["command"] == nil && strings.Contains(image, "/image-rebase:") {
				var argv []string
				for _, a := range args {
					s, _ := a.(string)
					argv = append(argv, s)
				}
				out = append(out, argv)
			}
			for k, x := range v {
				switch k {
				case "args", "command":
					walk(x, v["command"] != nil)
				default:
					walk(x, scriptKeys[k])
				}
			}
		}
	}
	walk(doc, false)
	return out
}

// assignment is a shell variable assignment before a command.
var assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// shellCommands splits a shell script into simple commands (at newlines,
// ;, |, &), with quotes removed, continuation lines joined, comments and
// redirections dropped, and returns the arguments of those that run
// image-rebase (after any VAR=value prefixes, and if, !, exec...).
func shellCommands(script string) [][]string {
	var cmds [][]string
	var words []string
	var word strings.Builder
	inWord, redirect := false, false
	endWord := func() {
		if inWord {
			if !redirect {
				words = append(words, word.String())
			}
			redirect = false
		}
		word.Reset()
		inWord = false
	}
	endCommand := func() {
		endWord()
		redirect = false
		for len(words) > 0 && (assignment.MatchString(words[0]) || slices.Contains([]string{"if", "!", "then", "else", "do", "exec", "time"}, words[0])) {
			words = words[1:]
		}
		if len(words) > 1 && words[0] == "image-rebase" {
			cmds = append(cmds, words[1:])
		}
		words = nil
	}
	for i := 0; i < len(script); i++ {
		c := script[i]
		switch {
		case c == '\\' && i+1 < len(script):
			i++
			if script[i] != '\n' {
				word.WriteByte(script[i])
				inWord = true
			}
		case c == '\'':
			j := strings.IndexByte(script[i+1:], '\'')
			if j < 0 {
				j = len(script) - i - 1
			}
			word.WriteString(script[i+1 : i+1+j])
			inWord = true
			i += j + 1
		case c == '"':
			for i++; i < len(script) && script[i] != '"'; i++ {
				if script[i] == '\\' && i+1 < len(script) && strings.IndexByte(`"\$`+"`", script[i+1]) >= 0 {
					i++
				}
				word.WriteByte(script[i])
			}
			inWord = true
		case c == '#' && !inWord:
			for i < len(script) && script[i] != '\n' {
				i++
			}
			endCommand()
		case c == '\n' || c == ';' || c == '|' || c == '&':
			endCommand()
		case c == '>' || c == '<':
			if inWord && strings.Trim(word.String(), "0123456789") == "" {
				word.Reset() // 2>: a file descriptor
				inWord = false
			}
			endWord()
			redirect = true
		case c == ' ' || c == '\t':
			endWord()
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	endCommand()
	return cmds
}

// fencedBlocks returns the ```lang blocks of a Markdown file.
func fencedBlocks(t *testing.T, file, lang string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, part := range strings.Split(string(b), "```"+lang+"\n")[1:] {
		out = append(out, part[:strings.Index(part, "```")])
	}
	return out
}

func TestShellCommands(t *testing.T) {
	script := `export DOCKER_CONFIG="$(mktemp -d)" # a comment: image-rebase x
set -o pipefail; image-rebase scan "$REGISTRY" --stale -o json | image-rebase batch -f - -o json | tee out.jsonl
DOCKER_CONFIG=/x image-rebase gitops deploy/ \
    --pin-only > log 2>&1 && echo 'image-rebase  not a command'
if ! image-rebase app:1 --check; then exit 1; fi
`
	got := shellCommands(script)
	want := [][]string{
		{"scan", "$REGISTRY", "--stale", "-o", "json"},
		{"batch", "-f", "-", "-o", "json"},
		{"gitops", "deploy/", "--pin-only"},
		{"app:1", "--check"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for i := range want {
		if strings.Join(got[i], " ") != strings.Join(want[i], " ") {
			t.Errorf("command %d: %q, want %q", i, got[i], want[i])
		}
	}
}
