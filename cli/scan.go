package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/image-rebase/image-rebase/basedetect"
	"github.com/image-rebase/image-rebase/engine"
	"github.com/image-rebase/image-rebase/manifest"
	"github.com/image-rebase/image-rebase/registry"
	"github.com/image-rebase/image-rebase/scan"
)

// scanFlags choose what a scan walks and reports; batch --scan shares them.
type scanFlags struct {
	enabled bool // batch --scan
	bases   []string
	repos   []string
	stale   bool
	label   string
	jobs    int
}

func newScanCommand(stdout, stderr io.Writer) *cobra.Command {
	f := &scanFlags{}
	var output string
	var insecure []string
	var verbose bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "scan REGISTRY [--base BASE...] [--repo REPO...] [--stale]",
		Short: "Find the images built on a base, and which are stale",
		Long: `scan walks a registry (its catalog, or the repositories given with --repo, and
every tag of each, page by page) and reports, for each image, the base it is
built on and whether it is stale, i.e. does not start with the current version
of that base.

The base is found by the image's layers against every tag of each --base
repository (longest match), else by its OCI base annotations
(org.opencontainers.image.base.name/.digest), else by the label that names it
(LABEL FROM=base:1, or -l LABEL). --base BASE names the current version
(base:2, or base for base:latest) and keeps only the images on that base;
without --base, an image is stale when the tag its annotation or label names
has moved on.

-o json prints one object per line ("image", "from", "to", "stale", ...), which
batch -f - reads: scan REGISTRY --base base:2 --stale -o json | batch -f -`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("want one REGISTRY; usage: image-rebase scan REGISTRY [--base BASE] [--repo REPO] [--stale]")
			}
			return nil
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return usagef(fmt.Sprintf("invalid --output %q: want text or json", output))
			}
			host, plain, err := classicRegistry(args[0])
			if err != nil {
				return err
			}
			var plainHTTP []string
			if plain {
				plainHTTP = append(plainHTTP, host)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			opts := registry.Options{Insecure: insecure, PlainHTTP: plainHTTP}
			if verbose {
				opts.Log = stderr
			}
			found, err := runScanFor(ctx, registry.New(opts), host, f)
			if err != nil {
				return err
			}
			return printScan(stdout, output, found, f.stale)
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef(err.Error()) })
	fl := cmd.Flags()
	fl.StringArrayVar(&f.bases, "base", nil, "the current version of a base (repeatable): report only images on it, stale when they do not start with it")
	fl.StringArrayVar(&f.repos, "repo", nil, "walk only this repository instead of the catalog (repeatable)")
	fl.BoolVar(&f.stale, "stale", false, "report only stale images")
	fl.StringVarP(&f.label, "label", "l", "", "the label that names an image's base (default FROM)")
	fl.IntVarP(&f.jobs, "jobs", "j", 16, "read this many images at once")
	fl.StringVarP(&output, "output", "o", "text", "output format: text or json (one object per line)")
	addConnectionFlags(cmd, &insecure, &verbose, &timeout)
	return cmd
}

