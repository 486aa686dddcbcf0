package cli_test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/image-rebase/image-rebase/internal/ocilayout"
)

// localFixture writes base:1 and app:1 (on base:1) into an OCI layout and
// base:2 into the registry.
func localFixture(t *testing.T) (dir string, host string, app v1.Hash) {
	t.Helper()
	reg := startRegistry(t)
	b1 := image(t, nil, "amd64", "V=1", map[string]string{"os": "one"})
	a := image(t, b1, "amd64", "APP=1", map[string]string{"app": "app"})
	reg.Push(t, "base:2", image(t, nil, "amd64", "V=2", map[string]string{"os": "two"}))
	dir = t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for tag, img := range map[string]v1.Image{"base-1": b1, "app": a} {
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{ocilayout.RefName: tag})); err != nil {
			t.Fatal(err)
		}
	}
	app, _ = a.Digest()
	return dir, reg.Host, app
}

type jsonResult struct {
	Action, Target, After string
	Transferred           struct{ Mounted, Copied, CopiedBytes int }
}

func TestLayoutAppWithRegistryBase(t *testing.T) {
	dir, host, _ := localFixture(t)
	code, out, stderr := run(t, "--insecure="+host, "oci:"+dir+":app", "--from-base", "oci:"+dir+":base-1",
		"--to-base", host+"/base:2", "-t", "rebased", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var res jsonResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.Action != "rebased" || res.Target != "oci:"+dir+":rebased" || res.Transferred.Copied != 1 || res.Transferred.CopiedBytes == 0 {
		t.Errorf("result %+v", res)
	}
	got, ok, err := ocilayout.New(dir, ocilayout.Options{}).Resolve(t.Context(), "rebased")
	if err != nil || !ok || got.String() != res.After {
		t.Errorf("rebased = %s %v %v, want %s", got, ok, err, res.After)
	}
	if strings.Contains(stderr, "copying") {
		t.Errorf("progress drawn on a non-terminal: %q", stderr)
	}
}

func TestLayoutAppToRegistryNeedsAllowCopy(t *testing.T) {
	dir, host, _ := localFixture(t)
	args := []string{"--insecure=" + host, "oci:" + dir + ":app", "--from-base", "oci:" + dir + ":base-1",
		"--to-base", host + "/base:2", "-t", host + "/app:1"}
	code, _, stderr := run(t, args...)
	if code == 0 || !strings.Contains(stderr, "--allow-copy") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	code, out, stderr := run(t, append(args, "--allow-copy")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, "1 mounted, 1 copied") {
		t.Errorf("output: %s", out)
	}
}

func TestLocalReferenceErrors(t *testing.T) {
	dir, host, app := localFixture(t)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"oci:" + dir, "--from-base", "oci:" + dir + ":base-1", "--to-base", host + "/base:2"}, 2, "name the tag to write"},
		{[]string{"oci:" + dir + ":app", "--from-base", "oci:" + dir + ":nope", "--to-base", host + "/base:2", "--insecure"}, 1, "no image nope"},
		{[]string{"oci:" + filepath.Join(dir, "missing") + ":app", "--from-base", "oci:" + dir + ":base-1", "--to-base", host + "/base:2", "--insecure"}, 1, "no image app"},
	} {
		code, _, stderr := run(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %q; want %d, %q", c.args, code, stderr, c.code, c.want)
		}
	}
	// Nothing was written.
	got, _, _ := ocilayout.New(dir, ocilayout.Options{}).Resolve(t.Context(), "app")
	if got != app {
		t.Errorf("app moved to %s", got)
	}
}
