package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/ocilayout"
	"github.com/image-rebase/image-rebase/internal/progress"
)

// dockerUncompressedLayer is the Docker media type of a layer stored as a
// plain tar, as docker save stores them.
const dockerUncompressedLayer types.MediaType = "application/vnd.docker.image.rootfs.diff.tar"

// Docker is a docker-archive: the format of `docker save` and
// `docker load`, a manifest.json listing each image's config file, tags and
// layer files. It holds no registry manifest: each image is presented as a
// Docker schema 2 manifest built from manifest.json, whose layers are the
// layer files as stored (plain tars, their digest the diff_id from the
// config, as docker save writes them; or compressed files). It implements
// engine.WritableRepo and engine.BlobOpener. Written archives use the
// format `skopeo copy docker-archive:` writes: <diff_id>.tar layer files
// (plain tars), <digest>.json configs and manifest.json.
type Docker struct {
	file     string
	name     string
	progress io.Writer

	mu     sync.Mutex
	loaded bool
	tar    *tarFile
	images []*dockerImage
	// Staged content, until the archive is written.
	stagingDir string
	layers     map[v1.Hash]stagedLayer // by blob digest as the manifest names it
	small      map[v1.Hash][]byte      // configs
}

var (
	_ engine.WritableRepo = (*Docker)(nil)
	_ engine.BlobOpener   = (*Docker)(nil)
)

// dockerImage is one entry of manifest.json with its synthesized manifest.
type dockerImage struct {
	entry    tarball.Descriptor
	config   []byte
	desc     v1.Descriptor // of the synthesized manifest
	manifest []byte
	layers   []layerFile
}

// layerFile is a layer as the archive stores it.
type layerFile struct {
	path   string // empty for foreign layers
	desc   v1.Descriptor
	diffID v1.Hash
}

// stagedLayer is a layer copied into the staging area, stored as a plain
// tar.
type stagedLayer struct {
	file   string
	diffID v1.Hash
	size   int64
}

// NewDocker returns the docker-archive in file. It does no I/O: a missing
// file reads as an empty archive and is created by the first write.
func NewDocker(file string, o Options) *Docker {
	return &Docker{file: file, name: "docker-archive:" + file, progress: o.Progress,
		layers: map[v1.Hash]stagedLayer{}, small: map[v1.Hash][]byte{}}
}

// Name returns "docker-archive:FILE".
func (a *Docker) Name() string { return a.name }

func (a *Docker) load() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.loaded {
		return nil
	}
	t, exists, err := openTar(a.file)
	if err != nil {
		return fmt.Errorf("%s: %w", a.name, err)
	}
	a.tar, a.images = t, nil
	if exists {
		raw, err := t.read("manifest.json", manifest.MaxDocumentSize)
		if err != nil {
			return fmt.Errorf("%s: not a docker archive: %w", a.name, err)
		}
		var entries tarball.Manifest
		if err := json.Unmarshal(raw, &entries); err != nil {
			return fmt.Errorf("%s: decoding manifest.json: %w", a.name, err)
		}
		for i, e := range entries {
			img, err := a.loadImage(e)
			if err != nil {
				return fmt.Errorf("%s: image %d of manifest.json: %w", a.name, i+1, err)
			}
			a.images = append(a.images, img)
		}
	}
	a.loaded = true
	return nil
}

// loadImage builds the manifest of one image. Plain-tar layers take their
// diff_id as digest (no hashing); compressed layer files are hashed.
func (a *Docker) loadImage(e tarball.Descriptor) (*dockerImage, error) {
	cfgRaw, err := a.tar.read(e.Config, manifest.MaxDocumentSize)
	if err != nil {
		return nil, err
	}
	cfg, err := manifest.ParseConfig(a.name, cfgRaw)
	if err != nil {
		return nil, err
	}
	if len(cfg.RootFS.DiffIDs) != len(e.Layers) {
		return nil, fmt.Errorf("config %s lists %d diff_ids for %d layer files", e.Config, len(cfg.RootFS.DiffIDs), len(e.Layers))
	}
	img := &dockerImage{entry: e, config: cfgRaw}
	cd, _, _ := v1.SHA256(bytes.NewReader(cfgRaw))
	m := v1.Manifest{SchemaVersion: 2, MediaType: types.DockerManifestSchema2,
		Config: v1.Descriptor{MediaType: types.DockerConfigJSON, Size: int64(len(cfgRaw)), Digest: cd}}
	for i, p := range e.Layers {
		diffID := cfg.RootFS.DiffIDs[i]
		lf := layerFile{path: p, diffID: diffID}
		if src, ok := e.LayerSources[diffID]; ok {
			lf.path, lf.desc = "", src
		} else if lf.desc, err = a.describeLayer(p, diffID); err != nil {
			return nil, err
		}
		img.layers = append(img.layers, lf)
		m.Layers = append(m.Layers, lf.desc)
	}
	if img.manifest, err = json.Marshal(m); err != nil {
		return nil, err
	}
	h, n, _ := v1.SHA256(bytes.NewReader(img.manifest))
	img.desc = v1.Descriptor{MediaType: types.DockerManifestSchema2, Digest: h, Size: n}
	return img, nil
}

