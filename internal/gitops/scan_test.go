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
		{"flow collection", "image: [host/app:1] # {\"$rebase\": \"app\"}\n", 1, "names no field: the value is a flow sequence ([...]), and a marker marks the one scalar on its line; write it in block style"},
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
		"d: |\n  e: h/e:1 # {\"$rebase\": \"e\"}\n\n  more: text\n" +
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
	want := "app=h/a:1.0@sha256:0000000000000000000000000000000000000000000000000000000000000000 b=h/b:its@ e=h/e:1@ ns:g=localhost:5000/g:3@"
	if strings.Join(got, " ") != want {
		t.Fatalf("got  %s\nwant %s", strings.Join(got, " "), want)
	}
	if images[0].Line() != 3 || images[0].Tag.Quote != '\'' || images[3].Whole.Line != 13 {
		t.Fatalf("positions: %+v %+v %+v", images[0], images[0].Tag, images[3].Whole)
	}
	// The block's field, placed in the file and in the block's text.
	e := images[2].Whole
	if e.Line != 8 || e.Column != 6 || src[e.Start:e.End] != "h/e:1" || e.Block == nil ||
		*e.Block != (Block{Line: 7, Column: 4, InnerLine: 1, InnerColumn: 4, InnerStart: 3, InnerEnd: 8}) {
		t.Fatalf("block field %+v %+v", e, e.Block)
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
	docs, err := parseDocs([]byte("a: h/a:1 # {\"$rebase\": \"app\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	problems := checkFields(docs, nil, 0, DefaultMarkers)
	if len(problems) != 1 || !strings.Contains(problems[0].Msg, "sees 1 marker comments but only 0") {
		t.Fatalf("problems %+v", problems)
	}
	if problems := checkFields(docs, nil, 1, DefaultMarkers); len(problems) != 0 {
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

// d64 is a valid digest for tests.
var d64 = "sha256:" + strings.Repeat("a", 64)

func TestScanErrorsRound2(t *testing.T) {
	m := func(id string) string { return ` # {"$rebase": "` + id + `"}` }
	tests := []struct {
		name, yaml string
		line       int
		want       string
	}{
		{"unmarked sibling digest", "i:\n  repository: h/a" + m("app:name") + "\n  tag: 1" + m("app:tag") + "\n  digest: \"\"\n", 3,
			`image "app": the tag at line 3 has a sibling "digest" field (line 4) that is not marked; mark it {"$rebase": "app:digest"}`},
		{"unmarked sibling digest of a whole reference", "i:\n  image: h/a:1" + m("app") + "\n  digest: " + d64 + "\n", 2, `sibling "digest" field (line 3) that is not marked`},
		{"kustomize entry, unmarked digest", "images:\n- name: app\n  newName: h/a" + m("app:name") + "\n  newTag: v2" + m("app:tag") + "\n  digest: " + d64 + "\n", 4,
			`has a sibling "digest" field (line 5) that is not marked; mark it {"$rebase": "app:digest"}: the digest goes there`},
		{"unmarked sibling registry", "i:\n  registry: docker.io\n  repository: bitnami/nginx" + m("app:name") + "\n  tag: 1" + m("app:tag") + "\n", 3,
			`the repository at line 3 has a sibling "registry" field (line 2) that is not marked; mark it {"$rebase": "app:registry"}: the chart joins REGISTRY/REPOSITORY`},
		{"sibling marked for another image", "i:\n  repository: h/a" + m("app:name") + "\n  tag: 1" + m("app:tag") + "\n  digest: \"\"" + m("other:digest") + "\n", 4,
			`the sibling "digest" field of the tag at line 3 is marked "other:digest"; mark it {"$rebase": "app:digest"}`},
		{"digest without tag", "images:\n- name: app\n  digest: " + d64 + m("kd:digest") + "\n", 3, `image "kd": the digest field at line 3 has no tag field`},
		{"whole reference holding a digest", "digest: " + d64 + m("kd") + "\n", 1, `is a digest, not a reference; mark a field that holds only a digest with {"$rebase": "kd:digest"}`},
		{"invalid digest field", "i:\n  repository: h/a" + m("a:name") + "\n  tag: v1" + m("a:tag") + "\n  digest: sha256:1234567890abcdef" + m("a:digest") + "\n", 4, `invalid digest "sha256:1234567890abcdef" in the digest field`},
		{"null digest field", "i:\n  repository: h/a" + m("a:name") + "\n  tag: v1" + m("a:tag") + "\n  digest:" + m("a:digest") + "\n", 4, `the value is empty (null); write digest: "" so that`},
		{"registry that is no host", "i:\n  registry: myregistry" + m("a:registry") + "\n  repository: app" + m("a:name") + "\n  tag: v1" + m("a:tag") + "\n", 2, `registry "myregistry" does not start with a registry host`},
		{"registry without repository", "i:\n  registry: docker.io" + m("a:registry") + "\n", 2, `the registry field at line 2 has no repository field`},
		{"registry with a whole reference", "i:\n  registry: docker.io" + m("a:registry") + "\n  image: h/a:1" + m("a") + "\n", 2, `marker "a:registry" conflicts with the whole-reference marker "a" at line 3`},
		{"NAME= without a name", "- =h/a:1" + m("a") + "\n", 1, `"=h/a:1" is neither a reference nor NAME=REFERENCE`},
		{"both keys in one comment", "tag: 1 # {\"$rebase\": \"a:tag\", \"$imagepolicy\": \"ns:p:tag\"}\n", 1, `holds both "$rebase" and "$imagepolicy"`},
		{"Helm template", "image: \"{{ .Values.image.repository }}:{{ .Values.image.tag }}\"" + m("app") + "\n", 1, "the value is a Helm/Go template expression ({{ ... }}), not an image reference"},
		{"Helm template, plain", "image: {{ .Values.image }}" + m("app") + "\n", 1, "Helm/Go template expression"},
		{"unmarked template", "a: h/a:1" + m("app") + "\n{{- if .Values.x }}\nb: 1\n{{- end }}\n", 0, "a Helm template is not YAML; mark the values it reads"},
		{"Compose interpolation", "image: \"registry.example.com/app:${TAG:-1.0}\"" + m("app") + "\n", 1, `uses variable interpolation ($VAR, ${VAR:-default}); values are read literally`},
		{"Compose variable", "image: registry.example.com/app:$TAG" + m("app") + "\n", 1, "uses variable interpolation"},
		{"flow mapping", "image: {repository: h/a, tag: \"1\"}" + m("app") + "\n", 1, `the value is a flow mapping ({...}), and a marker marks the one scalar on its line; write it in block style (one key per line) and mark each field ("app:name", "app:tag")`},
		{"folded block", "a: >\n  b: h/a:1" + m("app") + "\n", 1, "a folded block scalar (>) joins its lines"},
		{"block that is not YAML", "a: |\n  b: h/a:1" + m("app") + "\n  c\n", 1, "in the block scalar at line 1 (read as YAML): not valid YAML"},
		{"block in a block", "a: |\n  b: |\n    c: h/a:1" + m("app") + "\n", 2, "a block scalar inside Helm values given as a string is not supported"},
		{"marker error in a block", "a: |\n  b:\n    c: h/a:1 # {\"$rebase\": x}\n", 3, "in the block scalar at line 1 (read as YAML): malformed marker"},
		{"block id clashes with the file's", "x: h/x:1" + m("app") + "\na: |\n  b: h/a:1" + m("app") + "\n", 3, `duplicate marker "app" (first at line 1)`},
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
					return
				}
			}
			t.Fatalf("want line %d %q, got %v", tt.line, tt.want, err)
		})
	}
}

