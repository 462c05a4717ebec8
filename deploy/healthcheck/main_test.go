package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestAdminURL(t *testing.T) {
	for _, tc := range []struct {
		listen, path, want string
	}{
		{"", "/healthz", "http://127.0.0.1:9090/healthz"},
		{":9090", "/readyz", "http://127.0.0.1:9090/readyz"},
		{"0.0.0.0:9191", "/healthz", "http://127.0.0.1:9191/healthz"},
		{"[::]:9090", "/healthz", "http://127.0.0.1:9090/healthz"},
		{"10.1.2.3:9090", "/healthz", "http://10.1.2.3:9090/healthz"},
		{"[::1]:9090", "/healthz", "http://[::1]:9090/healthz"},
		{"localhost:9090", "/readyz", "http://localhost:9090/readyz"},
	} {
		got, err := adminURL(tc.listen, tc.path)
		if err != nil || got != tc.want {
			t.Errorf("adminURL(%q, %q) = %q, %v; want %q", tc.listen, tc.path, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ listen, path string }{
		{"9090", "/healthz"},
		{":9090", "healthz"},
	} {
		if got, err := adminURL(tc.listen, tc.path); err == nil {
			t.Errorf("adminURL(%q, %q) = %q, want an error", tc.listen, tc.path, got)
		}
	}
}

func TestProbe(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/healthz":
			w.WriteHeader(http.StatusOK)
		case r.URL.Path == "/readyz" && ready.Load():
			w.WriteHeader(http.StatusOK)
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	listen := strings.TrimPrefix(srv.URL, "http://")

	for _, path := range []string{"/healthz", "/readyz"} {
		target, err := adminURL(listen, path)
		if err != nil {
			t.Fatal(err)
		}
		if err := probe(context.Background(), target); err != nil {
			t.Errorf("probe %s: %v", path, err)
		}
	}
	ready.Store(false)
	target, _ := adminURL(listen, "/readyz")
	if err := probe(context.Background(), target); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("probe of a 503 answer: err = %v, want one naming 503", err)
	}
	srv.Close()
	if err := probe(context.Background(), target); err == nil {
		t.Error("probe of a closed listener succeeded")
	}
}
