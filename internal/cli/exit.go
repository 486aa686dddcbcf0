// Package cli is the image-rebase command line: flag parsing, output and
// exit codes over the engine. cmd/image-rebase only calls Main.
package cli

import (
	"errors"
	"strings"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/manifest"
	"github.com/image-rebase/image-rebase/internal/rebase"
	"github.com/image-rebase/image-rebase/internal/registry"
)

// Exit codes, documented in the README.
const (
	// ExitOK: rebased, up to date, or a dry run that planned successfully.
	ExitOK = 0
	// ExitFailure: any other failure.
	ExitFailure = 1
	// ExitUsage: bad flags, arguments or references.
	ExitUsage = 2
	// ExitRegistry: a registry could not be reached or refused access, or
	// an image, tag or repository does not exist.
	ExitRegistry = 3
	// ExitRefused: the images were read but the rebase cannot be done as
	// asked (not on the old base, platform mismatch, unsupported, corrupt or
	// oversized document, existing target without --force, a blob that
	// cannot be mounted).
	ExitRefused = 4
	// ExitWouldRebase: --check found that a rebase is due (nothing was
	// written). Distinct from the failure codes, so that CI can tell
	// "rebase needed" from "could not check".
	ExitWouldRebase = 10
)

// errWouldRebase ends a --check run that found a rebase due: exit code
// ExitWouldRebase, and no error line.
var errWouldRebase = errors.New("a rebase is due")

// usageError marks errors in the command line itself.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(msg string) error { return &usageError{msg: msg} }

// exitCode maps an error to the documented exit code.
func exitCode(err error) int {
	var (
		ue *usageError
		re *rebase.RefusedError
		me *manifest.UnsupportedError
		ie *manifest.InvalidError
		te *engine.TargetExistsError
		mr *registry.MountRefusedError
		ae *registry.AccessError
	)
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, errWouldRebase):
		return ExitWouldRebase
	case errors.As(err, &ue):
		return ExitUsage
	case errors.As(err, &re), errors.As(err, &me), errors.As(err, &ie), errors.As(err, &te), errors.As(err, &mr):
		return ExitRefused
	case errors.As(err, &ae):
		return ExitRegistry
	}
	return ExitFailure
}

// oneLine folds a (possibly joined) error into a single line, with any
// credentials written in a reference redacted.
func oneLine(err error) string {
	return redactCredentials(strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " "))
}

// failureLine is the line that reports a failed rebase: the error, and
// whether anything was written. Failures after the first write say what
// was written themselves (engine.WriteError); every other failure happened
// before any write.
func failureLine(err error) string {
	var we *engine.WriteError
	if errors.As(err, &we) || errors.Is(err, errWouldRebase) {
		return oneLine(err)
	}
	return oneLine(err) + "; nothing written"
}

// redactCredentials replaces the credentials of any reference or URL in s
// written with them ("https://user:pass@host", "user:pass@host/app:1") by
// "***": they would otherwise be echoed by the errors that quote a
// reference.
func redactCredentials(s string) string {
	var b strings.Builder
	for {
		at := strings.IndexByte(s, '@')
		if at < 0 {
			b.WriteString(s)
			return b.String()
		}
		// The word the '@' ends: back to a space, a quote, a '/' or "://".
		start := at
		for start > 0 && !strings.ContainsRune(" \t\"'`(/,;=", rune(s[start-1])) {
			start--
		}
		user := s[start:at]
		if user != "" && !isDigestAt(s[at+1:]) {
			b.WriteString(s[:start])
			b.WriteString("***@")
		} else {
			b.WriteString(s[:at+1])
		}
		s = s[at+1:]
	}
}

// isDigestAt reports whether s starts with a digest ("sha256:…"), as after
// the '@' of "app@sha256:…".
func isDigestAt(s string) bool {
	for _, alg := range []string{"sha256:", "sha384:", "sha512:"} {
		if strings.HasPrefix(s, alg) {
			return true
		}
	}
	return false
}
