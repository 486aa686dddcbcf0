package gitops

import (
	"bytes"
	"fmt"
	"strings"
)

// diffContext is the number of unchanged lines around each change.
const diffContext = 3

// Diff returns a unified diff (as git diff and patch read it) from before to
// after, for files with the same number of lines, which is what Rewrite
// produces: values change within their lines. The file is named a/path and
// b/path. Lines keep their bytes, carriage returns included.
func Diff(path string, before, after []byte) (string, error) {
	a, b := splitLines(before), splitLines(after)
	if len(a) != len(b) {
		return "", fmt.Errorf("diff of %s: %d lines became %d", path, len(a), len(b))
	}
	var changed []int
	for i := range a {
		if a[i] != b[i] {
			changed = append(changed, i)
		}
	}
	if len(changed) == 0 {
		return "", nil
	}
	var out strings.Builder
	fmt.Fprintf(&out, "--- a/%s\n+++ b/%s\n", path, path)
	for k := 0; k < len(changed); {
		// A hunk covers changes whose contexts touch.
		first, last := changed[k], changed[k]
		for k++; k < len(changed) && changed[k]-last-1 <= 2*diffContext; k++ {
			last = changed[k]
		}
		from, to := max(0, first-diffContext), min(len(a), last+diffContext+1)
		fmt.Fprintf(&out, "@@ -%s +%s @@\n", hunkRange(from, to), hunkRange(from, to))
		var minus, plus []string
		flush := func() {
			for _, l := range minus {
				writeLine(&out, '-', l)
			}
			for _, l := range plus {
				writeLine(&out, '+', l)
			}
			minus, plus = nil, nil
		}
		for i := from; i < to; i++ {
			if a[i] == b[i] {
				flush()
				writeLine(&out, ' ', a[i])
				continue
			}
			minus, plus = append(minus, a[i]), append(plus, b[i])
		}
		flush()
	}
	return out.String(), nil
}

func hunkRange(from, to int) string {
	if to-from == 1 {
		return fmt.Sprint(from + 1)
	}
	return fmt.Sprintf("%d,%d", from+1, to-from)
}

// writeLine writes one diff line; a last line without a newline gets the
// marker patch expects.
func writeLine(out *strings.Builder, prefix byte, l string) {
	out.WriteByte(prefix)
	out.WriteString(l)
	if !strings.HasSuffix(l, "\n") {
		out.WriteString("\n\\ No newline at end of file\n")
	}
}

// splitLines splits data after each newline, keeping it.
func splitLines(data []byte) []string {
	var lines []string
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n') + 1
		if i == 0 {
			i = len(data)
		}
		lines = append(lines, string(data[:i]))
		data = data[i:]
	}
	return lines
}
