package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/scan"
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
		for _, f := range found {
			if !staleOnly || f.Stale {
				if err := encodeJSON(w, f, false); err != nil {
					return err
				}
			}
		}
		return encodeJSON(w, map[string]any{"summary": map[string]int{"images": len(found), "stale": stale}}, false)
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

// runScanFor walks the registry as f says and returns a finding per image,
// sorted by image.
func runScanFor(ctx context.Context, client *registry.Client, reg string, f *scanFlags) ([]scan.Finding, error) {
	found, err := scan.Run(ctx, client, scan.Options{Registry: reg, Bases: f.bases, Repos: f.repos, Label: f.label, Jobs: f.jobs})
	var ae *scan.ArgError
	if errors.As(err, &ae) {
		if ae.What == "registry" {
			return nil, usagef(ae.Err.Error())
		}
		return nil, usagef(err.Error())
	}
	return found, err
}
