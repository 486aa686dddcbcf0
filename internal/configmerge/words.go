package configmerge

import (
	"errors"
	"fmt"
	"strings"
)

// The Dockerfile word syntax, as the builders apply it to ENV, LABEL,
// WORKDIR, USER, EXPOSE, VOLUME and STOPSIGNAL arguments: quotes, the
// backslash escape and ${VAR} references with the :- :+ - + modifiers.

// errUnknownValue reports a reference to a variable whose value the history
// does not record (an ARG declared without a recorded value).
var errUnknownValue = errors.New("refers to a build argument whose value is not recorded")

// varState is what a lookup knows of a variable.
type varState int

const (
	varUnset varState = iota
	varSet
	varUnknown
)

// lookupFunc returns the value of a variable during expansion.
type lookupFunc func(name string) (string, varState)

// splitWords splits arguments on unquoted white space, keeping quotes and
// escapes inside the words (they are processed when a word is expanded).
func splitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case quote != 0:
			cur.WriteRune(c)
			if c == '\\' && quote == '"' && i+1 < len(rs) {
				i++
				cur.WriteRune(rs[i])
			} else if c == quote {
				quote = 0
			}
		case c == '\\':
			inWord = true
			cur.WriteRune(c)
			if i+1 < len(rs) {
				i++
				cur.WriteRune(rs[i])
			}
		case c == '"' || c == '\'':
			inWord = true
			quote = c
			cur.WriteRune(c)
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			inWord = true
			cur.WriteRune(c)
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// expander expands one word and records the variables it referred to.
type expander struct {
	lookup lookupFunc
	refs   []string
	rs     []rune
	pos    int
}

// expandWord processes quotes, escapes and variable references in word.
func expandWord(word string, lookup lookupFunc) (string, []string, error) {
	e := &expander{lookup: lookup, rs: []rune(word)}
	out, err := e.until(0)
	if err != nil {
		return "", e.refs, err
	}
	return out, e.refs, nil
}

func (e *expander) peek() rune {
	if e.pos < len(e.rs) {
		return e.rs[e.pos]
	}
	return 0
}

// until expands up to the rune stop (0: the end), which it consumes.
func (e *expander) until(stop rune) (string, error) {
	var b strings.Builder
	for e.pos < len(e.rs) {
		c := e.rs[e.pos]
		if stop != 0 && c == stop {
			e.pos++
			return b.String(), nil
		}
		e.pos++
		switch c {
		case '\\':
			if e.pos < len(e.rs) {
				b.WriteRune(e.rs[e.pos])
				e.pos++
			} else {
				b.WriteRune(c)
			}
		case '\'':
			end := strings.IndexRune(string(e.rs[e.pos:]), '\'')
			if end < 0 {
				return "", fmt.Errorf("unterminated single quote")
			}
			s := string(e.rs[e.pos:])[:end]
			b.WriteString(s)
			e.pos += len([]rune(s)) + 1
		case '"':
			s, err := e.doubleQuoted()
			if err != nil {
				return "", err
			}
			b.WriteString(s)
		case '$':
			s, err := e.dollar()
			if err != nil {
				return "", err
			}
			b.WriteString(s)
		default:
			b.WriteRune(c)
		}
	}
	if stop != 0 {
		return "", fmt.Errorf("missing %q", stop)
	}
	return b.String(), nil
}

func (e *expander) doubleQuoted() (string, error) {
	var b strings.Builder
	for e.pos < len(e.rs) {
		c := e.rs[e.pos]
		e.pos++
		switch c {
		case '"':
			return b.String(), nil
		case '\\':
			if n := e.peek(); n == '"' || n == '$' || n == '\\' {
				b.WriteRune(n)
				e.pos++
			} else {
				b.WriteRune(c)
			}
		case '$':
			s, err := e.dollar()
			if err != nil {
				return "", err
			}
			b.WriteString(s)
		default:
			b.WriteRune(c)
		}
	}
	return "", fmt.Errorf("unterminated double quote")
}

func isNameRune(c rune, first bool) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (!first && c >= '0' && c <= '9')
}

func (e *expander) name() string {
	start := e.pos
	for e.pos < len(e.rs) && isNameRune(e.rs[e.pos], e.pos == start) {
		e.pos++
	}
	return string(e.rs[start:e.pos])
}

func (e *expander) value(name string) (string, varState) {
	e.refs = append(e.refs, name)
	return e.lookup(name)
}

// dollar expands a reference after its '$'.
func (e *expander) dollar() (string, error) {
	if e.peek() != '{' {
		n := e.name()
		if n == "" {
			return "$", nil
		}
		v, st := e.value(n)
		if st == varUnknown {
			return "", fmt.Errorf("$%s %w", n, errUnknownValue)
		}
		return v, nil
	}
	e.pos++
	n := e.name()
	if n == "" {
		return "", fmt.Errorf("bad substitution")
	}
	v, st := e.value(n)
	op := ""
	switch e.peek() {
	case '}':
		e.pos++
		if st == varUnknown {
			return "", fmt.Errorf("${%s} %w", n, errUnknownValue)
		}
		return v, nil
	case ':':
		e.pos++
		op = ":" + string(e.peek())
		e.pos++
	default:
		op = string(e.peek())
		e.pos++
	}
	word, err := e.until('}')
	if err != nil {
		return "", err
	}
	if st == varUnknown {
		return "", fmt.Errorf("${%s} %w", n, errUnknownValue)
	}
	switch op {
	case ":-":
		if v == "" {
			return word, nil
		}
		return v, nil
	case "-":
		if st == varUnset {
			return word, nil
		}
		return v, nil
	case ":+":
		if v != "" {
			return word, nil
		}
		return "", nil
	case "+":
		if st == varSet {
			return word, nil
		}
		return "", nil
	}
	return "", fmt.Errorf("unsupported substitution ${%s%s}", n, op)
}
