package main

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestSessionEndpoints(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	c := s.login(b)

	t.Run("GET /v1/session", func(t *testing.T) {
		res := do(t, b, http.MethodGet, "/v1/session", c.Session, nil)
		if res.status != http.StatusOK {
			t.Fatalf("= %d %s, want 200", res.status, res.body)
		}
		var got struct {
			SessionID string         `json:"session_id"`
			User      map[string]any `json:"user"`
			CreatedAt time.Time      `json:"created_at"`
			ExpiresAt time.Time      `json:"expires_at"`
		}
		res.decode(t, &got)
		if got.SessionID != c.SessionID || got.User["sub"] != c.User["sub"] || got.CreatedAt.IsZero() || !got.ExpiresAt.After(got.CreatedAt) {
			t.Errorf("= %+v, want session %s of %v with created_at < expires_at", got, c.SessionID, c.User["sub"])
		}
	})
	t.Run("GET /v1/userinfo", func(t *testing.T) {
		res := do(t, b, http.MethodGet, "/v1/userinfo", c.Session, nil)
		if res.status != http.StatusOK {
			t.Fatalf("= %d %s, want 200", res.status, res.body)
		}
		var info map[string]any
		res.decode(t, &info)
		if info["sub"] != c.User["sub"] || info["email"] == nil {
			t.Errorf("userinfo = %v, want sub %v and email", info, c.User["sub"])
		}
	})

	bad := []struct {
		name, path, method, auth, wantChallenge string
	}{
		{"no handle, session", "/v1/session", http.MethodGet, "", "Bearer"},
		{"no handle, userinfo", "/v1/userinfo", http.MethodGet, "", "Bearer"},
		{"no handle, proxy", "/api/x", http.MethodGet, "", "Bearer"},
		{"no handle, logout", "/v1/session", http.MethodDelete, "", "Bearer"},
		{"garbage handle", "/v1/session", http.MethodGet, "Bearer garbage", `Bearer error="invalid_token"`},
		{"empty bearer", "/v1/session", http.MethodGet, "Bearer ", `Bearer error="invalid_token"`},
		{"other scheme", "/v1/session", http.MethodGet, "Basic dXNlcjpwYXNz", `Bearer error="invalid_token"`},
		{"right id, wrong secret", "/v1/session", http.MethodGet, "Bearer " + c.SessionID + "." + strings.Repeat("A", 43), `Bearer error="invalid_token"`},
		{"garbage handle, userinfo", "/v1/userinfo", http.MethodGet, "Bearer garbage", `Bearer error="invalid_token"`},
		{"garbage handle, proxy", "/api/x", http.MethodGet, "Bearer garbage", `Bearer error="invalid_token"`},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.auth != "" {
				h.Set("Authorization", tt.auth)
			}
			res := doURL(t, tt.method, b.base+tt.path, "", nil, h)
			if res.status != http.StatusUnauthorized {
				t.Fatalf("= %d %s, want 401", res.status, res.body)
			}
			if got := res.errorCode(t); got != "invalid_token" {
				t.Errorf("error = %q, want invalid_token", got)
			}
			if got := res.header.Get("WWW-Authenticate"); got != tt.wantChallenge {
				t.Errorf("WWW-Authenticate = %q, want %q", got, tt.wantChallenge)
			}
		})
	}

	t.Run("logout", func(t *testing.T) {
		revokedBefore := len(s.idp.Revoked())
		if res := do(t, b, http.MethodDelete, "/v1/session", c.Session, nil); res.status != http.StatusNoContent {
			t.Fatalf("DELETE /v1/session = %d %s, want 204", res.status, res.body)
		}
		if got := len(s.idp.Revoked()) - revokedBefore; got != 1 {
			t.Errorf("the IdP saw %d revocations, want 1 (RFC 7009)", got)
		}
		for _, path := range []string{"/v1/session", "/v1/userinfo", "/api/x"} {
			if res := do(t, b, http.MethodGet, path, c.Session, nil); res.status != http.StatusUnauthorized {
				t.Errorf("GET %s after logout = %d, want 401", path, res.status)
			}
		}
		if res := do(t, b, http.MethodDelete, "/v1/session", c.Session, nil); res.status != http.StatusNoContent {
			t.Errorf("second DELETE = %d, want 204", res.status)
		}
		if res := do(t, b, http.MethodDelete, "/v1/session", "garbage", nil); res.status != http.StatusNoContent {
			t.Errorf("DELETE with unknown handle = %d, want 204", res.status)
		}
	})
}

// Logging out with the right session id but a wrong secret ends nothing.
func TestLogoutNeedsTheSecret(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	c := s.login(b)
	forged := c.SessionID + "." + strings.Repeat("B", 43)
	if res := do(t, b, http.MethodDelete, "/v1/session", forged, nil); res.status != http.StatusNoContent {
		t.Fatalf("DELETE with a forged handle = %d, want 204", res.status)
	}
	if res := do(t, b, http.MethodGet, "/v1/session", c.Session, nil); res.status != http.StatusOK {
		t.Fatalf("the session ended after a forged logout: %d", res.status)
	}
}

func TestSessionLifetimes(t *testing.T) {
	newBroker := func(t *testing.T) (*stack, *instance) {
		s := newStack(t, stackOptions{env: map[string]string{
			"BROKER_SESSION_IDLE_TIMEOUT": "1h",
			"BROKER_SESSION_MAX_LIFETIME": "3h",
		}})
		return s, s.start()
	}

	t.Run("idle", func(t *testing.T) {
		s, b := newBroker(t)
		c := s.login(b)
		want := s.clock.Now().Add(time.Hour)
		if d := c.ExpiresAt.Sub(want); d < -2*time.Second || d > 2*time.Second {
			t.Errorf("expires_at = %v, want about %v", c.ExpiresAt, want)
		}
		s.clock.Advance(61 * time.Minute)
		if res := do(t, b, http.MethodGet, "/v1/session", c.Session, nil); res.status != http.StatusUnauthorized {
			t.Fatalf("after the idle timeout = %d, want 401", res.status)
		}
	})
	t.Run("use extends the idle end, not the absolute end", func(t *testing.T) {
		s, b := newBroker(t)
		c := s.login(b)
		for range 4 {
			s.clock.Advance(40 * time.Minute)
			if res := do(t, b, http.MethodGet, "/v1/session", c.Session, nil); res.status != http.StatusOK {
				t.Fatalf("used within the idle timeout = %d, want 200", res.status)
			}
		}
		// 190 minutes after creation, 30 after the last use: past the 3h
		// absolute end only.
		s.clock.Advance(30 * time.Minute)
		if res := do(t, b, http.MethodGet, "/v1/session", c.Session, nil); res.status != http.StatusUnauthorized {
			t.Fatalf("after the max lifetime = %d, want 401", res.status)
		}
	})
	t.Run("expires_at is the earlier end", func(t *testing.T) {
		s, b := newBroker(t)
		c := s.login(b)
		var res response
		for range 3 {
			s.clock.Advance(50 * time.Minute)
			res = do(t, b, http.MethodGet, "/v1/session", c.Session, nil)
		}
		var got struct {
			CreatedAt time.Time `json:"created_at"`
			ExpiresAt time.Time `json:"expires_at"`
		}
		res.decode(t, &got)
		if want := got.CreatedAt.Add(3 * time.Hour); !got.ExpiresAt.Equal(want) {
			t.Errorf("expires_at = %v, want the absolute end %v", got.ExpiresAt, want)
		}
	})
}
