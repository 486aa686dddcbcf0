// Package configmerge reconciles an application image's config with a new
// base: a three-way merge of the old base's config (O), the application's (A)
// and the new base's (N). What A inherited unchanged from O follows N; what A
// set itself stays A's. Where the application's history records its
// Dockerfile instructions, they are replayed on N as a rebuild would, and
// the merge decides only what the history does not. Every decision is
// recorded as a Change so that it can be explained line by line; what cannot
// be decided with certainty is a Warning.
package configmerge

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Input holds the three configs of a merge.
type Input struct {
	// Old is the old base's config: what the application was built on.
	Old *v1.ConfigFile
	// App is the application image's config.
	App *v1.ConfigFile
	// New is the new base's config.
	New *v1.ConfigFile
	// History holds the application's own history entries, those above
	// the old base's. Nil when they are not known: then nothing is
	// replayed.
	History []v1.History
	// BaseLabel is the label that names the base (LABEL FROM=base:1): its
	// value is a reference, not a value taken from the base, so it is not
	// checked for embedded old base values.
	BaseLabel string
}

// Warning codes: stable identifiers of the hazards, documented in
// docs/config-merge.md.
const (
	// CodeWorkdirMoved: a relative WORKDIR, or a RUN/COPY/ADD relative to
	// the working directory, was resolved against a base WORKDIR that the
	// new base changes; the application's files sit under the old path.
	CodeWorkdirMoved = "workdir-moved"
	// CodeRunOnNewRelease: the application ran RUN steps on the old base
	// and the new base is another OS release.
	CodeRunOnNewRelease = "run-os-release-changed"
	// CodeOldValueEmbedded: a value the application set contains an old
	// base value that the new base changes, and cannot be rewritten.
	CodeOldValueEmbedded = "old-base-value-embedded"
	// CodeOnBuildChanged: the bases' ONBUILD triggers differ; a rebuild
	// would run the new base's.
	CodeOnBuildChanged = "onbuild-changed"
)

// Result is the merged container config with the decisions that made it.
type Result struct {
	// Config is the merged container config (the "config" object).
	Config v1.Config
	// Author is the merged top-level author.
	Author string
	// Style tells how the application's history was used: StyleAsWritten
	// or StyleExpanded when it was replayed, StyleUnknown when the config
	// was merged three ways only.
	Style Style
	// Changes lists every value that differs from the application's.
	Changes []Change
	// Kept lists values the application set itself and keeps although the
	// base's changed.
	Kept []Change
	// Warnings lists hazards.
	Warnings []Warning
	// History lists the application's history entries whose text a
	// rebuild on the new base would record differently (an ENV recorded
	// expanded with the old base's value inside, a WORKDIR resolved
	// against the old base's): the entries of Input.History to rewrite.
	History []HistoryEdit
}

// HistoryEdit is a history entry to rewrite.
type HistoryEdit struct {
	// Entry is the entry's index in Input.History.
	Entry int `json:"entry"`
	// CreatedBy is the text a rebuild on the new base would record.
	CreatedBy string `json:"createdBy"`
	// key and value are the config value the new text records; the edit
	// holds only when the merged config has that value.
	key, value string
}

// Warning is a hazard the merge cannot resolve with certainty.
type Warning struct {
	// Code is a stable identifier, e.g. "workdir-moved".
	Code string `json:"code"`
	// Message explains the hazard.
	Message string `json:"message"`
}

// keyedWarning is a warning tied to the value (key) it is about, so that it
// is reported only when that value's decision is used.
type keyedWarning struct {
	key string
	w   Warning
}

// outcome is a decided config: by the three-way merge or by replay.
type outcome struct {
	cfg    v1.Config
	author string
	// setBy maps the keys the application set itself to the instruction
	// that set them ("" when inferred from the values).
	setBy    map[string]string
	warnings []keyedWarning
	// baseLabel is the label that names the base (see Input.BaseLabel).
	baseLabel string
}

func (o *outcome) warn(key, code, format string, args ...any) {
	o.warnings = append(o.warnings, keyedWarning{key: key, w: Warning{Code: code, Message: fmt.Sprintf(format, args...)}})
}

