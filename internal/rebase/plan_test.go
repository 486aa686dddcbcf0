package rebase

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/manifest"
)

// layer makes a synthetic layer descriptor and diff_id named by s. A
// suffix stores the same content as another blob: "a1~zstd" and "a1~tar"
// have a1's diff_id but their own digests.
func layer(s string, mt types.MediaType) (v1.Descriptor, v1.Hash) {
	content, _, _ := strings.Cut(s, "~")
	d, _, _ := v1.SHA256(strings.NewReader("compressed " + s))
	u, _, _ := v1.SHA256(strings.NewReader("uncompressed " + content))
	return v1.Descriptor{MediaType: mt, Size: int64(100 + len(s)), Digest: d}, u
}

// layerType is the media type of the layer named s in an image of family f
// whose layers are otherwise of type mt.
func layerType(s string, f manifest.Family, mt types.MediaType) types.MediaType {
	switch {
	case strings.HasSuffix(s, "~zstd"):
		return types.OCILayerZStd
	case strings.HasSuffix(s, "~tar") && f == manifest.Docker:
		return types.DockerUncompressedLayer
	case strings.HasSuffix(s, "~tar"):
		return types.OCIUncompressedLayer
	}
	return mt
}

type spec struct {
	ref      string
	family   manifest.Family
	layers   []string
	layerMT  types.MediaType
	history  []v1.History
	config   v1.Config
	platform string // "os/arch"
	extra    map[string]any
}

// image builds a manifest.Image from a spec, with raw documents that match
// the parsed ones.
func image(t *testing.T, s spec) *manifest.Image {
	t.Helper()
	if s.family == 0 {
		s.family = manifest.OCI
	}
	if s.layerMT == "" {
		s.layerMT = types.OCILayer
		if s.family == manifest.Docker {
			s.layerMT = types.DockerLayer
		}
	}
	if s.platform == "" {
		s.platform = "linux/amd64"
	}
	os, arch, _ := strings.Cut(s.platform, "/")
	cfg := v1.ConfigFile{OS: os, Architecture: arch, RootFS: v1.RootFS{Type: "layers"}, Config: s.config, History: s.history}
	var layers []v1.Descriptor
	for _, l := range s.layers {
		d, diff := layer(l, layerType(l, s.family, s.layerMT))
		layers = append(layers, d)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diff)
	}
	rawCfg, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.extra != nil {
		var m map[string]any
		json.Unmarshal(rawCfg, &m)
		for k, v := range s.extra {
			m[k] = v
		}
		rawCfg, _ = json.Marshal(m)
	}
	cd, _, _ := v1.SHA256(bytes.NewReader(rawCfg))
	m := &v1.Manifest{SchemaVersion: 2, MediaType: manifest.ManifestMediaType(s.family),
		Config: v1.Descriptor{MediaType: manifest.ConfigMediaType(s.family), Size: int64(len(rawCfg)), Digest: cd},
		Layers: layers}
	raw, _ := json.Marshal(m)
	md, _, _ := v1.SHA256(bytes.NewReader(raw))
	parsed, err := manifest.ParseConfig(s.ref, rawCfg)
	if err != nil {
		t.Fatal(err)
	}
	return &manifest.Image{Ref: s.ref, Family: s.family, RawManifest: raw, Manifest: m, RawConfig: rawCfg, Config: parsed,
		Descriptor: v1.Descriptor{MediaType: m.MediaType, Size: int64(len(raw)), Digest: md}}
}

func base(t *testing.T, s spec) *Base {
	t.Helper()
	b, err := BaseFromImage(image(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hist(entries ...string) []v1.History {
	var h []v1.History
	for _, e := range entries {
		empty := strings.HasPrefix(e, "ENV") || strings.HasPrefix(e, "LABEL") || strings.HasPrefix(e, "CMD")
		h = append(h, v1.History{CreatedBy: e, EmptyLayer: empty})
	}
	return h
}

func digests(ds []v1.Descriptor) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Digest.String())
	}
	return out
}

func names(layers ...string) []string {
	var out []string
	for _, l := range layers {
		d, _ := layer(l, types.OCILayer)
		out = append(out, d.Digest.String())
	}
	return out
}

