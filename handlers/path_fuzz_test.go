package handlers

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// reading is one way an upstream server may read the escaped path it is
// sent; ok is false when it would refuse the path.
type reading struct {
	name string
	read func(escaped string) (string, bool)
}

// readings are the ways of reading a path that servers are known for. "all"
// applies every transformation in turn, as a stack of lenient layers might.
var readings = []reading{
	{"as sent", func(p string) (string, bool) { return p, true }},
	{"decoded once", decodeOnce},
	{"decoded twice", then(decodeOnce, decodeOnce)},
	{"slashes merged", then(decodeOnce, merged)},
	{"parameters stripped", then(decodeOnce, paramsStripped)},
	{"backslash as slash", then(decodeOnce, backslashed)},
	{"dot segments resolved", then(decodeOnce, dotsResolved)},
	{"NFKC", then(decodeOnce, nfkc)},
	{"segments trimmed", then(decodeOnce, trimmed)},
	{"case folded", then(decodeOnce, folded)},
	{"lookalikes", then(decodeOnce, lookalikes)},
	{"all", then(decodeOnce, decodeOnce, nfkc, lookalikes, backslashed, paramsStripped, trimmed, merged, dotsResolved, folded)},
}

func then(steps ...func(string) (string, bool)) func(string) (string, bool) {
	return func(p string) (string, bool) {
		for _, step := range steps {
			var ok bool
			if p, ok = step(p); !ok {
				return "", false
			}
		}
		return p, true
	}
}

func decodeOnce(p string) (string, bool) {
	d, err := url.PathUnescape(p)
	return d, err == nil
}

func merged(p string) (string, bool) {
	for strings.Contains(p, "//") {
		p = strings.ReplaceAll(p, "//", "/")
	}
	return p, true
}

func paramsStripped(p string) (string, bool) {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i], _, _ = strings.Cut(s, ";")
	}
	return strings.Join(segs, "/"), true
}

