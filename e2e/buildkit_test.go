package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The BuildKit corpus: images as users build them. Every case is built on
// base v1 and again on base v2, by BuildKit (buildctl against a buildkitd
// of this run) or by another tool (umoci, buildah --omit-history, a
// crane-style go-containerregistry mutation), and the v1 image is rebased
// to v2 by the binary in two modes:
//
//   - explicit: the image says LABEL FROM=<base>:1 and is rebased with
//     --from-base <base>:1 --to-base <base>:2; its rebuild is built FROM
//     <base>:2 with LABEL FROM=<base>:2, so the label must follow.
//   - auto: the image says LABEL FROM=<base>:stable; <base>:stable pointed
//     at v1 when it was built and is then moved to v2, as users do, before
//     `image-rebase HOST app:auto-v1`; its rebuild is the same Dockerfile
//     built after the move.
//
// The result is compared with the rebuild: config, history, file tree
// (umoci) and manifest shape (media types; skopeo must accept every
// document). The bases are testdata/fidelity's base-1 and base-2, built by
// BuildKit too. Dockerfiles name the base "localhost/fidelity-base" (as
// the fidelity corpus does); the harness replaces it with the registry's
// base and adds LABEL FROM=... as the first instruction after the last FROM.

// bkCase is one case of the BuildKit corpus.
type bkCase struct {
	name string
	// src is the case's build context under testdata (its Dockerfile, for
	// BuildKit and buildah; hello, for umoci and crane).
	src string
	// builder: "" (BuildKit), "umoci", "buildah" (bud --omit-history) or
	// "crane" (go-containerregistry mutate.AppendLayers + mutate.Config,
	// as crane append and crane mutate do: no history for the changes).
	builder string
	// base is the repository the label and the rebase name: "base" (a
	// BuildKit index: one platform and a provenance attestation), "mbase"
	// (two platforms and attestations), "zbase" (base re-compressed to
	// zstd by skopeo), "ubase" (base with uncompressed layers), "obase"
	// (a copy of base whose tag 1 is deleted), "mid" (built on base: a
	// chain base → mid → app) or "rbase" (base built reproducibly, with
	// SOURCE_DATE_EPOCH: both versions have the same created time).
	// zbase, ubase and obase hold the same layers (by diff_id) and configs
	// as base; the applications are built on base and rebased with these.
	base string
	// noAttest builds without the provenance attestation: one manifest.
	noAttest bool
	// opts are frontend options (--opt), output exporter attributes,
	// extra more buildctl flags.
	opts, output, extra []string
	// archive: the v1 image is exported by skopeo to a docker-archive
	// (docker save format) and rebased from that file into the registry.
	archive bool
	// annotate names the base by the manifest annotation
	// org.opencontainers.image.base.name (a full reference) instead of
	// LABEL FROM: BuildKit's annotation.* exporter attribute (what
	// buildx --annotation sets), or crane's base.name and base.digest
	// (crane append --set-base-image-annotations).
	annotate bool
	// archiveOut: the result is written to a new docker-archive (then
	// pushed by skopeo to be compared), instead of the registry.
	archiveOut bool
	// modes limits the modes the case runs in (default both).
	modes []string
	// keepAttestations rebases with --keep-attestations: an attestation
	// kept must describe a manifest of the result.
	keepAttestations bool
	// deleteOld deletes <base>:1 from the registry once the applications
	// are built: automatic mode must then find the old base's config
	// another way (the base's history, replayed).
	deleteOld bool
	// autoWarn lists more warning codes of automatic mode.
	autoWarn []string
	// warn lists the warning codes the rebase must raise besides
	// attestation-dropped, which every index with attestations raises.
	warn []string
	// differs lists the aspects that differ from the rebuild because of
	// the hazard a warning reports (or a documented limit).
	differs []string
	// differsIn: every line that differs in those aspects names one of
	// these (a variable, a label, a path), so that the expected
	// difference hides no other.
	differsIn []string
	// skip lists aspects that cannot be compared, with the reason in a
	// comment.
	skip []string
}

