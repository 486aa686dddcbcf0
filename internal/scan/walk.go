package scan

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/basedetect"
	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/registry"
)

// Options choose what a Scanner reads and reports.
type Options struct {
	// Registry is the registry walked ("host[:port]"); Bases, Repos and
	// labels without a host name things in it.
	Registry string
	// Bases name the current version of each base ("base:2"; "base" is
	// "base:latest"). When set, only the images on these bases (any
	// version of them) are reported, and an image is stale when it does
	// not start with its base's current version.
	Bases []string
	// Repos limits the walk to these repositories; empty walks the catalog.
	Repos []string
	// Label is the label that names an image's base; empty is
	// basedetect.DefaultLabel.
	Label string
	// Jobs bounds the requests in flight (at least 1).
	Jobs int
	// Known are versions of the bases read earlier, e.g. by a watcher
	// before a base tag moved: images on them are found by their layers
	// even when no tag names them any more. Their Ref is the base as
	// given (what the tag named then).
	Known []Candidate
	// SameTag keeps, of the images on a base's repository, only those on
	// the base's own tag: found by the layers of a version the tag names
	// or named (Known), or naming that tag in their annotations or label.
	// Without it an image on any version of the repository (base:1 when
	// base:2 is given) is on the base, and stale.
	SameTag bool
}

// ArgError reports a malformed registry, base or repository in Options;
// nothing was read.
type ArgError struct {
	// What names the option, e.g. "--base".
	What string
	Err  error
}

// Error renders "What: Err".
func (e *ArgError) Error() string { return e.What + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *ArgError) Unwrap() error { return e.Err }

// Scanner walks a registry and tells, for each image, the base it is
// built on and whether it is stale: the registry side of Identify and
// Judge. It reads the candidate bases once (ReadBases) and then any
// number of repositories or images; each base an image names by
// annotation or label is read once. A Scanner serves any number of
// goroutines once ReadBases has returned.
type Scanner struct {
	client *registry.Client
	o      Options
	sem    chan struct{}
	bases  []baseArg
	repos  []*registry.Repo

	// lock guards cands and current, which ReadBase replaces while
	// images are judged.
	lock    sync.RWMutex
	cands   []Candidate
	current []*BaseVersion // per base, in Options.Bases order

	mu    sync.Mutex
	named map[string]*namedBase // base named by an image → its current version
}

// BaseVersion is the version of a base a tag names: the digest of the
// tag's manifest (an image's, or an index's) and the candidates it gives
// (the image, or each platform image of the index).
type BaseVersion struct {
	// Ref names the base as the findings' To does, e.g. "host/base:2".
	Ref    string
	Digest v1.Hash
	// Candidates are never empty.
	Candidates []Candidate
}

type baseArg struct {
	repo *registry.Repo
	loc  engine.Location
}

type namedBase struct {
	once sync.Once
	c    *Candidate
	repo string
	ref  string
}

// New parses the options: a malformed base or repository is an *ArgError
// and nothing is read. Unless Options.Repos is set, it asks for the right
// to list the catalog, so that the registry's token covers it.
func New(client *registry.Client, o Options) (*Scanner, error) {
	s := &Scanner{client: client, o: o, sem: make(chan struct{}, max(o.Jobs, 1)), named: map[string]*namedBase{}}
	if len(o.Repos) == 0 {
		if err := client.CatalogScope(o.Registry); err != nil {
			return nil, &ArgError{What: "registry", Err: err}
		}
	}
	for _, b := range o.Bases {
		loc, err := client.Parse(b, o.Registry, false)
		if err != nil {
			return nil, &ArgError{What: "--base", Err: err}
		}
		rp, ok := loc.Repo.(*registry.Repo)
		if !ok {
			return nil, &ArgError{What: "--base", Err: fmt.Errorf("%s is not in a registry", b)}
		}
		s.bases = append(s.bases, baseArg{repo: rp, loc: loc})
	}
	for _, r := range o.Repos {
		rp, err := client.Repository(o.Registry, r, false)
		if err != nil {
			return nil, &ArgError{What: "--repo", Err: err}
		}
		s.repos = append(s.repos, rp)
	}
	return s, nil
}