func printScan(w io.Writer, output string, found []scan.Finding, staleOnly bool) error {
	stale := 0
	for _, f := range found {
		if f.Stale {
			stale++
		}
	}
	if output == "json" {
		enc := json.NewEncoder(w)
		for _, f := range found {
			if !staleOnly || f.Stale {
				if err := enc.Encode(f); err != nil {
					return err
				}
			}
		}
		return enc.Encode(map[string]any{"summary": map[string]int{"images": len(found), "stale": stale}})
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tBASE\tFOUND BY\tCURRENT\tSTATE")
	for _, f := range found {
		if staleOnly && !f.Stale {
			continue
		}
		state := "up to date"
		switch {
		case f.Stale:
			state = "stale"
		case f.Reason != "":
			state = "unknown: " + f.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", f.Image, orDash(f.Base), orDash(f.Method), orDash(f.To), state)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d images, %d stale\n", len(found), stale)
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// scanner holds what a scan has read: the candidate bases, and the current
// version of every base an image names (each read once).
type scanner struct {
	client *registry.Client
	reg    string
	f      *scanFlags
	sem    chan struct{}

	cands   []scan.Candidate
	current map[string]*scan.Candidate // repository → current version (--base)

	mu    sync.Mutex
	named map[string]*namedBase // base named by an image → its current version
}

type namedBase struct {
	once sync.Once
	c    *scan.Candidate
	repo string
}

// runScanFor walks the registry as f says and returns a finding per image,
// sorted by image.
func runScanFor(ctx context.Context, client *registry.Client, reg string, f *scanFlags) ([]scan.Finding, error) {
	s := &scanner{client: client, reg: reg, f: f, sem: make(chan struct{}, max(f.jobs, 1)), current: map[string]*scan.Candidate{}, named: map[string]*namedBase{}}
	if len(f.repos) == 0 {
		if err := client.CatalogScope(reg); err != nil {
			return nil, usagef(err.Error())
		}
	}
	type baseArg struct {
		repo *registry.Repo
		loc  engine.Location
	}
	var bases []baseArg
	for _, b := range f.bases {
		loc, err := client.Parse(b, reg, false)
		if err != nil {
			return nil, usagef(fmt.Sprintf("--base: %v", err))
		}
		bases = append(bases, baseArg{repo: loc.Repo.(*registry.Repo), loc: loc})
	}
	var repos []*registry.Repo
	for _, r := range f.repos {
		rp, err := client.Repository(reg, r, false)
		if err != nil {
			return nil, usagef(fmt.Sprintf("--repo: %v", err))
		}
		repos = append(repos, rp)
	}

	// The candidates: every tag of each --base repository.
	for _, b := range bases {
		tags, err := b.repo.Tags(ctx)
		if err != nil {
			return nil, err
		}
		ids := tags
		if b.loc.Digest != "" {
			ids = append(ids, b.loc.Digest)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		var errs []error
		for _, id := range ids {
			loc := engine.Location{Repo: b.repo, Tag: id}
			if strings.Contains(id, ":") {
				loc = engine.Location{Repo: b.repo, Digest: id}
			}
			wg.Go(func() {
				s.sem <- struct{}{}
				cs, err := s.candidates(ctx, loc)
				<-s.sem
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				s.cands = append(s.cands, cs...)
				if id == b.loc.ID() && len(cs) > 0 {
					s.current[b.repo.Name()] = &cs[0]
				}
			})
		}
		wg.Wait()
		if err := firstErr(errs); err != nil {
			return nil, err
		}
		if s.current[b.repo.Name()] == nil {
			return nil, fmt.Errorf("--base %s: not found among the tags of %s", b.loc, b.repo.Name())
		}
	}

	if len(repos) == 0 {
		names, err := client.Catalog(ctx, reg)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			rp, err := client.Repository(reg, n, false)
			if err != nil {
				return nil, err
			}
			repos = append(repos, rp)
		}
	}

	// At most -j requests at once; a task takes its slot before it is
	// started, so that goroutines do not pile up on a large registry.
	var mu sync.Mutex
	var found []scan.Finding
	var errs []error
	var wg sync.WaitGroup
	for _, rp := range repos {
		if s.current[rp.Name()] != nil {
			continue // a base's own repository
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
						found = append(found, scan.Finding{Image: rp.Name() + ":" + t, Reason: oneLine(err)})
					case keep:
						found = append(found, fd)
					}
				})
			}
		})
	}
	wg.Wait()
	if err := firstErr(errs); err != nil {
		return nil, err
	}
	sort.Slice(found, func(i, j int) bool { return found[i].Image < found[j].Image })
	return found, nil
}

