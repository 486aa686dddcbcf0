package basedetect

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/rebase"
)

func hash(s string) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256([]byte(s)))}
}

// entry is a history entry; layer names the layer it adds ("" for an
// empty-layer entry).
type entry struct {
	createdBy, comment, layer string
}

// image builds an image from entries, with labels, env and annotations.
func image(t *testing.T, ref string, entries []entry, labels map[string]string, env []string, annotations map[string]string) *manifest.Image {
	t.Helper()
	cfg := &v1.ConfigFile{OS: "linux", Architecture: "amd64", RootFS: v1.RootFS{Type: "layers"}}
	cfg.Config.Labels, cfg.Config.Env = labels, env
	m := &v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Annotations: annotations}
	for _, e := range entries {
		cfg.History = append(cfg.History, v1.History{CreatedBy: e.createdBy, Comment: e.comment, EmptyLayer: e.layer == ""})
		if e.layer != "" {
			cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, hash("diff "+e.layer))
			m.Layers = append(m.Layers, v1.Descriptor{MediaType: types.OCILayer, Digest: hash("blob " + e.layer), Size: 10})
		}
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Config = v1.Descriptor{MediaType: types.OCIConfigJSON, Digest: hash(string(raw)), Size: int64(len(raw))}
	rawM, _ := json.Marshal(m)
	return &manifest.Image{Ref: ref, Descriptor: v1.Descriptor{MediaType: m.MediaType, Digest: hash(string(rawM)), Size: int64(len(rawM))},
		RawManifest: rawM, Manifest: m, Family: manifest.OCI, RawConfig: raw, Config: cfg}
}

// recompressed is img with its layers stored as other blobs (zstd): other
// digests, the same diff_ids.
func recompressed(img *manifest.Image) *manifest.Image {
	c := *img
	m := *img.Manifest
	m.Layers = nil
	for _, l := range img.Manifest.Layers {
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: types.OCILayerZStd, Digest: hash("zstd " + l.Digest.String()), Size: l.Size})
	}
	c.Manifest = &m
	return &c
}

const nop = "/bin/sh -c #(nop) "

// Histories as buildah 1.28 writes them (checked against real builds).
var (
	baseV1 = []entry{
		{nop + "COPY file:01b0553b128d4b3874da2687f49510d7a1f9882a69db52690c33df2a986d2d7f in /bin/busybox ", "", "busybox"},
		{nop + "COPY file:71fcc62d7067e8894cf553ecfbbf8f463c0e8ebd78f9e2a7a85ab22bc1af28fa in /etc/os ", "FROM 6af9888287a3", "os1"},
		{nop + "ENV PATH=/bin", "FROM 9b90ab43e62d", ""},
		{nop + `CMD ["/bin/busybox","sh"]`, "FROM fb626e986eee", ""},
	}
	// baseV2 is the same Dockerfile built with other file contents.
	baseV2 = []entry{
		{nop + "COPY file:01b0553b128d4b3874da2687f49510d7a1f9882a69db52690c33df2a986d2d7f in /bin/busybox ", "", "busybox"},
		{nop + "COPY file:99aa62d7067e8894cf553ecfbbf8f463c0e8ebd78f9e2a7a85ab22bc1af28fa in /etc/os ", "FROM 1234567890ab", "os2"},
		{nop + "ENV PATH=/bin", "FROM 0987654321ab", ""},
		{nop + `CMD ["/bin/busybox","sh"]`, "FROM aaaabbbbcccc", ""},
	}
	// perInstruction is an application built with buildah --layers.
	perInstruction = append(slices.Clone(baseV1),
		entry{nop + "LABEL FROM=base:1", "FROM localhost/base1:latest", ""},
		entry{nop + "COPY file:bea2156ed856feb2ee5fca8f6c06cc09781e16f49795f3205c76e2d439c8a1d2 in /app/app.txt ", "FROM 8e5041ceff3b", "app"},
		entry{`/bin/sh -c ["/bin/busybox","sh","-c","echo hi > /app/built"]`, "FROM 95c57c5d8abd", "run"},
		entry{nop + "ENV APP=1", "FROM be14510bf129", ""},
	)
	// squashed is the same built without --layers: one layer for the
	// build, every entry but the last marked empty.
	squashed = append(slices.Clone(baseV1),
		entry{nop + "LABEL FROM=base:1", "", ""},
		entry{nop + "COPY file:bea2156ed856feb2ee5fca8f6c06cc09781e16f49795f3205c76e2d439c8a1d2 in /app/app.txt ", "", ""},
		entry{`/bin/sh -c ["/bin/busybox","sh","-c","echo hi > /app/built"]`, "", ""},
		entry{nop + "ENV APP=1", "FROM localhost/base1:latest", "squashed"},
	)
)

