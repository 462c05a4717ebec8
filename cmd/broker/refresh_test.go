package main

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// The refresh storm: three brokers on one Redis, 200 concurrent requests on
// one session whose access token has expired. Every request succeeds and the
// IdP sees exactly one refresh grant.
func TestRefreshStorm(t *testing.T) {
	s := newStack(t, stackOptions{accessTokenTTL: 2 * time.Second})
	brokers := []*instance{s.start(), s.start(), s.start()}
	c := s.login(brokers[0])
	s.refreshStorm(t, brokers, c.Session, 200)
}

// A token with less than the skew left is refreshed before use.
func TestRefreshWithinSkew(t *testing.T) {
	s := newStack(t, stackOptions{accessTokenTTL: time.Minute})
	b := s.start()
	c := s.login(b)
	do(t, b, http.MethodGet, "/api/a", c.Session, nil)
	if got := s.idp.Count("refresh_token"); got != 0 {
		t.Fatalf("refresh grants with 1m left = %d, want 0", got)
	}
	s.clock.Advance(51 * time.Second) // 9s left, skew 10s
	if res := do(t, b, http.MethodGet, "/api/b", c.Session, nil); res.status != http.StatusOK {
		t.Fatalf("= %d %s, want 200", res.status, res.body)
	}
	if got := s.idp.Count("refresh_token"); got != 1 {
		t.Fatalf("refresh grants with 9s left = %d, want 1", got)
	}
	if auths := s.upstream.authorizations(); len(auths) != 2 {
		t.Errorf("the upstream saw %d distinct tokens, want 2 (before and after the refresh)", len(auths))
	}
	// The rotated refresh token was stored: the next refresh works too.
	s.clock.Advance(time.Minute)
	if res := do(t, b, http.MethodGet, "/api/c", c.Session, nil); res.status != http.StatusOK {
		t.Fatalf("second refresh = %d %s, want 200", res.status, res.body)
	}
	if got := s.idp.SuccessfulRefreshes(); got != 2 {
		t.Errorf("successful refreshes = %d, want 2", got)
	}
}

// An IdP outage during a refresh: the request goes through while the old
// token is valid, answers 502 once it has expired, and the session survives
// until the IdP is back.
func TestRefreshDuringIdPOutage(t *testing.T) {
	s := newStack(t, stackOptions{accessTokenTTL: time.Minute})
	b := s.start()
	c := s.login(b)
	s.clock.Advance(55 * time.Second) // 5s left: refresh due, token still valid

	s.idp.SetFailure(http.StatusServiceUnavailable)
	if res := do(t, b, http.MethodGet, "/api/a", c.Session, nil); res.status != http.StatusOK {
		t.Fatalf("IdP down, token still valid: = %d %s, want 200", res.status, res.body)
	}
	s.clock.Advance(10 * time.Second) // expired
	res := do(t, b, http.MethodGet, "/api/a", c.Session, nil)
	if res.status != http.StatusBadGateway || res.errorCode(t) != "idp_unavailable" {
		t.Fatalf("IdP down, token expired: = %d %s, want 502 idp_unavailable", res.status, res.body)
	}
	if err := s.idp.Stop(); err != nil {
		t.Fatal(err)
	}
	s.idp.SetFailure(0)
	res = do(t, b, http.MethodGet, "/api/a", c.Session, nil)
	if res.status != http.StatusBadGateway || res.errorCode(t) != "idp_unavailable" {
		t.Fatalf("IdP unreachable, token expired: = %d %s, want 502 idp_unavailable", res.status, res.body)
	}
	if err := s.idp.Restart(); err != nil {
		t.Fatal(err)
	}
	// The session tries again once the back-off after the last failure
	// has passed: requests do not each wait on an IdP known to be failing.
	s.clock.Advance(6 * time.Second)
	if res := do(t, b, http.MethodGet, "/api/a", c.Session, nil); res.status != http.StatusOK {
		t.Fatalf("IdP back: = %d %s, want 200", res.status, res.body)
	}
}

