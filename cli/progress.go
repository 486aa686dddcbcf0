package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/image-rebase/image-rebase/engine"
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
		b, _ := json.Marshal(o)
		fmt.Fprintf(p.out, "%s\n", b)
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

// finish prints the summary and returns the batch's error: nil when no
// image failed.
func (p *batchPrinter) finish() error {
	elapsed := time.Since(p.start)
	if p.f.output == "json" {
		sum := map[string]any{"images": p.total, "seconds": elapsed.Round(time.Millisecond).Seconds(), "failed": len(p.failures)}
		for a, n := range p.counts {
			sum[a] = n
		}
		b, _ := json.Marshal(map[string]any{"summary": sum})
		fmt.Fprintf(p.out, "%s\n", b)
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
			for _, o := range p.failures {
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
