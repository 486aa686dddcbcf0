package registry

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The listings ask for no page size: the registry picks its own (a size
// over a registry's maximum is an error in Distribution), and the pages are
// followed through their Link headers.
const pageSize = 0

// Tags lists the repository's tags, every page of them.
func (r *Repo) Tags(ctx context.Context) ([]string, error) {
	opts, err := r.options(ctx)
	if err != nil {
		return nil, err
	}
	p, err := remote.NewPuller(append(opts, remote.WithPageSize(pageSize))...)
	if err != nil {
		return nil, err
	}
	tags, err := p.List(ctx, r.repo)
	if err != nil {
		return nil, &AccessError{Op: "listing tags of", Ref: r.repo.Name(), Err: err}
	}
	return tags, nil
}

// Repository returns a repository of registry reg ("host[:port]") by name.
// write asks for push access.
func (c *Client) Repository(reg, repo string, write bool) (*Repo, error) {
	loc, err := c.Parse(repo, reg, write)
	if err != nil {
		return nil, err
	}
	r, ok := loc.Repo.(*Repo)
	if !ok || loc.Tag != "latest" && loc.Tag != "" || loc.Digest != "" {
		return nil, fmt.Errorf("invalid repository %q", repo)
	}
	return r, nil
}

// CatalogScope asks, before the first request, for the right to list the
// repositories of registry reg, so that the registry's token covers it.
func (c *Client) CatalogScope(reg string) error {
	r, err := c.registry(reg)
	if err != nil {
		return err
	}
	c.addScope(r.RegistryStr(), r.Scope(""))
	return nil
}

// Catalog lists the repositories of registry reg ("host[:port]"), every
// page of them. Call CatalogScope first, before any other request to reg.
func (c *Client) Catalog(ctx context.Context, reg string) ([]string, error) {
	r, err := c.registry(reg)
	if err != nil {
		return nil, err
	}
	rt, err := c.transport(ctx, r)
	if err != nil {
		return nil, err
	}
	p, err := remote.NewPuller(remote.WithTransport(rt), remote.WithContext(ctx), remote.WithPageSize(pageSize))
	if err != nil {
		return nil, err
	}
	repos, err := p.Catalog(ctx, r)
	if err != nil {
		return nil, &AccessError{Op: "listing the repositories of", Ref: reg, Err: err}
	}
	return repos, nil
}

func (c *Client) registry(reg string) (name.Registry, error) {
	if !ValidHost(reg) {
		return name.Registry{}, fmt.Errorf("invalid registry %q: want host[:port]", reg)
	}
	var opts []name.Option
	if c.IsInsecure(reg) {
		opts = append(opts, name.Insecure)
	}
	r, err := name.NewRegistry(reg, opts...)
	if err != nil {
		return name.Registry{}, fmt.Errorf("invalid registry %q: %w", reg, err)
	}
	return r, nil
}
