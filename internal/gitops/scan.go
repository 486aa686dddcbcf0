// Package gitops finds the image references marked in YAML files (Helm
// values, Kubernetes manifests, Kustomize and Flux files), and pins them by
// digest by rewriting only the marked values, byte for byte everywhere else.
//
// A marker is a line comment holding a JSON object, the convention Flux
// image automation uses:
//
//	repository: registry.example.com/group/app # {"$rebase": "app:name"}
//	tag: 2.3.0                                 # {"$rebase": "app:tag"}
//	image: registry.example.com/app:2.3.0      # {"$rebase": "web"}
//
// A line scanner finds the marked values; the YAML parser only checks the
// scanner's findings before, and the whole document after, a rewrite, so
// that a file is never written unless the parse trees agree everywhere but
// at the rewritten values.
package gitops

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/name"
)

// Marker keys: the JSON member of a marker comment.
const (
	// MarkerKey marks images for image-rebase.
	MarkerKey = "$rebase"
	// ImagePolicyKey is the key of Flux image-automation markers, read
	// when Markers lists it.
	ImagePolicyKey = "$imagepolicy"
)

// Markers lists the keys whose comments mark images: MarkerKey,
// ImagePolicyKey or both. A nil Markers means DefaultMarkers.
type Markers []string

// DefaultMarkers reads MarkerKey only.
var DefaultMarkers = Markers{MarkerKey}

func (m Markers) keys() []string {
	if len(m) == 0 {
		return DefaultMarkers
	}
	return m
}

// Has tells cheaply whether data may hold markers; files without are not
// scanned.
func (m Markers) Has(data []byte) bool {
	for _, k := range m.keys() {
		if bytes.Contains(data, []byte(k)) {
			return true
		}
	}
	return false
}

// Kind says what a marked field holds.
type Kind int

// Kinds of marked fields.
const (
	// Whole is a whole reference, host/repo:TAG[@DIGEST], or
	// NAME=host/repo:TAG[@DIGEST] as Argo CD's kustomize.images writes an
	// override (marker "id").
	Whole Kind = iota
	// Name is a repository, host/repo (marker "id:name").
	Name
	// Tag is a tag, TAG[@DIGEST] (marker "id:tag").
	Tag
	// Digest is a digest alone, sha256:… or empty (marker "id:digest").
	Digest
	// Registry is the registry a Name is relative to, host[:port][/path]
	// or empty, as Bitnami-style charts split it (marker "id:registry").
	Registry
)

// suffixes are the marker suffixes of the field kinds after Whole.
var suffixes = [...]struct {
	suffix string
	kind   Kind
}{{":name", Name}, {":tag", Tag}, {":digest", Digest}, {":registry", Registry}}

// Field is one marked scalar value.
type Field struct {
	Kind Kind
	// Line and Column locate the scalar node, 1-based, as the YAML parser
	// reports it: Column counts characters and points at the node's first
	// property (anchor or tag) if any, else at its opening quote or first
	// character. Inside a block scalar they give the place in the file.
	Line, Column int
	// Start and End are the byte offsets of the value's characters in the
	// file (inside the quotes).
	Start, End int
	// Value is the scalar's value.
	Value string
	// Quote is '\'', '"', or 0 for a plain scalar.
	Quote byte
	// Block is set for a value inside a literal block scalar that holds
	// YAML (Helm values given as a string).
	Block *Block
}

// Block locates a field inside a literal block scalar: the block's node,
// and the field within the block's text read as a YAML document.
type Block struct {
	// Line and Column locate the block scalar node (its indicator).
	Line, Column int
	// InnerLine, InnerColumn, InnerStart and InnerEnd locate the value in
	// the block's text, as Field does in a file.
	InnerLine, InnerColumn, InnerStart, InnerEnd int
}

// edit returns the edit that sets the field to v.
func (f *Field) edit(v string) Edit {
	return Edit{Line: f.Line, Column: f.Column, Start: f.Start, End: f.End, Old: f.Value, New: v, Block: f.Block}
}

