package configmerge

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Replay: the application's config instructions, read from its history,
// evaluated on a base's config as a rebuild would. The same instructions are
// replayed on the old base and on the new one, step by step; the old base's
// replay must reproduce the application's config for a field before the new
// base's replay is trusted for it.

// argValue is a declared build argument.
type argValue struct {
	value string
	known bool
}

// replayState is a config being built by replayed instructions.
type replayState struct {
	cfg    v1.Config
	author string
	args   map[string]argValue
	cmdSet bool
	// unknown holds the keys ("Env:NAME", "Labels:KEY", "WorkingDir",
	// "Env:*" for all of Env) whose value the history does not determine.
	unknown map[string]bool
	// setBy maps a key to the instruction that last set it.
	setBy map[string]instruction
}

func newReplayState(base *v1.ConfigFile) *replayState {
	c := deepCopy(base.Config)
	// A base's ONBUILD triggers run in the child's build and are not
	// inherited.
	c.OnBuild = nil
	return &replayState{cfg: *c, author: base.Author, args: map[string]argValue{}, unknown: map[string]bool{}, setBy: map[string]instruction{}}
}

// isUnknown tells whether key, or its whole field, is undetermined.
func (s *replayState) isUnknown(key string) bool {
	if s.unknown[key] {
		return true
	}
	field, _, ok := strings.Cut(key, ":")
	return ok && s.unknown[field+":*"]
}

func (s *replayState) set(key string, in instruction) {
	s.setBy[key] = in
	delete(s.unknown, key)
}

func (s *replayState) lookup(name string) (string, varState) {
	for _, kv := range s.cfg.Env {
		if k, v := splitEnv(kv); k == name {
			return v, varSet
		}
	}
	if s.isUnknown("Env:" + name) {
		return "", varUnknown
	}
	if a, ok := s.args[name]; ok {
		if !a.known {
			return "", varUnknown
		}
		return a.value, varSet
	}
	return "", varUnset
}

func (s *replayState) getEnv(name string) (string, bool) {
	for _, kv := range s.cfg.Env {
		if k, v := splitEnv(kv); k == name {
			return v, true
		}
	}
	return "", false
}

func (s *replayState) setEnv(name, value string) {
	for i, kv := range s.cfg.Env {
		if k, _ := splitEnv(kv); k == name {
			s.cfg.Env[i] = name + "=" + value
			return
		}
	}
	s.cfg.Env = append(s.cfg.Env, name+"="+value)
}

// pair is one KEY=VALUE of an ENV or LABEL instruction, unexpanded.
type pair struct{ key, value string }

var expandedPairRE = regexp.MustCompile(`^[^\s=]+=`)

// pairs reads the KEY=VALUE pairs of ENV or LABEL arguments.
func pairs(in instruction) ([]pair, error) {
	if in.expanded {
		// BuildKit joins "key=value" with spaces and quotes nothing: a word
		// that does not start with key= continues the previous value.
		var out []pair
		for _, w := range strings.Split(in.args, " ") {
			if expandedPairRE.MatchString(w) {
				k, v, _ := strings.Cut(w, "=")
				out = append(out, pair{k, v})
			} else if len(out) > 0 {
				out[len(out)-1].value += " " + w
			} else {
				return nil, fmt.Errorf("cannot read %q", in.args)
			}
		}
		return out, nil
	}
	words, err := splitWords(in.args)
	if err != nil {
		return nil, err
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("%s without arguments", in.cmd)
	}
	if !strings.Contains(words[0], "=") {
		// Legacy form: "ENV NAME the rest of the line".
		rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(in.args), words[0]))
		return []pair{{words[0], rest}}, nil
	}
	var out []pair
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not KEY=VALUE", w)
		}
		out = append(out, pair{k, v})
	}
	return out, nil
}

// word expands one argument word, unless the builder already did.
func (s *replayState) word(in instruction, w string) (string, []string, error) {
	if in.expanded {
		return w, nil, nil
	}
	return expandWord(w, s.lookup)
}

