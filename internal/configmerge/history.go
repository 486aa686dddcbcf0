package configmerge

import (
	"regexp"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Style is how a builder records Dockerfile instructions in the history.
type Style string

// History styles.
const (
	// StyleAsWritten: buildah and the classic builder record config
	// instructions as written ("/bin/sh -c #(nop) ENV GREETING=\"from ${BASEVER}\"").
	StyleAsWritten Style = "as-written"
	// StyleExpanded: BuildKit records them after expansion
	// ("ENV GREETING=from 1", comment "buildkit.dockerfile.v0").
	StyleExpanded Style = "expanded"
	// StyleUnknown: the history does not record instructions this tool can
	// read; the config is merged three ways.
	StyleUnknown Style = "unknown"
)

const buildkitComment = "buildkit.dockerfile.v0"

// instruction is one history entry read as a Dockerfile instruction.
type instruction struct {
	// cmd is the upper-case instruction: ENV, RUN, COPY...; "" when the
	// entry could not be read.
	cmd string
	// args is the rest of the instruction as recorded.
	args string
	// expanded is true when the builder recorded values after expansion.
	expanded bool
	// runArgs are the build arguments a RUN recorded ("|1 FOO=bar ...").
	runArgs map[string]string
	// text is the entry's created_by, for explanations.
	text string
}

func (in instruction) String() string {
	if in.cmd == "" {
		return in.text
	}
	return strings.TrimSpace(in.cmd + " " + in.args)
}

var (
	nopRE     = regexp.MustCompile(`^(?:\|\d+ .*?)?/bin/sh -c #\(nop\)\s+([A-Za-z]+)(?:\s+(.*?))?\s*$`)
	shellRE   = regexp.MustCompile(`^(\|\d+ .*?)?/bin/sh -c `)
	runArgsRE = regexp.MustCompile(`^\|(\d+) (.*)$`)
)

// parseHistory reads the application's own history entries as
// instructions and tells the style of the whole: as written only when every
// entry was read in that style.
func parseHistory(hist []v1.History) ([]instruction, Style) {
	if len(hist) == 0 {
		return nil, StyleUnknown
	}
	var out []instruction
	styles := map[Style]bool{}
	for _, h := range hist {
		in, st := parseEntry(h)
		styles[st] = true
		out = append(out, in)
	}
	switch {
	case styles[StyleUnknown]:
		return out, StyleUnknown
	case styles[StyleExpanded]:
		return out, StyleExpanded
	}
	return out, StyleAsWritten
}

func parseEntry(h v1.History) (instruction, Style) {
	s := h.CreatedBy
	in := instruction{text: s}
	if h.Comment == buildkitComment {
		in.expanded = true
		cmd, rest, _ := strings.Cut(s, " ")
		in.cmd, in.args = strings.ToUpper(cmd), strings.TrimSpace(rest)
		if in.cmd == "RUN" {
			in.runArgs = recordedArgs(in.args)
		}
		if !knownInstruction(in.cmd) {
			in.cmd = ""
			return in, StyleUnknown
		}
		return in, StyleExpanded
	}
	if m := nopRE.FindStringSubmatch(s); m != nil {
		in.cmd, in.args = strings.ToUpper(m[1]), m[2]
		if !knownInstruction(in.cmd) {
			in.cmd = ""
			return in, StyleUnknown
		}
		return in, StyleAsWritten
	}
	if m := shellRE.FindStringSubmatch(s); m != nil {
		in.cmd, in.args = "RUN", strings.TrimPrefix(s, m[0])
		in.runArgs = recordedArgs(strings.TrimSpace(m[1]))
		return in, StyleAsWritten
	}
	return in, StyleUnknown
}

func knownInstruction(cmd string) bool {
	switch cmd {
	case "ENV", "LABEL", "WORKDIR", "USER", "EXPOSE", "VOLUME", "CMD", "ENTRYPOINT", "STOPSIGNAL",
		"HEALTHCHECK", "SHELL", "ARG", "ONBUILD", "MAINTAINER", "RUN", "COPY", "ADD":
		return true
	}
	return false
}

// recordedArgs reads the "|N K=V ..." prefix a RUN entry records. Values
// with spaces cannot be told apart and are skipped.
func recordedArgs(s string) map[string]string {
	m := runArgsRE.FindStringSubmatch(s)
	if m == nil {
		return nil
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		return nil
	}
	fields := strings.Fields(m[2])
	out := map[string]string{}
	for i := 0; i < n && i < len(fields); i++ {
		k, v, ok := strings.Cut(fields[i], "=")
		if !ok {
			return out
		}
		out[k] = v
	}
	return out
}
