package imagerebase_test

import (
	"context"
	"fmt"
	"strings"

	imagerebase "github.com/image-rebase/image-rebase"
)

// Rebase app:1 from base:1 onto base:2 in place, in one registry: the tag
// app:1 moves to the rebased image, whose bottom layers are base:2's,
// mounted from base's repository.
func ExampleRebase() {
	reg := startExampleRegistry()
	defer reg.stop()

	res, err := imagerebase.Rebase(context.Background(), "app:1", imagerebase.Options{
		Registry: "http://" + reg.host, // names without a host are in this registry
		From:     "base:1",
		To:       "base:2",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(res.Action, strings.TrimPrefix(res.Target, reg.host+"/"))
	fmt.Printf("%d layers mounted, %d copied\n", res.Mounted, res.Copied)
	fmt.Println(len(res.Plan.Removed), "removed,", len(res.Plan.Added), "added,", len(res.Plan.Kept), "kept")

	// Run again, it finds the image up to date and writes nothing.
	res, err = imagerebase.Rebase(context.Background(), "app:1", imagerebase.Options{
		Registry: "http://" + reg.host,
		From:     "base:1",
		To:       "base:2",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(res.Action)
	// Output:
	// rebased app:1
	// 3 layers mounted, 0 copied
	// 3 removed, 3 added, 2 kept
	// up-to-date
}

// Rebase an image built into an OCI layout (tag "app", on base:1, stored
// in the same layout as "base-1") onto base:2 from a registry, and write
// the result to the registry: base:2's layers are mounted there, the
// image's own layers are uploaded from the layout (AllowCopy).
func ExampleRebase_ociLayout() {
	reg := startExampleRegistry()
	defer reg.stop()
	dir, remove := exampleLayout()
	defer remove()

	res, err := imagerebase.Rebase(context.Background(), "oci:"+dir+":app", imagerebase.Options{
		From:      "oci:" + dir + ":base-1",
		To:        reg.host + "/base:2",
		Target:    reg.host + "/team/app:1",
		AllowCopy: true,
		Insecure:  []string{reg.host}, // plain HTTP
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(res.Action, strings.TrimPrefix(res.Target, reg.host+"/"))
	fmt.Printf("%d layers mounted, %d copied\n", res.Mounted, res.Copied)
	// Output:
	// rebased team/app:1
	// 3 layers mounted, 2 copied
}

// Plan a rebase and print it: the layers removed, added and kept and the
// config decisions. Nothing is written.
func ExamplePlan() {
	reg := startExampleRegistry()
	defer reg.stop()

	res, err := imagerebase.Plan(context.Background(), "app:1", imagerebase.Options{
		Registry: "http://" + reg.host,
		From:     "base:1",
		To:       "base:2",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(res.Action, "onto", strings.TrimPrefix(res.NewBase.Ref, reg.host+"/"))
	for _, l := range res.Plan.Removed {
		fmt.Println("-", l.Digest[:19])
	}
	for _, l := range res.Plan.Added {
		fmt.Println("+", l.Digest[:19])
	}
	for _, l := range res.Plan.Kept {
		fmt.Println("=", l.Digest[:19])
	}
	for _, c := range res.Plan.Config {
		fmt.Println(c)
	}
	// Output:
	// would-rebase onto base:2
	// - sha256:27ecac9d2ca2
	// - sha256:f85e6e411f91
	// - sha256:63760f452e21
	// + sha256:c26065cb776a
	// + sha256:c58a9198844a
	// + sha256:d85ad5c40c62
	// = sha256:f7f25b44b8d9
	// = sha256:7876c6dd7624
	// History 10: recorded as a rebuild on the new base would, "LABEL FROM=base:1" → "LABEL FROM=base:2"
	// Labels FROM: names the new base, as a rebuild's Dockerfile would, base:1 → base:2 (--keep-label keeps it)
	// Env BASEVER: inherited, 1 → 2
	// Env SSL_CERT_FILE: added by new base, /etc/ssl/certs/ca-certificates.crt
	// Labels org.opencontainers.image.version: inherited, 1 → 2
}
