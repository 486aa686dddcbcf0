package cli_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
)

// TestEmptyValuesAreUsageErrors: an empty -t (an unset variable in a
// script) must not mean "no -t" and move the image's own tag; no empty
// value, and no timeout that is not positive, is accepted.
func TestEmptyValuesAreUsageErrors(t *testing.T) {
	reg := startRegistry(t)
	fixture(t, reg)
	h := "http://" + reg.Host
	base := []string{h, "app:1", "--from-base", "base:1", "--to-base", "base:2"}
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{append(base, "-t", ""), "-t/--tag: empty value"},
		{append(base, "--tag="), "-t/--tag: empty value"},
		{[]string{h, "app:1", "--from-base", "", "--to-base", "base:2"}, "--from-base: empty value"},
		{[]string{h, "app:1", "--from-base", "base:1", "--to-base", ""}, "--to-base: empty value"},
		{[]string{h, "app:1", "-l", ""}, "-l/--label: empty value"},
		{append(base, "--backup-tag", ""), "--backup-tag: empty value"},
		{append(base, "--timeout", "0"), "--timeout 0s: want a positive duration"},
		{append(base, "--timeout", "-5s"), "--timeout -5s: a duration cannot be negative"},
		{append(base, "--platform", ""), "--platform: empty value"},
		{[]string{"batch", "-r", h, "app:1", "--from-base", "base:1", "--to-base", "base:2", "--recheck-after", "-1s"}, "--recheck-after -1s: a duration cannot be negative"},
		{[]string{"batch", "-r", "", "app:1", "--from-base", "base:1", "--to-base", "base:2"}, "-r/--registry: empty value"},
		{[]string{"batch", "-r", h, "app:1", "--from-base", "base:1", "--to-base", "base:2", "--timeout", "0"}, "--timeout 0s"},
		{[]string{"scan", h, "--base", "", "--timeout", "1m"}, "--base: empty value"},
	} {
		t.Run(strings.Join(c.args[1:], " "), func(t *testing.T) {
			before := reg.Snapshot(t)
			code, out, stderr := run(t, c.args...)
			if code != 2 || !strings.Contains(stderr, c.msg) || strings.Count(stderr, "\n") != 1 || out != "" {
				t.Errorf("exit %d, stderr %q, stdout %q; want exit 2 and one line with %q", code, stderr, out, c.msg)
			}
			if after := reg.Snapshot(t); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("registry changed: %v → %v", before, after)
			}
		})
	}
}

// TestCredentialsInReferencesAreRedacted: credentials written in a
// reference or a registry URL never appear in an error.
func TestCredentialsInReferencesAreRedacted(t *testing.T) {
	reg := startRegistry(t)
	fixture(t, reg)
	const secret = "s3cr3t-in-url"
	for _, args := range [][]string{
		{"https://alice:" + secret + "@" + reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2"},
		{"http://alice:" + secret + "@" + reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2"},
		{"alice:" + secret + "@" + reg.Host + "/app:1", "--from-base", reg.Host + "/base:1", "--to-base", reg.Host + "/base:2"},
		{"http://" + reg.Host, "app:1", "--from-base", "alice:" + secret + "@" + reg.Host + "/base:1", "--to-base", "base:2"},
		{"http://" + reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2", "-t", "alice:" + secret + "@host/app:2"},
		{"batch", "-r", "http://alice:" + secret + "@" + reg.Host, "app:1"},
		{"batch", "-r", "http://" + reg.Host, "alice:" + secret + "@" + reg.Host + "/app:1", "-o", "json"},
		{"scan", "https://alice:" + secret + "@" + reg.Host},
	} {
		code, out, stderr := run(t, args...)
		if code == 0 || strings.Contains(out+stderr, secret) || strings.Contains(out+stderr, "alice") {
			t.Errorf("%q: exit %d, the credentials leaked or no failure:\n%s%s", args, code, out, stderr)
		}
		if !strings.Contains(stderr, "***@") {
			t.Errorf("%q: %q does not show where the credentials were", args, stderr)
		}
	}
	// A digest reference keeps its '@'.
	code, _, stderr := run(t, "http://"+reg.Host, "app@sha256:"+strings.Repeat("0", 64), "--from-base", "base:1", "--to-base", "base:2")
	if code != 3 || !strings.Contains(stderr, "app@sha256:0000") {
		t.Errorf("digest reference: exit %d, %q", code, stderr)
	}
}

// TestFailureLinesSayWhatWasWritten: a failure before any write says
// "nothing written"; a failure of the manifest PUT says that the tag is
// unchanged.
func TestFailureLinesSayWhatWasWritten(t *testing.T) {
	reg := startRegistry(t)
	fixture(t, reg)
	proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
		if r.Method == http.MethodPut && r.URL.Path == "/v2/app/manifests/1" {
			return proxytest.Fault{Status: http.StatusServiceUnavailable}
		}
		return proxytest.Fault{}
	}))
	defer proxy.Close()
	h := "http://" + proxy.Host()
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{h, "nope:1", "--from-base", "base:1", "--to-base", "base:2"}, 3, "; nothing written"},
		{[]string{h, "app:1", "--from-base", "other:1", "--to-base", "base:2"}, 4, "; nothing written"},
		{[]string{h, "app:1", "--from-base", "base:1", "--to-base", "base:2"}, 3, "; " + proxy.Host() + "/app:1 unchanged, no tag written"},
	} {
		code, _, stderr := run(t, c.args...)
		if code != c.code || !strings.HasSuffix(strings.TrimSpace(stderr), c.says) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%q: exit %d, %q; want exit %d and a line ending %q", c.args, code, stderr, c.code, c.says)
		}
	}
}