func firstErr(errs []error) error {
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// read fetches a manifest and, for an index, its first platform image's.
func (s *scanner) read(ctx context.Context, loc engine.Location) (v1.Descriptor, *v1.Manifest, []v1.Descriptor, error) {
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

// candidates reads one version of a base: itself, or each platform image of
// an index, each with its config (for its diff_ids: images are matched by
// content).
func (s *scanner) candidates(ctx context.Context, loc engine.Location) ([]scan.Candidate, error) {
	desc, m, children, err := s.read(ctx, loc)
	if err != nil {
		return nil, err
	}
	if m != nil {
		cfg, err := readConfig(ctx, loc, m)
		if err != nil {
			return nil, err
		}
		return []scan.Candidate{{Ref: loc.String(), Repo: loc.Repo.Name(), Digest: desc.Digest, Layers: m.Layers, DiffIDs: cfg.RootFS.DiffIDs}}, nil
	}
	var out []scan.Candidate
	for _, c := range children {
		child := engine.Location{Repo: loc.Repo, Digest: c.Digest.String()}
		_, cm, _, err := s.read(ctx, child)
		if err != nil {
			return nil, err
		}
		if cm != nil {
			cfg, err := readConfig(ctx, child, cm)
			if err != nil {
				return nil, err
			}
			out = append(out, scan.Candidate{Ref: loc.String(), Repo: loc.Repo.Name(), Digest: c.Digest, Layers: cm.Layers, DiffIDs: cfg.RootFS.DiffIDs})
		}
	}
	return out, nil
}

// readConfig reads the config of the image manifest m at loc.
func readConfig(ctx context.Context, loc engine.Location, m *v1.Manifest) (*v1.ConfigFile, error) {
	raw, err := loc.Repo.Blob(ctx, m.Config)
	if err != nil {
		return nil, err
	}
	return manifest.ParseConfig(loc.String(), raw)
}

// image reads one image and judges it; keep is false for an image the
// --base filter leaves out.
func (s *scanner) image(ctx context.Context, loc engine.Location) (scan.Finding, bool, error) {
	desc, m, children, err := s.read(ctx, loc)
	if err != nil {
		return scan.Finding{}, false, err
	}
	if m == nil {
		if len(children) == 0 {
			return scan.Finding{}, false, fmt.Errorf("%s: index without platform images", loc)
		}
		if _, m, _, err = s.read(ctx, engine.Location{Repo: loc.Repo, Digest: children[0].Digest.String()}); err != nil {
			return scan.Finding{}, false, err
		}
		if m == nil {
			return scan.Finding{}, false, fmt.Errorf("%s: nested index", loc)
		}
	}
	img := scan.Image{Ref: loc.String(), Digest: desc.Digest, Layers: m.Layers, Annotations: m.Annotations}
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
		label := s.f.label
		if label == "" {
			label = basedetect.DefaultLabel
		}
		img.DiffIDs, img.Label = cfg.RootFS.DiffIDs, strings.TrimSpace(cfg.Config.Labels[label])
		return nil
	}
	if scan.NeedsConfig(img, s.cands) {
		if err := config(); err != nil {
			return scan.Finding{}, false, err
		}
	}
	o := scan.Identify(img, s.cands)
	if o.Method == "" && !read {
		if err := config(); err != nil {
			return scan.Finding{}, false, err
		}
		o = scan.Identify(img, s.cands)
	}
	var cur *scan.Candidate
	repo := o.Repo
	switch {
	case o.Method == ByNone:
	case o.Method == scan.ByLayers:
		cur = s.current[o.Repo]
	default:
		nb := s.namedBase(ctx, o.Name, o.Relative)
		repo = nb.repo
		if c, ok := s.current[nb.repo]; ok {
			cur = c
		} else if len(s.f.bases) == 0 {
			cur = nb.c
		} else {
			return scan.Finding{}, false, nil
		}
	}
	if o.Method == ByNone && len(s.f.bases) > 0 {
		return scan.Finding{}, false, nil
	}
	if scan.NeedsConfigToJudge(img, o, cur) {
		if err := config(); err != nil {
			return scan.Finding{}, false, err
		}
	}
	return scan.Judge(img, o, repo, cur), true, nil
}

// ByNone is the method of an image whose base was not found.
const ByNone = ""

// namedBase resolves a base an image names and reads its current version,
// once per name for the whole scan.
func (s *scanner) namedBase(ctx context.Context, name string, relative bool) *namedBase {
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
			reg = s.reg
		}
		loc, err := s.client.Parse(name, reg, false)
		if err != nil {
			return
		}
		nb.repo = loc.Repo.Name()
		cs, err := s.candidates(ctx, loc)
		if err == nil && len(cs) > 0 {
			nb.c = &cs[0]
		}
	})
	return nb
}
