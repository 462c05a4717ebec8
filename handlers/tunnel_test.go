package handlers

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/mobile-token-broker/broker/broker"
)

// liveTokens is fakeTokens whose session can be ended, or made
// uncheckable, while a tunnel is open.
type liveTokens struct {
	fakeTokens
	ended  atomic.Bool
	down   atomic.Bool
	checks atomic.Int32
}

func (l *liveTokens) SessionLive(ctx context.Context, id string) error {
	l.checks.Add(1)
	switch {
	case l.down.Load():
		return broker.ErrStoreUnavailable
	case l.ended.Load():
		return broker.ErrInvalidToken
	}
	return l.fakeTokens.SessionLive(ctx, id)
}

// wsUpstream is a WebSocket echo server that records the requests it gets
// and counts the tunnels it has open.
type wsUpstream struct {
	*httptest.Server
	mu   sync.Mutex
	seen []seenRequest
	open atomic.Int32
}

func newWSUpstream(t *testing.T) *wsUpstream {
	t.Helper()
	u := &wsUpstream{}
	echo := websocket.Server{Handler: func(ws *websocket.Conn) {
		u.open.Add(1)
		defer u.open.Add(-1)
		_, _ = io.Copy(ws, ws)
	}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, seenRequest{Method: r.Method, URI: r.RequestURI, Header: r.Header.Clone()})
		u.mu.Unlock()
		echo.ServeHTTP(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *wsUpstream) requests() []seenRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seenRequest(nil), u.seen...)
}

// tunnelBroker is a broker with WebSocket routes, its metrics and its log.
type tunnelBroker struct {
	*httptest.Server
	proxy   *Proxy
	metrics *Metrics
	logs    *syncBuffer
}

// newTunnelBroker serves /ws (WebSocket allowed under policy) and /api (not)
// on the same upstream.
func newTunnelBroker(t *testing.T, up *wsUpstream, tokens AccessTokens, policy TunnelPolicy) *tunnelBroker {
	t.Helper()
	routes, err := AllowWebSocket(mustRoutes(t, "/ws="+up.URL+"/sockets,/api="+up.URL), "/ws", policy)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	p, err := NewProxy(ProxyConfig{Routes: routes, Tokens: tokens, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatalf("NewProxy: %v", err)
	}
	m := NewMetrics()
	p.useMetrics(m)
	e := newEcho(slog.New(slog.DiscardHandler))
	for _, r := range p.Routes() {
		e.Any(r.Prefix, p.Handler)
		e.Any(r.Prefix+"/*", p.Handler)
	}
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	return &tunnelBroker{Server: srv, proxy: p, metrics: m, logs: logs}
}

// dial opens a WebSocket through the broker with the test handle.
func (b *tunnelBroker) dial(path string) (*websocket.Conn, error) {
	cfg, err := websocket.NewConfig("ws"+strings.TrimPrefix(b.URL, "http")+path, "http://app.example")
	if err != nil {
		return nil, err
	}
	cfg.Header.Set("Authorization", "Bearer "+testHandle)
	cfg.Dialer = &net.Dialer{Timeout: 5 * time.Second}
	return websocket.DialConfig(cfg)
}

func (b *tunnelBroker) gauge(t *testing.T) float64 {
	t.Helper()
	families, err := b.metrics.Registry().Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() == "broker_websocket_tunnels_open" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no broker_websocket_tunnels_open gauge")
	return 0
}

func (b *tunnelBroker) closed(t *testing.T, reason string) float64 {
	t.Helper()
	return counterValue(t, b.metrics, "broker_websocket_tunnels_closed_total", map[string]string{"reason": reason})
}

// echoOnce sends msg through the tunnel and reads it back.
func echoOnce(t *testing.T, ws *websocket.Conn, msg string) {
	t.Helper()
	if err := ws.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := websocket.Message.Send(ws, msg); err != nil {
		t.Fatalf("send %q: %v", msg, err)
	}
	var got string
	if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
		t.Fatalf("receive = %q, %v; want %q", got, err, msg)
	}
}

// closedWithin waits until the tunnel is closed by the broker and returns
// how long that took; it fails the test after limit.
func closedWithin(t *testing.T, ws *websocket.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := ws.SetReadDeadline(start.Add(limit)); err != nil {
		t.Fatal(err)
	}
	var msg string
	err := websocket.Message.Receive(ws, &msg)
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the tunnel was still open after %v (read: %q, %v)", limit, msg, err)
	}
	return time.Since(start)
}