func TestParseInstruction(t *testing.T) {
	tests := []struct{ in, keyword, args string }{
		{nop + "LABEL FROM=base:1", "LABEL", "FROM=base:1"},
		{"/bin/sh -c #(nop)  LABEL FROM=base:1", "LABEL", "FROM=base:1"},
		{"LABEL FROM=base:1", "LABEL", "FROM=base:1"},
		{"ENV A=1 B=2", "ENV", "A=1 B=2"},
		{"/bin/sh -c apt-get update", "RUN", "/bin/sh -c apt-get update"},
		{"|2 A=1 B=2 /bin/sh -c make", "RUN", "|2 A=1 B=2 /bin/sh -c make"},
		{"RUN /bin/sh -c make # buildkit", "RUN", "/bin/sh -c make # buildkit"},
		{`CMD ["sh"]`, "CMD", `["sh"]`},
		{"", "", ""},
		{"made by ko", "", ""},
	}
	for _, tt := range tests {
		got := parseInstruction(tt.in)
		if got.keyword != tt.keyword || got.args != tt.args {
			t.Errorf("parseInstruction(%q) = %+v, want %s %q", tt.in, got, tt.keyword, tt.args)
		}
	}
}

func TestKeyValues(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
		ok   bool
	}{
		{"FROM=base:1", map[string]string{"FROM": "base:1"}, true},
		{`a=b FROM="reg.example.com/base:1" c='x y'`, map[string]string{"a": "b", "FROM": "reg.example.com/base:1", "c": "x y"}, true},
		{`FROM base:1`, map[string]string{"FROM": "base:1"}, true},
		{`A=x\ y`, map[string]string{"A": "x y"}, true},
		{`FROM="base:1`, nil, false},
		{`=x`, nil, false},
		{``, nil, false},
	}
	for _, tt := range tests {
		got, ok := keyValues(tt.in)
		if ok != tt.ok || fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("keyValues(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestChoosePrecedence(t *testing.T) {
	label := map[string]string{"FROM": "base:1"}
	ann := func(name, digest string) map[string]string {
		return map[string]string{manifest.BaseNameAnnotation: name, manifest.BaseDigestAnnotation: digest}
	}
	oldDigest := hash("old").String()
	tests := []struct {
		name        string
		labels      map[string]string
		annotations map[string]string
		opts        Options
		method      Method
		newRef      string
		oldRef      string
		warning     string
		err         string
	}{
		{"label", label, nil, Options{}, ByLabel, "base:1", "", "", ""},
		{"label with --to-base", label, nil, Options{NewGiven: true}, ByLabel, "", "", "", ""},
		{"annotation", nil, ann("reg/base:1", oldDigest), Options{}, ByAnnotation, "reg/base:1", "reg/base@" + oldDigest, "", ""},
		{"annotation with port, no digest", nil, ann("reg:5000/base:1", ""), Options{}, ByAnnotation, "reg:5000/base:1", "", "", ""},
		{"annotation of a scratch build is ignored", nil, ann("", oldDigest), Options{}, "", "", "", "", "does not record its base"},
		{"label and same annotation", label, ann("reg/base:1", oldDigest), Options{SameRef: func(l, a string) bool { return "reg/"+l == a }}, ByLabel, "base:1", "reg/base@" + oldDigest, "", ""},
		{"label and other annotation", label, ann("reg/other:1", oldDigest), Options{}, ByLabel, "base:1", "", "label FROM=base:1 and annotation org.opencontainers.image.base.name=reg/other:1", ""},
		{"layers beats label", label, ann("reg/base:1", oldDigest), Options{Layers: 2, NewGiven: true}, ByCount, "", "", "", ""},
		{"layers needs --to-base", nil, nil, Options{Layers: 2}, "", "", "", "", "--layers needs --to-base"},
		{"history", nil, nil, Options{NewGiven: true}, ByHistory, "", "", "", ""},
		{"nothing", nil, nil, Options{}, "", "", "", "", "pass --from-base OLD --to-base NEW"},
		{"wrong label name", map[string]string{"BASE": "x", "FROM": "y"}, nil, Options{Label: "BASE_IMAGE"}, "", "", "", "", `has no label "BASE_IMAGE" (its labels: BASE, FROM)`},
		{"label named with -l", map[string]string{"BASE": "base:1"}, nil, Options{Label: "BASE"}, ByLabel, "base:1", "", "", ""},
		{"empty label", map[string]string{"FROM": " "}, nil, Options{}, "", "", "", "", "label FROM is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := image(t, "reg/app:1", perInstruction, tt.labels, nil, tt.annotations)
			c, err := Choose(img, tt.opts)
			if tt.err != "" {
				var re *RefusedError
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errorsAs(err, &re) {
					t.Fatalf("err %v, want a refusal containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Method != tt.method || c.NewRef != tt.newRef || c.OldRef != tt.oldRef {
				t.Errorf("got %s new %q old %q; want %s new %q old %q", c.Method, c.NewRef, c.OldRef, tt.method, tt.newRef, tt.oldRef)
			}
			if tt.warning == "" && len(c.Warnings) > 0 || tt.warning != "" && (len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0].Message, tt.warning)) {
				t.Errorf("warnings %v, want %q", c.Warnings, tt.warning)
			}
		})
	}
}