// Run walks the registry as o says and returns a finding per image, sorted
// by image.
func Run(ctx context.Context, client *registry.Client, o Options) ([]Finding, error) {
	s, err := New(client, o)
	if err != nil {
		return nil, err
	}
	if err := s.ReadBases(ctx); err != nil {
		return nil, err
	}
	return s.Walk(ctx)
}

// ReadBases reads the candidates: every tag of each base's repository
// (each platform image of an index), and Options.Known. A base whose
// current version cannot be read is an error.
func (s *Scanner) ReadBases(ctx context.Context) error {
	cands := append([]Candidate(nil), s.o.Known...)
	current := make([]*BaseVersion, len(s.bases))
	read := map[string]BaseVersion{} // "repo@id" → what it gave, each read once
	var mu sync.Mutex
	for i, b := range s.bases {
		tags, err := b.repo.Tags(ctx)
		if err != nil {
			return err
		}
		ids := tags
		if b.loc.Digest != "" {
			ids = append(ids, b.loc.Digest)
		}
		var wg sync.WaitGroup
		var errs []error
		for _, id := range ids {
			// A repository given twice (base:stable and base:oldstable)
			// is read once: its tags were all read for the first.
			key := b.repo.Name() + "@" + id
			mu.Lock()
			v, done := read[key]
			mu.Unlock()
			if done {
				if id == b.loc.ID() {
					current[i] = &BaseVersion{Ref: b.loc.String(), Digest: v.Digest, Candidates: v.Candidates}
				}
				continue
			}
			loc := engine.Location{Repo: b.repo, Tag: id}
			if strings.Contains(id, ":") {
				loc = engine.Location{Repo: b.repo, Digest: id}
			}
			s.sem <- struct{}{}
			wg.Go(func() {
				v, err := s.version(ctx, loc)
				<-s.sem
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				read[key] = v
				cands = append(cands, v.Candidates...)
				if id == b.loc.ID() {
					current[i] = &BaseVersion{Ref: b.loc.String(), Digest: v.Digest, Candidates: v.Candidates}
				}
			})
		}
		wg.Wait()
		if len(errs) > 0 {
			return errs[0]
		}
		if current[i] == nil {
			return fmt.Errorf("--base %s: not found among the tags of %s", b.loc, b.repo.Name())
		}
	}
	s.lock.Lock()
	s.cands, s.current = order(cands, current, s.o.Known), current
	s.lock.Unlock()
	return nil
}

// ReadBase reads the version base (as BaseRefs names it) names now and
// makes it the base's current version; the version it replaces stays a
// candidate, so that the images still on it are found. It reads one
// manifest (and for an index its platform images'), where ReadBases reads
// every tag of the base's repository.
func (s *Scanner) ReadBase(ctx context.Context, base string) (BaseVersion, error) {
	idx := -1
	for i, b := range s.bases {
		if b.loc.String() == base {
			idx = i
			break
		}
	}
	if idx < 0 {
		return BaseVersion{}, fmt.Errorf("%s is not a base of this scan", base)
	}
	v, err := s.version(ctx, s.bases[idx].loc)
	if err != nil {
		return BaseVersion{}, err
	}
	s.lock.Lock()
	defer s.lock.Unlock()
	current := append([]*BaseVersion(nil), s.current...)
	current[idx] = &v
	cands := append([]Candidate(nil), s.cands...)
	for _, c := range v.Candidates {
		if !slices.ContainsFunc(cands, func(o Candidate) bool { return o.Ref == c.Ref && o.Digest == c.Digest }) {
			cands = append(cands, c)
		}
	}
	s.cands, s.current = order(cands, current, s.o.Known), current
	return v, nil
}

// order sorts cands so that, among candidates of equal length, Identify
// picks the current version of a base first, then an earlier version of a
// base (known, or read under the base's tag), then the others by name:
// the same image gets the same answer on every walk.
func order(cands []Candidate, current []*BaseVersion, known []Candidate) []Candidate {
	same := func(a, b Candidate) bool { return a.Ref == b.Ref && a.Digest == b.Digest }
	rank := func(c Candidate) int {
		for _, cur := range current {
			if cur != nil && slices.ContainsFunc(cur.Candidates, func(o Candidate) bool { return same(o, c) }) {
				return 0
			}
		}
		if slices.ContainsFunc(known, func(o Candidate) bool { return same(o, c) }) ||
			slices.ContainsFunc(current, func(cur *BaseVersion) bool { return cur != nil && cur.Ref == c.Ref }) {
			return 1
		}
		return 2
	}
	sort.SliceStable(cands, func(i, j int) bool {
		ri, rj := rank(cands[i]), rank(cands[j])
		if ri != rj {
			return ri < rj
		}
		return cands[i].Ref < cands[j].Ref
	})
	return cands
}