var bkCases = []bkCase{
	// Dockerfiles of the buildah corpus, built by BuildKit.
	// APPONLY=1 holds BASEVER's old value "1": BuildKit would record
	// APPONLY=$BASEVER the same way.
	{name: "env-override-append", src: "fidelity/env-override-append", warn: []string{"old-base-value-embedded"}},
	// BuildKit records ENV expanded: GREETING=from 1, JAVA_BIN=/opt/rt/1/bin.
	{name: "env-refers-base", src: "fidelity/env-refers-base", warn: []string{"old-base-value-embedded"}, differs: []string{"config", "history"}, differsIn: []string{"GREETING=", "JAVA_BIN=", "MSG="}},
	{name: "cmd-inherited", src: "fidelity/cmd-inherited"},
	{name: "entrypoint-resets-cmd", src: "fidelity/entrypoint-resets-cmd"},
	{name: "cmd-entrypoint-own", src: "fidelity/cmd-entrypoint-own"},
	{name: "workdir-absolute", src: "fidelity/workdir-absolute"},
	{name: "workdir-relative", src: "fidelity/workdir-relative", warn: []string{"workdir-moved"}, differs: []string{"tree"}, differsIn: []string{`"/srv":`, "/srv/app", "/srv2/app"}},
	{name: "expose-volume", src: "fidelity/expose-volume"},
	// LABEL app.built-on=$BASEVER is recorded as app.built-on=1.
	{name: "labels", src: "fidelity/labels", warn: []string{"old-base-value-embedded"}, differs: []string{"config", "history"}, differsIn: []string{"app.built-on"}},
	{name: "healthcheck-stopsignal", src: "fidelity/healthcheck-stopsignal"},
	// ENV FROMBASE=${BASEVER}-x is recorded as FROMBASE=1-x.
	{name: "arg", src: "fidelity/arg", warn: []string{"old-base-value-embedded"}, differs: []string{"config", "history"}, differsIn: []string{"FROMBASE="}},
	// BUILT=yes holds OLDONLY's old value "yes" (gone in v2): BuildKit
	// would record BUILT=$OLDONLY the same way.
	{name: "run", src: "fidelity/run", warn: []string{"old-base-value-embedded"}},
	{name: "run-inherited-workdir", src: "fidelity/run-inherited-workdir", warn: []string{"workdir-moved"}, differs: []string{"tree"}, differsIn: []string{`"/srv":`, "/built-here"}},
	{name: "multi-stage", src: "fidelity/multi-stage"},
	{name: "config-only", src: "fidelity/config-only"},
	{name: "onbuild-shell", src: "fidelity/onbuild-shell"},
	// ENV PATH=/app/bin:/usr/local/bin:/bin written out: BuildKit records
	// it as it records ENV PATH=/app/bin:$PATH, which the rebase assumes;
	// the rebuild keeps the literal value. JAVA_HOME=/opt/rt/1, the old
	// base's value, may be written out or inherited: a warning.
	{name: "literal-path", src: "fidelity/literal-path", warn: []string{"old-base-value-embedded"}, differs: []string{"config", "history"}, differsIn: []string{"PATH="}},
	{name: "user", src: "buildkit/user"},
	// LABEL FROM is not the first instruction after FROM: in automatic mode
	// the label's entry is not where the base ends (base:1's layers say
	// where), warned.
	{name: "label-late", src: "buildkit/label-late", autoWarn: []string{"label-not-first"}},
	// ENV values with spaces, quotes, escapes, empty, and the legacy
	// "ENV NAME value" form, beside a PATH the rebase rewrites.
	{name: "env-quoted", src: "buildkit/env-quoted"},
	// WORKDIR $JAVA_HOME/app is recorded as /opt/rt/1/app: the files and
	// the config stay there while a rebuild puts them under /opt/rt/2.
	{name: "workdir-from-env", src: "buildkit/workdir-from-env", warn: []string{"old-base-value-embedded"}, differs: []string{"config", "history", "tree"}, differsIn: []string{"/opt/rt/"}},
	{name: "typical", src: "buildkit/typical"},

	// Shapes of BuildKit output, on the typical Dockerfile.
	{name: "single-manifest", src: "buildkit/typical", noAttest: true},
	{name: "two-platforms", src: "buildkit/typical", base: "mbase", opts: []string{"platform=linux/amd64,linux/arm64"}},
	// An attestation kept describes the old build: it must not name a
	// manifest the result no longer has (it is kept detached, warned).
	{name: "keep-attestations", src: "buildkit/typical", keepAttestations: true, warn: []string{"attestation-detached"}},
	// BuildKit refuses attestations with Docker media types.
	{name: "docker-mediatypes", src: "buildkit/typical", noAttest: true, output: []string{"oci-mediatypes=false"}},
	{name: "docker-two-platforms", src: "buildkit/typical", base: "mbase", noAttest: true, opts: []string{"platform=linux/amd64,linux/arm64"}, output: []string{"oci-mediatypes=false"}},
	{name: "zstd", src: "buildkit/typical", output: []string{"compression=zstd", "force-compression=true"}},
	{name: "uncompressed", src: "buildkit/typical", output: []string{"compression=uncompressed", "force-compression=true"}},
	{name: "inline-cache", src: "buildkit/typical", extra: []string{"--export-cache", "type=inline"}},
	// The bases re-compressed after the application was built.
	{name: "zstd-base", src: "buildkit/typical", base: "zbase"},
	{name: "uncompressed-base", src: "buildkit/typical", base: "ubase"},
	// A chain: mid is built on base (with its own LABEL FROM=base:N), the
	// application on mid with LABEL FROM=mid:N; mid moves from base 1 to 2.
	{name: "chain", src: "buildkit/chain", base: "mid"},
	// Reproducible builds: the base versions and the application all have
	// the created time of SOURCE_DATE_EPOCH.
	{name: "reproducible", src: "buildkit/typical", base: "rbase", opts: reproducible.opts, output: reproducible.output},
	// The old base is gone from the registry (obase is a copy of base
	// whose tag 1 is deleted after the build): only automatic mode can
	// run, from what the image records.
	{name: "old-base-deleted", src: "buildkit/typical", base: "obase", deleteOld: true, modes: []string{"auto"}},
	// A docker save archive of the application (skopeo's docker-archive:),
	// rebased onto registry bases into the registry, or into a new archive
	// (pushed by skopeo to be compared). skopeo writes Docker schema 2 with
	// uncompressed layers: the manifest cannot match the rebuild's index.
	// Not named docker-archive: "docker-archive:TAG" names an archive file.
	{name: "docker-save", src: "buildkit/typical", archive: true, skip: []string{"manifest"}},
	{name: "docker-save-out", src: "buildkit/typical", archive: true, archiveOut: true, skip: []string{"manifest"}},

	// Images not built from a Dockerfile.
	{name: "umoci", src: "buildkit/typical", builder: "umoci"},
	{name: "buildah-omit-history", src: "buildkit/typical", builder: "buildah"},
	{name: "crane", src: "buildkit/typical", builder: "crane"},

	// The base named by annotations, not by a label.
	{name: "buildkit-annotation", src: "buildkit/typical", annotate: true},
	{name: "crane-annotations", src: "buildkit/typical", builder: "crane", annotate: true},
}

// The OCI annotations that name an image's base.
const (
	baseNameAnnotation   = "org.opencontainers.image.base.name"
	baseDigestAnnotation = "org.opencontainers.image.base.digest"
)

// bkBaseRepos are the base repositories, each with tags 1, 2 and stable.
var bkBaseRepos = []string{"base", "mbase", "zbase", "ubase", "obase", "mid", "rbase"}

// reproducible are the build options of a reproducible build: every
// timestamp is SOURCE_DATE_EPOCH.
var reproducible = struct{ opts, output []string }{
	[]string{"build-arg:SOURCE_DATE_EPOCH=1700000000"}, []string{"rewrite-timestamp=true"},
}