func (a *Docker) describeLayer(p string, diffID v1.Hash) (v1.Descriptor, error) {
	rc, size, err := a.tar.open(p)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer rc.Close()
	br := bufio.NewReader(rc)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		h, n, err := v1.SHA256(br)
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("hashing %s: %w", p, err)
		}
		return v1.Descriptor{MediaType: types.DockerLayer, Size: n, Digest: h}, nil
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return v1.Descriptor{}, fmt.Errorf("layer %s is zstd-compressed, which docker-archive does not support", p)
	}
	return v1.Descriptor{MediaType: dockerUncompressedLayer, Size: size, Digest: diffID}, nil
}

// find returns the image a tag (e.g. "app:1"), a manifest digest, or the
// empty id (the only image) names.
func (a *Docker) find(id string) (*dockerImage, error) {
	if id == "" {
		if len(a.images) == 1 {
			return a.images[0], nil
		}
		if len(a.images) == 0 {
			return nil, &ocilayout.NotFoundError{Repo: a.name, ID: "(any image)"}
		}
		return nil, fmt.Errorf("%s holds %d images; name one with :NAME:TAG", a.name, len(a.images))
	}
	if strings.HasPrefix(id, "sha256:") {
		for _, img := range a.images {
			if img.desc.Digest.String() == id {
				return img, nil
			}
		}
		return nil, &ocilayout.NotFoundError{Repo: a.name, ID: id}
	}
	want, err := normalizeTag(id)
	if err != nil {
		return nil, err
	}
	for _, img := range a.images {
		for _, t := range img.entry.RepoTags {
			if n, err := normalizeTag(t); err == nil && n == want {
				return img, nil
			}
		}
	}
	return nil, &ocilayout.NotFoundError{Repo: a.name, ID: id}
}

// normalizeTag gives "app:1", "docker.io/library/app:1" and
// "index.docker.io/library/app:1" one form.
func normalizeTag(s string) (string, error) {
	t, err := name.NewTag(s)
	if err != nil {
		return "", fmt.Errorf("invalid docker-archive image name %q: %w", s, err)
	}
	return t.Name(), nil
}

// Manifest returns the manifest built for the image id names.
func (a *Docker) Manifest(ctx context.Context, id string) (v1.Descriptor, []byte, error) {
	if err := a.load(); err != nil {
		return v1.Descriptor{}, nil, err
	}
	img, err := a.find(id)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	return img.desc, img.manifest, nil
}

// Blob returns a config.
func (a *Docker) Blob(ctx context.Context, d v1.Descriptor) ([]byte, error) {
	if err := a.load(); err != nil {
		return nil, err
	}
	a.mu.Lock()
	b, ok := a.small[d.Digest]
	a.mu.Unlock()
	if ok {
		return b, nil
	}
	for _, img := range a.images {
		if h, _, _ := v1.SHA256(bytes.NewReader(img.config)); h == d.Digest {
			return img.config, nil
		}
	}
	return nil, &ocilayout.NotFoundError{Repo: a.name, ID: d.Digest.String()}
}

// layer finds a stored layer by the digest its manifest gives it.
func (a *Docker) layer(h v1.Hash) (layerFile, bool) {
	for _, img := range a.images {
		for _, l := range img.layers {
			if l.desc.Digest == h && l.path != "" {
				return l, true
			}
		}
	}
	return layerFile{}, false
}

