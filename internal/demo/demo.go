// Package demo runs image-rebase end to end on sample images in an
// in-process registry: the README's first command.
package demo

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/registry"
)

// Run starts an in-process registry, pushes a base v1, a base v2 and an app
// on v1, rebases the app onto v2 and prints before and after.
func Run(ctx context.Context, w io.Writer) error {
	host, stop, err := serve()
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintf(w, "demo registry at %s (in process, in memory)\n\n", host)

	imgs, err := sampleImages()
	if err != nil {
		return err
	}
	for _, s := range imgs {
		ref, err := name.ParseReference(host + "/" + s.ref)
		if err != nil {
			return err
		}
		if err := remote.Write(ref, s.img, remote.WithContext(ctx)); err != nil {
			return fmt.Errorf("pushing sample %s: %w", s.ref, err)
		}
		fmt.Fprintf(w, "pushed %-10s %s\n", s.ref, s.desc)
	}

	fmt.Fprintf(w, "\nbefore:\n")
	if err := describe(ctx, w, host+"/app:1"); err != nil {
		return err
	}

	client := registry.New(registry.Options{Insecure: []string{host}})
	loc := func(s string, write bool) engine.Location {
		l, _ := client.Parse(s, host, write)
		return l
	}
	req := engine.Request{Image: loc("app:1", true), From: loc("base:1", false), To: loc("base:2", false)}
	req.Target = req.Image
	fmt.Fprintf(w, "\n$ image-rebase %s app:1 --from-base base:1 --to-base base:2\n", host)
	res, err := engine.Rebase(ctx, req)
	if err != nil {
		return err
	}
	res.Plan.Explain(w)
	fmt.Fprintf(w, "%s: %s → %s, %d layers mounted, %d copied\n", res.Action, res.Before, res.After, res.Transferred.Mounted, res.Transferred.Copied)

	fmt.Fprintf(w, "\nafter:\n")
	if err := describe(ctx, w, host+"/app:1"); err != nil {
		return err
	}

	fmt.Fprintf(w, "\n$ image-rebase %s app:1 --from-base base:1 --to-base base:2   # again\n", host)
	res, err = engine.Rebase(ctx, req)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s: nothing written\n", res.Action)
	return nil
}

// describe prints an image's files and config as a user would inspect them.
func describe(ctx context.Context, w io.Writer, ref string) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return err
	}
	d, _ := img.Digest()
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	files, err := listFiles(img)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "  %s  %s\n", ref, d)
	fmt.Fprintf(w, "  files: %s\n", strings.Join(files, ", "))
	fmt.Fprintf(w, "  env:   %s\n", strings.Join(cf.Config.Env, " "))
	var labels []string
	for k, v := range cf.Config.Labels {
		labels = append(labels, k+"="+v)
	}
	sort.Strings(labels)
	fmt.Fprintf(w, "  labels: %s\n  cmd:   %q\n", strings.Join(labels, " "), cf.Config.Cmd)
	return nil
}

// serve starts go-containerregistry's in-memory registry on loopback. Its
// blob store is shared by all repositories, so a cross-repository mount
// always finds the blob; the wrapper answers mounts as a registry does
// (201) instead of opening an upload.
func serve() (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("starting demo registry: %w", err)
	}
	inner := ggcrregistry.New(ggcrregistry.Logger(discardLogger()))
	srv := &http.Server{Handler: mountingHandler(inner)}
	go srv.Serve(l)
	return l.Addr().String(), func() { srv.Close() }, nil
}

func mountingHandler(inner http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/blobs/uploads/") && q.Get("mount") != "" {
			repo := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/blobs/uploads/")
			head, _ := http.NewRequestWithContext(r.Context(), http.MethodHead, "/v2/"+repo+"/blobs/"+url.PathEscape(q.Get("mount")), nil)
			rec := &statusRecorder{header: http.Header{}}
			inner.ServeHTTP(rec, head)
			if rec.status == http.StatusOK {
				w.Header().Set("Location", "/v2/"+repo+"/blobs/"+q.Get("mount"))
				w.Header().Set("Docker-Content-Digest", q.Get("mount"))
				w.WriteHeader(http.StatusCreated)
				return
			}
		}
		inner.ServeHTTP(w, r)
	})
}

type statusRecorder struct {
	header http.Header
	status int
}

func (s *statusRecorder) Header() http.Header         { return s.header }
func (s *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusRecorder) WriteHeader(code int)        { s.status = code }
