package locate

import (
	"strings"
	"testing"

	"github.com/image-rebase/image-rebase/internal/archive"
	"github.com/image-rebase/image-rebase/internal/ocilayout"
	"github.com/image-rebase/image-rebase/internal/registry"
)

func TestParse(t *testing.T) {
	r := &Resolver{Registry: registry.New(registry.Options{}), DefaultRegistry: "reg.example:5000"}
	defer r.Close()
	cases := []struct {
		ref     string
		write   bool
		repo    any // type of the Repo
		name    string
		tag     string
		wantErr string
	}{
		{ref: "oci:build/layout:app", repo: &ocilayout.Layout{}, name: "oci:build/layout", tag: "app"},
		{ref: "oci:build/layout", repo: &ocilayout.Layout{}, name: "oci:build/layout"},
		{ref: "oci-archive:/tmp/x.tar:1", repo: &archive.OCI{}, name: "oci-archive:/tmp/x.tar", tag: "1"},
		{ref: "docker-archive:save.tar:app:1", repo: &archive.Docker{}, name: "docker-archive:save.tar", tag: "app:1"},
		{ref: "docker-archive:save.tar:localhost/team/app:1", repo: &archive.Docker{}, name: "docker-archive:save.tar", tag: "localhost/team/app:1"},
		{ref: "docker://reg.example/app:1", repo: &registry.Repo{}, name: "reg.example/app", tag: "1"},
		{ref: "app:1", repo: &registry.Repo{}, name: "reg.example:5000/app", tag: "1"},
		{ref: "oci:build/layout", write: true, wantErr: "name the tag to write, e.g. oci:build/layout:2"},
		{ref: "docker-archive:save.tar", write: true, wantErr: "docker-archive:save.tar:app:2"},
		{ref: "oci:", wantErr: "want oci:PATH[:TAG]"},
		{ref: "oci:dir:a:b", wantErr: "is not a tag"},
		{ref: "oci:dir:a@sha256:00", wantErr: "is not a tag"},
	}
	for _, c := range cases {
		loc, err := r.Parse(c.ref, c.write)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: err %v, want %q", c.ref, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.ref, err)
			continue
		}
		if got, want := typeName(loc.Repo), typeName(c.repo); got != want {
			t.Errorf("%s: repo %s, want %s", c.ref, got, want)
		}
		if loc.Repo.Name() != c.name || loc.Tag != c.tag {
			t.Errorf("%s: %s tag %q, want %s tag %q", c.ref, loc.Repo.Name(), loc.Tag, c.name, c.tag)
		}
	}
}

func typeName(v any) string {
	switch v.(type) {
	case *ocilayout.Layout:
		return "layout"
	case *archive.OCI:
		return "oci-archive"
	case *archive.Docker:
		return "docker-archive"
	case *registry.Repo:
		return "registry"
	}
	return "?"
}

func TestSameStorageSharesOneRepo(t *testing.T) {
	r := &Resolver{}
	a, _ := r.Parse("docker-archive:x/save.tar:app:1", false)
	b, _ := r.Parse("docker-archive:./x/../x/save.tar:app:2", true)
	if a.Repo != b.Repo {
		t.Error("two Repos for one archive")
	}
	c, _ := r.Parse("oci-archive:x/save.tar:1", false)
	if c.Repo == a.Repo {
		t.Error("one Repo for two transports")
	}
}

func TestWithTag(t *testing.T) {
	r := &Resolver{Registry: registry.New(registry.Options{})}
	for ref, want := range map[string]string{
		"oci:dir:1":                                 "oci:dir:2",
		"oci-archive:a.tar":                         "oci-archive:a.tar:2",
		"docker-archive:s.tar:app:1":                "docker-archive:s.tar:app:2",
		"docker-archive:s.tar:localhost:5000/app:1": "docker-archive:s.tar:localhost:5000/app:2",
		"reg.example/app:1":                         "reg.example/app:2",
	} {
		loc, err := r.Parse(ref, false)
		if err != nil {
			t.Fatal(err)
		}
		if got := WithTag(loc, "2"); got != want {
			t.Errorf("WithTag(%s) = %s, want %s", ref, got, want)
		}
	}
}
