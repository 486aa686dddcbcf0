package cli_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// pagingRegistry is the real registry answering the catalog and tag lists
// two entries at a time (Distribution pages with n and Link headers).
func pagingRegistry(t *testing.T, catalogPages *atomic.Int32) *regtest.Registry {
	return regtest.Start(t, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/_catalog") || strings.HasSuffix(r.URL.Path, "/tags/list") {
				if strings.HasSuffix(r.URL.Path, "/_catalog") {
					catalogPages.Add(1)
				}
				q := r.URL.Query()
				q.Set("n", "2")
				r.URL.RawQuery = q.Encode()
			}
			h.ServeHTTP(w, r)
		})
	}))
}

type scanLine struct {
	Image, Method, Base, From, To string
	Stale                         bool
	Reason                        string
	Summary                       map[string]int
}

func scanJSON(t *testing.T, out string) map[string]scanLine {
	t.Helper()
	got := map[string]scanLine{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var s scanLine
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		if s.Summary == nil {
			got[s.Image[strings.IndexByte(s.Image, '/')+1:]] = s
		}
	}
	return got
}

func TestScanPaginatedCatalogThenBatch(t *testing.T) {
	var pages atomic.Int32
	reg := pagingRegistry(t, &pages)
	// app0..app4 on base:1, one tag each except app0 with 3 tags (paged).
	refs := batchImages(t, reg, 5, 5)
	b1 := reg.Image(t, "base:1")
	for _, tag := range []string{"x", "y"} {
		reg.Push(t, "app0:"+tag, image(t, b1, "amd64", "T="+tag, map[string]string{"t": tag}))
	}
	// Already on base:2, and on another base altogether.
	reg.Push(t, "fresh:1", image(t, reg.Image(t, "base:2"), "amd64", "F=1", map[string]string{"f": "1"}))
	reg.Push(t, "unrelated:1", image(t, nil, "amd64", "U=1", map[string]string{"u": "1"}))

	host := "http://" + reg.Host
	code, out, stderr := run(t, "scan", host, "--base", "base:2", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if pages.Load() < 3 {
		t.Errorf("catalog read in %d pages, want at least 3 (8 repositories, 2 per page)", pages.Load())
	}
	got := scanJSON(t, out)
	for _, ref := range append(refs, "app0:x", "app0:y") {
		s, ok := got[ref]
		if !ok || !s.Stale || s.Method != "layers" || !strings.HasSuffix(s.Base, "/base:1") || !strings.HasSuffix(s.To, "/base:2") || !strings.Contains(s.From, "/base@sha256:") {
			t.Errorf("%s: %+v, want stale on base:1 found by layers", ref, s)
		}
	}
	if s := got["fresh:1"]; s.Stale || s.Method != "layers" {
		t.Errorf("fresh:1: %+v, want up to date", s)
	}
	if _, ok := got["unrelated:1"]; ok {
		t.Error("unrelated:1 is not on base, --base should leave it out")
	}
	if len(got) != 8 {
		t.Errorf("%d images reported, want 8: %v", len(got), got)
	}

	// scan ... --stale -o json | batch -f -
	code, out, _ = run(t, "scan", host, "--base", "base:2", "--stale", "-o", "json")
	if code != 0 || strings.Contains(out, "fresh") {
		t.Fatalf("--stale: exit %d\n%s", code, out)
	}
	file := filepath.Join(t.TempDir(), "stale.jsonl")
	if err := os.WriteFile(file, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = run(t, "batch", "-f", file, "--insecure")
	if code != 0 || !strings.Contains(out, "rebased       7") {
		t.Fatalf("batch -f: exit %d\n%s%s", code, out, stderr)
	}
	code, out, _ = run(t, "scan", host, "--base", "base:2")
	if code != 0 || !strings.Contains(out, "8 images, 0 stale") {
		t.Errorf("after the batch:\n%s", out)
	}
	// batch --scan finds nothing left to do.
	code, out, stderr = run(t, "batch", "--scan", "-r", host, "--base", "base:2")
	if code != 0 || !strings.Contains(out, "summary: 0 images") {
		t.Errorf("batch --scan with nothing stale: exit %d\n%s%s", code, out, stderr)
	}
}

func TestScanByAnnotationAndLabel(t *testing.T) {
	reg := regtest.Start(t)
	b1 := image(t, nil, "amd64", "V=1", map[string]string{"os": "one"})
	d1 := reg.Push(t, "base:1", b1)
	// By label: LABEL FROM=base:1; then base:1 moves to a patched image.
	labelled, err := testimage.Build(b1, testimage.Linux, testimage.Label("FROM", "base:1"), testimage.Copy("COPY", map[string]string{"l": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, "labelled:1", labelled)
	// By annotation, naming base:1 and its digest.
	annotated := mutate.Annotations(image(t, b1, "amd64", "A=1", map[string]string{"a": "1"}), map[string]string{
		manifest.BaseNameAnnotation: reg.Host + "/base:1", manifest.BaseDigestAnnotation: d1.String(),
	}).(v1.Image)
	reg.Push(t, "annotated:1", annotated)
	reg.Push(t, "base:1", image(t, nil, "amd64", "V=1", map[string]string{"os": "one, patched"}))

	code, out, stderr := run(t, "scan", "http://"+reg.Host, "--repo", "labelled", "--repo", "annotated", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	got := scanJSON(t, out)
	if s := got["labelled:1"]; s.Method != "label" || s.Base != "base:1" || !s.Stale || !strings.HasSuffix(s.To, "/base:1") {
		t.Errorf("labelled:1: %+v, want stale by label (base:1 moved)", s)
	}
	if s := got["annotated:1"]; s.Method != "annotation" || !s.Stale || s.From != reg.Host+"/base@"+d1.String() {
		t.Errorf("annotated:1: %+v, want stale by annotation, from base@%s", s, d1)
	}

	// Both move to the patched base:1 in one batch, each found from what
	// it records (no --from-base): the label and the annotations.
	code, out, stderr = run(t, "batch", "-r", "http://"+reg.Host, "labelled:1", "annotated:1")
	if code != 0 {
		t.Fatalf("batch in automatic mode: exit %d\n%s%s", code, out, stderr)
	}
	code, out, _ = run(t, "scan", "http://"+reg.Host, "--repo", "labelled", "--repo", "annotated")
	if code != 0 || !strings.Contains(out, "2 images, 0 stale") {
		t.Errorf("after the batch:\n%s", out)
	}
}

// TestScanMatchesRecompressedImagesByContent: images whose base layers are
// stored as other blobs (built on zstd copies of the bases) are found on
// their base by diff_id, and judged against the current base by content.
func TestScanMatchesRecompressedImagesByContent(t *testing.T) {
	reg := regtest.Start(t)
	base := func(v string, c testimage.Compression) v1.Image {
		img, err := testimage.Build(nil, testimage.Linux, testimage.Copy("COPY", map[string]string{"os": v}).Compressed(c), testimage.Env("V="+v))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	reg.Push(t, "base:1", base("1", testimage.Gzip))
	reg.Push(t, "base:2", base("2", testimage.Gzip))
	reg.Push(t, "zapp:1", image(t, base("1", testimage.Zstd), "amd64", "APP=1", map[string]string{"app": "1"}))
	reg.Push(t, "zfresh:1", image(t, base("2", testimage.Zstd), "amd64", "APP=1", map[string]string{"app": "1"}))

	code, out, stderr := run(t, "scan", "http://"+reg.Host, "--base", "base:2", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	got := scanJSON(t, out)
	if s := got["zapp:1"]; !s.Stale || s.Method != "layers" || !strings.HasSuffix(s.Base, "/base:1") {
		t.Errorf("zapp:1: %+v, want stale on base:1 found by layers", s)
	}
	if s, ok := got["zfresh:1"]; !ok || s.Stale || s.Method != "layers" || !strings.HasSuffix(s.Base, "/base:2") {
		t.Errorf("zfresh:1: %+v, want up to date on base:2", s)
	}
}