// eventually waits until cond holds, polling; it fails the test after
// timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestProxyWebSocketTunnel(t *testing.T) {
	up := newWSUpstream(t)
	b := newTunnelBroker(t, up, fakeTokens{}, TunnelPolicy{})

	ws, err := b.dial("/ws/chat?room=1")
	if err != nil {
		t.Fatalf("dial /ws/chat: %v", err)
	}
	echoOnce(t, ws, "hello")
	echoOnce(t, ws, "second")
	if g := b.gauge(t); g != 1 {
		t.Errorf("open tunnels = %v, want 1", g)
	}
	got := up.requests()[0]
	if got.URI != "/sockets/chat?room=1" {
		t.Errorf("upstream URI = %q, want /sockets/chat?room=1", got.URI)
	}
	if a := got.Header.Get("Authorization"); a != "Bearer "+testAccessToken {
		t.Errorf("upstream Authorization = %q, want the access token", a)
	}
	if up := got.Header.Get("Upgrade"); up != "websocket" {
		t.Errorf("upstream Upgrade = %q, want websocket", up)
	}

	if err := ws.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the tunnel to be counted closed", func() bool { return b.closed(t, reasonClosed) == 1 })
	if g := b.gauge(t); g != 0 {
		t.Errorf("open tunnels after the close = %v, want 0", g)
	}
	eventually(t, 5*time.Second, "the upstream to see the close", func() bool { return up.open.Load() == 0 })
	log := b.logs.String()
	for _, want := range []string{
		`msg="websocket tunnel opened" route=/ws session_id=` + testSessionID,
		`msg="websocket tunnel closed" route=/ws session_id=` + testSessionID + " reason=closed",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log %q does not contain %q", log, want)
		}
	}
	for _, secret := range []string{testHandle, testAccessToken} {
		if strings.Contains(log, secret) {
			t.Errorf("log %q contains a credential", log)
		}
	}
}

// TestProxyWebSocketOnlyWhereAllowed asks for a WebSocket on a route that
// does not allow it: the upgrade is dropped, so no tunnel opens.
func TestProxyWebSocketOnlyWhereAllowed(t *testing.T) {
	up := newWSUpstream(t)
	b := newTunnelBroker(t, up, fakeTokens{}, TunnelPolicy{})
	if ws, err := b.dial("/api/chat"); err == nil {
		ws.Close()
		t.Fatal("dial /api/chat opened a tunnel, want it refused")
	}
	reqs := up.requests()
	if len(reqs) != 1 {
		t.Fatalf("upstream received %d requests, want 1", len(reqs))
	}
	if v := reqs[0].Header.Values("Upgrade"); len(v) != 0 {
		t.Errorf("upstream received Upgrade %q on a route without WebSocket", v)
	}
	if g := b.gauge(t); g != 0 {
		t.Errorf("open tunnels = %v, want 0", g)
	}
}

func TestProxyWebSocketClosesWhenSessionEnds(t *testing.T) {
	const interval = 50 * time.Millisecond
	up := newWSUpstream(t)
	tokens := &liveTokens{}
	b := newTunnelBroker(t, up, tokens, TunnelPolicy{CheckInterval: interval})

	ws, err := b.dial("/ws/chat")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer ws.Close()
	echoOnce(t, ws, "before")
	eventually(t, 5*time.Second, "a check of the live session", func() bool { return tokens.checks.Load() >= 2 })
	echoOnce(t, ws, "still open")

	tokens.ended.Store(true)
	// One interval, and what a loaded machine adds to it.
	if took := closedWithin(t, ws, interval+2*time.Second); took > interval+time.Second {
		t.Errorf("the tunnel closed %v after the session ended, want within the %v check interval", took, interval)
	}
	eventually(t, 5*time.Second, "the close to be counted", func() bool { return b.closed(t, reasonSessionEnded) == 1 })
	eventually(t, 5*time.Second, "the upstream to see the close", func() bool { return up.open.Load() == 0 })
	if !strings.Contains(b.logs.String(), "reason=session_ended") {
		t.Errorf("log %q does not give the reason", b.logs)
	}
}

func TestProxyWebSocketMaxLifetime(t *testing.T) {
	const lifetime = 300 * time.Millisecond
	up := newWSUpstream(t)
	b := newTunnelBroker(t, up, fakeTokens{}, TunnelPolicy{MaxLifetime: lifetime, CheckInterval: time.Hour})

	// Before the dial: the tunnel's lifetime starts while the dial is
	// still reading the 101.
	opened := time.Now()
	ws, err := b.dial("/ws/chat")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer ws.Close()
	echoOnce(t, ws, "hello")
	closedWithin(t, ws, 5*time.Second)
	if age := time.Since(opened); age < lifetime {
		t.Errorf("the tunnel closed after %v, before its %v lifetime", age, lifetime)
	}
	eventually(t, 5*time.Second, "the close to be counted", func() bool { return b.closed(t, reasonLifetime) == 1 })
	eventually(t, 5*time.Second, "the upstream to see the close", func() bool { return up.open.Load() == 0 })
}

