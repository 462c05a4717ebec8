package main

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// The limits are per client IP and shared by every replica through Redis.
func TestRateLimitExchange(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_RATE_LIMIT_EXCHANGE": "3/m"}})
	b1, b2 := s.start(), s.start()
	post := func(b *instance, xff string) response {
		t.Helper()
		h := http.Header{}
		if xff != "" {
			h.Set("X-Forwarded-For", xff)
		}
		return doURL(t, http.MethodPost, b.base+"/v1/sessions", "", `{}`, h)
	}
	for i, b := range []*instance{b1, b2, b1} {
		if res := post(b, ""); res.status != http.StatusBadRequest {
			t.Fatalf("request %d = %d %s, want 400 (within the limit)", i, res.status, res.body)
		}
	}
	// A client-sent X-Forwarded-For from an untrusted peer changes nothing.
	res := post(b2, "203.0.113.9")
	if res.status != http.StatusTooManyRequests || res.errorCode(t) != "rate_limited" {
		t.Fatalf("4th request across replicas = %d %s, want 429 rate_limited", res.status, res.body)
	}
	if ra, err := strconv.Atoi(res.header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
		t.Errorf("Retry-After = %q, want 1..60 seconds", res.header.Get("Retry-After"))
	}
}

func TestRateLimitTrustedProxy(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{
		"BROKER_RATE_LIMIT_EXCHANGE": "1/m",
		"BROKER_TRUSTED_PROXIES":     "127.0.0.0/8",
	}})
	b := s.start()
	send := func(xff string) int {
		t.Helper()
		return doURL(t, http.MethodPost, b.base+"/v1/sessions", "", `{}`, http.Header{"X-Forwarded-For": {xff}}).status
	}
	if got := send("198.51.100.1"); got != http.StatusBadRequest {
		t.Fatalf("first client = %d, want 400", got)
	}
	if got := send("198.51.100.2"); got != http.StatusBadRequest {
		t.Fatalf("second client behind the trusted proxy = %d, want 400 (its own budget)", got)
	}
	if got := send("198.51.100.1"); got != http.StatusTooManyRequests {
		t.Fatalf("first client again = %d, want 429", got)
	}
}

func TestRateLimitInvalidHandles(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_RATE_LIMIT_INVALID": "2/m"}})
	b := s.start()
	c := s.login(b)
	for i := range 2 {
		if res := do(t, b, http.MethodGet, "/api/x", "garbage", nil); res.status != http.StatusUnauthorized {
			t.Fatalf("invalid handle %d = %d, want 401", i, res.status)
		}
	}
	res := do(t, b, http.MethodGet, "/v1/session", "garbage", nil)
	if res.status != http.StatusTooManyRequests || res.header.Get("Retry-After") == "" {
		t.Fatalf("3rd invalid handle = %d (Retry-After %q), want 429 with Retry-After", res.status, res.header.Get("Retry-After"))
	}
	// A live handle from the same IP is not limited, and a missing one is
	// not counted.
	if res := do(t, b, http.MethodGet, "/api/x", c.Session, nil); res.status != http.StatusOK {
		t.Errorf("live handle = %d, want 200", res.status)
	}
	if res := do(t, b, http.MethodGet, "/api/x", "", nil); res.status != http.StatusUnauthorized {
		t.Errorf("no handle = %d, want 401", res.status)
	}
}

func TestRateLimitOff(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_RATE_LIMIT_INVALID": "0", "BROKER_RATE_LIMIT_EXCHANGE": "0"}})
	b := s.start()
	for i := range 30 {
		if res := do(t, b, http.MethodGet, "/v1/session", "garbage", nil); res.status != http.StatusUnauthorized {
			t.Fatalf("invalid handle %d with the limit off = %d, want 401", i, res.status)
		}
	}
}

