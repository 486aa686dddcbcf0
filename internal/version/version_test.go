package version

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	vcs := []debug.BuildSetting{
		{Key: "-buildmode", Value: "exe"},
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "96cbb40ba3fc9918d0177ab03a77132871d89129"},
		{Key: "vcs.time", Value: "2026-11-30T10:30:37Z"},
		{Key: "vcs.modified", Value: "true"},
	}
	main := func(v string) debug.Module {
		return debug.Module{Path: "github.com/image-rebase/image-rebase", Version: v}
	}
	for _, tc := range []struct {
		name     string
		bi       *debug.BuildInfo
		override string
		revision string
		want     Info
		line     string
	}{
		{
			name: "no build information",
			want: Info{Version: Devel},
			line: "image-rebase devel (revision unknown; GO)",
		},
		{
			name: "go run: (devel), no VCS",
			bi:   &debug.BuildInfo{GoVersion: "go1.26.8", Main: main("(devel)")},
			want: Info{Version: Devel, Go: "go1.26.8"},
			line: "image-rebase devel (revision unknown; go1.26.8 PLATFORM)",
		},
		{
			name: "go install @v1.2.0",
			bi:   &debug.BuildInfo{GoVersion: "go1.26.8", Main: main("v1.2.0")},
			want: Info{Version: "v1.2.0", Go: "go1.26.8"},
			line: "image-rebase v1.2.0 (revision unknown; go1.26.8 PLATFORM)",
		},
		{
			name: "go build in a dirty work tree",
			bi:   &debug.BuildInfo{GoVersion: "go1.26.8", Main: main("v0.0.0-20261130103037-96cbb40ba3fc+dirty"), Settings: vcs},
			want: Info{Version: "v0.0.0-20261130103037-96cbb40ba3fc+dirty", Revision: "96cbb40ba3fc9918d0177ab03a77132871d89129", Dirty: true, Time: "2026-11-30T10:30:37Z", Go: "go1.26.8"},
			line: "image-rebase v0.0.0-20261130103037-96cbb40ba3fc+dirty (revision 96cbb40ba3fc+dirty, 2026-11-30T10:30:37Z; go1.26.8 PLATFORM)",
		},
		{
			name:     "-ldflags -X wins",
			bi:       &debug.BuildInfo{GoVersion: "go1.26.8", Main: main("(devel)"), Settings: vcs[:4]},
			override: "v1.3.0-rc.1",
			want:     Info{Version: "v1.3.0-rc.1", Revision: "96cbb40ba3fc9918d0177ab03a77132871d89129", Time: "2026-11-30T10:30:37Z", Go: "go1.26.8"},
			line:     "image-rebase v1.3.0-rc.1 (revision 96cbb40ba3fc, 2026-11-30T10:30:37Z; go1.26.8 PLATFORM)",
		},
		{
			name:     "-X for the revision of a build without VCS information",
			bi:       &debug.BuildInfo{GoVersion: "go1.26.8", Main: main("(devel)")},
			override: "v1.3.0",
			revision: "0123456789abcdef0123456789abcdef01234567",
			want:     Info{Version: "v1.3.0", Revision: "0123456789abcdef0123456789abcdef01234567", Go: "go1.26.8"},
			line:     "image-rebase v1.3.0 (revision 0123456789ab; go1.26.8 PLATFORM)",
		},
		{
			name:     "an override that is not a token is made one",
			bi:       &debug.BuildInfo{GoVersion: "go1.26.8", Main: main("v1.2.0")},
			override: " 1.2 (rc) ",
			want:     Info{Version: "1.2__rc_", Go: "go1.26.8"},
			line:     "image-rebase 1.2__rc_ (revision unknown; go1.26.8 PLATFORM)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromBuildInfo(tc.bi, tc.override, tc.revision)
			want := tc.want
			if want.Go == "" {
				want.Go = runtime.Version()
			}
			want.Platform = runtime.GOOS + "/" + runtime.GOARCH
			if got != want {
				t.Errorf("got %+v\nwant %+v", got, want)
			}
			line := strings.NewReplacer("PLATFORM", want.Platform, "GO", runtime.Version()+" "+want.Platform).Replace(tc.line)
			if got.String() != line {
				t.Errorf("String() = %q\nwant        %q", got.String(), line)
			}
		})
	}
}

func TestUserAgent(t *testing.T) {
	if ua := UserAgent(); ua != "image-rebase/"+String() || strings.ContainsAny(String(), " ()/") || String() == "" {
		t.Errorf("UserAgent() = %q, String() = %q", ua, String())
	}
}
