package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/image-rebase/image-rebase/engine"
	"github.com/image-rebase/image-rebase/platform"
	"github.com/image-rebase/image-rebase/registry"
)

// Main runs the command line with args (without the program name) and
// returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cmd := NewCommand(stdout, stderr)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "image-rebase: %s\n", oneLine(err))
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
	allowCopy bool
	output    string
	insecure  []string
	verbose   bool
	timeout   time.Duration

	backupTag          string
	platforms          []string
	keepOtherPlatforms bool
	keepAttestations   bool
	checkSignatures    bool
}

// NewCommand returns the root command: a single rebase, with the demo
// subcommand.
func NewCommand(stdout, stderr io.Writer) *cobra.Command {
	f := &rebaseFlags{}
	cmd := &cobra.Command{
		Use:   "image-rebase [REGISTRY] IMAGE[:TAG|@DIGEST] --from-base OLD --to-base NEW",
		Short: "Change the base image of a built container image directly in the registry",
		Long: `image-rebase swaps the base layers of an image for those of a newer base and
rewrites its config, directly in the registry: only manifests and configs move,
never layer bytes.

REGISTRY is host[:port] or http(s)://host[:port]; IMAGE, OLD, NEW and -t without
a host are names in that registry. Without REGISTRY, give full references
(host/repo:tag). OLD and NEW may be tags or digests.`,
		Example: `  image-rebase localhost:5000 app:1 --from-base base:1 --to-base base:2
  image-rebase registry.example.com/team/app:1 \
      --from-base registry.example.com/base:1 --to-base registry.example.com/base:2 -t 1-rebased`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.RangeArgs(1, 2)(cmd, args); err != nil {
				return usagef(err.Error() + "; usage: image-rebase [REGISTRY] IMAGE --from-base OLD --to-base NEW")
			}
			return nil
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRebase(cmd.Context(), f, args, stdout, stderr)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef(err.Error()) })
	fl := cmd.Flags()
	fl.StringVar(&f.fromBase, "from-base", "", "the base the image is on now (tag or digest)")
	fl.StringVar(&f.toBase, "to-base", "", "the base to move the image to (tag or digest)")
	fl.StringVarP(&f.tag, "tag", "t", "", "write the result to this tag (or full reference) instead of updating IMAGE in place")
	fl.BoolVar(&f.force, "force", false, "overwrite a target tag that names another image")
	fl.BoolVar(&f.dryRun, "dry-run", false, "print the plan and write nothing")
	fl.BoolVar(&f.allowCopy, "allow-copy", false, "stream a layer registry to registry when the registry refuses to mount it")
	fl.StringVarP(&f.output, "output", "o", "text", "output format: text or json")
	fl.StringVar(&f.backupTag, "backup-tag", "", "before moving a tag, tag the image it named with this template ({tag} is the tag), e.g. {tag}-prev")
	fl.StringArrayVar(&f.platforms, "platform", nil, "rebase only this platform of an index (os/arch[/variant]; repeatable)")
	fl.BoolVar(&f.keepOtherPlatforms, "keep-other-platforms", false, "keep the platforms --platform leaves out unchanged in the new index")
	fl.BoolVar(&f.keepAttestations, "keep-attestations", false, "keep an index's attestation manifests (they describe the old images)")
	fl.BoolVar(&f.checkSignatures, "check-signatures", false, "warn when the rebase invalidates signatures of a single-platform IMAGE (cosign tags, OCI referrers); always done for an index and with -v")
	addConnectionFlags(cmd, &f.insecure, &f.verbose, &f.timeout)
	cmd.AddCommand(newDemoCommand(stdout, stderr))
	return cmd
}

// addConnectionFlags adds the flags every registry-facing command shares.
func addConnectionFlags(cmd *cobra.Command, insecure *[]string, verbose *bool, timeout *time.Duration) {
	fl := cmd.Flags()
	fl.StringSliceVar(insecure, "insecure", nil, "reach this registry (host:port) over plain HTTP or unverified TLS; without a value, every registry named on the command line")
	fl.Lookup("insecure").NoOptDefVal = "*"
	fl.BoolVarP(verbose, "verbose", "v", false, "log every registry request (never credentials) and explain each decision")
	fl.DurationVar(timeout, "timeout", 5*time.Minute, "give up after this long")
}

