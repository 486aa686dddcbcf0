package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/rebase"
)

// WriteError is a failure of a rebase that had started writing, or that
// was refused at the last moment: it says what was written, so that no
// failure leaves the tag's state to guesswork.
type WriteError struct {
	// Target is the tag the rebase was to move.
	Target string
	// Written says what was written: empty when the target tag was left
	// unchanged and no tag was written.
	Written string
	// Err is the cause.
	Err error
}

// Error renders "cause; what was written".
func (e *WriteError) Error() string {
	if e.Written == "" {
		return fmt.Sprintf("%v; %s unchanged, no tag written", e.Err, e.Target)
	}
	return fmt.Sprintf("%v; %s", e.Err, e.Written)
}

// Unwrap returns the cause.
func (e *WriteError) Unwrap() error { return e.Err }

// LostUpdateError reports a rebase whose result another writer replaced in
// the target tag right after it was written: the two wrote the same tag
// within a round trip, and the result survives only by digest.
type LostUpdateError struct {
	// Target is the tag.
	Target string
	// Written is the digest this rebase wrote; Now the digest the tag
	// names now.
	Written, Now v1.Hash
}

// Error names both digests.
func (e *LostUpdateError) Error() string {
	return fmt.Sprintf("%s was moved to %s by another writer right after this rebase wrote %s there", e.Target, e.Now, e.Written)
}

// minFresh is the age under which the tag's last read is recent enough to
// write the tag without reading it again (see tagGuard.commit).
const minFresh = 100 * time.Millisecond

// tagGuard keeps the target tag from being moved over someone else's
// write, as far as a registry without conditional writes allows: the tag
// is read alongside the last writes before the manifest (and read once
// more when those writes outlast that read by more than the read took), it
// is moved only when it still names what was read at the start, and it is
// read again after the manifest PUT.
type tagGuard struct {
	req    Request
	target WritableRepo
	// check is whether the tag is read before it is moved.
	check bool
	// expect is the digest the tag must still name (nil: the tag must not
	// exist); result the digest about to be written.
	expect *v1.Hash
	result v1.Hash

	read   targetState
	readAt time.Time     // when the last read was answered
	took   time.Duration // how long it took
}

// newGuard prepares the guard of a write of result to req.Target. In place,
// the tag must still name the image as read (before); elsewhere (-t) it
// must still not exist, unless Force. A batch may skip the read of a tag it
// read very recently (Shared.RecheckAfter).
func newGuard(req Request, target WritableRepo, r *run, before, result v1.Hash) *tagGuard {
	g := &tagGuard{req: req, target: target, result: result}
	if req.Target.Tag == "" || req.Force {
		return g
	}
	if req.Target.String() == req.Image.String() {
		g.expect = &before
		g.check = r.recheck()
	} else {
		g.check = true
	}
	return g
}

// readTag reads the tag now.
func (g *tagGuard) readTag(ctx context.Context) {
	start := time.Now()
	g.read = resolveTarget(ctx, g.target, g.req.Target.Tag)
	g.readAt = time.Now()
	g.took = g.readAt.Sub(start)
}

// verdict judges the last read: nil when the tag is as expected; upToDate
// when someone else already wrote the very result; else an error.
func (g *tagGuard) verdict(written string) (upToDate bool, err error) {
	switch {
	case g.read.err != nil:
		return false, &WriteError{Target: g.req.Target.String(), Written: written, Err: fmt.Errorf("reading %s again before writing it: %w", g.req.Target, g.read.err)}
	case g.expect == nil && !g.read.exists, g.expect != nil && g.read.exists && g.read.digest == *g.expect:
		return false, nil
	case g.read.exists && g.read.digest == g.result:
		return true, nil
	case g.expect == nil:
		return false, &WriteError{Target: g.req.Target.String(), Written: written,
			Err: fmt.Errorf("%s was created meanwhile (it names %s): pass --force to overwrite it", g.req.Target, g.read.digest)}
	case !g.read.exists:
		return false, &WriteError{Target: g.req.Target.String(), Written: written,
			Err: fmt.Errorf("%s was deleted since it was read (someone deleted it meanwhile): rerun, or pass --force", g.req.Target)}
	}
	return false, &WriteError{Target: g.req.Target.String(), Written: written,
		Err: fmt.Errorf("%s moved to %s since it was read (someone pushed meanwhile): rerun to rebase the new image, or pass --force", g.req.Target, g.read.digest)}
}