// apply evaluates one instruction. It returns the names of the variables
// its values referred to.
func (s *replayState) apply(in instruction) []string {
	var refs []string
	expand := func(w string) (string, error) {
		v, r, err := s.word(in, w)
		refs = append(refs, r...)
		return v, err
	}
	markAll := func(keys ...string) {
		for _, k := range keys {
			s.unknown[k] = true
		}
	}
	switch in.cmd {
	case "ENV":
		ps, err := pairs(in)
		if err != nil {
			markAll("Env:*")
			return refs
		}
		// All values of one instruction are expanded before any is set.
		vals := make([]string, len(ps))
		errs := make([]error, len(ps))
		for i, p := range ps {
			vals[i], errs[i] = expand(p.value)
		}
		for i, p := range ps {
			if errs[i] != nil {
				s.setEnv(p.key, "")
				s.setBy["Env:"+p.key] = in
				s.unknown["Env:"+p.key] = true
				continue
			}
			s.setEnv(p.key, vals[i])
			s.set("Env:"+p.key, in)
		}
	case "LABEL":
		ps, err := pairs(in)
		if err != nil {
			markAll("Labels:*")
			return refs
		}
		for _, p := range ps {
			k, kerr := expand(p.key)
			v, verr := expand(p.value)
			if kerr != nil {
				markAll("Labels:*")
				continue
			}
			if s.cfg.Labels == nil {
				s.cfg.Labels = map[string]string{}
			}
			s.cfg.Labels[k] = v
			s.set("Labels:"+k, in)
			if verr != nil {
				s.unknown["Labels:"+k] = true
			}
		}
	case "WORKDIR":
		p, err := expand(strings.TrimSpace(in.args))
		if err != nil {
			markAll("WorkingDir")
			return refs
		}
		if !path.IsAbs(p) {
			cur := s.cfg.WorkingDir
			if cur == "" {
				cur = "/"
			}
			p = path.Join(cur, p)
		}
		s.cfg.WorkingDir = path.Clean(p)
		s.set("WorkingDir", in)
	case "USER":
		u, err := expand(strings.TrimSpace(in.args))
		s.cfg.User = u
		s.set("User", in)
		if err != nil {
			markAll("User")
		}
	case "STOPSIGNAL":
		v, err := expand(strings.TrimSpace(in.args))
		s.cfg.StopSignal = v
		s.set("StopSignal", in)
		if err != nil {
			markAll("StopSignal")
		}
	case "EXPOSE":
		ports, err := s.exposed(in, expand)
		if err != nil {
			markAll("ExposedPorts")
			return refs
		}
		if s.cfg.ExposedPorts == nil {
			s.cfg.ExposedPorts = map[string]struct{}{}
		}
		for _, p := range ports {
			s.cfg.ExposedPorts[p] = struct{}{}
		}
		s.set("ExposedPorts", in)
	case "VOLUME":
		vols, err := s.volumes(in, expand)
		if err != nil {
			markAll("Volumes")
			return refs
		}
		if s.cfg.Volumes == nil {
			s.cfg.Volumes = map[string]struct{}{}
		}
		for _, v := range vols {
			s.cfg.Volumes[v] = struct{}{}
		}
		s.set("Volumes", in)
	case "CMD", "ENTRYPOINT":
		argv, err := s.command(in)
		if err != nil {
			markAll(fieldName(in.cmd))
			if in.cmd == "ENTRYPOINT" && !s.cmdSet {
				markAll("Cmd")
			}
			return refs
		}
		if in.cmd == "CMD" {
			s.cfg.Cmd = argv
			s.cmdSet = true
			s.set("Cmd", in)
		} else {
			s.cfg.Entrypoint = argv
			s.set("Entrypoint", in)
			if !s.cmdSet {
				// An ENTRYPOINT resets the CMD inherited from the base.
				s.cfg.Cmd = nil
				s.set("Cmd", in)
			}
		}
	case "HEALTHCHECK":
		h, err := s.healthcheck(in)
		if err != nil {
			markAll("Healthcheck")
			return refs
		}
		s.cfg.Healthcheck = h
		s.set("Healthcheck", in)
	case "SHELL":
		sh, err := argvOf(in)
		if err != nil {
			markAll("Shell")
			return refs
		}
		s.cfg.Shell = sh
		s.set("Shell", in)
	case "ARG":
		s.arg(in, expand)
	case "ONBUILD":
		s.cfg.OnBuild = append(s.cfg.OnBuild, strings.TrimSpace(in.args))
		s.set("OnBuild", in)
	case "MAINTAINER":
		s.author = strings.TrimSpace(in.args)
		s.set("Author", in)
	}
	return refs
}

func fieldName(cmd string) string {
	if cmd == "CMD" {
		return "Cmd"
	}
	return "Entrypoint"
}

// arg declares build arguments. Their values are known when recorded in
// the ARG entry (BuildKit, "ARG X=1") or by a later RUN ("|1 X=1 ...").
func (s *replayState) arg(in instruction, expand func(string) (string, error)) {
	words := strings.Fields(in.args)
	for _, w := range words {
		name, def, hasDef := strings.Cut(w, "=")
		a := argValue{}
		if hasDef {
			if v, err := expand(def); err == nil {
				a = argValue{value: v, known: true}
			}
		}
		s.args[name] = a
	}
}

