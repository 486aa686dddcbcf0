// Package imagerebase changes the base image of container images that are
// already built, directly where they are stored: it swaps the old base's
// layers in the image's manifest for a newer base's and rewrites the image
// config as a rebuild on the new base would. Layer bytes do not move: a
// registry mounts the new base's layers across repositories; only manifests
// and configs are read and written.
//
// It is the library behind the image-rebase command, and takes images as
// that command does, as reference strings:
//
//	reg.example.com/team/app:1     a registry (tag or @digest)
//	app:1                          in Options.Registry when set, else Docker Hub
//	oci:DIR[:TAG]                  an OCI image layout directory
//	oci-archive:FILE[:TAG]         a tar of an OCI image layout
//	docker-archive:FILE[:NAME:TAG] a docker save archive
//
// mixed freely: an image in a layout can be rebased onto a base in a
// registry and written to another registry. Layers are copied only into
// local targets that lack them, or into a registry with Options.AllowCopy.
//
// Rebase writes the result; Plan says what Rebase would do and writes
// nothing. Credentials come from the Docker and Podman configuration files
// and credential helpers (authn.DefaultKeychain) unless Options.Keychain
// says otherwise; TLS is verified unless Options.Insecure names the
// registry.
//
// The guarantees of the command hold: the result is valid (one media-type
// family, digests and sizes right); a failure leaves every tag as it was or
// fully updated; the image's tag is read again just before it moves, so
// that an image pushed meanwhile is not overwritten (unless Options.Force).
// See the README of the repository for the rules of the config rewrite and
// the safety guarantees, each with its tests.
package imagerebase

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/image-rebase/image-rebase/internal/engine"
	"github.com/image-rebase/image-rebase/internal/locate"
	"github.com/image-rebase/image-rebase/internal/rebase"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/version"
)

// Options say how to rebase an image and how to reach its registries. The
// zero value rebases in place onto the current image of the base the image
// names (a LABEL FROM=base:tag, or the OCI base annotations), through
// verified TLS with the default credentials.
type Options struct {
	// From is the base the image is built on now (a reference). Empty:
	// found from the image, by Layers, the label that names the base
	// (Label), the OCI base annotations, or To's history matched against
	// the image's.
	From string
	// To is the base to move the image to. With From it is required; empty
	// without From rebases onto the current image of the base the image
	// names.
	To string
	// Target is where the result is written: empty for the image itself
	// (its tag moves), a bare tag ("1-rebased") for that tag in the
	// image's repository, or a reference (another repository or storage).
	// An existing tag that names another image is refused unless Force.
	Target string
	// Registry is the registry of references without a host,
	// "host[:port]" or "http(s)://host[:port]"; http:// allows plain HTTP
	// for it. Empty: Docker Hub.
	Registry string

	// Label is the label that names the base (default FROM).
	Label string
	// Layers, when positive, keeps the image's top Layers history entries
	// (as docker history lists them) and puts To under them.
	Layers int

	// DryRun plans the rebase and writes nothing (Plan sets it).
	DryRun bool
	// Strict refuses a rebase whose plan has any warning: nothing is
	// written; the Result (Action Refused) comes with the error.
	Strict bool
	// Force overwrites a Target tag that names another image, and skips
	// the check that the image's tag has not moved since it was read.
	Force bool
	// AllowCopy lets layers that cannot be mounted be copied (streamed
	// registry to registry, or uploaded from a layout or archive).
	AllowCopy bool
	// BackupTag tags the image the tag named before it moved
	// ("{tag}-prev": "{tag}" is the image's tag).
	BackupTag string
	// Platforms limits the rebase of a multi-platform image to these
	// platforms ("linux/arm64", "linux/arm/v7"); the others are refused
	// unless KeepOtherPlatforms.
	Platforms []string
	// KeepOtherPlatforms keeps the platforms Platforms leaves out unchanged.
	KeepOtherPlatforms bool
	// KeepAttestations keeps the attestation manifests of the platform
	// images the rebase replaces, detached from them; by default they are
	// dropped with a warning.
	KeepAttestations bool
	// KeepLabel keeps the label that names the base when an explicit
	// rebase moves the image off that base; by default it is set to To.
	KeepLabel bool
	// CheckSignatures looks for the signatures a rebase of a
	// single-platform image invalidates (always done for an index).
	CheckSignatures bool

	// Insecure lists registries ("host:port") reached over plain HTTP or
	// unverified TLS; "*" means every registry.
	Insecure []string
	// Keychain resolves credentials; authn.DefaultKeychain when nil.
	Keychain authn.Keychain
	// Transport is the HTTP transport under authentication and retries;
	// a clone of http.DefaultTransport when nil.
	Transport http.RoundTripper
	// UserAgent, when set, is sent before image-rebase's own product
	// ("image-rebase/VERSION") in the User-Agent of every request.
	UserAgent string
	// Log, when set, receives one line per HTTP request (never
	// credentials or query strings).
	Log io.Writer
}

