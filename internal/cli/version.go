package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/image-rebase/image-rebase/internal/version"
)

func newVersionCommand(stdout io.Writer) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version, VCS revision and Go version of this build",
		Long: `version prints the build's version (set at link time, or the module version Go
records), the VCS revision it was built from (+dirty for uncommitted changes),
and the Go toolchain and platform. The same version is in every -o json result
("version") and in the User-Agent of every registry request
(image-rebase/VERSION). --version prints the same line.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("version takes no arguments")
			}
			return nil
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(version.Get())
			}
			_, err := fmt.Fprintln(stdout, version.Get())
			return err
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef(err.Error()) })
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

// checkOutput refuses an -o value other than text and json.
func checkOutput(output string) error {
	if output != "text" && output != "json" {
		return usagef(fmt.Sprintf("invalid --output %q: want text or json", output))
	}
	return nil
}

// encodeJSON writes v, a value that encodes as a JSON object, as one
// object with the build's version first ("version"), indented or on one
// line.
func encodeJSON(w io.Writer, v any, indent bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) < 2 || b[0] != '{' {
		return fmt.Errorf("encoding %T: not a JSON object", v)
	}
	head, _ := json.Marshal(version.String())
	var out bytes.Buffer
	out.WriteString(`{"version":`)
	out.Write(head)
	if len(b) > 2 {
		out.WriteByte(',')
	}
	out.Write(b[1:])
	if indent {
		var ind bytes.Buffer
		if err := json.Indent(&ind, out.Bytes(), "", "  "); err != nil {
			return err
		}
		out = ind
	}
	out.WriteByte('\n')
	_, err = w.Write(out.Bytes())
	return err
}
