package configmerge

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// osReleaseLabels are the labels read, in order, for a base's OS release.
var osReleaseLabels = []string{"org.opencontainers.image.version", "os.release", "version"}

var lastNumberRE = regexp.MustCompile(`^(.*\d)[.\-+_~][0-9]+$`)

// osRelease returns a base's OS release: the first of osReleaseLabels
// present, without its last numeric component when it has more than one
// ("12.5" → "12", "3.19.1" → "3.19", "bookworm-20240101" → "bookworm").
// The bool is false when the config names none.
func osRelease(c *v1.ConfigFile) (string, bool) {
	for _, l := range osReleaseLabels {
		if v, ok := c.Config.Labels[l]; ok && v != "" {
			if m := lastNumberRE.FindStringSubmatch(v); m != nil {
				return m[1], true
			}
			if i := strings.LastIndexAny(v, "-+_~"); i > 0 && strings.Trim(v[i+1:], "0123456789") == "" {
				return v[:i], true
			}
			return v, true
		}
	}
	if c.OSVersion != "" {
		return c.OSVersion, true
	}
	return "", false
}

// baseHazards are the hazards that come from the bases themselves.
func baseHazards(old, nw *v1.ConfigFile, instrs []instruction) []Warning {
	var ws []Warning
	runs := 0
	for _, in := range instrs {
		if in.cmd == "RUN" {
			runs++
		}
	}
	or, ok1 := osRelease(old)
	nr, ok2 := osRelease(nw)
	if runs > 0 && ok1 && ok2 && or != nr {
		ws = append(ws, Warning{Code: CodeRunOnNewRelease, Message: fmt.Sprintf(
			"the image ran %d RUN step(s) on OS release %s; the new base is release %s: what they installed or built may not fit it (rebuild instead)", runs, or, nr)})
	}
	if !sameList(old.Config.OnBuild, nw.Config.OnBuild) {
		ws = append(ws, Warning{Code: CodeOnBuildChanged, Message: fmt.Sprintf(
			"the old base's ONBUILD triggers %s ran when the image was built; a rebuild would run the new base's %s instead", renderList(old.Config.OnBuild), renderList(nw.Config.OnBuild))})
	}
	return ws
}

func renderList(l []string) string {
	if len(l) == 0 {
		return "(none)"
	}
	return fmt.Sprintf("%q", slices.Clone(l))
}
