package manifest

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name        string
		contentType types.MediaType
		raw         string
		kind        Kind
		family      Family
	}{
		{"oci image", "", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json"}}`, KindImage, OCI},
		{"oci image without mediaType", types.OCIManifestSchema1, `{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json"}}`, KindImage, OCI},
		{"oci image, shape only", "", `{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json"}}`, KindImage, OCI},
		{"docker image", "", `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{}}`, KindImage, Docker},
		{"oci index", "", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`, KindIndex, OCI},
		{"docker list", "", `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}`, KindIndex, Docker},
		{"schema 1 by type", types.DockerManifestSchema1Signed, `{"schemaVersion":1}`, KindSchema1, Docker},
		{"schema 1 by shape", "application/json", `{"schemaVersion":1,"fsLayers":[]}`, KindSchema1, Docker},
		{"artifact", "", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.cncf.helm.config.v1+json"}}`, KindArtifact, OCI},
		{"not json", "", `{"schemaVersion":`, KindUnknown, UnknownFamily},
		{"json of another kind", "", `{"hello":"world"}`, KindUnknown, UnknownFamily},
	}
	for _, tt := range tests {
		k, f := Classify(tt.contentType, []byte(tt.raw))
		if k != tt.kind || f != tt.family {
			t.Errorf("%s: Classify = %s, %s; want %s, %s", tt.name, k, f, tt.kind, tt.family)
		}
	}
}

func TestConvertLayer(t *testing.T) {
	tests := []struct {
		in   types.MediaType
		to   Family
		want types.MediaType
		ok   bool
	}{
		{types.OCILayer, Docker, types.DockerLayer, true},
		{types.DockerLayer, OCI, types.OCILayer, true},
		{types.DockerForeignLayer, OCI, types.OCIRestrictedLayer, true},
		{types.OCIRestrictedLayer, Docker, types.DockerForeignLayer, true},
		{types.OCIUncompressedLayer, Docker, dockerUncompressedLayer, true},
		{dockerUncompressedLayer, OCI, types.OCIUncompressedLayer, true},
		{types.OCIUncompressedRestrictedLayer, OCI, types.OCIUncompressedRestrictedLayer, true},
		{types.OCIUncompressedRestrictedLayer, Docker, types.OCIUncompressedRestrictedLayer, false},
		{ociNondistributableZstd, OCI, ociNondistributableZstd, true},
		{ociNondistributableZstd, Docker, ociNondistributableZstd, false},
		{types.OCILayerZStd, Docker, types.OCILayerZStd, false},
		{types.OCILayerZStd, OCI, types.OCILayerZStd, true},
		{"application/x-unknown", OCI, "application/x-unknown", false},
	}
	for _, tt := range tests {
		got, ok := ConvertLayer(v1.Descriptor{MediaType: tt.in, URLs: []string{"u"}}, tt.to)
		if got.MediaType != tt.want || ok != tt.ok || len(got.URLs) != 1 {
			t.Errorf("ConvertLayer(%s, %s) = %s, %v; want %s, %v (urls kept)", tt.in, tt.to, got.MediaType, ok, tt.want, tt.ok)
		}
	}
	// Every layer type of each family: its family, and whether it is
	// foreign (never pushed or mounted).
	for _, c := range []struct {
		mt      types.MediaType
		family  Family
		foreign bool
	}{
		{types.DockerLayer, Docker, false},
		{dockerUncompressedLayer, Docker, false},
		{types.DockerForeignLayer, Docker, true},
		{types.OCILayer, OCI, false},
		{types.OCIUncompressedLayer, OCI, false},
		{types.OCILayerZStd, OCI, false},
		{types.OCIRestrictedLayer, OCI, true},
		{types.OCIUncompressedRestrictedLayer, OCI, true},
		{ociNondistributableZstd, OCI, true},
		{"application/x-unknown", UnknownFamily, false},
	} {
		if f := LayerFamily(c.mt); f != c.family {
			t.Errorf("LayerFamily(%s) = %s, want %s", c.mt, f, c.family)
		}
		if IsForeign(v1.Descriptor{MediaType: c.mt}) != c.foreign {
			t.Errorf("IsForeign(%s) = %v, want %v", c.mt, !c.foreign, c.foreign)
		}
	}
}
