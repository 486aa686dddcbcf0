package rebase

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/configmerge"
	"github.com/image-rebase/image-rebase/manifest"
	"github.com/image-rebase/image-rebase/platform"
)

// Warning is a hazard found while planning; see configmerge.Warning.
type Warning = configmerge.Warning

// RefusedError reports inputs that were read and understood but cannot be
// rebased as asked: the image is not on the old base, the platforms differ.
type RefusedError struct{ Reason string }

// Error returns the reason.
func (e *RefusedError) Error() string { return e.Reason }

func refuse(format string, args ...any) error {
	return &RefusedError{Reason: fmt.Sprintf(format, args...)}
}

// Input is what a plan is computed from.
type Input struct {
	// Image is the application image to rebase.
	Image *manifest.Image
	// Old is the base the image is on now; its layers must be the image's
	// bottom layers.
	Old *Base
	// New is the base to put under the application's layers.
	New *Base
	// BaseLabel is the label that names the base (LABEL FROM=base:1), if
	// the image has it: its value is a reference, never an embedded base
	// value.
	BaseLabel string
	// Relabel, when set, gives BaseLabel a new value: the new base's
	// reference, as a rebuild from a Dockerfile naming the new base would
	// record it. The history entry that set the label is rewritten too.
	Relabel string
}

// BaseRef identifies a base in a plan.
type BaseRef struct {
	Ref    string  `json:"ref"`
	Digest v1.Hash `json:"digest,omitzero"`
	Layers int     `json:"layers"`
}

// Plan is the decided outcome of a rebase: the documents to write and the
// reasons for each difference from the original image.
type Plan struct {
	// Image names the application image, ImageDigest its manifest.
	Image       string  `json:"image"`
	ImageDigest v1.Hash `json:"imageDigest"`
	// ImageDescriptor and ImageManifest are the image's manifest as read,
	// for a backup tag.
	ImageDescriptor v1.Descriptor `json:"-"`
	ImageManifest   []byte        `json:"-"`
	// OldBase and NewBase are the bases swapped.
	OldBase BaseRef `json:"oldBase"`
	NewBase BaseRef `json:"newBase"`
	// UpToDate is true when the image already sits on the new base; then
	// nothing is to be written.
	UpToDate bool `json:"upToDate"`
	// Removed are the old base's layers, Added the new base's, Kept the
	// application's own layers.
	Removed []v1.Descriptor `json:"removedLayers"`
	Added   []v1.Descriptor `json:"addedLayers"`
	Kept    []v1.Descriptor `json:"keptLayers"`
	// Family is the result manifest's media-type family.
	Family manifest.Family `json:"-"`
	// Manifest is the new manifest, ManifestDescriptor its descriptor.
	Manifest           []byte        `json:"-"`
	ManifestDescriptor v1.Descriptor `json:"manifest"`
	// Config is the new config blob, ConfigDescriptor its descriptor.
	Config           []byte        `json:"-"`
	ConfigDescriptor v1.Descriptor `json:"config"`
	// Changes lists the config decisions, Warnings the hazards.
	Changes  []configmerge.Change `json:"changes"`
	Warnings []Warning            `json:"warnings"`
	// KeptValues lists config values the image set itself and keeps
	// although the base changed them.
	KeptValues []configmerge.Change `json:"keptValues,omitempty"`
	// HistoryStyle tells whether the image's history was replayed
	// ("as-written", "expanded") or the config merged three ways only
	// ("unknown").
	HistoryStyle configmerge.Style `json:"historyStyle"`
}

