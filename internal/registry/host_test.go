package registry

import "testing"

func TestParseRegistry(t *testing.T) {
	for _, c := range []struct {
		arg, host string
		plain, ok bool
	}{
		{"reg.example.com", "reg.example.com", false, true},
		{"reg.example.com:5000/", "reg.example.com:5000", false, true},
		{"http://127.0.0.1:5000", "127.0.0.1:5000", true, true},
		{"https://[::1]:5000", "[::1]:5000", false, true},
		{"http://", "", false, false},
		{"reg.example.com/team", "", false, false},
		{"user:pass@reg.example.com", "", false, false},
		{"reg.example.com:99999", "", false, false},
		{"ftp://reg.example.com", "", false, false},
	} {
		host, plain, err := ParseRegistry(c.arg)
		if host != c.host || plain != c.plain || (err == nil) != c.ok {
			t.Errorf("%q: %q, %v, %v; want %q, %v, ok %v", c.arg, host, plain, err, c.host, c.plain, c.ok)
		}
	}
}
