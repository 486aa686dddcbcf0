package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/imagelist"
	"github.com/image-rebase/image-rebase/internal/locate"
	"github.com/image-rebase/image-rebase/internal/registry"
)

// batchFlags are the flags of the batch command: a single rebase's, and how
// the images are listed and run.
type batchFlags struct {
	rebaseFlags
	registry     string
	files        []string
	allTags      []string
	jobs         int
	recheckAfter time.Duration
	scan         scanFlags
}

// errBatchFailed ends a batch in which some image failed; each failure was
// reported with the image.
var errBatchFailed = errors.New("some images failed")

func newBatchCommand(stdout, stderr io.Writer) *cobra.Command {
	f := &batchFlags{}
	cmd := &cobra.Command{
		Use:   "batch [IMAGE...] [-f FILE] [--all-tags REPO] [--scan] [--from-base OLD] [--to-base NEW]",
		Short: "Rebase many images at once, concurrently, with a summary",
		Long: `batch rebases every image it is given, each as the single command would, sharing
one connection and one credential per registry, each base's documents, and the
mounts of the new base's layers into each repository. Images are independent:
one failure never stops the others. Run it again after a failure: images
already rebased are found up to date with two reads each.

Images come from the arguments, from -f FILE (one reference per line, "-" for
stdin, blank lines and # comments ignored; a JSON line as "scan -o json" prints
it brings its own "from" and "to"), from --all-tags REPO, and from --scan.
The mode flags apply to every image: --from-base OLD --to-base NEW, --to-base
alone, --layers N, -l LABEL, or none (the base each image names).

Exit code: 0 when every image was rebased, up to date or (--dry-run) planned;
1 when any image failed (each failure is in the summary, and in -o json with
its own exit code); 2 for a bad command line; 3 when the list of images
cannot be read (an unreachable registry for --all-tags or --scan); 10 with
--check when no image failed and some rebase is due.`,
		Example: `  image-rebase batch -r localhost:5000 app:1 app:2 other:3 --from-base base:1 --to-base base:2
  image-rebase batch -r localhost:5000 --all-tags app --from-base base:1 --to-base base:2 -j 32
  image-rebase scan localhost:5000 --base base:2 --stale -o json | image-rebase batch -f -`,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBatch(cmd.Context(), f, cmd.Flags().Changed, args, cmd.InOrStdin(), stdout, stderr)
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef(err.Error()) })
	fl := cmd.Flags()
	fl.StringVarP(&f.registry, "registry", "r", "", "the registry (host[:port] or http(s)://host[:port]) of references without a host")
	fl.StringArrayVarP(&f.files, "file", "f", nil, `read image references from FILE, one per line ("-" for stdin; repeatable)`)
	fl.StringArrayVar(&f.allTags, "all-tags", nil, "rebase every tag of this repository (repeatable)")
	fl.BoolVar(&f.scan.enabled, "scan", false, "rebase the images scan finds stale (with --base; --repo limits the walk)")
	fl.StringArrayVar(&f.scan.bases, "base", nil, "with --scan: the current base, as scan --base")
	fl.StringArrayVar(&f.scan.repos, "repo", nil, "with --scan: walk only this repository (repeatable)")
	fl.IntVarP(&f.jobs, "jobs", "j", 32, "rebase this many images at once")
	fl.DurationVar(&f.recheckAfter, "recheck-after", 0, "skip the read of an image's tag just before writing it when the image was read less than this ago (saves a request per image; a push to the tag in that time is overwritten); default 0: every tag is read again, as a single rebase does; see docs/batch.md")
	addRebaseFlags(cmd, &f.rebaseFlags)
	fl.BoolVar(&f.force, "force", false, "write without reading the tags again before writing")
	fl.BoolVar(&f.dryRun, "dry-run", false, "plan every image and write nothing")
	fl.BoolVar(&f.check, "check", false, "write nothing; exit 10 when some rebase is due")
	fl.StringVarP(&f.output, "output", "o", "text", "output format: text (progress and summary) or json (one object per line)")
	addConnectionFlags(cmd, &f.insecure, &f.verbose, &f.timeout)
	fl.Lookup("timeout").DefValue = "30m0s"
	f.timeout = 30 * time.Minute
	return cmd
}

// batchOutcome is one image's result, as printed.
type batchOutcome struct {
	Image  string `json:"image"`
	Action string `json:"action"`
	// Error and ExitCode say why an image failed (ExitCode as the single
	// command would exit).
	Error    string  `json:"error,omitempty"`
	ExitCode int     `json:"exitCode"`
	Seconds  float64 `json:"seconds"`
	*engine.Result

	// baseFailure is set when the image failed because a base the batch
	// shares could not be read.
	baseFailure *engine.BaseReadError
}

// failed is the action of an image whose rebase failed.
const failed = "failed"

