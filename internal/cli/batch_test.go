package cli_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/proxytest"
	"github.com/image-rebase/image-rebase/internal/regtest"
)

// batchImages pushes base:1, base:2, and n images on base:1 spread over
// repos repositories (app0:0, app1:1, ..., wrapping), each with a layer of
// its own; it returns the references in order.
func batchImages(t *testing.T, reg *regtest.Registry, n, repos int) []string {
	t.Helper()
	b1 := image(t, nil, "amd64", "V=1", map[string]string{"os": "one"})
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", image(t, nil, "amd64", "V=2", map[string]string{"os": "two"}))
	var refs []string
	for i := range n {
		ref := fmt.Sprintf("app%d:%d", i%repos, i)
		reg.Push(t, ref, image(t, b1, "amd64", fmt.Sprintf("APP=%d", i), map[string]string{"app": ref}))
		refs = append(refs, ref)
	}
	return refs
}

type batchLine struct {
	Image    string  `json:"image"`
	Action   string  `json:"action"`
	Error    string  `json:"error"`
	ExitCode int     `json:"exitCode"`
	After    v1.Hash `json:"after"`
	Summary  map[string]float64
}

func parseLines(t *testing.T, out string) (map[string]batchLine, map[string]float64) {
	t.Helper()
	lines := map[string]batchLine{}
	var sum map[string]float64
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var b batchLine
		if err := json.Unmarshal([]byte(l), &b); err != nil {
			t.Fatalf("not one JSON object per line: %q: %v", l, err)
		}
		if b.Summary != nil {
			sum = b.Summary
			continue
		}
		lines[b.Image] = b
	}
	return lines, sum
}

func TestBatchOneBrokenImageInTheMiddleThenRerun(t *testing.T) {
	reg := regtest.Start(t)
	refs := batchImages(t, reg, 8, 3)
	// app1:broken is not on base:1; it sits in the middle of the list.
	reg.Push(t, "app1:broken", image(t, nil, "amd64", "X=1", map[string]string{"x": "x"}))
	list := append(append(append([]string{}, refs[:4]...), "app1:broken"), refs[4:]...)
	file := filepath.Join(t.TempDir(), "images")
	body := "# images to move\n\n" + strings.Join(list, "\n") + "\n"
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	host := "http://" + reg.Host
	code, out, stderr := run(t, "batch", "-r", host, "-f", file, "--from-base", "base:1", "--to-base", "base:2", "-j", "3")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (one image failed): %s %s", code, out, stderr)
	}
	if !strings.Contains(out, "failed:\n  "+reg.Host+"/app1:broken (exit 4): ") || !strings.Contains(out, "rebased       8") {
		t.Errorf("summary does not count 8 rebased and name the broken image:\n%s", out)
	}
	for _, ref := range refs {
		img := reg.Image(t, ref)
		ls, _ := img.Layers()
		d, _ := ls[0].Digest()
		b2, _ := reg.Image(t, "base:2").Layers()
		want, _ := b2[0].Digest()
		if d != want {
			t.Errorf("%s not on base:2", ref)
		}
	}

	// A partial failure: an image that a registry fault kept from being
	// written is rebased by the rerun; the others are up to date.
	reg.Push(t, "app0:late", image(t, reg.Image(t, "base:1"), "amd64", "L=1", map[string]string{"late": "1"}))
	proxy := proxytest.Start(reg.Host, proxytest.WithFaults(func(_ int, r *http.Request) proxytest.Fault {
		if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/manifests/late") {
			return proxytest.Fault{Status: http.StatusForbidden}
		}
		return proxytest.Fault{}
	}))
	defer proxy.Close()
	all := append(append([]string{}, list...), "app0:late")
	args := append([]string{"batch", "-r", "http://" + proxy.Host(), "--from-base", "base:1", "--to-base", "base:2", "-o", "json"}, all...)
	code, out, _ = run(t, args...)
	lines, sum := parseLines(t, out)
	if code != 1 || lines[proxy.Host()+"/app0:late"].Action != "failed" || lines[proxy.Host()+"/app0:late"].ExitCode != 3 {
		t.Fatalf("exit %d; want app0:late failed with exit 3:\n%s", code, out)
	}
	if sum["up-to-date"] != 8 || sum["failed"] != 2 {
		t.Errorf("summary %v, want 8 up to date and 2 failed", sum)
	}

	snap := reg.Snapshot(t)
	args = append([]string{"batch", "-r", host, "--from-base", "base:1", "--to-base", "base:2", "-o", "json"}, all...)
	code, out, _ = run(t, args...)
	lines, sum = parseLines(t, out)
	if code != 1 || lines[reg.Host+"/app0:late"].Action != "rebased" || sum["up-to-date"] != 8 || sum["rebased"] != 1 {
		t.Errorf("rerun: exit %d, want app0:late rebased, 8 up to date, the broken one failed:\n%s", code, out)
	}
	for k, v := range reg.Snapshot(t) {
		if k != "app0:late" && snap[k] != v {
			t.Errorf("rerun moved %s", k)
		}
	}
}

