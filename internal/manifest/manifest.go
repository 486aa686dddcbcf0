// Package manifest holds the image documents image-rebase reads and writes:
// manifests and configs as they were fetched, their media-type families, and
// the conversion of descriptors from one family to the other.
package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotation keys that record an image's base (OCI image-spec, annotations.md).
const (
	BaseNameAnnotation   = "org.opencontainers.image.base.name"
	BaseDigestAnnotation = "org.opencontainers.image.base.digest"
)

// MaxDocumentSize is the largest manifest or config that is read (4 MiB, the
// limit registries apply to manifests).
const MaxDocumentSize = 4 << 20

// Family is a media-type family. A valid manifest uses one family for itself,
// its config and its layers.
type Family int

const (
	// UnknownFamily is neither OCI nor Docker.
	UnknownFamily Family = iota
	// OCI is the OCI image-spec family.
	OCI
	// Docker is the Docker image manifest v2 schema 2 family.
	Docker
)

// String returns "oci", "docker" or "unknown".
func (f Family) String() string {
	switch f {
	case OCI:
		return "oci"
	case Docker:
		return "docker"
	}
	return "unknown"
}

// Kind says what a manifest document is.
type Kind int

const (
	// KindUnknown is a document that is not recognised.
	KindUnknown Kind = iota
	// KindImage is a single-platform image manifest.
	KindImage
	// KindIndex is an OCI index or a Docker manifest list.
	KindIndex
	// KindSchema1 is a legacy Docker schema 1 manifest.
	KindSchema1
	// KindArtifact is an OCI manifest whose config is not an image config.
	KindArtifact
)

// String names the kind for messages.
func (k Kind) String() string {
	switch k {
	case KindImage:
		return "image manifest"
	case KindIndex:
		return "image index"
	case KindSchema1:
		return "Docker schema 1 manifest"
	case KindArtifact:
		return "artifact manifest (not an image)"
	}
	return "unknown document"
}

