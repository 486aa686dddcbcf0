package imagerebase_test

import (
	"fmt"
	"os"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/testimage"
)

// exampleTB lets the examples, which have no *testing.T, start the real
// registry with regtest: a failure panics (failing the example), and the
// cleanups run when the example calls stop. Only the methods regtest
// calls are implemented; the nil testing.TB it embeds would panic on any
// other.
type exampleTB struct {
	testing.TB
	cleanups []func()
}

func (t *exampleTB) Helper()                           {}
func (t *exampleTB) Cleanup(f func())                  { t.cleanups = append(t.cleanups, f) }
func (t *exampleTB) Fatal(args ...any)                 { panic(fmt.Sprint(args...)) }
func (t *exampleTB) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }

// exampleRegistry is a running registry holding the standard test images:
// base:1 and base:2 (three layers each), app:1 built on base:1 (LABEL
// FROM=base:1 and two layers of its own).
type exampleRegistry struct {
	host string // "127.0.0.1:port", plain HTTP
	t    *exampleTB
}

func (r *exampleRegistry) stop() {
	for i := len(r.t.cleanups) - 1; i >= 0; i-- {
		r.t.cleanups[i]()
	}
}

// images builds the standard test images: base:1, base:2, and the
// application on base:1.
func images() (base1, base2, app v1.Image) {
	must := func(img v1.Image, err error) v1.Image {
		if err != nil {
			panic(err)
		}
		return img
	}
	base1 = must(testimage.Base(testimage.OCI, "1"))
	base2 = must(testimage.Base(testimage.OCI, "2"))
	return base1, base2, must(testimage.App(base1, testimage.AppSteps("base:1")...))
}

// startExampleRegistry starts the real (CNCF Distribution) registry in
// process with the standard test images.
func startExampleRegistry() *exampleRegistry {
	t := &exampleTB{}
	reg := regtest.Start(t)
	base1, base2, app := images()
	reg.Push(t, "base:1", base1)
	reg.Push(t, "base:2", base2)
	reg.Push(t, "app:1", app)
	return &exampleRegistry{host: reg.Host, t: t}
}

// exampleLayout writes an OCI layout in a new temporary directory holding
// the application (tag "app") and base:1 (tag "base-1"); remove removes it.
func exampleLayout() (dir string, remove func()) {
	dir, err := os.MkdirTemp("", "imagerebase-example-")
	if err != nil {
		panic(err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		panic(err)
	}
	base1, _, app := images()
	for tag, img := range map[string]v1.Image{"app": app, "base-1": base1} {
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
			panic(err)
		}
	}
	return dir, func() { os.RemoveAll(dir) }
}