// bkEnv is what the corpus shares: one registry, one buildkitd.
type bkEnv struct {
	r        *registryServer
	bk       *buildkitDaemon
	remote   []remote.Option
	archives map[string]string // repo:tag → docker-archive file

	mu      sync.Mutex
	results map[string]map[string]string // case → mode → summary
	configs map[string]string            // repoTag + " " + arch → raw config; "manifest " + ref → raw manifest
}

// manifest is r.inspect (skopeo inspect --raw: skopeo checks the
// document), read once per reference, like config.
func (e *bkEnv) manifest(t *testing.T, ref string) string {
	t.Helper()
	key := "manifest " + ref
	e.mu.Lock()
	raw, ok := e.configs[key]
	e.mu.Unlock()
	if !ok {
		raw = e.r.inspect(t, ref)
		e.mu.Lock()
		e.configs[key] = raw
		e.mu.Unlock()
	}
	return raw
}

// config is r.configArch, read once per image: an image is read only
// once it is final (a rebase result after the rebase).
func (e *bkEnv) config(t *testing.T, repoTag, arch string) string {
	t.Helper()
	key := repoTag + " " + arch
	e.mu.Lock()
	raw, ok := e.configs[key]
	e.mu.Unlock()
	if !ok {
		raw = e.r.configArch(t, repoTag, arch)
		e.mu.Lock()
		e.configs[key] = raw
		e.mu.Unlock()
	}
	return raw
}

func (c bkCase) baseRepo() string {
	if c.base == "" {
		return "base"
	}
	return c.base
}

// buildRepo is the repository the case is built FROM.
func (c bkCase) buildRepo() string {
	switch c.base {
	case "mbase", "mid", "rbase":
		return c.base
	}
	return "base"
}

func (c bkCase) arches() []string {
	if c.base == "mbase" {
		return []string{"amd64", "arm64"}
	}
	return []string{"amd64"}
}

// label is the value of LABEL FROM for a base tag: relative to the
// registry, or a full reference for an archive (which has no registry) or
// an annotation.
func (e *bkEnv) label(c bkCase, tag string) string {
	if c.archive || c.annotate {
		return e.r.Host + "/" + c.baseRepo() + ":" + tag
	}
	return c.baseRepo() + ":" + tag
}

func TestBuildKit(t *testing.T) {
	need(t, "skopeo", "umoci", "buildah", "docker-registry", "htpasswd", "runc")
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("busybox-static is required in CI: %v", err)
		}
		t.Skipf("no /bin/busybox (apt-get install busybox-static): %v", err)
	}
	// E2E_BUILDKIT_CASES=a,b limits the corpus to those cases (bases are
	// always built), to iterate on a few.
	cases := bkCases
	if only := os.Getenv("E2E_BUILDKIT_CASES"); only != "" {
		names := strings.Split(only, ",")
		cases = slices.DeleteFunc(slices.Clone(bkCases), func(c bkCase) bool { return !slices.Contains(names, c.name) })
		if len(cases) == 0 {
			t.Fatalf("E2E_BUILDKIT_CASES=%s names no case", only)
		}
	}
	start := time.Now()
	r := startRegistry(t)
	e := &bkEnv{r: r, bk: startBuildkit(t, r), remote: r.remoteOptions(t), archives: map[string]string{}, results: map[string]map[string]string{}, configs: map[string]string{}}
	if path := os.Getenv("E2E_BUILDKIT_REPORT"); path != "" {
		t.Cleanup(func() { e.writeReport(t, path, time.Since(start)) })
	}

	// Bases: base (index with attestation), mbase (two platforms) and
	// rbase (reproducible), both versions, then mid on base, then the
	// copies of base. Version by version: v2 is created after v1, as a patched base is
	// (automatic mode compares creation times).
	for _, v := range []string{"1", "2"} {
		ctx := e.context(t, filepath.Join(fidelityDir, "base-"+v), map[string]string{"busybox": string(busybox)})
		runJobs(t, 3, []func() error{
			func() error {
				return e.bk.build(ctx, "base:"+v, []string{"attest:provenance=mode=min"}, nil, nil)
			},
			func() error {
				return e.bk.build(ctx, "mbase:"+v, []string{"attest:provenance=mode=min", "platform=linux/amd64,linux/arm64"}, nil, nil)
			},
			func() error {
				return e.bk.build(ctx, "rbase:"+v, append([]string{"attest:provenance=mode=min"}, reproducible.opts...), reproducible.output, nil)
			}})
	}
	for _, v := range []string{"1", "2"} {
		src := filepath.Join(fidelityDir, "chain")
		ctx := e.context(t, src, nil)
		write(t, filepath.Join(ctx, "Dockerfile"), []byte(dockerfile(t, readFile(t, filepath.Join(src, "mid.Dockerfile")), r.Host+"/base:"+v, "base:"+v)))
		runJobs(t, 1, []func() error{func() error {
			return e.bk.build(ctx, "mid:"+v, []string{"attest:provenance=mode=min"}, nil, nil)
		}})
	}
	var jobs []func() error
	for _, v := range []string{"1", "2"} {
		jobs = append(jobs,
			func() error {
				_, err := runErr("skopeo", "copy", "-q", "--src-cert-dir", r.CertDir, "--src-creds", r.creds(), "--dest-cert-dir", r.CertDir, "--dest-creds", r.creds(),
					"--dest-compress-format", "zstd", "docker://"+r.Host+"/base:"+v, "docker://"+r.Host+"/zbase:"+v)
				return err
			},
			// skopeo 1.9 compresses every layer it pushes to a registry
			// (--dest-decompress is for dir: only), so the uncompressed
			// copy is written with go-containerregistry.
			func() error { return e.uncompressedCopy("base:"+v, "ubase:"+v) })
	}
	runJobs(t, 4, jobs)
	for _, v := range []string{"1", "2"} {
		e.retag(t, "base:"+v, "obase:"+v)
	}
	for _, repo := range bkBaseRepos {
		e.retag(t, repo+":1", repo+":stable")
	}
	t.Logf("bases built in %s", time.Since(start).Round(time.Second))

	// Applications on v1 (explicit and auto), and the explicit rebuilds.
	jobs = nil
	// A case's builds one after the other: they push to one repository,
	// and the registry under test fails some concurrent writes there.
	for _, c := range cases {
		steps := []func() error{
			e.appJob(t, c, "1", "1", "v1"),
			e.appJob(t, c, "2", "2", "rebuild"),
			e.appJob(t, c, "stable", "stable", "auto-v1"),
		}
		jobs = append(jobs, func() error {
			for _, step := range steps {
				if err := step(); err != nil {
					return err
				}
			}
			return nil
		})
	}
	runJobs(t, 3, jobs)
	// The base tags move to v2; the auto rebuilds follow them.
	for _, c := range cases {
		if c.deleteOld {
			r.deleteTagged(t, c.baseRepo()+":1")
		}
	}
	for _, repo := range bkBaseRepos {
		e.retag(t, repo+":2", repo+":stable")
	}
	jobs = nil
	for _, c := range cases {
		jobs = append(jobs, e.appJob(t, c, "stable", "stable", "auto-rebuild"))
	}
	runJobs(t, 3, jobs)
	for _, c := range cases {
		if c.archive {
			for _, tag := range []string{"v1", "auto-v1"} {
				file := filepath.Join(t.TempDir(), "app.tar")
				r.export(t, c.name+":"+tag, "docker-archive:"+file+":"+c.name+":"+tag)
				e.archives[c.name+":"+tag] = file
			}
		}
	}
	t.Logf("corpus built and pushed in %s", time.Since(start).Round(time.Second))

	for _, c := range cases {
		// Cases run in parallel, a case's modes one after the other: they
		// write to the same repository, and the registry under test fails
		// some manifest PUTs while another request links the same blob
		// there (TestConcurrentRebasesInOneRepository).
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			for _, mode := range []string{"explicit", "auto"} {
				if c.modes != nil && !slices.Contains(c.modes, mode) {
					continue
				}
				t.Run(mode, func(t *testing.T) { e.check(t, c, mode) })
			}
		})
	}
}