// commit moves the tag: once the tag is known not to have moved, the backup
// tag (when asked for), a last read of the tag if the earlier one is
// stale, the manifest PUT, and, in a registry (SharedTags), a read of the
// tag afterwards. It reports
// upToDate when another writer already wrote the same result, and a
// warning when the tag could not be read back.
func (g *tagGuard) commit(ctx context.Context, backupDesc v1.Descriptor, backupRaw []byte, put func() error) (upToDate bool, backupTag string, warnings []rebase.Warning, err error) {
	if g.check {
		if upToDate, err := g.verdict(""); upToDate || err != nil {
			return upToDate, "", nil, err
		}
	}
	written := ""
	if g.req.BackupTag != "" {
		if err := backup(ctx, g.req, backupDesc, backupRaw); err != nil {
			return false, "", nil, &WriteError{Target: g.req.Target.String(), Err: err}
		}
		backupTag = g.req.Image.Repo.Name() + ":" + g.req.BackupTag
		written = fmt.Sprintf("%s unchanged; the backup tag %s was written (it names %s, the image as read)", g.req.Target, backupTag, backupDesc.Digest)
	}
	if g.check && time.Since(g.readAt) > max(g.took, minFresh) {
		// The writes outlasted the read: read the tag once more, as close
		// to the PUT as a read can be.
		g.readTag(ctx)
		if upToDate, err := g.verdict(written); upToDate || err != nil {
			return upToDate, backupTag, nil, err
		}
	}
	if err := put(); err != nil {
		return false, backupTag, nil, g.putFailed(ctx, err, written)
	}
	if _, shared := g.target.(SharedTags); !shared || g.req.Target.Tag == "" {
		return false, backupTag, nil, nil
	}
	after := resolveTarget(ctx, g.target, g.req.Target.Tag)
	switch {
	case after.err != nil:
		warnings = append(warnings, rebase.Warning{Code: "tag-not-read-back",
			Message: fmt.Sprintf("%s was written as %s, but reading it back failed (%v): check that it still names %s", g.req.Target, g.result, after.err, g.result)})
	case !after.exists || after.digest != g.result:
		now := after.digest
		lost := &LostUpdateError{Target: g.req.Target.String(), Written: g.result, Now: now}
		state := fmt.Sprintf("the rebased image stays in the registry as %s@%s (untagged): tag it again, or rerun", g.req.Target.Repo.Name(), g.result)
		if !after.exists {
			state = fmt.Sprintf("%s was deleted right after this rebase wrote %s; the rebased image stays in the registry as %s@%s (untagged)", g.req.Target, g.result, g.req.Target.Repo.Name(), g.result)
		}
		if backupTag != "" {
			state += "; the backup tag " + backupTag + " was written"
		}
		return false, backupTag, nil, &WriteError{Target: g.req.Target.String(), Written: state, Err: lost}
	}
	return false, backupTag, warnings, nil
}

// putFailed says, after a failed manifest PUT, whether the tag moved: a
// connection lost after the registry stored the manifest is a success.
func (g *tagGuard) putFailed(ctx context.Context, err error, written string) error {
	if _, shared := g.target.(SharedTags); !shared || g.req.Target.Tag == "" {
		// Local storage writes atomically: a failed write changed nothing.
		return &WriteError{Target: g.req.Target.String(), Written: written, Err: err}
	}
	now := resolveTarget(ctx, g.target, g.req.Target.Tag)
	switch {
	case now.err != nil:
		return &WriteError{Target: g.req.Target.String(), Err: err,
			Written: fmt.Sprintf("%s may or may not have been written (reading it back failed too: %v): check whether it names %s", g.req.Target, now.err, g.result)}
	case now.exists && now.digest == g.result:
		return nil
	case !now.exists && g.expect == nil, now.exists && g.expect != nil && now.digest == *g.expect:
		return &WriteError{Target: g.req.Target.String(), Written: written, Err: err}
	}
	return &WriteError{Target: g.req.Target.String(), Err: err,
		Written: fmt.Sprintf("%s now names %s, written by someone else", g.req.Target, now.digest)}
}

// unchanged wraps a failure of the writes before the tag moves.
func unchanged(req Request, err error) error {
	var we *WriteError
	if errors.As(err, &we) {
		return err
	}
	return &WriteError{Target: req.Target.String(), Err: err}
}
