package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/image-rebase/image-rebase/internal/locate"
	"github.com/image-rebase/image-rebase/internal/registry"
	"github.com/image-rebase/image-rebase/internal/watch"
)

// watchFlags are the flags of the watch command; --config gives the same
// settings from a file.
type watchFlags struct {
	config       string
	bases        []string
	repos        []string
	listen       string
	poll         time.Duration
	refresh      time.Duration
	jobs         int
	label        string
	secretFile   string
	notify       string
	output       string
	allowCopy    bool
	strict       bool
	backupTag    string
	attempts     int
	drainTimeout time.Duration
	insecure     []string
	verbose      bool
	timeout      time.Duration
}

func newWatchCommand(stdout, stderr io.Writer) *cobra.Command {
	f := &watchFlags{}
	cmd := &cobra.Command{
		Use:   "watch [REGISTRY --base NAME:TAG...] [--config FILE] [--listen ADDR] [--poll D]",
		Short: "Keep images on their bases: rebase every dependent when a base tag moves",
		Long: `watch runs until stopped and keeps the images of REGISTRY on the current version
of the watched base tags. Its dependents index (the images on each base, found
by layers, annotations or label, as scan finds them) is built at start, again
every --refresh, and for a repository a push event names that it does not know.
When a base tag moves, every stale dependent is rebased onto it, -j at a time,
each as the single command would (nothing half-written, the lost-update check).

A move is noticed from registry notifications, POST /events (a Distribution
notification envelope, or a Harbor webhook; with --secret-file, requests must
carry "Authorization: Bearer <secret>"), and, with --poll D, by one HEAD request
per base tag every D (±10%). Both may be used at once.

GET /healthz answers 200 while running (503 while stopping); GET /metrics
serves Prometheus metrics. One log line per action on stdout (JSON with -o json).
SIGTERM or SIGINT stop accepting work; the rebases in flight finish within
--drain-timeout. Restart-safe: everything is read again from the registries.

--config FILE gives the same settings in YAML (keys: the flags in camelCase,
and "registries", a list of {registry, bases, repos}); a flag given on the
command line wins over the file. See docs/watch.md.`,
		Example: `  image-rebase watch registry.example.com --base base:stable --listen :8080
  image-rebase watch registry.example.com --base docker.io/library/debian:bookworm --poll 5m --allow-copy
  image-rebase watch --config /etc/image-rebase/watch.yaml -o json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef("want at most one REGISTRY; usage: image-rebase watch [REGISTRY --base NAME:TAG...] [--config FILE]")
			}
			return nil
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runWatch(cmd.Context(), f, cmd.Flags().Changed, args, stdout, stderr)
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef(err.Error()) })
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "read the settings from this YAML file (flags given win)")
	fl.StringArrayVar(&f.bases, "base", nil, "a base tag to watch in REGISTRY (repeatable; a full reference for a base in another registry)")
	fl.StringArrayVar(&f.repos, "repo", nil, "keep only this repository of REGISTRY on its bases (repeatable; default every repository)")
	fl.StringVar(&f.listen, "listen", ":8080", "serve /events, /healthz and /metrics on this address")
	fl.DurationVar(&f.poll, "poll", 0, "check each base tag with one HEAD request this often, ±10% (0: events only)")
	fl.DurationVar(&f.refresh, "refresh", 10*time.Minute, "build the dependents index again this often")
	fl.IntVarP(&f.jobs, "jobs", "j", 32, "rebase this many images at once")
	fl.StringVarP(&f.label, "label", "l", "", "the label that names an image's base (default FROM)")
	fl.StringVar(&f.secretFile, "secret-file", "", "require POST /events to carry Authorization: Bearer <this file's content>")
	fl.StringVar(&f.notify, "notify", "", "POST a JSON summary of each rebase round to this URL")
	fl.StringVarP(&f.output, "output", "o", "text", "log format: text or json (one object per line)")
	fl.BoolVar(&f.allowCopy, "allow-copy", false, "stream a layer registry to registry when it cannot be mounted (a base in another registry)")
	fl.BoolVar(&f.strict, "strict", false, "refuse a rebase whose plan has any warning")
	fl.StringVar(&f.backupTag, "backup-tag", "", "before moving a tag, tag the image it named with this template ({tag} is the tag)")
	fl.IntVar(&f.attempts, "attempts", 5, "attempts per image and round before it is reported failed (backoff 1s, doubling)")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", 25*time.Second, "on SIGTERM, how long the rebases in flight may take before they are cancelled")
	addConnectionFlags(cmd, &f.insecure, &f.verbose, &f.timeout)
	fl.Lookup("timeout").Usage = "give up one image's rebase attempt after this long"
	return cmd
}

func runWatch(ctx context.Context, f *watchFlags, changed func(string) bool, args []string, stdout, stderr io.Writer) error {
	if f.config != "" {
		data, err := os.ReadFile(f.config)
		if err != nil {
			return usagef(fmt.Sprintf("--config: %v", err))
		}
		file, err := watch.ParseFile(data)
		if err != nil {
			return usagef(fmt.Sprintf("--config %s: %v", f.config, err))
		}
		mergeWatchFile(f, file, changed)
		if len(args) == 0 && (len(f.bases) > 0 || len(f.repos) > 0) {
			return usagef("--base and --repo go with REGISTRY")
		}
		return startWatch(ctx, f, file.Registries, args, stdout, stderr)
	}
	return startWatch(ctx, f, nil, args, stdout, stderr)
}

// mergeWatchFile takes the file's settings that were not given as flags.
func mergeWatchFile(f *watchFlags, file *watch.File, changed func(string) bool) {
	str := func(name string, dst *string, v string) {
		if !changed(name) && v != "" {
			*dst = v
		}
	}
	dur := func(name string, dst *time.Duration, v time.Duration) {
		if !changed(name) && v != 0 {
			*dst = v
		}
	}
	num := func(name string, dst *int, v int) {
		if !changed(name) && v != 0 {
			*dst = v
		}
	}
	str("listen", &f.listen, file.Listen)
	str("label", &f.label, file.Label)
	str("secret-file", &f.secretFile, file.SecretFile)
	str("notify", &f.notify, file.Notify)
	str("output", &f.output, file.Output)
	str("backup-tag", &f.backupTag, file.BackupTag)
	dur("poll", &f.poll, file.Poll)
	dur("refresh", &f.refresh, file.Refresh)
	dur("timeout", &f.timeout, file.Timeout)
	dur("drain-timeout", &f.drainTimeout, file.DrainTimeout)
	num("jobs", &f.jobs, file.Jobs)
	num("attempts", &f.attempts, file.Attempts)
	f.allowCopy = f.allowCopy || file.AllowCopy
	f.strict = f.strict || file.Strict
	f.verbose = f.verbose || file.Verbose
	if !changed("insecure") {
		f.insecure = file.Insecure
	}
}

// startWatch checks the settings, then runs the watcher until a signal.
func startWatch(ctx context.Context, f *watchFlags, fromFile []watch.FileRegistry, args []string, stdout, stderr io.Writer) error {
	if f.output != "text" && f.output != "json" {
		return usagef(fmt.Sprintf("invalid --output %q: want text or json", f.output))
	}
	if f.jobs < 1 {
		return usagef(fmt.Sprintf("-j %d: want at least 1", f.jobs))
	}
	if f.poll < 0 || f.refresh <= 0 || f.attempts < 1 || f.drainTimeout <= 0 || f.timeout <= 0 {
		return usagef("--poll must not be negative; --refresh, --attempts, --drain-timeout and --timeout must be positive")
	}
	regs := slices.Clone(fromFile)
	if len(args) == 1 {
		if len(f.bases) == 0 {
			return usagef("REGISTRY needs --base NAME:TAG, the base tag to watch")
		}
		regs = append(regs, watch.FileRegistry{Registry: args[0], Bases: f.bases, Repos: f.repos})
	} else if len(f.bases) > 0 || len(f.repos) > 0 {
		return usagef("--base and --repo go with REGISTRY")
	}
	if len(regs) == 0 {
		return usagef("nothing to watch: give REGISTRY --base NAME:TAG, or --config FILE")
	}
	cfg := watch.Config{
		Jobs: f.jobs, Poll: f.poll, Refresh: f.refresh, Label: f.label, AllowCopy: f.allowCopy, Strict: f.strict,
		BackupTag: f.backupTag, Attempts: f.attempts, RebaseTimeout: f.timeout, Notify: f.notify, DrainTimeout: f.drainTimeout,
	}
	var plainHTTP []string
	for _, r := range regs {
		host, plain, err := classicRegistry(r.Registry)
		if err != nil {
			return err
		}
		if plain {
			plainHTTP = append(plainHTTP, host)
		}
		// The same registry named twice (file and command line) is one.
		if i := slices.IndexFunc(cfg.Registries, func(x watch.Registry) bool { return x.Host == host }); i >= 0 {
			cfg.Registries[i].Bases = append(cfg.Registries[i].Bases, r.Bases...)
			cfg.Registries[i].Repos = append(cfg.Registries[i].Repos, r.Repos...)
			continue
		}
		cfg.Registries = append(cfg.Registries, watch.Registry{Host: host, Bases: r.Bases, Repos: r.Repos})
	}
	if f.backupTag != "" && !locate.BareTag(strings.ReplaceAll(f.backupTag, "{tag}", "x")) {
		return usagef(fmt.Sprintf("--backup-tag %q does not make a tag", f.backupTag))
	}
	if f.notify != "" && !strings.HasPrefix(f.notify, "http://") && !strings.HasPrefix(f.notify, "https://") {
		return usagef(fmt.Sprintf("--notify %q: want an http:// or https:// URL", f.notify))
	}
	if f.secretFile != "" {
		b, err := os.ReadFile(f.secretFile)
		if err != nil {
			return usagef(fmt.Sprintf("--secret-file: %v", err))
		}
		if cfg.Secret = strings.TrimSpace(string(b)); cfg.Secret == "" {
			return usagef(fmt.Sprintf("--secret-file %s is empty", f.secretFile))
		}
	}
	opts := registry.Options{Insecure: f.insecure, PlainHTTP: plainHTTP}
	if f.verbose {
		opts.Log = stderr
	}
	cfg.NewClient = func() *registry.Client { return registry.New(opts) }
	if f.output == "json" {
		cfg.Logger = slog.New(slog.NewJSONHandler(stdout, nil))
	} else {
		cfg.Logger = slog.New(slog.NewTextHandler(stdout, nil))
	}
	w, err := watch.New(cfg)
	if err != nil {
		return usagef(err.Error())
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", f.listen, err)
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	return w.Run(ctx, ln)
}