func backslashed(p string) (string, bool) { return strings.ReplaceAll(p, `\`, "/"), true }

func nfkc(p string) (string, bool) { return norm.NFKC.String(p), true }

// trimmed drops what Windows and some frameworks drop around a segment:
// whitespace, and dots at its end.
func trimmed(p string) (string, bool) {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		s = strings.TrimFunc(s, unicode.IsSpace)
		if strings.Trim(s, ".") != "" {
			s = strings.TrimRightFunc(s, func(r rune) bool { return r == '.' || unicode.IsSpace(r) })
		}
		segs[i] = s
	}
	return strings.Join(segs, "/"), true
}

// lookalikes maps characters that look like ".", "/" or "\\" to them, as
// Windows' best-fit conversion to a code page and some filters do.
func lookalikes(p string) (string, bool) {
	return strings.Map(func(r rune) rune {
		switch r {
		case '\u2024', '\u3002', '\uff61', '\ufe52', '\uff0e', '\u2e31', '\u00b7':
			return '.'
		case '\u2215', '\u2044', '\u29f8', '\uff0f', '\u2571':
			return '/'
		case '\u2216', '\u29f9', '\uff3c', '\ufe68', '\u2572', '\u00a5', '\u20a9':
			return '\\'
		}
		return r
	}, p), true
}

func folded(p string) (string, bool) {
	return strings.Map(func(r rune) rune { return unicode.ToLower(unicode.ToUpper(r)) }, p), true
}

// dotsResolved is remove_dot_segments of RFC 3986 section 5.2.4.
func dotsResolved(p string) (string, bool) {
	var out []string
	segs := strings.Split(p, "/")
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 1 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	r := strings.Join(out, "/")
	if !strings.HasPrefix(r, "/") {
		r = "/" + r
	}
	return r, true
}

// under reports whether path is base or below it, on whole segments.
func under(path, base string) bool {
	base = strings.TrimSuffix(base, "/")
	return path == base || strings.HasPrefix(path, base+"/")
}

// fuzzRoutes are nested routes on distinct upstream hosts, with base paths
// of every shape.
const fuzzRoutes = "/api=http://api.test/base," +
	"/api/internal=http://internal.test/private/," +
	"/api/internal/deep=http://deep.test," +
	"/files=http://files.test/a%20b," +
	"/w.s=http://ws.test/v1/ws"

// recordingTransport answers every request with 204 and records its URL.
type recordingTransport struct {
	mu   sync.Mutex
	urls []*url.URL
}

func (rt *recordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rt.mu.Lock()
	rt.urls = append(rt.urls, r.URL)
	rt.mu.Unlock()
	return &http.Response{StatusCode: http.StatusNoContent, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: http.NoBody, Request: r}, nil
}

func (rt *recordingTransport) take() []*url.URL {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	u := rt.urls
	rt.urls = nil
	return u
}

// FuzzProxyPath sends a request line with the fuzzed path through the
// proxy's real routes and checks, for any path:
//
//   - a refused path is answered 400 or 404 with the contract's JSON and
//     reaches no upstream;
//   - an accepted path reaches one upstream once, and however that upstream
//     reads the path it is sent (see readings), it stays under the route's
//     base path;
//   - read in any of those ways, the path after the base still belongs to
//     the route that was chosen, not to a longer one (a carve-out).
func FuzzProxyPath(f *testing.F) {
	// More seeds, the carve-outs and spellings of the issue among them, are
	// in testdata/fuzz/FuzzProxyPath.
	for _, p := range unsafePaths {
		f.Add(p)
	}
	routes, err := ParseRoutes(fuzzRoutes)
	if err != nil {
		f.Fatal(err)
	}
	rt := &recordingTransport{}
	p, err := NewProxy(ProxyConfig{Routes: routes, Tokens: fakeTokens{}, Transport: rt, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	e := newEcho(slog.New(slog.DiscardHandler))
	for _, r := range p.Routes() {
		e.Any(r.Prefix, p.Handler)
		e.Any(r.Prefix+"/*", p.Handler)
	}
	byHost := map[string]Route{}
	for _, r := range routes {
		byHost[r.Upstream.Host] = r
	}

	f.Fuzz(func(t *testing.T, path string) {
		raw := "GET " + path + " HTTP/1.1\r\nHost: broker.test\r\nAuthorization: Bearer " + testHandle + "\r\n\r\n"
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return // net/http refuses it before any handler
		}
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		sent := rt.take()

		if len(sent) == 0 {
			if rec.Code != http.StatusBadRequest && rec.Code != http.StatusNotFound {
				t.Fatalf("GET %q = %d with no upstream call, want 400 or 404", path, rec.Code)
			}
			var body errorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Error == "" {
				t.Fatalf("GET %q: body %q is not the contract's error", path, rec.Body)
			}
			return
		}
		if len(sent) != 1 || rec.Code != http.StatusNoContent {
			t.Fatalf("GET %q = %d after %d upstream calls, want 204 after 1", path, rec.Code, len(sent))
		}
		route, ok := byHost[sent[0].Host]
		if !ok {
			t.Fatalf("GET %q went to unknown host %q", path, sent[0].Host)
		}
		wire := sent[0].EscapedPath()
		base := route.Upstream.EscapedPath()
		if !under(wire, base) && !(strings.HasSuffix(base, "/") && wire == base) {
			t.Fatalf("GET %q: upstream path %q is not under the base %q", path, wire, base)
		}
		tail := strings.TrimPrefix(wire, strings.TrimSuffix(base, "/"))
		for _, rd := range readings {
			w, ok1 := rd.read(wire)
			b, ok2 := rd.read(base)
			if !ok1 || !ok2 {
				continue // the upstream refuses it
			}
			if !under(w, b) && !(strings.HasSuffix(b, "/") && w == b) {
				t.Errorf("GET %q: upstream path %q read %s is %q, outside the base %q", path, wire, rd.name, w, b)
			}
			// The request as the upstream reads it, put back under the
			// broker's prefix, must not belong to a longer route.
			whole, ok := rd.read(route.Prefix + tail)
			if !ok {
				continue
			}
			for _, other := range p.Routes() {
				if len(other.Prefix) <= len(route.Prefix) {
					break
				}
				if o, _ := rd.read(other.Prefix); under(whole, o) {
					t.Errorf("GET %q went to %s, but read %s as %q it belongs to %s", path, route.Prefix, rd.name, whole, other.Prefix)
				}
			}
		}
	})
}

// TestReadings pins the readings the fuzz test relies on.
func TestReadings(t *testing.T) {
	tests := []struct {
		reading, in, want string
	}{
		{"decoded twice", "/a/%252e%252e", "/a/.."},
		{"slashes merged", "/a//%2F/b", "/a/b"},
		{"parameters stripped", "/a/internal;x=1/b", "/a/internal/b"},
		{"dot segments resolved", "/a/b/../../../c/./d/..", "/c/"},
		{"NFKC", "/%EF%BC%8E%EF%BC%8E%EF%BC%8F", "/../"},
		{"segments trimmed", "/internal. /x%20/..%09", "/internal/x/.."},
		{"case folded", "/%C4%B1NTERNAL", "/internal"},
		{"all", "/api/%252e%252e%EF%BC%8Fx;y/%20../INTERNAL./z", "/internal/z"},
	}
	for _, tt := range tests {
		for _, rd := range readings {
			if rd.name != tt.reading {
				continue
			}
			if got, ok := rd.read(tt.in); !ok || got != tt.want {
				t.Errorf("%s(%q) = %q, %v; want %q", tt.reading, tt.in, got, ok, tt.want)
			}
		}
	}
}