// New computes the plan for in. It returns a *RefusedError when the image
// does not sit on in.Old or cannot move to in.New.
func New(in Input) (*Plan, error) {
	img, old, nw := in.Image, in.Old, in.New
	if err := checkLayerCount(img); err != nil {
		return nil, err
	}
	if checkPrefix(img, nw) == nil {
		// The image already sits on the new base (it may have been
		// rebased before): plan against the new base, which finds it up to
		// date unless the new base's config differs from what the image has.
		old = nw
	} else if err := checkPrefix(img, old); err != nil {
		return nil, err
	}
	if err := checkPlatform(img, nw); err != nil {
		return nil, err
	}
	p := &Plan{
		Image:           img.Ref,
		ImageDigest:     img.Descriptor.Digest,
		ImageDescriptor: img.Descriptor,
		ImageManifest:   img.RawManifest,
		OldBase:         BaseRef{Ref: old.Ref, Digest: old.Digest, Layers: len(old.Layers)},
		NewBase:         BaseRef{Ref: nw.Ref, Digest: nw.Digest, Layers: len(nw.Layers)},
		Removed:         old.Layers,
		Added:           nw.Layers,
		Kept:            img.Manifest.Layers[len(old.Layers):],
		Changes:         []configmerge.Change{},
		Warnings:        []Warning{},
	}

	config, err := p.config(in, old)
	if err != nil {
		return nil, err
	}
	p.Config = config
	if err := p.manifest(img, nw); err != nil {
		return nil, err
	}
	p.UpToDate = len(p.Added) == len(p.Removed) && HasLayerPrefix(p.Added, p.Removed) && len(p.Changes) == 0
	return p, nil
}

func checkPrefix(img *manifest.Image, old *Base) error {
	layers, diffIDs := img.Manifest.Layers, img.Config.RootFS.DiffIDs
	if len(old.Layers) > len(layers) {
		return refuse("%s is not built on %s: the base has %d layers, the image only %d", img.Ref, old.Ref, len(old.Layers), len(layers))
	}
	if len(old.Layers) == 0 {
		return refuse("%s has no layers, it cannot be a base", old.Ref)
	}
	for i, l := range old.Layers {
		if l.Digest != layers[i].Digest {
			return refuse("%s is not built on %s: layer %d differs (image %s, base %s)", img.Ref, old.Ref, i+1, short(layers[i].Digest), short(l.Digest))
		}
	}
	if old.Config != nil && len(old.Config.RootFS.DiffIDs) > 0 {
		for i, d := range old.Config.RootFS.DiffIDs {
			if i >= len(diffIDs) || d != diffIDs[i] {
				return refuse("%s is not built on %s: diff_id of layer %d differs", img.Ref, old.Ref, i+1)
			}
		}
	}
	return nil
}

func checkPlatform(img *manifest.Image, nw *Base) error {
	have, want := platform.OfConfig(img.Config), platform.OfConfig(nw.Config)
	if !platform.Matches(have, want) {
		return refuse("platform mismatch: %s is %s but %s is %s", img.Ref, platform.String(have), nw.Ref, platform.String(want))
	}
	return nil
}