func errorsAs(err error, re **RefusedError) bool {
	r, ok := err.(*RefusedError)
	*re = r
	return ok
}

func TestDecide(t *testing.T) {
	labelFrom := map[string]string{"FROM": "base:1"}
	newBase := image(t, "reg/base:1", baseV2, nil, []string{"PATH=/bin"}, nil)
	oldBase := image(t, "reg/base@old", baseV1, nil, []string{"PATH=/bin"}, nil)
	twoEntryBase := image(t, "reg/two:1", baseV2[:2], nil, nil, nil)
	otherBase := image(t, "reg/other:1", []entry{{"COPY x /", "", "x"}, {"ENV BASEVER=2", "", ""}, {nop + "ENV PATH=/bin", "", ""}, {"CMD sh", "", ""}}, nil, nil, nil)
	blank := image(t, "reg/blank:1", []entry{{"", "", "b"}}, nil, nil, nil)
	noHist := image(t, "reg/ko:1", nil, nil, nil, nil)
	noHist.Manifest.Layers = newBase.Manifest.Layers

	tests := []struct {
		name    string
		entries []entry
		labels  map[string]string
		opts    Options
		nw, old *manifest.Image
		// want
		baseEntries, baseLayers int
		oldDigest               bool
		reason, warning, err    string
	}{
		{name: "label, per-instruction build", entries: perInstruction, labels: labelFrom, nw: newBase,
			baseEntries: 4, baseLayers: 2, reason: "history entry 5 of 8 set the label"},
		{name: "label, squashed build", entries: squashed, labels: labelFrom, nw: newBase,
			baseEntries: 4, baseLayers: 2, reason: "the application keeps 1 layers and 4 entries"},
		{name: "label, entry not in history: history match", entries: append(slices.Clone(baseV1), entry{"COPY app /", "", "app"}), labels: labelFrom, nw: newBase,
			baseEntries: 4, baseLayers: 2, reason: "matched ignoring content hashes"},
		{name: "label set first: no base", entries: append([]entry{{"LABEL FROM=base:1", "", ""}}, perInstruction[5:]...), labels: labelFrom, nw: newBase,
			err: "hold no layer"},
		{name: "label with its old base found by digest", entries: perInstruction, labels: labelFrom, nw: newBase, old: oldBase,
			baseEntries: 4, baseLayers: 2, oldDigest: true, reason: "still exists"},
		{name: "label and an annotated old base that disagrees", entries: perInstruction, labels: labelFrom, nw: newBase, old: image(t, "reg/base@x", baseV1[:1], nil, nil, nil),
			baseEntries: 4, baseLayers: 2, warning: "has 1 layers, but label puts the boundary after 2"},
		{name: "layers 4 of 8", entries: perInstruction, opts: Options{Layers: 4, NewGiven: true}, nw: newBase,
			baseEntries: 4, baseLayers: 2},
		{name: "layers 2 of 8 (squashed): empty entries count", entries: squashed, opts: Options{Layers: 2, NewGiven: true}, nw: newBase,
			baseEntries: 6, baseLayers: 2},
		{name: "layers 7 of 8: one layer left below", entries: perInstruction, opts: Options{Layers: 7, NewGiven: true}, nw: newBase,
			baseEntries: 1, baseLayers: 1},
		{name: "layers too large", entries: perInstruction, opts: Options{Layers: 8, NewGiven: true}, nw: newBase,
			err: "--layers 8 does not fit: reg/app:1 has 8 history entries in all"},
		{name: "layers leaving no layer below", entries: append([]entry{{"ENV X=1", "", ""}}, perInstruction...), opts: Options{Layers: 8, NewGiven: true}, nw: newBase,
			err: "hold no layer"},
		{name: "annotation, old base found", entries: perInstruction, opts: Options{}, nw: newBase, old: oldBase,
			baseEntries: 4, baseLayers: 2, oldDigest: true, reason: "still exists"},
		{name: "annotation, old base gone: history match", entries: perInstruction, nw: newBase,
			baseEntries: 4, baseLayers: 2, reason: "matched ignoring content hashes and build IDs"},
		{name: "annotation, old base not under the image", entries: perInstruction, nw: newBase, old: otherBase,
			err: "is not built on reg/other:1: layer 1 differs: diff_id image sha256:"},
		{name: "annotation, old base found recompressed (zstd): matched by diff_id", entries: perInstruction, nw: newBase, old: recompressed(oldBase),
			baseEntries: 4, baseLayers: 2, oldDigest: true, reason: "still exists"},
		{name: "label with its old base found by digest, recompressed: matched by diff_id", entries: perInstruction, labels: labelFrom, nw: newBase, old: recompressed(oldBase),
			baseEntries: 4, baseLayers: 2, oldDigest: true, reason: "still exists"},
		{name: "history, exact", entries: perInstruction, opts: Options{NewGiven: true}, nw: oldBase,
			baseEntries: 4, baseLayers: 2, reason: "matched exactly"},
		{name: "history, different instructions", entries: perInstruction, opts: Options{NewGiven: true}, nw: otherBase,
			err: `entry 1 is "/bin/sh -c #(nop) COPY file:01b0553b128d4b3874da2687f49510d7a1f9882a69db52690c33df2a986d2d7f in /bin/busybox " in the image but "COPY x /" in reg/other:1, so the match is ambiguous; pass --from-base OLD`},
		{name: "history, same shape: --layers hinted", entries: append(slices.Clone(otherBase0()), perInstruction[4:]...), opts: Options{NewGiven: true}, nw: otherBase,
			err: "that is --layers 4"},
		{name: "history, new base longer than the image", entries: baseV1[:2], opts: Options{NewGiven: true}, nw: newBase,
			err: "has 4 history entries, the image only 2"},
		{name: "history, new base without history", entries: perInstruction, opts: Options{NewGiven: true}, nw: noHist,
			err: "records no history"},
		{name: "history, blank entries prove nothing", entries: perInstruction, opts: Options{NewGiven: true}, nw: blank,
			err: "is blank"},
		{name: "history, a shorter base matches a prefix", entries: perInstruction, opts: Options{NewGiven: true}, nw: twoEntryBase,
			baseEntries: 2, baseLayers: 2},
		{name: "history inconsistent with layers", entries: append(slices.Clone(perInstruction), entry{"", "", ""}), labels: labelFrom, nw: newBase,
			err: "history records 4 layers but it has 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ann map[string]string
			if tt.old != nil && tt.labels == nil && tt.opts.Layers == 0 || strings.HasPrefix(tt.name, "annotation") {
				ann = map[string]string{manifest.BaseNameAnnotation: "reg/base:1", manifest.BaseDigestAnnotation: hash("old").String()}
			}
			img := image(t, "reg/app:1", tt.entries, tt.labels, []string{"PATH=/bin", "APP=1"}, ann)
			if tt.name == "history inconsistent with layers" {
				// A layer the history does not record.
				img.Config.History = img.Config.History[:len(img.Config.History)-1]
				img.Config.RootFS.DiffIDs = append(img.Config.RootFS.DiffIDs, hash("extra"))
				img.Manifest.Layers = append(img.Manifest.Layers, v1.Descriptor{Digest: hash("extra")})
			}
			opts := tt.opts
			opts.SameRef = func(string, string) bool { return true }
			c, err := Choose(img, opts)
			if err != nil {
				t.Fatal(err)
			}
			d, err := c.Decide(Input{Image: img, New: tt.nw, Old: tt.old, OldMissing: "is gone (404)"})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Entries != tt.baseEntries || d.Layers != tt.baseLayers {
				t.Errorf("boundary %d entries, %d layers; want %d, %d\n%s", d.Entries, d.Layers, tt.baseEntries, tt.baseLayers, strings.Join(d.Reasons, "\n"))
			}
			if (d.OldDigest != v1.Hash{}) != tt.oldDigest {
				t.Errorf("old digest %v, want found=%v", d.OldDigest, tt.oldDigest)
			}
			if d.NewDigest != tt.nw.Descriptor.Digest || d.NewRef != tt.nw.Ref || d.Method == "" {
				t.Errorf("decision %+v does not name the method and the new base", d)
			}
			if tt.reason != "" && !strings.Contains(strings.Join(d.Reasons, "\n"), tt.reason) {
				t.Errorf("reasons %q, want %q", d.Reasons, tt.reason)
			}
			if tt.warning != "" && (len(d.Warnings) == 0 || !strings.Contains(d.Warnings[0].Message, tt.warning)) {
				t.Errorf("warnings %v, want %q", d.Warnings, tt.warning)
			}
			if len(d.Old.Layers) != d.Layers || !rebase.HasDiffIDPrefix(img.Config.RootFS.DiffIDs, d.Old.Config.RootFS.DiffIDs) {
				t.Errorf("old base layers %v are not the image's bottom %d", d.Old.Layers, d.Layers)
			}
			if !tt.oldDigest && (d.Old.Digest != v1.Hash{} || len(d.Old.Config.History) != d.Entries || len(d.Old.RawHistory) != d.Entries || len(d.Old.Config.RootFS.DiffIDs) != d.Layers) {
				t.Errorf("derived old base: digest %v, %d history entries, %d raw, %d diff_ids", d.Old.Digest, len(d.Old.Config.History), len(d.Old.RawHistory), len(d.Old.Config.RootFS.DiffIDs))
			}
		})
	}
}