// Image is one marked image: a whole reference, or a name and a tag, each
// possibly with a digest field, and a name possibly with a registry field.
type Image struct {
	// ID is the marker's identifier ("app" for "app:tag").
	ID string
	// Whole is set for the whole-reference form; Name and Tag otherwise.
	Whole, Name, Tag *Field
	// DigestField holds the digest alone when the file keeps it apart
	// (Kustomize's digest, a chart's image.digest); RegistryField the
	// registry the Name is relative to.
	DigestField, RegistryField *Field
	// Repository, TagName and Digest are the parts of the reference (Digest
	// may be empty). Repository includes the registry field's value.
	Repository, TagName, Digest string

	key    string // the marker key used, for messages
	prefix string // "NAME=" before a whole reference (Argo CD's kustomize.images)
}

// fields lists the image's fields.
func (im *Image) fields() []*Field {
	var out []*Field
	for _, f := range []*Field{im.Whole, im.RegistryField, im.Name, im.Tag, im.DigestField} {
		if f != nil {
			out = append(out, f)
		}
	}
	return out
}

// Line is the line of the image's first field.
func (im *Image) Line() int {
	line := 0
	for _, f := range im.fields() {
		if line == 0 || f.Line < line {
			line = f.Line
		}
	}
	return line
}

// Reference is "repository:tag", the image to rebase or resolve.
func (im *Image) Reference() string { return im.Repository + ":" + im.TagName }

// Pin returns the edits that pin the image to digest, none when the file
// pins that digest already. Without a digest field the tag field becomes
// TAG@DIGEST and a whole reference REPOSITORY:TAG@DIGEST; with one, the
// digest field receives the digest and the tag (or whole reference) keeps
// no digest of its own, as tools that join them (Kustomize, charts) expect.
func (im *Image) Pin(digest string) []Edit {
	var edits []Edit
	set := func(f *Field, v string) {
		if f.Value != v {
			edits = append(edits, f.edit(v))
		}
	}
	switch {
	case im.DigestField != nil && im.Whole != nil:
		set(im.Whole, im.prefix+im.Repository+":"+im.TagName)
		set(im.DigestField, digest)
	case im.DigestField != nil:
		set(im.Tag, im.TagName)
		set(im.DigestField, digest)
	case im.Whole != nil:
		set(im.Whole, im.prefix+im.Repository+":"+im.TagName+"@"+digest)
	default:
		set(im.Tag, im.TagName+"@"+digest)
	}
	return edits
}

// Problem is one error in a file, at a line (0 when it concerns the file).
type Problem struct {
	Line int    `json:"line,omitempty"`
	Msg  string `json:"message"`
}

// FileError lists the problems that keep a file from being rewritten.
type FileError struct {
	File     string
	Problems []Problem
}

// Error names the file and line of each problem.
func (e *FileError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		if p.Line > 0 {
			parts[i] = fmt.Sprintf("%s:%d: %s", e.File, p.Line, p.Msg)
		} else {
			parts[i] = fmt.Sprintf("%s: %s", e.File, p.Msg)
		}
	}
	return strings.Join(parts, "\n")
}

func fileError(file string, problems []Problem) error {
	if len(problems) == 0 {
		return nil
	}
	sort.SliceStable(problems, func(i, j int) bool { return problems[i].Line < problems[j].Line })
	return &FileError{File: file, Problems: problems}
}