// config builds the new config blob by editing the image's raw config, so
// that fields this tool does not know survive unchanged.
func (p *Plan) config(in Input, old *Base) ([]byte, error) {
	img, nw := in.Image, in.New
	var top map[string]json.RawMessage
	if err := json.Unmarshal(img.RawConfig, &top); err != nil {
		return nil, fmt.Errorf("%s: decoding config: %w", img.Ref, err)
	}

	diffIDs := append(append([]v1.Hash{}, nw.Config.RootFS.DiffIDs...), img.Config.RootFS.DiffIDs[len(old.Layers):]...)
	if err := setJSON(top, "rootfs", v1.RootFS{Type: "layers", DiffIDs: diffIDs}); err != nil {
		return nil, err
	}

	hist, err := RawHistory(img.RawConfig)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", img.Ref, err)
	}
	// The application's own history entries, replayed by the merge when
	// the boundary with the old base's is certain.
	var own []v1.History
	if len(hist) > 0 {
		start, warn := historyBoundary(img.Config.History, old)
		if warn != "" {
			p.Warnings = append(p.Warnings, Warning{Code: "history-boundary", Message: warn})
		} else if start <= len(img.Config.History) {
			own = append([]v1.History{}, img.Config.History[start:]...)
		}
		newHist := append(append([]json.RawMessage{}, nw.RawHistory...), hist[start:]...)
		if err := setJSON(top, "history", newHist); err != nil {
			return nil, err
		}
	}

	for key, val := range map[string]string{"variant": nw.Config.Variant, "os.version": nw.Config.OSVersion} {
		if val == "" {
			delete(top, key)
		} else if err := setJSON(top, key, val); err != nil {
			return nil, err
		}
	}

	oldCfg := old.Config
	if oldCfg == nil {
		oldCfg = img.Config
	}
	merged, err := configmerge.Merge(configmerge.Input{Old: oldCfg, App: img.Config, New: nw.Config, History: own, BaseLabel: in.BaseLabel})
	if err != nil {
		return nil, err
	}
	// History entries a rebuild would record differently, then the label
	// that names the base.
	ownStart := len(nw.RawHistory)
	if hist, ok := top["history"]; ok && own != nil {
		var entries []json.RawMessage
		if err := json.Unmarshal(hist, &entries); err != nil {
			return nil, fmt.Errorf("%s: %w", img.Ref, err)
		}
		for _, e := range merged.History {
			if i := ownStart + e.Entry; i < len(entries) {
				if entries[i], err = setCreatedBy(entries[i], e.CreatedBy); err != nil {
					return nil, fmt.Errorf("%s: history entry %d: %w", img.Ref, i+1, err)
				}
				p.Changes = append(p.Changes, configmerge.Change{Field: "History", Key: fmt.Sprint(i + 1), Decision: configmerge.DecisionRewritten, From: own[e.Entry].CreatedBy, To: e.CreatedBy})
			}
		}
		if in.Relabel != "" {
			p.relabelHistory(entries[ownStart:], own, ownStart, in.BaseLabel, img.Config.Config.Labels[in.BaseLabel], in.Relabel)
		}
		if err := setJSON(top, "history", entries); err != nil {
			return nil, err
		}
	}
	if in.Relabel != "" && merged.Config.Labels[in.BaseLabel] != in.Relabel {
		was := merged.Config.Labels[in.BaseLabel]
		merged.Config.Labels = maps.Clone(merged.Config.Labels)
		if merged.Config.Labels == nil {
			merged.Config.Labels = map[string]string{}
		}
		merged.Config.Labels[in.BaseLabel] = in.Relabel
		p.Changes = append(p.Changes, configmerge.Change{Field: "Labels", Key: in.BaseLabel, Decision: configmerge.DecisionNamesNewBase, From: was, To: in.Relabel})
	}
	p.Changes = append(p.Changes, merged.Changes...)
	p.KeptValues = append(p.KeptValues, merged.Kept...)
	p.Warnings = append(p.Warnings, merged.Warnings...)
	p.HistoryStyle = merged.Style
	if merged.Author != img.Config.Author {
		if merged.Author == "" {
			delete(top, "author")
		} else if err := setJSON(top, "author", merged.Author); err != nil {
			return nil, err
		}
	}
	if err := patchContainerConfig(top, img.Config.Config, merged.Config); err != nil {
		return nil, fmt.Errorf("%s: %w", img.Ref, err)
	}
	return json.Marshal(top)
}

// historyBoundary returns the index of the image's first history entry above
// the old base. When the old base's own history is a prefix of the image's,
// that is its length; otherwise the entries are counted by layers.
func historyBoundary(hist []v1.History, old *Base) (int, string) {
	if old.Config != nil && old.Config.History != nil && len(old.Config.History) <= len(hist) {
		match := true
		for i, h := range old.Config.History {
			if h.CreatedBy != hist[i].CreatedBy || h.EmptyLayer != hist[i].EmptyLayer {
				match = false
				break
			}
		}
		if match {
			return len(old.Config.History), ""
		}
	}
	layers := 0
	for i, h := range hist {
		if layers == len(old.Layers) {
			return i, fmt.Sprintf("the history of %s is not a prefix of the image's; the application's history is taken to start at entry %d, after the base's %d layers", old.Ref, i+1, layers)
		}
		if !h.EmptyLayer {
			layers++
		}
	}
	return len(hist), fmt.Sprintf("the image's history does not cover the %d layers of %s; no application history is kept", len(old.Layers), old.Ref)
}

