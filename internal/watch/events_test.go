package watch

import (
	"reflect"
	"testing"
)

func TestParseEvents(t *testing.T) {
	const d = "sha256:0c4a1a9a1e3d4c6e8b2a7f2d0b9c3e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d"
	for _, tc := range []struct {
		name    string
		body    string
		source  string
		pushes  []Push
		skipped int
		err     bool
	}{
		{
			name: "distribution: a tagged manifest push, a blob push, a pull, a mount, a push by digest",
			body: `{"events":[
				{"id":"1","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d + `","repository":"base","url":"https://reg.example.com:5000/v2/base/manifests/` + d + `","tag":"stable"},"request":{"host":"reg.example.com:5000","method":"PUT"}},
				{"id":"2","action":"push","target":{"mediaType":"application/octet-stream","digest":"` + d + `","repository":"base"},"request":{"host":"reg.example.com:5000"}},
				{"id":"3","action":"pull","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d + `","repository":"base","tag":"stable"}},
				{"id":"4","action":"mount","target":{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + d + `","repository":"app","fromRepository":"base"}},
				{"id":"5","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d + `","repository":"app"}}
			]}`,
			source:  SourceDistribution,
			pushes:  []Push{{Host: "reg.example.com:5000", Repository: "base", Tag: "stable", Digest: d}},
			skipped: 4,
		},
		{
			name:   "distribution: the host from the target's url when the request has none",
			body:   `{"events":[{"action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","digest":"` + d + `","repository":"team/base","url":"http://10.0.0.1:5000/v2/team/base/manifests/` + d + `","tag":"1"}}]}`,
			source: SourceDistribution,
			pushes: []Push{{Host: "10.0.0.1:5000", Repository: "team/base", Tag: "1", Digest: d}},
		},
		{
			name:   "distribution: an empty envelope",
			body:   `{"events":[]}`,
			source: SourceDistribution,
		},
		{
			name:   "harbor: PUSH_ARTIFACT",
			body:   `{"type":"PUSH_ARTIFACT","occur_at":1586922308,"operator":"admin","event_data":{"resources":[{"digest":"` + d + `","tag":"stable","resource_url":"harbor.example.com/library/base:stable"}],"repository":{"date_created":1586922308,"name":"base","namespace":"library","repo_full_name":"library/base","repo_type":"private"}}}`,
			source: SourceHarbor,
			pushes: []Push{{Host: "harbor.example.com", Repository: "library/base", Tag: "stable", Digest: d}},
		},
		{
			name:   "harbor 1.x: pushImage, repository from namespace and name",
			body:   `{"type":"pushImage","occur_at":1,"event_data":{"resources":[{"digest":"` + d + `","tag":"1","resource_url":"h.example.com/p/app:1"}],"repository":{"name":"app","namespace":"p"}}}`,
			source: SourceHarbor,
			pushes: []Push{{Host: "h.example.com", Repository: "p/app", Tag: "1", Digest: d}},
		},
		{
			name:   "harbor: CloudEvents payload",
			body:   `{"specversion":"1.0","type":"harbor.artifact.pushed","source":"/projects/1/webhook/policies/1","data":{"resources":[{"digest":"` + d + `","tag":"stable","resource_url":"harbor.example.com/library/base:stable"}],"repository":{"name":"base","namespace":"library","repo_full_name":"library/base"}}}`,
			source: SourceHarbor,
			pushes: []Push{{Host: "harbor.example.com", Repository: "library/base", Tag: "stable", Digest: d}},
		},
		{
			name:    "harbor: another event type",
			body:    `{"type":"DELETE_ARTIFACT","event_data":{"resources":[{"digest":"` + d + `","tag":"1"}],"repository":{"repo_full_name":"library/base"}}}`,
			source:  SourceHarbor,
			skipped: 1,
		},
		{
			name:    "harbor: an untagged artifact",
			body:    `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"` + d + `","resource_url":"h/library/base@` + d + `"}],"repository":{"repo_full_name":"library/base"}}}`,
			source:  SourceHarbor,
			skipped: 1,
		},
		{name: "not JSON", body: `events`, err: true},
		{name: "another JSON document", body: `{"hello":"world"}`, err: true},
		{name: "events not a list", body: `{"events":{"action":"push"}}`, err: true},
		{name: "harbor push without data", body: `{"specversion":"1.0","type":"harbor.artifact.pushed"}`, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := ParseEvents([]byte(tc.body))
			if tc.err {
				if err == nil {
					t.Fatalf("no error; got %+v", ev)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ev.Source != tc.source || !reflect.DeepEqual(ev.Pushes, tc.pushes) || ev.Skipped != tc.skipped {
				t.Errorf("got %+v\nwant source %s, pushes %+v, skipped %d", ev, tc.source, tc.pushes, tc.skipped)
			}
		})
	}
}
