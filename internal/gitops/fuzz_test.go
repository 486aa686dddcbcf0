package gitops

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzRewrite feeds random YAML to the scanner and the rewriter. Scanning
// may fail; it must not panic. When it succeeds, pinning every image must
// succeed too, and the result must be the input with exactly the edited
// bytes replaced, scan again to the same images now pinned, and decode to
// the same data except at the new values. Seeds: the golden files and
// testdata/fuzz/FuzzRewrite.
func FuzzRewrite(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/golden/*.yaml")
	for _, in := range inputs {
		b, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		images, err := Scan("f.yaml", data)
		if err != nil {
			var fe *FileError
			if !errors.As(err, &fe) {
				t.Fatalf("Scan error is not a *FileError: %v", err)
			}
			return
		}
		var edits []Edit
		news := map[string]bool{}
		for _, im := range images {
			e := im.Pin(fakeDigest(im.Reference()))
			for _, x := range e {
				news[x.New] = true
			}
			edits = append(edits, e...)
		}
		after, err := Rewrite("f.yaml", data, edits)
		if err != nil {
			t.Fatalf("scanned fine but the rewrite failed: %v", err)
		}
		assertOnlyEdited(t, data, after, edits)

		again, err := Scan("f.yaml", after)
		if err != nil {
			t.Fatalf("the rewritten file does not scan: %v\n%q", err, after)
		}
		if len(again) != len(images) {
			t.Fatalf("%d images became %d", len(images), len(again))
		}
		for i, im := range again {
			old := images[i]
			if im.ID != old.ID || im.Reference() != old.Reference() || im.Digest != fakeDigest(old.Reference()) || im.Line() != old.Line() {
				t.Fatalf("image %+v became %+v", old, im)
			}
			if e := im.Pin(fakeDigest(im.Reference())); len(e) != 0 {
				t.Fatalf("pinning again edits: %+v", e)
			}
		}
		assertSameData(t, data, after, news, blockEdits(edits))
	})
}

// assertSameData decodes every document of before and after into plain Go
// values (a decoder independent of the node trees Verify compares) and
// requires the same shape and values, except leaves of after that are one
// of the new values.
func assertSameData(t *testing.T, before, after []byte, news map[string]bool, blocks [][]Edit) {
	t.Helper()
	a, errA := decodeAll(before)
	b, errB := decodeAll(after)
	if (errA == nil) != (errB == nil) {
		t.Fatalf("decoding before: %v; after: %v", errA, errB)
	}
	if errA != nil {
		return // e.g. duplicate keys, which node trees allow
	}
	if len(a) != len(b) {
		t.Fatalf("%d documents became %d", len(a), len(b))
	}
	for i := range a {
		if path, ok := sameData(a[i], b[i], news, blocks); !ok {
			t.Fatalf("document %d differs at %s:\n%#v\n%#v", i, path, a[i], b[i])
		}
	}
}

func decodeAll(data []byte) (docs []any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = errors.New("decoder panicked")
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(yaml12.ReplaceAll(data, []byte("${1}%YAML 1.1"))))
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, v)
	}
}

// blockEdits groups the edits inside block scalars by block.
func blockEdits(edits []Edit) [][]Edit {
	groups := map[pos][]Edit{}
	for _, e := range edits {
		if e.Block != nil {
			p := pos{e.Block.Line, e.Block.Column}
			groups[p] = append(groups[p], e)
		}
	}
	var out [][]Edit
	for _, g := range groups {
		out = append(out, g)
	}
	return out
}

// applyInner applies edits inside a block scalar to its text, or returns
// false when they do not fit it.
func applyInner(text string, edits []Edit) (string, bool) {
	sorted := append([]Edit(nil), edits...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Block.InnerStart < sorted[j].Block.InnerStart })
	var out strings.Builder
	at := 0
	for _, e := range sorted {
		s, end := e.Block.InnerStart, e.Block.InnerEnd
		if s < at || end > len(text) || text[s:end] != e.Old {
			return "", false
		}
		out.WriteString(text[at:s] + e.New)
		at = end
	}
	return out.String() + text[at:], true
}

func sameData(a, b any, news map[string]bool, blocks [][]Edit) (string, bool) {
	if s, ok := b.(string); ok && news[s] {
		return "", true
	}
	if as, ok := a.(string); ok {
		for _, g := range blocks {
			if want, ok := applyInner(as, g); ok && want == b {
				return "", true
			}
		}
	}
	switch a := a.(type) {
	case map[string]any:
		bm, ok := b.(map[string]any)
		if !ok || len(a) != len(bm) {
			return "map", false
		}
		for k, v := range a {
			if p, ok := sameData(v, bm[k], news, blocks); !ok {
				return k + "." + p, false
			}
		}
		return "", true
	case map[any]any:
		bm, ok := b.(map[any]any)
		if !ok || len(a) != len(bm) {
			return "map", false
		}
		for k, v := range a {
			if !reflect.ValueOf(k).Comparable() {
				continue
			}
			if p, ok := sameData(v, bm[k], news, blocks); !ok {
				return "?." + p, false
			}
		}
		return "", true
	case []any:
		bs, ok := b.([]any)
		if !ok || len(a) != len(bs) {
			return "seq", false
		}
		for i := range a {
			if p, ok := sameData(a[i], bs[i], news, blocks); !ok {
				return "[]." + p, false
			}
		}
		return "", true
	}
	return "leaf", reflect.DeepEqual(a, b)
}