// Classify tells the kind and family of a raw manifest served with the given
// media type (the Content-Type; the document's own mediaType field wins when
// present).
func Classify(contentType types.MediaType, raw []byte) (Kind, Family) {
	var probe struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     types.MediaType `json:"mediaType"`
		Config        *struct {
			MediaType types.MediaType `json:"mediaType"`
		} `json:"config"`
		Manifests json.RawMessage `json:"manifests"`
		FSLayers  json.RawMessage `json:"fsLayers"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return KindUnknown, UnknownFamily
	}
	mt := probe.MediaType
	if mt == "" {
		mt = contentType
	}
	switch mt {
	case types.DockerManifestSchema1, types.DockerManifestSchema1Signed:
		return KindSchema1, Docker
	case types.DockerManifestList:
		return KindIndex, Docker
	case types.OCIImageIndex:
		return KindIndex, OCI
	case types.DockerManifestSchema2:
		return KindImage, Docker
	case types.OCIManifestSchema1:
		if probe.Config != nil && probe.Config.MediaType != types.OCIConfigJSON && probe.Config.MediaType != types.DockerConfigJSON {
			return KindArtifact, OCI
		}
		return KindImage, OCI
	}
	if probe.SchemaVersion == 1 || len(probe.FSLayers) > 0 {
		return KindSchema1, Docker
	}
	// An OCI manifest may omit mediaType; recognise it by its shape.
	if len(probe.Manifests) > 0 {
		return KindIndex, OCI
	}
	if probe.Config != nil && probe.SchemaVersion == 2 {
		if probe.Config.MediaType == types.OCIConfigJSON {
			return KindImage, OCI
		}
		if probe.Config.MediaType == types.DockerConfigJSON {
			return KindImage, Docker
		}
		return KindArtifact, OCI
	}
	return KindUnknown, UnknownFamily
}

// ManifestMediaType is the manifest media type of a family.
func ManifestMediaType(f Family) types.MediaType {
	if f == Docker {
		return types.DockerManifestSchema2
	}
	return types.OCIManifestSchema1
}

// ConfigMediaType is the config media type of a family.
func ConfigMediaType(f Family) types.MediaType {
	if f == Docker {
		return types.DockerConfigJSON
	}
	return types.OCIConfigJSON
}

// Layer media types of the Docker family that go-containerregistry lacks.
const (
	dockerUncompressedLayer types.MediaType = "application/vnd.docker.image.rootfs.diff.tar"
	ociNondistributableZstd types.MediaType = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
)

// layerPairs maps each layer media type to its counterpart in the other family.
var layerPairs = []struct{ oci, docker types.MediaType }{
	{types.OCILayer, types.DockerLayer},
	{types.OCIUncompressedLayer, dockerUncompressedLayer},
	{types.OCIRestrictedLayer, types.DockerForeignLayer},
}

// LayerFamily tells the family of a layer media type.
func LayerFamily(mt types.MediaType) Family {
	switch mt {
	case types.DockerLayer, types.DockerForeignLayer, dockerUncompressedLayer:
		return Docker
	case types.OCILayer, types.OCIUncompressedLayer, types.OCILayerZStd,
		types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer, ociNondistributableZstd:
		return OCI
	}
	return UnknownFamily
}

// IsForeign reports whether a layer must not be pushed or mounted: foreign
// (Docker) or non-distributable (OCI) layers, usually found through urls.
func IsForeign(d v1.Descriptor) bool {
	switch d.MediaType {
	case types.DockerForeignLayer, types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer, ociNondistributableZstd:
		return true
	}
	return false
}

// ConvertLayer returns the layer descriptor d expressed in family f. It
// reports false when f has no media type for that layer (zstd in Docker).
func ConvertLayer(d v1.Descriptor, f Family) (v1.Descriptor, bool) {
	have := LayerFamily(d.MediaType)
	if have == f {
		return d, true
	}
	if have == UnknownFamily {
		return d, false
	}
	for _, p := range layerPairs {
		if f == Docker && d.MediaType == p.oci {
			d.MediaType = p.docker
			return d, true
		}
		if f == OCI && d.MediaType == p.docker {
			d.MediaType = p.oci
			return d, true
		}
	}
	return d, false
}

// Image is one single-platform image as read from storage: its manifest and
// config, raw and parsed.
type Image struct {
	// Ref names the image as the user gave it, for messages.
	Ref string
	// Descriptor is the manifest's descriptor (media type, digest, size).
	Descriptor v1.Descriptor
	// RawManifest is the manifest exactly as fetched.
	RawManifest []byte
	// Manifest is RawManifest parsed.
	Manifest *v1.Manifest
	// Family is the manifest's media-type family.
	Family Family
	// RawConfig is the config blob exactly as fetched.
	RawConfig []byte
	// Config is RawConfig parsed.
	Config *v1.ConfigFile
}

// ParseImageManifest parses and checks a single-platform image manifest. ref
// only names the image in errors.
func ParseImageManifest(ref string, contentType types.MediaType, raw []byte) (*v1.Manifest, Family, error) {
	kind, fam := Classify(contentType, raw)
	if kind != KindImage {
		return nil, fam, &UnsupportedError{Ref: ref, Kind: kind, MediaType: contentType}
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fam, &InvalidError{Ref: ref, What: "decoding manifest", Err: err}
	}
	if len(m.Layers) == 0 {
		return nil, fam, &InvalidError{Ref: ref, What: "manifest has no layers"}
	}
	return m, fam, nil
}

// ParseConfig parses an image config blob and checks the fields a rebase
// relies on.
func ParseConfig(ref string, raw []byte) (*v1.ConfigFile, error) {
	cf, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, &InvalidError{Ref: ref, What: "decoding config", Err: err}
	}
	if cf.RootFS.Type != "" && cf.RootFS.Type != "layers" {
		return nil, &InvalidError{Ref: ref, What: fmt.Sprintf("config rootfs type %q is not \"layers\"", cf.RootFS.Type)}
	}
	return cf, nil
}

// InvalidError is a document that is corrupt, too large or inconsistent.
type InvalidError struct {
	Ref  string
	What string
	Err  error
}

// Error renders "ref: what: cause".
func (e *InvalidError) Error() string {
	if e.Err == nil {
		return e.Ref + ": " + e.What
	}
	return fmt.Sprintf("%s: %s: %v", e.Ref, e.What, e.Err)
}

// Unwrap returns the cause.
func (e *InvalidError) Unwrap() error { return e.Err }

// UnsupportedError is returned for documents that are not single-platform
// image manifests.
type UnsupportedError struct {
	Ref       string
	Kind      Kind
	MediaType types.MediaType
}

// Error says what the document is and why it cannot be rebased.
func (e *UnsupportedError) Error() string {
	switch e.Kind {
	case KindSchema1:
		return fmt.Sprintf("%s is a Docker schema 1 manifest, which cannot be rebased; push it again with a current client to convert it", e.Ref)
	case KindIndex:
		return fmt.Sprintf("%s is a multi-platform image index where a single image is needed", e.Ref)
	case KindArtifact:
		return fmt.Sprintf("%s is an artifact, not a container image", e.Ref)
	}
	return fmt.Sprintf("%s: unsupported manifest (media type %q)", e.Ref, e.MediaType)
}