// pinned scans src with markers, pins every image to d64, and returns the
// result and the images.
func pinned(t *testing.T, markers Markers, src string) (string, []*Image) {
	t.Helper()
	images, err := markers.Scan("f.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	var edits []Edit
	for _, im := range images {
		edits = append(edits, im.Pin(d64)...)
	}
	out, err := Rewrite("f.yaml", []byte(src), edits)
	if err != nil {
		t.Fatal(err)
	}
	assertOnlyEdited(t, []byte(src), out, edits)
	again, err := markers.Scan("f.yaml", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range again {
		if e := im.Pin(d64); len(e) != 0 {
			t.Fatalf("pinning again edits %+v", e)
		}
	}
	return string(out), images
}

func TestPinDigestAndRegistryFields(t *testing.T) {
	old := "sha256:" + strings.Repeat("1", 64)
	tests := []struct {
		name, src, want, ref string
	}{
		{"kustomize newTag and digest",
			"images:\n- name: app\n  newName: h/a # {\"$rebase\": \"a:name\"}\n  newTag: v2 # {\"$rebase\": \"a:tag\"}\n  digest: " + old + " # {\"$rebase\": \"a:digest\"}\n",
			"images:\n- name: app\n  newName: h/a # {\"$rebase\": \"a:name\"}\n  newTag: v2 # {\"$rebase\": \"a:tag\"}\n  digest: " + d64 + " # {\"$rebase\": \"a:digest\"}\n",
			"h/a:v2"},
		{"a tag that held the digest gives it up",
			"i:\n  repository: h/a # {\"$rebase\": \"a:name\"}\n  tag: \"v2@" + old + "\" # {\"$rebase\": \"a:tag\"}\n  digest: '' # {\"$rebase\": \"a:digest\"}\n",
			"i:\n  repository: h/a # {\"$rebase\": \"a:name\"}\n  tag: \"v2\" # {\"$rebase\": \"a:tag\"}\n  digest: '" + d64 + "' # {\"$rebase\": \"a:digest\"}\n",
			"h/a:v2"},
		{"Bitnami registry, repository, tag, digest",
			"image:\n  registry: docker.io # {\"$rebase\": \"n:registry\"}\n  repository: bitnami/nginx # {\"$rebase\": \"n:name\"}\n  tag: 1.29.1-debian-12-r0 # {\"$rebase\": \"n:tag\"}\n  digest: \"\" # {\"$rebase\": \"n:digest\"}\n",
			"image:\n  registry: docker.io # {\"$rebase\": \"n:registry\"}\n  repository: bitnami/nginx # {\"$rebase\": \"n:name\"}\n  tag: 1.29.1-debian-12-r0 # {\"$rebase\": \"n:tag\"}\n  digest: \"" + d64 + "\" # {\"$rebase\": \"n:digest\"}\n",
			"docker.io/bitnami/nginx:1.29.1-debian-12-r0"},
		{"registry with a port and a path, tag pinned in place",
			"image:\n  registry: localhost:5000/mirror # {\"$rebase\": \"n:registry\"}\n  repository: app # {\"$rebase\": \"n:name\"}\n  tag: \"1\" # {\"$rebase\": \"n:tag\"}\n",
			"image:\n  registry: localhost:5000/mirror # {\"$rebase\": \"n:registry\"}\n  repository: app # {\"$rebase\": \"n:name\"}\n  tag: \"1@" + d64 + "\" # {\"$rebase\": \"n:tag\"}\n",
			"localhost:5000/mirror/app:1"},
		{"empty registry: the repository alone",
			"image:\n  registry: \"\" # {\"$rebase\": \"n:registry\"}\n  repository: h.example/app # {\"$rebase\": \"n:name\"}\n  tag: \"1\" # {\"$rebase\": \"n:tag\"}\n",
			"image:\n  registry: \"\" # {\"$rebase\": \"n:registry\"}\n  repository: h.example/app # {\"$rebase\": \"n:name\"}\n  tag: \"1@" + d64 + "\" # {\"$rebase\": \"n:tag\"}\n",
			"h.example/app:1"},
		{"whole reference and a digest field elsewhere",
			"c:\n  image: h/a:1@" + old + " # {\"$rebase\": \"a\"}\nd:\n  digest: \"\" # {\"$rebase\": \"a:digest\"}\n",
			"c:\n  image: h/a:1 # {\"$rebase\": \"a\"}\nd:\n  digest: \"" + d64 + "\" # {\"$rebase\": \"a:digest\"}\n",
			"h/a:1"},
		{"block scalar, CRLF, blank lines and comments inside",
			"spec:\r\n  helm:\r\n    values: |\r\n      image:\r\n\r\n        # pinned\r\n        repository: h/a # {\"$rebase\": \"a:name\"}\r\n        tag: \"1\" # {\"$rebase\": \"a:tag\"}\r\n    other: x\r\n",
			"spec:\r\n  helm:\r\n    values: |\r\n      image:\r\n\r\n        # pinned\r\n        repository: h/a # {\"$rebase\": \"a:name\"}\r\n        tag: \"1@" + d64 + "\" # {\"$rebase\": \"a:tag\"}\r\n    other: x\r\n",
			"h/a:1"},
		{"block with an indentation indicator and keep chomping",
			"a: |2+\n    b: h/a:1 # {\"$rebase\": \"a\"}\n\n",
			"a: |2+\n    b: h/a:1@" + d64 + " # {\"$rebase\": \"a\"}\n\n",
			"h/a:1"},
		{"Argo CD kustomize.images override NAME=REFERENCE",
			"images:\n- my-app=gcr.io/my-repo/my-app:0.1 # {\"$rebase\": \"a\"}\n",
			"images:\n- my-app=gcr.io/my-repo/my-app:0.1@" + d64 + " # {\"$rebase\": \"a\"}\n",
			"gcr.io/my-repo/my-app:0.1"},
		{"block in a sequence",
			"- |-\n  image: h/a:1 # {\"$rebase\": \"a\"}\n- b\n",
			"- |-\n  image: h/a:1@" + d64 + " # {\"$rebase\": \"a\"}\n- b\n",
			"h/a:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, images := pinned(t, nil, tt.src)
			if out != tt.want {
				t.Fatalf("got\n%q\nwant\n%q", out, tt.want)
			}
			if len(images) != 1 || images[0].Reference() != tt.ref {
				t.Fatalf("reference %q, want %q", images[0].Reference(), tt.ref)
			}
		})
	}
}

func TestImagePolicyMarkers(t *testing.T) {
	src := "spec:\n  values:\n    image:\n" +
		"      repository: ghcr.io/my-org/my-app # {\"$imagepolicy\": \"flux-system:my-policy:name\"}\n" +
		"      tag: 4.0.6 # {\"$imagepolicy\": \"flux-system:my-policy:tag\"}\n" +
		"      digest: " + d64 + " # {\"$imagepolicy\": \"flux-system:my-policy:digest\"}\n" +
		"    sidecar: h/s:1 # {\"$rebase\": \"flux-system:sidecar\"}\n"
	images, err := Scan("f.yaml", []byte(src))
	if err != nil || len(images) != 1 || images[0].ID != "flux-system:sidecar" {
		t.Fatalf("default markers read $imagepolicy: %v %+v", err, images)
	}
	images, err = Markers{ImagePolicyKey}.Scan("f.yaml", []byte(src))
	if err != nil || len(images) != 1 || images[0].Reference() != "ghcr.io/my-org/my-app:4.0.6" || images[0].Digest != d64 {
		t.Fatalf("imagepolicy markers: %v %+v", err, images)
	}
	images, err = Markers{MarkerKey, ImagePolicyKey}.Scan("f.yaml", []byte(src))
	if err != nil || len(images) != 2 {
		t.Fatalf("both: %v %+v", err, images)
	}
	// One image marked with both keys, field by field (the name for
	// image-rebase only, say).
	mixed := "images:\n- name: app # {\"$rebase\": \"ns:app:name\"}\n  newTag: v1 # {\"$imagepolicy\": \"ns:app:tag\"}\n"
	images, err = Markers{MarkerKey, ImagePolicyKey}.Scan("f.yaml", []byte(mixed))
	if err != nil || len(images) != 1 || images[0].Reference() != "app:v1" {
		t.Fatalf("mixed: %v %+v", err, images)
	}
	// The messages suggest the key the file uses.
	_, err = Markers{ImagePolicyKey}.Scan("f.yaml", []byte("tag: v1 # {\"$imagepolicy\": \"ns:p:tag\"}\n"))
	if err == nil || !strings.Contains(err.Error(), `mark the repository with {"$imagepolicy": "ns:p:name"}`) {
		t.Fatalf("got %v", err)
	}
}