// manifest builds the new manifest in the image's family, or OCI when the
// new base's layers cannot be expressed in the Docker family.
func (p *Plan) manifest(img *manifest.Image, nw *Base) error {
	fam := img.Family
	layers := make([]v1.Descriptor, 0, len(p.Added)+len(p.Kept))
	for _, l := range append(append([]v1.Descriptor{}, p.Added...), p.Kept...) {
		if _, ok := manifest.ConvertLayer(l, fam); !ok {
			if fam != manifest.OCI {
				p.Warnings = append(p.Warnings, Warning{Code: "converted-to-oci",
					Message: fmt.Sprintf("layer %s has media type %s, which a Docker manifest cannot express; the result is an OCI manifest", short(l.Digest), l.MediaType)})
			}
			fam = manifest.OCI
			break
		}
	}
	for _, l := range append(append([]v1.Descriptor{}, p.Added...), p.Kept...) {
		c, ok := manifest.ConvertLayer(l, fam)
		if !ok {
			return refuse("layer %s of %s has unknown media type %s", short(l.Digest), img.Ref, l.MediaType)
		}
		layers = append(layers, c)
	}
	p.Family = fam
	p.ConfigDescriptor = v1.Descriptor{
		MediaType: manifest.ConfigMediaType(fam),
		Size:      int64(len(p.Config)),
		Digest:    digestOf(p.Config),
	}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     manifest.ManifestMediaType(fam),
		Config:        p.ConfigDescriptor,
		Layers:        layers,
		Annotations:   maps.Clone(img.Manifest.Annotations),
		Subject:       img.Manifest.Subject,
	}
	if fam == manifest.OCI || m.Annotations[manifest.BaseNameAnnotation] != "" {
		if m.Annotations == nil {
			m.Annotations = map[string]string{}
		}
		m.Annotations[manifest.BaseNameAnnotation] = nw.Ref
		if nw.Digest != (v1.Hash{}) {
			m.Annotations[manifest.BaseDigestAnnotation] = nw.Digest.String()
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	p.Manifest = raw
	p.ManifestDescriptor = v1.Descriptor{MediaType: m.MediaType, Size: int64(len(raw)), Digest: digestOf(raw)}
	return nil
}

// patchContainerConfig writes merged into top["config"], changing only the
// keys whose values differ from app, so unknown keys survive.
func patchContainerConfig(top map[string]json.RawMessage, app, merged v1.Config) error {
	if reflect.DeepEqual(app, merged) {
		return nil
	}
	obj := map[string]json.RawMessage{}
	if raw, ok := top["config"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &obj); err != nil {
			return fmt.Errorf("decoding config object: %w", err)
		}
	}
	var before, after map[string]json.RawMessage
	if err := roundTrip(app, &before); err != nil {
		return err
	}
	if err := roundTrip(merged, &after); err != nil {
		return err
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			delete(obj, k)
		}
	}
	for k, v := range after {
		if !bytes.Equal(before[k], v) {
			obj[k] = v
		}
	}
	return setJSON(top, "config", obj)
}

func roundTrip(v any, out *map[string]json.RawMessage) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

func setJSON(m map[string]json.RawMessage, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	m[key] = b
	return nil
}

func digestOf(b []byte) v1.Hash {
	h, _, _ := v1.SHA256(bytes.NewReader(b))
	return h
}

func short(h v1.Hash) string {
	s := h.String()
	if len(s) > 19 {
		return s[:19]
	}
	return s
}

