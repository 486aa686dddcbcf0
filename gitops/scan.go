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

// MarkerKey is the key of the JSON object in a marker comment.
const MarkerKey = "$rebase"

// Kind says what a marked field holds.
type Kind int

// Kinds of marked fields.
const (
	// Whole is a whole reference, host/repo:TAG[@DIGEST] (marker "id").
	Whole Kind = iota
	// Name is a repository, host/repo (marker "id:name").
	Name
	// Tag is a tag, TAG[@DIGEST] (marker "id:tag").
	Tag
)

// Field is one marked scalar value.
type Field struct {
	Kind Kind
	// Line and Column locate the scalar node, 1-based, as the YAML parser
	// reports it: Column counts characters and points at the node's first
	// property (anchor or tag) if any, else at its opening quote or first
	// character.
	Line, Column int
	// Start and End are the byte offsets of the value's characters in the
	// file (inside the quotes).
	Start, End int
	// Value is the scalar's value.
	Value string
	// Quote is '\'', '"', or 0 for a plain scalar.
	Quote byte
}

// Image is one marked image: a whole reference, or a name and a tag.
type Image struct {
	// ID is the marker's identifier ("app" for "app:tag").
	ID string
	// Whole is set for the whole-reference form; Name and Tag otherwise.
	Whole, Name, Tag *Field
	// Repository, TagName and Digest are the parts of the reference (Digest
	// may be empty).
	Repository, TagName, Digest string
}

// Line is the line of the image's first field.
func (im *Image) Line() int {
	if im.Whole != nil {
		return im.Whole.Line
	}
	return min(im.Name.Line, im.Tag.Line)
}

// Reference is "repository:tag", the image to rebase or resolve.
func (im *Image) Reference() string { return im.Repository + ":" + im.TagName }

// Pin returns the edit that pins the image to digest: the tag field becomes
// TAG@DIGEST, a whole reference REPOSITORY:TAG@DIGEST. It returns nil when
// the file pins that digest already.
func (im *Image) Pin(digest string) []Edit {
	f, v := im.Tag, im.TagName+"@"+digest
	if im.Whole != nil {
		f, v = im.Whole, im.Repository+":"+v
	}
	if f.Value == v {
		return nil
	}
	return []Edit{{Line: f.Line, Column: f.Column, Start: f.Start, End: f.End, Old: f.Value, New: v}}
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
)

// HasMarkers tells cheaply whether data may hold markers; files without
// are not scanned.
func HasMarkers(data []byte) bool { return bytes.Contains(data, []byte(MarkerKey)) }

// Scan finds the marked images of a YAML file (one or more documents). file
// names it in errors. A malformed marker, a marker that names no scalar
// field, a duplicate identifier, a name without a tag (or a tag without a
// name) and an invalid reference are errors (*FileError), each with its
// line; so is a file the YAML parser rejects, or whose parse disagrees with
// the scanner.
func Scan(file string, data []byte) ([]*Image, error) {
	s := scanner{data: data}
	s.scan()
	if len(s.problems) == 0 && len(s.fields) > 0 {
		s.problems = append(s.problems, checkFields(data, s.fields, s.markers)...)
	}
	if len(s.problems) > 0 {
		return nil, fileError(file, s.problems)
	}
	images, problems := assemble(s.fields)
	if len(problems) > 0 {
		return nil, fileError(file, problems)
	}
	return images, nil
}

// marked is a field with its marker identifier.
type marked struct {
	Field
	id string // the image identifier, without ":name" or ":tag"
}

// scanner reads a YAML file line by line.
type scanner struct {
	data     []byte
	fields   []marked
	markers  int // marker comments seen
	problems []Problem

	// block is set inside a block scalar (| or >) whose parent node is
	// indented blockIndent: more indented and blank lines are content.
	block       bool
	blockIndent int
}

func (s *scanner) problemf(line int, format string, args ...any) {
	s.problems = append(s.problems, Problem{Line: line, Msg: fmt.Sprintf(format, args...)})
}

