package main

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

func TestLoadConfigWebSocket(t *testing.T) {
	env := validEnv()
	env["BROKER_ROUTES"] = "/api=http://api.internal:8080,/ws=http://chat.internal:8080"
	env["BROKER_WEBSOCKET_ROUTES"] = " /ws "
	env["BROKER_WEBSOCKET_MAX_LIFETIME"] = "30m"
	cfg, err := loadConfig(func(k string) string { return env[k] }, true)
	if err != nil {
		t.Fatalf("loadConfig = %v", err)
	}
	for _, r := range cfg.Routes {
		switch {
		case r.Prefix == "/ws" && (r.WebSocket == nil || r.WebSocket.MaxLifetime != 30*time.Minute || r.WebSocket.CheckInterval != 0):
			t.Errorf("route /ws: WebSocket policy %+v, want a 30m lifetime and the default check interval", r.WebSocket)
		case r.Prefix == "/api" && r.WebSocket != nil:
			t.Errorf("route /api allows WebSocket, want it not to")
		}
	}

	// Every problem is reported, naming the variable, never a value.
	for name, set := range map[string]map[string]string{
		"unknown prefix":    {"BROKER_WEBSOCKET_ROUTES": "/api,/chat-secret-path"},
		"twice":             {"BROKER_WEBSOCKET_ROUTES": "/ws,/ws"},
		"negative lifetime": {"BROKER_WEBSOCKET_ROUTES": "/ws", "BROKER_WEBSOCKET_MAX_LIFETIME": "-1h"},
		"bad interval":      {"BROKER_WEBSOCKET_ROUTES": "/ws", "BROKER_WEBSOCKET_CHECK_INTERVAL": "often"},
		"zero interval":     {"BROKER_WEBSOCKET_CHECK_INTERVAL": "0ms"},
	} {
		bad := validEnv()
		bad["BROKER_ROUTES"] = env["BROKER_ROUTES"]
		for k, v := range set {
			bad[k] = v
		}
		_, err := loadConfig(func(k string) string { return bad[k] }, true)
		if err == nil {
			t.Errorf("%s: loadConfig = nil, want an error", name)
			continue
		}
		msg := err.Error()
		if lines := strings.Count(msg, "\n"); lines != 1 {
			t.Errorf("%s: %d problem lines, want 1:\n%s", name, lines, msg)
		}
		for k, v := range set {
			if !strings.Contains(msg, k) && k != "BROKER_WEBSOCKET_ROUTES" {
				t.Errorf("%s: error %q does not name %s", name, msg, k)
			}
			for _, entry := range strings.Split(v, ",") {
				if len(entry) > 3 && strings.Contains(msg, entry) {
					t.Errorf("%s: error %q echoes the value of %s", name, msg, k)
				}
			}
		}
	}
}

// wsEcho is a WebSocket API behind the broker: it echoes every message and
// counts the connections it has open.
type wsEcho struct {
	*httptest.Server
	open atomic.Int32
}

func newWSEcho(t *testing.T) *wsEcho {
	t.Helper()
	u := &wsEcho{}
	u.Server = httptest.NewServer(websocket.Server{Handler: func(ws *websocket.Conn) {
		u.open.Add(1)
		defer u.open.Add(-1)
		_, _ = io.Copy(ws, ws)
	}})
	t.Cleanup(u.Close)
	return u
}

// dialWS opens a WebSocket to path on inst with handle.
func dialWS(t *testing.T, inst *instance, path, handle string) *websocket.Conn {
	t.Helper()
	ws, err := tryDialWS(inst, path, handle)
	if err != nil {
		t.Fatalf("WebSocket to %s: %v", path, err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	return ws
}

func tryDialWS(inst *instance, path, handle string) (*websocket.Conn, error) {
	cfg, err := websocket.NewConfig("ws"+strings.TrimPrefix(inst.base, "http")+path, "http://app.example")
	if err != nil {
		return nil, err
	}
	cfg.Header.Set("Authorization", "Bearer "+handle)
	cfg.Dialer = &net.Dialer{Timeout: 5 * time.Second}
	return websocket.DialConfig(cfg)
}

// roundTrip sends msg through the tunnel and reads it back.
func roundTrip(t *testing.T, ws *websocket.Conn, msg string) {
	t.Helper()
	if err := ws.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := websocket.Message.Send(ws, msg); err != nil {
		t.Fatalf("send: %v", err)
	}
	var got string
	if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
		t.Fatalf("receive = %q, %v; want %q", got, err, msg)
	}
}

// awaitClose reads from the tunnel until the broker closes it, and returns
// how long that took; it fails the test after limit.
func awaitClose(t *testing.T, ws *websocket.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := ws.SetReadDeadline(start.Add(limit)); err != nil {
		t.Fatal(err)
	}
	var msg string
	err := websocket.Message.Receive(ws, &msg)
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the tunnel was still open after %v (read %q, %v)", limit, msg, err)
	}
	return time.Since(start)
}

