package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/image-rebase/image-rebase/internal/gitops"
	"github.com/image-rebase/image-rebase/internal/registry"
)

// gitopsFlags are the flags of the gitops subcommand.
type gitopsFlags struct {
	fromBase  string
	toBase    string
	label     string
	pinOnly   bool
	dryRun    bool
	strict    bool
	allowCopy bool
	output    string
	markers   []string
	jobs      int
	insecure  []string
	verbose   bool
	timeout   time.Duration
}

func newGitOpsCommand(stdout, stderr io.Writer) *cobra.Command {
	f := &gitopsFlags{}
	cmd := &cobra.Command{
		Use:   "gitops DIR|FILE... [--from-base OLD --to-base NEW | --to-base NEW | -l LABEL | --pin-only]",
		Short: "Rebase the images marked in YAML files and pin them by digest",
		Long: `gitops walks the directories for .yaml and .yml files (hidden directories and
symbolic links skipped) and finds the image references marked with comments:

  repository: registry.example.com/group/app # {"$rebase": "app:name"}
  tag: 2.3.0                                 # {"$rebase": "app:tag"}
  image: registry.example.com/web:1.4        # {"$rebase": "web"}

A digest kept in a field of its own (Kustomize's digest, a chart's
image.digest) is marked ID:digest, a chart's separate registry field
ID:registry. Markers inside Helm values given as a string (helm.values: |)
are read too. --markers rebase,imagepolicy also reads Flux's
{"$imagepolicy": ...} markers, with the same suffixes.

Each marked image is rebased in place (without --from-base, onto the current
image of the base it names; see docs/base-detection.md), and the tag field
becomes TAG@DIGEST (a whole reference REPOSITORY:TAG@DIGEST). Only the values
change: comments, indentation, quoting, key order, line endings and other
documents keep their bytes. Files are written atomically, and only when a
value changes. --pin-only rebases nothing: it pins the digest each tag names.

A file with marker errors is left untouched and reported with file and line;
the others are processed, and the exit code is non-zero at the end.
See docs/gitops.md.`,
		Example: `  image-rebase gitops deploy/                       # rebase onto the bases the images name
  image-rebase gitops deploy/ --dry-run             # print the diff, write nothing
  image-rebase gitops clusters/ --from-base registry.example.com/base:1 --to-base registry.example.com/base:2
  image-rebase gitops charts/app/values.yaml --pin-only`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("gitops needs at least one directory or file; usage: image-rebase gitops DIR...")
			}
			return nil
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGitOps(cmd.Context(), f, args, stdout, stderr)
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef(err.Error()) })
	fl := cmd.Flags()
	fl.StringVar(&f.fromBase, "from-base", "", "the base every marked image is on now (default: found from each image)")
	fl.StringVar(&f.toBase, "to-base", "", "the base to move every marked image to (default: the current image of the base each names)")
	fl.StringVarP(&f.label, "label", "l", "", "the label that names an image's base (default FROM, used when present)")
	fl.BoolVar(&f.pinOnly, "pin-only", false, "rebase nothing: pin the digest each tag names now")
	fl.BoolVar(&f.dryRun, "dry-run", false, "write nothing, to the registry or the files; print the diff of the files")
	fl.BoolVar(&f.strict, "strict", false, "refuse a rebase whose plan has any warning (that image is not pinned)")
	fl.BoolVar(&f.allowCopy, "allow-copy", false, "stream a layer registry to registry when the registry refuses to mount it")
	fl.StringVarP(&f.output, "output", "o", "text", "output format: text or json")
	fl.StringSliceVar(&f.markers, "markers", []string{"rebase"}, `the marker keys to read: rebase ({"$rebase": ...}), imagepolicy (Flux's {"$imagepolicy": ...}), or both`)
	fl.IntVar(&f.jobs, "jobs", 8, "images rebased at the same time")
	addConnectionFlags(cmd, &f.insecure, &f.verbose, &f.timeout)
	return cmd
}

