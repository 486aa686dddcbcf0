package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestRunRebasesTheSampleApp(t *testing.T) {
	var out bytes.Buffer
	if err := Run(context.Background(), &out); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	got := out.String()
	_, after, ok := strings.Cut(got, "\nafter:\n")
	if !ok {
		t.Fatalf("no after section:\n%s", got)
	}
	for _, want := range []string{"etc/os-release (VERSION_ID=1.1 (fixed))", "app/server (the application)", "BASE_VERSION=2.0", "APP_MODE=production", `["/app/server"]`} {
		if !strings.Contains(after, want) {
			t.Errorf("after the rebase, want %q in:\n%s", want, after)
		}
	}
	if !strings.Contains(got, "3 layers mounted, 0 copied") || !strings.HasSuffix(got, "up-to-date: nothing written\n") {
		t.Errorf("unexpected demo output:\n%s", got)
	}
}
