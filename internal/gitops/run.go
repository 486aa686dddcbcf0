package gitops

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// Options configure Run.
type Options struct {
	// Resolver gives the digest to pin for each image (a *Rebaser or a
	// *Pinner).
	Resolver Resolver
	// DryRun writes no file; each changed file's report holds the diff.
	DryRun bool
	// Jobs bounds the concurrent resolutions (8 when 0).
	Jobs int
	// Markers lists the comment keys that mark images (DefaultMarkers
	// when nil); add ImagePolicyKey to read Flux's markers.
	Markers Markers
}

// File statuses.
const (
	// Updated: the file was rewritten.
	Updated = "updated"
	// WouldUpdate: a dry run found changes; the file was not written.
	WouldUpdate = "would-update"
	// Unchanged: every image was pinned already.
	Unchanged = "unchanged"
	// Failed: the file has errors that keep it from being rewritten, or
	// none of its changes could be made because an image could not be
	// resolved (see the images' errors).
	Failed = "failed"
)

// Report is the outcome of Run.
type Report struct {
	// Scanned counts the YAML files read; Files lists those with markers.
	Scanned int           `json:"scanned"`
	Files   []*FileReport `json:"files"`
}

// FileReport is the outcome for one file.
type FileReport struct {
	Path   string         `json:"path"`
	Status string         `json:"status"`
	Images []*ImageReport `json:"images"`
	// Diff is the unified diff of a dry run.
	Diff string `json:"diff,omitempty"`
	// Problems keep the file from being rewritten (marker errors, YAML the
	// parser rejects, a file that changed meanwhile).
	Problems []Problem `json:"problems,omitempty"`
	err      error
}

// ImageReport is the outcome for one marked image.
type ImageReport struct {
	ID        string `json:"id"`
	Line      int    `json:"line"`
	Reference string `json:"reference"`
	// Action is the Resolution's action; empty when resolution failed.
	Action string `json:"action,omitempty"`
	// Before is the digest the tag named; After the pinned digest.
	Before string `json:"before,omitempty"`
	After  string `json:"after,omitempty"`
	// Value is the marked field's new value when it changes.
	Value string `json:"value,omitempty"`
	// Changed tells whether the file's value changes.
	Changed bool   `json:"changed"`
	Error   string `json:"error,omitempty"`
	err     error
}

// Err joins the errors of every file and image, nil when there are none.
func (r *Report) Err() error {
	var errs []error
	for _, f := range r.Files {
		if f.err != nil {
			errs = append(errs, f.err)
		}
		for _, im := range f.Images {
			if im.err != nil {
				errs = append(errs, im.err)
			}
		}
	}
	return errors.Join(errs...)
}

// Run pins the marked images of the YAML files found under paths
// (directories are walked for .yaml and .yml files, skipping hidden
// directories and symbolic links; files are taken as given). Each distinct
// reference is resolved once. A file with errors is left untouched and the
// others are processed; images that fail to resolve keep their value while
// the file's other images are pinned. Files are written atomically
// (temporary file and rename) with their mode kept, and only when a value
// changes. The error is for paths that cannot be walked: nothing was done;
// problems of files and images are in the report (Report.Err).
func Run(ctx context.Context, paths []string, opts Options) (*Report, error) {
	files, err := Collect(paths)
	if err != nil {
		return nil, err
	}
	rep := &Report{Scanned: len(files), Files: []*FileReport{}}
	type work struct {
		rep    *FileReport
		data   []byte
		images []*Image
	}
	var todo []*work
	refs := map[string]*resolved{}
	for _, path := range files {
		data, err := readFile(path)
		if err != nil {
			fr := &FileReport{Path: path, Status: Failed, Images: []*ImageReport{}, Problems: []Problem{{Msg: err.Error()}}, err: err}
			rep.Files = append(rep.Files, fr)
			continue
		}
		if !opts.Markers.Has(data) {
			continue
		}
		fr := &FileReport{Path: path, Status: Unchanged, Images: []*ImageReport{}}
		rep.Files = append(rep.Files, fr)
		images, err := opts.Markers.Scan(path, data)
		if err != nil {
			fr.fail(err)
			continue
		}
		for _, im := range images {
			if refs[im.Reference()] == nil {
				refs[im.Reference()] = &resolved{}
			}
		}
		todo = append(todo, &work{rep: fr, data: data, images: images})
	}

	resolveAll(ctx, opts, refs)

	for _, w := range todo {
		var edits []Edit
		imageErrors := false
		for _, im := range w.images {
			r := refs[im.Reference()]
			ir := &ImageReport{ID: im.ID, Line: im.Line(), Reference: im.Reference()}
			w.rep.Images = append(w.rep.Images, ir)
			if r.err != nil {
				ir.err = fmt.Errorf("%s:%d: image %q (%s): %w", w.rep.Path, ir.Line, im.ID, ir.Reference, r.err)
				ir.Error = r.err.Error()
				imageErrors = true
				continue
			}
			ir.Action, ir.Before, ir.After = r.res.Action, r.res.Before, r.res.Digest
			if e := im.Pin(r.res.Digest); len(e) > 0 {
				ir.Changed, ir.Value = true, pinnedValue(e)
				edits = append(edits, e...)
			}
		}
		if len(edits) == 0 {
			if imageErrors {
				// Nothing could be done: not "unchanged", which says the
				// file is up to date.
				w.rep.Status = Failed
			}
			continue
		}
		after, err := Rewrite(w.rep.Path, w.data, edits)
		if err == nil && opts.DryRun {
			// Paths relative to where the command runs, as git shows
			// them (a/deploy/values.yaml); an absolute path loses its
			// leading slash.
			w.rep.Diff, err = Diff(strings.TrimPrefix(filepath.ToSlash(w.rep.Path), "/"), w.data, after)
		} else if err == nil {
			err = writeAtomic(w.rep.Path, w.data, after)
		}
		if err != nil {
			w.rep.fail(err)
			continue
		}
		w.rep.Status = Updated
		if opts.DryRun {
			w.rep.Status = WouldUpdate
		}
	}
	return rep, nil
}

