package gitops

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Edit replaces one scalar value.
type Edit struct {
	// Line and Column locate the scalar as Field does.
	Line, Column int
	// Start and End are the byte offsets of the value's characters.
	Start, End int
	// Old is the value now, New its replacement.
	Old, New string
	// Block is set when the value lies inside a literal block scalar
	// holding YAML (Field.Block).
	Block *Block
}

// MaxFileSize bounds the files Scan and Rewrite accept, 16 MiB (parsing is
// done in memory).
const MaxFileSize = 16 << 20

// Rewrite applies edits to data and checks the result: the bytes outside
// the edited values are kept as they are, and the YAML parser must read the
// result exactly as it reads data (structure, styles, anchors, comments,
// positions) except that each edited scalar now holds its new value as a
// string. New values must not need quoting that the old value's style lacks
// (references never do). file names the file in errors.
func Rewrite(file string, data []byte, edits []Edit) ([]byte, error) {
	if len(edits) == 0 {
		return data, nil
	}
	sorted := append([]Edit(nil), edits...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Start < sorted[j].Start })
	var out bytes.Buffer
	out.Grow(len(data) + 80*len(edits))
	at := 0
	for _, e := range sorted {
		switch {
		case e.Start < at || e.End < e.Start || e.End > len(data):
			return nil, fileError(file, []Problem{{Line: e.Line, Msg: fmt.Sprintf("edit [%d,%d) overlaps another or lies outside the file", e.Start, e.End)}})
		case string(data[e.Start:e.End]) != e.Old:
			return nil, fileError(file, []Problem{{Line: e.Line, Msg: fmt.Sprintf("value is %q, not %q", data[e.Start:e.End], e.Old)}})
		case strings.ContainsAny(e.New, "\r\n'\"\\#") || strings.Contains(e.New, ": "):
			return nil, fileError(file, []Problem{{Line: e.Line, Msg: fmt.Sprintf("refusing to write %q: it would need another quoting style", e.New)}})
		}
		out.Write(data[at:e.Start])
		out.WriteString(e.New)
		at = e.End
	}
	out.Write(data[at:])
	after := out.Bytes()
	if err := Verify(data, after, edits); err != nil {
		return nil, fileError(file, []Problem{{Msg: "the rewritten file would not parse as the original does except at the pinned values, so it was left untouched: " + err.Error()}})
	}
	return after, nil
}

// Verify parses before and after and requires the same documents, node by
// node (kind, style, tag, value, anchor, aliases, comments, line and
// column), except the scalars the edits name: each must hold its Old value
// before and its New value after, as a string (or with the same explicit
// tag). Edits inside a block scalar change the block's text at their
// places only, and the text, read as YAML, is verified the same way.
func Verify(before, after []byte, edits []Edit) error {
	a, err := parseDocs(before)
	if err != nil {
		return fmt.Errorf("before: %w", err)
	}
	b, err := parseDocs(after)
	if err != nil {
		return fmt.Errorf("after: %w", err)
	}
	if len(a) != len(b) {
		return fmt.Errorf("%d documents became %d", len(a), len(b))
	}
	c := comparer{edits: map[pos]*Edit{}, blocks: map[pos][]Edit{}, used: map[pos]bool{}}
	for i := range edits {
		if bl := edits[i].Block; bl != nil {
			p := pos{bl.Line, bl.Column}
			c.blocks[p] = append(c.blocks[p], edits[i])
			continue
		}
		c.edits[pos{edits[i].Line, edits[i].Column}] = &edits[i]
	}
	for i := range a {
		if err := c.same(a[i], b[i]); err != nil {
			return err
		}
	}
	for p := range c.edits {
		if !c.used[p] {
			return fmt.Errorf("line %d column %d: no scalar there to rewrite", p.line, p.col)
		}
	}
	for p := range c.blocks {
		if !c.used[p] {
			return fmt.Errorf("line %d column %d: no block scalar there to rewrite", p.line, p.col)
		}
	}
	return nil
}