func TestPlan(t *testing.T) {
	v1Base := spec{ref: "reg/base:1", layers: []string{"a1", "a2", "a3"}, history: hist("ADD a1", "COPY a2", "COPY a3", "ENV BASEVER=1"),
		config: v1.Config{Env: []string{"PATH=/usr/bin", "BASEVER=1"}}}
	v2Base := spec{ref: "reg/base:2", layers: []string{"b1", "b2", "b3"}, history: hist("ADD b1", "COPY b2", "COPY b3", "ENV BASEVER=2"),
		config: v1.Config{Env: []string{"PATH=/usr/bin", "BASEVER=2"}}}
	app := spec{ref: "reg/app:1", layers: []string{"a1", "a2", "a3", "app"},
		history: hist("ADD a1", "COPY a2", "COPY a3", "ENV BASEVER=1", "COPY app", "CMD run"),
		config:  v1.Config{Env: []string{"PATH=/usr/bin", "BASEVER=1"}, Cmd: []string{"run"}}}

	tests := []struct {
		name         string
		img, old     spec
		nw           spec
		wantErr      string
		wantUpToDate bool
		wantLayers   []string
		wantFamily   manifest.Family
		wantHistory  []string
		wantWarning  string
		wantNotes    []string
		editOld      func(*Base)
		check        func(t *testing.T, p *Plan, cfg *v1.ConfigFile, m *v1.Manifest)
	}{
		{
			name: "replaces the base layers and history", img: app, old: v1Base, nw: v2Base,
			wantLayers:  names("b1", "b2", "b3", "app"),
			wantHistory: []string{"ADD b1", "COPY b2", "COPY b3", "ENV BASEVER=2", "COPY app", "CMD run"},
			wantFamily:  manifest.OCI,
			check: func(t *testing.T, p *Plan, cfg *v1.ConfigFile, m *v1.Manifest) {
				if got := strings.Join(cfg.Config.Env, ","); got != "PATH=/usr/bin,BASEVER=2" {
					t.Errorf("env = %s", got)
				}
				if m.Annotations[manifest.BaseNameAnnotation] != "reg/base:2" || m.Annotations[manifest.BaseDigestAnnotation] == "" {
					t.Errorf("annotations = %v", m.Annotations)
				}
				if len(p.Changes) != 1 || p.Changes[0].String() != "Env BASEVER: inherited, 1 → 2" {
					t.Errorf("changes = %v", p.Changes)
				}
			},
		},
		{name: "up to date when already on the new base", img: app, old: v1Base, nw: v1Base, wantUpToDate: true},
		{
			name: "up to date when an earlier rebase already moved it", old: v1Base, nw: v2Base, wantUpToDate: true,
			img: spec{ref: "reg/app:1", layers: []string{"b1", "b2", "b3", "app"}, history: hist("ADD b1", "COPY b2", "COPY b3", "ENV BASEVER=2", "COPY app"),
				config: v1.Config{Env: []string{"PATH=/usr/bin", "BASEVER=2"}}},
		},
		{
			name: "refuses an image not on the old base, naming the layer", img: app, nw: v2Base,
			old:     spec{ref: "reg/other:1", layers: []string{"a1", "x2"}},
			wantErr: "reg/app:1 is not built on reg/other:1: layer 2 differs",
		},
		{
			name: "refuses an old base larger than the image", img: app, nw: v2Base,
			old:     spec{ref: "reg/big:1", layers: []string{"a1", "a2", "a3", "app", "more"}},
			wantErr: "the base has 5 layers, the image only 4",
		},
		{
			name: "refuses another architecture", img: app, old: v1Base,
			nw:      spec{ref: "reg/base:arm", layers: []string{"c1"}, platform: "linux/arm64"},
			wantErr: "platform mismatch: reg/app:1 is linux/amd64 but reg/base:arm is linux/arm64",
		},
		{
			name: "replaces a base further down the chain", old: v1Base, nw: v2Base,
			img: spec{ref: "reg/app:1", layers: []string{"a1", "a2", "a3", "mid", "app"},
				history: hist("ADD a1", "COPY a2", "COPY a3", "ENV BASEVER=1", "COPY mid", "COPY app")},
			wantLayers:  names("b1", "b2", "b3", "mid", "app"),
			wantHistory: []string{"ADD b1", "COPY b2", "COPY b3", "ENV BASEVER=2", "COPY mid", "COPY app"},
		},
		{
			name: "docker image on an OCI base stays docker", old: v1Base, nw: v2Base,
			img:        spec{ref: "reg/app:d", family: manifest.Docker, layers: []string{"a1", "a2", "a3", "app"}, history: app.history},
			wantFamily: manifest.Docker,
			check: func(t *testing.T, p *Plan, cfg *v1.ConfigFile, m *v1.Manifest) {
				for _, l := range m.Layers {
					if l.MediaType != types.DockerLayer {
						t.Errorf("layer media type %s in a docker manifest", l.MediaType)
					}
				}
				if m.Config.MediaType != types.DockerConfigJSON || len(m.Annotations) != 0 {
					t.Errorf("config %s, annotations %v", m.Config.MediaType, m.Annotations)
				}
			},
		},
		{
			name: "zstd base forces an OCI manifest", old: v1Base,
			img:        spec{ref: "reg/app:d", family: manifest.Docker, layers: []string{"a1", "a2", "a3", "app"}, history: app.history},
			nw:         spec{ref: "reg/base:z", layers: []string{"z1"}, layerMT: types.OCILayerZStd, history: hist("ADD z1")},
			wantFamily: manifest.OCI, wantWarning: "converted-to-oci",
			check: func(t *testing.T, p *Plan, cfg *v1.ConfigFile, m *v1.Manifest) {
				if m.Layers[0].MediaType != types.OCILayerZStd || m.Layers[1].MediaType != types.OCILayer {
					t.Errorf("layers %v", m.Layers)
				}
			},
		},
		{
			name: "keeps config fields it does not know", old: v1Base, nw: v2Base,
			img: spec{ref: "reg/app:1", layers: app.layers, history: app.history, config: app.config,
				extra: map[string]any{"com.example.tool.v1": "abc"}},
			check: func(t *testing.T, p *Plan, cfg *v1.ConfigFile, m *v1.Manifest) {
				if !strings.Contains(string(p.Config), `"com.example.tool.v1":"abc"`) {
					t.Errorf("unknown field lost: %s", p.Config)
				}
			},
		},
		{
			name: "drops BuildKit's inline cache and build info, with a note each", old: v1Base, nw: v2Base,
			img: spec{ref: "reg/app:1", layers: app.layers, history: app.history, config: app.config,
				extra: map[string]any{"moby.buildkit.cache.v0": "W3sibGF5ZXJzIjpbXX1d", "moby.buildkit.buildinfo.v1": "e30="}},
			wantNotes: []string{"build-metadata-dropped: moby.buildkit.cache.v0 dropped from the config: BuildKit's inline cache",
				"build-metadata-dropped: moby.buildkit.buildinfo.v1 dropped"},
			check: func(t *testing.T, p *Plan, cfg *v1.ConfigFile, m *v1.Manifest) {
				if strings.Contains(string(p.Config), "moby.buildkit") {
					t.Errorf("build metadata kept: %s", p.Config)
				}
			},
		},
		{
			name: "an image up to date keeps its inline cache, and no note says otherwise", old: v1Base, nw: v1Base, wantUpToDate: true,
			img: spec{ref: "reg/app:1", layers: app.layers, history: app.history, config: app.config,
				extra: map[string]any{"moby.buildkit.cache.v0": "W3sibGF5ZXJzIjpbXX1d"}},
			wantNotes: []string{},
		},
		{
			name: "old base matched by diff_id when the image stores it recompressed (zstd)", old: v1Base, nw: v2Base,
			img:        spec{ref: "reg/app:z", layers: []string{"a1~zstd", "a2~zstd", "a3~zstd", "app~zstd"}, history: app.history, config: app.config},
			wantLayers: append(names("b1", "b2", "b3"), digests([]v1.Descriptor{mustLayer("app~zstd")})...),
			wantNotes:  []string{"matched-by-content: 3 of reg/base:1's 3 layers are stored in reg/app:z as other blobs (zstd there, gzip in the base) with the same diff_ids"},
			check: func(t *testing.T, p *Plan, cfg *v1.ConfigFile, m *v1.Manifest) {
				if m.Layers[0].MediaType != types.OCILayer || m.Layers[3].MediaType != types.OCILayerZStd {
					t.Errorf("layer media types %s, %s: want the new base's gzip and the app's zstd", m.Layers[0].MediaType, m.Layers[3].MediaType)
				}
				if fmt.Sprint(digests(p.Removed)) != fmt.Sprint(digests([]v1.Descriptor{mustLayer("a1~zstd"), mustLayer("a2~zstd"), mustLayer("a3~zstd")})) {
					t.Errorf("removed %v, want the image's own zstd blobs", digests(p.Removed))
				}
			},
		},
		{
			name: "old base given uncompressed (a docker save of it) matches a gzip image", nw: v2Base,
			old:        spec{ref: "docker-archive:base1.tar", family: manifest.Docker, layers: []string{"a1~tar", "a2~tar", "a3~tar"}, history: v1Base.history, config: v1Base.config},
			img:        app,
			wantLayers: names("b1", "b2", "b3", "app"),
			wantNotes:  []string{"matched-by-content: 3 of docker-archive:base1.tar's 3 layers are stored in reg/app:1 as other blobs (gzip there, uncompressed in the base)"},
		},
		{
			name: "docker save application (plain tars) onto registry bases stays docker", old: v1Base, nw: v2Base,
			img:        spec{ref: "docker-archive:app.tar", family: manifest.Docker, layers: []string{"a1~tar", "a2~tar", "a3~tar", "app~tar"}, history: app.history, config: app.config},
			wantLayers: append(names("b1", "b2", "b3"), digests([]v1.Descriptor{mustLayer("app~tar")})...),
			wantFamily: manifest.Docker,
			wantNotes:  []string{"matched-by-content: 3 of reg/base:1's 3 layers are stored in docker-archive:app.tar as other blobs (uncompressed there, gzip in the base)"},
			check: func(t *testing.T, p *Plan, cfg *v1.ConfigFile, m *v1.Manifest) {
				if m.Layers[0].MediaType != types.DockerLayer || m.Layers[3].MediaType != types.DockerUncompressedLayer {
					t.Errorf("layer media types %s, %s", m.Layers[0].MediaType, m.Layers[3].MediaType)
				}
			},
		},
		{
			name: "up to date by content when the image stores the new base recompressed", old: v1Base, nw: v2Base, wantUpToDate: true,
			img: spec{ref: "reg/app:z", layers: []string{"b1~zstd", "b2~zstd", "b3~zstd", "app"}, history: hist("ADD b1", "COPY b2", "COPY b3", "ENV BASEVER=2", "COPY app"),
				config: v1.Config{Env: []string{"PATH=/usr/bin", "BASEVER=2"}}},
			wantNotes: []string{"matched-by-content: 3 of reg/base:2's 3 layers are stored in reg/app:z as other blobs (zstd there, gzip in the base) with the same diff_ids: matched by content; up to date, the image keeps its blobs"},
		},
		{
			name: "refuses a base whose content differs, naming the layer and both diff_ids", img: app, nw: v2Base,
			old:     spec{ref: "reg/other:1", layers: []string{"a1~zstd", "x2~zstd"}},
			wantErr: "reg/app:1 is not built on reg/other:1: layer 2 differs: diff_id image sha256:",
		},
		{
			name: "refuses the same blob with two diff_ids (a corrupt config)", img: app, old: v1Base, nw: v2Base,
			editOld: func(b *Base) {
				b.Config.RootFS.DiffIDs = []v1.Hash{b.Config.RootFS.DiffIDs[0], b.Config.RootFS.DiffIDs[0], b.Config.RootFS.DiffIDs[2]}
			},
			wantErr: "layer 2 is the same blob",
		},
		{
			name: "warns when the base history is not a prefix", old: v1Base, nw: v2Base,
			img:         spec{ref: "reg/app:1", layers: app.layers, history: hist("squashed a1", "squashed a2", "squashed a3", "COPY app")},
			wantHistory: []string{"ADD b1", "COPY b2", "COPY b3", "ENV BASEVER=2", "COPY app"},
			wantWarning: "history-boundary",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := base(t, tt.old)
			if tt.editOld != nil {
				tt.editOld(old)
			}
			p, err := New(Input{Image: image(t, tt.img), Old: old, New: base(t, tt.nw)})
			if tt.wantErr != "" {
				var re *RefusedError
				if err == nil || !errors.As(err, &re) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want refusal containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.UpToDate != tt.wantUpToDate {
				t.Fatalf("UpToDate = %v, want %v (changes %v)", p.UpToDate, tt.wantUpToDate, p.Changes)
			}
			m, err := v1.ParseManifest(bytes.NewReader(p.Manifest))
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := v1.ParseConfigFile(bytes.NewReader(p.Config))
			if err != nil {
				t.Fatal(err)
			}
			checkConsistent(t, p, m, cfg)
			if tt.wantLayers != nil && fmt.Sprint(digests(m.Layers)) != fmt.Sprint(tt.wantLayers) {
				t.Errorf("layers = %v, want %v", digests(m.Layers), tt.wantLayers)
			}
			if tt.wantFamily != 0 && p.Family != tt.wantFamily {
				t.Errorf("family = %v, want %v", p.Family, tt.wantFamily)
			}
			if tt.wantHistory != nil {
				var got []string
				for _, h := range cfg.History {
					got = append(got, h.CreatedBy)
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.wantHistory) {
					t.Errorf("history = %q, want %q", got, tt.wantHistory)
				}
			}
			if tt.wantWarning != "" && !hasWarning(p, tt.wantWarning) {
				t.Errorf("warnings = %v, want %s", p.Warnings, tt.wantWarning)
			}
			if tt.wantNotes != nil {
				var got []string
				for _, n := range p.Notes {
					got = append(got, n.Code+": "+n.Message)
				}
				ok := len(got) == len(tt.wantNotes)
				for i := 0; ok && i < len(got); i++ {
					ok = strings.HasPrefix(got[i], tt.wantNotes[i])
				}
				if !ok {
					t.Errorf("notes = %q, want prefixes %q", got, tt.wantNotes)
				}
			}
			if tt.check != nil {
				tt.check(t, p, cfg, m)
			}
		})
	}
}

