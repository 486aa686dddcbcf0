package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/image-rebase/image-rebase/internal/engine"
)

// batchPrinter prints a batch as it runs: on a terminal, a progress line
// redrawn in place and the failures as they happen; otherwise one plain line
// per image (text) or one JSON object per line (json); then a summary. It
// keeps counts and the failures only.
type batchPrinter struct {
	f          *batchFlags
	total      int
	out, err   io.Writer
	live       bool // stderr is a terminal: redraw a progress line
	start      time.Time
	counts     map[string]int
	failures   []batchOutcome
	wouldWrite bool
}

func newBatchPrinter(f *batchFlags, total int, stdout, stderr io.Writer) *batchPrinter {
	return &batchPrinter{f: f, total: total, out: stdout, err: stderr, live: f.output == "text" && terminal(stderr) != nil,
		start: time.Now(), counts: map[string]int{}}
}

func (p *batchPrinter) done() int {
	n := 0
	for _, c := range p.counts {
		n += c
	}
	return n
}

func (p *batchPrinter) add(o batchOutcome) {
	p.counts[o.Action]++
	if o.Action == failed {
		o.Result = nil
		p.failures = append(p.failures, o)
	}
	if o.Action == string(engine.WouldRebase) {
		p.wouldWrite = true
	}
	switch {
	case p.f.output == "json":
		encodeJSON(p.out, o, false)
	case p.live:
		if o.Action == failed || p.f.verbose {
			fmt.Fprint(p.err, "\r\033[K")
			p.line(p.err, o)
		}
		fmt.Fprintf(p.err, "\r\033[K[%d/%d] %s", p.done(), p.total, p.countsText())
	default:
		p.line(p.out, o)
	}
}

// line prints one image's outcome.
func (p *batchPrinter) line(w io.Writer, o batchOutcome) {
	switch {
	case o.Action == failed && o.baseFailure != nil:
		fmt.Fprintf(w, "%-12s %s: the base %s could not be read (see the summary); nothing written\n", o.Action, o.Image, o.baseFailure.Ref)
	case o.Action == failed:
		fmt.Fprintf(w, "%-12s %s: %s\n", o.Action, o.Image, o.Error)
	case o.Result != nil && o.Result.Action != engine.UpToDate:
		fmt.Fprintf(w, "%-12s %s  %s → %s  (%s → %s)\n", o.Action, o.Image, short(o.Before.String()), short(o.After.String()), o.OldBase.Ref, o.NewBase.Ref)
	default:
		fmt.Fprintf(w, "%-12s %s\n", o.Action, o.Image)
	}
}

// countsText renders the counts, e.g. "97 rebased, 2 up to date, 1 failed".
func (p *batchPrinter) countsText() string {
	var parts []string
	for _, a := range []string{string(engine.Rebased), string(engine.WouldRebase), string(engine.UpToDate), string(engine.Refused), failed} {
		if n := p.counts[a]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, strings.ReplaceAll(a, "-", " ")))
		}
	}
	if len(parts) == 0 {
		return "starting"
	}
	return strings.Join(parts, ", ")
}

// baseFailure groups the images that failed because one base could not be
// read.
type baseFailure struct {
	ref, err string
	code     int
	images   []string
}

// baseFailures splits the failures into those of an unreadable base,
// grouped per base, and the others.
func (p *batchPrinter) baseFailures() ([]*baseFailure, []batchOutcome) {
	var groups []*baseFailure
	byRef := map[string]*baseFailure{}
	var others []batchOutcome
	for _, o := range p.failures {
		if o.baseFailure == nil {
			others = append(others, o)
			continue
		}
		g, ok := byRef[o.baseFailure.Ref]
		if !ok {
			g = &baseFailure{ref: o.baseFailure.Ref, err: oneLine(o.baseFailure.Err), code: o.ExitCode}
			byRef[g.ref] = g
			groups = append(groups, g)
		}
		g.images = append(g.images, o.Image)
	}
	return groups, others
}

// finish prints the summary and returns the batch's error: nil when no
// image failed.
func (p *batchPrinter) finish() error {
	elapsed := time.Since(p.start)
	bases, others := p.baseFailures()
	if p.f.output == "json" {
		sum := map[string]any{"images": p.total, "seconds": elapsed.Round(time.Millisecond).Seconds(), "failed": len(p.failures)}
		for a, n := range p.counts {
			sum[a] = n
		}
		if len(bases) > 0 {
			var bs []map[string]any
			for _, g := range bases {
				bs = append(bs, map[string]any{"base": g.ref, "error": g.err, "exitCode": g.code, "images": len(g.images)})
			}
			sum["baseReadFailures"] = bs
		}
		encodeJSON(p.out, map[string]any{"summary": sum}, false)
	} else {
		if p.live {
			fmt.Fprint(p.err, "\r\033[K")
		}
		fmt.Fprintf(p.out, "\nsummary: %d images in %s\n", p.total, elapsed.Round(10*time.Millisecond))
		rows := []string{string(engine.Rebased), string(engine.UpToDate), failed}
		if p.f.dryRun || p.f.check {
			rows[0] = string(engine.WouldRebase)
		}
		for _, a := range rows {
			fmt.Fprintf(p.out, "  %-13s %d\n", strings.ReplaceAll(a, "-", " "), p.counts[a])
		}
		if len(p.failures) > 0 {
			fmt.Fprintln(p.out, "failed:")
			for _, g := range bases {
				fmt.Fprintf(p.out, "  the base %s could not be read (exit %d): %s\n", g.ref, g.code, g.err)
				fmt.Fprintf(p.out, "    so %d images were not rebased, nothing written for them: %s\n", len(g.images), strings.Join(g.images, ", "))
			}
			for _, o := range others {
				fmt.Fprintf(p.out, "  %s (exit %d): %s\n", o.Image, o.ExitCode, o.Error)
			}
			fmt.Fprintln(p.out, "run the same command again to finish: images already rebased are skipped as up to date")
		}
	}
	switch {
	case len(p.failures) > 0:
		return errBatchFailed
	case p.f.check && p.wouldWrite:
		return errWouldRebase
	}
	return nil
}
