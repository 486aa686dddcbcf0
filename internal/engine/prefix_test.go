package engine_test

import (
	"context"
	"errors"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/rebase"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// TestImageNotOnTheOldBaseIsRefused: OLD must be the image's bottom layers,
// all of them, by content. An image that shares only OLD's last layer, or
// whose manifest lists OLD's layer digests while its config says its
// content differs (diff_ids), is refused and nothing is written.
func TestImageNotOnTheOldBaseIsRefused(t *testing.T) {
	reg := regtest.Start(t)
	faultFixture(t, reg) // base:1 (os, lib), base:2
	b1 := reg.Image(t, "base:1")
	bl, err := b1.Layers()
	if err != nil {
		t.Fatal(err)
	}
	own := testimage.MustLayer(map[string]string{"app": "x"}, types.OCILayer)

	// The same last base layer on another first layer.
	other := testimage.MustLayer(map[string]string{"os": "another"}, types.OCILayer)
	lastOnly, err := testimage.Build(nil, testimage.Linux, testimage.AddLayer("ADD os", other), testimage.AddLayer("ADD lib", bl[1]), testimage.AddLayer("COPY app", own))
	if err != nil {
		t.Fatal(err)
	}
	// OLD's layer digests in the manifest, another content by diff_id.
	onBase, err := testimage.Build(b1, testimage.Linux, testimage.AddLayer("COPY app", own))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := onBase.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs[0] = v1.Hash{Algorithm: "sha256", Hex: "1111111111111111111111111111111111111111111111111111111111111111"}
	wrongDiffID, err := mutate.ConfigFile(onBase, cf)
	if err != nil {
		t.Fatal(err)
	}

	for name, img := range map[string]v1.Image{"only the last base layer": lastOnly, "diff_id differs": wrongDiffID} {
		t.Run(name, func(t *testing.T) {
			reg.Push(t, "app:1", img)
			before := reg.Snapshot(t)
			_, err := engine.Rebase(context.Background(), requestAt(t, reg.Host, "base:2"))
			var re *rebase.RefusedError
			if !errors.As(err, &re) {
				t.Fatalf("err = %v, want a refusal: the image is not on base:1", err)
			}
			if after := reg.Snapshot(t); after["app:1"] != before["app:1"] {
				t.Errorf("app:1 moved")
			}
		})
	}
}
