package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/image-rebase/image-rebase/internal/locate"
)

// Shell completion, through cobra's "completion" command: references
// (the local transports' prefixes, then the files after them and an OCI
// layout's tags), and the values of the flags that take a fixed set.

// localTransports are the prefixes of local references, completed first.
var localTransports = []string{locate.OCI, locate.OCIArchive, locate.DockerArchive}

// commonPlatforms are the platforms offered for --platform.
var commonPlatforms = []string{
	"linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/386",
	"linux/ppc64le", "linux/s390x", "linux/riscv64", "windows/amd64",
}

// completeReference completes an image reference: a local transport's
// prefix, then, after "oci:", a directory (and after "oci:DIR:" the
// layout's tags), after "oci-archive:" or "docker-archive:" a file or
// directory. A registry reference is not completed.
func completeReference(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	const partial = cobra.ShellCompDirectiveNoSpace | cobra.ShellCompDirectiveNoFileComp
	for _, t := range localTransports {
		rest, ok := strings.CutPrefix(toComplete, t)
		if !ok {
			continue
		}
		if path, tag, hasTag := strings.Cut(rest, ":"); hasTag {
			if t != locate.OCI {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return prefixed(t+path+":", layoutTags(path, tag)), cobra.ShellCompDirectiveNoFileComp
		}
		return prefixed(t, pathEntries(rest, t != locate.OCI)), partial
	}
	var out []cobra.Completion
	for _, t := range localTransports {
		if strings.HasPrefix(t, toComplete) && toComplete != t {
			out = append(out, t)
		}
	}
	if len(out) == 0 {
		// A registry reference, or a subcommand's name.
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return out, partial
}

// pathEntries lists the directories (with a trailing slash) and, when
// files is set, the files whose path starts with partial; hidden entries
// only when partial's last element starts with a dot.
func pathEntries(partial string, files bool) []string {
	dir, base := filepath.Split(partial)
	list := dir
	if list == "" {
		list = "."
	}
	entries, err := os.ReadDir(list)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, base) || (strings.HasPrefix(name, ".") && !strings.HasPrefix(base, ".")) {
			continue
		}
		isDir := e.IsDir()
		if e.Type()&os.ModeSymlink != 0 {
			if fi, err := os.Stat(filepath.Join(list, name)); err == nil {
				isDir = fi.IsDir()
			}
		}
		switch {
		case isDir:
			out = append(out, dir+name+"/")
		case files:
			out = append(out, dir+name)
		}
	}
	return out
}

// layoutTags returns the tags (org.opencontainers.image.ref.name) of the
// OCI layout at dir that start with partial.
func layoutTags(dir, partial string) []string {
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil
	}
	var idx struct {
		Manifests []struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if json.Unmarshal(b, &idx) != nil {
		return nil
	}
	var out []string
	for _, m := range idx.Manifests {
		if tag := m.Annotations["org.opencontainers.image.ref.name"]; tag != "" && strings.HasPrefix(tag, partial) && !slices.Contains(out, tag) {
			out = append(out, tag)
		}
	}
	return out
}

func prefixed(prefix string, list []string) []cobra.Completion {
	out := make([]cobra.Completion, len(list))
	for i, s := range list {
		out[i] = prefix + s
	}
	return out
}

// fixedValues completes a flag from a fixed list.
func fixedValues(values ...string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, v := range values {
			if strings.HasPrefix(v, toComplete) {
				out = append(out, v)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// noFiles completes nothing (registry names, numbers, durations).
func noFiles(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveNoFileComp
}

// registerCompletions sets the completion of cmd's arguments and of the
// flags it has among those completed from a fixed set or as references.
func registerCompletions(cmd *cobra.Command, args cobra.CompletionFunc) {
	if args != nil {
		cmd.ValidArgsFunction = args
	}
	flags := map[string]cobra.CompletionFunc{
		"output":    fixedValues("text", "json"),
		"platform":  fixedValues(commonPlatforms...),
		"markers":   fixedValues("rebase", "imagepolicy", "rebase,imagepolicy"),
		"from-base": completeReference,
		"to-base":   completeReference,
		"tag":       completeReference,
	}
	for _, name := range []string{"insecure", "label", "layers", "timeout", "jobs", "base", "repo", "registry", "all-tags",
		"backup-tag", "recheck-after", "listen", "poll", "refresh", "notify", "attempts", "drain-timeout"} {
		flags[name] = noFiles
	}
	for name, f := range flags {
		if cmd.Flags().Lookup(name) != nil {
			// Registering twice is the only error: each command's flags are
			// registered once.
			_ = cmd.RegisterFlagCompletionFunc(name, f)
		}
	}
	if cmd.Flags().Lookup("config") != nil {
		_ = cmd.MarkFlagFilename("config", "yaml", "yml")
	}
}