func (s *scanner) scan() {
	off := 0
	for n := 1; off < len(s.data) || n == 1; n++ {
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
			return // block scalar content
		}
		s.block = false
	}
	info := lex(l, indent, docMarker)
	if info.blockScalar {
		s.block = true
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
	if info.comment < 0 || !strings.Contains(l[info.comment:], MarkerKey) {
		return
	}
	s.markers++
	id, err := parseMarker(l[info.comment+1:])
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
	if b, ok := strings.CutSuffix(id, ":name"); ok {
		kind, base = Name, b
	} else if b, ok := strings.CutSuffix(id, ":tag"); ok {
		kind, base = Tag, b
	}
	if base == "" {
		s.problemf(n, "marker %q has an empty identifier", id)
		return
	}
	switch {
	case !info.simple:
		s.problemf(n, "marker %q names no field: the line is not a single \"key: value\" or \"- value\" entry", id)
		return
	case info.what != "":
		s.problemf(n, "marker %q names no field: the value is %s, not a single-line scalar", id, info.what)
		return
	}
	s.fields = append(s.fields, marked{id: base, Field: Field{
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
// whose "$rebase" member is a string.
func parseMarker(comment string) (string, error) {
	text := strings.TrimSpace(comment)
	dec := json.NewDecoder(strings.NewReader(text))
	var obj map[string]json.RawMessage
	if err := dec.Decode(&obj); err != nil {
		return "", fmt.Errorf("malformed marker %q: want a JSON object like {%q: \"app:tag\"}", text, MarkerKey)
	}
	if dec.InputOffset() != int64(len(text)) {
		return "", fmt.Errorf("malformed marker %q: text after the JSON object", text)
	}
	raw, ok := obj[MarkerKey]
	if !ok {
		return "", fmt.Errorf("malformed marker %q: no %q member", text, MarkerKey)
	}
	var id string
	if err := json.Unmarshal(raw, &id); err != nil {
		return "", fmt.Errorf("malformed marker %q: %q must be a string", text, MarkerKey)
	}
	return strings.TrimSpace(id), nil
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
		info.what = "a flow collection"
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
			im = &Image{ID: f.id}
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
	switch k {
	case Name:
		return id + ":name"
	case Tag:
		return id + ":tag"
	}
	return id
}

// check completes the image's reference from its fields.
func (im *Image) check() *Problem {
	bad := func(line int, format string, args ...any) *Problem {
		return &Problem{Line: line, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case im.Whole != nil && (im.Name != nil || im.Tag != nil):
		other := im.Name
		if other == nil {
			other = im.Tag
		}
		return bad(other.Line, "marker %q conflicts with the whole-reference marker %q at line %d", markerID(im.ID, other.Kind), im.ID, im.Whole.Line)
	case im.Whole != nil:
		f := im.Whole
		rest, digest, _ := strings.Cut(f.Value, "@")
		slash := strings.LastIndexByte(rest, '/')
		colon := strings.LastIndexByte(rest, ':')
		if colon <= slash {
			return bad(f.Line, "image %q: reference %q has no tag; write REPOSITORY:TAG", im.ID, f.Value)
		}
		im.Repository, im.TagName, im.Digest = rest[:colon], rest[colon+1:], digest
		if digest == "" && strings.Contains(f.Value, "@") {
			return bad(f.Line, "image %q: reference %q has an empty digest", im.ID, f.Value)
		}
	case im.Name == nil:
		return bad(im.Tag.Line, "image %q: tag at line %d has no name field (mark the repository with {%q: %q})", im.ID, im.Tag.Line, MarkerKey, im.ID+":name")
	case im.Tag == nil:
		return bad(im.Name.Line, "image %q: name at line %d has no tag field (mark the tag with {%q: %q})", im.ID, im.Name.Line, MarkerKey, im.ID+":tag")
	default:
		if strings.Contains(im.Name.Value, "@") || strings.LastIndexByte(im.Name.Value, ':') > strings.LastIndexByte(im.Name.Value, '/') {
			return bad(im.Name.Line, "image %q: name %q holds a tag or digest; give the tag in the %q field", im.ID, im.Name.Value, im.ID+":tag")
		}
		tag, digest, hasDigest := strings.Cut(im.Tag.Value, "@")
		im.Repository, im.TagName, im.Digest = im.Name.Value, tag, digest
		if hasDigest && digest == "" {
			return bad(im.Tag.Line, "image %q: tag %q has an empty digest", im.ID, im.Tag.Value)
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