// pinnedValue describes an image's edits: the new value, or for several
// fields (a tag and a digest field) the new values joined by ", ".
func pinnedValue(edits []Edit) string {
	vals := make([]string, len(edits))
	for i, e := range edits {
		vals[i] = e.New
	}
	return strings.Join(vals, ", ")
}

// fail records err as the file's error; the file is not written.
func (f *FileReport) fail(err error) {
	f.Status, f.err = Failed, err
	var fe *FileError
	if errors.As(err, &fe) {
		f.Problems = fe.Problems
	} else {
		f.Problems = []Problem{{Msg: err.Error()}}
	}
	for _, im := range f.Images {
		im.Changed, im.Value = false, ""
	}
}

type resolved struct {
	res Resolution
	err error
}

// resolveAll resolves every reference, at most opts.Jobs at a time, in a
// stable order.
func resolveAll(ctx context.Context, opts Options, refs map[string]*resolved) {
	keys := make([]string, 0, len(refs))
	for k := range refs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if p, ok := opts.Resolver.(Preparer); ok {
		for ref, err := range p.Prepare(keys) {
			refs[ref].err = err
		}
	}
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = 8
	}
	sem := make(chan struct{}, jobs)
	var wg sync.WaitGroup
	for _, k := range keys {
		r := refs[k]
		if r.err != nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := ctx.Err(); err != nil {
				r.err = err
				return
			}
			r.res, r.err = opts.Resolver.Resolve(ctx, k)
		})
	}
	wg.Wait()
}

// Collect lists the YAML files under paths in a stable order: a directory
// gives its .yaml and .yml files (recursively, skipping hidden directories
// and symbolic links), a file is taken as given.
func Collect(paths []string) ([]string, error) {
	var files []string
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			files = append(files, p)
		}
	}
	for _, root := range paths {
		info, err := os.Stat(root)
		if err != nil {
			return nil, err
		}
		if !info.IsDir() {
			add(filepath.Clean(root))
			continue
		}
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			switch {
			case d.IsDir() && p != root && strings.HasPrefix(d.Name(), "."):
				return filepath.SkipDir
			case d.Type().IsRegular() && isYAML(d.Name()):
				add(p)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return files, nil
}

func isYAML(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	return ext == ".yaml" || ext == ".yml"
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if info.Size() > MaxFileSize {
		return nil, fmt.Errorf("%s: larger than 16 MiB (%d bytes), the most gitops reads; skipped", path, MaxFileSize)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return buf.Bytes(), nil
}

// writeAtomic replaces path's content old with data: a temporary file in
// the same directory, with path's mode, renamed over it (over a symbolic
// link's target). If path no longer
// holds old (someone edited it meanwhile), nothing is written.
func writeAtomic(path string, old, data []byte) error {
	// A symbolic link named on the command line stays a link: write its
	// target.
	path, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".image-rebase-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	done := false
	defer func() {
		if !done {
			os.Remove(tmp.Name())
		}
	}()
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky))
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	now, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.Equal(now, old) {
		return fmt.Errorf("%s changed while it was being processed; left as it is", path)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	done = true
	return nil
}