var (
	tagRE    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	digestRE = regexp.MustCompile(`^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$`)
	// repoRE is the name grammar of the distribution reference: an
	// optional host[:port] (or [IPv6]:port), then path components.
	repoRE = regexp.MustCompile(`^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	// hostRE is a registry host: a name with a dot, localhost, or an
	// address, with an optional port. Anything else before the first
	// slash is a path component on Docker Hub.
	hostRE = regexp.MustCompile(`^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)+(?::[0-9]+)?|localhost(?::[0-9]+)?|[a-zA-Z0-9-]+:[0-9]+|\[[a-fA-F0-9:]+\](?::[0-9]+)?)$`)
	// interpolationRE finds shell or Compose variables: ${VAR}, $VAR.
	interpolationRE = regexp.MustCompile(`\$(?:\{|[A-Za-z_])`)
)

// HasMarkers tells cheaply whether data may hold markers with MarkerKey.
func HasMarkers(data []byte) bool { return DefaultMarkers.Has(data) }

// Scan finds the images data marks with MarkerKey: DefaultMarkers.Scan.
func Scan(file string, data []byte) ([]*Image, error) { return DefaultMarkers.Scan(file, data) }

// Scan finds the marked images of a YAML file (one or more documents),
// including those inside literal block scalars that hold YAML (Helm values
// given as a string). file names it in errors. A malformed marker, a
// marker that names no scalar field, a duplicate identifier, a name without
// a tag (or a tag without a name), a tag or name whose sibling digest or
// registry field is not marked, and an invalid reference are errors
// (*FileError), each with its line; so is a file the YAML parser rejects,
// or whose parse disagrees with the scanner.
func (m Markers) Scan(file string, data []byte) ([]*Image, error) {
	fields, problems := m.scanFields(data, false)
	if len(problems) > 0 {
		return nil, fileError(file, problems)
	}
	images, problems := assemble(fields)
	if len(problems) > 0 {
		return nil, fileError(file, problems)
	}
	return images, nil
}

// scanFields finds the marked fields of data; nested tells that data is
// the text of a block scalar.
func (m Markers) scanFields(data []byte, nested bool) ([]marked, []Problem) {
	s := scanner{data: data, keys: m.keys()}
	s.scan()
	if len(s.problems) > 0 || len(s.fields) == 0 && len(s.blocks) == 0 {
		return nil, s.problems
	}
	docs, err := parseDocs(data)
	if err != nil {
		msg := err.Error()
		if bytes.Contains(data, []byte("{{")) {
			msg += " (the file holds {{ }} template expressions: a Helm template is not YAML; mark the values it reads, in the chart's values.yaml or the release's values, instead)"
		}
		return nil, []Problem{{Msg: msg}}
	}
	problems := checkFields(docs, s.fields, s.markers, s.keys)
	fields := s.fields
	for _, b := range s.blocks {
		inner, p := m.blockFields(&s, docs, b, nested)
		problems = append(problems, p...)
		fields = append(fields, inner...)
	}
	return fields, problems
}

// marked is a field with its marker identifier.
type marked struct {
	Field
	id  string // the image identifier, without the kind's suffix
	key string // the marker key
}

// scanner reads a YAML file line by line.
type scanner struct {
	data       []byte
	keys       []string
	lineStarts []int // byte offset of each line
	fields     []marked
	markers    int // marker comments seen
	problems   []Problem
	blocks     []blockRef // block scalars whose text holds a marker key

	// block is set inside a block scalar (| or >) whose parent node is
	// indented blockIndent: more indented and blank lines are content.
	block       bool
	blockIndent int
	blockLine   int  // the line of the block's indicator
	blockSeen   bool // the block is in blocks already
}

// blockRef is a block scalar whose text holds a marker key.
type blockRef struct {
	line   int // the line of its indicator
	indent int // content lines are indented more (or blank)
}

func (s *scanner) problemf(line int, format string, args ...any) {
	s.problems = append(s.problems, Problem{Line: line, Msg: fmt.Sprintf(format, args...)})
}

// hasKey tells whether text holds one of the marker keys.
func (s *scanner) hasKey(text string) bool {
	for _, k := range s.keys {
		if strings.Contains(text, k) {
			return true
		}
	}
	return false
}

func (s *scanner) scan() {
	off := 0
	for n := 1; off < len(s.data) || n == 1; n++ {
		s.lineStarts = append(s.lineStarts, off)
		end := bytes.IndexByte(s.data[off:], '\n')
		next := off + end + 1
		if end < 0 {
			end, next = len(s.data)-off, len(s.data)
		}
		line := string(s.data[off : off+end])
		line = strings.TrimSuffix(line, "\r")
		s.line(n, off, line)
		off = next
		if off >= len(s.data) {
			break
		}
	}
}

// lineInfo is what the scanner makes of one line.
type lineInfo struct {
	comment int // byte index of the comment's '#', or -1
	simple  bool
	key     int // byte index of the key, or -1
	dash    int // byte index of the last sequence indicator, or -1
	// the value: raw token [valStart, valEnd), kind
	valStart, valEnd int
	quote            byte
	value            string
	what             string // "" for a scalar, else what the value is
	blockScalar      bool
	nodeStart        int // byte index of the node (its properties, if any)
}

func (s *scanner) line(n, off int, l string) {
	indent := len(l) - len(strings.TrimLeft(l, " "))
	docMarker := strings.HasPrefix(l, "---") || strings.HasPrefix(l, "...")
	docMarker = docMarker && (len(l) == 3 || l[3] == ' ' || l[3] == '\t')
	if s.block {
		if !docMarker && (strings.TrimSpace(l) == "" || indent > s.blockIndent) {
			// Block scalar content: markers there are read from the
			// block's text (blockFields).
			if !s.blockSeen && s.hasKey(l) {
				s.blockSeen = true
				s.blocks = append(s.blocks, blockRef{line: s.blockLine, indent: s.blockIndent})
			}
			return
		}
		s.block = false
	}
	info := lex(l, indent, docMarker)
	if info.blockScalar {
		s.block, s.blockLine, s.blockSeen = true, n, false
		switch {
		case info.key >= 0:
			s.blockIndent = info.key
		case info.dash >= 0:
			s.blockIndent = info.dash
		case docMarker:
			s.blockIndent = -1
		default:
			s.blockIndent = indent - 1
		}
	}
	if info.comment < 0 || !s.hasKey(l[info.comment:]) {
		return
	}
	s.markers++
	key, id, err := parseMarker(l[info.comment+1:], s.keys)
	ownLine := strings.TrimSpace(strings.TrimPrefix(l[:info.comment], "\ufeff")) == ""
	switch {
	case err != nil && ownLine:
		return // prose in a comment of its own, such as documentation
	case err != nil:
		s.problemf(n, "%v", err)
		return
	case ownLine:
		s.problemf(n, "marker %q names no field: it stands on a line of its own; put it after the value it marks", id)
		return
	}
	kind, base := Whole, id
	for _, sfx := range suffixes {
		if b, ok := strings.CutSuffix(id, sfx.suffix); ok {
			kind, base = sfx.kind, b
			break
		}
	}
	if base == "" {
		s.problemf(n, "marker %q has an empty identifier", id)
		return
	}
	switch {
	case strings.Contains(l[:info.comment], "{{"):
		s.problemf(n, "marker %q: the value is a Helm/Go template expression ({{ ... }}), not an image reference: a template is not YAML; mark the values it reads (the chart's values.yaml, the release's values) instead", id)
		return
	case !info.simple:
		s.problemf(n, "marker %q names no field: the line is not a single \"key: value\" or \"- value\" entry", id)
		return
	case info.what == "empty or a nested block" && (kind == Digest || kind == Registry):
		field := "the field"
		if info.key >= 0 {
			field = strings.TrimSuffix(strings.TrimSpace(l[info.key:info.valStart]), ":")
		}
		s.problemf(n, "marker %q names no field: the value is empty (null); write %s: \"\" so that the field holds a string the value can go in", id, field)
		return
	case strings.HasPrefix(info.what, "a flow"):
		s.problemf(n, "marker %q names no field: the value is %s, and a marker marks the one scalar on its line; write it in block style (one key per line) and mark each field (%q, %q)", id, info.what, base+":name", base+":tag")
		return
	case info.what != "":
		s.problemf(n, "marker %q names no field: the value is %s, not a single-line scalar", id, info.what)
		return
	case interpolationRE.MatchString(info.value):
		s.problemf(n, "marker %q: the value %q uses variable interpolation ($VAR, ${VAR:-default}); values are read literally, variables are not expanded: write the reference itself, or pin it where the variable is set", id, info.value)
		return
	}
	s.fields = append(s.fields, marked{id: base, key: key, Field: Field{
		Kind:   kind,
		Line:   n,
		Column: utf8.RuneCountInString(strings.TrimPrefix(l[:info.nodeStart], "\ufeff")) + 1,
		Start:  off + info.valStart + b2i(info.quote != 0),
		End:    off + info.valEnd - b2i(info.quote != 0),
		Value:  info.value,
		Quote:  info.quote,
	}})
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// parseMarker reads the comment text after '#': exactly one JSON object
// with one of the keys as a string member. It returns the key and the
// identifier. An object holding both MarkerKey and ImagePolicyKey is an
// error, whichever keys are read.
func parseMarker(comment string, keys []string) (key, id string, err error) {
	text := strings.TrimSpace(comment)
	example := keys[0]
	for _, k := range keys {
		if strings.Contains(text, k) {
			example = k
			break
		}
	}
	dec := json.NewDecoder(strings.NewReader(text))
	var obj map[string]json.RawMessage
	if err := dec.Decode(&obj); err != nil {
		return "", "", fmt.Errorf("malformed marker %q: want a JSON object like {%q: \"app:tag\"}", text, example)
	}
	if dec.InputOffset() != int64(len(text)) {
		return "", "", fmt.Errorf("malformed marker %q: text after the JSON object", text)
	}
	_, r := obj[MarkerKey]
	_, p := obj[ImagePolicyKey]
	if r && p {
		return "", "", fmt.Errorf("marker %q holds both %q and %q: one comment marks a field for one tool's semantics; keep one", text, MarkerKey, ImagePolicyKey)
	}
	for _, k := range keys {
		if raw, ok := obj[k]; ok {
			if err := json.Unmarshal(raw, &id); err != nil {
				return "", "", fmt.Errorf("malformed marker %q: %q must be a string", text, k)
			}
			return k, strings.TrimSpace(id), nil
		}
	}
	return "", "", fmt.Errorf("malformed marker %q: no %q member", text, example)
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' }

func skipSpace(l string, p int) int {
	for p < len(l) && isSpace(l[p]) {
		p++
	}
	return p
}

// lex reads one line of block YAML: sequence indicators, an optional
// "key:", an optional value, an optional comment. Lines it cannot read that
// way (flow collections spanning lines, complex keys, continuation lines)
// are not simple; their comment is still found.
func lex(l string, indent int, docMarker bool) lineInfo {
	info := lineInfo{comment: -1, key: -1, dash: -1}
	p := indent
	if p == 0 && strings.HasPrefix(l, "\ufeff") {
		p = len("\ufeff")
	}
	if docMarker {
		p = skipSpace(l, 3)
	}
	for p < len(l) && l[p] == '-' && (p+1 == len(l) || isSpace(l[p+1])) && !(p == 0 && docMarker) {
		info.dash = p
		p = skipSpace(l, p+1)
	}
	if p < len(l) && l[p] == '?' && (p+1 == len(l) || isSpace(l[p+1])) {
		info.comment = findComment(l, p)
		return info
	}
	if k, after, ok := lexKey(l, p); ok {
		info.key, p = k, skipSpace(l, after)
	}
	// Properties: anchors and tags before the value. The parser places
	// the node where they start.
	info.nodeStart = p
	for p < len(l) && (l[p] == '&' || l[p] == '!') {
		for p < len(l) && !isSpace(l[p]) {
			p++
		}
		p = skipSpace(l, p)
	}
	info.valStart = p
	switch {
	case p == len(l) || l[p] == '#':
		info.simple, info.what = true, "empty or a nested block"
		if p < len(l) {
			info.comment = p
		}
		return info
	case l[p] == '*':
		info.simple, info.what = true, "an alias"
		info.comment = findComment(l, p)
		return info
	case l[p] == '|' || l[p] == '>':
		q := p + 1
		for q < len(l) && strings.IndexByte("0123456789+-", l[q]) >= 0 {
			q++
		}
		if q == len(l) || isSpace(l[q]) {
			info.simple, info.what, info.blockScalar = true, "a block scalar", true
			info.comment = findComment(l, q)
			return info
		}
		info.comment = findComment(l, p)
		return info
	case l[p] == '[' || l[p] == '{':
		info.what = "a flow sequence ([...])"
		if l[p] == '{' {
			info.what = "a flow mapping ({...})"
		}
		info.comment = findComment(l, p)
		info.simple = true
		return info
	case l[p] == '\'' || l[p] == '"':
		end, value, ok := lexQuoted(l, p)
		if !ok {
			info.comment = findComment(l, p)
			return info
		}
		info.valEnd, info.value, info.quote = end, value, l[p]
		q := skipSpace(l, end)
		switch {
		case q == len(l):
			info.simple = true
		case l[q] == '#' && q > end:
			info.simple, info.comment = true, q
		default:
			info.comment = findComment(l, q)
		}
		return info
	}
	// A plain scalar runs to the comment or the end of the line.
	info.comment = findComment(l, p)
	end := len(l)
	if info.comment >= 0 {
		end = info.comment
	}
	value := strings.TrimRight(l[p:end], " \t")
	info.valEnd, info.value, info.simple = p+len(value), value, true
	if strings.Contains(value, ": ") || strings.HasSuffix(value, ":") || strings.Contains(value, " #") {
		info.simple = false
	}
	if strings.ContainsAny(value[:min(1, len(value))], "@`%,]}") {
		info.what = "a value starting with a reserved character"
	}
	return info
}

