package basedetect

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/manifest"
	"github.com/image-rebase/image-rebase/rebase"
)

// unknown stands for a config value of the old base that cannot be known;
// it differs from any value an image has, so the merge keeps the image's.
const unknown = "\x00unknown"

// derive makes the old base from the image itself (its manifest may be
// gone): its bottom layers, their diff_ids and the history entries below the
// application's. The old base's container config is the image's without
// what the application's own history entries set: a field no instruction
// of the application touched was inherited from the base. It returns the
// base and a note saying so.
func derive(img *manifest.Image, ref string, entries, layers int) (*rebase.Base, string) {
	own := img.Config.History[entries:]
	cfg := img.Config.DeepCopy()
	cfg.RootFS = v1.RootFS{Type: "layers", DiffIDs: slices.Clone(img.Config.RootFS.DiffIDs[:layers])}
	cfg.History = slices.Clone(img.Config.History[:entries])
	set, ok := removeOwnSettings(&cfg.Config, own)
	var note string
	switch {
	case !ok:
		cfg.Config = v1.Config{}
		note = "the old base's config is not available and the application's history does not say what it set: its config is kept as it is, only what the new base adds is added"
	case len(set) == 0:
		note = "the old base's config is not available: taken as the image's (the application's history sets no config field)"
	default:
		note = fmt.Sprintf("the old base's config is not available: taken as the image's without what the application's history sets (%s)", strings.Join(set, ", "))
	}
	var raw []json.RawMessage
	if hist, err := rebase.RawHistory(img.RawConfig); err == nil && len(hist) >= entries {
		raw = hist[:entries]
	}
	return &rebase.Base{
		Ref:        ref,
		Family:     img.Family,
		Layers:     slices.Clone(img.Manifest.Layers[:layers]),
		Config:     cfg,
		RawHistory: raw,
	}, note
}

// removeOwnSettings removes from c what the history entries own set. It
// returns the fields removed, and false when an entry is not a Dockerfile
// instruction it can read (then anything may have been set).
func removeOwnSettings(c *v1.Config, own []v1.History) ([]string, bool) {
	var set []string
	add := func(s string) {
		if !slices.Contains(set, s) {
			set = append(set, s)
		}
	}
	for _, h := range own {
		in := parseInstruction(h.CreatedBy)
		switch in.keyword {
		case "":
			return nil, false
		case "ENV", "LABEL":
			kv, ok := keyValues(in.args)
			if !ok {
				return nil, false
			}
			for _, k := range slices.Sorted(maps.Keys(kv)) {
				if in.keyword == "ENV" {
					c.Env = slices.DeleteFunc(c.Env, func(e string) bool { return strings.SplitN(e, "=", 2)[0] == k })
					add("ENV " + k)
				} else {
					delete(c.Labels, k)
					add("LABEL " + k)
				}
			}
		case "CMD":
			c.Cmd = other(c.Cmd)
			add("CMD")
		case "ENTRYPOINT":
			c.Entrypoint = other(c.Entrypoint)
			add("ENTRYPOINT")
		case "SHELL":
			c.Shell = other(c.Shell)
			add("SHELL")
		case "WORKDIR":
			c.WorkingDir = otherString(c.WorkingDir)
			add("WORKDIR")
		case "USER":
			c.User = otherString(c.User)
			add("USER")
		case "STOPSIGNAL":
			c.StopSignal = otherString(c.StopSignal)
			add("STOPSIGNAL")
		case "HEALTHCHECK":
			if c.Healthcheck == nil {
				c.Healthcheck = &v1.HealthConfig{Test: []string{unknown}}
			} else {
				c.Healthcheck = nil
			}
			add("HEALTHCHECK")
		case "EXPOSE", "VOLUME":
			// Ports and volumes the application declared: drop them all
			// from the old side (the exact spelling of ports varies).
			if in.keyword == "EXPOSE" {
				c.ExposedPorts = nil
			} else {
				c.Volumes = nil
			}
			add(in.keyword)
		}
	}
	return set, true
}

func other(s []string) []string {
	if s == nil {
		return []string{unknown}
	}
	return nil
}

func otherString(s string) string {
	if s == "" {
		return unknown
	}
	return ""
}
