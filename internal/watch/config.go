package watch

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"go.yaml.in/yaml/v3"
)

// File is the watch configuration file (image-rebase watch --config FILE):
// the command line's settings, for many registries and bases. Keys are
// the flags' names in camelCase; durations are Go durations ("5m").
type File struct {
	// Registries are watched together with the REGISTRY --base ... of the
	// command line, if any.
	Registries []FileRegistry `yaml:"registries"`

	Listen       string        `yaml:"listen"`
	Poll         time.Duration `yaml:"poll"`
	Refresh      time.Duration `yaml:"refresh"`
	Jobs         int           `yaml:"jobs"`
	Label        string        `yaml:"label"`
	SecretFile   string        `yaml:"secretFile"`
	Notify       string        `yaml:"notify"`
	Output       string        `yaml:"output"`
	Insecure     []string      `yaml:"insecure"`
	AllowCopy    bool          `yaml:"allowCopy"`
	Strict       bool          `yaml:"strict"`
	BackupTag    string        `yaml:"backupTag"`
	Attempts     int           `yaml:"attempts"`
	Timeout      time.Duration `yaml:"timeout"`
	DrainTimeout time.Duration `yaml:"drainTimeout"`
	Verbose      bool          `yaml:"verbose"`
}

// FileRegistry is one registry of a File.
type FileRegistry struct {
	// Registry is "host[:port]", or "http://host[:port]" for plain HTTP.
	Registry string   `yaml:"registry"`
	Bases    []string `yaml:"bases"`
	Repos    []string `yaml:"repos"`
}

// ParseFile reads a configuration file. Unknown keys are errors, so that
// a misspelt setting is not silently ignored.
func ParseFile(data []byte) (*File, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	for i, r := range f.Registries {
		if r.Registry == "" {
			return nil, fmt.Errorf("registries[%d]: no registry", i)
		}
		if len(r.Bases) == 0 {
			return nil, fmt.Errorf("registries[%d] (%s): no bases", i, r.Registry)
		}
	}
	return &f, nil
}
