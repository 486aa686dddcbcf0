package imagerebase_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	imagerebase "github.com/image-rebase/image-rebase"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
	"github.com/image-rebase/image-rebase/internal/version"
)

// TestBadInputsContactNothing: a malformed option or reference fails
// before any request, naming the option.
func TestBadInputsContactNothing(t *testing.T) {
	var requests int
	var mu sync.Mutex
	reg := regtest.Start(t, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			requests++
			mu.Unlock()
			h.ServeHTTP(w, r)
		})
	}))
	for _, c := range []struct {
		name  string
		image string
		opts  imagerebase.Options
		want  string
	}{
		{"a bad registry", "app:1", imagerebase.Options{Registry: "http://", To: "base:2"}, "imagerebase: Options.Registry: invalid registry"},
		{"a bad image", "App::1", imagerebase.Options{Registry: "http://" + reg.Host, To: "base:2"}, "imagerebase: image: "},
		{"a bad base", "app:1", imagerebase.Options{Registry: "http://" + reg.Host, From: "base:1", To: "Base::2"}, "imagerebase: Options.To: "},
		{"From without To", "app:1", imagerebase.Options{Registry: "http://" + reg.Host, From: "base:1"}, "imagerebase: Options.From: needs To"},
		{"a layout written in place without a tag", "oci:" + t.TempDir(), imagerebase.Options{To: reg.Ref("base:2")}, "imagerebase: image: "},
		{"a bad platform", "app:1", imagerebase.Options{Registry: "http://" + reg.Host, To: "base:2", Platforms: []string{"linux"}}, "imagerebase: Options.Platforms: "},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, err := imagerebase.Rebase(context.Background(), c.image, c.opts)
			if err == nil || res != nil || !strings.HasPrefix(err.Error(), c.want) {
				t.Errorf("%v, %v; want an error %q…", res, err, c.want)
			}
		})
	}
	if requests != 0 {
		t.Errorf("%d requests made", requests)
	}
}

// TestPlanWritesNothingAndStrictRefuses: Plan leaves the registry as it
// was; Strict with warnings returns the refused result and an error; the
// User-Agent names the caller's product, then image-rebase's.
func TestPlanWritesNothingAndStrictRefuses(t *testing.T) {
	var mu sync.Mutex
	agents := map[string]bool{}
	reg := regtest.Start(t, regtest.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			agents[r.UserAgent()] = true
			mu.Unlock()
			h.ServeHTTP(w, r)
		})
	}))
	base1, base2, app := images()
	reg.Push(t, "base:1", base1)
	reg.Push(t, "base:2", base2)
	reg.Push(t, "app:1", app)
	before := reg.Snapshot(t)
	mu.Lock()
	clear(agents)
	mu.Unlock()
	opts := imagerebase.Options{Registry: "http://" + reg.Host, From: "base:1", To: "base:2", UserAgent: "mytool/1.0"}
	res, err := imagerebase.Plan(context.Background(), "app:1", opts)
	if err != nil || res.Action != imagerebase.WouldRebase || res.Before != before["app:1"] || res.After == res.Before || res.Plan == nil || res.Plan.Manifest != res.After {
		t.Fatalf("plan: %+v, %v", res, err)
	}
	if s := res.Plan.String(); !strings.Contains(s, "new base, added") || !strings.Contains(s, "Env BASEVER: inherited, 1 → 2") {
		t.Errorf("the plan as text:\n%s", s)
	}
	mu.Lock()
	if want := "mytool/1.0 image-rebase/" + version.String() + " go-containerregistry"; len(agents) != 1 || !strings.HasPrefix(fmt.Sprint(agents), "map["+want) {
		t.Errorf("User-Agents %v, want %q…", agents, want)
	}
	mu.Unlock()
	if after := reg.Snapshot(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("Plan wrote: %v → %v", before, after)
	}

	// A WORKDIR under the old base's, which moves, is a hazard: Strict
	// refuses, returning the result with the warning, and writes nothing.
	must := func(img v1.Image, err error) v1.Image {
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	srv1 := must(testimage.Build(base1, testimage.Linux, testimage.Workdir("/srv")))
	reg.Push(t, "base:srv", srv1)
	reg.Push(t, "base:opt", must(testimage.Build(base2, testimage.Linux, testimage.Workdir("/opt"))))
	reg.Push(t, "app:relative", must(testimage.App(srv1, testimage.Workdir("/srv/data"), testimage.Copy("COPY app /", map[string]string{"app": "x"}))))
	before = reg.Snapshot(t)
	res, err = imagerebase.Rebase(context.Background(), "app:relative", imagerebase.Options{
		Registry: "http://" + reg.Host, From: "base:srv", To: "base:opt", Strict: true,
	})
	if err == nil || res == nil || res.Action != imagerebase.Refused || len(res.Warnings) == 0 || res.Warnings[0].Code != "workdir-moved" {
		t.Fatalf("strict: %+v, %v", res, err)
	}
	if after := reg.Snapshot(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("a refused rebase wrote: %v → %v", before, after)
	}
	res, err = imagerebase.Rebase(context.Background(), "app:relative", imagerebase.Options{
		Registry: "http://" + reg.Host, From: "base:srv", To: "base:opt",
	})
	if err != nil || res.Action != imagerebase.Rebased || res.After != reg.Snapshot(t)["app:relative"] || imagerebase.Version() != version.String() {
		t.Fatalf("rebase: %+v, %v", res, err)
	}
}