// Explain writes the plan as text, one decision a line.
func (p *Plan) Explain(w io.Writer) {
	fmt.Fprintf(w, "image     %s (%s)\n", p.Image, p.ImageDigest)
	fmt.Fprintf(w, "old base  %s%s, %d layers\n", p.OldBase.Ref, digestSuffix(p.OldBase.Digest), p.OldBase.Layers)
	fmt.Fprintf(w, "new base  %s%s, %d layers\n", p.NewBase.Ref, digestSuffix(p.NewBase.Digest), p.NewBase.Layers)
	if p.UpToDate {
		fmt.Fprintf(w, "up to date: %s already sits on %s\n", p.Image, p.NewBase.Ref)
		return
	}
	fmt.Fprintln(w, "layers:")
	for i, l := range p.Removed {
		fmt.Fprintf(w, "  - %2d %s  old base, removed\n", i+1, l.Digest)
	}
	for i, l := range p.Added {
		fmt.Fprintf(w, "  + %2d %s  new base, added\n", i+1, l.Digest)
	}
	for i, l := range p.Kept {
		fmt.Fprintf(w, "  = %2d %s  application, kept\n", len(p.Added)+i+1, l.Digest)
	}
	if len(p.Changes) > 0 || len(p.KeptValues) > 0 {
		fmt.Fprintf(w, "config (%s):\n", historyNote(p.HistoryStyle))
		for _, c := range p.Changes {
			fmt.Fprintf(w, "  %s\n", c)
		}
		for _, c := range p.KeptValues {
			fmt.Fprintf(w, "  %s\n", c)
		}
	}
	for _, wn := range p.Warnings {
		fmt.Fprintf(w, "warning: %s\n", wn.Message)
	}
	fmt.Fprintf(w, "result    %s (%s manifest, %d bytes)\n", p.ManifestDescriptor.Digest, p.Family, p.ManifestDescriptor.Size)
}

func historyNote(s configmerge.Style) string {
	switch s {
	case configmerge.StyleAsWritten:
		return "the image's instructions replayed from its history"
	case configmerge.StyleExpanded:
		return "the image's instructions replayed from its expanded (BuildKit) history"
	}
	return "three-way merge; the history records no instructions to replay"
}

func digestSuffix(h v1.Hash) string {
	if h == (v1.Hash{}) {
		return " (taken from the image)"
	}
	return " (" + h.String() + ")"
}

// setCreatedBy returns the raw history entry with created_by set to text;
// the entry's other bytes are kept when its created_by is found as encoded.
func setCreatedBy(entry json.RawMessage, text string) (json.RawMessage, error) {
	var h struct {
		CreatedBy string `json:"created_by"`
	}
	if err := json.Unmarshal(entry, &h); err != nil {
		return nil, err
	}
	oldEnc, _ := json.Marshal(h.CreatedBy)
	newEnc, _ := json.Marshal(text)
	key := []byte(`"created_by":`)
	if i := bytes.Index(entry, key); i >= 0 {
		rest := bytes.TrimLeft(entry[i+len(key):], " ")
		if bytes.HasPrefix(rest, oldEnc) {
			at := len(entry) - len(rest)
			return slices.Concat(entry[:at], newEnc, entry[at+len(oldEnc):]), nil
		}
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(entry, &m); err != nil {
		return nil, err
	}
	m["created_by"] = newEnc
	return json.Marshal(m)
}

// relabelHistory rewrites the last of the application's history entries
// (raw, and as parsed in own) that set label name to old, so that it sets
// it to value.
func (p *Plan) relabelHistory(raw []json.RawMessage, own []v1.History, offset int, name, old, value string) {
	for i := len(own) - 1; i >= 0 && i < len(raw); i-- {
		text := own[i].CreatedBy
		if !strings.Contains(text, "LABEL") {
			continue
		}
		for _, form := range []string{name + "=" + old, name + `="` + old + `"`, name + "='" + old + "'"} {
			if j := strings.Index(text, form); j >= 0 {
				next := text[:j] + name + "=" + value + text[j+len(form):]
				if e, err := setCreatedBy(raw[i], next); err == nil {
					raw[i] = e
					p.Changes = append(p.Changes, configmerge.Change{Field: "History", Key: fmt.Sprint(offset + i + 1), Decision: configmerge.DecisionRewritten, From: text, To: next})
				}
				return
			}
		}
	}
}
