package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/image-rebase/image-rebase/internal/basedetect"
	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/locate"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/version"
)

// Main runs the command line with args (without the program name) and
// returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cmd := NewCommand(stdout, stderr)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	switch {
	case err == nil, errors.Is(err, errWouldRebase):
	case errors.Is(err, errBatchFailed):
		// Each image's failure was reported, with what was written.
		fmt.Fprintf(stderr, "image-rebase: %s\n", oneLine(err))
	default:
		fmt.Fprintf(stderr, "image-rebase: %s\n", failureLine(err))
	}
	return exitCode(err)
}

// rebaseFlags are the flags of a single rebase.
type rebaseFlags struct {
	fromBase  string
	toBase    string
	tag       string
	force     bool
	dryRun    bool
	strict    bool
	allowCopy bool
	output    string
	insecure  []string
	verbose   bool
	timeout   time.Duration

	label     string
	layers    int
	check     bool
	backupTag string

	platforms          []string
	keepOtherPlatforms bool
	keepAttestations   bool
	checkSignatures    bool
	keepLabel          bool
}

// NewCommand returns the root command: a single rebase, with the demo
// subcommand.
func NewCommand(stdout, stderr io.Writer) *cobra.Command {
	f := &rebaseFlags{}
	cmd := &cobra.Command{
		Use:   "image-rebase [REGISTRY] IMAGE[:TAG|@DIGEST] [--from-base OLD --to-base NEW | --layers N --to-base NEW | --to-base NEW | -l LABEL]",
		Short: "Change the base image of a built container image directly in the registry",
		Long: `image-rebase swaps the base layers of an image for those of a newer base and
rewrites its config, directly in the registry: only manifests and configs move,
never layer bytes.

REGISTRY is host[:port] or http(s)://host[:port]; IMAGE, OLD, NEW and -t without
a host are names in that registry. Without REGISTRY, give full references
(host/repo:tag). OLD and NEW may be tags or digests.

Without --from-base the old base is found from the image itself (see
docs/base-detection.md), by precedence: --layers N (the image's top N history
entries are its own), the label that names the base (LABEL FROM=base:1 right
after FROM; -l names another label), the OCI base annotations
(org.opencontainers.image.base.name and .digest), and, with --to-base alone,
NEW's history matched against the image's. IMAGE alone rebases onto the
current image of the base it names, or says it is up to date.

Any of IMAGE, OLD, NEW and -t may also name local storage, mixed freely with
registries: oci:DIR[:TAG] (OCI image layout), oci-archive:FILE[:TAG] and
docker-archive:FILE[:NAME:TAG] (docker save / docker load). Layers missing
from a local target are copied there.`,
		Example: `  image-rebase localhost:5000 app:1                   # the base the image names (label FROM, annotations)
  image-rebase localhost:5000 app:1 --check           # exit 0 up to date, 10 a rebase is due
  image-rebase localhost:5000 app:1 --layers 3 --to-base base:2
  image-rebase localhost:5000 app:1 --from-base base:1 --to-base base:2
  image-rebase registry.example.com/team/app:1 \
      --from-base registry.example.com/base:1 --to-base registry.example.com/base:2 -t 1-rebased
  image-rebase oci:build/layout:app --from-base oci:build/layout:base-1 \
      --to-base registry.example.com/base:2 -t registry.example.com/team/app:1 --allow-copy`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.RangeArgs(1, 2)(cmd, args); err != nil {
				return usagef(err.Error() + "; usage: image-rebase [REGISTRY] IMAGE [--from-base OLD] [--to-base NEW] [--layers N] [-l LABEL]")
			}
			return nil
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		// Every command refuses empty values and durations that are not
		// positive: an unset variable in a script must not change the
		// meaning of the command.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return checkFlagValues(cmd) },
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRebase(cmd.Context(), f, cmd.Flags().Changed, args, stdout, stderr)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef(err.Error()) })
	fl := cmd.Flags()
	addRebaseFlags(cmd, f)
	fl.StringVarP(&f.tag, "tag", "t", "", "write the result to this tag (or full reference) instead of updating IMAGE in place")
	fl.BoolVar(&f.force, "force", false, "overwrite a target tag that names another image")
	fl.BoolVar(&f.dryRun, "dry-run", false, "print the plan and write nothing")
	fl.BoolVar(&f.check, "check", false, "write nothing; exit 0 when up to date, 10 when a rebase is due (for CI)")
	fl.StringVarP(&f.output, "output", "o", "text", "output format: text or json")
	fl.BoolVar(&f.checkSignatures, "check-signatures", false, "warn when the rebase invalidates signatures of a single-platform IMAGE (cosign tags, OCI referrers); always done for an index and with -v")
	addConnectionFlags(cmd, &f.insecure, &f.verbose, &f.timeout)
	cmd.AddCommand(newDemoCommand(stdout, stderr), newBatchCommand(stdout, stderr), newScanCommand(stdout, stderr))
	cmd.AddCommand(newGitOpsCommand(stdout, stderr), newWatchCommand(stdout, stderr), newVersionCommand(stdout))
	for _, c := range cmd.Commands() {
		switch c.Name() {
		case "gitops":
			registerCompletions(c, nil) // directories and files
		default:
			registerCompletions(c, noFiles)
		}
	}
	registerCompletions(cmd, func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) >= 2 {
			return noFiles(c, args, toComplete)
		}
		return completeReference(c, args, toComplete)
	})
	// --version prints what the version command prints.
	cmd.Version = version.String()
	cmd.SetVersionTemplate(version.Get().String() + "\n")
	return cmd
}

