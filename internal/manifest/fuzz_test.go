package manifest

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// FuzzDecode: classifying and decoding any bytes as a manifest or a config
// never panics; an accepted image manifest has layers and a config.
func FuzzDecode(f *testing.F) {
	f.Add(string(types.OCIManifestSchema1), []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":1,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}]}`))
	f.Add(string(types.DockerManifestSchema2), []byte(`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}`))
	f.Add("", []byte(`{"schemaVersion":1,"fsLayers":[{"blobSum":"x"}]}`))
	f.Add("", []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"]},"config":{"Env":["A=1"]},"history":[{"created_by":"x"}]}`))
	f.Add("", []byte(`{"rootfs":{"type":"zfs"}}`))
	f.Add("", []byte(`{"schemaVersion":`))
	f.Fuzz(func(t *testing.T, contentType string, raw []byte) {
		Classify(types.MediaType(contentType), raw)
		if m, _, err := ParseImageManifest("fuzz", types.MediaType(contentType), raw); err == nil && len(m.Layers) == 0 {
			t.Fatalf("accepted a manifest without layers: %s", raw)
		}
		ParseConfig("fuzz", raw)
	})
}