// Merge reconciles the container config ("config" object) and author of
// in.App with the new base. It never modifies its inputs.
func Merge(in Input) (*Result, error) {
	if in.Old == nil || in.App == nil || in.New == nil {
		return nil, fmt.Errorf("configmerge: old, app and new configs are all required")
	}
	style := StyleUnknown
	var instrs []instruction
	if in.History != nil {
		instrs, style = parseHistory(in.History)
	}
	entrypointSet := slices.ContainsFunc(instrs, func(in instruction) bool { return in.cmd == "ENTRYPOINT" })
	merged := threeWay(in.Old, in.App, in.New, in.BaseLabel, entrypointSet)
	out := merged
	var edits []HistoryEdit
	if style != StyleUnknown {
		rp := replay(instrs, in.Old, in.New, in.BaseLabel)
		out = combine(in.App, merged, rp)
		for _, e := range rp.edits {
			if valueOf(out.cfg, e.key) == e.value {
				edits = append(edits, e)
			}
		}
	}
	r := &Result{Config: out.cfg, Author: out.author, Style: style, History: edits}
	r.Changes, r.Kept = explain(in.Old, in.App, in.New, out)
	seen := map[Warning]bool{}
	for _, kw := range out.warnings {
		if !seen[kw.w] {
			seen[kw.w] = true
			r.Warnings = append(r.Warnings, kw.w)
		}
	}
	r.Warnings = append(r.Warnings, baseHazards(in.Old, in.New, instrs)...)
	return r, nil
}

// combine takes each value from the replay on the new base when the replay
// on the old base reproduces the application's value, and from the
// three-way merge otherwise.
func combine(app *v1.ConfigFile, merged *outcome, rp *replayed) *outcome {
	a := app.Config
	out := &outcome{setBy: map[string]string{}}
	use := func(key string, fromReplay bool) {
		if fromReplay {
			if in, ok := rp.n.setBy[key]; ok {
				out.setBy[key] = in.String()
			}
		} else if src, ok := merged.setBy[key]; ok {
			out.setBy[key] = src
		}
		for _, kw := range pick(fromReplay, rp.warnings, merged.warnings) {
			if kw.key == key {
				out.warnings = append(out.warnings, kw)
			}
		}
	}
	verified := func(key string, equal bool) bool {
		ok := equal && !rp.o.isUnknown(key) && !rp.n.isUnknown(key)
		use(key, ok)
		return ok
	}

	// Env, per variable, in the order of the replay on the new base.
	envOK := map[string]bool{}
	aEnv, oEnv, mEnv := envMap(a.Env), envMap(rp.o.cfg.Env), envMap(merged.cfg.Env)
	for _, k := range unionKeys(aEnv, oEnv, envMap(rp.n.cfg.Env), mEnv) {
		av, inA := aEnv[k]
		ov, inO := oEnv[k]
		envOK[k] = verified("Env:"+k, inA == inO && av == ov)
	}
	added := map[string]bool{}
	for _, kv := range rp.n.cfg.Env {
		k, _ := splitEnv(kv)
		switch {
		case envOK[k]:
			out.cfg.Env = append(out.cfg.Env, kv)
		case hasKey(mEnv, k):
			out.cfg.Env = append(out.cfg.Env, k+"="+mEnv[k])
		}
		added[k] = true
	}
	for _, kv := range merged.cfg.Env {
		if k, _ := splitEnv(kv); !added[k] && !envOK[k] {
			out.cfg.Env = append(out.cfg.Env, kv)
		}
	}

	// Labels, per key.
	for _, k := range unionKeys(a.Labels, rp.o.cfg.Labels, rp.n.cfg.Labels, merged.cfg.Labels) {
		av, inA := a.Labels[k]
		ov, inO := rp.o.cfg.Labels[k]
		src := merged.cfg.Labels
		if verified("Labels:"+k, inA == inO && av == ov) {
			src = rp.n.cfg.Labels
		}
		if v, ok := src[k]; ok {
			if out.cfg.Labels == nil {
				out.cfg.Labels = map[string]string{}
			}
			out.cfg.Labels[k] = v
		}
	}

	// Scalar and whole-value fields.
	o, n, m := &rp.o.cfg, &rp.n.cfg, &merged.cfg
	field := func(key string, equal bool, set func(from *v1.Config)) {
		if verified(key, equal) {
			set(n)
		} else {
			set(m)
		}
	}
	field("WorkingDir", o.WorkingDir == a.WorkingDir, func(c *v1.Config) { out.cfg.WorkingDir = c.WorkingDir })
	field("User", o.User == a.User, func(c *v1.Config) { out.cfg.User = c.User })
	field("StopSignal", o.StopSignal == a.StopSignal, func(c *v1.Config) { out.cfg.StopSignal = c.StopSignal })
	field("ExposedPorts", sameSet(o.ExposedPorts, a.ExposedPorts), func(c *v1.Config) { out.cfg.ExposedPorts = maps.Clone(c.ExposedPorts) })
	field("Volumes", sameSet(o.Volumes, a.Volumes), func(c *v1.Config) { out.cfg.Volumes = maps.Clone(c.Volumes) })
	field("Healthcheck", sameHealth(o.Healthcheck, a.Healthcheck), func(c *v1.Config) { out.cfg.Healthcheck = cloneHealth(c.Healthcheck) })
	field("Shell", sameList(o.Shell, a.Shell), func(c *v1.Config) { out.cfg.Shell = slices.Clone(c.Shell) })
	field("OnBuild", sameList(o.OnBuild, a.OnBuild), func(c *v1.Config) { out.cfg.OnBuild = slices.Clone(c.OnBuild) })
	// CMD and ENTRYPOINT interact (an ENTRYPOINT resets the CMD): both come
	// from the same source.
	cmdOK := sameList(o.Cmd, a.Cmd) && sameList(o.Entrypoint, a.Entrypoint) &&
		!rp.o.isUnknown("Cmd") && !rp.n.isUnknown("Cmd") && !rp.o.isUnknown("Entrypoint") && !rp.n.isUnknown("Entrypoint")
	use("Cmd", cmdOK)
	use("Entrypoint", cmdOK)
	src := m
	if cmdOK {
		src = n
	}
	out.cfg.Cmd, out.cfg.Entrypoint = slices.Clone(src.Cmd), slices.Clone(src.Entrypoint)
	if verified("Author", rp.o.author == app.Author) {
		out.author = rp.n.author
	} else {
		out.author = merged.author
	}

	// Fields no instruction sets, and the rest of the object: the merge's.
	out.cfg.ArgsEscaped = m.ArgsEscaped
	use("ArgsEscaped", false)
	rest := merged.cfg
	rest.Env, rest.Labels, rest.WorkingDir, rest.User, rest.StopSignal = out.cfg.Env, out.cfg.Labels, out.cfg.WorkingDir, out.cfg.User, out.cfg.StopSignal
	rest.ExposedPorts, rest.Volumes, rest.Healthcheck, rest.Shell, rest.OnBuild = out.cfg.ExposedPorts, out.cfg.Volumes, out.cfg.Healthcheck, out.cfg.Shell, out.cfg.OnBuild
	rest.Cmd, rest.Entrypoint, rest.ArgsEscaped = out.cfg.Cmd, out.cfg.Entrypoint, out.cfg.ArgsEscaped
	out.cfg = rest
	return out
}