// runJobs runs jobs, n at a time, and fails the test with every error.
func runJobs(t *testing.T, n int, jobs []func() error) {
	t.Helper()
	sem := make(chan struct{}, n)
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = j()
		}()
	}
	wg.Wait()
	var failed bool
	for _, err := range errs {
		if err != nil {
			t.Error(err)
			failed = true
		}
	}
	if failed {
		t.FailNow()
	}
}

// runErr runs a tool and returns its stdout, or an error with its output.
func runErr(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

// context copies a build context to a new directory, with extra files.
func (e *bkEnv) context(t *testing.T, src string, extra map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range caseFiles(t, src, extra) {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		// Executable, as buildImage writes them: busybox must run.
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if df, err := os.ReadFile(filepath.Join(src, "Dockerfile")); err == nil {
		write(t, filepath.Join(dir, "Dockerfile"), df)
	}
	return dir
}

// dockerfile names from in every FROM of the corpus's base and adds
// LABEL FROM=label after the last one (none when label is empty), or puts
// label where the Dockerfile says {{LABEL}}.
func dockerfile(t *testing.T, src, from, label string) string {
	t.Helper()
	lines := strings.Split(src, "\n")
	last := -1
	for i, l := range lines {
		if rest, ok := strings.CutPrefix(l, "FROM localhost/fidelity-base"); ok {
			lines[i] = "FROM " + from + rest
			last = i
		}
	}
	if strings.Contains(src, "{{LABEL}}") {
		if last < 0 {
			t.Fatalf("no FROM localhost/fidelity-base in the Dockerfile:\n%s", src)
		}
		return strings.ReplaceAll(strings.Join(lines, "\n"), "{{LABEL}}", label)
	}
	if last < 0 {
		t.Fatalf("no FROM localhost/fidelity-base in the Dockerfile:\n%s", src)
	}
	if label == "" {
		return strings.Join(lines, "\n")
	}
	return strings.Join(slices.Insert(lines, last+1, "LABEL FROM="+label), "\n")
}

// appJob returns the job that builds case c FROM its base at baseTag with
// LABEL FROM naming labelTag, pushed as c.name:dest.
func (e *bkEnv) appJob(t *testing.T, c bkCase, baseTag, labelTag, dest string) func() error {
	t.Helper()
	src := filepath.Join("testdata", c.src)
	from := e.r.Host + "/" + c.buildRepo() + ":" + baseTag
	label := e.label(c, labelTag)
	repoTag := c.name + ":" + dest
	// hello names the case: cases that share a Dockerfile make distinct
	// images (the registry under test fails some concurrent writes of the
	// same blob, see TestConcurrentRebasesInOneRepository).
	var extra map[string]string
	if b, err := os.ReadFile(filepath.Join(src, "hello")); err == nil {
		extra = map[string]string{"hello": string(b) + c.name + "\n"}
	}
	ctx := e.context(t, src, extra)
	switch c.builder {
	case "":
		output := c.output
		if c.annotate {
			output = append(slices.Clone(output), "annotation."+baseNameAnnotation+"="+label)
			label = ""
		}
		write(t, filepath.Join(ctx, "Dockerfile"), []byte(dockerfile(t, readFile(t, filepath.Join(src, "Dockerfile")), from, label)))
		opts := slices.Clone(c.opts)
		if !c.noAttest {
			opts = append(opts, "attest:provenance=mode=min")
		}
		return func() error { return e.bk.build(ctx, repoTag, opts, output, c.extra) }
	case "buildah":
		write(t, filepath.Join(ctx, "Dockerfile"), []byte(dockerfile(t, readFile(t, filepath.Join(src, "Dockerfile")), from, label)))
		return func() error { return e.buildahOmitHistory(ctx, repoTag) }
	case "umoci":
		return func() error { return e.umociApp(ctx, from, label, repoTag) }
	case "crane":
		hello := readFile(t, filepath.Join(ctx, "hello"))
		return func() error { return e.craneApp(from, label, c.annotate, hello, repoTag) }
	}
	t.Fatalf("unknown builder %q", c.builder)
	return nil
}

// buildahOmitHistory builds with buildah bud --omit-history (no history in
// the config, the base's included) and pushes the result. Each build has
// its own storage: in a shared one, base:1 and base:stable (the same
// image then) would be one image with two names, and buildah's
// org.opencontainers.image.base.name annotation would name either.
func (e *bkEnv) buildahOmitHistory(ctx, repoTag string) error {
	r := e.r
	local := "localhost/bk-" + strings.NewReplacer(":", "-").Replace(repoTag)
	root := ctx + "-storage" // beside the context, removed with it
	common := []string{"--storage-driver", "vfs", "--root", root, "--runroot", root + "-run"}
	if _, err := runErr("buildah", append(common, "bud", "--isolation", "chroot", "--pull=always", "--omit-history", "--format", "oci",
		"--cert-dir", r.CertDir, "--creds", r.creds(), "-t", local, ctx)...); err != nil {
		return err
	}
	_, err := runErr("buildah", append(common, "push", "--cert-dir", r.CertDir, "--creds", r.creds(), "--format", "oci", local, "docker://"+r.Host+"/"+repoTag)...)
	return err
}

// umociApp is an image made without a Dockerfile: the base copied to an
// OCI layout, a file inserted, the config changed, pushed by skopeo.
func (e *bkEnv) umociApp(ctx, from, label, repoTag string) error {
	r := e.r
	layout := filepath.Join(ctx, "layout")
	steps := [][]string{
		{"skopeo", "copy", "-q", "--src-cert-dir", r.CertDir, "--src-creds", r.creds(), "docker://" + from, "oci:" + layout + ":base"},
		{"umoci", "insert", "--image", layout + ":base", "--tag", "app", filepath.Join(ctx, "hello"), "/app/hello"},
		{"umoci", "config", "--image", layout + ":app", "--config.label", "FROM=" + label, "--config.env", "APP=umoci",
			"--config.workingdir", "/app", "--config.cmd", "/bin/busybox", "--config.cmd", "cat", "--config.cmd", "/app/hello"},
		{"skopeo", "copy", "-q", "--dest-cert-dir", r.CertDir, "--dest-creds", r.creds(), "oci:" + layout + ":app", "docker://" + r.Host + "/" + repoTag},
	}
	for _, s := range steps {
		if _, err := runErr(s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// craneApp is what crane append and crane mutate make: a layer appended
// by go-containerregistry (a blank history entry) and a config changed
// with no history entry at all.
func (e *bkEnv) craneApp(from, label string, annotate bool, hello, repoTag string) error {
	ref, err := name.ParseReference(from)
	if err != nil {
		return err
	}
	base, err := remote.Image(ref, append(e.remote, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))...)
	if err != nil {
		return fmt.Errorf("crane: reading %s: %w", from, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	tw.WriteHeader(&tar.Header{Name: "app/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime})
	tw.WriteHeader(&tar.Header{Name: "app/hello", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(hello)), ModTime: mtime})
	tw.Write([]byte(hello))
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil }, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg := *cf.Config.DeepCopy()
	if !annotate {
		cfg.Labels = maps.Clone(cfg.Labels)
		if cfg.Labels == nil {
			cfg.Labels = map[string]string{}
		}
		cfg.Labels["FROM"] = label
	}
	cfg.Env = append(slices.Clone(cfg.Env), "APP=crane")
	cfg.Cmd = []string{"/bin/busybox", "cat", "/app/hello"}
	if img, err = mutate.Config(img, cfg); err != nil {
		return err
	}
	if annotate {
		d, err := base.Digest()
		if err != nil {
			return err
		}
		img = mutate.Annotations(img, map[string]string{baseNameAnnotation: label, baseDigestAnnotation: d.String()}).(v1.Image)
	}
	dest, err := name.ParseReference(e.r.Host + "/" + repoTag)
	if err != nil {
		return err
	}
	return remote.Write(dest, img, e.remote...)
}

// rawManifest is a manifest to put as it is.
type rawManifest struct {
	raw []byte
	mt  types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.raw, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }

// uncompressedCopy copies the linux/amd64 image of src to dest with every
// layer uncompressed (application/vnd.oci.image.layer.v1.tar), the config
// byte for byte.
func (e *bkEnv) uncompressedCopy(src, dest string) error {
	sref, err := name.ParseReference(e.r.Host + "/" + src)
	if err != nil {
		return err
	}
	dref, err := name.ParseReference(e.r.Host + "/" + dest)
	if err != nil {
		return err
	}
	img, err := remote.Image(sref, append(e.remote, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))...)
	if err != nil {
		return err
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if err := remote.WriteLayer(dref.Context(), static.NewLayer(cfg, m.Config.MediaType), e.remote...); err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	out := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Config: m.Config}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		ul := static.NewLayer(b, types.OCIUncompressedLayer)
		if err := remote.WriteLayer(dref.Context(), ul, e.remote...); err != nil {
			return err
		}
		d, _ := ul.Digest()
		out.Layers = append(out.Layers, v1.Descriptor{MediaType: types.OCIUncompressedLayer, Digest: d, Size: int64(len(b))})
	}
	raw, err := json.Marshal(out)
	if err != nil {
		return err
	}
	return remote.Put(dref, rawManifest{raw, types.OCIManifestSchema1}, e.remote...)
}

// retag points tag at the manifest (or index) from names, byte for byte,
// in the same repository or another.
func (e *bkEnv) retag(t *testing.T, from, tag string) {
	t.Helper()
	src, err := name.ParseReference(e.r.Host + "/" + from)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(src, e.remote...)
	if err != nil {
		t.Fatalf("reading %s: %v", from, err)
	}
	dst, err := name.NewTag(e.r.Host + "/" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if dst.Context() == src.Context() {
		err = remote.Tag(dst, desc, e.remote...)
	} else if desc.MediaType.IsIndex() {
		// Another repository: its blobs and child manifests first.
		var idx v1.ImageIndex
		if idx, err = desc.ImageIndex(); err == nil {
			err = remote.WriteIndex(dst, idx, e.remote...)
		}
	} else {
		var img v1.Image
		if img, err = desc.Image(); err == nil {
			err = remote.Write(dst, img, e.remote...)
		}
	}
	if err != nil {
		t.Fatalf("tagging %s as %s: %v", from, tag, err)
	}
}

// remoteOptions are go-containerregistry options for r: its CA and
// credentials.
func (r *registryServer) remoteOptions(t *testing.T) []remote.Option {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(readFile(t, r.CAFile)))
	tr := remote.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	return []remote.Option{remote.WithTransport(tr), remote.WithAuth(&authn.Basic{Username: r.User, Password: r.Pass})}
}

// configArch returns the raw config of repoTag's image for linux/arch.
func (r *registryServer) configArch(t *testing.T, repoTag, arch string) string {
	t.Helper()
	return run(t, "skopeo", "--override-os", "linux", "--override-arch", arch, "inspect", "--config", "--raw", "--cert-dir", r.CertDir, "--creds", r.creds(), "docker://"+r.Host+"/"+repoTag)
}

// shape describes repoTag's manifest as skopeo reads it: an index's media
// type and its platform manifests (attestations aside), and for each
// manifest its media type, config media type and layer media-type family.
// layers gets the layer media types, for the log.
func (e *bkEnv) shape(t *testing.T, repoTag string, layers map[string][]string) map[string]any {
	t.Helper()
	var doc struct {
		MediaType string `json:"mediaType"`
		Manifests []struct {
			Digest   string `json:"digest"`
			Platform struct {
				OS           string `json:"os"`
				Architecture string `json:"architecture"`
			} `json:"platform"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
		Config struct {
			MediaType string `json:"mediaType"`
		} `json:"config"`
		Layers []struct {
			MediaType string `json:"mediaType"`
		} `json:"layers"`
	}
	raw := e.manifest(t, repoTag)
	if err := json.Unmarshal([]byte(raw), &doc); err != nil {
		t.Fatalf("%s: %v", repoTag, err)
	}
	repo, _, _ := strings.Cut(repoTag, ":")
	if len(doc.Manifests) > 0 {
		out := map[string]any{"index": doc.MediaType}
		for _, m := range doc.Manifests {
			if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
				continue
			}
			out[m.Platform.OS+"/"+m.Platform.Architecture] = e.shape(t, repo+"@"+m.Digest, layers)
		}
		return out
	}
	var families, mts []string
	for _, l := range doc.Layers {
		mts = append(mts, l.MediaType)
		f := l.MediaType
		switch {
		case strings.HasPrefix(f, "application/vnd.oci."):
			f = "oci"
		case strings.HasPrefix(f, "application/vnd.docker."):
			f = "docker"
		}
		if !slices.Contains(families, f) {
			families = append(families, f)
		}
	}
	if layers != nil {
		layers[repoTag] = mts
	}
	return map[string]any{"manifest": doc.MediaType, "config": doc.Config.MediaType, "layers": families}
}

// manifestAnnotations returns the annotations of repoTag's manifest for
// linux/arch (the platform's manifest of an index).
func (e *bkEnv) manifestAnnotations(t *testing.T, repoTag, arch string) map[string]string {
	t.Helper()
	raw := e.manifest(t, repoTag)
	var doc struct {
		Manifests []struct {
			Digest   string `json:"digest"`
			Platform struct {
				OS           string `json:"os"`
				Architecture string `json:"architecture"`
			} `json:"platform"`
		} `json:"manifests"`
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal([]byte(raw), &doc); err != nil {
		t.Fatalf("%s: %v", repoTag, err)
	}
	for _, m := range doc.Manifests {
		if m.Platform.OS == "linux" && m.Platform.Architecture == arch {
			repo, _, _ := strings.Cut(repoTag, ":")
			return e.manifestAnnotations(t, repo+"@"+m.Digest, arch)
		}
	}
	return doc.Annotations
}

// attestations counts an index's attestation manifests.
func (e *bkEnv) attestations(t *testing.T, repoTag string) int {
	t.Helper()
	var idx struct {
		Manifests []struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	json.Unmarshal([]byte(e.manifest(t, repoTag)), &idx)
	n := 0
	for _, m := range idx.Manifests {
		if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
			n++
		}
	}
	return n
}

// staleAttestations lists the vnd.docker.reference.digest values of an
// index's attestation manifests that name no manifest of the index (an
// attestation without one, detached, names none).
func (e *bkEnv) staleAttestations(t *testing.T, repoTag string) []string {
	t.Helper()
	var idx struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	json.Unmarshal([]byte(e.manifest(t, repoTag)), &idx)
	present := map[string]bool{}
	for _, m := range idx.Manifests {
		present[m.Digest] = true
	}
	var stale []string
	for _, m := range idx.Manifests {
		if ref := m.Annotations["vnd.docker.reference.digest"]; m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" && ref != "" && !present[ref] {
			stale = append(stale, ref)
		}
	}
	return stale
}

// historyShape renders a config's history on one line: created_by,
// comment and the empty_layer flag of each entry, for the log.
func historyShape(t *testing.T, raw string) string {
	t.Helper()
	var c struct {
		History []struct {
			CreatedBy  string `json:"created_by"`
			Comment    string `json:"comment"`
			EmptyLayer bool   `json:"empty_layer"`
		} `json:"history"`
	}
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, h := range c.History {
		p := fmt.Sprintf("%q", h.CreatedBy)
		if h.Comment != "" {
			p += " #" + h.Comment
		}
		if h.EmptyLayer {
			p += " (empty)"
		}
		parts = append(parts, p)
	}
	return fmt.Sprintf("%d entries: %s", len(parts), strings.Join(parts, ", "))
}

// bkConfig is normalConfig without BuildKit's inline cache record (the
// rebuild has its own; the rebased image is checked to have none).
func bkConfig(t *testing.T, raw string) any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "moby.buildkit.cache.v0")
	b, _ := json.Marshal(m)
	return normalConfig(t, string(b))
}

func diffIDs(t *testing.T, raw string) []string {
	t.Helper()
	var c struct {
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatal(err)
	}
	return c.RootFS.DiffIDs
}

type bkResult struct {
	Action    string
	Warnings  []struct{ Code, Message string }
	Detection struct {
		Method  string
		Reasons []string
	} `json:"detection"`
}

// check rebases case c in mode and compares the result with the rebuild.
func (e *bkEnv) check(t *testing.T, c bkCase, mode string) {
	r := e.r
	var notes []string
	fail := func(fatal bool, format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		notes = append(notes, msg)
		t.Error(msg)
		if fatal {
			t.FailNow()
		}
	}
	var summary string
	defer func() {
		status := "pass"
		if t.Failed() {
			status = "FAIL"
			if len(notes) == 0 {
				notes = append(notes, "harness failure, see the test log")
			}
		}
		line := status
		if summary != "" {
			line += " (" + summary + ")"
		}
		if len(notes) > 0 {
			line += ": " + strings.Join(notes, " | ")
		}
		e.mu.Lock()
		if e.results[c.name] == nil {
			e.results[c.name] = map[string]string{}
		}
		e.results[c.name][mode] = line
		e.mu.Unlock()
	}()

	image, rebuilt, rebased := c.name+":v1", c.name+":rebuild", c.name+":rebased"
	if mode == "auto" {
		image, rebuilt, rebased = c.name+":auto-v1", c.name+":auto-rebuild", c.name+":auto-rebased"
	}
	var args []string
	// From an archive to a registry the application's layers must be
	// uploaded: --allow-copy. To an archive: -t docker-archive:OUT:NAME:TAG.
	target := []string{"-t", r.Host + "/" + rebased, "--allow-copy"}
	outFile := filepath.Join(t.TempDir(), "out.tar")
	if c.archiveOut {
		target = []string{"-t", "docker-archive:" + outFile + ":" + rebased}
	}
	written := func() bool {
		if c.archiveOut {
			_, err := os.Stat(outFile)
			return err == nil
		}
		return r.exists(t, rebased)
	}
	switch {
	case c.archive && mode == "explicit":
		args = append([]string{"docker-archive:" + e.archives[image], "--from-base", r.Host + "/" + c.baseRepo() + ":1", "--to-base", r.Host + "/" + c.baseRepo() + ":2"}, target...)
	case c.archive:
		args = append([]string{"docker-archive:" + e.archives[image]}, target...)
	case mode == "explicit":
		args = []string{r.Host, image, "--from-base", c.baseRepo() + ":1", "--to-base", c.baseRepo() + ":2", "-t", "rebased"}
	default:
		args = []string{r.Host, image, "-t", "auto-rebased"}
	}
	if c.keepAttestations {
		args = append(args, "--keep-attestations")
	}
	args = append(args, "-o", "json")

	// The harness itself: v1 sits on v1, the rebuild on v2.
	for _, a := range c.arches() {
		t.Logf("%s history (%s): %s", image, a, historyShape(t, e.config(t, image, a)))
		for img, base := range map[string]string{image: c.buildRepo() + ":1", rebuilt: c.buildRepo() + ":2"} {
			want := diffIDs(t, e.config(t, base, a))
			if got := diffIDs(t, e.config(t, img, a)); len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
				t.Fatalf("harness: %s (%s) is not built on %s", img, a, base)
			}
		}
	}

	want := slices.Clone(c.warn)
	if mode == "auto" {
		want = append(want, c.autoWarn...)
	}
	if !c.archive && !c.keepAttestations && e.attestations(t, image) > 0 {
		want = append(want, "attestation-dropped")
	}
	slices.Sort(want)
	want = slices.Compact(want)
	// --strict refuses on any warning: checked where the case has hazards,
	// and on one case whose only warning is attestation-dropped.
	if len(c.warn) > 0 || (mode == "auto" && len(c.autoWarn) > 0) || (c.name == "typical" && len(want) > 0) {
		code, out, stderr := rebase(t, r.env(), append(args, "--strict")...)
		var res bkResult
		json.Unmarshal([]byte(out), &res)
		if code != 4 || res.Action != "refused" || written() {
			fail(false, "--strict: want exit 4, action refused, nothing written; exit %d, action %q: %s", code, res.Action, oneLine(stderr))
		}
	}
	// -v: on a failure, the log shows the requests that led to it.
	code, out, stderr := rebase(t, r.env(), append(slices.Clone(args), "-v")...)
	if code != 0 {
		log := stderr
		if len(log) > 8000 {
			log = log[len(log)-8000:]
		}
		t.Logf("image-rebase -v:\n%s", log)
		fail(true, "exit %d: %s", code, lastLine(stderr))
	}
	var res bkResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		fail(true, "output is not one JSON object: %v", err)
	}
	var codes []string
	for _, w := range res.Warnings {
		codes = append(codes, w.Code)
		t.Logf("warning %s: %s", w.Code, w.Message)
	}
	slices.Sort(codes)
	codes = slices.Compact(codes)
	summary = strings.Join(codes, ",")
	if mode == "auto" && res.Detection.Method != "" {
		summary = strings.TrimPrefix(summary+"; detected by "+res.Detection.Method, "; ")
	}
	for _, reason := range res.Detection.Reasons {
		t.Logf("reason: %s", reason)
	}
	if !slices.Equal(codes, want) {
		fail(false, "warnings %v, want %v", codes, want)
	}
	if res.Action != "rebased" {
		fail(true, "action %q, want rebased", res.Action)
	}
	if c.archiveOut {
		// skopeo reads the archive back (checking every blob) and pushes
		// it, to be compared like the others.
		run(t, "skopeo", "copy", "-q", "--dest-cert-dir", r.CertDir, "--dest-creds", r.creds(), "docker-archive:"+outFile+":"+rebased, "docker://"+r.Host+"/"+rebased)
	}

	type aspect struct {
		name      string
		got, want func() any
	}
	var aspects []aspect
	if !slices.Contains(c.skip, "manifest") {
		layers := map[string][]string{}
		aspects = append(aspects, aspect{"manifest",
			func() any { s := e.shape(t, rebased, layers); t.Logf("rebased layer types: %v", layers); return s },
			func() any { return e.shape(t, rebuilt, nil) }})
	}
	for _, a := range c.arches() {
		aspects = append(aspects,
			aspect{"config", func() any { return bkConfig(t, e.config(t, rebased, a)) }, func() any { return bkConfig(t, e.config(t, rebuilt, a)) }},
			aspect{"history", func() any { return normalHistory(t, e.config(t, rebased, a)) }, func() any { return normalHistory(t, e.config(t, rebuilt, a)) }},
			aspect{"tree", func() any { return tree(t, r.unpackArch(t, rebased, a)) }, func() any { return tree(t, r.unpackArch(t, rebuilt, a)) }})
	}
	for _, a := range aspects {
		if slices.Contains(c.skip, a.name) {
			continue
		}
		got, want := a.got(), a.want()
		same := reflect.DeepEqual(got, want)
		switch {
		case slices.Contains(c.differs, a.name) && same:
			fail(false, "%s: equal to the rebuild, but the case says the hazard makes it differ", a.name)
		case slices.Contains(c.differs, a.name):
			d := diff(got, want)
			t.Logf("%s differs from the rebuild, as expected:\n%s", a.name, d)
			for _, l := range strings.Split(strings.TrimSpace(d), "\n") {
				if len(c.differsIn) > 0 && !slices.ContainsFunc(c.differsIn, func(s string) bool { return strings.Contains(l, s) }) {
					fail(false, "%s differs from the rebuild beyond the expected %v: %s", a.name, c.differsIn, strings.Join(strings.Fields(l), " "))
				}
			}
		case !same:
			fail(false, "%s differs from the rebuild: %s", a.name, compactDiff(diff(got, want)))
		}
	}
	// The next automatic run finds the result up to date: an explicit
	// rebase moved the label to the new base, an automatic one keeps it.
	if code, out, stderr := rebase(t, r.env(), r.Host, rebased, "--check"); code != 0 {
		fail(false, "automatic --check on the result: exit %d, want 0 (up to date): %s", code, oneLine(out+stderr))
	}
	// Annotations naming the base, when written, name it so that the next
	// run can read it.
	for _, a := range c.arches() {
		if ann := e.manifestAnnotations(t, rebased, a)[baseNameAnnotation]; ann != "" {
			if _, err := name.ParseReference(ann); err != nil {
				fail(false, "annotation %s=%q (%s) is not a reference: %v", baseNameAnnotation, ann, a, err)
			}
		}
	}
	if c.annotate {
		for _, a := range c.arches() {
			got, want := e.manifestAnnotations(t, rebased, a)[baseNameAnnotation], e.manifestAnnotations(t, rebuilt, a)[baseNameAnnotation]
			if got != want {
				fail(false, "annotation %s: %q, rebuild %q", baseNameAnnotation, got, want)
			}
		}
	}
	if c.keepAttestations {
		if n := e.attestations(t, rebased); n == 0 {
			fail(false, "--keep-attestations: the result has no attestation manifest")
		}
		for _, ref := range e.staleAttestations(t, rebased) {
			fail(false, "--keep-attestations: a kept attestation describes %s, which is not in the result", ref)
		}
	}
	for _, a := range c.arches() {
		if strings.Contains(e.config(t, rebased, a), "moby.buildkit.cache.v0") {
			fail(false, "the rebased config keeps moby.buildkit.cache.v0 (inline cache of the old layers)")
		}
	}
}

// lastLine is the last non-empty line of s: the error of a -v run.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// compactDiff puts diff's lines on one line, for the report.
func compactDiff(d string) string {
	var parts []string
	for _, l := range strings.Split(strings.TrimSpace(d), "\n") {
		parts = append(parts, strings.Join(strings.Fields(l), " "))
	}
	s := strings.Join(parts, "; ")
	if len(s) > 1500 {
		s = s[:1500] + "…"
	}
	return s
}

// writeReport writes the pass/fail table as Markdown (E2E_BUILDKIT_REPORT).
func (e *bkEnv) writeReport(t *testing.T, path string, took time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var b strings.Builder
	pass := map[string]int{}
	for _, m := range e.results {
		for mode, line := range m {
			if strings.HasPrefix(line, "pass") {
				pass[mode]++
			}
		}
	}
	fmt.Fprintf(&b, "# BuildKit corpus (go test -run TestBuildKit ./e2e/)\n\n%s, %d cases; passing: explicit %d, auto %d; test time %s\n\n",
		time.Now().UTC().Format(time.RFC3339), len(e.results), pass["explicit"], pass["auto"], took.Round(time.Second))
	b.WriteString("| case | explicit | auto |\n| --- | --- | --- |\n")
	names := slices.Collect(maps.Keys(e.results))
	order := map[string]int{}
	for i, c := range bkCases {
		order[c.name] = i
	}
	sort.Slice(names, func(i, j int) bool { return order[names[i]] < order[names[j]] })
	cell := func(s string) string { return strings.ReplaceAll(s, "|", "\\|") }
	for _, n := range names {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", n, cell(e.results[n]["explicit"]), cell(e.results[n]["auto"]))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Errorf("writing the report: %v", err)
	}
}
