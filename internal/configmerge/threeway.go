package configmerge

import (
	"maps"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// threeWay merges without history: a value equal to the old base's was
// inherited and follows the new base; any other is the application's own.
// baseLabel is the label that names the base, whose value is not checked
// for embedded old base values. entrypointSet tells that the application's
// history records an ENTRYPOINT instruction, which resets the inherited CMD
// (a Dockerfile rule: a tool that sets the entrypoint keeps the CMD).
func threeWay(old, app, nw *v1.ConfigFile, baseLabel string, entrypointSet bool) *outcome {
	o, a, n := old.Config, app.Config, nw.Config
	out := &outcome{cfg: *deepCopy(a), setBy: map[string]string{}, baseLabel: baseLabel}
	out.cfg.Env = out.env(o.Env, a.Env, n.Env)
	out.cfg.Labels = out.labels(o.Labels, a.Labels, n.Labels, envMap(o.Env), envMap(n.Env))
	out.cfg.Entrypoint, out.cfg.Cmd = out.command(o, a, n, entrypointSet)
	out.cfg.WorkingDir = out.scalar("WorkingDir", o.WorkingDir, a.WorkingDir, n.WorkingDir)
	out.workdirHazard(o.WorkingDir, a.WorkingDir, n.WorkingDir)
	out.cfg.User = out.scalar("User", o.User, a.User, n.User)
	out.cfg.StopSignal = out.scalar("StopSignal", o.StopSignal, a.StopSignal, n.StopSignal)
	out.cfg.ExposedPorts = out.set("ExposedPorts", o.ExposedPorts, a.ExposedPorts, n.ExposedPorts)
	out.cfg.Volumes = out.set("Volumes", o.Volumes, a.Volumes, n.Volumes)
	out.cfg.Shell = out.list("Shell", o.Shell, a.Shell, n.Shell)
	out.cfg.Healthcheck = out.healthcheck(o.Healthcheck, a.Healthcheck, n.Healthcheck)
	// A base's ONBUILD triggers are never inherited: the image's are its own.
	out.cfg.OnBuild = slices.Clone(a.OnBuild)
	if len(a.OnBuild) > 0 {
		out.setBy["OnBuild"] = ""
	}
	out.cfg.ArgsEscaped = a.ArgsEscaped
	if a.ArgsEscaped == o.ArgsEscaped {
		out.cfg.ArgsEscaped = n.ArgsEscaped
	} else {
		out.setBy["ArgsEscaped"] = ""
	}
	out.author = out.scalar("Author", old.Author, app.Author, nw.Author)
	return out
}

func (m *outcome) scalar(key, o, a, n string) string {
	if a != o {
		m.setBy[key] = ""
		return a
	}
	return n
}

func (m *outcome) list(key string, o, a, n []string) []string {
	if !sameList(a, o) {
		m.setBy[key] = ""
		return slices.Clone(a)
	}
	return slices.Clone(n)
}

// command applies Dockerfile semantics where the history shows an
// ENTRYPOINT instruction (entrypointSet): an ENTRYPOINT set by the
// application resets the inherited CMD, so that CMD stays the application's
// (empty or its own); only an untouched pair follows N. Without it, CMD is
// merged on its own.
func (m *outcome) command(o, a, n v1.Config, entrypointSet bool) (entrypoint, cmd []string) {
	entrypoint = m.list("Entrypoint", o.Entrypoint, a.Entrypoint, n.Entrypoint)
	if entrypointSet && !sameList(a.Entrypoint, o.Entrypoint) {
		m.setBy["Cmd"] = ""
		return entrypoint, slices.Clone(a.Cmd)
	}
	return entrypoint, m.list("Cmd", o.Cmd, a.Cmd, n.Cmd)
}

func (m *outcome) healthcheck(o, a, n *v1.HealthConfig) *v1.HealthConfig {
	if !sameHealth(a, o) {
		m.setBy["Healthcheck"] = ""
		return cloneHealth(a)
	}
	return cloneHealth(n)
}

// workdirHazard: a working directory under the old base's, which the new
// base changes, may have been given relative.
func (m *outcome) workdirHazard(o, a, n string) {
	if a != o && o != n && o != "" && o != "/" && strings.HasPrefix(a, strings.TrimSuffix(o, "/")+"/") {
		m.warn("WorkingDir", CodeWorkdirMoved, "the image's working directory %s lies under the old base's %s (the new base's is %s) and may have been given relative; it is kept, and the image's files may sit under the old path",
			a, o, n)
	}
}

// env merges per variable, in the order a rebuild gives: N's variables
// first (overridden in place by the application), then the application's
// own. A value of the application's that holds the old base's value of the
// same variable as a run of ':'-separated items gets the new base's value
// there instead (PATH=/app/bin:<old PATH> becomes /app/bin:<new PATH>).
func (m *outcome) env(o, a, n []string) []string {
	om, am, nm := envMap(o), envMap(a), envMap(n)
	var out []string
	own := func(k, av string) string {
		m.setBy["Env:"+k] = ""
		v, skip := av, ""
		if ov, inO := om[k]; inO && ov != nm[k] {
			if r, ok := rebasePart(av, ov, nm[k]); ok {
				v, skip = r, k
			}
		}
		if j, jv, ok := embedsChanged(v, skip, om, nm); ok {
			m.warn("Env:"+k, CodeOldValueEmbedded, "the image's %s=%s contains %q, the old base's value of %s (new base: %q); it is kept as is", k, v, jv, j, nm[j])
		}
		return v
	}
	for _, kv := range n {
		k, _ := splitEnv(kv)
		av, inA := am[k]
		ov, inO := om[k]
		switch {
		case !inA:
			// Added by the new base, or a variable the image lacks although
			// the old base had it: a Dockerfile cannot unset a variable,
			// so the new base's stands.
			out = append(out, kv)
		case inO && av == ov:
			out = append(out, kv)
		default:
			out = append(out, k+"="+own(k, av))
		}
	}
	for _, kv := range a {
		k, av := splitEnv(kv)
		if _, inN := nm[k]; inN {
			continue
		}
		if ov, inO := om[k]; inO && ov == av {
			continue // inherited, removed by the new base
		}
		out = append(out, k+"="+own(k, av))
	}
	return out
}

func (m *outcome) labels(o, a, n map[string]string, oEnv, nEnv map[string]string) map[string]string {
	out := map[string]string{}
	for _, k := range unionKeys(a, n) {
		av, inA := a[k]
		ov, inO := o[k]
		nv, inN := n[k]
		switch {
		case !inA:
			if inN {
				out[k] = nv
			}
		case inO && av == ov:
			if inN {
				out[k] = nv
			}
		default:
			m.setBy["Labels:"+k] = ""
			out[k] = av
			if j, jv, ok := embedsChanged(av, "", oEnv, nEnv); ok && k != m.baseLabel {
				m.warn("Labels:"+k, CodeOldValueEmbedded, "the image's label %s=%s contains %q, the old base's value of %s (new base: %q); it is kept as is", k, av, jv, j, nEnv[j])
			}
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// set merges ports or volumes: N's, plus what the application added.
func (m *outcome) set(field string, o, a, n map[string]struct{}) map[string]struct{} {
	out := maps.Clone(n)
	if out == nil {
		out = map[string]struct{}{}
	}
	for k := range a {
		if _, inO := o[k]; !inO {
			out[k] = struct{}{}
			m.setBy[field] = ""
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// rebasePart replaces the old base's value, found in v as a whole run of
// ':'-separated items, with the new base's (dropping it if empty).
func rebasePart(v, old, nw string) (string, bool) {
	if old == "" || v == old {
		return "", false
	}
	items, oItems := strings.Split(v, ":"), strings.Split(old, ":")
	for i := 0; i+len(oItems) <= len(items); i++ {
		if slices.Equal(items[i:i+len(oItems)], oItems) {
			var repl []string
			if nw != "" {
				repl = strings.Split(nw, ":")
			}
			res := slices.Concat(items[:i], repl, items[i+len(oItems):])
			return strings.Join(res, ":"), true
		}
	}
	return "", false
}

// embedsChanged finds in v, at word boundaries, the old base's value of a
// variable (other than skip) that the new base changes; the longest such
// value when several are found.
func embedsChanged(v, skip string, oEnv, nEnv map[string]string) (string, string, bool) {
	best, bestVal := "", ""
	for _, j := range slices.Sorted(maps.Keys(oEnv)) {
		ov := oEnv[j]
		if j == skip || ov == "" || len(ov) <= len(bestVal) {
			continue
		}
		if nv, ok := nEnv[j]; ok && nv == ov {
			continue
		}
		if containsWord(v, ov) {
			best, bestVal = j, ov
		}
	}
	return best, bestVal, best != ""
}

// containsWord reports whether s contains sub as a whole word: no letter,
// digit, '.' or '_' right before or after it ("from 1" and "1-x" contain
// 1, "1.5" and "v1" do not).
func containsWord(s, sub string) bool {
	for i := 0; ; {
		j := strings.Index(s[i:], sub)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(sub)
		if (start == 0 || !isAlnum(s[start-1])) && (end == len(s) || !isAlnum(s[end])) {
			return true
		}
		i = start + 1
	}
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '.' || c == '_'
}
