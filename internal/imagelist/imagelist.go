// Package imagelist collects the images a batch rebases, each once, in the
// order given: from references, from lists (one reference per line, or the
// JSON lines "scan -o json" prints, which bring their own bases), from every
// tag of a repository, and from a scan's findings.
package imagelist

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/scan"
)

// Item is one image to rebase.
type Item struct {
	// Ref is the image's reference as given.
	Ref string
	// From and To are the bases a scan found for this image; empty when
	// the batch's own apply.
	From, To string
	// Origin says where the image came from, for errors: "argument 2
	// (app:1)", "images.txt line 3", "--all-tags host/app:1", "--scan
	// host/app:1".
	Origin string
}

// InputError is a list that cannot be read as one: a malformed line, a
// repository name that is not one. Nothing was contacted.
type InputError struct{ Msg string }

// Error returns the message.
func (e *InputError) Error() string { return e.Msg }

func inputf(format string, args ...any) error { return &InputError{Msg: fmt.Sprintf(format, args...)} }

// List is the images collected so far; its zero value is empty.
type List struct {
	items []Item
	seen  map[string]bool
}

// Items returns the images, in the order they were first added.
func (l *List) Items() []Item { return l.items }

// Add adds it, unless its reference was added already.
func (l *List) Add(it Item) {
	if l.seen[it.Ref] {
		return
	}
	if l.seen == nil {
		l.seen = map[string]bool{}
	}
	l.seen[it.Ref] = true
	l.items = append(l.items, it)
}

// AddArgs adds references given as arguments.
func (l *List) AddArgs(args []string) {
	for i, a := range args {
		l.Add(Item{Ref: a, Origin: fmt.Sprintf("argument %d (%s)", i+1, a)})
	}
}

// Read adds the images r lists, name being r's name in errors: one
// reference per line; blank lines and # comments are skipped; a line
// starting with "{" is a JSON object with "image" and optional "from" and
// "to" (scan -o json prints them; its summary line is skipped). A line
// that is none of these is an *InputError.
func (l *List) Read(r io.Reader, name string) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		origin := fmt.Sprintf("%s line %d", name, n)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "{"):
			var v struct {
				Image, From, To string
				Summary         json.RawMessage
			}
			if err := json.Unmarshal([]byte(line), &v); err != nil {
				return inputf("%s: %v", origin, err)
			}
			if v.Summary != nil {
				continue // the summary line of scan or batch -o json
			}
			if v.Image == "" {
				return inputf("%s: no \"image\"", origin)
			}
			l.Add(Item{Ref: v.Image, From: v.From, To: v.To, Origin: origin})
		case strings.ContainsAny(line, " \t"):
			return inputf("%s: %q: want one image reference per line", origin, line)
		default:
			l.Add(Item{Ref: line, Origin: origin})
		}
	}
	if err := sc.Err(); err != nil {
		return inputf("reading %s: %v", name, err)
	}
	return nil
}

// AddAllTags adds every tag of repo (in registry reg when repo names none),
// sorted. write says the images will be written (the token asked covers
// pushes). A repository name that is not one is an *InputError; the
// registry's errors are returned as they are.
func (l *List) AddAllTags(ctx context.Context, client *registry.Client, reg, repo string, write bool) error {
	rp, err := client.Repository(reg, repo, write)
	if err != nil {
		return inputf("--all-tags: %v", err)
	}
	tags, err := rp.Tags(ctx)
	if err != nil {
		return err
	}
	sort.Strings(tags)
	for _, t := range tags {
		ref := rp.Name() + ":" + t
		l.Add(Item{Ref: ref, Origin: "--all-tags " + ref})
	}
	return nil
}

// AddStale adds the stale images of a scan, each with the bases the scan
// found for it.
func (l *List) AddStale(found []scan.Finding) {
	for _, s := range found {
		if s.Stale {
			l.Add(Item{Ref: s.Image, From: s.From, To: s.To, Origin: "--scan " + s.Image})
		}
	}
}
