package configmerge

import (
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// FuzzMerge: the merge never panics, keeps every variable only the
// application has, and takes every new-base variable the application did
// not set.
func FuzzMerge(f *testing.F) {
	f.Add("PATH=/bin\nV=1", "PATH=/bin\nV=1\nAPP=x", "PATH=/usr/bin\nV=2")
	f.Add("A=1", "A=2", "")
	f.Add("", "", "N=1")
	f.Add("PATH=/bin", "PATH=/app:/bin", "PATH=/usr/bin")
	f.Add("=x\nA", "A\n=y", "A=")
	f.Fuzz(func(t *testing.T, oldEnv, appEnv, newEnv string) {
		split := func(s string) []string {
			if s == "" {
				return nil
			}
			return strings.Split(s, "\n")
		}
		o := &v1.ConfigFile{Config: v1.Config{Env: split(oldEnv)}}
		a := &v1.ConfigFile{Config: v1.Config{Env: split(appEnv)}}
		n := &v1.ConfigFile{Config: v1.Config{Env: split(newEnv)}}
		r, err := Merge(Input{Old: o, App: a, New: n})
		if err != nil {
			t.Fatal(err)
		}
		got := envMap(r.Config.Env)
		om, am, nm := envMap(o.Config.Env), envMap(a.Config.Env), envMap(n.Config.Env)
		for k, av := range am {
			// A variable the old base did not have is the application's own;
			// one built on an old base value (PATH=/app:$PATH) may follow the
			// new base's part.
			if _, inO := om[k]; !inO && got[k] != av {
				t.Fatalf("the application's own %s=%q became %q", k, av, got[k])
			}
		}
		for k, nv := range nm {
			if _, inA := am[k]; !inA {
				if gv, ok := got[k]; !ok || gv != nv {
					t.Fatalf("the new base's %s=%q became %q", k, nv, gv)
				}
			}
		}
	})
}
