// Package configmerge reconciles an application image's config with a new
// base: a three-way merge of the old base's config (O), the application's (A)
// and the new base's (N). What A inherited unchanged from O follows N; what A
// set itself stays A's. Every decision is recorded as a Change so that it can
// be explained line by line.
package configmerge

import (
	"fmt"
	"maps"
	"reflect"
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
}

// Change is one decision of the merge, for --dry-run and -v.
type Change struct {
	// Field is the config field, e.g. "Env", "Labels", "WorkingDir".
	Field string `json:"field"`
	// Key is the variable, label or port within the field, if any.
	Key string `json:"key,omitempty"`
	// Decision says why the value was chosen: "inherited" (follows the new
	// base), "kept" (set by the application), "added" or "removed" (by the
	// new base).
	Decision string `json:"decision"`
	// From is the application image's value, To the result's.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
}

// String renders the change as one line, e.g. `Env BASEVER: inherited, 1 → 2`.
func (c Change) String() string {
	name := c.Field
	if c.Key != "" {
		name += " " + c.Key
	}
	return fmt.Sprintf("%s: %s, %s → %s", name, c.Decision, orNone(c.From), orNone(c.To))
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// Warning is a hazard the merge cannot resolve with certainty.
type Warning struct {
	// Code is a stable identifier, e.g. "workdir-moved".
	Code string `json:"code"`
	// Message explains the hazard.
	Message string `json:"message"`
}

// Result is the merged container config with the decisions that made it.
type Result struct {
	// Config is the merged container config (the "config" object).
	Config v1.Config
	// Changes lists every field whose value differs from the application's.
	Changes []Change
	// Warnings lists hazards.
	Warnings []Warning
}

// Merge reconciles the container config ("config" object) of in.App with
// the new base. It never modifies its inputs.
func Merge(in Input) (*Result, error) {
	if in.Old == nil || in.App == nil || in.New == nil {
		return nil, fmt.Errorf("configmerge: old, app and new configs are all required")
	}
	o, a, n := in.Old.Config, in.App.Config, in.New.Config
	r := &Result{Config: *deepCopy(a)}
	m := &merger{r: r}

	r.Config.Env = m.env(o.Env, a.Env, n.Env)
	r.Config.Labels = m.labels(o.Labels, a.Labels, n.Labels)
	r.Config.Entrypoint, r.Config.Cmd = m.command(o, a, n)
	r.Config.WorkingDir = m.scalar("WorkingDir", o.WorkingDir, a.WorkingDir, n.WorkingDir)
	r.Config.User = m.scalar("User", o.User, a.User, n.User)
	r.Config.StopSignal = m.scalar("StopSignal", o.StopSignal, a.StopSignal, n.StopSignal)
	r.Config.ExposedPorts = m.set("ExposedPorts", o.ExposedPorts, a.ExposedPorts, n.ExposedPorts)
	r.Config.Volumes = m.set("Volumes", o.Volumes, a.Volumes, n.Volumes)
	r.Config.Shell = m.list("Shell", o.Shell, a.Shell, n.Shell)
	r.Config.Healthcheck = m.healthcheck(o.Healthcheck, a.Healthcheck, n.Healthcheck)
	return r, nil
}

type merger struct{ r *Result }

func (m *merger) change(field, key, decision, from, to string) {
	m.r.Changes = append(m.r.Changes, Change{Field: field, Key: key, Decision: decision, From: from, To: to})
}

// scalar: inherited from O (A == O) follows N, otherwise A's.
func (m *merger) scalar(field, o, a, n string) string {
	if a != o || a == n {
		return a
	}
	m.change(field, "", "inherited", a, n)
	return n
}

func (m *merger) list(field string, o, a, n []string) []string {
	if !slices.Equal(a, o) || slices.Equal(a, n) {
		return a
	}
	m.change(field, "", "inherited", render(a), render(n))
	return slices.Clone(n)
}

// command applies Dockerfile semantics: an ENTRYPOINT set by the
// application resets the inherited CMD, so only an untouched pair follows N.
func (m *merger) command(o, a, n v1.Config) (entrypoint, cmd []string) {
	entrypoint, cmd = a.Entrypoint, a.Cmd
	if slices.Equal(a.Entrypoint, o.Entrypoint) && !slices.Equal(a.Entrypoint, n.Entrypoint) {
		m.change("Entrypoint", "", "inherited", render(a.Entrypoint), render(n.Entrypoint))
		entrypoint = slices.Clone(n.Entrypoint)
	}
	entrypointSetByApp := !slices.Equal(a.Entrypoint, o.Entrypoint)
	if slices.Equal(a.Cmd, o.Cmd) && !entrypointSetByApp && !slices.Equal(a.Cmd, n.Cmd) {
		m.change("Cmd", "", "inherited", render(a.Cmd), render(n.Cmd))
		cmd = slices.Clone(n.Cmd)
	}
	return entrypoint, cmd
}

func (m *merger) healthcheck(o, a, n *v1.HealthConfig) *v1.HealthConfig {
	if !reflect.DeepEqual(a, o) || reflect.DeepEqual(a, n) {
		return a
	}
	m.change("Healthcheck", "", "inherited", renderHealth(a), renderHealth(n))
	if n == nil {
		return nil
	}
	c := *n
	c.Test = slices.Clone(n.Test)
	return &c
}

// env merges per variable, in the order a rebuild gives: N's variables
// first (overridden in place by the application), then the application's own.
func (m *merger) env(o, a, n []string) []string {
	om, am, nm := envMap(o), envMap(a), envMap(n)
	var out []string
	for _, kv := range n {
		k, nv := splitEnv(kv)
		av, inA := am[k]
		ov, inO := om[k]
		switch {
		case !inA && !inO:
			m.change("Env", k, "added", "", nv)
			out = append(out, kv)
		case !inA:
			// The application image lacks a variable the old base had:
			// it cannot have unset it in a Dockerfile, so keep N's.
			out = append(out, kv)
		case inO && av == ov:
			if av != nv {
				m.change("Env", k, "inherited", av, nv)
			}
			out = append(out, kv)
		default:
			out = append(out, k+"="+av)
		}
	}
	for _, kv := range a {
		k, av := splitEnv(kv)
		if _, inN := nm[k]; inN {
			continue
		}
		if ov, inO := om[k]; inO && ov == av {
			m.change("Env", k, "removed", av, "")
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (m *merger) labels(o, a, n map[string]string) map[string]string {
	out := map[string]string{}
	for _, k := range sortedKeys(a, n) {
		av, inA := a[k]
		ov, inO := o[k]
		nv, inN := n[k]
		inherited := inA && inO && av == ov
		switch {
		case !inA && inN && !inO:
			m.change("Labels", k, "added", "", nv)
			out[k] = nv
		case !inA:
			if inN {
				out[k] = nv
			}
		case inherited && !inN:
			m.change("Labels", k, "removed", av, "")
		case inherited:
			if av != nv {
				m.change("Labels", k, "inherited", av, nv)
			}
			out[k] = nv
		default:
			out[k] = av
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// set merges ports or volumes: N's, plus what the application added.
func (m *merger) set(field string, o, a, n map[string]struct{}) map[string]struct{} {
	out := map[string]struct{}{}
	for k := range n {
		out[k] = struct{}{}
		if _, inA := a[k]; !inA {
			m.change(field, k, "added", "", k)
		}
	}
	for k := range a {
		_, inO := o[k]
		_, inN := n[k]
		switch {
		case !inO:
			out[k] = struct{}{}
		case !inN:
			m.change(field, k, "removed", k, "")
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func sortedKeys(ms ...map[string]string) []string {
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

func render(s []string) string {
	if s == nil {
		return ""
	}
	return fmt.Sprintf("%q", s)
}

func renderHealth(h *v1.HealthConfig) string {
	if h == nil {
		return ""
	}
	return render(h.Test)
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
	if c.Healthcheck != nil {
		h := *c.Healthcheck
		h.Test = slices.Clone(h.Test)
		out.Healthcheck = &h
	}
	return &out
}
