package registry

import (
	"strings"
	"testing"
)

// FuzzParse: parsing a reference never panics, and a parsed reference
// renders to a string that parses to the same location.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"app", "app:1", "host:5000/team/app:1.2", "host/app@sha256:" + zeros, "localhost/a/b/c:latest", "UPPER:1", "a::b", "@sha256:", "h/app:tag@sha256:" + zeros} {
		f.Add(s, "")
		f.Add(s, "reg.example.com:5000")
	}
	f.Fuzz(func(t *testing.T, ref, defaultRegistry string) {
		c := New(Options{})
		loc, err := c.Parse(ref, defaultRegistry, false)
		if err != nil {
			return
		}
		// Only a host that reads as one (a dot, a port, localhost) survives
		// being printed without its context.
		if reg := loc.Repo.(*Repo).Registry(); !strings.ContainsAny(reg, ".:") && reg != "localhost" {
			return
		}
		again, err := c.Parse(loc.String(), "", false)
		if err != nil {
			t.Fatalf("%q parsed to %q, which does not parse: %v", ref, loc.String(), err)
		}
		if again.String() != loc.String() {
			t.Fatalf("%q → %q → %q", ref, loc.String(), again.String())
		}
	})
}

const zeros = "0000000000000000000000000000000000000000000000000000000000000000"
