package handlers

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

const (
	testHandle      = "handle-5f0c1d9e7b2a4c3f"
	testAccessToken = "access-token-9a8b7c6d5e4f"
	testSessionID   = "sess-1"
)

// fakeTokens knows one good handle; the others fail the way the domain does.
type fakeTokens struct{}

func (fakeTokens) AccessToken(_ context.Context, cred broker.Credential) (string, string, error) {
	handle := cred.Handle
	switch handle {
	case testHandle:
		return testSessionID, testAccessToken, nil
	case "idp-down":
		return "", "", broker.Errorf(broker.CodeIdPUnavailable, "the identity provider is unavailable, retry later")
	case "store-down":
		return "", "", broker.ErrStoreUnavailable
	case "boom":
		return "", "", errors.New("boom: secret internal detail")
	}
	return "", "", broker.Errorf(broker.CodeInvalidToken, "session is expired or revoked")
}

func (fakeTokens) SessionLive(_ context.Context, sessionID string) error {
	if sessionID == testSessionID {
		return nil
	}
	return broker.ErrInvalidToken
}

// seenRequest is what the upstream received.
type seenRequest struct {
	Method string
	URI    string
	Host   string
	Header http.Header
	Body   []byte
}

// upstream is an httptest.Server that records every request, reads its body,
// and then runs its handler (200 "ok" when nil).
type upstream struct {
	*httptest.Server
	mu   sync.Mutex
	seen []seenRequest
	news atomic.Int32 // connections opened
}

func newUpstream(t *testing.T, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("upstream: reading body: %v", err)
		}
		u.mu.Lock()
		u.seen = append(u.seen, seenRequest{Method: r.Method, URI: r.RequestURI, Host: r.Host, Header: r.Header.Clone(), Body: body})
		u.mu.Unlock()
		if h == nil {
			_, _ = io.WriteString(w, "ok")
			return
		}
		h(w, r)
	}))
	u.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.news.Add(1)
		}
	}
	u.Start()
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) requests() []seenRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seenRequest(nil), u.seen...)
}

// only returns the only request the upstream received.
func (u *upstream) only(t *testing.T) seenRequest {
	t.Helper()
	reqs := u.requests()
	if len(reqs) != 1 {
		t.Fatalf("upstream received %d requests, want 1", len(reqs))
	}
	return reqs[0]
}

// newBroker serves a Proxy built from cfg the way routes.go registers it,
// filling in the fake token source when cfg has none.
func newBroker(t *testing.T, cfg ProxyConfig) *httptest.Server {
	t.Helper()
	if cfg.Tokens == nil {
		cfg.Tokens = fakeTokens{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p, err := NewProxy(cfg)
	if err != nil {
		t.Fatalf("NewProxy: %v", err)
	}
	e := newEcho(slog.New(slog.DiscardHandler))
	for _, r := range p.Routes() {
		e.Any(r.Prefix, p.Handler)
		e.Any(r.Prefix+"/*", p.Handler)
	}
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	srv.Client().Timeout = 10 * time.Second
	return srv
}

func mustRoutes(t *testing.T, spec string) []Route {
	t.Helper()
	routes, err := ParseRoutes(spec)
	if err != nil {
		t.Fatalf("ParseRoutes(%q): %v", spec, err)
	}
	return routes
}

// send makes a request with the test handle (unless header sets its own
// Authorization) and returns the response with its body read.
func send(t *testing.T, srv *httptest.Server, method, target string, header http.Header, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+target, body)
	if err != nil {
		t.Fatalf("NewRequest(%s %s): %v", method, target, err)
	}
	req.Header.Set("Authorization", "Bearer "+testHandle)
	for k, vs := range header {
		req.Header.Del(k)
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, target, err)
	}
	return resp, b
}

// wantError checks that a response is the contract's JSON error.
func wantError(t *testing.T, what string, resp *http.Response, body []byte, status int, code broker.Code) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("%s = %d, want %d (body %s)", what, resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type = %q, want application/json", what, ct)
	}
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("%s: body %q is not JSON: %v", what, body, err)
	}
	if e.Error != string(code) {
		t.Errorf("%s: error = %q, want %q", what, e.Error, code)
	}
	for _, secret := range []string{testHandle, testAccessToken} {
		if bytes.Contains(body, []byte(secret)) {
			t.Errorf("%s: body %s contains a credential", what, body)
		}
	}
}

