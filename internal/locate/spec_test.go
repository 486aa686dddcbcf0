package locate

import (
	"errors"
	"strings"
	"testing"

	"github.com/image-rebase/image-rebase/internal/registry"
)

func TestRequest(t *testing.T) {
	r := &Resolver{Registry: registry.New(registry.Options{}), DefaultRegistry: "reg.example:5000"}
	defer r.Close()
	for _, c := range []struct {
		name   string
		spec   Spec
		image  string // the image, target, from and to, as located
		target string
		from   string
		to     string
		backup string
		field  string // the SpecError's field
		err    string
	}{
		{name: "in place", spec: Spec{Image: "app:1", From: "base:1", To: "base:2"},
			image: "reg.example:5000/app:1", target: "reg.example:5000/app:1", from: "reg.example:5000/base:1", to: "reg.example:5000/base:2"},
		{name: "a bare tag is a tag of the image's repository", spec: Spec{Image: "app:1", To: "base:2", Target: "1-rebased", BackupTag: "{tag}-prev"},
			image: "reg.example:5000/app:1", target: "reg.example:5000/app:1-rebased", to: "reg.example:5000/base:2", backup: "1-prev"},
		{name: "a layout's bare tag", spec: Spec{Image: "oci:build/layout:app", To: "base:2", Target: "2"},
			image: "oci:build/layout:app", target: "oci:build/layout:2", to: "reg.example:5000/base:2"},
		{name: "a target elsewhere", spec: Spec{Image: "oci:build/layout:app", From: "oci:build/layout:base", To: "other.example/base:2", Target: "other.example/team/app:1"},
			image: "oci:build/layout:app", target: "other.example/team/app:1", from: "oci:build/layout:base", to: "other.example/base:2"},
		{name: "a layout written in place needs a tag", spec: Spec{Image: "oci:build/layout", To: "base:2"}, field: "Image", err: "name the tag to write"},
		{name: "a dry run of a layout's only image", spec: Spec{Image: "oci:build/layout", To: "base:2", DryRun: true},
			image: "oci:build/layout", target: "oci:build/layout", to: "reg.example:5000/base:2"},
		{name: "a malformed base", spec: Spec{Image: "app:1", From: "Base::1", To: "base:2"}, field: "From", err: "invalid reference"},
		{name: "a malformed new base", spec: Spec{Image: "app:1", From: "base:1", To: "base:"}, field: "To"},
		{name: "a digest target", spec: Spec{Image: "app:1", To: "base:2", Target: "app@sha256:" + strings.Repeat("0", 64)}, field: "Target", err: "not a digest"},
		{name: "a backup of an image named by digest", spec: Spec{Image: "app@sha256:" + strings.Repeat("0", 64), To: "base:2", Target: "t", BackupTag: "{tag}-prev"}, field: "BackupTag", err: "named by a tag"},
		{name: "a backup tag that is no tag", spec: Spec{Image: "app:1", To: "base:2", BackupTag: "{tag}/prev"}, field: "BackupTag", err: "does not make a valid tag"},
		{name: "a bad platform", spec: Spec{Image: "app:1", To: "base:2", Platforms: []string{"linux"}}, field: "Platforms"},
		{name: "From without To", spec: Spec{Image: "app:1", From: "base:1"}, field: "From", err: "needs To"},
		{name: "Layers without To", spec: Spec{Image: "app:1", Layers: 2}, field: "Layers", err: "needs To"},
		{name: "From and Layers", spec: Spec{Image: "app:1", From: "base:1", To: "base:2", Layers: 2}, field: "Layers"},
		{name: "From and Label", spec: Spec{Image: "app:1", From: "base:1", To: "base:2", Label: "BASE"}, field: "Label"},
		{name: "Layers and Label", spec: Spec{Image: "app:1", To: "base:2", Layers: 2, Label: "BASE"}, field: "Label"},
		{name: "negative Layers", spec: Spec{Image: "app:1", To: "base:2", Layers: -1}, field: "Layers"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, err := r.Request(c.spec)
			if c.field != "" {
				var se *SpecError
				if !errors.As(err, &se) || se.Field != c.field || !strings.Contains(err.Error(), c.err) || !strings.HasPrefix(err.Error(), c.field+": ") {
					t.Fatalf("error %v, want a SpecError of %s with %q", err, c.field, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			str := func(loc interface{ String() string }, ok bool) string {
				if !ok {
					return ""
				}
				return loc.String()
			}
			got := []string{req.Image.String(), req.Target.String(), str(req.From, req.From.Repo != nil), str(req.To, req.To.Repo != nil), req.BackupTag}
			want := []string{c.image, c.target, c.from, c.to, c.backup}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("located %q, want %q", got, want)
			}
			if req.DryRun != c.spec.DryRun || req.ToName != c.spec.To {
				t.Errorf("request %+v", req)
			}
		})
	}
}
