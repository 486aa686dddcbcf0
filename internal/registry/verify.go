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
// digest it was asked for (a read by digest) and the Docker-Content-Digest
// the registry announces, so that a document fetched by tag is as verified
// as one fetched by digest. A mismatch fails the read at its end, with an
// error that is not retried: a registry that serves a body that does not
// match its digest is corrupt, not busy.
type verifyTransport struct {
	inner http.RoundTripper
}

func (t *verifyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.inner.RoundTrip(r)
	if err != nil || r.Method != http.MethodGet || resp.StatusCode != http.StatusOK || !strings.Contains(r.URL.Path, "/manifests/") {
		return resp, err
	}
	var want []string
	if asked, ok := strings.CutPrefix(r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:], "sha256:"); ok {
		want = append(want, asked)
	}
	if announced, ok := strings.CutPrefix(resp.Header.Get("Docker-Content-Digest"), "sha256:"); ok {
		want = append(want, announced)
	}
	if len(want) == 0 {
		return resp, nil
	}
	resp.Body = &digestReader{rc: resp.Body, h: sha256.New(), want: want, url: redactedURL(r)}
	return resp, nil
}

type digestReader struct {
	rc   io.ReadCloser
	h    hash.Hash
	want []string
	url  string
}

func (d *digestReader) Read(p []byte) (int, error) {
	n, err := d.rc.Read(p)
	d.h.Write(p[:n])
	if err == io.EOF {
		got := hex.EncodeToString(d.h.Sum(nil))
		for _, w := range d.want {
			if got != w {
				return n, &corruptError{url: d.url, got: got, want: w}
			}
		}
	}
	return n, err
}

func (d *digestReader) Close() error { return d.rc.Close() }

// corruptError is a manifest whose content does not match its digest.
type corruptError struct {
	url, got, want string
}

func (e *corruptError) Error() string { return e.url + ": " + e.what() }

func (e *corruptError) what() string {
	return fmt.Sprintf("content digest sha256:%s does not match sha256:%s (corrupt or altered)", e.got, e.want)
}

func (*corruptError) permanent() {}