func TestBatchDryRunWritesNothingAndAllTags(t *testing.T) {
	reg := regtest.Start(t)
	batchImages(t, reg, 5, 1)
	snap := reg.Snapshot(t)
	code, out, stderr := run(t, "batch", "-r", "http://"+reg.Host, "--all-tags", "app0", "--from-base", "base:1", "--to-base", "base:2", "--dry-run")
	if code != 0 || strings.Count(out, "would-rebase") != 5 || !strings.Contains(out, "would rebase  5") {
		t.Fatalf("exit %d:\n%s%s", code, out, stderr)
	}
	if fmt.Sprint(reg.Snapshot(t)) != fmt.Sprint(snap) {
		t.Error("dry run wrote")
	}
	code, _, _ = run(t, "batch", "-r", "http://"+reg.Host, "--all-tags", "app0", "--from-base", "base:1", "--to-base", "base:2", "--check")
	if code != 10 {
		t.Errorf("--check exit %d, want 10", code)
	}
	// Local storage is for the single command.
	code, _, stderr = run(t, "batch", "-r", "http://"+reg.Host, "app0:0", "oci:/tmp/layout:1", "--from-base", "base:1", "--to-base", "base:2")
	if code != 2 || !strings.Contains(stderr, "local storage") {
		t.Errorf("local reference: exit %d: %s", code, stderr)
	}
	// Out of time before the start: every image is reported not started.
	code, out, _ = run(t, "batch", "-r", "http://"+reg.Host, "app0:0", "app0:1", "--from-base", "base:1", "--to-base", "base:2", "--timeout", "1ns")
	if code != 1 || strings.Count(out, "not started: context deadline exceeded") != 4 {
		t.Errorf("--timeout 1ns: exit %d\n%s", code, out)
	}
}

func TestBatchSharesAuthAcrossRepositories(t *testing.T) {
	reg := regtest.Start(t, regtest.WithBasicAuth("ci", "s3cret"))
	refs := batchImages(t, reg, 6, 6)
	proxy := proxytest.Start(reg.Host)
	defer proxy.Close()
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("ci:s3cret"))
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, proxy.Host(), auth)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	args := append([]string{"batch", "-r", "http://" + proxy.Host(), "--from-base", "base:1", "--to-base", "base:2"}, refs...)
	code, out, stderr := run(t, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, out, stderr)
	}
	st := proxy.Stats()
	if st.ByClass["ping"] != 1 {
		t.Errorf("%d pings for 6 repositories, want 1", st.ByClass["ping"])
	}
	unauthorized := 0
	for _, e := range proxy.Log() {
		if e.Status == http.StatusUnauthorized && e.Class != "ping" {
			unauthorized++
		}
	}
	if unauthorized != 0 {
		t.Errorf("%d requests answered 401: credentials not reused across repositories", unauthorized)
	}
}