// sameBlock checks a block scalar whose text holds edits: the text after
// is the text before with each edit applied at its inner offsets, and the
// two texts read as YAML differ only there.
func sameBlock(a, b *yaml.Node, edits []Edit) error {
	if a.Style&yaml.LiteralStyle == 0 {
		return fmt.Errorf("not a literal block scalar")
	}
	inner := make([]Edit, len(edits))
	for i, e := range edits {
		bl := e.Block
		inner[i] = Edit{Line: bl.InnerLine, Column: bl.InnerColumn, Start: bl.InnerStart, End: bl.InnerEnd, Old: e.Old, New: e.New}
	}
	sort.Slice(inner, func(i, j int) bool { return inner[i].Start < inner[j].Start })
	var want strings.Builder
	at := 0
	for _, e := range inner {
		if e.Start < at || e.End > len(a.Value) || a.Value[e.Start:e.End] != e.Old {
			return fmt.Errorf("the block's text does not hold %q at line %d column %d", e.Old, e.Line, e.Column)
		}
		want.WriteString(a.Value[at:e.Start])
		want.WriteString(e.New)
		at = e.End
	}
	want.WriteString(a.Value[at:])
	switch {
	case b.Value != want.String():
		return fmt.Errorf("the block's text changed elsewhere than at its pinned values")
	case a.Tag != b.Tag:
		return fmt.Errorf("tag changed")
	}
	if err := Verify([]byte(a.Value), []byte(b.Value), inner); err != nil {
		return fmt.Errorf("in the block's text: %w", err)
	}
	return nil
}

var yaml12 = regexp.MustCompile(`(?m)(^|\x{feff})%YAML 1\.2`)

type pos struct{ line, col int }

type comparer struct {
	edits  map[pos]*Edit
	blocks map[pos][]Edit // edits inside a block scalar, by the block's position
	used   map[pos]bool
}

func (c *comparer) same(a, b *yaml.Node) error {
	at := func(format string, args ...any) error {
		return fmt.Errorf("line %d column %d: %s", a.Line, a.Column, fmt.Sprintf(format, args...))
	}
	switch {
	case a.Kind != b.Kind:
		return at("node kind changed")
	case a.Line != b.Line || a.Column != b.Column:
		return at("node moved to line %d column %d", b.Line, b.Column)
	case a.Style != b.Style:
		return at("style changed")
	case a.Anchor != b.Anchor:
		return at("anchor changed")
	case a.HeadComment != b.HeadComment || a.LineComment != b.LineComment || a.FootComment != b.FootComment:
		return at("comment changed")
	case len(a.Content) != len(b.Content):
		return at("%d children became %d", len(a.Content), len(b.Content))
	}
	if a.Kind == yaml.AliasNode {
		if (a.Alias == nil) != (b.Alias == nil) || a.Alias != nil && (a.Alias.Line != b.Alias.Line || a.Alias.Column != b.Alias.Column) {
			return at("alias target changed")
		}
		return nil
	}
	if a.Kind == yaml.ScalarNode {
		p := pos{a.Line, a.Column}
		if be := c.blocks[p]; be != nil {
			if c.used[p] {
				return at("two scalars at one position")
			}
			c.used[p] = true
			if err := sameBlock(a, b, be); err != nil {
				return at("%v", err)
			}
			return nil
		}
		if e := c.edits[p]; e != nil {
			if c.used[p] {
				return at("two scalars at one position")
			}
			c.used[p] = true
			switch {
			case a.Value != e.Old:
				return at("value is %q, not %q", a.Value, e.Old)
			case b.Value != e.New:
				return at("value became %q, not %q", b.Value, e.New)
			case b.Tag != "!!str" && (a.Style&yaml.TaggedStyle == 0 || a.Tag != b.Tag):
				// A plain 1.0 was a float; TAG@DIGEST must read as a
				// string, unless the file tags the value explicitly.
				return at("new value reads as %s, not a string", b.Tag)
			}
			return nil
		}
		if a.Value != b.Value || a.Tag != b.Tag {
			return at("value %q (%s) became %q (%s)", a.Value, a.Tag, b.Value, b.Tag)
		}
		return nil
	}
	if a.Tag != b.Tag {
		return at("tag changed")
	}
	for i := range a.Content {
		if err := c.same(a.Content[i], b.Content[i]); err != nil {
			return err
		}
	}
	return nil
}

// parseDocs parses every document of data into node trees. The parser
// panicking on hostile input is reported as an error.
func parseDocs(data []byte) (docs []*yaml.Node, err error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("larger than %d bytes", MaxFileSize)
	}
	defer func() {
		if r := recover(); r != nil {
			docs, err = nil, fmt.Errorf("YAML parser failed: %v", r)
		}
	}()
	// The parser knows YAML 1.1 and refuses a "%YAML 1.2" directive; read
	// such files as 1.1 (same length, so positions hold).
	if bytes.Contains(data, []byte("%YAML 1.2")) {
		data = yaml12.ReplaceAll(data, []byte("${1}%YAML 1.1"))
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("not valid YAML: %w", err)
		}
		docs = append(docs, &n)
	}
}

