package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strings"
)

// verifyTransport checks every manifest the registry serves against the
// Docker-Content-Digest it announces, so that a document fetched by tag is
// as verified as one fetched by digest (go-containerregistry checks only the
// latter). A mismatch fails the read at its end.
type verifyTransport struct {
	inner http.RoundTripper
}

func (t *verifyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.inner.RoundTrip(r)
	if err != nil || r.Method != http.MethodGet || resp.StatusCode != http.StatusOK || !strings.Contains(r.URL.Path, "/manifests/") {
		return resp, err
	}
	want, ok := strings.CutPrefix(resp.Header.Get("Docker-Content-Digest"), "sha256:")
	if !ok {
		return resp, nil
	}
	resp.Body = &digestReader{rc: resp.Body, h: sha256.New(), want: want, url: redactedURL(r)}
	return resp, nil
}

type digestReader struct {
	rc   io.ReadCloser
	h    hash.Hash
	want string
	url  string
}

func (d *digestReader) Read(p []byte) (int, error) {
	n, err := d.rc.Read(p)
	d.h.Write(p[:n])
	if err == io.EOF {
		if got := hex.EncodeToString(d.h.Sum(nil)); got != d.want {
			return n, fmt.Errorf("%s: content digest sha256:%s does not match the announced sha256:%s (truncated or altered)", d.url, got, d.want)
		}
	}
	return n, err
}

func (d *digestReader) Close() error { return d.rc.Close() }
