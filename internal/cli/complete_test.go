package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCompletion: the completion scripts, and what the hidden __complete
// command (which the scripts call) offers for references and flag values.
func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		code, out, stderr := run(t, "completion", shell)
		if code != 0 || !strings.Contains(out, "image-rebase") || len(out) < 1000 {
			t.Errorf("completion %s: exit %d, %d bytes, %s", shell, code, len(out), stderr)
		}
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "layout"), 0o755)
	os.MkdirAll(filepath.Join(dir, ".hidden"), 0o755)
	os.WriteFile(filepath.Join(dir, "layout", "index.json"), []byte(`{"schemaVersion":2,"manifests":[
		{"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"org.opencontainers.image.ref.name":"app"}},
		{"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"org.opencontainers.image.ref.name":"base-1"}},
		{"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"org.opencontainers.image.ref.name":"base-2"}}]}`), 0o644)
	os.WriteFile(filepath.Join(dir, "app.tar"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "layout.txt"), nil, 0o644)
	const (
		noSpaceNoFiles = ":6"
		noFiles        = ":4"
		files          = ":0"
	)
	for _, c := range []struct {
		args []string
		want []string // the candidates, then the directive
	}{
		{[]string{"o"}, []string{"oci:", "oci-archive:", noSpaceNoFiles}},
		{[]string{"reg.example.com/app:1"}, []string{noFiles}},
		{[]string{"oci:" + dir + "/"}, []string{"oci:" + dir + "/layout/", noSpaceNoFiles}},
		{[]string{"oci:" + dir + "/la"}, []string{"oci:" + dir + "/layout/", noSpaceNoFiles}},
		{[]string{"oci:" + dir + "/."}, []string{"oci:" + dir + "/.hidden/", noSpaceNoFiles}},
		{[]string{"oci:" + dir + "/layout:base"}, []string{"oci:" + dir + "/layout:base-1", "oci:" + dir + "/layout:base-2", noFiles}},
		{[]string{"docker-archive:" + dir + "/a"}, []string{"docker-archive:" + dir + "/app.tar", noSpaceNoFiles}},
		{[]string{"oci-archive:" + dir + "/la"}, []string{"oci-archive:" + dir + "/layout/", "oci-archive:" + dir + "/layout.txt", noSpaceNoFiles}},
		{[]string{"reg.example.com", "app:1", "--from-base", "oci:" + dir + "/layout:a"}, []string{"oci:" + dir + "/layout:app", noFiles}},
		{[]string{"app:1", "-t", "docker-a"}, []string{"docker-archive:", noSpaceNoFiles}},
		{[]string{"reg.example.com", "app:1", ""}, []string{noFiles}},
		{[]string{"app:1", "-o", ""}, []string{"text", "json", noFiles}},
		{[]string{"scan", "reg.example.com", "-o", "j"}, []string{"json", noFiles}},
		{[]string{"app:1", "--platform", "linux/arm"}, []string{"linux/arm64", "linux/arm/v7", "linux/arm/v6", noFiles}},
		{[]string{"batch", "--platform", "windows"}, []string{"windows/amd64", noFiles}},
		{[]string{"gitops", "--markers", "r"}, []string{"rebase", "rebase,imagepolicy", noFiles}},
		{[]string{"gitops", ""}, []string{files}},
		{[]string{"watch", "--config", ""}, []string{"yaml", "yml", ":8"}},
		{[]string{"batch", "-f", ""}, []string{files}},
		{[]string{"app:1", "-l", ""}, []string{noFiles}},
		{[]string{"app:1", "--insecure", ""}, []string{"oci:", "oci-archive:", "docker-archive:", noSpaceNoFiles}}, // --insecure takes no separate value: "" is REGISTRY or IMAGE
	} {
		code, out, stderr := run(t, append([]string{"__complete"}, c.args...)...)
		if got := strings.Fields(out); code != 0 || strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("%q: exit %d, %q (%s); want %q", c.args, code, got, stderr, c.want)
		}
	}
}