// OpenBlob streams a layer file or a config.
func (a *Docker) OpenBlob(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	if err := a.load(); err != nil {
		return nil, err
	}
	if l, ok := a.layer(d.Digest); ok {
		rc, _, err := a.tar.open(l.path)
		return rc, err
	}
	b, err := a.Blob(ctx, d)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// Resolve returns the manifest digest of the image a tag names.
func (a *Docker) Resolve(ctx context.Context, tag string) (v1.Hash, bool, error) {
	if err := a.load(); err != nil {
		return v1.Hash{}, false, err
	}
	img, err := a.find(tag)
	var nf *ocilayout.NotFoundError
	if errors.As(err, &nf) {
		return v1.Hash{}, false, nil
	}
	if err != nil {
		return v1.Hash{}, false, err
	}
	return img.desc.Digest, true, nil
}

// Transfer stages the layers the archive lacks as plain tars, decompressing
// gzip layers while they stream in and checking their digest.
func (a *Docker) Transfer(ctx context.Context, src engine.Repo, blobs []v1.Descriptor, allowCopy bool) (engine.Transferred, error) {
	if err := a.load(); err != nil {
		return engine.Transferred{}, err
	}
	var t engine.Transferred
	for _, d := range blobs {
		if _, ok := a.layer(d.Digest); ok {
			t.Mounted++
			continue
		}
		if err := a.stageLayer(ctx, src, d); err != nil {
			return t, fmt.Errorf("copying %s from %s to %s: %w", d.Digest, src.Name(), a.name, err)
		}
		t.Copied++
		t.CopiedBytes += d.Size
	}
	return t, nil
}

func (a *Docker) staging() (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stagingDir == "" {
		dir, err := stagingDir(a.file)
		if err != nil {
			return "", fmt.Errorf("%s: %w", a.name, err)
		}
		a.stagingDir = dir
	}
	return a.stagingDir, nil
}

func (a *Docker) stageLayer(ctx context.Context, src engine.Repo, d v1.Descriptor) error {
	opener, ok := src.(engine.BlobOpener)
	if !ok {
		return errors.New("the source cannot stream blobs")
	}
	dir, err := a.staging()
	if err != nil {
		return err
	}
	rc, err := opener.OpenBlob(ctx, d)
	if err != nil {
		return err
	}
	defer rc.Close()
	blobHash := sha256.New()
	in := io.TeeReader(progress.Reader(a.progress, d, rc), blobHash)
	br := bufio.NewReader(in)
	magic, _ := br.Peek(4)
	var plain io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		plain = zr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return errors.New("zstd-compressed layers cannot be written to a docker-archive")
	}
	f, err := os.CreateTemp(dir, "layer-")
	if err != nil {
		return err
	}
	defer f.Close()
	diffHash := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, diffHash), plain)
	if err != nil {
		return err
	}
	// Drain what the decompressor left (gzip trailer, padding) so that the
	// blob digest covers the whole blob.
	if _, err := io.Copy(io.Discard, br); err != nil {
		return err
	}
	if got := fmt.Sprintf("sha256:%x", blobHash.Sum(nil)); got != d.Digest.String() {
		return fmt.Errorf("content digest is %s", got)
	}
	if err := f.Close(); err != nil {
		return err
	}
	diffID := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", diffHash.Sum(nil))}
	a.mu.Lock()
	a.layers[d.Digest] = stagedLayer{file: f.Name(), diffID: diffID, size: n}
	a.mu.Unlock()
	return nil
}

// dockerUpload keeps a config in memory until the archive is written.
type dockerUpload struct{ a *Docker }

// StartUpload opens an upload of a config.
func (a *Docker) StartUpload(ctx context.Context) (engine.BlobUpload, error) {
	return dockerUpload{a: a}, nil
}

// Commit keeps the config.
func (u dockerUpload) Commit(ctx context.Context, d v1.Descriptor, data []byte) error {
	if _, err := verify(u.a.name, d, data); err != nil {
		return err
	}
	u.a.mu.Lock()
	u.a.small[d.Digest] = bytes.Clone(data)
	u.a.mu.Unlock()
	return nil
}

// Cancel does nothing.
func (u dockerUpload) Cancel(context.Context) {}

