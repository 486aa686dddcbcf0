// Package archive stores images in single-file archives: oci-archive (a tar
// of an OCI image layout) and docker-archive (the `docker save` /
// `docker load` format). Both implement engine.WritableRepo. Reads seek
// into the tar file without extracting it; writes stage the new blobs in a
// temporary directory beside the archive, then write a whole new archive to
// a temporary file and rename it over the old one, so that a failed run
// leaves the archive as it was.
package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// entry is a regular file inside a tar: where its content starts and its
// size.
type entry struct {
	offset, size int64
}

// tarFile indexes a tar archive so that its files can be read in place.
type tarFile struct {
	path    string
	entries map[string]entry
	links   map[string]string // symlink or hardlink name → target
	order   []string          // names in archive order
}

// openTar indexes the tar at p. A missing file reads as an empty archive
// with exists false.
func openTar(p string) (*tarFile, bool, error) {
	t := &tarFile{path: p, entries: map[string]entry{}, links: map[string]string{}}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return t, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return t, true, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("reading %s as a tar archive: %w", p, err)
		}
		n := clean(h.Name)
		switch h.Typeflag {
		case tar.TypeReg:
			off, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				return nil, false, err
			}
			t.entries[n] = entry{offset: off, size: h.Size}
			t.order = append(t.order, n)
		case tar.TypeSymlink:
			t.links[n] = clean(path.Join(path.Dir(n), h.Linkname))
			t.order = append(t.order, n)
		case tar.TypeLink:
			t.links[n] = clean(h.Linkname)
			t.order = append(t.order, n)
		}
	}
}

func clean(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// lookup follows links to a regular file.
func (t *tarFile) lookup(name string) (entry, bool) {
	name = clean(name)
	for range 16 {
		if e, ok := t.entries[name]; ok {
			return e, true
		}
		target, ok := t.links[name]
		if !ok {
			return entry{}, false
		}
		name = target
	}
	return entry{}, false
}

// open returns a reader of a file's content.
func (t *tarFile) open(name string) (io.ReadCloser, int64, error) {
	e, ok := t.lookup(name)
	if !ok {
		return nil, 0, fmt.Errorf("%s: no file %s in the archive", t.path, name)
	}
	f, err := os.Open(t.path)
	if err != nil {
		return nil, 0, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, e.offset, e.size), f}, e.size, nil
}

// read returns a small file's content, refusing more than limit bytes.
func (t *tarFile) read(name string, limit int64) ([]byte, error) {
	rc, size, err := t.open(name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if size > limit {
		return nil, fmt.Errorf("%s: %s is %d bytes, over the %d byte limit", t.path, name, size, limit)
	}
	return io.ReadAll(rc)
}

// writeArchive writes a new archive to a temporary file beside p, syncs it
// and renames it over p. On failure p is untouched and the temporary file
// removed.
func writeArchive(p string, fill func(tw *tar.Writer) error) (err error) {
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-"+filepath.Base(p)+"-")
	if err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("writing %s (left unchanged): %w", p, err)
		}
	}()
	tw := tar.NewWriter(f)
	if err = fill(tw); err != nil {
		return err
	}
	if err = tw.Close(); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}

// addFile writes one regular file into a tar.
// copyFile adds one file whose content open streams.
func copyFile(tw *tar.Writer, name string, size int64, open func() (io.ReadCloser, error)) error {
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	return addFile(tw, name, size, rc)
}

func addFile(tw *tar.Writer, name string, size int64, r io.Reader) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	n, err := io.Copy(tw, r)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("%s: got %d bytes, expected %d", name, n, size)
	}
	return nil
}

// stagingDir creates the directory that holds new blobs until the archive
// is written: beside the archive, so that big layers stay on its file
// system.
func stagingDir(archive string) (string, error) {
	dir := filepath.Dir(archive)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(dir, ".image-rebase-staging-")
}
