package scan_test

import (
	"context"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/scan"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

func base(t *testing.T, v string) v1.Image {
	t.Helper()
	img, err := testimage.Base(testimage.OCI, v)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func app(t *testing.T, b v1.Image, name string, steps ...testimage.Step) v1.Image {
	t.Helper()
	img, err := testimage.App(b, append(steps, testimage.Copy("COPY app", map[string]string{"app": name}))...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func client(reg *regtest.Registry) *registry.Client {
	return registry.New(registry.Options{PlainHTTP: []string{reg.Host}, Keychain: reg.Keychain()})
}

func byImage(t *testing.T, found []scan.Finding) map[string]scan.Finding {
	t.Helper()
	out := map[string]scan.Finding{}
	for _, f := range found {
		out[f.Image] = f
	}
	return out
}

// TestTwoTagsOfOneBaseRepository: base:stable and base:oldstable both
// given; each image goes with the tag it is on, whatever other tag names
// the same digest (base:1 is base:oldstable), on every walk.
func TestTwoTagsOfOneBaseRepository(t *testing.T) {
	reg := regtest.Start(t)
	b1, b2 := base(t, "1"), base(t, "2")
	reg.Push(t, "base:1", b1)
	d1 := reg.Push(t, "base:oldstable", b1)
	d2 := reg.Push(t, "base:stable", b2)
	reg.Push(t, "old:1", app(t, b1, "old"))
	reg.Push(t, "new:1", app(t, b2, "new"))
	reg.Push(t, "named:1", app(t, b1, "named", testimage.Label("FROM", "base:stable")))
	// named:1 is on base:1's layers: found by layers first, so it goes with
	// oldstable (its layers), not with the stable its label names.
	stable, oldstable := reg.Host+"/base:stable", reg.Host+"/base:oldstable"
	for range 3 {
		found, err := scan.Run(context.Background(), client(reg), scan.Options{Registry: reg.Host, Bases: []string{"base:stable", "base:oldstable"}, Jobs: 4})
		if err != nil {
			t.Fatal(err)
		}
		got := byImage(t, found)
		if f := got[reg.Host+"/old:1"]; f.To != oldstable || f.Stale || f.From != reg.Host+"/base@"+d1.String() {
			t.Errorf("old:1: %+v, want on %s, up to date", f, oldstable)
		}
		if f := got[reg.Host+"/new:1"]; f.To != stable || f.Stale || f.From != reg.Host+"/base@"+d2.String() {
			t.Errorf("new:1: %+v, want on %s, up to date", f, stable)
		}
		if f := got[reg.Host+"/named:1"]; f.To != oldstable || f.Method != scan.ByLayers {
			t.Errorf("named:1: %+v, want on %s by layers", f, oldstable)
		}
		if len(found) != 3 {
			t.Errorf("%d findings, want 3 (the base repository is not walked): %+v", len(found), found)
		}
	}
}

// TestKnownVersionsFindImagesOnAnUntaggedBase: base:stable moves on; the
// images on its previous version (no tag names it any more, the images
// name no base) are found only from the version read before the move.
func TestKnownVersionsFindImagesOnAnUntaggedBase(t *testing.T) {
	reg := regtest.Start(t)
	b1, b2 := base(t, "1"), base(t, "2")
	reg.Push(t, "base:stable", b1)
	reg.Push(t, "app:1", app(t, b1, "app"))
	ctx := context.Background()
	s, err := scan.New(client(reg), scan.Options{Registry: reg.Host, Bases: []string{"base:stable"}, Jobs: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReadBases(ctx); err != nil {
		t.Fatal(err)
	}
	cur := s.Current()
	if len(cur) != 1 || cur[0].Ref != reg.Host+"/base:stable" || len(cur[0].Candidates) != 1 {
		t.Fatalf("Current() = %+v", cur)
	}
	known := cur[0].Candidates
	d2 := reg.Push(t, "base:stable", b2)

	opts := scan.Options{Registry: reg.Host, Bases: []string{"base:stable"}, Jobs: 4}
	found, err := scan.Run(ctx, client(reg), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 0 {
		t.Errorf("without the known version: %+v, want nothing found", found)
	}
	opts.Known = known
	found, err = scan.Run(ctx, client(reg), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || !found[0].Stale || found[0].From != reg.Host+"/base@"+known[0].Digest.String() || found[0].To != reg.Host+"/base:stable" {
		t.Fatalf("with the known version: %+v, want app:1 stale, from base@%s", found, known[0].Digest)
	}
	s2, _ := scan.New(client(reg), opts)
	if err := s2.ReadBases(ctx); err != nil {
		t.Fatal(err)
	}
	if c := s2.Current(); c[0].Digest != d2 || c[0].Candidates[0].Digest != d2 {
		t.Errorf("current %+v, want the new %s", c[0], d2)
	}
	f, keep, err := s2.Image(ctx, "app", "1")
	if err != nil || !keep || !f.Stale {
		t.Errorf("Image(app, 1) = %+v, %v, %v", f, keep, err)
	}
	if _, keep, _ := s2.Image(ctx, "base", "stable"); keep {
		t.Error("a base's own tag was judged as an image")
	}
}

// TestReadBaseFollowsAMove: after ReadBase, the base's new version is
// current and the images on the version it replaced are still found, by
// their layers, as stale.
func TestReadBaseFollowsAMove(t *testing.T) {
	reg := regtest.Start(t)
	b1, b2 := base(t, "1"), base(t, "2")
	reg.Push(t, "base:stable", b1)
	// The version stable replaces stays tagged too: with SameTag, the
	// version read under stable still decides (base:1 sorts first).
	reg.Push(t, "base:1", b1)
	reg.Push(t, "app:1", app(t, b1, "app"))
	ctx := context.Background()
	s, err := scan.New(client(reg), scan.Options{Registry: reg.Host, Bases: []string{"base:stable"}, Jobs: 4, SameTag: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReadBases(ctx); err != nil {
		t.Fatal(err)
	}
	if f, keep, err := s.Image(ctx, "app", "1"); err != nil || !keep || f.Stale {
		t.Fatalf("before the move: %+v, %v, %v", f, keep, err)
	}
	d2 := reg.Push(t, "base:stable", b2)
	v, err := s.ReadBase(ctx, reg.Host+"/base:stable")
	if err != nil || v.Digest != d2 {
		t.Fatalf("ReadBase = %+v, %v; want %s", v, err, d2)
	}
	f, keep, err := s.Image(ctx, "app", "1")
	if err != nil || !keep || !f.Stale || f.To != reg.Host+"/base:stable" {
		t.Fatalf("after the move: %+v, %v, %v; want stale", f, keep, err)
	}
	reg.Push(t, "app:2", app(t, b2, "app 2"))
	if f, keep, err := s.Image(ctx, "app", "2"); err != nil || !keep || f.Stale {
		t.Fatalf("an image on the new version: %+v, %v, %v", f, keep, err)
	}
	if _, err := s.ReadBase(ctx, reg.Host+"/other:1"); err == nil {
		t.Error("ReadBase of a base not given: no error")
	}
}

// TestSameTag: with SameTag, an image on another tag of the base's
// repository is not on the base, unless it names the base's tag.
func TestSameTag(t *testing.T) {
	reg := regtest.Start(t)
	b1, b2 := base(t, "1"), base(t, "2")
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:stable", b2)
	reg.Push(t, "pinned:1", app(t, b1, "pinned"))
	reg.Push(t, "labelled:1", app(t, b1, "labelled", testimage.Label("FROM", "base:stable")))
	reg.Push(t, "current:1", app(t, b2, "current"))
	opts := scan.Options{Registry: reg.Host, Bases: []string{"base:stable"}, Jobs: 4}
	for _, same := range []bool{false, true} {
		opts.SameTag = same
		found, err := scan.Run(context.Background(), client(reg), opts)
		if err != nil {
			t.Fatal(err)
		}
		got := byImage(t, found)
		pinned, inPinned := got[reg.Host+"/pinned:1"]
		if same == inPinned {
			t.Errorf("SameTag %v: pinned:1 (on base:1) found: %v (%+v)", same, inPinned, pinned)
		}
		if !same && !pinned.Stale {
			t.Errorf("without SameTag: pinned:1 %+v, want stale", pinned)
		}
		want := scan.ByLayers
		if same {
			want = scan.ByLabel
		}
		if f := got[reg.Host+"/labelled:1"]; f.Method != want || !f.Stale || f.To != reg.Host+"/base:stable" {
			t.Errorf("SameTag %v: labelled:1 %+v, want stale, found by %s", same, f, want)
		}
		if f := got[reg.Host+"/current:1"]; f.Method != scan.ByLayers || f.Stale {
			t.Errorf("SameTag %v: current:1 %+v, want up to date by layers", same, f)
		}
	}
}