// invalid_grant on refresh ends the session everywhere.
func TestRefreshRejectedEndsSession(t *testing.T) {
	s := newStack(t, stackOptions{accessTokenTTL: time.Minute})
	b1, b2 := s.start(), s.start()
	c := s.login(b1)
	sub, _ := c.User["sub"].(string)
	s.idp.TerminateSessions(sub) // the IdP revokes the user's refresh tokens
	s.clock.Advance(2 * time.Minute)
	res := do(t, b1, http.MethodGet, "/api/a", c.Session, nil)
	if res.status != http.StatusUnauthorized || res.errorCode(t) != "invalid_token" {
		t.Fatalf("= %d %s, want 401 invalid_token", res.status, res.body)
	}
	if res := do(t, b2, http.MethodGet, "/v1/session", c.Session, nil); res.status != http.StatusUnauthorized {
		t.Fatalf("on another broker = %d, want 401", res.status)
	}
	if got := s.idp.Count("refresh_token"); got != 1 {
		t.Errorf("refresh grants = %d, want 1 (the ended session is not retried)", got)
	}
}

// A session whose IdP gave no refresh token ends with its access token.
func TestSessionWithoutRefreshToken(t *testing.T) {
	s := newStack(t, stackOptions{accessTokenTTL: time.Hour})
	b := s.start()
	code, verifier := s.authorize("n", "openid", "profile", "email")
	res := do(t, b, http.MethodPost, "/v1/sessions", "", map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI})
	if res.status != http.StatusCreated {
		t.Fatalf("= %d %s, want 201", res.status, res.body)
	}
	var c created
	res.decode(t, &c)
	if d := time.Until(c.ExpiresAt); d > time.Hour+time.Minute {
		t.Errorf("expires_at in %v, want at most the access token's hour", d)
	}
	if res := do(t, b, http.MethodGet, "/api/a", c.Session, nil); res.status != http.StatusOK {
		t.Fatalf("= %d, want 200", res.status)
	}
	s.clock.Advance(time.Hour + time.Second)
	if res := do(t, b, http.MethodGet, "/api/a", c.Session, nil); res.status != http.StatusUnauthorized {
		t.Fatalf("after the access token expired = %d, want 401", res.status)
	}
	if got := s.idp.Count("refresh_token"); got != 0 {
		t.Errorf("refresh grants = %d, want 0", got)
	}
}

// An IdP that hangs does not hold up requests whose token is still valid:
// they wait for the refresh only briefly and go through with the current
// token, and the refresh finishes in the background once the IdP answers.
func TestRefreshWhileIdPHangs(t *testing.T) {
	s := newStack(t, stackOptions{accessTokenTTL: time.Minute})
	b := s.start()
	c := s.login(b)
	s.clock.Advance(51 * time.Second) // about 8s left: refresh due, token valid throughout
	s.idp.SetLatency(time.Minute)

	// Well under the broker's 10s IdP timeout: without the bounded wait
	// this client would give up first.
	client := &http.Client{Timeout: 6 * time.Second}
	for i := range 3 {
		req, err := http.NewRequest(http.MethodGet, b.base+"/api/hang", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+c.Session)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("request %d while the IdP hangs: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d while the IdP hangs = %d %s, want 200 with the current token", i, resp.StatusCode, body)
		}
	}
	// One refresh reached the IdP; the requests after it did not start
	// another while it was pending or backing off.
	if got := s.idp.Count("refresh_token"); got != 1 {
		t.Errorf("refresh grants sent while the IdP hangs = %d, want 1", got)
	}
	// The refresh still waits for the IdP's answer; stopping the IdP ends
	// it, so that the broker's shutdown does not wait for it.
	if err := s.idp.Stop(); err != nil {
		t.Fatal(err)
	}
}
