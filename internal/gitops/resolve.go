package gitops

import (
	"context"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/engine"
)

// Resolution is the digest to pin for one image reference.
type Resolution struct {
	// Action is what happened in the registry: an engine.Action
	// ("rebased", "up-to-date", "would-rebase"), or "resolved" for pinning
	// without rebase.
	Action string `json:"action"`
	// Before is the digest the tag named before; Digest the one to pin.
	Before string `json:"before,omitempty"`
	Digest string `json:"digest"`
	// Result is the engine's result when the image was rebased (or planned).
	Result *engine.Result `json:"-"`
}

// Resolver decides the digest to pin for an image reference
// ("host/repo:tag"). Run calls it once per distinct reference, concurrently.
type Resolver interface {
	Resolve(ctx context.Context, ref string) (Resolution, error)
}

// Preparer is a Resolver that wants every reference before the first
// Resolve: Run calls Prepare once, so that references are parsed (and
// registry scopes gathered) before any request. Prepare returns the errors
// of the references it rejects, which are then not resolved.
type Preparer interface {
	Prepare(refs []string) map[string]error
}

// ParseFunc turns a reference into a location: registry.Client.Parse. A
// reference without a host belongs to defaultRegistry when it is set;
// write asks for push access.
type ParseFunc func(ref, defaultRegistry string, write bool) (engine.Location, error)

// locations parses references once, ahead of resolution.
type locations struct {
	mu   sync.Mutex
	locs map[string]engine.Location
}

func (l *locations) prepare(parse ParseFunc, refs []string, write bool) map[string]error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.locs == nil {
		l.locs = map[string]engine.Location{}
	}
	errs := map[string]error{}
	for _, ref := range refs {
		loc, err := parse(ref, "", write)
		if err != nil {
			errs[ref] = err
			continue
		}
		l.locs[ref] = loc
	}
	return errs
}

func (l *locations) get(parse ParseFunc, ref string, write bool) (engine.Location, error) {
	l.mu.Lock()
	loc, ok := l.locs[ref]
	l.mu.Unlock()
	if ok {
		return loc, nil
	}
	return parse(ref, "", write)
}

// Rebaser rebases each image in place (its tag moves to the rebased image)
// and pins the result. With From unset the old base is found from what the
// image records (engine.Detect: the FROM label, or Label, then the OCI base
// annotations, then To's history), and with To unset too the image moves
// onto the current image of the base it names.
type Rebaser struct {
	Parse    ParseFunc
	From, To engine.Location
	// Label names the label that names an image's base (default FROM).
	Label string
	// Strict refuses a rebase whose plan has any warning.
	Strict bool
	// DryRun plans the rebase and writes nothing to the registry; the
	// digest to pin is the one the rebased image would have.
	DryRun bool
	// AllowCopy lets blobs that cannot be mounted be streamed.
	AllowCopy bool

	locs locations
}

// Prepare parses every reference (for push access unless DryRun).
func (r *Rebaser) Prepare(refs []string) map[string]error {
	return r.locs.prepare(r.Parse, refs, !r.DryRun)
}

// Resolve rebases ref and returns the digest its tag names afterwards.
func (r *Rebaser) Resolve(ctx context.Context, ref string) (Resolution, error) {
	loc, err := r.locs.get(r.Parse, ref, !r.DryRun)
	if err != nil {
		return Resolution{}, err
	}
	detect := engine.Detect{Label: r.Label, Resolve: func(base string, relative bool) (engine.Location, error) {
		// A label names the base relative to the image's own registry.
		reg := ""
		if rr, ok := loc.Repo.(interface{ Registry() string }); ok && relative {
			reg = rr.Registry()
		}
		return r.Parse(base, reg, false)
	}}
	res, err := engine.Rebase(ctx, engine.Request{
		Image: loc, Target: loc, From: r.From, To: r.To, Detect: detect,
		DryRun: r.DryRun, AllowCopy: r.AllowCopy, Strict: r.Strict,
	})
	if err != nil {
		return Resolution{}, err
	}
	return Resolution{Action: string(res.Action), Before: res.Before.String(), Digest: res.After.String(), Result: res}, nil
}

// Pinner pins each image to the digest its tag names now, without rebasing.
type Pinner struct {
	Parse ParseFunc

	locs locations
}

// Prepare parses every reference (for pull access).
func (p *Pinner) Prepare(refs []string) map[string]error {
	return p.locs.prepare(p.Parse, refs, false)
}

// tagResolver is a repository that can resolve a tag without fetching the
// manifest (a HEAD request for registries).
type tagResolver interface {
	Resolve(ctx context.Context, tag string) (v1.Hash, bool, error)
}

// Resolve returns the digest ref's tag names.
func (p *Pinner) Resolve(ctx context.Context, ref string) (Resolution, error) {
	loc, err := p.locs.get(p.Parse, ref, false)
	if err != nil {
		return Resolution{}, err
	}
	var d v1.Hash
	found := false
	if tr, ok := loc.Repo.(tagResolver); ok {
		if d, found, err = tr.Resolve(ctx, loc.Tag); err != nil {
			return Resolution{}, err
		}
	}
	if !found {
		// No HEAD, or nothing found: the GET says why, in the storage's
		// own error.
		desc, _, err := loc.Repo.Manifest(ctx, loc.Tag)
		if err != nil {
			return Resolution{}, err
		}
		d = desc.Digest
	}
	return Resolution{Action: "resolved", Before: d.String(), Digest: d.String()}, nil
}