func runBatch(ctx context.Context, f *batchFlags, changed func(string) bool, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if f.output != "text" && f.output != "json" {
		return usagef(fmt.Sprintf("invalid --output %q: want text or json", f.output))
	}
	if f.jobs < 1 {
		return usagef(fmt.Sprintf("-j %d: want at least 1", f.jobs))
	}
	if err := checkModeFlags(&f.rebaseFlags, changed); err != nil {
		return err
	}
	if f.scan.enabled && f.registry == "" {
		return usagef("--scan needs -r REGISTRY, the registry to walk")
	}
	if !f.scan.enabled && (len(f.scan.bases) > 0 || len(f.scan.repos) > 0) {
		return usagef("--base and --repo go with --scan")
	}
	var defaultReg string
	var plainHTTP []string
	if f.registry != "" {
		host, plain, err := classicRegistry(f.registry)
		if err != nil {
			return err
		}
		defaultReg = host
		if plain {
			plainHTTP = append(plainHTTP, host)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	// Blob mounts share -j's bound: at most -j in flight across the batch.
	opts := registry.Options{Insecure: f.insecure, PlainHTTP: plainHTTP, Transfers: f.jobs}
	if f.verbose {
		opts.Log = stderr
	}
	client := registry.New(opts)
	refs := &locate.Resolver{Registry: client, DefaultRegistry: defaultReg}
	defer refs.Close()

	items, err := batchItems(ctx, client, defaultReg, f, args, stdin)
	if err != nil {
		return err
	}
	if len(items) == 0 {
		if len(args) == 0 && len(f.files) == 0 && len(f.allTags) == 0 && !f.scan.enabled {
			return usagef("no images: give IMAGE arguments, -f FILE, --all-tags REPO or --scan")
		}
		// An empty list (nothing stale, an empty repository) is nothing to do.
		return newBatchPrinter(f, 0, stdout, stderr).finish()
	}
	// Every reference is parsed before the first request, so that a bad
	// line fails the batch before anything is written, and so that the
	// registry's token covers every repository at once.
	reqs := make([]engine.Request, len(items))
	for i, it := range items {
		if locate.IsLocal(it.Ref) {
			// Layouts and archives are written by one rebase at a time.
			return usagef(fmt.Sprintf("%s: %s is local storage: batch rebases images in registries; rebase it on its own", it.Origin, it.Ref))
		}
		fl := f.rebaseFlags
		if it.From != "" || it.To != "" {
			fl.fromBase, fl.toBase = it.From, it.To
		}
		if reqs[i], err = buildRequest(refs, it.Ref, &fl); err != nil {
			return usagef(fmt.Sprintf("%s: %v", it.Origin, err))
		}
	}

	shared := engine.NewShared()
	shared.RecheckAfter = f.recheckAfter
	out := newBatchPrinter(f, len(reqs), stdout, stderr)
	// On interrupt or --timeout, the images not started yet are reported
	// as such instead of being started to fail.
	shared.RebaseAll(ctx, reqs, f.jobs, func(i int, res *engine.Result, err error, took time.Duration) {
		out.add(outcome(reqs[i], res, err, took))
	})
	return out.finish()
}

// outcome turns a rebase's result into what is printed; the plan is
// dropped, so that memory does not grow with the number of images.
func outcome(req engine.Request, res *engine.Result, err error, d time.Duration) batchOutcome {
	o := batchOutcome{Image: req.Image.String(), Seconds: d.Round(time.Millisecond).Seconds(), Result: res}
	if res != nil {
		res.Plan = nil
		for i := range res.Platforms {
			res.Platforms[i].Plan = nil
		}
		o.Action = string(res.Action)
	}
	if err != nil {
		o.Action, o.Error, o.ExitCode = failed, failureLine(err), exitCode(err)
		var be *engine.BaseReadError
		if errors.As(err, &be) {
			o.baseFailure = be
		}
	}
	return o
}

// batchItems lists the images to rebase, each once, in the order given.
func batchItems(ctx context.Context, client *registry.Client, defaultReg string, f *batchFlags, args []string, stdin io.Reader) ([]imagelist.Item, error) {
	var list imagelist.List
	list.AddArgs(args)
	for _, name := range f.files {
		r := stdin
		if name != "-" {
			file, err := os.Open(name)
			if err != nil {
				return nil, usagef(fmt.Sprintf("-f: %v", err))
			}
			defer file.Close()
			r = file
		}
		if err := list.Read(r, name); err != nil {
			return nil, listError(err)
		}
	}
	for _, repo := range f.allTags {
		if err := list.AddAllTags(ctx, client, defaultReg, repo, !f.dryRun && !f.check); err != nil {
			return nil, listError(err)
		}
	}
	if f.scan.enabled {
		sf := f.scan
		sf.jobs, sf.label = f.jobs, f.label
		found, err := runScanFor(ctx, client, defaultReg, &sf)
		if err != nil {
			return nil, err
		}
		list.AddStale(found)
	}
	return list.Items(), nil
}

// listError makes a list that cannot be read a usage error.
func listError(err error) error {
	var ie *imagelist.InputError
	if errors.As(err, &ie) {
		return usagef(ie.Msg)
	}
	return err
}