// Current returns the current version of each base, in Options.Bases
// order (after ReadBases).
func (s *Scanner) Current() []BaseVersion {
	s.lock.RLock()
	defer s.lock.RUnlock()
	out := make([]BaseVersion, 0, len(s.current))
	for _, c := range s.current {
		if c != nil {
			out = append(out, *c)
		}
	}
	return out
}

// BaseRefs returns each base as its findings' To names it
// ("host/base:2"), in Options.Bases order.
func (s *Scanner) BaseRefs() []string {
	out := make([]string, len(s.bases))
	for i, b := range s.bases {
		out[i] = b.loc.String()
	}
	return out
}

// Repositories lists the repositories a Walk reads: Options.Repos, else
// the catalog's.
func (s *Scanner) Repositories(ctx context.Context) ([]string, error) {
	if len(s.repos) > 0 {
		var out []string
		for _, rp := range s.repos {
			out = append(out, rp.Name())
		}
		return out, nil
	}
	names, err := s.client.Catalog(ctx, s.o.Registry)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = s.o.Registry + "/" + n
	}
	return out, nil
}

// Walk reads every tag of every repository (Options.Repos, else the
// catalog's) but the bases' own, and returns a finding per image, sorted
// by image. An image that cannot be read is a finding with a Reason; a
// repository whose tags cannot be listed fails the walk.
func (s *Scanner) Walk(ctx context.Context) ([]Finding, error) {
	repos := s.repos
	if len(repos) == 0 {
		names, err := s.client.Catalog(ctx, s.o.Registry)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			rp, err := s.client.Repository(s.o.Registry, n, false)
			if err != nil {
				return nil, err
			}
			repos = append(repos, rp)
		}
	}
	return s.walk(ctx, repos)
}

// WalkRepos is Walk over the named repositories ("repo" or
// "host/repo"), e.g. one a push event names.
func (s *Scanner) WalkRepos(ctx context.Context, names []string) ([]Finding, error) {
	var repos []*registry.Repo
	for _, n := range names {
		rp, err := s.repository(n)
		if err != nil {
			return nil, err
		}
		repos = append(repos, rp)
	}
	return s.walk(ctx, repos)
}

// repository resolves "repo" or "host/repo" in the walked registry.
func (s *Scanner) repository(name string) (*registry.Repo, error) {
	name = strings.TrimPrefix(name, s.o.Registry+"/")
	rp, err := s.client.Repository(s.o.Registry, name, false)
	if err != nil {
		return nil, &ArgError{What: "repository", Err: err}
	}
	return rp, nil
}

