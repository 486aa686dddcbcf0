package cli_test

import (
	"fmt"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func indexOf(imgs ...v1.Image) v1.ImageIndex {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, img := range imgs {
		cf, _ := img.ConfigFile()
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture}}})
	}
	return idx
}

// TestPlatformMissingFromNewBase: the new base lacks one of the image's
// platforms; one line naming it, exit 4, nothing written.
func TestPlatformMissingFromNewBase(t *testing.T) {
	reg := startRegistry(t)
	amd1 := image(t, nil, "amd64", "V=1", map[string]string{"os": "one amd64"})
	arm1 := image(t, nil, "arm64", "V=1", map[string]string{"os": "one arm64"})
	reg.PushIndex(t, "base:1", indexOf(amd1, arm1))
	reg.PushIndex(t, "base:2", indexOf(image(t, nil, "amd64", "V=2", map[string]string{"os": "two amd64"})))
	reg.PushIndex(t, "app:1", indexOf(image(t, amd1, "amd64", "APP=1", map[string]string{"app": "a"}), image(t, arm1, "arm64", "APP=1", map[string]string{"app": "b"})))
	before := fmt.Sprint(reg.Snapshot(t))
	code, out, stderr := run(t, "http://"+reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2")
	if code != 4 || !strings.Contains(stderr, "has no linux/arm64 image") || !strings.Contains(stderr, "base:2") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("exit %d, stderr %q, stdout %q", code, stderr, out)
	}
	if after := fmt.Sprint(reg.Snapshot(t)); after != before {
		t.Fatalf("wrote: %s → %s", before, after)
	}
}

// TestSignatureWarning: a single-platform image is checked for signatures
// with --check-signatures or -v, and the warning is printed.
func TestSignatureWarning(t *testing.T) {
	reg := startRegistry(t)
	fixture(t, reg)
	for _, flag := range []string{"", "--check-signatures", "-v"} {
		t.Run("flag "+flag, func(t *testing.T) {
			d := reg.Push(t, "app:1", image(t, reg.Image(t, "base:1"), "amd64", "APP=1", map[string]string{"app": "app"}))
			reg.Push(t, "app:sha256-"+d.Hex+".sig", image(t, nil, "amd64", "SIG=1", map[string]string{"sig": "x"}))
			args := []string{"http://" + reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2"}
			if flag != "" {
				args = append(args, flag)
			}
			code, out, stderr := run(t, args...)
			warned := strings.Contains(out, "warning: "+d.String()+" has signatures or referrers (cosign signature "+reg.Host+"/app:sha256-"+d.Hex+".sig)")
			if code != 0 || warned != (flag != "") {
				t.Fatalf("exit %d, warned %v\n%s%s", code, warned, out, stderr)
			}
		})
	}
}