// Refused admin calls are throttled at the invalid-handle rate, on a budget
// of their own: guessing admin tokens, or flooding the capped audit trail
// with refusals, is limited, and bad handles do not spend it.
func TestRateLimitAdminRefusals(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_RATE_LIMIT_INVALID": "2/m"}})
	b := s.start()
	for range 3 {
		do(t, b, http.MethodGet, "/v1/session", "garbage", nil)
	}
	for i := range 2 {
		res := doURL(t, http.MethodGet, b.admin+"/admin/v1/audit", "wrong-token-0123456789", nil, nil)
		if res.status != http.StatusUnauthorized {
			t.Fatalf("wrong admin token %d = %d, want 401", i, res.status)
		}
	}
	res := doURL(t, http.MethodGet, b.admin+"/admin/v1/audit", "wrong-token-0123456789", nil, nil)
	if res.status != http.StatusTooManyRequests {
		t.Fatalf("3rd wrong admin token = %d, want 429", res.status)
	}
}

// A 429 is the limit working, not a fault: it is counted, and logged by the
// access log only, never as an error.
func TestRateLimitedIsNotAnError(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_RATE_LIMIT_EXCHANGE": "1/m", "BROKER_RATE_LIMIT_INVALID": "1/m"}})
	b := s.start()
	do(t, b, http.MethodPost, "/v1/sessions", "", `{}`)
	if res := do(t, b, http.MethodPost, "/v1/sessions", "", `{}`); res.status != http.StatusTooManyRequests {
		t.Fatalf("2nd exchange = %d, want 429", res.status)
	}
	do(t, b, http.MethodGet, "/api/x", "garbage", nil)
	if res := do(t, b, http.MethodGet, "/api/x", "garbage", nil); res.status != http.StatusTooManyRequests {
		t.Fatalf("2nd invalid handle = %d, want 429", res.status)
	}
	for _, line := range strings.Split(b.logs.String(), "\n") {
		if strings.Contains(line, `"level":"ERROR"`) {
			t.Errorf("a 429 was logged as an error: %s", line)
		}
	}
	if !strings.Contains(b.logs.String(), `"status":429`) {
		t.Errorf("the access log has no 429; the check above would be vacuous")
	}
}

// IPv6 clients share a budget per /64 by default (one host's usual
// allocation), per BROKER_RATE_LIMIT_IPV6_PREFIX otherwise; an IPv4-mapped
// address is its IPv4 address. The addresses come through X-Forwarded-For
// from a trusted proxy, as behind a load balancer.
func TestRateLimitIPv6Prefix(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{
		"BROKER_RATE_LIMIT_EXCHANGE": "1/m",
		"BROKER_TRUSTED_PROXIES":     "127.0.0.0/8",
	}})
	b64 := s.start()
	b48, err := s.tryStart(map[string]string{"BROKER_RATE_LIMIT_IPV6_PREFIX": "/48"})
	if err != nil {
		t.Fatal(err)
	}
	send := func(b *instance, client string) int {
		t.Helper()
		return doURL(t, http.MethodPost, b.base+"/v1/sessions", "", `{}`, http.Header{"X-Forwarded-For": {client}}).status
	}
	for _, tt := range []struct {
		b      *instance
		client string
		want   int
	}{
		{b64, "2001:db8:1:2::1", http.StatusBadRequest},
		{b64, "2001:db8:1:2:ffff:ffff:ffff:ffff", http.StatusTooManyRequests}, // the same /64
		{b64, "2001:db8:1:3::1", http.StatusBadRequest},                       // another /64
		{b64, "198.51.100.7", http.StatusBadRequest},
		{b64, "::ffff:198.51.100.7", http.StatusTooManyRequests}, // the same IPv4 client
		{b64, "198.51.100.8", http.StatusBadRequest},
		// The brokers share Redis: the /48 one is sent other addresses.
		{b48, "2001:db8:5:1::1", http.StatusBadRequest},
		{b48, "2001:db8:5:2::1", http.StatusTooManyRequests}, // the same /48
		{b48, "2001:db8:6:1::1", http.StatusBadRequest},
	} {
		if got := send(tt.b, tt.client); got != tt.want {
			t.Errorf("POST /v1/sessions from %s = %d, want %d", tt.client, got, tt.want)
		}
	}
}