// classicRegistry splits the REGISTRY argument into host and whether it
// asked for plain HTTP.
func classicRegistry(arg string) (host string, plainHTTP bool, err error) {
	switch {
	case strings.HasPrefix(arg, "http://"):
		host, plainHTTP = strings.TrimPrefix(arg, "http://"), true
	case strings.HasPrefix(arg, "https://"):
		host = strings.TrimPrefix(arg, "https://")
	default:
		host = arg
	}
	host = strings.TrimSuffix(host, "/")
	if !registry.ValidHost(host) {
		return "", false, usagef(fmt.Sprintf("invalid registry %q: want host[:port] or http(s)://host[:port]", arg))
	}
	return host, plainHTTP, nil
}

func runRebase(ctx context.Context, f *rebaseFlags, args []string, stdout, stderr io.Writer) error {
	if f.output != "text" && f.output != "json" {
		return usagef(fmt.Sprintf("invalid --output %q: want text or json", f.output))
	}
	if f.fromBase == "" || f.toBase == "" {
		return usagef("both --from-base and --to-base are required")
	}
	var defaultReg string
	insecure := f.insecure
	if len(args) == 2 {
		host, plain, err := classicRegistry(args[0])
		if err != nil {
			return err
		}
		defaultReg = host
		if plain {
			insecure = append(insecure, host)
		}
		args = args[1:]
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()

	opts := registry.Options{Insecure: insecure}
	if f.verbose {
		opts.Log = stderr
	}
	client := registry.New(opts)
	req, err := buildRequest(client, defaultReg, args[0], f)
	if err != nil {
		return err
	}
	res, err := engine.Rebase(ctx, req)
	if err != nil {
		return err
	}
	return printResult(stdout, f, res)
}

// buildRequest parses every reference before any request is made, so that a
// malformed one fails without touching a registry.
func buildRequest(client *registry.Client, defaultReg, image string, f *rebaseFlags) (engine.Request, error) {
	var req engine.Request
	var err error
	parse := func(what, ref string, write bool) (engine.Location, error) {
		loc, err := client.Parse(ref, defaultReg, write)
		if err != nil {
			return loc, usagef(fmt.Sprintf("%s: %v", what, err))
		}
		return loc, nil
	}
	if req.Image, err = parse("IMAGE", image, !f.dryRun && f.tag == ""); err != nil {
		return req, err
	}
	if req.From, err = parse("--from-base", f.fromBase, false); err != nil {
		return req, err
	}
	if req.To, err = parse("--to-base", f.toBase, false); err != nil {
		return req, err
	}
	req.Target = req.Image
	if f.tag != "" {
		if isBareTag(f.tag) {
			req.Target, err = parse("--tag", req.Image.Repo.Name()+":"+f.tag, !f.dryRun)
		} else {
			req.Target, err = parse("--tag", f.tag, !f.dryRun)
		}
		if err != nil {
			return req, err
		}
		if req.Target.Tag == "" {
			return req, usagef("--tag must name a tag, not a digest")
		}
	}
	req.DryRun, req.Force, req.AllowCopy = f.dryRun, f.force, f.allowCopy
	req.KeepOtherPlatforms, req.KeepAttestations = f.keepOtherPlatforms, f.keepAttestations
	req.CheckSignatures = f.checkSignatures || f.verbose
	if f.backupTag != "" {
		if req.Image.Tag == "" {
			return req, usagef("--backup-tag needs IMAGE named by tag")
		}
		req.BackupTag = strings.ReplaceAll(f.backupTag, "{tag}", req.Image.Tag)
		if _, err := name.NewTag("example.com/x:"+req.BackupTag, name.StrictValidation); err != nil || !isBareTag(req.BackupTag) {
			return req, usagef(fmt.Sprintf("--backup-tag %q does not make a valid tag (%q)", f.backupTag, req.BackupTag))
		}
	}
	for _, s := range f.platforms {
		p, err := platform.Parse(s)
		if err != nil {
			return req, usagef("--platform: " + err.Error())
		}
		req.Platforms = append(req.Platforms, p)
	}
	return req, nil
}

// isBareTag tells a tag ("1.2-rebased") from a reference ("app:1", "host/app").
func isBareTag(s string) bool {
	return !strings.ContainsAny(s, "/:@")
}

func printResult(w io.Writer, f *rebaseFlags, res *engine.Result) error {
	if f.output == "json" {
		if !f.dryRun && !f.verbose {
			res.Plan = nil
			for i := range res.Platforms {
				res.Platforms[i].Plan = nil
			}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
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