// Action says what a rebase did, or would do.
type Action string

// The actions of a Result.
const (
	// Rebased: the result was written and the target tag moved.
	Rebased Action = "rebased"
	// UpToDate: the image already sits on the new base; nothing written.
	UpToDate Action = "up-to-date"
	// WouldRebase: a plan (dry run) found a rebase due; nothing written.
	WouldRebase Action = "would-rebase"
	// Refused: Strict and the plan has warnings; nothing written.
	Refused Action = "refused"
)

// Result is what a rebase did, or, for a plan, would do.
type Result struct {
	Action Action `json:"action"`
	// Image names the image read; Target where the result goes.
	Image  string `json:"image"`
	Target string `json:"target"`
	// Before is the image's manifest digest, After the result's (Before
	// when up to date).
	Before string `json:"before"`
	After  string `json:"after"`
	// Replaced is the digest the target tag named before it moved, when
	// it existed; Backup the tag that keeps that image (BackupTag).
	Replaced string `json:"replaced,omitempty"`
	Backup   string `json:"backup,omitempty"`
	// OldBase and NewBase are the bases used, as resolved.
	OldBase Base `json:"oldBase"`
	NewBase Base `json:"newBase"`
	// DetectedBy is how the old base was found when From was not given:
	// "label", "annotation", "layers" or "history".
	DetectedBy string `json:"detectedBy,omitempty"`
	// Mounted counts the layers made available in the target without
	// moving bytes, Copied those whose bytes were copied (CopiedBytes).
	Mounted     int   `json:"mounted"`
	Copied      int   `json:"copied"`
	CopiedBytes int64 `json:"copiedBytes"`
	// Warnings are the hazards a rebuild would not have (see Strict).
	Warnings []Warning `json:"warnings,omitempty"`
	// Notes are facts worth knowing: a base matched by content, build
	// metadata dropped.
	Notes []string `json:"notes,omitempty"`
	// Plan is the plan of a single-platform image; each platform of a
	// multi-platform image has its own in Platforms.
	Plan      *Decisions       `json:"plan,omitempty"`
	Platforms []PlatformResult `json:"platforms,omitempty"`
}

// Base is a base image as a rebase used it.
type Base struct {
	// Ref is the base's reference; Digest its manifest digest (empty when
	// the old base was taken from the image's own bottom layers).
	Ref    string `json:"ref"`
	Digest string `json:"digest,omitempty"`
	// Layers counts its layers.
	Layers int `json:"layers"`
}

// Warning is a hazard of a rebase: a value of the config a rebuild could
// set otherwise, a RUN layer built on another OS release, signatures the
// rebase invalidates.
type Warning struct {
	// Code is a stable identifier, e.g. "workdir-moved".
	Code string `json:"code"`
	// Message explains it in one sentence.
	Message string `json:"message"`
}

// PlatformResult is the outcome for one platform of a multi-platform image.
type PlatformResult struct {
	// Platform is "os/arch[/variant]".
	Platform string     `json:"platform"`
	Action   Action     `json:"action"`
	Before   string     `json:"before"`
	After    string     `json:"after"`
	Plan     *Decisions `json:"plan,omitempty"`
}

// Decisions are the plan of one image's rebase: the layers removed, added
// and kept, the config decisions and the result's manifest.
type Decisions struct {
	// Removed are the old base's layers, Added the new base's, Kept the
	// image's own, in the result's order (Added, then Kept).
	Removed []Layer `json:"removed"`
	Added   []Layer `json:"added"`
	Kept    []Layer `json:"kept"`
	// Config lists the decisions on the image config, one a line, e.g.
	// "Env PATH: inherited, /usr/bin → /usr/local/bin:/usr/bin".
	Config []string `json:"config,omitempty"`
	// Manifest is the result's manifest digest.
	Manifest string `json:"manifest"`

	explain func(io.Writer)
}

// Layer is a layer of a plan.
type Layer struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	MediaType string `json:"mediaType"`
}

// String is the plan as "image-rebase --dry-run" prints it, one decision
// a line.
func (p *Decisions) String() string {
	if p == nil || p.explain == nil {
		return ""
	}
	var b strings.Builder
	p.explain(&b)
	return b.String()
}