// Shutdown closes open tunnels: the server's own shutdown does not see
// hijacked connections, and a tunnel to a process going away would hold it.
func TestProxyWebSocketClosedAtShutdown(t *testing.T) {
	up := newWSUpstream(t)
	b := newTunnelBroker(t, up, fakeTokens{}, TunnelPolicy{MaxLifetime: time.Hour, CheckInterval: time.Hour})
	ws, err := b.dial("/ws/chat")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer ws.Close()
	echoOnce(t, ws, "hello")
	b.proxy.CloseTunnels()
	closedWithin(t, ws, 5*time.Second)
	eventually(t, 5*time.Second, "the close to be counted", func() bool { return b.closed(t, reasonShutdown) == 1 })
	eventually(t, 5*time.Second, "the upstream to see the close", func() bool { return up.open.Load() == 0 })
}

func TestProxyWebSocketClosesWhenSessionCannotBeChecked(t *testing.T) {
	up := newWSUpstream(t)
	tokens := &liveTokens{}
	b := newTunnelBroker(t, up, tokens, TunnelPolicy{CheckInterval: 20 * time.Millisecond})

	ws, err := b.dial("/ws/chat")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer ws.Close()
	echoOnce(t, ws, "hello")
	tokens.down.Store(true)
	before := tokens.checks.Load()
	closedWithin(t, ws, 5*time.Second)
	if n := tokens.checks.Load() - before; n < maxFailedChecks {
		t.Errorf("the tunnel closed after %d failed checks, want %d", n, maxFailedChecks)
	}
	eventually(t, 5*time.Second, "the close to be counted", func() bool { return b.closed(t, reasonUnchecked) == 1 })
}

func TestIsWebSocketUpgrade(t *testing.T) {
	tests := []struct {
		name   string
		method string
		proto  string
		header map[string]string
		body   string
		want   bool
	}{
		{name: "RFC 6455 example", header: map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}, want: true},
		{name: "case and other tokens", header: map[string]string{"Connection": "keep-alive, upgrade", "Upgrade": "WebSocket"}, want: true},
		{name: "h2c", header: map[string]string{"Connection": "Upgrade", "Upgrade": "h2c"}},
		{name: "several protocols", header: map[string]string{"Connection": "Upgrade", "Upgrade": "websocket, h2c"}},
		{name: "no Connection", header: map[string]string{"Upgrade": "websocket"}},
		{name: "POST", method: http.MethodPost, header: map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}},
		{name: "HTTP/1.0", proto: "HTTP/1.0", header: map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}},
		{name: "with a body", header: map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}, body: "smuggled"},
	}
	for _, tt := range tests {
		method := cmpOr(tt.method, http.MethodGet)
		r := httptest.NewRequest(method, "/ws", strings.NewReader(tt.body))
		if tt.body == "" {
			r.ContentLength = 0
		}
		if tt.proto != "" {
			r.Proto, r.ProtoMajor, r.ProtoMinor = tt.proto, 1, 0
		}
		for k, v := range tt.header {
			r.Header.Set(k, v)
		}
		if got := isWebSocketUpgrade(r); got != tt.want {
			t.Errorf("isWebSocketUpgrade(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func TestAllowWebSocket(t *testing.T) {
	routes := mustRoutes(t, "/api=http://a,/ws=http://b,/api/chat=http://c")
	got, err := AllowWebSocket(routes, " /ws, ,/api/chat ", TunnelPolicy{MaxLifetime: time.Minute})
	if err != nil {
		t.Fatalf("AllowWebSocket: %v", err)
	}
	for _, r := range got {
		want := r.Prefix != "/api"
		if (r.WebSocket != nil) != want {
			t.Errorf("route %s allows WebSocket: %v, want %v", r.Prefix, r.WebSocket != nil, want)
		}
		if r.WebSocket != nil && r.WebSocket.MaxLifetime != time.Minute {
			t.Errorf("route %s: policy %+v, want the one given", r.Prefix, *r.WebSocket)
		}
	}
	for _, r := range routes {
		if r.WebSocket != nil {
			t.Errorf("AllowWebSocket changed the routes it was given")
		}
	}

	for spec, want := range map[string][]string{
		"/wss":              {"entry 1 is not the prefix"},
		"/ws,/ws/x,/ws":     {"entry 2 is not the prefix", "entry 3 lists a route a second time"},
		"/API":              {"entry 1"},
		"/api/secret-token": {"entry 1"},
	} {
		_, err := AllowWebSocket(routes, spec, TunnelPolicy{})
		if err == nil {
			t.Errorf("AllowWebSocket(%q) = nil error, want one", spec)
			continue
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("AllowWebSocket(%q) = %q, want it to say %q", spec, err, w)
			}
		}
		for _, entry := range strings.Split(spec, ",") {
			if strings.Contains(err.Error(), entry) {
				t.Errorf("AllowWebSocket(%q) = %q, which repeats the value %q", spec, err, entry)
			}
		}
	}

	if _, err := NewProxy(ProxyConfig{Routes: []Route{{Prefix: "/ws", Upstream: routes[0].Upstream, WebSocket: &TunnelPolicy{MaxLifetime: -1}}}, Tokens: fakeTokens{}}); err == nil {
		t.Error("NewProxy with a negative tunnel lifetime = nil error, want one")
	}
}
