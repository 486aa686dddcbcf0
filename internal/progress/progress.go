// Package progress draws a one-line progress indication for blobs being
// copied, for a terminal.
package progress

import (
	"fmt"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// reader writes a one-line progress indication for a blob being copied,
// redrawn at most every 200ms and finished with a newline.
type reader struct {
	w     io.Writer
	d     v1.Descriptor
	r     io.Reader
	n     int64
	last  time.Time
	ended bool
}

// Reader returns r, drawing the progress of reading blob d to w as it is
// read; w nil returns r itself.
func Reader(w io.Writer, d v1.Descriptor, r io.Reader) io.Reader {
	if w == nil {
		return r
	}
	p := &reader{w: w, d: d, r: r}
	p.draw()
	return p
}

func (p *reader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if err != nil || time.Since(p.last) > 200*time.Millisecond {
		p.draw()
	}
	if err != nil && !p.ended {
		p.ended = true
		fmt.Fprintln(p.w)
	}
	return n, err
}

func (p *reader) draw() {
	p.last = time.Now()
	pct := 100
	if p.d.Size > 0 {
		pct = int(p.n * 100 / p.d.Size)
	}
	fmt.Fprintf(p.w, "\rcopying %s  %s / %s  %3d%%", p.d.Digest.String()[:19], Bytes(p.n), Bytes(p.d.Size), pct)
}

// Bytes renders a byte count for people: "512 B", "3.4 MB".
func Bytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}
