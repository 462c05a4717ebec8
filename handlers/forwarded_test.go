package handlers

import (
	"net/http"
	"net/netip"
	"testing"
)

// TestProxyDropsForwardingHeaders sends every header by which a proxy speaks
// about the client or the original request: from a peer that is not a
// trusted proxy none reaches the upstream; from a trusted proxy those about
// the client are kept, and those naming another path never pass.
func TestProxyDropsForwardingHeaders(t *testing.T) {
	up := newUpstream(t, nil)
	routes := mustRoutes(t, "/api="+up.URL)
	loopback, err := ParseTrustedProxies("127.0.0.0/8,::1")
	if err != nil {
		t.Fatal(err)
	}
	aboutClient := []string{
		"X-Real-IP", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Server",
		"X-Forwarded-Ssl", "X-Forwarded-Scheme", "X-Forwarded-Protocol", "X-Forwarded-Client-Cert",
		"X-Original-Forwarded-For", "True-Client-IP", "CF-Connecting-IP", "Fastly-Client-IP",
		"X-Client-IP", "X-Cluster-Client-IP", "X-ProxyUser-Ip", "X-Host", "X-Original-Host",
		"X-Forwarded", "Forwarded-For", "X-Url-Scheme", "Front-End-Https", "X-Originating-IP",
		"X-Remote-IP", "X-Remote-Addr", "Client-IP", "X-Envoy-External-Address", "X-Azure-ClientIP",
	}
	aboutPath := []string{
		"X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-Forwarded-Uri", "X-Forwarded-Path",
		"X-Envoy-Original-Path", "Forwarded",
	}
	// Spellings that CGI-style servers read as the headers the broker sets.
	underscored := []string{"X_Forwarded_For", "X_Forwarded_Proto", "X_Forwarded_Host", "X_Real_IP", "X-Forwarded_For", "X_Request_Id"}

	sent := http.Header{}
	for _, k := range append(append(aboutClient, aboutPath...), underscored...) {
		sent[k] = []string{"198.51.100.66"}
	}
	sent.Set("X-Forwarded-For", "203.0.113.7")
	sent.Set("X-Forwarded-Proto", "https")
	sent.Set("X-Forwarded-Host", "app.example")
	sent.Set("X-Custom", "kept")

	tests := []struct {
		name      string
		trusted   []netip.Prefix
		keep      []string
		wantFor   string
		wantProto string
		wantHost  string // "" for the broker's own host
	}{
		{name: "untrusted peer", wantFor: "127.0.0.1", wantProto: "http"},
		{name: "trusted proxy", trusted: loopback, keep: aboutClient, wantFor: "203.0.113.7, 127.0.0.1", wantProto: "https", wantHost: "app.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newBroker(t, ProxyConfig{Routes: routes, TrustedProxies: tt.trusted})
			before := len(up.requests())
			send(t, srv, http.MethodGet, "/api/x", sent, nil)
			reqs := up.requests()
			if len(reqs) != before+1 {
				t.Fatalf("upstream got %d requests, want 1", len(reqs)-before)
			}
			got := reqs[len(reqs)-1].Header
			kept := map[string]bool{}
			for _, k := range tt.keep {
				kept[http.CanonicalHeaderKey(k)] = true
				if v := got.Values(k); len(v) != 1 || v[0] != "198.51.100.66" {
					t.Errorf("upstream %s = %q from a trusted proxy, want it kept", k, v)
				}
			}
			for _, k := range append(append(aboutClient, aboutPath...), underscored...) {
				if kept[http.CanonicalHeaderKey(k)] {
					continue
				}
				// Read the map directly: underscored names are not in
				// canonical form.
				for name, v := range got {
					if name == k || name == http.CanonicalHeaderKey(k) {
						t.Errorf("upstream received %s: %q", name, v)
					}
				}
			}
			wantHost := tt.wantHost
			if wantHost == "" {
				wantHost = srv.Listener.Addr().String()
			}
			for k, want := range map[string]string{
				"X-Forwarded-For":   tt.wantFor,
				"X-Forwarded-Proto": tt.wantProto,
				"X-Forwarded-Host":  wantHost,
				"X-Custom":          "kept",
			} {
				if v := got.Values(k); len(v) != 1 || v[0] != want {
					t.Errorf("upstream %s = %q, want %q", k, v, want)
				}
			}
		})
	}
}
