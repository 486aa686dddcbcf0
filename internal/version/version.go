// Package version says which build of image-rebase is running: the module
// version, the VCS revision it was built from and the Go toolchain, read
// from the binary's build information. The same version string is printed
// by "image-rebase version", carried by every JSON result and sent in the
// User-Agent of every registry request.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
)

// Version, when set at link time, is the version reported instead of the
// module version Go records:
//
//	go build -ldflags "-X github.com/image-rebase/image-rebase/internal/version.Version=v1.2.0" ./cmd/image-rebase
//
// Release builds and the container image set it; "go install ...@v1.2.0"
// needs nothing, as Go records the module version itself.
var Version string

// Revision, when set at link time, is the VCS revision reported instead of
// the one Go records (a build without the repository's history, such as
// the container image's, has none):
//
//	-ldflags "-X github.com/image-rebase/image-rebase/internal/version.Revision=$(git rev-parse HEAD)"
var Revision string

// Devel is the version of a build that records none: "go run", "go test",
// or "go build" outside version control or with -buildvcs=false.
const Devel = "devel"

// Info describes a build.
type Info struct {
	// Version is the version string: Version when set at link time, else
	// the main module's version as Go records it ("v1.2.0", or a
	// pseudo-version such as "v0.0.0-20261130103037-96cbb40ba3fc+dirty"
	// for "go build" in a work tree), else Devel.
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from, when known.
	Revision string `json:"revision,omitempty"`
	// Dirty reports uncommitted changes in the work tree of that build.
	Dirty bool `json:"dirty,omitempty"`
	// Time is the commit's time (RFC 3339), when known.
	Time string `json:"time,omitempty"`
	// Go is the Go toolchain that built the binary, e.g. "go1.26.8".
	Go string `json:"go"`
	// Platform is the binary's os/arch, e.g. "linux/amd64".
	Platform string `json:"platform"`
}

var (
	once sync.Once
	info Info
)

// Get returns the running binary's build information.
func Get() Info {
	once.Do(func() {
		bi, _ := debug.ReadBuildInfo()
		info = fromBuildInfo(bi, Version, Revision)
	})
	return info
}

// String is the version string of the running binary (Info.Version).
func String() string { return Get().Version }

// UserAgent is the User-Agent product of the running binary,
// "image-rebase/VERSION".
func UserAgent() string { return "image-rebase/" + String() }

// fromBuildInfo reads bi (nil when the binary has none); override and
// revision are the version and revision set at link time, if any.
func fromBuildInfo(bi *debug.BuildInfo, override, revision string) Info {
	in := Info{Version: Devel, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		if bi.GoVersion != "" {
			in.Go = bi.GoVersion
		}
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			in.Version = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Revision = s.Value
			case "vcs.modified":
				in.Dirty = s.Value == "true"
			case "vcs.time":
				in.Time = s.Value
			}
		}
	}
	if o := strings.TrimSpace(override); o != "" {
		in.Version = o
	}
	if r := strings.TrimSpace(revision); r != "" && r != in.Revision {
		in.Revision, in.Dirty, in.Time = r, false, ""
	}
	// The version goes into a User-Agent product token and JSON: no
	// spaces, slashes or parentheses.
	in.Version = strings.Map(func(r rune) rune {
		if r <= ' ' || strings.ContainsRune("/()<>@,;:\\\"[]?={}", r) || r > '~' {
			return '_'
		}
		return r
	}, in.Version)
	return in
}

// String renders the information on one line, as "image-rebase version"
// prints it: "image-rebase v1.2.0 (revision 96cbb40ba3fc+dirty,
// 2026-11-30T10:30:37Z; go1.26.8 linux/amd64)".
func (in Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "image-rebase %s (", in.Version)
	if in.Revision != "" {
		rev := in.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if in.Dirty {
			rev += "+dirty"
		}
		fmt.Fprintf(&b, "revision %s", rev)
		if in.Time != "" {
			fmt.Fprintf(&b, ", %s", in.Time)
		}
		b.WriteString("; ")
	} else {
		b.WriteString("revision unknown; ")
	}
	fmt.Fprintf(&b, "%s %s)", in.Go, in.Platform)
	return b.String()
}