// learnArgs records build-argument values that a RUN entry shows.
func (s *replayState) learnArgs(in instruction) {
	for k, v := range in.runArgs {
		if a, ok := s.args[k]; ok && !a.known {
			s.args[k] = argValue{value: v, known: true}
		}
	}
}

var goListRE = regexp.MustCompile(`^(?:map)?\[(.*)\]$`)

func (s *replayState) exposed(in instruction, expand func(string) (string, error)) ([]string, error) {
	var words []string
	if m := goListRE.FindStringSubmatch(strings.TrimSpace(in.args)); in.expanded && m != nil {
		for _, w := range strings.Fields(m[1]) {
			words = append(words, strings.TrimSuffix(w, ":{}"))
		}
	} else {
		ws, err := splitWords(in.args)
		if err != nil {
			return nil, err
		}
		for _, w := range ws {
			v, err := expand(w)
			if err != nil {
				return nil, err
			}
			words = append(words, strings.Fields(v)...)
		}
	}
	var out []string
	for _, w := range words {
		port, proto, _ := strings.Cut(w, "/")
		if proto == "" {
			proto = "tcp"
		}
		proto = strings.ToLower(proto)
		lo, hi, isRange := strings.Cut(port, "-")
		if !isRange {
			hi = lo
		}
		l, err1 := strconv.Atoi(lo)
		h, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || h < l || h-l > 65535 {
			return nil, fmt.Errorf("bad port %q", w)
		}
		for p := l; p <= h; p++ {
			out = append(out, fmt.Sprintf("%d/%s", p, proto))
		}
	}
	return out, nil
}

func (s *replayState) volumes(in instruction, expand func(string) (string, error)) ([]string, error) {
	args := strings.TrimSpace(in.args)
	var raw []string
	switch {
	case json.Unmarshal([]byte(args), &raw) == nil && !in.expanded:
	case in.expanded:
		m := goListRE.FindStringSubmatch(args)
		if m == nil {
			return nil, fmt.Errorf("cannot read %q", args)
		}
		return strings.Fields(m[1]), nil
	default:
		ws, err := splitWords(args)
		if err != nil {
			return nil, err
		}
		raw = ws
	}
	var out []string
	for _, w := range raw {
		v, err := expand(w)
		if err != nil {
			return nil, err
		}
		if v = strings.TrimSpace(v); v == "" {
			return nil, fmt.Errorf("empty volume")
		}
		out = append(out, v)
	}
	return out, nil
}

// command evaluates CMD or ENTRYPOINT: the exec form as is, the shell form
// run by the current SHELL.
func (s *replayState) command(in instruction) ([]string, error) {
	if argv, err := argvOf(in); err == nil {
		return argv, nil
	}
	if in.expanded {
		return nil, fmt.Errorf("cannot read %q", in.args)
	}
	shell := s.cfg.Shell
	if len(shell) == 0 {
		shell = []string{"/bin/sh", "-c"}
	}
	return append(slices.Clone(shell), strings.TrimSpace(in.args)), nil
}

// argvOf reads a JSON array, or BuildKit's Go-quoted list `["a" "b"]`.
func argvOf(in instruction) ([]string, error) {
	args := strings.TrimSpace(in.args)
	var argv []string
	if err := json.Unmarshal([]byte(args), &argv); err == nil {
		if argv == nil {
			argv = []string{}
		}
		return argv, nil
	}
	if !in.expanded || !strings.HasPrefix(args, "[") || !strings.HasSuffix(args, "]") {
		return nil, fmt.Errorf("not a list: %q", args)
	}
	rest := strings.TrimSpace(args[1 : len(args)-1])
	argv = []string{}
	for rest != "" {
		q, err := strconv.QuotedPrefix(rest)
		if err != nil {
			return nil, fmt.Errorf("not a list: %q", args)
		}
		v, _ := strconv.Unquote(q)
		argv = append(argv, v)
		rest = strings.TrimSpace(rest[len(q):])
	}
	return argv, nil
}