// TestBatchReadsEveryTagBeforeWriting: by default a batch reads each tag
// again just before moving it, so that a push to one of its tags during
// the run is not overwritten.
func TestBatchReadsEveryTagBeforeWriting(t *testing.T) {
	reg := regtest.Start(t)
	refs := batchImages(t, reg, 6, 2)
	other := image(t, nil, "amd64", "PUSHED=1", map[string]string{"pushed": "1"})
	od, _ := other.Digest()
	target := refs[3] // app1:3
	var pushed atomic.Bool
	proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
		// When the batch opens app1:3's config upload, someone pushes to app1:3.
		if r.Method == http.MethodPost && r.URL.Path == "/v2/app1/blobs/uploads/" && r.URL.Query().Get("mount") == "" && !pushed.Swap(true) {
			ref, _ := name.ParseReference(reg.Ref(target))
			if err := remote.Write(ref, other); err != nil {
				t.Error(err)
			}
		}
		return proxytest.Fault{}
	}))
	defer proxy.Close()
	// Only app1:3 in app1, so that its upload is the one.
	list := []string{refs[0], refs[2], refs[3], refs[4]}
	args := append([]string{"batch", "-r", "http://" + proxy.Host(), "--from-base", "base:1", "--to-base", "base:2", "-o", "json"}, list...)
	code, out, _ := run(t, args...)
	lines, sum := parseLines(t, out)
	l := lines[proxy.Host()+"/"+target]
	if code != 1 || l.Action != "failed" || !strings.Contains(l.Error, "moved to "+od.String()) || sum["rebased"] != 3 {
		t.Fatalf("exit %d; want %s refused as moved and the others rebased:\n%s", code, target, out)
	}
	if d, _ := reg.Digest(t, target); d != od.String() {
		t.Errorf("%s = %s, want the push %s kept", target, d, od)
	}
}

// TestBatchSummarySaysTheBaseReadFailed: a base that cannot be read fails
// every image with one line in the summary, not one error per image.
func TestBatchSummarySaysTheBaseReadFailed(t *testing.T) {
	reg := regtest.Start(t)
	refs := batchImages(t, reg, 20, 4)
	proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
		if r.URL.Path == "/v2/base/manifests/2" {
			return proxytest.Fault{Status: http.StatusForbidden}
		}
		return proxytest.Fault{}
	}))
	defer proxy.Close()
	args := append([]string{"batch", "-r", "http://" + proxy.Host(), "--from-base", "base:1", "--to-base", "base:2"}, refs...)
	code, out, _ := run(t, args...)
	if code != 1 || strings.Count(out, "could not be read (exit 3): ") != 1 || !strings.Contains(out, "so 20 images were not rebased, nothing written for them") ||
		strings.Count(out, "access denied") != 1 {
		t.Fatalf("exit %d; want the base read failure once in the summary:\n%s", code, out)
	}
	args = append(args, "-o", "json")
	_, out, _ = run(t, args...)
	if !strings.Contains(out, `"baseReadFailures":[{"base":"`+proxy.Host()+`/base:2"`) || !strings.Contains(out, `"images":20`) {
		t.Errorf("json summary lacks the base read failure:\n%s", out)
	}
}
