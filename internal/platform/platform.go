// Package platform parses and matches image platforms (os/arch/variant and,
// for Windows, os.version), with the usual normalisation of architectures
// and ARM variants.
package platform

import (
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Parse reads "os/arch[/variant]".
func Parse(s string) (v1.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return v1.Platform{}, fmt.Errorf("invalid platform %q: want os/arch[/variant]", s)
	}
	p := v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return Normalize(p), nil
}

// Normalize maps architecture aliases and default variants to one spelling:
// aarch64 → arm64 (variant v8 dropped), armhf/armel → arm v7/v6, x86_64 →
// amd64, arm without variant → arm v7.
func Normalize(p v1.Platform) v1.Platform {
	p.OS = strings.ToLower(p.OS)
	switch strings.ToLower(p.Architecture) {
	case "x86_64", "x86-64", "amd64":
		p.Architecture = "amd64"
	case "aarch64", "arm64":
		p.Architecture = "arm64"
		if p.Variant == "v8" || p.Variant == "8" {
			p.Variant = ""
		}
	case "armhf":
		p.Architecture, p.Variant = "arm", "v7"
	case "armel":
		p.Architecture, p.Variant = "arm", "v6"
	case "arm":
		p.Architecture = "arm"
		switch p.Variant {
		case "", "7":
			p.Variant = "v7"
		case "5", "6", "8":
			p.Variant = "v" + p.Variant
		}
	case "i386", "386":
		p.Architecture = "386"
	}
	return p
}

// Matches reports whether an image of platform have can stand in for want:
// same os, architecture and variant after normalisation, and for Windows the
// same OS build (major.minor.build of os.version; the revision may differ,
// that is the patch). Fields want leaves empty match anything.
func Matches(want, have v1.Platform) bool {
	w, h := Normalize(want), Normalize(have)
	if w.OS != h.OS || w.Architecture != h.Architecture {
		return false
	}
	if w.Variant != "" && w.Variant != h.Variant {
		return false
	}
	if w.OS == "windows" && w.OSVersion != "" && windowsBuild(w.OSVersion) != windowsBuild(h.OSVersion) {
		return false
	}
	return true
}

// windowsBuild keeps the first three components of a Windows os.version.
func windowsBuild(v string) string {
	parts := strings.SplitN(v, ".", 4)
	if len(parts) > 3 {
		parts = parts[:3]
	}
	return strings.Join(parts, ".")
}

// String renders "os/arch[/variant][ (os.version)]".
func String(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	if p.OSVersion != "" {
		s += " (" + p.OSVersion + ")"
	}
	return s
}

// OfConfig returns the platform a config describes.
func OfConfig(c *v1.ConfigFile) v1.Platform {
	return v1.Platform{OS: c.OS, Architecture: c.Architecture, Variant: c.Variant, OSVersion: c.OSVersion}
}