// checkFields asks the YAML parser to confirm what the scanner found: each
// field is a scalar at its position with its value and quoting, and the
// parser sees no marker comment the scanner missed (comment lines holding
// one of keys, against markers). It also refuses a marked tag whose
// mapping has a "digest" field, or a marked name whose mapping has a
// "registry" field, that is not marked for the same image: the tools that
// read the file join those fields, so the reference would not be the one
// pinned (Kustomize's name:tag@new@old) or would be looked up elsewhere.
func checkFields(docs []*yaml.Node, fields []marked, markers int, keys []string) []Problem {
	scalars := map[pos]*yaml.Node{}
	byPos := map[pos]*marked{}
	for i := range fields {
		byPos[pos{fields[i].Line, fields[i].Column}] = &fields[i]
	}
	var problems []Problem
	seen := 0
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		for _, c := range []string{n.HeadComment, n.LineComment, n.FootComment} {
			for _, l := range strings.Split(c, "\n") {
				for _, k := range keys {
					if strings.Contains(l, k) {
						seen++
						break
					}
				}
			}
		}
		if n.Kind == yaml.ScalarNode {
			scalars[pos{n.Line, n.Column}] = n
		}
		if n.Kind == yaml.MappingNode {
			problems = append(problems, checkSiblings(n, byPos)...)
		}
		if n.Kind != yaml.AliasNode {
			for _, c := range n.Content {
				walk(c)
			}
		}
	}
	for _, d := range docs {
		walk(d)
	}
	for _, f := range fields {
		n := scalars[pos{f.Line, f.Column}]
		quoted := n != nil && n.Style&(yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle) != 0
		switch {
		case n == nil:
			problems = append(problems, Problem{Line: f.Line, Msg: fmt.Sprintf("marker %q: the YAML parser sees no scalar at column %d; not rewriting this file", markerID(f.id, f.Kind), f.Column)})
		case n.Value != f.Value || quoted != (f.Quote != 0):
			problems = append(problems, Problem{Line: f.Line, Msg: fmt.Sprintf("marker %q: the YAML parser reads the value as %q, not %q; not rewriting this file", markerID(f.id, f.Kind), n.Value, f.Value)})
		}
	}
	if seen > markers {
		problems = append(problems, Problem{Msg: fmt.Sprintf("the YAML parser sees %d marker comments but only %d could be read line by line (a marker inside a multi-line construct?); not rewriting this file", seen, markers)})
	}
	return problems
}

// checkSiblings checks the marked fields of mapping n against their
// sibling digest and registry fields.
func checkSiblings(n *yaml.Node, byPos map[pos]*marked) []Problem {
	value := func(key string) (*yaml.Node, *yaml.Node) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.Value == key {
				return k, n.Content[i+1]
			}
		}
		return nil, nil
	}
	var problems []Problem
	for i := 1; i < len(n.Content); i += 2 {
		v := n.Content[i]
		f := byPos[pos{v.Line, v.Column}]
		if f == nil || v.Kind != yaml.ScalarNode {
			continue
		}
		var sibling string
		var want Kind
		switch f.Kind {
		case Tag, Whole:
			sibling, want = "digest", Digest
		case Name:
			sibling, want = "registry", Registry
		default:
			continue
		}
		k, sv := value(sibling)
		if k == nil || sv == v {
			continue
		}
		what := map[Kind]string{
			Digest:   "the digest goes there and the tag keeps no digest of its own; unmarked, the tools that join the two (Kustomize, charts) would read both digests or the old one",
			Registry: "the chart joins REGISTRY/REPOSITORY; unmarked, the repository would be looked up without its registry (on Docker Hub for a bare path)",
		}[want]
		mark := fmt.Sprintf("{%q: %q}", f.key, f.id+":"+sibling)
		switch sf := byPos[pos{sv.Line, sv.Column}]; {
		case sf == nil:
			problems = append(problems, Problem{Line: f.Line, Msg: fmt.Sprintf("image %q: the %s at line %d has a sibling %q field (line %d) that is not marked; mark it %s: %s", f.id, kindName(f.Kind), f.Line, sibling, k.Line, mark, what)})
		case sf.id != f.id || sf.Kind != want:
			problems = append(problems, Problem{Line: sf.Line, Msg: fmt.Sprintf("image %q: the sibling %q field of the %s at line %d is marked %q; mark it %s", f.id, sibling, kindName(f.Kind), f.Line, markerID(sf.id, sf.Kind), mark)})
		}
	}
	return problems
}

// kindName names a field kind in messages.
func kindName(k Kind) string {
	return map[Kind]string{Whole: "reference", Name: "repository", Tag: "tag", Digest: "digest", Registry: "registry"}[k]
}
