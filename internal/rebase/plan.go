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
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/image-rebase/image-rebase/internal/configmerge"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/platform"
)

// Warning is a hazard found while planning; see configmerge.Warning.
type Warning = configmerge.Warning

// Note is a fact about a plan that is neither a config decision nor a
// hazard: a base matched by content although its layers are stored as other
// blobs, build metadata dropped from the config.
type Note struct {
	// Code is a stable identifier, e.g. "matched-by-content".
	Code string `json:"code"`
	// Message explains it in one sentence.
	Message string `json:"message"`
}

// Note codes.
const (
	// NoteMatchedByContent: the image's bottom layers are the base's by
	// diff_id but are stored as other blobs (compressed otherwise).
	NoteMatchedByContent = "matched-by-content"
	// NoteBuildMetadataDropped: BuildKit metadata of the old build was
	// removed from the config.
	NoteBuildMetadataDropped = "build-metadata-dropped"
)

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
	// bottom layers, by diff_id (content), whatever their compression.
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
	// Removed are the image's bottom layers (the old base's content, as the
	// image stores them), Added the new base's descriptors as the new base
	// has them, Kept the application's own layers.
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
	// Notes are facts that are neither config decisions nor hazards.
	Notes []Note `json:"notes,omitempty"`
	// HistoryStyle tells whether the image's history was replayed
	// ("as-written", "expanded") or the config merged three ways only
	// ("unknown").
	HistoryStyle configmerge.Style `json:"historyStyle"`

	// dropped notes the build metadata the config loses, reported only
	// when the image is rewritten.
	dropped []Note
}

