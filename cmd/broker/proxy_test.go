package main

import (
	"net"
	"net/http"
	"strings"
	"testing"
)

func TestProxyEndToEnd(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	c := s.login(b)

	res := do(t, b, http.MethodPost, "/api/orders/42/items?expand=1&x=%20y", c.Session, map[string]string{"qty": "3"})
	if res.status != http.StatusOK {
		t.Fatalf("POST /api/orders/42/items = %d %s, want 200", res.status, res.body)
	}
	var got struct{ Method, Path, Query, Authorization, Body string }
	res.decode(t, &got)
	if got.Method != http.MethodPost || got.Path != "/orders/v2/42/items" || got.Query != "expand=1&x=%20y" || !strings.Contains(got.Body, `"qty":"3"`) {
		t.Errorf("upstream saw %+v, want POST /orders/v2/42/items?expand=1&x=%%20y with the body (longest prefix)", got)
	}
	token, ok := strings.CutPrefix(got.Authorization, "Bearer ")
	if !ok || token == "" || strings.Contains(got.Authorization, c.Session) {
		t.Fatalf("upstream Authorization = %q, want the access token and never the handle", got.Authorization)
	}
	// The access token is the IdP's: its userinfo endpoint accepts it.
	if r := doURL(t, http.MethodGet, s.idp.Issuer()+"/userinfo", token, nil, nil); r.status != http.StatusOK {
		t.Errorf("the IdP's userinfo with the forwarded token = %d, want 200", r.status)
	}

	res = do(t, b, http.MethodGet, "/api", c.Session, nil)
	res.decode(t, &got)
	if res.status != http.StatusOK || got.Path != "/base" {
		t.Errorf("GET /api = %d, upstream path %q, want 200 and /base", res.status, got.Path)
	}

	for _, path := range []string{"/apix", "/nothing", "/v1/nothing"} {
		res := do(t, b, http.MethodGet, path, c.Session, nil)
		if res.status != http.StatusNotFound || res.errorCode(t) != "not_found" {
			t.Errorf("GET %s = %d %s, want 404 not_found", path, res.status, res.body)
		}
	}
}

func TestProxyUpstreamDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_ROUTES": "/api=http://" + dead}})
	b := s.start()
	c := s.login(b)
	res := do(t, b, http.MethodGet, "/api/x", c.Session, nil)
	if res.status != http.StatusBadGateway || res.errorCode(t) != "upstream_unavailable" {
		t.Fatalf("= %d %s, want 502 upstream_unavailable", res.status, res.body)
	}
}

// TestProxyRefusesOtherReadings sends paths that an upstream could read as
// another path, /api/orders among them, to the real wiring: each is refused
// with 400 and the upstream sees none of them.
func TestProxyRefusesOtherReadings(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	c := s.login(b)
	for _, path := range []string{
		"/api//orders/1", "/api/orders;/1", "/api/orders%3B/1", "/api/ORDERS/1", "/api/orders./1",
		"/api/orders%20/1", "/api/%252e%252e/v1/sessions", "/api/..%00/x", "/api/%c0%ae%c0%ae/x",
		"/api/%ef%bc%8e%ef%bc%8e/x", "/api/a%ef%bc%8fb", "/api/a%e2%88%95b", "/api/x%0d%0ay",
	} {
		res := do(t, b, http.MethodGet, path, c.Session, nil)
		if res.status != http.StatusBadRequest || res.errorCode(t) != "invalid_request" {
			t.Errorf("GET %s = %d %s, want 400 invalid_request", path, res.status, res.body)
		}
	}
	s.upstream.mu.Lock()
	defer s.upstream.mu.Unlock()
	for _, r := range s.upstream.requests {
		t.Errorf("the upstream received %s", r.URL.EscapedPath())
	}
}