// lexKey reads "key:" at p; it returns the key's index and the index after
// the colon.
func lexKey(l string, p int) (int, int, bool) {
	if p >= len(l) {
		return 0, 0, false
	}
	var q int
	switch l[p] {
	case '\'', '"':
		end, _, ok := lexQuoted(l, p)
		if !ok {
			return 0, 0, false
		}
		q = skipSpace(l, end)
		if q < len(l) && l[q] == ':' && (q+1 == len(l) || isSpace(l[q+1])) {
			return p, q + 1, true
		}
		return 0, 0, false
	case '[', '{', '#', '&', '*', '!', '|', '>', '%', '@', '`', ',', ']', '}':
		return 0, 0, false
	}
	for q = p; q < len(l); q++ {
		if l[q] == '#' && q > p && isSpace(l[q-1]) {
			return 0, 0, false
		}
		if l[q] == ':' && (q+1 == len(l) || isSpace(l[q+1])) {
			return p, q + 1, true
		}
	}
	return 0, 0, false
}

// lexQuoted reads a quoted scalar starting at p; ok is false when it does
// not close on this line or uses escapes (never needed in a reference).
func lexQuoted(l string, p int) (end int, value string, ok bool) {
	q := l[p]
	var b strings.Builder
	for i := p + 1; i < len(l); i++ {
		c := l[i]
		switch {
		case q == '\'' && c == '\'':
			if i+1 < len(l) && l[i+1] == '\'' {
				b.WriteByte('\'')
				i++
				continue
			}
			return i + 1, b.String(), true
		case q == '"' && c == '\\':
			return 0, "", false
		case q == '"' && c == '"':
			return i + 1, b.String(), true
		default:
			b.WriteByte(c)
		}
	}
	return 0, "", false
}

