// Package rebase computes a rebase plan: the pure decision of what an image
// becomes when its base is swapped. It reads no registry; it takes documents
// already fetched and returns a Plan, a value that can be printed, tested and
// applied by the engine.
package rebase

import (
	"encoding/json"
	"fmt"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/manifest"
)

// Base is the part of an image below the application: the bottom layers,
// their diff_ids and history entries, and the base image's config.
type Base struct {
	// Ref names the base as the user or the image gave it, in messages
	// (for a platform of an index: "host/base:2 [linux/arm64]").
	Ref string
	// Name is the base's reference as a registry serves it, written in the
	// result's base annotations; empty means Ref.
	Name string
	// Digest is the base manifest's digest; zero when the base was derived
	// from the application image itself (its manifest may be gone).
	Digest v1.Hash
	// Family is the base manifest's media-type family.
	Family manifest.Family
	// Layers are the base's layer descriptors, bottom first.
	Layers []v1.Descriptor
	// Config is the base's config. For a base derived from an image it holds
	// only what the image tells of it.
	Config *v1.ConfigFile
	// RawHistory holds the base's history entries exactly as stored.
	RawHistory []json.RawMessage
}

// Reference is the base's reference as a registry serves it: Name, or Ref.
func (b *Base) Reference() string {
	if b.Name != "" {
		return b.Name
	}
	return b.Ref
}

// BaseFromImage takes a whole image as a base.
func BaseFromImage(img *manifest.Image) (*Base, error) {
	hist, err := RawHistory(img.RawConfig)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", img.Ref, err)
	}
	if err := checkLayerCount(img); err != nil {
		return nil, err
	}
	return &Base{
		Ref:        img.Ref,
		Digest:     img.Descriptor.Digest,
		Family:     img.Family,
		Layers:     img.Manifest.Layers,
		Config:     img.Config,
		RawHistory: hist,
	}, nil
}

// RawHistory returns the history entries of a raw config, unchanged.
func RawHistory(rawConfig []byte) ([]json.RawMessage, error) {
	var c struct {
		History []json.RawMessage `json:"history"`
	}
	if err := json.Unmarshal(rawConfig, &c); err != nil {
		return nil, fmt.Errorf("decoding config history: %w", err)
	}
	return c.History, nil
}

func checkLayerCount(img *manifest.Image) error {
	if n, d := len(img.Manifest.Layers), len(img.Config.RootFS.DiffIDs); n != d {
		return fmt.Errorf("%s: manifest lists %d layers but config lists %d diff_ids", img.Ref, n, d)
	}
	return nil
}

// HasLayerPrefix reports whether layers starts with prefix by blob digest.
// Equal digests are the same content, but the same content may be stored
// as other blobs (gzip, zstd, or the plain tars of docker save), so a false
// answer proves nothing: it is only a cheap hint for when the configs are
// not read yet. Decide with HasDiffIDPrefix.
func HasLayerPrefix(layers, prefix []v1.Descriptor) bool {
	if len(prefix) > len(layers) {
		return false
	}
	for i := range prefix {
		if layers[i].Digest != prefix[i].Digest {
			return false
		}
	}
	return true
}

// HasDiffIDPrefix reports whether an image whose config lists diffIDs
// starts with the layers of a base whose config lists prefix: layer identity
// by content (the uncompressed tar), whatever the compression of either
// side. This is the rule for "is this image on that base".
func HasDiffIDPrefix(diffIDs, prefix []v1.Hash) bool {
	return len(prefix) <= len(diffIDs) && slices.Equal(diffIDs[:len(prefix)], prefix)
}

// CheckOnBase returns nil when img starts with the layers of base (both read
// with their configs) by diff_id, and otherwise a *RefusedError naming both
// references and the first layer that differs.
func CheckOnBase(img, base *manifest.Image) error {
	b, err := BaseFromImage(base)
	if err != nil {
		return err
	}
	if err := checkLayerCount(img); err != nil {
		return err
	}
	_, err = matchBase(img, b)
	return err
}

// OnBase tells whether img starts with base's layers: by diff_id when both
// configs were read (see CheckOnBase), else by layer digest, a hint only.
func OnBase(img, base *manifest.Image) bool {
	if img.Config == nil || base.Config == nil {
		return HasLayerPrefix(img.Manifest.Layers, base.Manifest.Layers)
	}
	return CheckOnBase(img, base) == nil
}