func (s *Scanner) walk(ctx context.Context, repos []*registry.Repo) ([]Finding, error) {
	// At most Jobs requests at once; a task takes its slot before it is
	// started, so that goroutines do not pile up on a large registry.
	var mu sync.Mutex
	var found []Finding
	var errs []error
	var wg sync.WaitGroup
	for _, rp := range repos {
		if s.isBaseRepo(rp.Name()) {
			continue
		}
		s.sem <- struct{}{}
		wg.Go(func() {
			tags, err := rp.Tags(ctx)
			<-s.sem
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			for _, t := range tags {
				s.sem <- struct{}{}
				wg.Go(func() {
					defer func() { <-s.sem }()
					fd, keep, err := s.image(ctx, engine.Location{Repo: rp, Tag: t})
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err != nil:
						found = append(found, Finding{Image: rp.Name() + ":" + t, Reason: oneLine(err)})
					case keep:
						found = append(found, fd)
					}
				})
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errs[0]
	}
	sort.Slice(found, func(i, j int) bool { return found[i].Image < found[j].Image })
	return found, nil
}

// Image reads one image (repo as WalkRepos takes it, a tag) and judges
// it; keep is false for an image Options.Bases leaves out, or in a base's
// own repository.
func (s *Scanner) Image(ctx context.Context, repo, tag string) (f Finding, keep bool, err error) {
	rp, err := s.repository(repo)
	if err != nil {
		return Finding{}, false, err
	}
	if s.isBaseRepo(rp.Name()) {
		return Finding{}, false, nil
	}
	return s.image(ctx, engine.Location{Repo: rp, Tag: tag})
}

func (s *Scanner) isBaseRef(ref string) bool {
	for _, b := range s.bases {
		if b.loc.String() == ref {
			return true
		}
	}
	return false
}

func (s *Scanner) isBaseRepo(name string) bool {
	for _, b := range s.bases {
		if b.repo.Name() == name {
			return true
		}
	}
	return false
}

// currentFor returns the current version of the base an image comes
// from, named ref in repository repo: the base given as ref itself, else
// (unless SameTag) the first base of that repository; false when there is
// no such base.
func (s *Scanner) currentFor(repo, ref string) (*Candidate, bool) {
	s.lock.RLock()
	defer s.lock.RUnlock()
	first := -1
	for i, b := range s.bases {
		if b.repo.Name() != repo {
			continue
		}
		if b.loc.String() == ref {
			first = i
			break
		}
		if first < 0 {
			first = i
		}
	}
	if first < 0 || s.o.SameTag && s.bases[first].loc.String() != ref {
		return nil, false
	}
	if s.current[first] == nil {
		return nil, true
	}
	return &s.current[first].Candidates[0], true
}

// read fetches a manifest and, for an index, its platform images'
// descriptors.
func (s *Scanner) read(ctx context.Context, loc engine.Location) (v1.Descriptor, *v1.Manifest, []v1.Descriptor, error) {
	desc, raw, err := loc.Repo.Manifest(ctx, loc.ID())
	if err != nil {
		return desc, nil, nil, err
	}
	kind, _ := manifest.Classify(desc.MediaType, raw)
	switch kind {
	case manifest.KindImage:
		m, err := v1.ParseManifest(bytes.NewReader(raw))
		if err != nil {
			return desc, nil, nil, fmt.Errorf("%s: %w", loc, err)
		}
		return desc, m, nil, nil
	case manifest.KindIndex:
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return desc, nil, nil, fmt.Errorf("%s: %w", loc, err)
		}
		var children []v1.Descriptor
		for _, c := range idx.Manifests {
			if c.Platform != nil && c.Platform.OS != "unknown" && c.Annotations["vnd.docker.reference.type"] == "" {
				children = append(children, c)
			}
		}
		return desc, nil, children, nil
	}
	return desc, nil, nil, &manifest.UnsupportedError{Ref: loc.String(), Kind: kind, MediaType: desc.MediaType}
}

// readConfig reads the config of the image manifest m at loc.
func readConfig(ctx context.Context, loc engine.Location, m *v1.Manifest) (*v1.ConfigFile, error) {
	raw, err := loc.Repo.Blob(ctx, m.Config)
	if err != nil {
		return nil, err
	}
	return manifest.ParseConfig(loc.String(), raw)
}

// version reads one version of a base: itself, or each platform image of
// an index, each with its config (for its diff_ids: images are matched by
// content).
func (s *Scanner) version(ctx context.Context, loc engine.Location) (BaseVersion, error) {
	desc, m, children, err := s.read(ctx, loc)
	if err != nil {
		return BaseVersion{}, err
	}
	v := BaseVersion{Ref: loc.String(), Digest: desc.Digest}
	if m != nil {
		cfg, err := readConfig(ctx, loc, m)
		if err != nil {
			return BaseVersion{}, err
		}
		v.Candidates = []Candidate{{Ref: loc.String(), Repo: loc.Repo.Name(), Digest: desc.Digest, Layers: m.Layers, DiffIDs: cfg.RootFS.DiffIDs}}
		return v, nil
	}
	for _, c := range children {
		child := engine.Location{Repo: loc.Repo, Digest: c.Digest.String()}
		_, cm, _, err := s.read(ctx, child)
		if err != nil {
			return BaseVersion{}, err
		}
		if cm != nil {
			cfg, err := readConfig(ctx, child, cm)
			if err != nil {
				return BaseVersion{}, err
			}
			v.Candidates = append(v.Candidates, Candidate{Ref: loc.String(), Repo: loc.Repo.Name(), Digest: c.Digest, Layers: cm.Layers, DiffIDs: cfg.RootFS.DiffIDs})
		}
	}
	if len(v.Candidates) == 0 {
		return BaseVersion{}, fmt.Errorf("%s: index without platform images", loc)
	}
	return v, nil
}

// image reads one image and judges it; keep is false for an image the
// bases filter leaves out.
func (s *Scanner) image(ctx context.Context, loc engine.Location) (Finding, bool, error) {
	desc, m, children, err := s.read(ctx, loc)
	if err != nil {
		return Finding{}, false, err
	}
	if m == nil {
		if len(children) == 0 {
			return Finding{}, false, fmt.Errorf("%s: index without platform images", loc)
		}
		if _, m, _, err = s.read(ctx, engine.Location{Repo: loc.Repo, Digest: children[0].Digest.String()}); err != nil {
			return Finding{}, false, err
		}
		if m == nil {
			return Finding{}, false, fmt.Errorf("%s: nested index", loc)
		}
	}
	img := Image{Ref: loc.String(), Digest: desc.Digest, Layers: m.Layers, Annotations: m.Annotations}
	s.lock.RLock()
	cands := s.cands
	s.lock.RUnlock()
	// The config (diff_ids, label) is read only when the manifests do not
	// tell: blobs no candidate has, or no base found by them.
	read := false
	config := func() error {
		if read {
			return nil
		}
		read = true
		cfg, err := readConfig(ctx, loc, m)
		if err != nil {
			return err
		}
		label := s.o.Label
		if label == "" {
			label = basedetect.DefaultLabel
		}
		img.DiffIDs, img.Label = cfg.RootFS.DiffIDs, strings.TrimSpace(cfg.Config.Labels[label])
		return nil
	}
	if NeedsConfig(img, cands) {
		if err := config(); err != nil {
			return Finding{}, false, err
		}
	}
	o := Identify(img, cands)
	if s.o.SameTag && o.Method == ByLayers && !s.isBaseRef(o.Name) {
		// The layers show a version of another tag (base:1.2-dev, or
		// base:1.2 that the given tag no longer names): the image is on
		// the given tag only if it names it.
		cands = nil
		o = Identify(img, nil)
	}
	if o.Method == "" && !read {
		if err := config(); err != nil {
			return Finding{}, false, err
		}
		o = Identify(img, cands)
	}
	var cur *Candidate
	repo := o.Repo
	switch {
	case o.Method == "":
		if len(s.bases) > 0 {
			return Finding{}, false, nil
		}
	case o.Method == ByLayers:
		cur, _ = s.currentFor(o.Repo, o.Name)
	default:
		nb := s.namedBase(ctx, o.Name, o.Relative)
		repo = nb.repo
		if c, ok := s.currentFor(nb.repo, nb.ref); ok {
			cur = c
		} else if len(s.bases) == 0 {
			cur = nb.c
		} else {
			return Finding{}, false, nil
		}
	}
	if NeedsConfigToJudge(img, o, cur) {
		if err := config(); err != nil {
			return Finding{}, false, err
		}
	}
	return Judge(img, o, repo, cur), true, nil
}

// namedBase resolves a base an image names and reads its current version,
// once per name for the scanner's life.
func (s *Scanner) namedBase(ctx context.Context, name string, relative bool) *namedBase {
	s.mu.Lock()
	nb, ok := s.named[name]
	if !ok {
		nb = &namedBase{}
		s.named[name] = nb
	}
	s.mu.Unlock()
	nb.once.Do(func() {
		reg := ""
		if relative {
			reg = s.o.Registry
		}
		loc, err := s.client.Parse(name, reg, false)
		if err != nil {
			return
		}
		nb.repo, nb.ref = loc.Repo.Name(), loc.String()
		if _, ok := s.currentFor(nb.repo, nb.ref); ok {
			return // a base's current version is already read
		}
		if v, err := s.version(ctx, loc); err == nil {
			nb.c = &v.Candidates[0]
		}
	})
	return nb
}

// oneLine folds a (possibly joined) error into a single line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}
