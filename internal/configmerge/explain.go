package configmerge

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Decisions of a Change.
const (
	// DecisionInherited: the image had the old base's value; it follows the
	// new base's.
	DecisionInherited = "inherited"
	// DecisionAdded: the new base adds the value.
	DecisionAdded = "added"
	// DecisionRemoved: the image had the old base's value; the new base has
	// none.
	DecisionRemoved = "removed"
	// DecisionBasePart: the image's value is built on the base's; its own
	// part is kept, the base's part follows the new base.
	DecisionBasePart = "base-part"
	// DecisionReevaluated: the image's instruction, replayed on the new
	// base, gives another value.
	DecisionReevaluated = "re-evaluated"
	// DecisionKept: the image set the value itself; it stays although the
	// base's value changed.
	DecisionKept = "kept"
	// DecisionRewritten: a history entry's text, recorded as a rebuild on
	// the new base would (Field "History", Key the entry's number).
	DecisionRewritten = "rewritten"
	// DecisionNamesNewBase: the label that names the base now names the
	// new one.
	DecisionNamesNewBase = "names-new-base"
)

// Change is one decision of the merge, for --dry-run and -v.
type Change struct {
	// Field is the config field, e.g. "Env", "Labels", "WorkingDir".
	Field string `json:"field"`
	// Key is the variable, label or port within the field, if any.
	Key string `json:"key,omitempty"`
	// Decision is one of the Decision constants.
	Decision string `json:"decision"`
	// From is the application image's value, To the result's.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// BaseFrom and BaseTo are the old and new base's values, where they
	// explain the decision.
	BaseFrom string `json:"baseFrom,omitempty"`
	BaseTo   string `json:"baseTo,omitempty"`
	// Detail qualifies a base-part decision: "app prefix kept".
	Detail string `json:"detail,omitempty"`
	// Source is the image's instruction behind the value, when the history
	// tells it.
	Source string `json:"source,omitempty"`
}