// addRebaseFlags adds the flags that say how an image is rebased, shared by
// the single command and batch.
func addRebaseFlags(cmd *cobra.Command, f *rebaseFlags) {
	fl := cmd.Flags()
	fl.StringVar(&f.fromBase, "from-base", "", "the base the image is on now (tag or digest); default: found from the image")
	fl.StringVar(&f.toBase, "to-base", "", "the base to move the image to (tag or digest)")
	fl.StringVarP(&f.label, "label", "l", "", "the label that names the image's base (default FROM, used when present)")
	fl.IntVar(&f.layers, "layers", 0, "keep the image's top N history entries (as docker history lists them, empty-layer ones included) and put --to-base under them")
	fl.BoolVar(&f.strict, "strict", false, "refuse (exit 4, nothing written) when the plan has any warning")
	fl.BoolVar(&f.allowCopy, "allow-copy", false, "copy a layer the target registry cannot mount: stream it registry to registry, or upload it from a local layout or archive")
	fl.StringVar(&f.backupTag, "backup-tag", "", "before moving a tag, tag the image it named with this template ({tag} is the tag), e.g. {tag}-prev")
	fl.StringArrayVar(&f.platforms, "platform", nil, "rebase only this platform of an index (os/arch[/variant]; repeatable)")
	fl.BoolVar(&f.keepOtherPlatforms, "keep-other-platforms", false, "keep the platforms --platform leaves out unchanged in the new index")
	fl.BoolVar(&f.keepAttestations, "keep-attestations", false, "keep the attestation manifests of the images the rebase replaces, detached from them (they describe the old images)")
	fl.BoolVar(&f.keepLabel, "keep-label", false, "keep the label that names the base (FROM) when the rebase moves the image off that base; by default it is set to --to-base")
}

// addConnectionFlags adds the flags every registry-facing command shares.
func addConnectionFlags(cmd *cobra.Command, insecure *[]string, verbose *bool, timeout *time.Duration) {
	fl := cmd.Flags()
	fl.StringSliceVar(insecure, "insecure", nil, "reach this registry (host:port) over plain HTTP or unverified TLS; without a value, every registry named on the command line")
	fl.Lookup("insecure").NoOptDefVal = "*"
	fl.BoolVarP(verbose, "verbose", "v", false, "log every registry request (never credentials) and explain each decision")
	fl.DurationVar(timeout, "timeout", 5*time.Minute, "give up after this long")
}

// checkFlagValues refuses, for the flags given on the command line, an
// empty value (-t "" would otherwise mean no -t, and rebase the image's
// own tag in place), a --timeout that is not positive, and a negative
// duration.
func checkFlagValues(cmd *cobra.Command) error {
	var err error
	cmd.Flags().Visit(func(fl *pflag.Flag) {
		if err != nil {
			return
		}
		name := "--" + fl.Name
		if fl.Shorthand != "" {
			name = "-" + fl.Shorthand + "/" + name
		}
		switch fl.Value.Type() {
		case "string":
			if fl.Value.String() == "" {
				err = usagef(fmt.Sprintf("%s: empty value (an unset variable?): give a value, or leave the flag out", name))
			}
		case "stringArray", "stringSlice":
			if sv, ok := fl.Value.(pflag.SliceValue); ok && slices.Contains(sv.GetSlice(), "") {
				err = usagef(fmt.Sprintf("%s: empty value (an unset variable?): give a value, or leave the flag out", name))
			}
		case "duration":
			d, _ := time.ParseDuration(fl.Value.String())
			switch {
			case d < 0:
				err = usagef(fmt.Sprintf("%s %s: a duration cannot be negative", name, fl.Value))
			case d == 0 && fl.Name == "timeout":
				err = usagef(fmt.Sprintf("%s %s: want a positive duration, e.g. 10m", name, fl.Value))
			}
		}
	})
	return err
}

