package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/image-rebase/image-rebase/internal/engine"
)

func TestProgressLineOnATerminal(t *testing.T) {
	var out, errb bytes.Buffer
	f := &batchFlags{}
	f.output = "text"
	p := newBatchPrinter(f, 3, &out, &errb)
	p.live = true // as when stderr is a terminal
	p.add(batchOutcome{Image: "r/a:1", Action: string(engine.Rebased), Result: &engine.Result{Action: engine.Rebased}})
	p.add(batchOutcome{Image: "r/a:2", Action: failed, Error: "boom", ExitCode: 3})
	p.add(batchOutcome{Image: "r/a:3", Action: string(engine.UpToDate), Result: &engine.Result{Action: engine.UpToDate}})
	err := p.finish()
	if !errors.Is(err, errBatchFailed) {
		t.Errorf("finish = %v, want errBatchFailed", err)
	}
	live := errb.String()
	for _, want := range []string{"\r\033[K[1/3] 1 rebased", "\r\033[Kfailed       r/a:2: boom\n", "[3/3] 1 rebased, 1 up to date, 1 failed"} {
		if !strings.Contains(live, want) {
			t.Errorf("terminal output lacks %q:\n%q", want, live)
		}
	}
	if strings.Contains(live, "r/a:1") {
		t.Error("successes are listed on a terminal without -v")
	}
	if s := out.String(); !strings.Contains(s, "rebased       1") || !strings.Contains(s, "r/a:2 (exit 3): boom") || strings.Contains(s, "r/a:3") {
		t.Errorf("summary:\n%s", s)
	}
}
