package main

import (
	"bufio"
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// scrape reads GET /metrics of inst's admin listener, without credentials,
// into a map from series (name and labels as exposed) to value.
func scrape(t *testing.T, inst *instance) map[string]float64 {
	t.Helper()
	res := doURL(t, http.MethodGet, inst.admin+"/metrics", "", nil, nil)
	if res.status != http.StatusOK {
		t.Fatalf("GET /metrics = %d %s, want 200", res.status, res.body)
	}
	if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type = %q, want the Prometheus text format", ct)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(res.body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func TestMetrics(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	before := scrape(t, b)
	for _, series := range []string{
		`broker_exchanges_total{outcome="ok"}`,
		`broker_refreshes_total{outcome="coalesced"}`,
		`broker_sessions_ended_total{reason="admin"}`,
		`broker_errors_total{code="store_unavailable"}`,
	} {
		if v, ok := before[series]; !ok || v != 0 {
			t.Errorf("before any request %s = %v (present %v), want 0", series, v, ok)
		}
	}

	c := s.login(b)
	s.clock.Advance(devidp.DefaultAccessTokenTTL)
	if res := do(t, b, http.MethodGet, "/api/orders/1", c.Session, nil); res.status != http.StatusOK {
		t.Fatalf("proxied request after the access token expired = %d %s", res.status, res.body)
	}
	if res := do(t, b, http.MethodGet, "/api/x", "garbage", nil); res.status != http.StatusUnauthorized {
		t.Fatalf("garbage handle = %d, want 401", res.status)
	}
	if res := do(t, b, http.MethodDelete, "/v1/session", c.Session, nil); res.status != http.StatusNoContent {
		t.Fatalf("logout = %d, want 204", res.status)
	}
	do(t, b, http.MethodGet, "/no/such/route", "", nil)

	after := scrape(t, b)
	tests := []struct {
		series string
		want   float64
	}{
		{`broker_exchanges_total{outcome="ok"}`, 1},
		{`broker_refreshes_total{outcome="ok"}`, 1},
		{`broker_sessions_ended_total{reason="logout"}`, 1},
		{`broker_errors_total{code="invalid_token"}`, 1},
		{`broker_errors_total{code="not_found"}`, 1},
		{`broker_http_requests_total{listener="public",method="POST",route="/v1/sessions",source="broker",status="201"}`, 1},
		{`broker_http_requests_total{listener="public",method="GET",route="/api/orders/*",source="upstream",status="200"}`, 1},
		{`broker_http_requests_total{listener="public",method="GET",route="unmatched",source="broker",status="404"}`, 1},
		{`broker_http_request_duration_seconds_count{listener="public",route="/v1/sessions"}`, 1},
		{`broker_http_requests_total{listener="admin",method="GET",route="/metrics",source="broker",status="200"}`, 1},
	}
	for _, tt := range tests {
		if got := after[tt.series]; got != tt.want {
			t.Errorf("%s = %v, want %v", tt.series, got, tt.want)
		}
	}
	for _, series := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := after[series]; !ok {
			t.Errorf("no %s: the Go and process collectors are missing", series)
		}
	}
	for k := range after {
		if strings.Contains(k, c.SessionID) || strings.Contains(k, "/api/orders/1") {
			t.Errorf("series %s is labelled with a request detail", k)
		}
	}
	if res := do(t, b, http.MethodGet, "/metrics", "", nil); res.status != http.StatusNotFound {
		t.Errorf("GET /metrics on the public listener = %d, want 404", res.status)
	}

	t.Run("upstream unavailable", func(t *testing.T) {
		c := s.login(b)
		s.upstream.Close()
		res := do(t, b, http.MethodGet, "/api/x", c.Session, nil)
		if res.status != http.StatusBadGateway || res.errorCode(t) != "upstream_unavailable" {
			t.Fatalf("GET /api/x with the upstream down = %d %s, want 502 upstream_unavailable", res.status, res.body)
		}
		if got := scrape(t, b)[`broker_errors_total{code="upstream_unavailable"}`]; got != 1 {
			t.Errorf(`broker_errors_total{code="upstream_unavailable"} = %v, want 1`, got)
		}
	})
}
