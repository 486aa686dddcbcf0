package progress

import (
	"bytes"
	"io"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestReader(t *testing.T) {
	data := strings.Repeat("x", 5000)
	h, n, _ := v1.SHA256(strings.NewReader(data))
	var out bytes.Buffer
	got, err := io.ReadAll(Reader(&out, v1.Descriptor{Digest: h, Size: n}, strings.NewReader(data)))
	if err != nil || string(got) != data {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if s := out.String(); !strings.HasSuffix(s, "5.0 kB / 5.0 kB  100%\n") || !strings.Contains(s, h.String()[:19]) {
		t.Errorf("progress %q", s)
	}
	if r := strings.NewReader(""); Reader(nil, v1.Descriptor{}, r) != r {
		t.Error("nil writer: want the reader itself")
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 999: "999 B", 1000: "1.0 kB", 4_521_984: "4.5 MB", 3 << 30: "3.2 GB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}
