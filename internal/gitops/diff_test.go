package gitops

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDiffMatchesGit compares Diff with git diff --no-index on files whose
// lines change in place: hunks, context, carriage returns, a last line
// without newline.
func TestDiffMatchesGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	var lines []string
	for i := range 40 {
		lines = append(lines, strings.Repeat("x", i%7)+"line\n")
	}
	change := func(idx ...int) []string {
		out := append([]string(nil), lines...)
		for _, i := range idx {
			out[i] = "changed " + out[i]
		}
		return out
	}
	tests := map[string][2][]string{
		"first and last":         {lines, change(0, 39)},
		"gap of 6 joins":         {lines, change(10, 17)},
		"gap of 7 splits":        {lines, change(10, 18)},
		"gap of 5":               {lines, change(10, 16)},
		"adjacent":               {lines, change(20, 21, 22)},
		"one line":               {{"a\n"}, {"b\n"}},
		"crlf":                   {{"a\r\n", "b\r\n", "c\r\n"}, {"a\r\n", "B\r\n", "c\r\n"}},
		"no final newline":       {{"a\n", "b\n", "c"}, {"a\n", "b\n", "C"}},
		"no final newline, near": {{"a\n", "b\n", "c"}, {"a\n", "B\n", "c"}},
	}
	dir := t.TempDir()
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			a, b := strings.Join(tt[0], ""), strings.Join(tt[1], "")
			pa, pb := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
			os.WriteFile(pa, []byte(a), 0o644)
			os.WriteFile(pb, []byte(b), 0o644)
			cmd := exec.Command("git", "diff", "--no-index", "--no-color", "-U3", "a.yaml", "b.yaml")
			cmd.Dir = dir
			out, _ := cmd.Output() // exit 1: files differ
			want := string(out)
			want = want[strings.Index(want, "@@"):]
			got, err := Diff("f.yaml", []byte(a), []byte(b))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(got, "--- a/f.yaml\n+++ b/f.yaml\n") {
				t.Fatalf("header: %q", got)
			}
			got = got[strings.Index(got, "@@"):]
			// git prints the hunk's function context after the second @@.
			var cleaned []string
			for _, l := range strings.SplitAfter(want, "\n") {
				if strings.HasPrefix(l, "@@") {
					l = l[:strings.LastIndex(l, "@@")+2] + "\n"
				}
				cleaned = append(cleaned, l)
			}
			if want = strings.Join(cleaned, ""); got != want {
				t.Fatalf("got\n%s\nwant (git)\n%s", got, want)
			}
		})
	}
	if d, err := Diff("f", []byte("a\n"), []byte("a\n")); d != "" || err != nil {
		t.Fatalf("no change: %q %v", d, err)
	}
	if _, err := Diff("f", []byte("a\n"), []byte("a\nb\n")); err == nil {
		t.Fatal("line count change accepted")
	}
}