// syncBuffer is a log sink that the server goroutines and the test share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestParseRoutes(t *testing.T) {
	tests := []struct {
		name    string
		spec    string
		want    map[string]string // prefix -> upstream
		wantErr string            // substring of the error
	}{
		{name: "one", spec: "/api=http://orders:8080", want: map[string]string{"/api": "http://orders:8080"}},
		{
			name: "contract example",
			spec: "/api/orders=http://orders:8080,/api/users=https://users.internal/v2",
			want: map[string]string{"/api/orders": "http://orders:8080", "/api/users": "https://users.internal/v2"},
		},
		{name: "spaces and blank entries", spec: " /api = http://u/v2 ,, ", want: map[string]string{"/api": "http://u/v2"}},
		{name: "unreserved characters", spec: "/a-b_c.d~e/V2=http://u", want: map[string]string{"/a-b_c.d~e/V2": "http://u"}},
		{name: "v10 is not under v1", spec: "/v10=http://u", want: map[string]string{"/v10": "http://u"}},
		{name: "IPv6 upstream", spec: "/api=http://[::1]:8080/x", want: map[string]string{"/api": "http://[::1]:8080/x"}},

		{name: "empty", spec: "", wantErr: "no route"},
		{name: "only commas", spec: " , ,", wantErr: "no route"},
		{name: "no equals", spec: "/api", wantErr: `"/api"`},
		{name: "relative prefix", spec: "api=http://u", wantErr: "must start with"},
		{name: "root prefix", spec: "/=http://u", wantErr: "every path"},
		{name: "trailing slash", spec: "/api/=http://u", wantErr: "must not end"},
		{name: "empty segment", spec: "/api//x=http://u", wantErr: "segment"},
		{name: "dot segment", spec: "/api/./x=http://u", wantErr: "segment"},
		{name: "dot-dot segment", spec: "/api/..=http://u", wantErr: "segment"},
		{name: "v1 reserved", spec: "/v1=http://u", wantErr: "reserved"},
		{name: "under v1 reserved", spec: "/v1/sessions=http://u", wantErr: "reserved"},
		{name: "Echo parameter", spec: "/api/:id=http://u", wantErr: `":"`},
		{name: "wildcard", spec: "/api*=http://u", wantErr: `"*"`},
		{name: "escape", spec: "/a%20b=http://u", wantErr: `"%"`},
		{name: "duplicate", spec: "/api=http://a,/api=http://b", wantErr: "twice"},
		{name: "no scheme", spec: "/api=orders:8080", wantErr: "absolute http"},
		{name: "ftp", spec: "/api=ftp://u", wantErr: "absolute http"},
		{name: "relative upstream", spec: "/api=/orders", wantErr: "absolute http"},
		{name: "no host", spec: "/api=http:///x", wantErr: "no host"},
		{name: "query", spec: "/api=http://u/x?a=b", wantErr: "query"},
		{name: "empty query", spec: "/api=http://u/x?", wantErr: "query"},
		{name: "fragment", spec: "/api=http://u/x#f", wantErr: "fragment"},
		{name: "bad URL", spec: "/api=http://u/%zz", wantErr: "not a URL"},
		{name: "user info", spec: "/api=http://bob:hunter2@u", wantErr: "user info"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			routes, err := ParseRoutes(tt.spec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRoutes(%q) = %v, want error containing %q", tt.spec, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("ParseRoutes(%q) error %q shows the password", tt.spec, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRoutes(%q): %v", tt.spec, err)
			}
			got := make(map[string]string)
			for _, r := range routes {
				got[r.Prefix] = r.Upstream.String()
			}
			if len(got) != len(tt.want) {
				t.Fatalf("ParseRoutes(%q) = %v, want %v", tt.spec, got, tt.want)
			}
			for p, u := range tt.want {
				if got[p] != u {
					t.Errorf("ParseRoutes(%q)[%q] = %q, want %q", tt.spec, p, got[p], u)
				}
			}
		})
	}
}