// classicRegistry splits the REGISTRY argument into host and whether it
// asked for plain HTTP.
func classicRegistry(arg string) (host string, plainHTTP bool, err error) {
	host, plainHTTP, err = registry.ParseRegistry(arg)
	if err != nil {
		return "", false, usagef(err.Error())
	}
	return host, plainHTTP, nil
}

// checkModeFlags refuses combinations of the flags that choose how the old
// base is found.
func checkModeFlags(f *rebaseFlags, changed func(string) bool) error {
	switch {
	case changed("layers") && f.layers < 1:
		return usagef(fmt.Sprintf("--layers %d: N must be at least 1", f.layers))
	case f.fromBase != "" && changed("layers"):
		return usagef("--from-base and --layers are mutually exclusive: --from-base names the old base, --layers counts the image's own entries")
	case f.fromBase != "" && changed("label"):
		return usagef("--from-base and -l/--label are mutually exclusive: --from-base names the old base, -l finds it from a label")
	case changed("layers") && changed("label"):
		return usagef("--layers and -l/--label are mutually exclusive")
	case changed("layers") && f.toBase == "":
		return usagef("--layers N needs --to-base NEW, the base to put under the image's top N history entries")
	case f.fromBase != "" && f.toBase == "":
		return usagef("--from-base needs --to-base NEW")
	case changed("label") && f.label == "":
		return usagef("-l/--label needs a label name")
	}
	return nil
}

