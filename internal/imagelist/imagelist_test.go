package imagelist_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/image-rebase/image-rebase/internal/imagelist"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/regtest"
	"github.com/image-rebase/image-rebase/internal/scan"
)

func TestRead(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     []imagelist.Item // Origin as "line N"
		err      string
	}{
		{name: "references, comments, blank lines, duplicates",
			in:   "# images\nreg.example/app:1\n\n  reg.example/app:2  \nreg.example/app:1\n",
			want: []imagelist.Item{{Ref: "reg.example/app:1", Origin: "line 2"}, {Ref: "reg.example/app:2", Origin: "line 4"}}},
		{name: "scan -o json lines bring their bases; the summary is skipped",
			in: `{"version":"v1","image":"reg.example/app:1","from":"reg.example/base@sha256:00","to":"reg.example/base:2","stale":true}` + "\n" +
				`{"version":"v1","summary":{"images":3,"stale":1}}` + "\n",
			want: []imagelist.Item{{Ref: "reg.example/app:1", From: "reg.example/base@sha256:00", To: "reg.example/base:2", Origin: "line 1"}}},
		{name: "two words", in: "reg.example/app:1 reg.example/app:2\n", err: "list line 1: \"reg.example/app:1 reg.example/app:2\": want one image reference per line"},
		{name: "bad JSON", in: "ok:1\n{\"image\":\n", err: "list line 2: "},
		{name: "JSON without image", in: `{"from":"x"}`, err: `list line 1: no "image"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var l imagelist.List
			err := l.Read(strings.NewReader(c.in), "list")
			if c.err != "" {
				var ie *imagelist.InputError
				if !errors.As(err, &ie) || !strings.HasPrefix(err.Error(), c.err) {
					t.Fatalf("error %v, want an InputError %q…", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for i := range c.want {
				c.want[i].Origin = "list " + c.want[i].Origin
			}
			if got := l.Items(); fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("items %+v\nwant  %+v", got, c.want)
			}
		})
	}
}

// TestSources: arguments, every tag of a repository of the real registry
// (sorted) and a scan's stale findings, each image once, in that order.
func TestSources(t *testing.T) {
	reg := regtest.Start(t)
	for _, tag := range []string{"2", "1", "10"} {
		img, err := random.Image(64, 1)
		if err != nil {
			t.Fatal(err)
		}
		reg.Push(t, "app:"+tag, img)
	}
	client := registry.New(registry.Options{PlainHTTP: []string{reg.Host}})
	var l imagelist.List
	l.AddArgs([]string{reg.Ref("app:2")})
	if err := l.AddAllTags(context.Background(), client, reg.Host, "app", false); err != nil {
		t.Fatal(err)
	}
	l.AddStale([]scan.Finding{
		{Image: reg.Ref("other:1"), From: "base:1", To: "base:2", Stale: true},
		{Image: reg.Ref("other:2"), To: "base:2"},
	})
	var got []string
	for _, it := range l.Items() {
		got = append(got, it.Origin+" "+it.From+" "+it.To)
	}
	want := []string{
		"argument 1 (" + reg.Ref("app:2") + ")  ",
		"--all-tags " + reg.Ref("app:1") + "  ",
		"--all-tags " + reg.Ref("app:10") + "  ",
		"--scan " + reg.Ref("other:1") + " base:1 base:2",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("items:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var ie *imagelist.InputError
	if err := l.AddAllTags(context.Background(), client, reg.Host, "Bad Name", false); !errors.As(err, &ie) {
		t.Errorf("a bad repository: %v, want an InputError", err)
	}
	if err := l.AddAllTags(context.Background(), client, reg.Host, "nothing-here", false); err == nil || errors.As(err, &ie) {
		t.Errorf("a repository the registry lacks: %v, want the registry's error", err)
	}
}