// PutManifest writes the archive with the image under tag: every other
// image kept (an image left without tags by the move is dropped), the new
// image's config and layer files, manifest.json last, all to a temporary
// file renamed over the old archive. An index cannot be stored: a
// docker-archive holds single-platform images.
func (a *Docker) PutManifest(ctx context.Context, tag string, d v1.Descriptor, raw []byte) error {
	if err := a.load(); err != nil {
		return err
	}
	if _, err := verify(a.name, d, raw); err != nil {
		return err
	}
	kind, _ := manifest.Classify(d.MediaType, raw)
	if kind != manifest.KindImage {
		if tag == "" {
			return nil // a platform of an index: refused when the index comes
		}
		return fmt.Errorf("%s: a docker-archive holds single-platform images, not a %s; choose one platform with --platform and write it elsewhere, or write to oci: or a registry", a.name, kind)
	}
	if tag == "" {
		return fmt.Errorf("%s: name the image to write with :NAME:TAG", a.name)
	}
	if _, err := normalizeTag(tag); err != nil {
		return err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("%s: decoding manifest: %w", a.name, err)
	}
	cfgRaw, err := a.Blob(ctx, m.Config)
	if err != nil {
		return err
	}
	cfg, err := manifest.ParseConfig(a.name, cfgRaw)
	if err != nil {
		return err
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return fmt.Errorf("%s: config lists %d diff_ids for %d layers", a.name, len(cfg.RootFS.DiffIDs), len(m.Layers))
	}

	// The files to write, each once, in order: kept images' files first.
	type file struct {
		name string
		size int64
		open func() (io.ReadCloser, error)
	}
	var files []file
	written := map[string]bool{}
	add := func(f file) {
		if !written[f.name] {
			written[f.name] = true
			files = append(files, f)
		}
	}
	fromTar := func(p string) file {
		e, _ := a.tar.lookup(p)
		return file{name: clean(p), size: e.size, open: func() (io.ReadCloser, error) {
			rc, _, err := a.tar.open(p)
			return rc, err
		}}
	}
	want, _ := normalizeTag(tag)
	var entries tarball.Manifest
	for _, img := range a.images {
		e := img.entry
		var tags []string
		for _, t := range e.RepoTags {
			if n, err := normalizeTag(t); err != nil || n != want {
				tags = append(tags, t)
			}
		}
		if len(e.RepoTags) > 0 && len(tags) == 0 {
			continue // its only tag moves to the new image
		}
		e.RepoTags = tags
		entries = append(entries, e)
		add(fromTar(e.Config))
		for _, l := range img.layers {
			if l.path != "" {
				add(fromTar(l.path))
			}
		}
	}

	entry := tarball.Descriptor{Config: m.Config.Digest.Hex + ".json", RepoTags: []string{tag}}
	add(file{name: entry.Config, size: int64(len(cfgRaw)), open: func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(cfgRaw)), nil
	}})
	for i, l := range m.Layers {
		diffID := cfg.RootFS.DiffIDs[i]
		if manifest.IsForeign(l) {
			if entry.LayerSources == nil {
				entry.LayerSources = map[v1.Hash]v1.Descriptor{}
			}
			entry.LayerSources[diffID] = l
			entry.Layers = append(entry.Layers, diffID.Hex+".tar")
			continue
		}
		lf, ok := a.layer(l.Digest)
		if ok && lf.desc.MediaType != dockerUncompressedLayer {
			// A compressed layer file (archives other tools write): the new
			// image gets plain tars only, as docker save writes them, which
			// every reader takes.
			if err := a.stageLayer(ctx, a, lf.desc); err != nil {
				return fmt.Errorf("%s: decompressing %s: %w", a.name, lf.path, err)
			}
			ok = false
		}
		if ok {
			if lf.diffID != diffID {
				return fmt.Errorf("%s: layer %s has diff_id %s, the config says %s", a.name, l.Digest, lf.diffID, diffID)
			}
			entry.Layers = append(entry.Layers, clean(lf.path))
			add(fromTar(lf.path))
			continue
		}
		a.mu.Lock()
		sl, ok := a.layers[l.Digest]
		a.mu.Unlock()
		if !ok {
			return fmt.Errorf("%s: layer %s was not copied in; archive left unchanged", a.name, l.Digest)
		}
		if sl.diffID != diffID {
			return fmt.Errorf("%s: layer %s has diff_id %s, the config says %s", a.name, l.Digest, sl.diffID, diffID)
		}
		p := diffID.Hex + ".tar"
		entry.Layers = append(entry.Layers, p)
		add(file{name: p, size: sl.size, open: func() (io.ReadCloser, error) { return os.Open(sl.file) }})
	}
	entries = append(entries, entry)
	mj, err := json.Marshal(entries)
	if err != nil {
		return err
	}
	err = writeArchive(a.file, func(tw *tar.Writer) error {
		for _, f := range files {
			if err := copyFile(tw, f.name, f.size, f.open); err != nil {
				return err
			}
		}
		return addFile(tw, "manifest.json", int64(len(mj)), bytes.NewReader(mj))
	})
	if err != nil {
		return err
	}
	a.Close()
	a.mu.Lock()
	a.loaded = false
	a.mu.Unlock()
	return nil
}

// Close removes the staging area.
func (a *Docker) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.layers, a.small = map[v1.Hash]stagedLayer{}, map[v1.Hash][]byte{}
	if a.stagingDir == "" {
		return nil
	}
	err := os.RemoveAll(a.stagingDir)
	a.stagingDir = ""
	return err
}
