package configmerge

import (
	"maps"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BaseReplay is a base image's config as far as its own history entries
// tell it.
type BaseReplay struct {
	// Config is the container config the entries build from an empty one.
	Config v1.Config
	// Set holds the keys the entries determine: "Env:NAME",
	// "Labels:KEY", "WorkingDir", "User", "Cmd", "Entrypoint",
	// "ExposedPorts", "Volumes", "StopSignal", "Healthcheck", "Shell".
	Set map[string]bool
}

// ReplayBase replays a base's history entries (the image's entries below
// its application's) from an empty config, as the base's own build did.
// Entries that are not Dockerfile instructions (a root file system added by
// a tool, a blank entry) are skipped: what they set, if anything, is not in
// Set. A builder's defaults that no entry records (BuildKit's default PATH)
// are not known either.
func ReplayBase(hist []v1.History) BaseReplay {
	instrs, _ := parseHistory(hist)
	st := newReplayState(&v1.ConfigFile{})
	for i, in := range instrs {
		if in.cmd == "" {
			continue
		}
		st.apply(in)
		if in.cmd == "ARG" {
			for _, later := range instrs[i+1:] {
				st.learnArgs(later)
			}
		}
	}
	out := BaseReplay{Config: *deepCopy(st.cfg), Set: map[string]bool{}}
	for _, k := range slices.Sorted(maps.Keys(st.setBy)) {
		if !st.isUnknown(k) {
			out.Set[k] = true
		}
	}
	return out
}
