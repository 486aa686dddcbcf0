package basedetect

import (
	"regexp"
	"strings"
)

// instruction is a history entry's created_by read as a Dockerfile
// instruction: its keyword and arguments.
type instruction struct {
	keyword string // upper case: "LABEL", "ENV", "RUN", ...; "" when unknown
	args    string
}

// nopPrefix is how the classic Docker builder and buildah record
// instructions that run no command: "/bin/sh -c #(nop) LABEL FROM=base:1".
const nopPrefix = "#(nop)"

// keywords are the Dockerfile instructions a history entry can record.
var keywords = map[string]bool{
	"ADD": true, "ARG": true, "CMD": true, "COPY": true, "ENTRYPOINT": true, "ENV": true,
	"EXPOSE": true, "HEALTHCHECK": true, "LABEL": true, "MAINTAINER": true, "ONBUILD": true,
	"RUN": true, "SHELL": true, "STOPSIGNAL": true, "USER": true, "VOLUME": true, "WORKDIR": true,
}

// parseInstruction reads createdBy in the forms builders write:
//
//	LABEL FROM=base:1                      (BuildKit, kaniko)
//	/bin/sh -c #(nop)  LABEL FROM=base:1   (classic Docker builder, buildah)
//	/bin/sh -c apt-get update              (a RUN, classic builder and buildah)
//	|2 A=1 B=2 /bin/sh -c make             (a RUN with build arguments)
func parseInstruction(createdBy string) instruction {
	s := strings.TrimSpace(createdBy)
	if i := strings.Index(s, nopPrefix); i >= 0 {
		s = strings.TrimSpace(s[i+len(nopPrefix):])
	} else if strings.HasPrefix(s, "/bin/sh -c ") || strings.HasPrefix(s, "|") || strings.HasPrefix(s, "cmd /S /C ") {
		return instruction{keyword: "RUN", args: s}
	}
	word, rest, _ := strings.Cut(s, " ")
	if kw := strings.ToUpper(word); keywords[kw] {
		return instruction{keyword: kw, args: strings.TrimSpace(rest)}
	}
	return instruction{}
}

// keyValues reads the arguments of LABEL, ENV or ARG: "k=v k2="v 2"", or
// the legacy single "k v" form. It reports false when they cannot be read.
func keyValues(args string) (map[string]string, bool) {
	words, ok := shellWords(args)
	if !ok || len(words) == 0 {
		return nil, false
	}
	out := map[string]string{}
	if !strings.Contains(words[0], "=") {
		// Legacy form: LABEL key value with spaces (one pair); ARG name.
		out[words[0]] = strings.Join(words[1:], " ")
		return out, true
	}
	for _, w := range words {
		k, v, found := strings.Cut(w, "=")
		if !found || k == "" {
			return nil, false
		}
		out[k] = v
	}
	return out, true
}

// shellWords splits s into words the way a Dockerfile does for LABEL and
// ENV: spaces separate words, quotes group, a backslash escapes.
func shellWords(s string) ([]string, bool) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	escaped := false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\' && quote != '\'':
			escaped, inWord = true, true
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 || escaped {
		return nil, false
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, true
}

// volatile matches what differs between two builds of the same Dockerfile
// from the same instructions: content hashes ("COPY file:3f1a… in /"),
// intermediate image IDs in buildah's comments ("FROM 6af9888287a3").
var volatile = regexp.MustCompile(`[0-9a-f]{12,}`)

// normalize removes volatile parts and spacing differences from a history
// string, for matching a base's history against an image's.
func normalize(s string) string {
	return strings.Join(strings.Fields(volatile.ReplaceAllString(s, "…")), " ")
}