func TestParseRoutesReportsEveryBadEntry(t *testing.T) {
	_, err := ParseRoutes("/v1=http://u,/ok=http://u,/x=ftp://u")
	if err == nil {
		t.Fatal("ParseRoutes: no error, want two")
	}
	for _, entry := range []string{"/v1=", "/x="} {
		if !strings.Contains(err.Error(), entry) {
			t.Errorf("ParseRoutes error %q does not name %q", err, entry)
		}
	}
}

func TestParseTrustedProxies(t *testing.T) {
	tests := []struct {
		name    string
		spec    string
		want    []string
		wantErr string
	}{
		{name: "empty", spec: "", want: nil},
		{name: "CIDRs", spec: "10.0.0.0/8, 192.168.1.0/24", want: []string{"10.0.0.0/8", "192.168.1.0/24"}},
		{name: "bare IPv4", spec: "203.0.113.7", want: []string{"203.0.113.7/32"}},
		{name: "bare IPv6", spec: "2001:db8::1", want: []string{"2001:db8::1/128"}},
		{name: "IPv6 CIDR", spec: "fd00::/8", want: []string{"fd00::/8"}},
		{name: "host bits masked", spec: "10.1.2.3/8", want: []string{"10.0.0.0/8"}},
		{name: "mapped IPv4", spec: "::ffff:10.0.0.0/104", want: []string{"10.0.0.0/8"}},
		{name: "blank entries", spec: ",127.0.0.1,,", want: []string{"127.0.0.1/32"}},

		{name: "garbage", spec: "proxy.internal", wantErr: `"proxy.internal"`},
		{name: "bad CIDR", spec: "10.0.0.0/33", wantErr: `"10.0.0.0/33"`},
		{name: "zone", spec: "fe80::1%eth0", wantErr: "zone"},
		{name: "one bad among good", spec: "10.0.0.0/8,nope", wantErr: `"nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTrustedProxies(tt.spec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseTrustedProxies(%q) = %v, want error containing %q", tt.spec, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTrustedProxies(%q): %v", tt.spec, err)
			}
			var gotS []string
			for _, p := range got {
				gotS = append(gotS, p.String())
			}
			if strings.Join(gotS, ",") != strings.Join(tt.want, ",") {
				t.Errorf("ParseTrustedProxies(%q) = %v, want %v", tt.spec, gotS, tt.want)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	p, err := NewProxy(ProxyConfig{
		Routes: mustRoutes(t, "/api=http://a,/api/orders=http://b,/apix2=http://c"),
		Tokens: fakeTokens{},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		path       string
		wantPrefix string // "" for no match
		wantTail   string
	}{
		{name: "exact prefix", path: "/api", wantPrefix: "/api", wantTail: ""},
		{name: "under prefix", path: "/api/x", wantPrefix: "/api", wantTail: "/x"},
		{name: "trailing slash", path: "/api/", wantPrefix: "/api", wantTail: "/"},
		{name: "not a whole segment", path: "/apix", wantPrefix: ""},
		{name: "other route sharing letters", path: "/apix2/y", wantPrefix: "/apix2", wantTail: "/y"},
		{name: "longest wins", path: "/api/orders/1", wantPrefix: "/api/orders", wantTail: "/1"},
		{name: "longest wins exactly", path: "/api/orders", wantPrefix: "/api/orders", wantTail: ""},
		{name: "longest wins trailing slash", path: "/api/orders/", wantPrefix: "/api/orders", wantTail: "/"},
		{name: "segment boundary in longer prefix", path: "/api/ordersx", wantPrefix: "/api", wantTail: "/ordersx"},
		{name: "escaped tail kept", path: "/api/a%20b", wantPrefix: "/api", wantTail: "/a%20b"},
		{name: "escaped prefix is another path", path: "/%61pi/x", wantPrefix: ""},
		{name: "case sensitive", path: "/API/x", wantPrefix: ""},
		{name: "no route", path: "/other", wantPrefix: ""},
		{name: "root", path: "/", wantPrefix: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, tail, ok := p.Match(tt.path)
			if ok != (tt.wantPrefix != "") || r.Prefix != tt.wantPrefix || tail != tt.wantTail {
				t.Errorf("Match(%q) = %q, %q, %v; want %q, %q, %v", tt.path, r.Prefix, tail, ok, tt.wantPrefix, tt.wantTail, tt.wantPrefix != "")
			}
		})
	}
}

func TestNewProxyValidates(t *testing.T) {
	good := mustRoutes(t, "/api=http://u")
	tests := []struct {
		name string
		cfg  ProxyConfig
	}{
		{name: "no routes", cfg: ProxyConfig{Tokens: fakeTokens{}}},
		{name: "no token source", cfg: ProxyConfig{Routes: good}},
		{name: "negative timeout", cfg: ProxyConfig{Routes: good, Tokens: fakeTokens{}, UpstreamTimeout: -time.Second}},
		{name: "nil upstream", cfg: ProxyConfig{Routes: []Route{{Prefix: "/api"}}, Tokens: fakeTokens{}}},
		{name: "reserved prefix", cfg: ProxyConfig{Routes: []Route{{Prefix: "/v1", Upstream: good[0].Upstream}}, Tokens: fakeTokens{}}},
		{name: "duplicate prefix", cfg: ProxyConfig{Routes: append(good, good...), Tokens: fakeTokens{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewProxy(tt.cfg); err == nil {
				t.Errorf("NewProxy(%s) = nil error, want one", tt.name)
			}
		})
	}
}

func TestClientIP(t *testing.T) {
	trusted, err := ParseTrustedProxies("10.0.0.0/8,2001:db8::/32")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		remote string
		xff    []string
		want   string
	}{
		{name: "untrusted peer, no header", remote: "203.0.113.7:5000", want: "203.0.113.7"},
		{name: "untrusted peer ignores header", remote: "203.0.113.7:5000", xff: []string{"198.51.100.1"}, want: "203.0.113.7"},
		{name: "trusted peer, no header", remote: "10.0.0.2:5000", want: "10.0.0.2"},
		{name: "trusted peer, one hop", remote: "10.0.0.2:5000", xff: []string{"198.51.100.1"}, want: "198.51.100.1"},
		{name: "rightmost untrusted wins over forged left", remote: "10.0.0.2:5000", xff: []string{"1.1.1.1, 198.51.100.1, 10.0.0.3"}, want: "198.51.100.1"},
		{name: "several headers", remote: "10.0.0.2:5000", xff: []string{"1.1.1.1", "198.51.100.1, 10.0.0.3"}, want: "198.51.100.1"},
		{name: "all trusted gives leftmost", remote: "10.0.0.2:5000", xff: []string{"10.0.0.5, 10.0.0.3"}, want: "10.0.0.5"},
		{name: "garbage stops at trusted hop", remote: "10.0.0.2:5000", xff: []string{"1.1.1.1, unknown, 10.0.0.3"}, want: "10.0.0.3"},
		{name: "entry with port", remote: "10.0.0.2:5000", xff: []string{"198.51.100.1:4711"}, want: "198.51.100.1"},
		{name: "IPv6 peer", remote: "[2001:db8::1]:5000", xff: []string{"2001:db9::7"}, want: "2001:db9::7"},
		{name: "mapped IPv4 peer is trusted", remote: "[::ffff:10.0.0.2]:5000", xff: []string{"198.51.100.1"}, want: "198.51.100.1"},
		{name: "unparsable remote", remote: "@", want: "@"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := clientIP(r, trusted); got != tt.want {
				t.Errorf("clientIP(%s, XFF %q) = %q, want %q", tt.remote, tt.xff, got, tt.want)
			}
		})
	}
}

func TestProxyForwardsRequest(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "yes")
		w.Header().Set("Set-Cookie", "a=b")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "created")
	})
	srv := newBroker(t, ProxyConfig{Routes: mustRoutes(t, "/api/orders="+up.URL+"/v2")})

	header := http.Header{
		"Content-Type": {"application/json"},
		"X-Custom":     {"one", "two"},
		"User-Agent":   {"app/1.0"},
		"Cookie":       {"c=d"},
	}
	resp, body := send(t, srv, http.MethodPatch, "/api/orders/1?x=y&z=%20&x=2", header, strings.NewReader(`{"qty":2}`))

	if resp.StatusCode != http.StatusCreated || string(body) != "created" {
		t.Errorf("PATCH = %d %q, want 201 %q", resp.StatusCode, body, "created")
	}
	if resp.Header.Get("X-Upstream") != "yes" || resp.Header.Get("Set-Cookie") != "a=b" {
		t.Errorf("response headers = %v, want the upstream's", resp.Header)
	}
	got := up.only(t)
	if got.Method != http.MethodPatch {
		t.Errorf("upstream method = %s, want PATCH", got.Method)
	}
	if want := "/v2/1?x=y&z=%20&x=2"; got.URI != want {
		t.Errorf("upstream URI = %q, want %q", got.URI, want)
	}
	if want := up.Listener.Addr().String(); got.Host != want {
		t.Errorf("upstream Host = %q, want %q", got.Host, want)
	}
	if string(got.Body) != `{"qty":2}` {
		t.Errorf("upstream body = %q, want %q", got.Body, `{"qty":2}`)
	}
	if a := got.Header.Values("Authorization"); len(a) != 1 || a[0] != "Bearer "+testAccessToken {
		t.Errorf("upstream Authorization = %q, want the access token", a)
	}
	for k, want := range header {
		if g := got.Header.Values(k); strings.Join(g, "|") != strings.Join(want, "|") {
			t.Errorf("upstream %s = %q, want %q", k, g, want)
		}
	}
	for k, vs := range got.Header {
		for _, v := range vs {
			if strings.Contains(v, testHandle) {
				t.Errorf("upstream header %s = %q carries the handle", k, v)
			}
		}
	}
}

func TestProxyJoinsPaths(t *testing.T) {
	up := newUpstream(t, nil)
	srv := newBroker(t, ProxyConfig{Routes: mustRoutes(t, strings.Join([]string{
		"/api=" + up.URL + "/base",
		"/api/orders=" + up.URL + "/v2",
		"/slash=" + up.URL + "/v3/",
		"/root=" + up.URL,
		"/esc=" + up.URL + "/a%20b",
	}, ","))})
	tests := []struct {
		name, path, want string
	}{
		{name: "contract example", path: "/api/orders/1?x=y", want: "/v2/1?x=y"},
		{name: "exact prefix keeps base path", path: "/api/orders", want: "/v2"},
		{name: "trailing slash kept", path: "/api/orders/", want: "/v2/"},
		{name: "shorter route", path: "/api/users/7", want: "/base/users/7"},
		{name: "base with trailing slash", path: "/slash/x", want: "/v3/x"},
		{name: "base with trailing slash, exact prefix", path: "/slash", want: "/v3/"},
		{name: "no base path", path: "/root/x/y", want: "/x/y"},
		{name: "no base path, exact prefix", path: "/root", want: "/"},
		{name: "escapes survive", path: "/api/a%2Bb/c%40d%3F", want: "/base/a%2Bb/c%40d%3F"},
		{name: "escapes in upper case", path: "/api/a%2bb", want: "/base/a%2Bb"},
		{name: "escaped unreserved characters decoded", path: "/api/%61%7E%2D", want: "/base/a~-"},
		{name: "letters outside ASCII", path: "/api/caf%C3%A9/%E6%9D%B1%E4%BA%AC", want: "/base/caf%C3%A9/%E6%9D%B1%E4%BA%AC"},
		{name: "escaped base path", path: "/esc/c", want: "/a%20b/c"},
		{name: "query only", path: "/api?q=1", want: "/base?q=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(up.requests())
			resp, body := send(t, srv, http.MethodGet, tt.path, nil, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s = %d %s, want 200", tt.path, resp.StatusCode, body)
			}
			reqs := up.requests()
			if len(reqs) != before+1 {
				t.Fatalf("GET %s: upstream got %d requests, want 1", tt.path, len(reqs)-before)
			}
			if got := reqs[len(reqs)-1].URI; got != tt.want {
				t.Errorf("GET %s: upstream URI = %q, want %q", tt.path, got, tt.want)
			}
		})
	}
}

func TestProxyDropsHopByHopHeaders(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Hop-Resp")
		w.Header().Set("X-Hop-Resp", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Proxy-Authenticate", "Basic")
		w.Header().Set("X-Keep-Resp", "yes")
	})
	srv := newBroker(t, ProxyConfig{Routes: mustRoutes(t, "/api="+up.URL)})

	resp, _ := send(t, srv, http.MethodGet, "/api/x", http.Header{
		"Connection":          {"X-Hop-Req"},
		"X-Hop-Req":           {"1"},
		"Keep-Alive":          {"timeout=5"},
		"Proxy-Authorization": {"Basic " + testHandle},
		"Te":                  {"gzip"},
		"X-Keep-Req":          {"yes"},
	}, nil)

	got := up.only(t)
	for _, k := range []string{"Connection", "X-Hop-Req", "Keep-Alive", "Proxy-Authorization", "Te"} {
		if v, ok := got.Header[k]; ok {
			t.Errorf("upstream got hop-by-hop %s: %q", k, v)
		}
	}
	if got.Header.Get("X-Keep-Req") != "yes" {
		t.Errorf("upstream X-Keep-Req = %q, want yes", got.Header.Get("X-Keep-Req"))
	}
	for _, k := range []string{"X-Hop-Resp", "Keep-Alive", "Proxy-Authenticate"} {
		if v, ok := resp.Header[k]; ok {
			t.Errorf("client got hop-by-hop %s: %q", k, v)
		}
	}
	if resp.Header.Get("X-Keep-Resp") != "yes" {
		t.Errorf("client X-Keep-Resp = %q, want yes", resp.Header.Get("X-Keep-Resp"))
	}
}

func TestProxyForwardedHeaders(t *testing.T) {
	up := newUpstream(t, nil)
	routes := mustRoutes(t, "/api="+up.URL)
	loopback, err := ParseTrustedProxies("127.0.0.0/8,::1")
	if err != nil {
		t.Fatal(err)
	}
	elsewhere, err := ParseTrustedProxies("10.0.0.0/8")
	if err != nil {
		t.Fatal(err)
	}
	clientSent := http.Header{
		"X-Forwarded-For":   {"203.0.113.7, 198.51.100.1"},
		"X-Forwarded-Proto": {"https"},
		"X-Forwarded-Host":  {"app.example"},
		"Forwarded":         {"for=192.0.2.60;proto=https"},
	}
	tests := []struct {
		name      string
		trusted   []netip.Prefix
		header    http.Header
		wantFor   string
		wantProto string
		wantHost  string // "" for the broker's own host
	}{
		{name: "untrusted peer, client values replaced", trusted: elsewhere, header: clientSent, wantFor: "127.0.0.1", wantProto: "http"},
		{name: "no trusted proxies", header: clientSent, wantFor: "127.0.0.1", wantProto: "http"},
		{name: "untrusted peer, nothing sent", trusted: elsewhere, wantFor: "127.0.0.1", wantProto: "http"},
		{
			name: "trusted peer, values kept and appended", trusted: loopback, header: clientSent,
			wantFor: "203.0.113.7, 198.51.100.1, 127.0.0.1", wantProto: "https", wantHost: "app.example",
		},
		{name: "trusted peer, nothing sent", trusted: loopback, wantFor: "127.0.0.1", wantProto: "http"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newBroker(t, ProxyConfig{Routes: routes, TrustedProxies: tt.trusted})
			before := len(up.requests())
			send(t, srv, http.MethodGet, "/api/x", tt.header, nil)
			reqs := up.requests()
			if len(reqs) != before+1 {
				t.Fatalf("upstream got %d requests, want 1", len(reqs)-before)
			}
			h := reqs[len(reqs)-1].Header
			wantHost := tt.wantHost
			if wantHost == "" {
				wantHost = srv.Listener.Addr().String()
			}
			for k, want := range map[string]string{
				"X-Forwarded-For":   tt.wantFor,
				"X-Forwarded-Proto": tt.wantProto,
				"X-Forwarded-Host":  wantHost,
			} {
				if got := h.Values(k); len(got) != 1 || got[0] != want {
					t.Errorf("upstream %s = %q, want %q", k, got, want)
				}
			}
			if v, ok := h["Forwarded"]; ok {
				t.Errorf("upstream Forwarded = %q, want none", v)
			}
		})
	}
}

func TestProxyAuthorization(t *testing.T) {
	up := newUpstream(t, nil)
	srv := newBroker(t, ProxyConfig{Routes: mustRoutes(t, "/api="+up.URL)})
	tests := []struct {
		name          string
		authorization []string // nil: no header
		wantStatus    int
		wantCode      broker.Code
		wantChallenge string
	}{
		{name: "missing", wantStatus: 401, wantCode: broker.CodeInvalidToken, wantChallenge: "Bearer"},
		{name: "unknown handle", authorization: []string{"Bearer nope"}, wantStatus: 401, wantCode: broker.CodeInvalidToken, wantChallenge: `Bearer error="invalid_token"`},
		{name: "other scheme", authorization: []string{"Basic " + testHandle}, wantStatus: 401, wantCode: broker.CodeInvalidToken, wantChallenge: `Bearer error="invalid_token"`},
		{name: "empty bearer", authorization: []string{"Bearer "}, wantStatus: 401, wantCode: broker.CodeInvalidToken, wantChallenge: `Bearer error="invalid_token"`},
		{name: "IdP down", authorization: []string{"Bearer idp-down"}, wantStatus: 502, wantCode: broker.CodeIdPUnavailable},
		{name: "store down", authorization: []string{"Bearer store-down"}, wantStatus: 503, wantCode: broker.CodeStoreUnavailable},
		{name: "internal", authorization: []string{"Bearer boom"}, wantStatus: 500, wantCode: broker.CodeInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, srv.URL+"/api/x", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header["Authorization"] = tt.authorization
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			wantError(t, "GET with "+tt.name+" handle", resp, body, tt.wantStatus, tt.wantCode)
			if got := resp.Header.Get("WWW-Authenticate"); got != tt.wantChallenge {
				t.Errorf("WWW-Authenticate = %q, want %q", got, tt.wantChallenge)
			}
			if bytes.Contains(body, []byte("boom")) {
				t.Errorf("body %s leaks an internal error", body)
			}
		})
	}
	if n := len(up.requests()); n != 0 {
		t.Errorf("upstream received %d requests, want none", n)
	}
}

func TestProxyNoRoute(t *testing.T) {
	p, err := NewProxy(ProxyConfig{Routes: mustRoutes(t, "/api=http://u"), Tokens: fakeTokens{}})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	e := newEcho(slog.New(slog.DiscardHandler))
	c := e.NewContext(httptest.NewRequest(http.MethodGet, "/apix/1", nil), rec)
	if err := p.Handler(c); err != nil {
		e.HTTPErrorHandler(err, c)
	}
	resp := rec.Result()
	wantError(t, "GET /apix/1", resp, rec.Body.Bytes(), http.StatusNotFound, broker.CodeNotFound)
}

func TestProxyUpstreamDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	logs := &syncBuffer{}
	srv := newBroker(t, ProxyConfig{
		Routes: mustRoutes(t, "/api=http://"+addr),
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})

	resp, body := send(t, srv, http.MethodGet, "/api/x?secret=q", nil, nil)
	wantError(t, "GET to a closed port", resp, body, http.StatusBadGateway, broker.CodeUpstreamUnavailable)

	log := logs.String()
	for _, want := range []string{"level=WARN", "route=/api", "session_id=" + testSessionID} {
		if !strings.Contains(log, want) {
			t.Errorf("log %q does not contain %q", log, want)
		}
	}
	for _, secret := range []string{testHandle, testAccessToken, "secret=q"} {
		if strings.Contains(log, secret) {
			t.Errorf("log %q contains %q", log, secret)
		}
	}
}

func TestProxyUpstreamTimeout(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	srv := newBroker(t, ProxyConfig{Routes: mustRoutes(t, "/api="+up.URL), UpstreamTimeout: 100 * time.Millisecond})

	start := time.Now()
	resp, body := send(t, srv, http.MethodGet, "/api/slow", nil, nil)
	wantError(t, "GET to a slow upstream", resp, body, http.StatusBadGateway, broker.CodeUpstreamUnavailable)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("GET to a slow upstream took %v, want about the 100ms timeout", d)
	}
}

func TestProxyPassesUpstreamErrorsThrough(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "maintenance")
	})
	srv := newBroker(t, ProxyConfig{Routes: mustRoutes(t, "/api="+up.URL)})

	resp, body := send(t, srv, http.MethodGet, "/api/x", nil, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || string(body) != "maintenance" {
		t.Errorf("GET = %d %q, want 503 %q", resp.StatusCode, body, "maintenance")
	}
	if resp.Header.Get("Content-Type") != "text/plain" || resp.Header.Get("Retry-After") != "7" {
		t.Errorf("response headers = %v, want the upstream's", resp.Header)
	}
}

func TestProxyStreamsResponse(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	releaseUpstream := func() { once.Do(func() { close(release) }) }
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "second\n")
	})
	t.Cleanup(releaseUpstream) // runs before the servers close
	srv := newBroker(t, ProxyConfig{Routes: mustRoutes(t, "/api="+up.URL)})

	req, err := http.NewRequest(http.MethodGet, srv.URL+"/api/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testHandle)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	br := bufio.NewReader(resp.Body)
	first := make(chan string, 1)
	go func() {
		line, _ := br.ReadString('\n')
		first <- line
	}()
	select {
	case line := <-first:
		if line != "first\n" {
			t.Fatalf("first chunk = %q, want %q", line, "first\n")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first chunk did not arrive before the upstream finished")
	}
	releaseUpstream()
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "second\n" {
		t.Errorf("rest = %q, %v; want %q", rest, err, "second\n")
	}
}

func TestProxyStreamsLargeRequestBody(t *testing.T) {
	const size = 8 << 20
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	srv := newBroker(t, ProxyConfig{Routes: mustRoutes(t, "/api="+up.URL)})

	// The body is written through a pipe, so it has no length and goes out
	// chunked, as a streaming app would send it.
	pr, pw := io.Pipe()
	sent := sha256.New()
	go func() {
		rng := rand.NewChaCha8([32]byte{1})
		chunk := make([]byte, 64<<10)
		for n := 0; n < size; n += len(chunk) {
			_, _ = rng.Read(chunk)
			sent.Write(chunk)
			if _, err := pw.Write(chunk); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.Close()
	}()
	resp, _ := send(t, srv, http.MethodPut, "/api/upload", http.Header{"Content-Type": {"application/octet-stream"}}, pr)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("PUT 8 MiB = %d, want 204", resp.StatusCode)
	}
	got := up.only(t).Body
	if len(got) != size {
		t.Fatalf("upstream body = %d bytes, want %d", len(got), size)
	}
	if sum := sha256.Sum256(got); !bytes.Equal(sum[:], sent.Sum(nil)) {
		t.Error("upstream body differs from the body sent")
	}
}

func TestProxyReusesUpstreamConnections(t *testing.T) {
	up := newUpstream(t, nil)
	srv := newBroker(t, ProxyConfig{Routes: mustRoutes(t, "/api="+up.URL+",/other="+up.URL+"/o")})
	for i := range 50 {
		path := "/api/x"
		if i%2 == 1 {
			path = "/other/y"
		}
		if resp, body := send(t, srv, http.MethodGet, path, nil, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s #%d = %d %s, want 200", path, i, resp.StatusCode, body)
		}
	}
	if n := up.news.Load(); n != 1 {
		t.Errorf("50 sequential requests over two routes opened %d upstream connections, want 1", n)
	}
}

func TestUpstreamErrorAfterClientLeft(t *testing.T) {
	p, err := NewProxy(ProxyConfig{Routes: mustRoutes(t, "/api=http://u"), Tokens: fakeTokens{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rec := httptest.NewRecorder()
	p.upstreamError(rec, httptest.NewRequest(http.MethodGet, "/api/x", nil).WithContext(ctx), context.Canceled)
	if rec.Body.Len() != 0 || len(rec.Header()) != 0 {
		t.Errorf("answer to a departed client = %v %q, want nothing", rec.Header(), rec.Body)
	}
}
