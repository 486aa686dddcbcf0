package watch

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want *File
		err  string
	}{
		{
			name: "every setting",
			yaml: `
listen: ":9090"
poll: 5m
refresh: 15m
jobs: 8
label: BASE
secretFile: /var/run/secrets/webhook/token
notify: https://ci.example.com/hooks/rebased
output: json
insecure: [registry.local:5000]
allowCopy: true
strict: true
backupTag: "{tag}-prev"
attempts: 3
timeout: 2m
drainTimeout: 20s
verbose: true
registries:
  - registry: registry.example.com
    bases: [base:stable, docker.io/library/debian:bookworm]
    repos: [team/app]
  - registry: http://registry.local:5000
    bases: [python:3.12]
`,
			want: &File{
				Registries: []FileRegistry{
					{Registry: "registry.example.com", Bases: []string{"base:stable", "docker.io/library/debian:bookworm"}, Repos: []string{"team/app"}},
					{Registry: "http://registry.local:5000", Bases: []string{"python:3.12"}},
				},
				Listen: ":9090", Poll: 5 * time.Minute, Refresh: 15 * time.Minute, Jobs: 8, Label: "BASE",
				SecretFile: "/var/run/secrets/webhook/token", Notify: "https://ci.example.com/hooks/rebased", Output: "json",
				Insecure: []string{"registry.local:5000"}, AllowCopy: true, Strict: true, BackupTag: "{tag}-prev",
				Attempts: 3, Timeout: 2 * time.Minute, DrainTimeout: 20 * time.Second, Verbose: true,
			},
		},
		{name: "empty", yaml: "", want: &File{}},
		{name: "a misspelt key", yaml: "registries: []\npol: 5m\n", err: "field pol not found"},
		{name: "a bad duration", yaml: "poll: often\n", err: "often"},
		{name: "a registry without bases", yaml: "registries:\n  - registry: r.example.com\n", err: "no bases"},
		{name: "a base without its registry", yaml: "registries:\n  - bases: [base:1]\n", err: "no registry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFile([]byte(tc.yaml))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
