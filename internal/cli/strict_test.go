package cli_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestStrictRefusesOnWarnings: a plan with a warning (the image's value
// embeds the old base's V=1) is refused under --strict, with the warnings in
// the output and nothing written; without --strict it is rebased and warns.
func TestStrictRefusesOnWarnings(t *testing.T) {
	reg := startRegistry(t)
	b1 := image(t, nil, "amd64", "V=1", map[string]string{"os": "one"})
	reg.Push(t, "base:1", b1)
	reg.Push(t, "base:2", image(t, nil, "amd64", "V=2", map[string]string{"os": "two"}))
	reg.Push(t, "app:1", image(t, b1, "amd64", "MSG=built on 1", map[string]string{"app": "app"}))
	before := reg.Snapshot(t)
	args := []string{"http://" + reg.Host, "app:1", "--from-base", "base:1", "--to-base", "base:2"}

	code, out, stderr := run(t, append(args, "--strict", "-o", "json")...)
	if code != 4 || !strings.Contains(stderr, "--strict") {
		t.Fatalf("--strict: exit %d, stderr %s", code, stderr)
	}
	var res struct {
		Action   string
		Warnings []struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out)
	}
	if res.Action != "refused" || len(res.Warnings) != 1 || res.Warnings[0].Code != "old-base-value-embedded" {
		t.Fatalf("result %+v", res)
	}

	code, out, _ = run(t, append(args, "--strict", "--dry-run")...)
	for _, want := range []string{"Env V: inherited, 1 → 2", "warning: the image's MSG=built on 1 contains \"1\""} {
		if !strings.Contains(out, want) {
			t.Errorf("--strict --dry-run output lacks %q:\n%s", want, out)
		}
	}
	if code != 4 {
		t.Errorf("--strict --dry-run: exit %d", code)
	}
	if after := reg.Snapshot(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a refused rebase wrote: %v → %v", before, after)
	}

	code, out, stderr = run(t, args...)
	if code != 0 || !strings.Contains(out, "warning: the image's MSG") || !strings.Contains(out, "rebased") {
		t.Fatalf("without --strict: exit %d\n%s%s", code, out, stderr)
	}
}