// New computes the plan for in. It returns a *RefusedError when the image
// does not sit on in.Old or cannot move to in.New.
//
// Layers are identified by content: a base is under the image when its
// diff_ids are the image's bottom diff_ids, whatever the compression of
// either side. An image already on in.New by content is up to date unless
// the config changes; its blobs are then kept as they are even when they are
// compressed otherwise than in.New's (rewriting them would only change the
// image's digest). When a rebase is due, the result takes in.New's layer
// descriptors as in.New has them.
func New(in Input) (*Plan, error) {
	img, old, nw := in.Image, in.Old, in.New
	if err := checkLayerCount(img); err != nil {
		return nil, err
	}
	match, onNew := matchBase(img, nw)
	if onNew == nil {
		// The image already sits on the new base (it may have been
		// rebased before): plan against the new base, which finds it up to
		// date unless the new base's config differs from what the image has.
		old = nw
	} else {
		var err error
		if match, err = matchBase(img, old); err != nil {
			return nil, err
		}
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
		NewBase:         BaseRef{Ref: nw.Reference(), Digest: nw.Digest, Layers: len(nw.Layers)},
		Removed:         img.Manifest.Layers[:len(old.Layers)],
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
	p.UpToDate = onNew == nil && len(p.Changes) == 0
	if match.otherBlobs > 0 {
		p.Notes = append(p.Notes, match.note(p.UpToDate))
	}
	if !p.UpToDate {
		p.Notes = append(p.Notes, p.dropped...)
	}
	return p, nil
}

// baseMatch is how the image's bottom layers match a base's.
type baseMatch struct {
	imageRef string
	baseRef  string
	layers   int
	// otherBlobs counts the base's layers that the image stores as other
	// blobs (same diff_id, other digest); imageTypes and baseTypes are
	// their compressions on each side.
	otherBlobs            int
	imageTypes, baseTypes []string
}

// matchBase checks that img starts with b's layers, by diff_id. Equal blob
// digests with different diff_ids mean a corrupt config and are refused
// too. The refusal names the first layer that differs.
func matchBase(img *manifest.Image, b *Base) (*baseMatch, error) {
	layers, diffIDs := img.Manifest.Layers, img.Config.RootFS.DiffIDs
	if len(b.Layers) > len(layers) {
		return nil, refuse("%s is not built on %s: the base has %d layers, the image only %d", img.Ref, b.Ref, len(b.Layers), len(layers))
	}
	if len(b.Layers) == 0 {
		return nil, refuse("%s has no layers, it cannot be a base", b.Ref)
	}
	var baseIDs []v1.Hash
	if b.Config != nil && len(b.Config.RootFS.DiffIDs) == len(b.Layers) {
		baseIDs = b.Config.RootFS.DiffIDs
	}
	m := &baseMatch{imageRef: img.Ref, baseRef: b.Ref, layers: len(b.Layers)}
	for i, l := range b.Layers {
		sameBlob := l.Digest == layers[i].Digest
		switch {
		case baseIDs == nil && !sameBlob:
			// A base whose diff_ids are not known (never the case for a
			// base read with its config) is compared by blob.
			return nil, refuse("%s is not built on %s: layer %d differs: blob image %s, base %s", img.Ref, b.Ref, i+1, short(layers[i].Digest), short(l.Digest))
		case baseIDs == nil:
		case baseIDs[i] != diffIDs[i] && sameBlob:
			return nil, refuse("%s is not built on %s: layer %d is the same blob %s but the configs give it different diff_ids (image %s, base %s): one of them is corrupt", img.Ref, b.Ref, i+1, short(l.Digest), short(diffIDs[i]), short(baseIDs[i]))
		case baseIDs[i] != diffIDs[i]:
			return nil, refuse("%s is not built on %s: layer %d differs: diff_id image %s, base %s", img.Ref, b.Ref, i+1, short(diffIDs[i]), short(baseIDs[i]))
		case !sameBlob:
			m.otherBlobs++
			m.imageTypes = appendNew(m.imageTypes, compressionOf(layers[i].MediaType))
			m.baseTypes = appendNew(m.baseTypes, compressionOf(l.MediaType))
		}
	}
	return m, nil
}

// note says that the base was matched by content, and what that means for
// the result.
func (m *baseMatch) note(upToDate bool) Note {
	what := fmt.Sprintf("%d of %s's %d layers are stored in %s as other blobs (%s there, %s in the base) with the same diff_ids: matched by content",
		m.otherBlobs, m.baseRef, m.layers, m.imageRef, strings.Join(m.imageTypes, ", "), strings.Join(m.baseTypes, ", "))
	if upToDate {
		what += "; up to date, the image keeps its blobs (rewriting them would change only its digest)"
	}
	return Note{Code: NoteMatchedByContent, Message: what}
}

func appendNew(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// compressionOf names a layer media type's compression for messages.
func compressionOf(mt types.MediaType) string {
	s := string(mt)
	switch {
	case strings.HasSuffix(s, "gzip"):
		return "gzip"
	case strings.HasSuffix(s, "zstd"):
		return "zstd"
	case strings.HasSuffix(s, "tar"):
		return "uncompressed"
	}
	return s
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

	for _, md := range buildMetadata {
		if _, ok := top[md.key]; ok {
			delete(top, md.key)
			p.dropped = append(p.dropped, Note{Code: NoteBuildMetadataDropped, Message: fmt.Sprintf("%s dropped from the config: %s", md.key, md.why)})
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

// buildMetadata are the top-level config keys that describe the build that
// made the image rather than the image: BuildKit writes them. They describe
// the old layers, so a rebased image loses them.
var buildMetadata = []struct{ key, why string }{
	{"moby.buildkit.cache.v0", "BuildKit's inline cache describes the layers of the build that made the image, the old base's among them; a build importing it (--cache-from) must not take them for this image's"},
	{"moby.buildkit.buildinfo.v1", "BuildKit's build information pins the sources of the build that made the image, the old base among them"},
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
		m.Annotations[manifest.BaseNameAnnotation] = nw.Reference()
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
		p.explainNotes(w)
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
	p.explainNotes(w)
	for _, wn := range p.Warnings {
		fmt.Fprintf(w, "warning: %s\n", wn.Message)
	}
	fmt.Fprintf(w, "result    %s (%s manifest, %d bytes)\n", p.ManifestDescriptor.Digest, p.Family, p.ManifestDescriptor.Size)
}

func (p *Plan) explainNotes(w io.Writer) {
	for _, n := range p.Notes {
		fmt.Fprintf(w, "note: %s\n", n.Message)
	}
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
