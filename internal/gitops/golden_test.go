package gitops

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// fakeDigest is the digest the golden tests pin ref to.
func fakeDigest(ref string) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(ref)))
}

// pinAll scans data and pins every image to fakeDigest.
func pinAll(t testing.TB, name string, data []byte) ([]byte, []Edit) {
	t.Helper()
	images, err := Scan(name, data)
	if err != nil {
		t.Fatal(err)
	}
	var edits []Edit
	for _, im := range images {
		edits = append(edits, im.Pin(fakeDigest(im.Reference()))...)
	}
	out, err := Rewrite(name, data, edits)
	if err != nil {
		t.Fatal(err)
	}
	return out, edits
}

// assertOnlyEdited checks, independently of Rewrite, that after is before
// with each edit's bytes replaced and nothing else: same lines, and on each
// changed line the bytes around the edited value unchanged.
func assertOnlyEdited(t testing.TB, before, after []byte, edits []Edit) {
	t.Helper()
	want := string(before)
	// Apply from the end so earlier offsets stay valid.
	sorted := append([]Edit(nil), edits...)
	for i := range sorted {
		for j := i + 1; j < len(sorted); j++ {
			if sorted[j].Start > sorted[i].Start {
				sorted[i], sorted[j] = sorted[j], sorted[i]
			}
		}
	}
	for _, e := range sorted {
		if want[e.Start:e.End] != e.Old {
			t.Fatalf("edit at line %d: bytes %q are not the old value %q", e.Line, want[e.Start:e.End], e.Old)
		}
		want = want[:e.Start] + e.New + want[e.End:]
	}
	if string(after) != want {
		t.Fatalf("bytes outside the edited values changed:\n%s", after)
	}
	a, b := splitLines(before), splitLines(after)
	if len(a) != len(b) {
		t.Fatalf("%d lines became %d", len(a), len(b))
	}
	lines := map[int]bool{}
	for _, e := range edits {
		lines[e.Line] = true
	}
	for i := range a {
		if a[i] != b[i] && !lines[i+1] {
			t.Errorf("line %d changed but holds no edit:\n- %q\n+ %q", i+1, a[i], b[i])
		}
	}
}

func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/golden/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, in := range inputs {
		t.Run(filepath.Base(in), func(t *testing.T) {
			before, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			after, edits := pinAll(t, in, before)
			if len(edits) == 0 {
				t.Fatal("no edits: the input should mark at least one image")
			}
			assertOnlyEdited(t, before, after, edits)
			golden := strings.TrimSuffix(in, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, after, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(after, want) {
				d, _ := Diff(golden, want, after)
				t.Fatalf("output differs from %s (go test -update rewrites it):\n%s", golden, d)
			}
			// Pinning again changes nothing.
			again, edits := pinAll(t, in, after)
			if len(edits) != 0 || !bytes.Equal(again, after) {
				t.Fatalf("second pin made %d edits", len(edits))
			}
		})
	}
}
