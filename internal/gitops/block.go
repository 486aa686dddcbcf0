package gitops

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// blockFields reads the markers inside the block scalar b: Helm values
// given as a string (Argo CD's spec.source.helm.values, a ConfigMap's
// values.yaml, k3s's valuesContent). The block's text, as the YAML parser
// reads it, is scanned as a YAML file of its own; each field found there
// is placed back in the file, where a literal block keeps the text of
// each line after the block's indentation. Folded blocks, blocks in
// blocks, and blocks whose lines do not map back are refused.
func (m Markers) blockFields(s *scanner, docs []*yaml.Node, b blockRef, nested bool) ([]marked, []Problem) {
	refuse := func(format string, args ...any) []Problem {
		return []Problem{{Line: b.line, Msg: fmt.Sprintf("markers inside the block scalar that starts here: "+format, args...)}}
	}
	node := findBlock(docs, b.line)
	switch {
	case nested:
		return nil, refuse("a block scalar inside Helm values given as a string is not supported")
	case node == nil:
		return nil, refuse("the YAML parser sees no block scalar starting on this line; not rewriting this file")
	case node.Style&yaml.FoldedStyle != 0:
		if !m.foldedHasMarkers(s, b) {
			return nil, nil // the key is mentioned, no field is marked
		}
		return nil, refuse("a folded block scalar (>) joins its lines, so its values cannot be rewritten in place; write it as a literal block (|)")
	}
	inner := node.Value
	fields, problems := m.scanFields([]byte(inner), true)
	if len(problems) > 0 {
		for i := range problems {
			if problems[i].Line > 0 {
				problems[i].Line += b.line
			} else {
				problems[i].Line = b.line
			}
			problems[i].Msg = fmt.Sprintf("in the block scalar at line %d (read as YAML): %s", b.line, problems[i].Msg)
		}
		return nil, problems
	}
	if len(fields) == 0 {
		return nil, nil // the key is mentioned, no field is marked
	}

	// Place the fields in the file. Line k of the text is line b.line+k of
	// the file, after the block's indentation.
	lines := strings.Split(inner, "\n")
	starts := make([]int, len(lines))
	for i, at := 1, 0; i < len(lines); i++ {
		at += len(lines[i-1]) + 1
		starts[i] = at
	}
	indent := -1
	for k, l := range lines {
		if strings.TrimSpace(l) != "" {
			if fl, ok := s.fileLine(b.line + 1 + k); ok && len(fl) >= len(l) {
				indent = len(fl) - len(l)
			}
			break
		}
	}
	for i := range fields {
		f := &fields[i]
		k := f.Line
		fl, ok := s.fileLine(b.line + k)
		if !ok || indent < 0 || k > len(lines) || len(fl) < indent ||
			strings.TrimLeft(fl[:indent], " ") != "" || fl[indent:] != lines[k-1] {
			return nil, []Problem{{Line: b.line + k, Msg: fmt.Sprintf("marker %q inside the block scalar at line %d: the block's text does not map line for line to the file (an indentation indicator?); not rewriting this file", markerID(f.id, f.Kind), b.line)}}
		}
		delta := s.lineStarts[b.line+k-1] + indent - starts[k-1]
		f.Block = &Block{Line: node.Line, Column: node.Column,
			InnerLine: f.Line, InnerColumn: f.Column, InnerStart: f.Start, InnerEnd: f.End}
		f.Line, f.Column = b.line+k, indent+f.Column
		f.Start, f.End = f.Start+delta, f.End+delta
	}
	return fields, nil
}

// foldedHasMarkers tells whether the content lines of the folded block b
// hold a marker (not mere prose).
func (m Markers) foldedHasMarkers(s *scanner, b blockRef) bool {
	var text strings.Builder
	for n := b.line + 1; ; n++ {
		l, ok := s.fileLine(n)
		trimmed := strings.TrimLeft(l, " ")
		if !ok || trimmed != "" && len(l)-len(trimmed) <= b.indent {
			break
		}
		text.WriteString(trimmed)
		text.WriteByte('\n')
	}
	inner := scanner{data: []byte(text.String()), keys: s.keys}
	inner.scan()
	return len(inner.fields) > 0 || len(inner.problems) > 0
}

// fileLine returns line n (1-based) of the scanned data, without its line
// break.
func (s *scanner) fileLine(n int) (string, bool) {
	if n < 1 || n > len(s.lineStarts) {
		return "", false
	}
	start := s.lineStarts[n-1]
	end := len(s.data)
	if n < len(s.lineStarts) {
		end = s.lineStarts[n] - 1
	}
	if end < start {
		end = start
	}
	l := strings.TrimSuffix(string(s.data[start:end]), "\n")
	return strings.TrimSuffix(l, "\r"), true
}

// findBlock returns the block scalar node whose indicator is on line.
func findBlock(docs []*yaml.Node, line int) *yaml.Node {
	var found *yaml.Node
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if found != nil || n.Kind == yaml.AliasNode {
			return
		}
		if n.Kind == yaml.ScalarNode && n.Line == line && n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
			found = n
			return
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	for _, d := range docs {
		walk(d)
	}
	return found
}
