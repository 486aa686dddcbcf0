package basedetect

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/configmerge"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/rebase"
)

// unknown stands for a config value of the old base that cannot be known;
// it differs from any value an image has, so the merge keeps the image's.
const unknown = "\x00unknown"

// derive makes the old base from the image itself (its manifest may be
// gone): its bottom layers, their diff_ids and the history entries below the
// application's. The old base's container config is the image's without
// what the application's own history entries set: a field no instruction
// of the application touched was inherited from the base. What the
// application did set is taken from the base's own history entries, replayed
// from an empty config, where they set it; the rest stays unknown and is
// returned in unknown ("Env:PATH", "WorkingDir"...). It returns the base and
// a note saying so.
func derive(img *manifest.Image, ref string, entries, layers int) (base *rebase.Base, note string, unknown []string) {
	own := img.Config.History[entries:]
	cfg := img.Config.DeepCopy()
	cfg.RootFS = v1.RootFS{Type: "layers", DiffIDs: slices.Clone(img.Config.RootFS.DiffIDs[:layers])}
	cfg.History = slices.Clone(img.Config.History[:entries])
	set, keys, ok := removeOwnSettings(&cfg.Config, own)
	switch {
	case !ok:
		cfg.Config = v1.Config{}
		note = "the old base's config is not available and the application's history does not say what it set: its config is kept as it is, only what the new base adds is added"
	case len(set) == 0:
		note = "the old base's config is not available: taken as the image's (the application's history sets no config field)"
	default:
		replayed := configmerge.ReplayBase(img.Config.History[:entries])
		var fromBase []string
		for _, k := range keys {
			if replayed.Set[k] || (k == "Cmd" && replayed.Set["Entrypoint"]) {
				overlay(&cfg.Config, replayed.Config, k)
				fromBase = append(fromBase, k)
			} else {
				unknown = append(unknown, k)
			}
		}
		note = fmt.Sprintf("the old base's config is not available: taken as the image's without what the application's history sets (%s)", strings.Join(set, ", "))
		if len(fromBase) > 0 {
			note += fmt.Sprintf("; the base's own history entries, replayed, give %s", strings.Join(fromBase, ", "))
		}
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
	}, note, unknown
}

// overlay sets key ("Env:PATH", "WorkingDir"...) of c to its value in from.
func overlay(c *v1.Config, from v1.Config, key string) {
	field, name, _ := strings.Cut(key, ":")
	switch field {
	case "Env":
		c.Env = slices.DeleteFunc(c.Env, func(e string) bool { return strings.SplitN(e, "=", 2)[0] == name })
		for _, e := range from.Env {
			if strings.SplitN(e, "=", 2)[0] == name {
				c.Env = append(c.Env, e)
			}
		}
	case "Labels":
		if v, ok := from.Labels[name]; ok {
			if c.Labels == nil {
				c.Labels = map[string]string{}
			}
			c.Labels[name] = v
		} else {
			delete(c.Labels, name)
		}
	case "WorkingDir":
		c.WorkingDir = from.WorkingDir
	case "User":
		c.User = from.User
	case "StopSignal":
		c.StopSignal = from.StopSignal
	case "Cmd":
		c.Cmd = slices.Clone(from.Cmd)
	case "Entrypoint":
		c.Entrypoint = slices.Clone(from.Entrypoint)
	case "Shell":
		c.Shell = slices.Clone(from.Shell)
	case "Healthcheck":
		c.Healthcheck = from.Healthcheck
	case "ExposedPorts":
		c.ExposedPorts = maps.Clone(from.ExposedPorts)
	case "Volumes":
		c.Volumes = maps.Clone(from.Volumes)
	}
}

// removeOwnSettings removes from c what the history entries own set. It
// returns the fields removed as instructions ("ENV PATH") and as config
// keys ("Env:PATH"), and false when an entry is not a Dockerfile
// instruction it can read (then anything may have been set).
func removeOwnSettings(c *v1.Config, own []v1.History) ([]string, []string, bool) {
	var set, keys []string
	add := func(s string, ks ...string) {
		if !slices.Contains(set, s) {
			set = append(set, s)
		}
		for _, k := range ks {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	for _, h := range own {
		in := parseInstruction(h.CreatedBy)
		switch in.keyword {
		case "":
			return nil, nil, false
		case "ENV", "LABEL":
			kv, ok := keyValues(in.args)
			if !ok {
				return nil, nil, false
			}
			for _, k := range slices.Sorted(maps.Keys(kv)) {
				if in.keyword == "ENV" {
					c.Env = slices.DeleteFunc(c.Env, func(e string) bool { return strings.SplitN(e, "=", 2)[0] == k })
					add("ENV "+k, "Env:"+k)
				} else {
					delete(c.Labels, k)
					add("LABEL "+k, "Labels:"+k)
				}
			}
		case "CMD":
			c.Cmd = other(c.Cmd)
			add("CMD", "Cmd")
		case "ENTRYPOINT":
			c.Entrypoint = other(c.Entrypoint)
			add("ENTRYPOINT", "Entrypoint")
		case "SHELL":
			c.Shell = other(c.Shell)
			add("SHELL", "Shell")
		case "WORKDIR":
			c.WorkingDir = otherString(c.WorkingDir)
			add("WORKDIR", "WorkingDir")
		case "USER":
			c.User = otherString(c.User)
			add("USER", "User")
		case "STOPSIGNAL":
			c.StopSignal = otherString(c.StopSignal)
			add("STOPSIGNAL", "StopSignal")
		case "HEALTHCHECK":
			if c.Healthcheck == nil {
				c.Healthcheck = &v1.HealthConfig{Test: []string{unknown}}
			} else {
				c.Healthcheck = nil
			}
			add("HEALTHCHECK", "Healthcheck")
		case "EXPOSE", "VOLUME":
			// Ports and volumes the application declared: drop them all
			// from the old side (the exact spelling of ports varies).
			if in.keyword == "EXPOSE" {
				c.ExposedPorts = nil
			} else {
				c.Volumes = nil
			}
			add(in.keyword, map[string]string{"EXPOSE": "ExposedPorts", "VOLUME": "Volumes"}[in.keyword])
		}
	}
	return set, keys, true
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