func mustLayer(s string) v1.Descriptor {
	d, _ := layer(s, types.OCILayer)
	return d
}

func hasWarning(p *Plan, code string) bool {
	for _, w := range p.Warnings {
		if w.Code == code {
			return true
		}
	}
	return false
}

// checkConsistent asserts what every written manifest must satisfy: digests
// and sizes right, one media-type family, diff_ids matching layers.
func checkConsistent(t *testing.T, p *Plan, m *v1.Manifest, cfg *v1.ConfigFile) {
	t.Helper()
	if h, n, _ := v1.SHA256(bytes.NewReader(p.Manifest)); h != p.ManifestDescriptor.Digest || n != p.ManifestDescriptor.Size {
		t.Errorf("manifest descriptor %v does not match its bytes (%s, %d)", p.ManifestDescriptor, h, n)
	}
	if h, n, _ := v1.SHA256(bytes.NewReader(p.Config)); h != m.Config.Digest || n != m.Config.Size {
		t.Errorf("config descriptor %v does not match its bytes (%s, %d)", m.Config, h, n)
	}
	fam := manifest.Docker
	if m.MediaType == types.OCIManifestSchema1 {
		fam = manifest.OCI
	}
	if m.Config.MediaType != manifest.ConfigMediaType(fam) {
		t.Errorf("config media type %s in a %s manifest", m.Config.MediaType, fam)
	}
	for i, l := range m.Layers {
		if manifest.LayerFamily(l.MediaType) != fam {
			t.Errorf("layer %d media type %s in a %s manifest", i+1, l.MediaType, fam)
		}
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		t.Errorf("%d diff_ids for %d layers", len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	nonEmpty := 0
	for _, h := range cfg.History {
		if !h.EmptyLayer {
			nonEmpty++
		}
	}
	if len(cfg.History) > 0 && nonEmpty != len(m.Layers) {
		t.Errorf("history has %d layer entries for %d layers", nonEmpty, len(m.Layers))
	}
}

// TestExplainPrintsNotes checks that --dry-run's text shows the notes, for a
// rebase and for an image up to date, and that -o json carries them.
func TestExplainPrintsNotes(t *testing.T) {
	v1Base := spec{ref: "reg/base:1", layers: []string{"a1"}, history: hist("ADD a1")}
	v2Base := spec{ref: "reg/base:2", layers: []string{"b1"}, history: hist("ADD b1")}
	tests := []struct {
		name string
		img  spec
		want []string
	}{
		{"rebase", spec{ref: "reg/app:1", layers: []string{"a1~zstd", "app"}, history: hist("ADD a1", "COPY app"),
			extra: map[string]any{"moby.buildkit.cache.v0": "e30="}},
			[]string{"note: 1 of reg/base:1's 1 layers are stored in reg/app:1 as other blobs", "note: moby.buildkit.cache.v0 dropped"}},
		{"up to date", spec{ref: "reg/app:1", layers: []string{"b1~tar", "app"}, history: hist("ADD b1", "COPY app")},
			[]string{"up to date: reg/app:1 already sits on reg/base:2", "note: 1 of reg/base:2's 1 layers are stored in reg/app:1 as other blobs (uncompressed there, gzip in the base)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(Input{Image: image(t, tt.img), Old: base(t, v1Base), New: base(t, v2Base)})
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			p.Explain(&b)
			for _, w := range tt.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("explanation lacks %q:\n%s", w, b.String())
				}
			}
			js, _ := json.Marshal(p)
			if !strings.Contains(string(js), `"notes":[{"code":"`+NoteMatchedByContent) {
				t.Errorf("json lacks the notes: %s", js)
			}
		})
	}
}
