package gitops

import (
	"errors"
	"strings"
	"testing"
)

func TestScanErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		line       int
		want       string
	}{
		{"own line", "image:\n  # {\"$rebase\": \"app\"}\n  x: 1\n", 2, "names no field: it stands on a line of its own"},
		{"nested mapping", "image: # {\"$rebase\": \"app\"}\n  repository: host/app\n", 1, "names no field: the value is empty or a nested block"},
		{"block scalar", "image: | # {\"$rebase\": \"app\"}\n  host/app:1\n", 1, "names no field: the value is a block scalar"},
		{"flow collection", "image: [host/app:1] # {\"$rebase\": \"app\"}\n", 1, "names no field: the value is a flow collection"},
		{"alias", "a: &x host/app:1\nb: *x # {\"$rebase\": \"app\"}\n", 2, "names no field: the value is an alias"},
		{"multi-line quoted", "image: \"host/app\n  :1\" # {\"$rebase\": \"app\"}\n", 2, "the YAML parser sees no scalar"},
		{"duplicate", "a:\n  tag: 1 # {\"$rebase\": \"app:tag\"}\n  repository: h/a # {\"$rebase\": \"app:name\"}\nb:\n  tag: 2 # {\"$rebase\": \"app:tag\"}\n", 5, `duplicate marker "app:tag" (first at line 2)`},
		{"duplicate whole", "a: h/a:1 # {\"$rebase\": \"app\"}\n---\nb: h/a:2 # {\"$rebase\": \"app\"}\n", 3, `duplicate marker "app" (first at line 1)`},
		{"name without tag", "image:\n  repository: host/app # {\"$rebase\": \"app:name\"}\n  tag: 1.0\n", 2, `image "app": name at line 2 has no tag field`},
		{"tag without name", "image:\n  repository: host/app\n  tag: 1.0 # {\"$rebase\": \"app:tag\"}\n", 3, `image "app": tag at line 3 has no name field`},
		{"whole without tag", "image: host/app # {\"$rebase\": \"app\"}\n", 1, `reference "host/app" has no tag`},
		{"whole with port, no tag", "image: localhost:5000/app # {\"$rebase\": \"app\"}\n", 1, `has no tag`},
		{"digest only", "image: host/app@sha256:0000000000000000000000000000000000000000000000000000000000000000 # {\"$rebase\": \"app\"}\n", 1, `has no tag`},
		{"empty tag", "i:\n  repository: h/a # {\"$rebase\": \"app:name\"}\n  tag: \"\" # {\"$rebase\": \"app:tag\"}\n", 3, `image "app" has no tag`},
		{"conflict", "a: h/a:1 # {\"$rebase\": \"app\"}\nb: 1 # {\"$rebase\": \"app:tag\"}\n", 2, `conflicts with the whole-reference marker "app" at line 1`},
		{"malformed JSON", "tag: 1 # {\"$rebase\": app:tag}\n", 1, "malformed marker"},
		{"not a string", "tag: 1 # {\"$rebase\": 3}\n", 1, `"$rebase" must be a string`},
		{"trailing text", "tag: 1 # {\"$rebase\": \"a:tag\"} later\n", 1, "text after the JSON object"},
		{"empty identifier", "tag: 1 # {\"$rebase\": \":tag\"}\n", 1, "empty identifier"},
		{"name holds tag", "i:\n  repository: h/a:1 # {\"$rebase\": \"app:name\"}\n  tag: 1 # {\"$rebase\": \"app:tag\"}\n", 2, "holds a tag or digest"},
		{"invalid tag", "image: 'h/a:1 beta' # {\"$rebase\": \"app\"}\n", 1, `invalid tag "1 beta"`},
		{"invalid digest", "image: h/a:1@sha256:xyz # {\"$rebase\": \"app\"}\n", 1, `invalid digest "sha256:xyz"`},
		{"invalid repository", "i:\n  repository: H/A # {\"$rebase\": \"app:name\"}\n  tag: 1 # {\"$rebase\": \"app:tag\"}\n", 2, "invalid repository"},
		{"escapes", "image: \"h/a:\\x31\" # {\"$rebase\": \"app\"}\n", 1, "names no field"},
		{"invalid YAML", "a:\n\tb: h/a:1 # {\"$rebase\": \"app\"}\n", 0, "not valid YAML"},
		{"inside a quoted scalar", "a: 'first\n  image: h/a:1 # {\"$rebase\": \"app\"}\n  end'\n", 2, "the YAML parser sees no scalar"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			images, err := Scan("f.yaml", []byte(tt.yaml))
			var fe *FileError
			if !errors.As(err, &fe) {
				t.Fatalf("got %d images and error %v, want a *FileError", len(images), err)
			}
			for _, p := range fe.Problems {
				if p.Line == tt.line && strings.Contains(p.Msg, tt.want) {
					if !strings.Contains(err.Error(), "f.yaml:") {
						t.Errorf("error does not name the file: %v", err)
					}
					return
				}
			}
			t.Fatalf("want line %d %q, got %v", tt.line, tt.want, err)
		})
	}
}

