package watch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Sources of events.
const (
	// SourceDistribution is a CNCF Distribution notification envelope
	// (application/vnd.docker.distribution.events.v1+json, and v2 from
	// Distribution 3), also sent by registries built on it.
	SourceDistribution = "distribution"
	// SourceHarbor is a Harbor webhook: its default payload
	// (PUSH_ARTIFACT, or pushImage before Harbor 2) or its CloudEvents
	// payload (harbor.artifact.pushed).
	SourceHarbor = "harbor"
)

// Push is a manifest pushed under a tag, as an event tells it.
type Push struct {
	// Host is the registry as the pusher named it ("host[:port]"), when the
	// event says.
	Host string
	// Repository is the repository's path in the registry, e.g. "team/app".
	Repository string
	Tag        string
	// Digest is the pushed manifest's, when the event says.
	Digest string
}

// Events is what a notification body holds.
type Events struct {
	Source string
	// Pushes are the tagged manifest pushes, in the body's order.
	Pushes []Push
	// Skipped counts the other events: pulls, deletes, mounts, blobs,
	// manifests pushed by digest only.
	Skipped int
}

// ParseEvents reads a notification body: a Distribution envelope
// ({"events": [...]}) or a Harbor webhook payload. A body that is neither
// is an error.
func ParseEvents(body []byte) (Events, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(body, &probe); err != nil {
		return Events{}, fmt.Errorf("not a JSON object: %w", err)
	}
	switch {
	case probe["events"] != nil:
		return parseDistribution(body)
	case probe["event_data"] != nil, probe["specversion"] != nil:
		return parseHarbor(body)
	}
	return Events{}, errors.New(`neither a Distribution envelope ("events") nor a Harbor webhook ("event_data", or a CloudEvent)`)
}

// manifestTypes are the media types of the manifests a base or an image
// may be pushed as.
var manifestTypes = map[string]bool{
	"application/vnd.docker.distribution.manifest.v2+json":      true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
	"application/vnd.oci.image.manifest.v1+json":                true,
	"application/vnd.oci.image.index.v1+json":                   true,
}

func parseDistribution(body []byte) (Events, error) {
	var env struct {
		Events []struct {
			Action string `json:"action"`
			Target struct {
				MediaType  string `json:"mediaType"`
				Digest     string `json:"digest"`
				Repository string `json:"repository"`
				URL        string `json:"url"`
				Tag        string `json:"tag"`
			} `json:"target"`
			Request struct {
				Host string `json:"host"`
			} `json:"request"`
		} `json:"events"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&env); err != nil {
		return Events{}, fmt.Errorf("Distribution envelope: %w", err)
	}
	out := Events{Source: SourceDistribution}
	for _, e := range env.Events {
		t := e.Target
		if e.Action != "push" || t.Tag == "" || t.Repository == "" || t.MediaType != "" && !manifestTypes[t.MediaType] {
			out.Skipped++
			continue
		}
		host := e.Request.Host
		if host == "" {
			if u, err := url.Parse(t.URL); err == nil {
				host = u.Host
			}
		}
		out.Pushes = append(out.Pushes, Push{Host: host, Repository: t.Repository, Tag: t.Tag, Digest: t.Digest})
	}
	return out, nil
}

// harborData is the part of a Harbor payload that names the artifacts.
type harborData struct {
	Resources []struct {
		Digest      string `json:"digest"`
		Tag         string `json:"tag"`
		ResourceURL string `json:"resource_url"`
	} `json:"resources"`
	Repository struct {
		Name         string `json:"name"`
		Namespace    string `json:"namespace"`
		RepoFullName string `json:"repo_full_name"`
	} `json:"repository"`
}

func parseHarbor(body []byte) (Events, error) {
	var p struct {
		Type      string          `json:"type"`
		EventData *harborData     `json:"event_data"`
		Data      json.RawMessage `json:"data"` // CloudEvents
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return Events{}, fmt.Errorf("Harbor webhook: %w", err)
	}
	out := Events{Source: SourceHarbor}
	data := p.EventData
	if data == nil && p.Data != nil {
		data = &harborData{}
		if err := json.Unmarshal(p.Data, data); err != nil {
			return Events{}, fmt.Errorf("Harbor CloudEvent data: %w", err)
		}
	}
	switch p.Type {
	case "PUSH_ARTIFACT", "pushImage", "harbor.artifact.pushed":
	default:
		out.Skipped = 1
		return out, nil
	}
	if data == nil {
		return Events{}, fmt.Errorf("Harbor %s event without data", p.Type)
	}
	repo := data.Repository.RepoFullName
	if repo == "" && data.Repository.Name != "" {
		repo = strings.TrimPrefix(data.Repository.Namespace+"/"+data.Repository.Name, "/")
	}
	for _, r := range data.Resources {
		if r.Tag == "" || repo == "" {
			out.Skipped++
			continue
		}
		host := ""
		if i := strings.IndexByte(r.ResourceURL, '/'); i > 0 {
			host = r.ResourceURL[:i]
		}
		out.Pushes = append(out.Pushes, Push{Host: host, Repository: repo, Tag: r.Tag, Digest: r.Digest})
	}
	return out, nil
}