// healthcheck evaluates HEALTHCHECK [--option=value...] CMD ... | NONE.
func (s *replayState) healthcheck(in instruction) (*v1.HealthConfig, error) {
	if in.expanded {
		// BuildKit records a Go struct dump; leave it to the merge.
		return nil, fmt.Errorf("cannot read %q", in.args)
	}
	rest := strings.TrimSpace(in.args)
	h := &v1.HealthConfig{}
	for strings.HasPrefix(rest, "--") {
		opt, after, _ := strings.Cut(rest, " ")
		rest = strings.TrimSpace(after)
		name, val, ok := strings.Cut(strings.TrimPrefix(opt, "--"), "=")
		if !ok {
			return nil, fmt.Errorf("bad option %q", opt)
		}
		var err error
		switch name {
		case "interval":
			h.Interval, err = time.ParseDuration(val)
		case "timeout":
			h.Timeout, err = time.ParseDuration(val)
		case "start-period":
			h.StartPeriod, err = time.ParseDuration(val)
		case "retries":
			h.Retries, err = strconv.Atoi(val)
		default:
			err = fmt.Errorf("unknown option %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	kind, args, _ := strings.Cut(rest, " ")
	switch strings.ToUpper(kind) {
	case "NONE":
		return &v1.HealthConfig{Test: []string{"NONE"}}, nil
	case "CMD":
		argv, err := argvOf(instruction{args: args})
		if err == nil {
			h.Test = append([]string{"CMD"}, argv...)
		} else {
			h.Test = []string{"CMD-SHELL", strings.TrimSpace(args)}
		}
		return h, nil
	}
	return nil, fmt.Errorf("bad HEALTHCHECK %q", rest)
}

// copyDest returns the destination of a COPY or ADD entry.
func copyDest(in instruction) string {
	args := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(in.args), "# buildkit"))
	if i := strings.LastIndex(args, " in "); i >= 0 && !in.expanded {
		return strings.TrimSpace(args[i+4:])
	}
	f := strings.Fields(args)
	if len(f) == 0 {
		return ""
	}
	return f[len(f)-1]
}

// replayed holds the two replays and the hazards found on the way.
type replayed struct {
	o, n     *replayState
	warnings []keyedWarning
	// edits are the history entries whose text changes on the new base.
	edits []HistoryEdit
	// baseLabel is the label that names the base (see Input.BaseLabel).
	baseLabel string
}

func (r *replayed) warn(key, code, format string, args ...any) {
	r.warnings = append(r.warnings, keyedWarning{key: key, w: Warning{Code: code, Message: fmt.Sprintf(format, args...)}})
}

// replay evaluates the instructions on the old base and on the new one, in
// lockstep, comparing the two where a step's effect on the files depends on
// the base.
func replay(instrs []instruction, old, nw *v1.ConfigFile, baseLabel string) *replayed {
	r := &replayed{o: newReplayState(old), n: newReplayState(nw), baseLabel: baseLabel}
	for i, in := range instrs {
		r.hazards(in)
		oEnv, nEnv := envMap(r.o.cfg.Env), envMap(r.n.cfg.Env)
		ow, nwd := r.o.cfg.WorkingDir, r.n.cfg.WorkingDir
		r.o.apply(in)
		r.n.apply(in)
		if in.expanded && in.cmd == "WORKDIR" {
			r.reconcileWorkdir(i, in, ow, nwd, oEnv, nEnv)
		}
		if in.cmd == "ARG" {
			// A later RUN may record the values of arguments the ARG entry
			// does not.
			for _, later := range instrs[i+1:] {
				r.o.learnArgs(later)
				r.n.learnArgs(later)
			}
		}
		if in.expanded && (in.cmd == "ENV" || in.cmd == "LABEL") {
			r.reconcileExpanded(i, in, oEnv, nEnv)
		}
	}
	return r
}

// hazards compares the working directory a step runs in on either base.
func (r *replayed) hazards(in instruction) {
	ow, nw := r.o.cfg.WorkingDir, r.n.cfg.WorkingDir
	if ow == "" {
		ow = "/"
	}
	if nw == "" {
		nw = "/"
	}
	switch in.cmd {
	case "WORKDIR":
		p := strings.TrimSpace(in.args)
		if ow != nw && !path.IsAbs(p) && !in.expanded {
			r.warn("WorkingDir", CodeWorkdirMoved, "WORKDIR %s was resolved against the old base's working directory %s, the new base's is %s: the image's files sit under %s, a rebuild would put them under %s",
				p, ow, nw, path.Join(ow, p), path.Join(nw, p))
		}
		if in.expanded && ow != nw && ow != "/" && strings.HasPrefix(p, ow+"/") {
			r.warn("WorkingDir", CodeWorkdirMoved, "WORKDIR %s lies under the old base's working directory %s: it is taken as given relative to it, as %s under the new base's %s (the history records it resolved, so an absolute WORKDIR %s cannot be told apart); what the application put there sits under the old path",
				p, ow, path.Join(nw, strings.TrimPrefix(p, ow+"/")), nw, p)
		}
	case "RUN":
		if ow != nw {
			r.warn("WorkingDir", CodeWorkdirMoved, "%s ran in %s on the old base, a rebuild would run it in %s", clip(in.String()), ow, nw)
		}
	case "COPY", "ADD":
		if d := copyDest(in); ow != nw && d != "" && !path.IsAbs(d) {
			r.warn("WorkingDir", CodeWorkdirMoved, "%s copied to %s relative to the old base's working directory %s, a rebuild would copy to %s",
				in.cmd, d, ow, path.Join(nw, d))
		}
	}
}

// reconcileExpanded rewrites, in the new base's replay, values that an
// expanding builder recorded with the old base's values inside.
func (r *replayed) reconcileExpanded(entry int, in instruction, oEnv, nEnv map[string]string) {
	ps, err := pairs(in)
	if err != nil {
		return
	}
	for _, p := range ps {
		if in.cmd == "LABEL" {
			if p.key == r.baseLabel {
				continue
			}
			if j, ov, ok := embedsChanged(p.value, "", oEnv, nEnv); ok {
				r.warn("Labels:"+p.key, CodeOldValueEmbedded, "LABEL %s=%s contains %q, the old base's value of %s (new base: %q); the history records it expanded, so it is kept", p.key, p.value, ov, j, nEnv[j])
			}
			continue
		}
		v, skip := p.value, ""
		ov, inO := oEnv[p.key]
		nv := nEnv[p.key]
		if inO && ov != nv && v != ov {
			if nvv, ok := rebasePart(v, ov, nv); ok {
				v, skip = nvv, p.key
				r.n.setEnv(p.key, v)
				r.edit(entry, in, p.key+"="+p.value, p.key+"="+v, "Env:"+p.key, v)
			}
		}
		if inO && ov != nv && v == ov && ov != "" {
			skip = p.key
			r.warn("Env:"+p.key, CodeOldValueEmbedded, "ENV %s=%s equals the old base's value (new base: %q): the history records values expanded, so whether it was written out or taken from the base is unknown; it is kept", p.key, v, nv)
		}
		if j, jv, ok := embedsChanged(v, skip, oEnv, nEnv); ok {
			r.warn("Env:"+p.key, CodeOldValueEmbedded, "ENV %s=%s contains %q, the old base's value of %s (new base: %q); the history records it expanded, so it is kept", p.key, v, jv, j, nEnv[j])
		}
	}
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}

// reconcileWorkdir resolves, in the new base's replay, a WORKDIR that an
// expanding builder recorded resolved against the old base's working
// directory ow: taken as relative, it moves under the new base's nw (the
// hazard is reported by hazards).
func (r *replayed) reconcileWorkdir(entry int, in instruction, ow, nw string, oEnv, nEnv map[string]string) {
	p := strings.TrimSpace(in.args)
	if ow == "" || ow == "/" || ow == nw || !strings.HasPrefix(p, ow+"/") || r.n.isUnknown("WorkingDir") {
		// WORKDIR $JAVA_HOME/app is recorded /opt/rt/1/app: an old base
		// value inside, which the new base changes, is kept and reported.
		if j, jv, ok := embedsChanged(p, "", oEnv, nEnv); ok {
			r.warn("WorkingDir", CodeOldValueEmbedded, "WORKDIR %s contains %q, the old base's value of %s (new base: %q); the history records it expanded, so it is kept", p, jv, j, nEnv[j])
		}
		return
	}
	if nw == "" {
		nw = "/"
	}
	np := path.Join(nw, strings.TrimPrefix(p, ow+"/"))
	r.n.cfg.WorkingDir = np
	r.edit(entry, in, "WORKDIR "+p, "WORKDIR "+np, "WorkingDir", np)
}

// edit records that entry's text becomes what a rebuild would record: from
// replaced by to, for the config value key=value.
func (r *replayed) edit(entry int, in instruction, from, to, key, value string) {
	text := in.text
	if i := strings.Index(text, from); i >= 0 {
		text = text[:i] + to + text[i+len(from):]
	} else {
		return
	}
	for i, e := range r.edits {
		if e.Entry == entry {
			// Another value of the same instruction.
			r.edits[i].CreatedBy = strings.Replace(e.CreatedBy, from, to, 1)
			r.edits[i].key, r.edits[i].value = key, value
			return
		}
	}
	r.edits = append(r.edits, HistoryEdit{Entry: entry, CreatedBy: text, key: key, value: value})
}