// String renders the change as one line, e.g. `Env BASEVER: inherited, 1 → 2`.
func (c Change) String() string {
	name := c.Field
	if c.Key != "" {
		name += " " + c.Key
	}
	switch c.Decision {
	case DecisionAdded:
		return fmt.Sprintf("%s: added by new base, %s", name, orNone(c.To))
	case DecisionRemoved:
		return fmt.Sprintf("%s: inherited %s, removed in new base", name, orNone(c.From))
	case DecisionBasePart:
		return fmt.Sprintf("%s: %s, base part %s → %s", name, c.Detail, orNone(c.BaseFrom), orNone(c.BaseTo))
	case DecisionReevaluated:
		return fmt.Sprintf("%s: %s re-evaluated, %s → %s", name, c.Source, orNone(c.From), orNone(c.To))
	case DecisionRewritten:
		return fmt.Sprintf("%s: recorded as a rebuild on the new base would, %q → %q", name, c.From, c.To)
	case DecisionNamesNewBase:
		return fmt.Sprintf("%s: names the new base, as a rebuild's Dockerfile would, %s → %s (--keep-label keeps it)", name, orNone(c.From), orNone(c.To))
	case DecisionKept:
		by := "set by the image"
		if c.Source != "" {
			by = "set by " + c.Source
		}
		return fmt.Sprintf("%s: %s, kept %s (base %s → %s)", name, by, orNone(c.From), orNone(c.BaseFrom), orNone(c.BaseTo))
	}
	return fmt.Sprintf("%s: %s, %s → %s", name, c.Decision, orNone(c.From), orNone(c.To))
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// value is one config value as the explanation sees it.
type value struct {
	s  string
	ok bool // present
}

// explainer compares the image's values with the result's.
type explainer struct {
	out          *outcome
	changes, kep []Change
}

func (e *explainer) key(field, key string, a, r, o, n value) {
	k := field
	if key != "" {
		k += ":" + key
	}
	src, setByApp := e.out.setBy[k]
	c := Change{Field: field, Key: key, From: a.s, To: r.s, Source: src}
	if a == r {
		if setByApp && o != n {
			c.Decision, c.BaseFrom, c.BaseTo = DecisionKept, o.s, n.s
			e.kep = append(e.kep, c)
		}
		return
	}
	switch {
	case !setByApp && !r.ok:
		c.Decision = DecisionRemoved
	case !setByApp && !a.ok:
		c.Decision = DecisionAdded
	case !setByApp:
		c.Decision = DecisionInherited
	default:
		c.Decision = DecisionReevaluated
		if detail, ok := basePart(a.s, r.s, o.s, n.s); ok && field == "Env" {
			c.Decision, c.Detail, c.BaseFrom, c.BaseTo = DecisionBasePart, detail, o.s, n.s
		} else if c.Source == "" {
			c.Source = "the image's value"
		}
	}
	e.changes = append(e.changes, c)
}

// basePart tells whether a → r replaced the base's part o by n, keeping
// the image's items before and after it.
func basePart(a, r, o, n string) (string, bool) {
	if o == "" || o == n {
		return "", false
	}
	ai, ri, oi := strings.Split(a, ":"), strings.Split(r, ":"), strings.Split(o, ":")
	var ni []string
	if n != "" {
		ni = strings.Split(n, ":")
	}
	for i := 0; i+len(oi) <= len(ai); i++ {
		if !slices.Equal(ai[i:i+len(oi)], oi) {
			continue
		}
		pre, post := ai[:i], ai[i+len(oi):]
		if slices.Equal(ri, slices.Concat(pre, ni, post)) {
			switch {
			case len(pre) > 0 && len(post) > 0:
				return "app parts kept", true
			case len(pre) > 0:
				return "app prefix kept", true
			default:
				return "app suffix kept", true
			}
		}
	}
	return "", false
}

func lookupValue(m map[string]string, k string) value {
	v, ok := m[k]
	return value{v, ok}
}

func listValue(l []string) value {
	if len(l) == 0 {
		return value{}
	}
	return value{fmt.Sprintf("%q", l), true}
}

func strValue(s string) value { return value{s, s != ""} }

func healthValue(h *v1.HealthConfig) value {
	if h == nil {
		return value{}
	}
	s := fmt.Sprintf("%q", h.Test)
	if h.Interval != 0 || h.Timeout != 0 || h.StartPeriod != 0 || h.Retries != 0 {
		s += fmt.Sprintf(" interval=%s timeout=%s start-period=%s retries=%d", h.Interval, h.Timeout, h.StartPeriod, h.Retries)
	}
	return value{s, true}
}

// explain lists the result's differences from the image, and the image's
// own values kept although the base changed them.
func explain(old, app, nw *v1.ConfigFile, out *outcome) (changes, kept []Change) {
	o, a, n, r := old.Config, app.Config, nw.Config, out.cfg
	e := &explainer{out: out}

	om, am, nm, rm := envMap(o.Env), envMap(a.Env), envMap(n.Env), envMap(r.Env)
	var keys []string
	for _, kv := range r.Env {
		k, _ := splitEnv(kv)
		keys = append(keys, k)
	}
	for _, kv := range a.Env {
		if k, _ := splitEnv(kv); !hasKey(rm, k) {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		e.key("Env", k, lookupValue(am, k), lookupValue(rm, k), lookupValue(om, k), lookupValue(nm, k))
	}
	for _, k := range unionKeys(a.Labels, r.Labels) {
		e.key("Labels", k, lookupValue(a.Labels, k), lookupValue(r.Labels, k), lookupValue(o.Labels, k), lookupValue(n.Labels, k))
	}
	e.key("Entrypoint", "", listValue(a.Entrypoint), listValue(r.Entrypoint), listValue(o.Entrypoint), listValue(n.Entrypoint))
	e.key("Cmd", "", listValue(a.Cmd), listValue(r.Cmd), listValue(o.Cmd), listValue(n.Cmd))
	e.key("WorkingDir", "", strValue(a.WorkingDir), strValue(r.WorkingDir), strValue(o.WorkingDir), strValue(n.WorkingDir))
	e.key("User", "", strValue(a.User), strValue(r.User), strValue(o.User), strValue(n.User))
	for _, f := range []struct {
		name       string
		a, r, o, n map[string]struct{}
	}{{"ExposedPorts", a.ExposedPorts, r.ExposedPorts, o.ExposedPorts, n.ExposedPorts}, {"Volumes", a.Volumes, r.Volumes, o.Volumes, n.Volumes}} {
		all := maps.Clone(f.a)
		if all == nil {
			all = map[string]struct{}{}
		}
		maps.Copy(all, f.r)
		for _, k := range slices.Sorted(maps.Keys(all)) {
			_, inA := f.a[k]
			_, inR := f.r[k]
			if inA == inR {
				continue
			}
			c := Change{Field: f.name, Key: k, Decision: DecisionAdded, To: k}
			if inA {
				c = Change{Field: f.name, Key: k, Decision: DecisionRemoved, From: k}
			}
			e.changes = append(e.changes, c)
		}
	}
	e.key("StopSignal", "", strValue(a.StopSignal), strValue(r.StopSignal), strValue(o.StopSignal), strValue(n.StopSignal))
	e.key("Healthcheck", "", healthValue(a.Healthcheck), healthValue(r.Healthcheck), healthValue(o.Healthcheck), healthValue(n.Healthcheck))
	e.key("Shell", "", listValue(a.Shell), listValue(r.Shell), listValue(o.Shell), listValue(n.Shell))
	e.key("OnBuild", "", listValue(a.OnBuild), listValue(r.OnBuild), listValue(o.OnBuild), listValue(n.OnBuild))
	b := func(v bool) value {
		if !v {
			return value{}
		}
		return value{"true", true}
	}
	e.key("ArgsEscaped", "", b(a.ArgsEscaped), b(r.ArgsEscaped), b(o.ArgsEscaped), b(n.ArgsEscaped))
	e.key("Author", "", strValue(app.Author), strValue(out.author), strValue(old.Author), strValue(nw.Author))
	return e.changes, e.kep
}