// TestBatchOneTokenForAllRepositories: a registry that hands out bearer
// tokens (as hosted registries do) is pinged once and asked for one token,
// covering every repository of the batch, however many images.
func TestBatchOneTokenForAllRepositories(t *testing.T) {
	// Plain HTTP: the process's trusted certificates are read once, and
	// TestBearerTokenAuthAndTLS trusts its own registry's.
	reg := regtest.Start(t, regtest.WithBasicAuth("carol", "t0ken-pass"), regtest.WithTokenAuth())
	refs := batchImages(t, reg, 8, 4)
	t.Setenv("DOCKER_CONFIG", reg.DockerConfigDir(t))
	tokensBefore := len(reg.TokenScopes())
	args := append([]string{"batch", "-r", "http://" + reg.Host, "--from-base", "base:1", "--to-base", "base:2"}, refs...)
	code, out, stderr := run(t, args...)
	if code != 0 || !strings.Contains(out, "rebased       8") {
		t.Fatalf("exit %d: %s%s", code, out, stderr)
	}
	tokens := reg.TokenScopes()[tokensBefore:]
	if len(tokens) != 1 {
		t.Fatalf("%d token requests, want 1 for the batch: %q", len(tokens), tokens)
	}
	for _, want := range []string{"repository:app0:push,pull", "repository:app3:push,pull", "repository:base:pull"} {
		if !strings.Contains(tokens[0], want) {
			t.Errorf("token scopes %q lack %q", tokens[0], want)
		}
	}
}

// TestBatchOverAThousandRepositoriesOfATokenRegistry: a batch over 1,000
// repositories of a bearer-token registry (its token server refuses URLs
// over 8 KiB, as nginx does) asks for tokens per group of repositories,
// each request short, and rebases every image.
func TestBatchOverAThousandRepositoriesOfATokenRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 repositories: not in -short")
	}
	reg := regtest.Start(t, regtest.WithBasicAuth("carol", "t0ken-pass"), regtest.WithTokenAuth())
	b1 := image(t, nil, "amd64", "V=1", map[string]string{"os": "one"})
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", image(t, nil, "amd64", "V=2", map[string]string{"os": "two"}))
	app := image(t, b1, "amd64", "APP=1", map[string]string{"app": "app"})
	const n = 1000
	refs := make([]string, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				refs[i] = fmt.Sprintf("team/service-%04d:1", i)
				reg.Push(t, refs[i], app)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	t.Setenv("DOCKER_CONFIG", reg.DockerConfigDir(t))
	file := filepath.Join(t.TempDir(), "images")
	if err := os.WriteFile(file, []byte(strings.Join(refs, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokensBefore := len(reg.TokenScopes())
	code, out, stderr := run(t, "batch", "-r", "http://"+reg.Host, "-f", file, "--from-base", "base:1", "--to-base", "base:2")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("rebased       %d", n)) {
		t.Fatalf("exit %d: %s%s", code, lastLines(out, 10), stderr)
	}
	tokens := reg.TokenScopes()[tokensBefore:]
	if reg.TokenURLsRefused() != 0 {
		t.Errorf("%d token requests refused as too long", reg.TokenURLsRefused())
	}
	most := 0
	for _, s := range tokens {
		most = max(most, len(strings.Fields(s)))
	}
	// 32 repositories per group, and each group's token asked again once
	// when it first mounts from base.
	if len(tokens) > 2*(n/32+2) || most > 34 {
		t.Errorf("%d token requests, the largest for %d scopes; want about one or two per group of 32 repositories", len(tokens), most)
	}
	for _, ref := range []string{refs[0], refs[n/2], refs[n-1]} {
		ls, _ := reg.Image(t, ref).Layers()
		d, _ := ls[0].Digest()
		b2, _ := reg.Image(t, "base:2").Layers()
		if want, _ := b2[0].Digest(); d != want {
			t.Errorf("%s is not on base:2", ref)
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