func TestScanFinds(t *testing.T) {
	src := "# Mark images with {\"$rebase\": \"app:tag\"} comments.\n" +
		"a:\n  repository: h/a # {\"$rebase\": \"app:name\"}\n" +
		"  tag: '1.0@sha256:0000000000000000000000000000000000000000000000000000000000000000' # {\"$rebase\": \"app:tag\"}\n" +
		"b: 'h/b:it''s' # {\"$rebase\": \"b\"}\n" +
		"c: \"localhost:5000/c:2\" # {\"$imagepolicy\": \"c\"}\n" +
		"d: |\n  e: h/e:1 # {\"$rebase\": \"e\"}\n\n  more\n" +
		"f: >-\n  text\ng: localhost:5000/g:3 # {\"$rebase\": \"ns:g\"}\n"
	images, err := Scan("f.yaml", []byte(src))
	if err == nil || !strings.Contains(err.Error(), `invalid tag "it's"`) {
		t.Fatalf("want an invalid tag error for b, got %v", err)
	}
	src = strings.Replace(src, "it''s", "its", 1)
	images, err = Scan("f.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, im := range images {
		got = append(got, im.ID+"="+im.Reference()+"@"+im.Digest)
	}
	want := "app=h/a:1.0@sha256:0000000000000000000000000000000000000000000000000000000000000000 b=h/b:its@ ns:g=localhost:5000/g:3@"
	if strings.Join(got, " ") != want {
		t.Fatalf("got  %s\nwant %s", strings.Join(got, " "), want)
	}
	if images[0].Line() != 3 || images[0].Tag.Quote != '\'' || images[2].Whole.Line != 13 {
		t.Fatalf("positions: %+v %+v %+v", images[0], images[0].Tag, images[2].Whole)
	}
}

func TestScanAcceptsMarkedScalarInFlowCollection(t *testing.T) {
	src := []byte("a: [x,\n  b: h/a:1 # {\"$rebase\": \"app\"}\n  ]\n")
	out, _ := pinAll(t, "f.yaml", src)
	want := "a: [x,\n  b: h/a:1@" + fakeDigest("h/a:1") + " # {\"$rebase\": \"app\"}\n  ]\n"
	if string(out) != want {
		t.Fatalf("got %q", out)
	}
}

func TestCheckFieldsCountsMarkersTheScannerMissed(t *testing.T) {
	src := []byte("a: h/a:1 # {\"$rebase\": \"app\"}\n")
	problems := checkFields(src, nil, 0)
	if len(problems) != 1 || !strings.Contains(problems[0].Msg, "sees 1 marker comments but only 0") {
		t.Fatalf("problems %+v", problems)
	}
	if problems := checkFields(src, nil, 1); len(problems) != 0 {
		t.Fatalf("problems %+v", problems)
	}
}

func TestPinIsIdempotentAndReplacesDigest(t *testing.T) {
	d1 := "sha256:" + strings.Repeat("1", 64)
	d2 := "sha256:" + strings.Repeat("2", 64)
	src := []byte("image: h/a:1@" + d1 + " # {\"$rebase\": \"app\"}\n")
	images, err := Scan("f.yaml", src)
	if err != nil {
		t.Fatal(err)
	}
	if e := images[0].Pin(d1); e != nil {
		t.Fatalf("pinning the digest the file holds made edits: %+v", e)
	}
	e := images[0].Pin(d2)
	if len(e) != 1 || e[0].New != "h/a:1@"+d2 {
		t.Fatalf("edits %+v", e)
	}
	out, err := Rewrite("f.yaml", src, e)
	if err != nil || string(out) != "image: h/a:1@"+d2+" # {\"$rebase\": \"app\"}\n" {
		t.Fatalf("%q %v", out, err)
	}
}

func TestRewriteRefusesCorruption(t *testing.T) {
	src := []byte("a: 1 # c\nb: \"x\"\nc: &k v\nd: *k\n")
	tests := []struct {
		name string
		edit Edit
		want string
	}{
		{"edit in a comment", Edit{Line: 1, Column: 8, Start: 7, End: 8, Old: "c", New: "z"}, "comment changed"},
		{"stale old value", Edit{Line: 1, Column: 4, Start: 3, End: 4, Old: "2", New: "3"}, `value is "1", not "2"`},
		{"outside the file", Edit{Line: 9, Column: 1, Start: 40, End: 50, Old: "", New: "x"}, "outside the file"},
		{"needs quoting", Edit{Line: 2, Column: 4, Start: 13, End: 14, Old: "x", New: "a\"b"}, "another quoting style"},
		{"reads as another type", Edit{Line: 1, Column: 4, Start: 3, End: 4, Old: "1", New: "2"}, "reads as !!int"},
		{"not at a scalar", Edit{Line: 2, Column: 5, Start: 13, End: 14, Old: "x", New: "y"}, "line 2 column 4"},
		{"anchor name", Edit{Line: 3, Column: 4, Start: 20, End: 21, Old: "k", New: "j"}, "not valid YAML"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Rewrite("f.yaml", src, []Edit{tt.edit})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %q, %v; want an error containing %q", out, err, tt.want)
			}
		})
	}
	two := []Edit{
		{Line: 1, Column: 4, Start: 3, End: 4, Old: "1", New: "v1"},
		{Line: 1, Column: 4, Start: 3, End: 4, Old: "1", New: "v2"},
	}
	if _, err := Rewrite("f.yaml", src, two); err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("overlapping edits: %v", err)
	}
}
