package handlers

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	//lint:ignore SA1019 the Upgrade to h2c these tests need is only in x/net: net/http speaks unencrypted HTTP/2 with prior knowledge only
	"golang.org/x/net/http2/h2c"
)

// h2cUpstream is an API that speaks HTTP/2 over cleartext and accepts an
// Upgrade to it; like some servers, it upgrades even when Connection does
// not name HTTP2-Settings. It records the headers of every request as they
// arrived and the protocol each was served over.
type h2cUpstream struct {
	mu      sync.Mutex
	headers []http.Header
	protos  []string
}

func (u *h2cUpstream) handler() http.Handler {
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.protos = append(u.protos, r.Proto)
		u.mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	})
	//lint:ignore SA1019 see the import of h2c
	h2s := &http2.Server{}
	//lint:ignore SA1019 see the import of h2c
	served := h2c.NewHandler(inner, h2s)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.headers = append(u.headers, r.Header.Clone())
		u.mu.Unlock()
		if r.Header.Get("Upgrade") != "" {
			r.Header.Add("Connection", "HTTP2-Settings")
		}
		served.ServeHTTP(w, r)
	})
}

func (u *h2cUpstream) seen() (headers []http.Header, protos []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]http.Header(nil), u.headers...), append([]string(nil), u.protos...)
}

// TestProxyDropsUpgrade asks an h2c upstream for an upgrade through the
// proxy in every way, also on a route that allows WebSocket: the request
// must be served as plain HTTP/1.1, and the upstream must never see an
// Upgrade.
func TestProxyDropsUpgrade(t *testing.T) {
	u := &h2cUpstream{}
	up := httptest.NewServer(u.handler())
	t.Cleanup(up.Close)
	routes, err := AllowWebSocket(mustRoutes(t, "/api="+up.URL+",/ws="+up.URL), "/ws", TunnelPolicy{})
	if err != nil {
		t.Fatal(err)
	}
	srv := newBroker(t, ProxyConfig{Routes: routes})

	const settings = "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
	tests := []struct {
		name, headers string
		paths         []string
	}{
		{"h2c, settings named", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n" + settings, []string{"/api/x", "/ws/x"}},
		{"h2c, settings not named", "Connection: Upgrade\r\nUpgrade: h2c\r\n" + settings, []string{"/api/x", "/ws/x"}},
		{"h2c, lower case", "Connection: upgrade\r\nUpgrade: h2c\r\n" + settings, []string{"/api/x", "/ws/x"}},
		{"h2c without Connection", "Upgrade: h2c\r\n" + settings, []string{"/api/x", "/ws/x"}},
		{"several protocols", "Connection: Upgrade\r\nUpgrade: h2c, websocket\r\n" + settings, []string{"/api/x", "/ws/x"}},
		{"websocket and h2c headers", "Connection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n" + settings, []string{"/api/x", "/ws/x"}},
		{"websocket on a route without it", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", []string{"/api/x"}},
	}
	for _, tt := range tests {
		for _, path := range tt.paths {
			t.Run(tt.name+" "+path, func(t *testing.T) {
				before, _ := u.seen()
				resp, body := rawRequest(t, srv, "GET "+path+" HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer "+testHandle+"\r\n"+tt.headers+"\r\n")
				if resp.StatusCode != http.StatusOK || string(body) != "ok" {
					t.Fatalf("GET %s with %s = %d %q, want 200 %q without a switch of protocols", path, tt.name, resp.StatusCode, body, "ok")
				}
				headers, protos := u.seen()
				if len(headers) != len(before)+1 {
					t.Fatalf("the upstream received %d requests, want 1", len(headers)-len(before))
				}
				got := headers[len(headers)-1]
				for _, k := range []string{"Upgrade", "Connection", "Http2-Settings"} {
					if v, ok := got[k]; ok {
						t.Errorf("the upstream received %s: %q", k, v)
					}
				}
				if p := protos[len(protos)-1]; p != "HTTP/1.1" {
					t.Errorf("the upstream served the request over %s, want HTTP/1.1", p)
				}
			})
		}
	}
}