// Rebase rebases image (a reference, see the package documentation) as
// opts say: it reads the image and both bases, plans the rebase and,
// unless the image is up to date or opts.DryRun is set, writes the result.
// A malformed reference or option fails before any request. On failure
// the error says what was written, if anything; a Result is returned too
// when the plan was made (Strict refusals).
func Rebase(ctx context.Context, image string, opts Options) (*Result, error) {
	host, plain := "", false
	if opts.Registry != "" {
		var err error
		if host, plain, err = registry.ParseRegistry(opts.Registry); err != nil {
			return nil, fmt.Errorf("imagerebase: Options.Registry: %w", err)
		}
	}
	ro := registry.Options{Keychain: opts.Keychain, Insecure: opts.Insecure, Transport: opts.Transport, Log: opts.Log,
		UserAgent: strings.TrimSpace(opts.UserAgent + " " + version.UserAgent())}
	if plain {
		ro.PlainHTTP = []string{host}
	}
	refs := &locate.Resolver{Registry: registry.New(ro), DefaultRegistry: host}
	defer refs.Close()
	req, err := refs.Request(locate.Spec{
		Image: image, From: opts.From, To: opts.To, Target: opts.Target, Label: opts.Label, Layers: opts.Layers,
		BackupTag: opts.BackupTag, Platforms: opts.Platforms,
		DryRun: opts.DryRun, Strict: opts.Strict, Force: opts.Force, AllowCopy: opts.AllowCopy,
		KeepOtherPlatforms: opts.KeepOtherPlatforms, KeepAttestations: opts.KeepAttestations, KeepLabel: opts.KeepLabel,
		CheckSignatures: opts.CheckSignatures,
	})
	if err != nil {
		var se *locate.SpecError
		if errors.As(err, &se) {
			field := "image"
			if se.Field != "Image" {
				field = "Options." + se.Field
			}
			return nil, fmt.Errorf("imagerebase: %s: %w", field, se.Err)
		}
		return nil, err
	}
	res, err := engine.Rebase(ctx, req)
	return fromEngine(res), err
}

// Plan says what Rebase would do with the same arguments, and writes
// nothing: Rebase with opts.DryRun set. The Result's Action is
// WouldRebase or UpToDate, and its Plan (or each platform's) holds the
// decisions.
func Plan(ctx context.Context, image string, opts Options) (*Result, error) {
	opts.DryRun = true
	return Rebase(ctx, image, opts)
}

// Version is the version of this module as built into the running
// program, as "image-rebase version" prints it: the version set at link
// time, else the module version Go records, else "devel".
func Version() string { return version.String() }

// fromEngine turns the engine's result into the package's.
func fromEngine(r *engine.Result) *Result {
	if r == nil {
		return nil
	}
	res := &Result{
		Action: Action(r.Action), Image: r.Image, Target: r.Target,
		Before: r.Before.String(), After: r.After.String(), Backup: r.Backup,
		OldBase: fromBaseRef(r.OldBase), NewBase: fromBaseRef(r.NewBase),
		Mounted: r.Transferred.Mounted, Copied: r.Transferred.Copied, CopiedBytes: r.Transferred.CopiedBytes,
		Plan: fromPlan(r.Plan),
	}
	if r.Replaced != nil {
		res.Replaced = r.Replaced.String()
	}
	if r.Detection != nil {
		res.DetectedBy = string(r.Detection.Method)
	}
	for _, w := range r.Warnings {
		res.Warnings = append(res.Warnings, Warning{Code: w.Code, Message: w.Message})
	}
	for _, n := range r.Notes {
		res.Notes = append(res.Notes, n.Message)
	}
	for _, p := range r.Platforms {
		res.Platforms = append(res.Platforms, PlatformResult{Platform: p.Platform, Action: Action(p.Action),
			Before: p.Before.String(), After: p.After.String(), Plan: fromPlan(p.Plan)})
	}
	return res
}

func fromBaseRef(b rebase.BaseRef) Base {
	out := Base{Ref: b.Ref, Layers: b.Layers}
	if b.Digest.Hex != "" {
		out.Digest = b.Digest.String()
	}
	return out
}

func fromPlan(p *rebase.Plan) *Decisions {
	if p == nil {
		return nil
	}
	out := &Decisions{Manifest: p.ManifestDescriptor.Digest.String(), explain: p.Explain}
	if p.UpToDate {
		out.Manifest = p.ImageDigest.String()
	}
	for _, c := range p.Changes {
		out.Config = append(out.Config, c.String())
	}
	for _, c := range p.KeptValues {
		out.Config = append(out.Config, c.String())
	}
	out.Removed, out.Added, out.Kept = layers(p.Removed), layers(p.Added), layers(p.Kept)
	return out
}

func layers(ds []v1.Descriptor) []Layer {
	out := make([]Layer, 0, len(ds))
	for _, d := range ds {
		out = append(out, Layer{Digest: d.Digest.String(), Size: d.Size, MediaType: string(d.MediaType)})
	}
	return out
}
