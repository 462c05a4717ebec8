package main

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

const cacheHits = `broker_session_cache_lookups_total{result="hit"}`

// servedFromCache proxies requests with handle on inst until one is
// answered from its session cache, and fails the test if none is.
func servedFromCache(t *testing.T, inst *instance, handle string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := scrape(t, inst)[cacheHits]
		if res := do(t, inst, http.MethodGet, "/api/x", handle, nil); res.status != http.StatusOK {
			t.Fatalf("GET /api/x = %d %s, want 200", res.status, res.body)
		}
		if scrape(t, inst)[cacheHits] > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no proxied request was answered from the session cache within 10s")
		}
	}
}

// eventually401 sends proxied requests with handle to inst until one gets
// 401, and returns how long after since that was and how many requests got
// 200 meanwhile.
func eventually401(t *testing.T, inst *instance, handle string, since time.Time) (time.Duration, int) {
	t.Helper()
	served := 0
	for {
		res := do(t, inst, http.MethodGet, "/api/x", handle, nil)
		switch res.status {
		case http.StatusUnauthorized:
			return time.Since(since), served
		case http.StatusOK:
			served++
		default:
			t.Fatalf("GET /api/x = %d %s, want 200 or 401", res.status, res.body)
		}
		if time.Since(since) > 5*time.Second {
			t.Fatalf("GET /api/x still 200 5s after the session ended: a cache kept it")
		}
	}
}

// TestCachedReplicasSeeEveryEnd ends a session by every path on one
// replica, or behind the brokers' backs in Redis, while two replicas serve
// it from their caches: both refuse it as soon as Redis's invalidation
// reaches them.
func TestCachedReplicasSeeEveryEnd(t *testing.T) {
	s := newStack(t, stackOptions{})
	a, b := s.start(), s.start()
	rdb := s.redis.Client(t)
	ctx := context.Background()
	idOf := func(c created) string { id, _, _ := strings.Cut(c.Session, "."); return id }
	cases := []struct {
		name string
		end  func(t *testing.T, c created)
	}{
		{"logout", func(t *testing.T, c created) {
			if res := do(t, a, http.MethodDelete, "/v1/session", c.Session, nil); res.status != http.StatusNoContent {
				t.Fatalf("DELETE /v1/session = %d %s", res.status, res.body)
			}
		}},
		{"admin revokes the session", func(t *testing.T, c created) {
			if res := s.admin(a, http.MethodDelete, "/admin/v1/sessions/"+idOf(c)); res.status != http.StatusNoContent {
				t.Fatalf("admin revoke = %d %s", res.status, res.body)
			}
		}},
		{"admin revokes the user", func(t *testing.T, c created) {
			if res := s.admin(a, http.MethodDelete, "/admin/v1/users/"+url.PathEscape(devidp.DemoSubject)+"/sessions"); res.status != http.StatusOK {
				t.Fatalf("admin revoke user = %d %s", res.status, res.body)
			}
		}},
		{"back-channel logout", func(t *testing.T, c created) {
			if res := postLogout(t, a, logoutForm(s.signed(t, s.logoutClaims(sidOf(t, c), "")))); res.status != http.StatusOK {
				t.Fatalf("back-channel logout = %d %s", res.status, res.body)
			}
		}},
		{"deleted in Redis", func(t *testing.T, c created) {
			if err := rdb.Del(ctx, "broker:session:{"+idOf(c)+"}").Err(); err != nil {
				t.Fatal(err)
			}
		}},
		{"edited in Redis", func(t *testing.T, c created) {
			if err := rdb.HSet(ctx, "broker:session:{"+idOf(c)+"}", "sub", "someone-else").Err(); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := s.login(a)
			servedFromCache(t, a, c.Session)
			servedFromCache(t, b, c.Session)
			tc.end(t, c)
			ended := time.Now()
			for i, inst := range []*instance{a, b} {
				took, served := eventually401(t, inst, c.Session, ended)
				t.Logf("broker %d: 401 %v after the end returned, %d requests served meanwhile", i+1, took, served)
				// The news travels from Redis to each replica's cache
				// asynchronously: usually before the end returns, and
				// within milliseconds on a loaded machine (see the
				// revocation benchmark). Without it, a cached session
				// would be served until the cache's TTL.
				if took > time.Second {
					t.Errorf("broker %d served the ended session for %v after the end returned", i+1, took)
				}
			}
		})
	}
}
