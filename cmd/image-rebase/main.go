// Command image-rebase changes the base image of container images directly
// in the registry. See the README.
package main

import (
	"os"

	"github.com/image-rebase/image-rebase/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
