// Package bench holds the benchmarks behind the README's performance
// figures: image-rebase and go-containerregistry's own rebase path
// (mutate.Rebase + remote.Write, what `crane rebase` does) run in the same
// benchmark against the real registry behind a proxy that counts requests
// and bytes and adds latency per request.
//
//	go test -run '^$' -bench . -benchtime 5x ./bench
package bench
