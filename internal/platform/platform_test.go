package platform

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestMatches(t *testing.T) {
	tests := []struct {
		want, have v1.Platform
		ok         bool
	}{
		{v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "amd64"}, true},
		{v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"}, false},
		{v1.Platform{OS: "linux", Architecture: "arm64"}, v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, true},
		{v1.Platform{OS: "linux", Architecture: "aarch64"}, v1.Platform{OS: "linux", Architecture: "arm64"}, true},
		{v1.Platform{OS: "linux", Architecture: "arm"}, v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, true},
		{v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"}, v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, false},
		{v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, v1.Platform{OS: "linux", Architecture: "arm"}, true},
		{v1.Platform{OS: "windows", Architecture: "amd64", OSVersion: "10.0.17763.1234"}, v1.Platform{OS: "windows", Architecture: "amd64", OSVersion: "10.0.17763.5678"}, true},
		{v1.Platform{OS: "windows", Architecture: "amd64", OSVersion: "10.0.17763.1234"}, v1.Platform{OS: "windows", Architecture: "amd64", OSVersion: "10.0.20348.100"}, false},
		{v1.Platform{OS: "windows", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "amd64"}, false},
	}
	for _, tt := range tests {
		if got := Matches(tt.want, tt.have); got != tt.ok {
			t.Errorf("Matches(%s, %s) = %v, want %v", String(tt.want), String(tt.have), got, tt.ok)
		}
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]string{"linux/amd64": "linux/amd64", "linux/arm64/v8": "linux/arm64", "linux/arm": "linux/arm/v7", "linux/arm/v6": "linux/arm/v6"} {
		p, err := Parse(in)
		if err != nil || String(p) != want {
			t.Errorf("Parse(%q) = %s, %v; want %s", in, String(p), err, want)
		}
	}
	for _, bad := range []string{"", "linux", "linux/", "/amd64", "a/b/c/d"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}