func pick[T any](first bool, a, b T) T {
	if first {
		return a
	}
	return b
}

func hasKey(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}

func unionKeys(ms ...map[string]string) []string {
	seen := map[string]bool{}
	for _, m := range ms {
		for k := range m {
			seen[k] = true
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v := splitEnv(kv)
		m[k] = v
	}
	return m
}

func splitEnv(kv string) (string, string) {
	k, v, _ := strings.Cut(kv, "=")
	return k, v
}

// sameList compares lists, nil and empty alike.
func sameList(a, b []string) bool {
	return len(a) == len(b) && (len(a) == 0 || slices.Equal(a, b))
}

func sameSet(a, b map[string]struct{}) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

func sameHealth(a, b *v1.HealthConfig) bool {
	if a == nil || b == nil {
		return a == b
	}
	return sameList(a.Test, b.Test) && a.Interval == b.Interval && a.Timeout == b.Timeout &&
		a.StartPeriod == b.StartPeriod && a.Retries == b.Retries
}

func cloneHealth(h *v1.HealthConfig) *v1.HealthConfig {
	if h == nil {
		return nil
	}
	c := *h
	c.Test = slices.Clone(h.Test)
	return &c
}

func deepCopy(c v1.Config) *v1.Config {
	out := c
	out.Cmd = slices.Clone(c.Cmd)
	out.Entrypoint = slices.Clone(c.Entrypoint)
	out.Env = slices.Clone(c.Env)
	out.Shell = slices.Clone(c.Shell)
	out.OnBuild = slices.Clone(c.OnBuild)
	out.Labels = maps.Clone(c.Labels)
	out.Volumes = maps.Clone(c.Volumes)
	out.ExposedPorts = maps.Clone(c.ExposedPorts)
	out.Healthcheck = cloneHealth(c.Healthcheck)
	return &out
}

// valueOf returns the value of key ("Env:NAME", "WorkingDir") in c.
func valueOf(c v1.Config, key string) string {
	if name, ok := strings.CutPrefix(key, "Env:"); ok {
		return envMap(c.Env)[name]
	}
	if key == "WorkingDir" {
		return c.WorkingDir
	}
	return ""
}
