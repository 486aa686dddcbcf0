package cli

import (
	"io"

	"github.com/spf13/cobra"

	"github.com/image-rebase/image-rebase/internal/demo"
)

func newDemoCommand(stdout, _ io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Rebase sample images in an in-process registry and show before and after",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return demo.Run(cmd.Context(), stdout)
		},
	}
}
