package e2e

import (
	"fmt"
	"sync"
	"testing"
)

// TestConcurrentRebasesInOneRepository: one image rebased to several tags
// of its repository at once, as a batch does for the tags of a repository
// (app:1.2 and app:latest naming one image, or app:1 and app:2 on one
// base). The runs mount the same base layers into the same repository and
// write the same config at the same time; each must succeed. Debian's
// docker-registry (Distribution 2.8, filesystem storage) answers some
// manifest PUTs made meanwhile with 400 DIGEST_INVALID + MANIFEST_BLOB_UNKNOWN
// naming a blob another request is linking or committing: a few runs in 64
// hit it.
func TestConcurrentRebasesInOneRepository(t *testing.T) {
	need(t, "buildah", "skopeo", "docker-registry")
	r := startRegistry(t)
	buildBases(t, r, "oci")
	buildImage(t, "e2e-concurrent-app", "FROM localhost/e2e-base-oci-1\nCOPY app.txt /app/app.txt\nENV APP=concurrent\n",
		map[string]string{"app.txt": "concurrent app"}, buildOpts{format: "oci", layers: true})
	r.push(t, "e2e-concurrent-app", "app:1", "oci")

	const runs, parallel = 64, 8
	var mu sync.Mutex
	var failed []string
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	for i := range runs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			code, _, stderr := rebase(t, r.env(), r.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2", "-t", fmt.Sprintf("r%d", i))
			if code != 0 {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("run %d: exit %d: %s", i, code, lastLine(stderr)))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Errorf("%d of %d concurrent rebases of one image failed, e.g. %s", len(failed), runs, failed[0])
	}
}