// TestWebSocketTunnelEndsWithSession opens tunnels through one broker and
// ends their sessions on another: by logout, admin revoke and back-channel
// logout. Each tunnel closes within the check interval.
func TestWebSocketTunnelEndsWithSession(t *testing.T) {
	const interval = 200 * time.Millisecond
	// What a loaded test machine may add to the interval.
	const slack = 2 * time.Second
	up := newWSEcho(t)
	s := newStack(t, stackOptions{})
	s.env["BROKER_ROUTES"] += ",/ws=" + up.URL + "/sockets"
	s.env["BROKER_WEBSOCKET_ROUTES"] = "/ws"
	s.env["BROKER_WEBSOCKET_CHECK_INTERVAL"] = interval.String()
	b1, b2 := s.start(), s.start()

	ends := []struct {
		name string
		end  func(c created)
	}{
		{"logout", func(c created) {
			if res := do(t, b2, http.MethodDelete, "/v1/session", c.Session, nil); res.status != http.StatusNoContent {
				t.Fatalf("DELETE /v1/session = %d %s, want 204", res.status, res.body)
			}
		}},
		{"admin revoke", func(c created) {
			if res := s.admin(b2, http.MethodDelete, "/admin/v1/sessions/"+c.SessionID); res.status != http.StatusNoContent {
				t.Fatalf("DELETE /admin/v1/sessions/{id} = %d %s, want 204", res.status, res.body)
			}
		}},
		{"back-channel logout", func(c created) {
			if res := postLogout(t, b2, logoutForm(s.signed(t, s.logoutClaims(sidOf(t, c), "")))); res.status != http.StatusOK {
				t.Fatalf("POST /v1/backchannel-logout = %d %s, want 200", res.status, res.body)
			}
		}},
	}
	for _, e := range ends {
		c := s.login(b1)
		ws := dialWS(t, b1, "/ws/chat", c.Session)
		roundTrip(t, ws, "hello before the "+e.name)
		e.end(c)
		if took := awaitClose(t, ws, interval+slack); took > interval+slack/2 {
			t.Errorf("%s: the tunnel closed %v after the session ended, want within the %v check interval", e.name, took, interval)
		}
	}

	eventually(t, 10*time.Second, "the upstream to see every tunnel closed", func() bool { return up.open.Load() == 0 })
	m := scrape(t, b1)
	if got := m[`broker_websocket_tunnels_closed_total{reason="session_ended"}`]; got != float64(len(ends)) {
		t.Errorf("tunnels closed for an ended session = %v, want %d", got, len(ends))
	}
	if got := m["broker_websocket_tunnels_open"]; got != 0 {
		t.Errorf("open tunnels = %v, want 0", got)
	}
	logs := b1.logs.String()
	for _, want := range []string{`"msg":"websocket tunnel opened"`, `"msg":"websocket tunnel closed"`, `"reason":"session_ended"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("broker log does not contain %s", want)
		}
	}
}

func TestWebSocketTunnelLimits(t *testing.T) {
	const lifetime = time.Second
	up := newWSEcho(t)
	s := newStack(t, stackOptions{})
	s.env["BROKER_ROUTES"] += ",/ws=" + up.URL
	s.env["BROKER_WEBSOCKET_ROUTES"] = "/ws"
	s.env["BROKER_WEBSOCKET_MAX_LIFETIME"] = lifetime.String()
	b := s.start()
	c := s.login(b)

	ws := dialWS(t, b, "/ws/chat", c.Session)
	opened := time.Now()
	roundTrip(t, ws, "hello")
	awaitClose(t, ws, lifetime+5*time.Second)
	if age := time.Since(opened); age < lifetime {
		t.Errorf("the tunnel closed after %v, before its %v lifetime", age, lifetime)
	}
	eventually(t, 10*time.Second, "the close to be counted", func() bool {
		return scrape(t, b)[`broker_websocket_tunnels_closed_total{reason="max_lifetime"}`] == 1
	})

	// The session outlives its tunnel, and only /ws tunnels.
	if ws, err := tryDialWS(b, "/api/chat", c.Session); err == nil {
		ws.Close()
		t.Error("a WebSocket on /api opened, want it refused: the route does not allow it")
	}
	if ws, err := tryDialWS(b, "/ws/chat", "not-a-handle"); err == nil {
		ws.Close()
		t.Error("a WebSocket with an unknown handle opened")
	}
	roundTrip(t, dialWS(t, b, "/ws/again", c.Session), "the session still works")

	if strings.Contains(s.allLogs(), c.Session) {
		t.Error("a broker log holds the handle")
	}
}

// eventually waits until cond holds, polling; it fails the test after
// timeout. It synchronises on a condition, never on a fixed sleep.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