func runRebase(ctx context.Context, f *rebaseFlags, cmdFlags func(string) bool, args []string, stdout, stderr io.Writer) error {
	if f.output != "text" && f.output != "json" {
		return usagef(fmt.Sprintf("invalid --output %q: want text or json", f.output))
	}
	if err := checkModeFlags(f, cmdFlags); err != nil {
		return err
	}
	var defaultReg string
	var plainHTTP []string
	if len(args) == 2 {
		host, plain, err := classicRegistry(args[0])
		if err != nil {
			return err
		}
		defaultReg = host
		if plain {
			plainHTTP = append(plainHTTP, host)
		}
		args = args[1:]
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()

	opts := registry.Options{Insecure: f.insecure, PlainHTTP: plainHTTP}
	if f.verbose {
		opts.Log = stderr
	}
	client := registry.New(opts)
	refs := &locate.Resolver{Registry: client, DefaultRegistry: defaultReg, Progress: terminal(stderr)}
	defer refs.Close()
	req, err := buildRequest(refs, args[0], f)
	if err != nil {
		return err
	}
	res, err := engine.Rebase(ctx, req)
	if err != nil {
		if res != nil && res.Action == engine.Refused {
			// --strict: show the plan's warnings, then fail.
			if perr := printResult(stdout, f, res); perr != nil {
				return perr
			}
		}
		return err
	}
	if err := printResult(stdout, f, res); err != nil {
		return err
	}
	if f.check && res.Action == engine.WouldRebase {
		return errWouldRebase
	}
	return nil
}

// buildRequest parses every reference before any request is made, so that a
// malformed one fails without touching a registry.
func buildRequest(refs *locate.Resolver, image string, f *rebaseFlags) (engine.Request, error) {
	req, err := refs.Request(locate.Spec{
		Image: image, From: f.fromBase, To: f.toBase, Target: f.tag, Label: f.label, Layers: f.layers,
		BackupTag: f.backupTag, Platforms: f.platforms,
		DryRun: f.dryRun || f.check, Strict: f.strict, Force: f.force, AllowCopy: f.allowCopy,
		KeepOtherPlatforms: f.keepOtherPlatforms, KeepAttestations: f.keepAttestations, KeepLabel: f.keepLabel,
		CheckSignatures: f.checkSignatures || f.verbose,
	})
	var se *locate.SpecError
	if errors.As(err, &se) {
		return req, usagef(fmt.Sprintf("%s: %v", specFlags[se.Field], se.Err))
	}
	return req, err
}

// specFlags name the fields of a locate.Spec as the command line does.
var specFlags = map[string]string{
	"Image": "IMAGE", "From": "--from-base", "To": "--to-base", "Target": "--tag", "Label": "-l/--label",
	"Layers": "--layers", "BackupTag": "--backup-tag", "Platforms": "--platform",
}

// terminal returns w when it is a terminal (for progress lines), else nil.
func terminal(w io.Writer) io.Writer {
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return w
}

func printResult(w io.Writer, f *rebaseFlags, res *engine.Result) error {
	if f.output == "json" {
		if !f.dryRun && !f.verbose {
			res.Plan = nil
			for i := range res.Platforms {
				res.Platforms[i].Plan = nil
			}
		}
		return encodeJSON(w, res, true)
	}
	explain := f.dryRun || f.verbose
	switch {
	case explain && res.Plan != nil:
		res.Plan.Explain(w)
	case explain:
		for _, p := range res.Platforms {
			fmt.Fprintf(w, "platform %s:\n", p.Platform)
			p.Plan.Explain(w)
		}
	}
	warnings := res.Warnings
	if explain && res.Plan != nil {
		// The plan's own warnings were explained; the rest (signatures) follow.
		warnings = warnings[min(len(res.Plan.Warnings), len(warnings)):]
	}
	for _, wn := range warnings {
		fmt.Fprintf(w, "warning: %s\n", wn.Message)
	}
	for _, p := range res.Platforms {
		fmt.Fprintf(w, "  %-14s %s  %s → %s\n", p.Platform, p.Action, p.Before, p.After)
	}
	if d := res.Detection; d != nil {
		printDetection(w, d, explain)
	}
	switch res.Action {
	case engine.UpToDate:
		fmt.Fprintf(w, "%s is up to date: already on %s; nothing written\n", res.Image, res.NewBase.Ref)
	case engine.WouldRebase:
		fmt.Fprintf(w, "dry run: %s would move from %s to %s as %s; nothing written\n", res.Image, res.OldBase.Ref, res.NewBase.Ref, res.After)
	case engine.Rebased:
		fmt.Fprintf(w, "rebased %s from %s to %s\n", res.Image, res.OldBase.Ref, res.NewBase.Ref)
		fmt.Fprintf(w, "  target  %s\n", res.Target)
		fmt.Fprintf(w, "  before  %s\n", res.Before)
		fmt.Fprintf(w, "  after   %s\n", res.After)
		if res.Replaced != nil && *res.Replaced != res.Before {
			fmt.Fprintf(w, "  replaced %s (the tag's previous image)\n", *res.Replaced)
		}
		if res.Backup != "" {
			fmt.Fprintf(w, "  backup  %s (the previous image, kept)\n", res.Backup)
		}
		fmt.Fprintf(w, "  layers  %d mounted, %d copied (%d bytes)\n", res.Transferred.Mounted, res.Transferred.Copied, res.Transferred.CopiedBytes)
	}
	return nil
}

// printDetection says which method found the old base and which old and new
// base digests were used; with explain, the reasons too.
func printDetection(w io.Writer, d *basedetect.Decision, explain bool) {
	by := string(d.Method)
	switch {
	case d.Method == basedetect.ByLabel && d.Label != nil:
		by = fmt.Sprintf("label %s=%s", d.Label.Name, d.Label.Value)
	case d.Method == basedetect.ByAnnotation && d.Annotation != nil:
		by = "annotation " + manifest.BaseNameAnnotation + "=" + d.Annotation.Name
	case d.Method == basedetect.ByCount:
		by = "--layers"
	case d.Method == basedetect.ByHistory:
		by = "history matched against --to-base"
	}
	old := fmt.Sprintf("the image's bottom %d layers (no old base manifest used)", d.Layers)
	if d.OldDigest != (v1.Hash{}) {
		old = fmt.Sprintf("%s, %d layers", d.OldDigest, d.Layers)
	}
	fmt.Fprintf(w, "base found by %s\n", by)
	fmt.Fprintf(w, "  old base  %s, %d history entries\n", old, d.Entries)
	fmt.Fprintf(w, "  new base  %s (%s)\n", d.NewRef, d.NewDigest)
	if explain {
		for _, r := range d.Reasons {
			fmt.Fprintf(w, "  because   %s\n", r)
		}
	}
}