// otherBase0 is an image history with otherBase's shape but other values.
func otherBase0() []entry {
	return []entry{{"COPY y /", "", "y"}, {"ENV BASEVER=1", "", ""}, {nop + "ENV PATH=/bin", "", ""}, {"CMD sh", "", ""}}
}

// TestDerivedOldConfigKeepsWhatTheApplicationSet runs the whole plan with an
// old base derived from the image: what the base set follows the new base,
// what the application's instructions set stays.
func TestDerivedOldConfigKeepsWhatTheApplicationSet(t *testing.T) {
	baseHist := []entry{{"COPY os /", "", "os1"}, {nop + "ENV PATH=/bin BASEVER=1", "", ""}, {nop + "LABEL org.example.base=1", "", ""}, {nop + `CMD ["sh"]`, "", ""}}
	appHist := append(slices.Clone(baseHist),
		entry{nop + "LABEL FROM=base:1", "", ""},
		entry{nop + "COPY app /app", "", "app"},
		entry{nop + "ENV APP=1 BASEVER=pinned", "", ""},
		entry{nop + `CMD ["/app"]`, "", ""})
	img := image(t, "reg/app:1", appHist, map[string]string{"FROM": "base:1", "org.example.base": "1"}, []string{"PATH=/bin", "BASEVER=pinned", "APP=1"}, nil)
	img.Config.Config.Cmd = []string{"/app"}
	img.RawConfig, _ = json.Marshal(img.Config)
	nwHist := slices.Clone(baseHist)
	nwHist[0].layer = "os2"
	nw := image(t, "reg/base:1", nwHist, map[string]string{"org.example.base": "2"}, []string{"PATH=/usr/bin:/bin", "BASEVER=2"}, nil)
	nw.Config.Config.Cmd = []string{"sh"}
	nw.RawConfig, _ = json.Marshal(nw.Config)

	c, err := Choose(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := c.Decide(Input{Image: img, New: nw})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(d.Reasons, "\n"), "without what the application's history sets (LABEL FROM, ENV APP, ENV BASEVER, CMD)") {
		t.Errorf("reasons: %q", d.Reasons)
	}
	nb, err := rebase.BaseFromImage(nw)
	if err != nil {
		t.Fatal(err)
	}
	p, err := rebase.New(rebase.Input{Image: img, Old: d.Old, New: nb})
	if err != nil {
		t.Fatal(err)
	}
	var got v1.ConfigFile
	if err := json.Unmarshal(p.Config, &got); err != nil {
		t.Fatal(err)
	}
	if env := strings.Join(got.Config.Env, " "); env != "PATH=/usr/bin:/bin BASEVER=pinned APP=1" {
		t.Errorf("env %q: PATH follows the new base, BASEVER and APP stay the application's", env)
	}
	if cmd := strings.Join(got.Config.Cmd, " "); cmd != "/app" {
		t.Errorf("cmd %q, want the application's", cmd)
	}
	if got.Config.Labels["org.example.base"] != "2" || got.Config.Labels["FROM"] != "base:1" {
		t.Errorf("labels %v: the base's label follows the new base, FROM stays", got.Config.Labels)
	}
	if len(got.History) != len(appHist) || got.History[4].CreatedBy != nop+"LABEL FROM=base:1" {
		t.Errorf("history: %d entries, entry 5 %q", len(got.History), got.History[4].CreatedBy)
	}
	if got.RootFS.DiffIDs[0] != nw.Config.RootFS.DiffIDs[0] || len(got.RootFS.DiffIDs) != 2 {
		t.Errorf("diff_ids %v", got.RootFS.DiffIDs)
	}
}