// findComment returns the index of the '#' starting a comment at or after
// p, or -1; quotes that start a token are skipped.
func findComment(l string, p int) int {
	var quote byte
	for i := p; i < len(l); i++ {
		c := l[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				if i+1 < len(l) && l[i+1] == '\'' {
					i++
				} else {
					quote = 0
				}
			}
		case quote == '"':
			if c == '\\' {
				i++
			} else if c == '"' {
				quote = 0
			}
		case c == '#' && (i == 0 || isSpace(l[i-1])):
			return i
		case (c == '\'' || c == '"') && tokenStart(l, i):
			quote = c
		}
	}
	return -1
}

// tokenStart tells whether a quote at i starts a scalar: it follows the
// start of the line or an indicator.
func tokenStart(l string, i int) bool {
	j := i - 1
	for j >= 0 && isSpace(l[j]) {
		j--
	}
	return j < 0 || strings.IndexByte("[{,:-?", l[j]) >= 0
}

// assemble groups the fields by identifier into images and checks them.
func assemble(fields []marked) ([]*Image, []Problem) {
	sort.SliceStable(fields, func(i, j int) bool { return fields[i].Start < fields[j].Start })
	var problems []Problem
	add := func(line int, format string, args ...any) {
		problems = append(problems, Problem{Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	byID := map[string]*Image{}
	var images []*Image
	for i := range fields {
		f := &fields[i]
		im := byID[f.id]
		if im == nil {
			im = &Image{ID: f.id, key: f.key}
			byID[f.id] = im
			images = append(images, im)
		}
		var slot **Field
		switch f.Kind {
		case Whole:
			slot = &im.Whole
		case Name:
			slot = &im.Name
		case Tag:
			slot = &im.Tag
		case Digest:
			slot = &im.DigestField
		case Registry:
			slot = &im.RegistryField
		}
		if *slot != nil {
			add(f.Line, "duplicate marker %q (first at line %d): identifiers must be unique in a file", markerID(f.id, f.Kind), (*slot).Line)
			continue
		}
		*slot = &f.Field
	}
	var ok []*Image
	for _, im := range images {
		if p := im.check(); p != nil {
			problems = append(problems, *p)
			continue
		}
		ok = append(ok, im)
	}
	return ok, problems
}

func markerID(id string, k Kind) string {
	for _, s := range suffixes {
		if s.kind == k {
			return id + s.suffix
		}
	}
	return id
}

// marker renders the marker comment for id, in the key the file uses.
func (im *Image) marker(id string) string {
	key := im.key
	if key == "" {
		key = MarkerKey
	}
	return fmt.Sprintf("{%q: %q}", key, id)
}

// check completes the image's reference from its fields.
func (im *Image) check() *Problem {
	bad := func(line int, format string, args ...any) *Problem {
		return &Problem{Line: line, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case im.Whole != nil && (im.Name != nil || im.Tag != nil || im.RegistryField != nil):
		other := im.Name
		for _, f := range []*Field{im.RegistryField, im.Tag} {
			if other == nil {
				other = f
			}
		}
		return bad(other.Line, "marker %q conflicts with the whole-reference marker %q at line %d", markerID(im.ID, other.Kind), im.ID, im.Whole.Line)
	case im.Whole != nil:
		f := im.Whole
		if digestRE.MatchString(f.Value) {
			return bad(f.Line, "image %q: %q is a digest, not a reference; mark a field that holds only a digest with %s, next to the tag's %s", im.ID, f.Value, im.marker(im.ID+":digest"), im.marker(im.ID+":tag"))
		}
		value := f.Value
		if name, ref, ok := strings.Cut(value, "="); ok {
			// Argo CD's kustomize.images override: NAME=REFERENCE.
			if name == "" || strings.ContainsAny(name, " @") {
				return bad(f.Line, "image %q: %q is neither a reference nor NAME=REFERENCE", im.ID, f.Value)
			}
			im.prefix, value = name+"=", ref
		}
		rest, digest, _ := strings.Cut(value, "@")
		slash := strings.LastIndexByte(rest, '/')
		colon := strings.LastIndexByte(rest, ':')
		if colon <= slash {
			return bad(f.Line, "image %q: reference %q has no tag; write REPOSITORY:TAG", im.ID, f.Value)
		}
		im.Repository, im.TagName, im.Digest = rest[:colon], rest[colon+1:], digest
		if digest == "" && strings.Contains(value, "@") {
			return bad(f.Line, "image %q: reference %q has an empty digest", im.ID, f.Value)
		}
	case im.Name == nil && im.Tag == nil && im.DigestField != nil:
		return bad(im.DigestField.Line, "image %q: the digest field at line %d has no tag field: a digest is pinned for a tag; mark the tag with %s and the repository with %s", im.ID, im.DigestField.Line, im.marker(im.ID+":tag"), im.marker(im.ID+":name"))
	case im.Name == nil && im.Tag == nil:
		return bad(im.RegistryField.Line, "image %q: the registry field at line %d has no repository field (mark it with %s) and no tag field (mark it with %s)", im.ID, im.RegistryField.Line, im.marker(im.ID+":name"), im.marker(im.ID+":tag"))
	case im.Name == nil:
		return bad(im.Tag.Line, "image %q: tag at line %d has no name field (mark the repository with %s)", im.ID, im.Tag.Line, im.marker(im.ID+":name"))
	case im.Tag == nil:
		return bad(im.Name.Line, "image %q: name at line %d has no tag field (mark the tag with %s)", im.ID, im.Name.Line, im.marker(im.ID+":tag"))
	default:
		if strings.Contains(im.Name.Value, "@") || strings.LastIndexByte(im.Name.Value, ':') > strings.LastIndexByte(im.Name.Value, '/') {
			return bad(im.Name.Line, "image %q: name %q holds a tag or digest; give the tag in the %q field", im.ID, im.Name.Value, im.ID+":tag")
		}
		tag, digest, hasDigest := strings.Cut(im.Tag.Value, "@")
		im.Repository, im.TagName, im.Digest = im.Name.Value, tag, digest
		if hasDigest && digest == "" {
			return bad(im.Tag.Line, "image %q: tag %q has an empty digest", im.ID, im.Tag.Value)
		}
		if r := im.RegistryField; r != nil && r.Value != "" {
			host, _, _ := strings.Cut(r.Value, "/")
			if !hostRE.MatchString(host) {
				return bad(r.Line, "image %q: registry %q does not start with a registry host (a name with a dot, localhost, or a port): it would be read as a path on Docker Hub", im.ID, r.Value)
			}
			im.Repository = strings.TrimSuffix(r.Value, "/") + "/" + im.Name.Value
		}
	}
	line := im.Line()
	if im.Tag != nil {
		line = im.Tag.Line
	}
	if im.TagName == "" {
		return bad(line, "image %q has no tag (the tag field is empty)", im.ID)
	}
	if !tagRE.MatchString(im.TagName) {
		return bad(line, "image %q: invalid tag %q", im.ID, im.TagName)
	}
	if im.Digest != "" && !digestRE.MatchString(im.Digest) {
		return bad(line, "image %q: invalid digest %q", im.ID, im.Digest)
	}
	if f := im.DigestField; f != nil {
		im.Digest = f.Value
		if f.Value != "" && !digestRE.MatchString(f.Value) {
			return bad(f.Line, "image %q: invalid digest %q in the digest field", im.ID, f.Value)
		}
	}
	if im.Name != nil {
		line = im.Name.Line
	}
	if !repoRE.MatchString(im.Repository) {
		return bad(line, "image %q: invalid repository %q", im.ID, im.Repository)
	}
	if _, err := name.NewRepository(im.Repository); err != nil {
		return bad(line, "image %q: invalid repository %q: %v", im.ID, im.Repository, err)
	}
	return nil
}
