package handlers

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

// rawRequest writes raw to the server as it is, so that bytes a client
// library would escape or refuse reach the broker, and reads the answer.
func rawRequest(t *testing.T, srv *httptest.Server, raw string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatalf("writing %q: %v", raw, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", raw, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body of the answer to %q: %v", raw, err)
	}
	return resp, body
}

func TestCanonicalPath(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{in: "/api/x", want: "/api/x", ok: true},
		{in: "/%61pi/%7e%2D%2e%5F", want: "/api/~-._", ok: true},
		{in: "/api/a%2fb%3b", want: "/api/a%2Fb%3B", ok: true},
		{in: "/api/%c3%a9", want: "/api/%C3%A9", ok: true},
		{in: "/api/%252e", want: "/api/%252e", ok: true}, // decoded once only
		{in: "/api/%zz", ok: false},
		{in: "/api/%2", ok: false},
	}
	for _, tt := range tests {
		got, ok := canonicalPath(tt.in)
		if ok != tt.ok || got != tt.want {
			t.Errorf("canonicalPath(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestCheckTail(t *testing.T) {
	tests := []struct {
		name    string
		tail    string // canonical, as resolve passes it
		want    string
		wantErr error
	}{
		{name: "empty", tail: "", want: ""},
		{name: "slash", tail: "/", want: "/"},
		{name: "plain", tail: "/a/b", want: "/a/b"},
		{name: "trailing slash", tail: "/a/b/", want: "/a/b/"},
		{name: "dots inside a name", tail: "/a..b/.well-known/.x/v1.2", want: "/a..b/.well-known/.x/v1.2"},
		{name: "escaped punctuation", tail: "/a%2Bb%40c%3F%23%3A", want: "/a+b@c?#:"},
		{name: "letters outside ASCII", tail: "/caf%C3%A9/%E6%9D%B1%E4%BA%AC/%D0%BC%D0%B8%D1%80", want: "/café/東京/мир"},
		{name: "combining mark after a letter", tail: "/e%CC%81t%C3%A9", wantErr: errPathNonASCII}, // not NFKC: é is precomposed there
		{name: "digits outside ASCII", tail: "/%D9%A1%D9%A2", want: "/١٢"},

		{name: "dot", tail: "/./a", wantErr: errPathDotSegment},
		{name: "dot-dot", tail: "/a/..", wantErr: errPathDotSegment},
		{name: "three dots", tail: "/a/...", wantErr: errPathDotSegment},
		{name: "trailing dot", tail: "/internal./x", wantErr: errPathDotSegment},
		{name: "encoded dot-dot", tail: "/%2E%2E/a", wantErr: errPathDotSegment},
		{name: "half encoded dot-dot", tail: "/.%2E", wantErr: errPathDotSegment},
		{name: "dot-dot with path parameter", tail: "/..;x/a", wantErr: errPathParameter},
		{name: "path parameter", tail: "/internal;/x", wantErr: errPathParameter},
		{name: "encoded path parameter", tail: "/internal%3B/x", wantErr: errPathParameter},
		{name: "empty segment", tail: "//internal/x", wantErr: errPathEmptySegment},
		{name: "empty segment inside", tail: "/a//b", wantErr: errPathEmptySegment},
		{name: "two trailing slashes", tail: "/a//", wantErr: errPathEmptySegment},
		{name: "encoded slash", tail: "/a%2Fb", wantErr: errPathSeparator},
		{name: "encoded backslash", tail: "/a%5Cb", wantErr: errPathSeparator},
		{name: "raw backslash", tail: `/a\b`, wantErr: errPathSeparator},
		{name: "double encoded dot-dot", tail: "/%252E%252E/x", wantErr: errPathDoubleEscape},
		{name: "double encoded slash", tail: "/a%252Fb", wantErr: errPathDoubleEscape},
		{name: "encoded percent", tail: "/100%25", wantErr: errPathDoubleEscape},
		{name: "NUL", tail: "/..%00", wantErr: errPathControl},
		{name: "NUL in a name", tail: "/x%00.json", wantErr: errPathControl},
		{name: "CR LF", tail: "/x%0D%0AHost:%20evil", wantErr: errPathControl},
		{name: "DEL", tail: "/x%7F", wantErr: errPathControl},
		{name: "space after dots", tail: "/..%20", wantErr: errPathControl},
		{name: "space before dots", tail: "/%20../x", wantErr: errPathControl},
		{name: "tab after dots", tail: "/..%09", wantErr: errPathControl},
		{name: "space in a name", tail: "/a%20b", wantErr: errPathControl},
		{name: "trailing space", tail: "/internal%20/x", wantErr: errPathControl},
		{name: "overlong dot, 2 bytes", tail: "/%C0%AE%C0%AE/x", wantErr: errPathNonASCII},
		{name: "overlong dot, 3 bytes", tail: "/%E0%80%AE%E0%80%AE/x", wantErr: errPathNonASCII},
		{name: "overlong slash", tail: "/a%C0%AFb", wantErr: errPathNonASCII},
		{name: "lone continuation byte", tail: "/a%AEb", wantErr: errPathNonASCII},
		{name: "full-width dots", tail: "/%EF%BC%8E%EF%BC%8E/x", wantErr: errPathNonASCII},
		{name: "full-width slash", tail: "/a%EF%BC%8Fb", wantErr: errPathNonASCII},
		{name: "full-width backslash", tail: "/a%EF%BC%BCb", wantErr: errPathNonASCII},
		{name: "full-width letters", tail: "/%EF%BD%89nternal", wantErr: errPathNonASCII},
		{name: "one dot leader", tail: "/%E2%80%A4%E2%80%A4/x", wantErr: errPathNonASCII},
		{name: "two dot leader", tail: "/%E2%80%A5/x", wantErr: errPathNonASCII},
		{name: "small full stop", tail: "/%EF%B9%92%EF%B9%92/x", wantErr: errPathNonASCII},
		{name: "division slash", tail: "/a%E2%88%95b", wantErr: errPathNonASCII},
		{name: "fraction slash", tail: "/a%E2%81%84b", wantErr: errPathNonASCII},
		{name: "big solidus", tail: "/a%E2%A7%B8b", wantErr: errPathNonASCII},
		{name: "set minus", tail: "/a%E2%88%96b", wantErr: errPathNonASCII},
		{name: "ideographic full stop", tail: "/%E3%80%82%E3%80%82/x", wantErr: errPathNonASCII},
		{name: "no-break space", tail: "/..%C2%A0", wantErr: errPathNonASCII},
		{name: "ideographic space", tail: "/a%E3%80%80", wantErr: errPathNonASCII},
		{name: "zero width space", tail: "/.%E2%80%8B.", wantErr: errPathNonASCII},
		{name: "right-to-left override", tail: "/a%E2%80%AEb", wantErr: errPathNonASCII},
		{name: "combining long solidus overlay on nothing", tail: "/%CC%B8", wantErr: errPathNonASCII},
		{name: "combining mark on a dot", tail: "/.%CC%B8", wantErr: errPathNonASCII},
		{name: "long s", tail: "/%C5%BFecret", wantErr: errPathNonASCII},
		{name: "Kelvin sign", tail: "/%E2%84%AAey", wantErr: errPathNonASCII},
		{name: "invalid escape", tail: "/a%zzb", wantErr: errPathEscape},
		{name: "truncated escape", tail: "/a%2", wantErr: errPathEscape},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := checkTail(tt.tail)
			if tt.wantErr != nil {
				if err != tt.wantErr {
					t.Errorf("checkTail(%q) = %q, %v; want %v", tt.tail, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("checkTail(%q) = %q, %v; want %q", tt.tail, got, err, tt.want)
			}
		})
	}
}

// unsafePaths are paths under the /api route that an upstream could read as
// another path: every one is answered 400 and reaches no upstream.
var unsafePaths = []string{
	// Dot segments and encoded separators.
	"/api/../v1/sessions",
	"/api/..",
	"/api/./x",
	"/api/...",
	"/api/%2e%2e/x",
	"/api/%2E%2e",
	"/api/.%2e/admin",
	"/api/..;/admin",
	"/api/a%2Fb",
	"/api/a%2f..%2fb",
	"/api/a%5Cb",
	"/api/x/%2e%2e%2f%2e%2e/etc",
	// Empty segments and path parameters.
	"/api//x",
	"/api/x//y",
	"/api/x;jsessionid=1/y",
	"/api/x%3B/y",
	// Double encoding.
	"/api/%252e%252e/x",
	"/api/%252E%252E%252Fv1",
	"/api/a%252fb",
	"/api/%25",
	// Control characters and whitespace.
	"/api/..%00",
	"/api/x%00.json",
	"/api/x%0d%0aX-Injected:%201",
	"/api/x%0a",
	"/api/x%7f",
	"/api/..%20",
	"/api/%20..",
	"/api/..%09",
	"/api/x%20",
	"/api/a%20b",
	// Trailing dots, which Windows drops.
	"/api/x.",
	"/api/x./y",
	// Spellings of "." and "/" outside ASCII.
	"/api/%c0%ae%c0%ae/x",
	"/api/%e0%80%ae%e0%80%ae/x",
	"/api/%f0%80%80%ae",
	"/api/a%c0%afb",
	"/api/a%e0%80%afb",
	"/api/%ef%bc%8e%ef%bc%8e/x",
	"/api/a%ef%bc%8fb",
	"/api/a%ef%bc%bcb",
	"/api/%e2%80%a4%e2%80%a4/x",
	"/api/%ef%b9%92%ef%b9%92/x",
	"/api/a%e2%88%95b",
	"/api/a%e2%81%84b",
	"/api/a%e2%a7%b8b",
	"/api/%e3%80%82%e3%80%82/x",
	"/api/%ef%bd%a1%ef%bd%a1/x",
	"/api/..%c2%a0",
	"/api/a%e2%80%8bb",
	"/api/a%e2%80%aeb",
}

func TestProxyRejectsUnsafePaths(t *testing.T) {
	up := newUpstream(t, nil)
	srv := newBroker(t, ProxyConfig{Routes: mustRoutes(t, "/api="+up.URL+"/base")})
	for _, path := range unsafePaths {
		t.Run(path, func(t *testing.T) {
			resp, body := send(t, srv, http.MethodGet, path, nil, nil)
			wantError(t, "GET "+path, resp, body, http.StatusBadRequest, broker.CodeInvalidRequest)
		})
	}
	// Bytes sent raw in the request line, as no client library would.
	for _, path := range []string{
		"/api/．．/x",
		"/api/a／b",
		"/api/‥/x",
		"/api/a∕b",
		"/api/a⁄b",
		"/api/\xc0\xae\xc0\xae/x",
		"/api/\xe0\x80\xae/x",
		"/api/a\\b",
		"/api/x;/y",
	} {
		t.Run("raw "+path, func(t *testing.T) {
			resp, body := rawRequest(t, srv, "GET "+path+" HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer "+testHandle+"\r\nConnection: close\r\n\r\n")
			wantError(t, "GET "+path, resp, body, http.StatusBadRequest, broker.CodeInvalidRequest)
		})
	}
	if n := len(up.requests()); n != 0 {
		t.Errorf("upstream received %d requests, want none", n)
	}
}

// TestProxyKeepsCarveOuts puts /api and /api/internal on different upstreams:
// no spelling of /api/internal/x may reach the /api upstream, where it would
// be read as /internal/x.
func TestProxyKeepsCarveOuts(t *testing.T) {
	api := newUpstream(t, nil)
	internal := newUpstream(t, nil)
	srv := newBroker(t, ProxyConfig{Routes: mustRoutes(t, "/api="+api.URL+",/api/internal="+internal.URL+"/private")})

	for _, path := range []string{
		"/api//internal/x",
		"/api///internal/x",
		"/api/internal;/x",
		"/api/internal;a=b/x",
		"/api/internal%3B/x",
		"/api/internal%3b/x",
		"/api/internal./x",
		"/api/internal%2e/x",
		"/api/internal%20/x",
		"/api/internal%09/x",
		"/api/internal%00/x",
		"/api/INTERNAL/x",
		"/api/Internal/x",
		"/api/%49nternal/x",
		"/api/%c4%b1nternal/x",            // dotless i
		"/api/%c4%b0nternal/x",            // capital I with dot
		"/api/%ef%bd%89nternal/x",         // full-width i
		"/api/x/..%2finternal/x",          // resolved to /internal/x
		"/api/%2finternal/x",              // merged to /internal/x
		"/api/%252finternal/x",            // decoded twice to //internal/x
		"/api/%ef%bc%8finternal/x",        // full-width slash
		"/api/.%2finternal/x",             // ./internal/x
		"/api/internal%c0%ae/x",           // overlong dot
		"/api/internal%e3%80%80/x",        // ideographic space
		"/api/internal%e2%80%8b/x",        // zero width space
		"/api/internal%ef%bc%8e/x",        // full-width dot
		"/api/internal%e2%80%a4%e2%80%a4", // one dot leaders
	} {
		t.Run(path, func(t *testing.T) {
			resp, body := send(t, srv, http.MethodGet, path, nil, nil)
			wantError(t, "GET "+path, resp, body, http.StatusBadRequest, broker.CodeInvalidRequest)
		})
	}
	if reqs := api.requests(); len(reqs) != 0 {
		t.Errorf("the /api upstream received %d requests, want none; the first for %s", len(reqs), reqs[0].URI)
	}
	if reqs := internal.requests(); len(reqs) != 0 {
		t.Errorf("the /api/internal upstream received %d requests, want none; the first for %s", len(reqs), reqs[0].URI)
	}

	// Escaped letters are the same path (RFC 3986 section 6.2.2.2): they
	// go where the plain spelling goes.
	for _, path := range []string{"/api/internal/x", "/api/%69nternal/x", "/api/internal/%78"} {
		before := len(internal.requests())
		if resp, body := send(t, srv, http.MethodGet, path, nil, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s = %d %s, want 200", path, resp.StatusCode, body)
		}
		reqs := internal.requests()
		if len(reqs) != before+1 || reqs[len(reqs)-1].URI != "/private/x" {
			t.Errorf("GET %s: the /api/internal upstream saw %d new requests, last %+v; want one for /private/x", path, len(reqs)-before, reqs[len(reqs)-1])
		}
	}
	if reqs := api.requests(); len(reqs) != 0 {
		t.Errorf("the /api upstream received %s, want nothing", reqs[0].URI)
	}
	// The /api upstream still serves its own paths, case and all.
	if resp, body := send(t, srv, http.MethodGet, "/api/Orders/internal", nil, nil); resp.StatusCode != http.StatusOK || api.only(t).URI != "/Orders/internal" {
		t.Errorf("GET /api/Orders/internal = %d %s, want 200 from the /api upstream", resp.StatusCode, body)
	}
}

func TestProxyResolveLongerRouteFolded(t *testing.T) {
	p, err := NewProxy(ProxyConfig{
		Routes: mustRoutes(t, "/api=http://a,/api/internal=http://b,/api/internal/admin=http://c"),
		Tokens: fakeTokens{},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path       string
		wantPrefix string
		wantErr    error
	}{
		{path: "/api/internal/admin/x", wantPrefix: "/api/internal/admin"},
		{path: "/api/internal/x", wantPrefix: "/api/internal"},
		{path: "/api/internal/ADMIN/x", wantErr: errPathOtherRoute},
		{path: "/api/Internal/admin", wantErr: errPathOtherRoute},
		{path: "/api/internals", wantPrefix: "/api"},
		{path: "/api/x/internal", wantPrefix: "/api"},
	}
	for _, tt := range tests {
		r, _, _, ok, err := p.resolve(tt.path, nil)
		if !ok || err != tt.wantErr || r.Prefix != tt.wantPrefix {
			t.Errorf("resolve(%q) = %q, %v, %v; want %q, true, %v", tt.path, r.Prefix, ok, err, tt.wantPrefix, tt.wantErr)
		}
	}
	if _, _, _, ok, _ := p.resolve("/API/x", nil); ok {
		t.Errorf("resolve(%q) found a route; prefixes match with their case", "/API/x")
	}
	if _, _, _, ok, _ := p.resolve("/ap%69/x", nil); !ok {
		t.Errorf("resolve(%q) found no route; want /api", "/ap%69/x")
	}
	if strings.Contains(errPathOtherRoute.Error(), "internal") {
		t.Error("the answer names a route")
	}
}
