package watch

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/image-rebase/image-rebase/internal/version"
)

// notify posts s to Config.Notify, trying three times.
func (w *Watcher) notify(s Summary) {
	body, err := json.Marshal(s)
	if err != nil {
		w.log.Error("notify failed", "round", s.Round, "error", err.Error())
		return
	}
	wait := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err = w.post(body)
		if err == nil {
			w.log.Info("notified", "round", s.Round, "url", redact(w.cfg.Notify))
			return
		}
		if attempt == 3 {
			w.log.Error("notify failed", "round", s.Round, "url", redact(w.cfg.Notify), "error", oneLine(err))
			return
		}
		time.Sleep(jitter(wait))
		wait *= 2
	}
}

func (w *Watcher) post(body []byte) error {
	req, err := http.NewRequest(http.MethodPost, w.cfg.Notify, strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", version.UserAgent())
	resp, err := w.cfg.NotifyClient.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s", redact(w.cfg.Notify), resp.Status)
	}
	return nil
}

// redact drops a URL's user information and query, which may hold secrets.
func redact(s string) string {
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	if i := strings.Index(s, "://"); i >= 0 {
		if j := strings.IndexByte(s[i+3:], '@'); j >= 0 && !strings.Contains(s[i+3:i+3+j], "/") {
			s = s[:i+3] + s[i+4+j:]
		}
	}
	return s
}