func runGitOps(ctx context.Context, f *gitopsFlags, paths []string, stdout, stderr io.Writer) error {
	switch {
	case f.output != "text" && f.output != "json":
		return usagef(fmt.Sprintf("invalid --output %q: want text or json", f.output))
	case f.pinOnly && (f.fromBase != "" || f.toBase != "" || f.label != "" || f.strict || f.allowCopy):
		return usagef("--pin-only rebases nothing: it takes no --from-base, --to-base, --label, --strict or --allow-copy")
	case f.fromBase != "" && f.toBase == "":
		return usagef("--from-base needs --to-base")
	case f.jobs < 1:
		return usagef(fmt.Sprintf("--jobs %d: must be at least 1", f.jobs))
	}
	markers, err := markerKeys(f.markers)
	if err != nil {
		return usagef(err.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	opts := registry.Options{Insecure: f.insecure}
	if f.verbose {
		opts.Log = stderr
	}
	client := registry.New(opts)
	var resolver gitops.Resolver
	if f.pinOnly {
		resolver = &gitops.Pinner{Parse: client.Parse}
	} else {
		r := &gitops.Rebaser{Parse: client.Parse, Label: f.label, DryRun: f.dryRun, Strict: f.strict, AllowCopy: f.allowCopy}
		if f.fromBase != "" {
			if r.From, err = client.Parse(f.fromBase, "", false); err != nil {
				return usagef("--from-base: " + err.Error())
			}
		}
		if f.toBase != "" {
			if r.To, err = client.Parse(f.toBase, "", false); err != nil {
				return usagef("--to-base: " + err.Error())
			}
		}
		resolver = r
	}
	rep, err := gitops.Run(ctx, paths, gitops.Options{Resolver: resolver, DryRun: f.dryRun, Jobs: f.jobs, Markers: markers})
	if err != nil {
		return usagef(err.Error())
	}
	if f.output == "json" {
		if err := encodeJSON(stdout, rep, true); err != nil {
			return err
		}
	} else {
		printGitOps(stdout, rep, f.dryRun)
	}
	if err := rep.Err(); err != nil {
		return &gitopsError{msg: gitopsSummary(rep), err: err}
	}
	return nil
}

// markerKeys turns the --markers names into marker keys.
func markerKeys(names []string) (gitops.Markers, error) {
	var keys gitops.Markers
	for _, n := range names {
		var k string
		switch strings.TrimSpace(n) {
		case "rebase":
			k = gitops.MarkerKey
		case "imagepolicy":
			k = gitops.ImagePolicyKey
		default:
			return nil, fmt.Errorf("invalid --markers %q: want rebase, imagepolicy, or both (rebase,imagepolicy)", n)
		}
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("--markers is empty: want rebase, imagepolicy, or both")
	}
	return keys, nil
}

// gitopsError summarises a run with errors in one line; the errors it
// wraps (printed per file above) choose the exit code.
type gitopsError struct {
	msg string
	err error
}

func (e *gitopsError) Error() string { return e.msg }
func (e *gitopsError) Unwrap() error { return e.err }

func gitopsSummary(rep *gitops.Report) string {
	files, images := 0, 0
	for _, f := range rep.Files {
		if f.Status == gitops.Failed {
			files++
		}
		for _, im := range f.Images {
			if im.Error != "" {
				images++
			}
		}
	}
	var parts []string
	if files > 0 {
		parts = append(parts, fmt.Sprintf("%d file(s) left untouched", files))
	}
	if images > 0 {
		parts = append(parts, fmt.Sprintf("%d image(s) not pinned", images))
	}
	return "gitops: " + strings.Join(parts, ", ") + " because of errors (see the output)"
}

func printGitOps(w io.Writer, rep *gitops.Report, dryRun bool) {
	counts := map[string]int{}
	for _, f := range rep.Files {
		counts[f.Status]++
		status := map[string]string{
			gitops.Updated:     "updated",
			gitops.WouldUpdate: "would update (dry run)",
			gitops.Unchanged:   "unchanged",
			gitops.Failed:      "left untouched because of errors",
		}[f.Status]
		fmt.Fprintf(w, "%s: %s\n", f.Path, status)
		for _, p := range f.Problems {
			if p.Line > 0 {
				fmt.Fprintf(w, "  error: line %d: %s\n", p.Line, p.Msg)
			} else {
				fmt.Fprintf(w, "  error: %s\n", p.Msg)
			}
		}
		for _, im := range f.Images {
			fmt.Fprintf(w, "  %s (line %d) %s: %s\n", im.ID, im.Line, im.Reference, describeImage(im, len(f.Problems) > 0, dryRun))
		}
		if f.Diff != "" {
			fmt.Fprint(w, f.Diff)
		}
	}
	fmt.Fprintf(w, "%d YAML file(s) scanned, %d with markers: %d %s, %d unchanged, %d failed\n",
		rep.Scanned, len(rep.Files), counts[gitops.Updated]+counts[gitops.WouldUpdate],
		map[bool]string{true: "would be updated", false: "updated"}[dryRun], counts[gitops.Unchanged], counts[gitops.Failed])
}

// describeImage says what became of an image; fileProblems tells that
// the file was left untouched because of its own errors.
func describeImage(im *gitops.ImageReport, fileProblems bool, dryRun bool) string {
	if im.Error != "" {
		return "error: " + oneLine(fmt.Errorf("%s", im.Error)) + "; not pinned"
	}
	var s string
	switch im.Action {
	case "rebased":
		s = fmt.Sprintf("rebased %s → %s", short(im.Before), short(im.After))
	case "would-rebase":
		s = fmt.Sprintf("would rebase %s → %s", short(im.Before), short(im.After))
	case "up-to-date":
		s = "up to date " + short(im.After)
	case "resolved":
		s = "tag names " + short(im.After)
	default:
		s = im.Action + " " + short(im.After)
	}
	switch {
	case fileProblems && im.Action != "":
		return s + "; not pinned (the file was left untouched)"
	case im.Changed && dryRun:
		return s + "; would pin"
	case im.Changed:
		return s + "; pinned"
	}
	return s + "; already pinned"
}

// short abbreviates a digest for text output ("sha256:0123456789ab").
func short(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}
