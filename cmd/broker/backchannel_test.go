package main

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// compactJWS matches a JWT in compact serialization.
var compactJWS = regexp.MustCompile(`eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*`)

// backchannelEvent is the events member of a logout token (OpenID Connect
// Back-Channel Logout 1.0 section 2.4).
const backchannelEvent = "http://schemas.openid.net/event/backchannel-logout"

// logoutClaims returns the claims of a valid logout token of the stack's IdP
// for the given sid and sub (either may be empty), with a fresh jti.
func (s *stack) logoutClaims(sid, sub string) map[string]any {
	c := map[string]any{
		"iss":    s.idp.Issuer(),
		"aud":    s.idp.ClientID(),
		"iat":    s.clock.Now().Unix(),
		"exp":    s.clock.Now().Add(2 * time.Minute).Unix(),
		"jti":    rand.Text(),
		"events": map[string]any{backchannelEvent: map[string]any{}},
	}
	if sid != "" {
		c["sid"] = sid
	}
	if sub != "" {
		c["sub"] = sub
	}
	return c
}

// signLogoutToken signs claims as a JWT with RS256 and the kid header, as an
// IdP signs its logout tokens.
func signLogoutToken(t *testing.T, key *rsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	raw, err := devidp.SignJWT(jose.RS256, key, kid, devidp.LogoutTokenType, claims)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// signed signs claims with the IdP's own key.
func (s *stack) signed(t *testing.T, claims map[string]any) string {
	t.Helper()
	key, kid := s.idp.SigningKey()
	return signLogoutToken(t, key, kid, claims)
}

// postLogout delivers a form body to POST /v1/backchannel-logout as the IdP
// does.
func postLogout(t *testing.T, inst *instance, form string) response {
	t.Helper()
	return doURL(t, http.MethodPost, inst.base+"/v1/backchannel-logout", "", form,
		http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
}

func logoutForm(token string) string {
	return url.Values{"logout_token": {token}}.Encode()
}

// sidOf returns the IdP session id of a login, from the ID token's claims.
func sidOf(t *testing.T, c created) string {
	t.Helper()
	sid, _ := c.User["sid"].(string)
	if sid == "" {
		t.Fatalf("the session's user object has no sid: %v", c.User)
	}
	return sid
}

func TestBackchannelLogout(t *testing.T) {
	s := newStack(t, stackOptions{})
	b1, b2 := s.start(), s.start()
	all := []*instance{b1, b2}

	t.Run("sid ends exactly the sessions of that login", func(t *testing.T) {
		phone := s.login(b1)
		tablet := s.login(b2)
		if sidOf(t, phone) == sidOf(t, tablet) {
			t.Fatal("two logins share a sid")
		}
		revokedBefore := len(s.idp.Revoked())
		res := postLogout(t, b2, logoutForm(s.signed(t, s.logoutClaims(sidOf(t, phone), ""))))
		if res.status != http.StatusOK {
			t.Fatalf("= %d %s, want 200", res.status, res.body)
		}
		if cc := res.header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control = %q, want no-store (section 2.8)", cc)
		}
		wantStatus(t, all, "/v1/session", phone.Session, http.StatusUnauthorized)
		wantStatus(t, all, "/v1/session", tablet.Session, http.StatusOK)
		if n := len(s.idp.Revoked()) - revokedBefore; n != 0 {
			t.Errorf("the broker revoked %d tokens at the IdP that had just ended the session", n)
		}
	})

	t.Run("sid and sub", func(t *testing.T) {
		c := s.login(b1)
		res := postLogout(t, b1, logoutForm(s.signed(t, s.logoutClaims(sidOf(t, c), devidp.DemoSubject))))
		if res.status != http.StatusOK {
			t.Fatalf("= %d %s, want 200", res.status, res.body)
		}
		wantStatus(t, all, "/v1/session", c.Session, http.StatusUnauthorized)
	})

	t.Run("sub alone ends every session of the user", func(t *testing.T) {
		mine := []created{s.login(b1), s.login(b2)}
		theirs := s.loginFrom(b1, devidp.OtherUsername, devidp.OtherPassword, "OtherApp/1.0")
		res := postLogout(t, b1, logoutForm(s.signed(t, s.logoutClaims("", devidp.DemoSubject))))
		if res.status != http.StatusOK {
			t.Fatalf("= %d %s, want 200", res.status, res.body)
		}
		for _, c := range mine {
			wantStatus(t, all, "/api/x", c.Session, http.StatusUnauthorized)
		}
		wantStatus(t, all, "/v1/session", theirs.Session, http.StatusOK)
	})

	t.Run("no session matches", func(t *testing.T) {
		for _, claims := range []map[string]any{
			s.logoutClaims("no-such-sid", ""),
			s.logoutClaims("", "no-such-user"),
		} {
			if res := postLogout(t, b2, logoutForm(s.signed(t, claims))); res.status != http.StatusOK {
				t.Errorf("= %d %s, want 200", res.status, res.body)
			}
		}
	})

	t.Run("audit", func(t *testing.T) {
		events, res := s.audit(b1, "1000")
		n := 0
		for _, e := range events {
			if e.Action == "backchannel_logout" {
				n++
				if e.Actor != "idp" || e.Outcome != "ok" || e.SessionID == "" || e.Sub != devidp.DemoSubject {
					t.Errorf("event = %+v, want actor idp, outcome ok, the session and its sub", e)
				}
			}
		}
		// One by sid, one by sid and sub, three by sub (the tablet of the
		// first case and two more).
		if n != 5 {
			t.Errorf("%d backchannel_logout events, want 5", n)
		}
		// A compact JWS: a JSON header's base64url ("eyJ...") and two more
		// dot-separated parts. A bare "eyJ" can occur in a random session id.
		if compactJWS.Match(res.body) {
			t.Error("the audit trail holds a JWT")
		}
	})
}

func TestBackchannelLogoutRejects(t *testing.T) {
	s := newStack(t, stackOptions{})
	b1, b2 := s.start(), s.start()
	canary := s.login(b1)
	sid := sidOf(t, canary)
	key, kid := s.idp.SigningKey()
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}

	// Every token below would end the canary's session if it were
	// accepted.
	with := func(change func(map[string]any)) string {
		c := s.logoutClaims(sid, devidp.DemoSubject)
		change(c)
		return logoutForm(signLogoutToken(t, key, kid, c))
	}
	tests := []struct {
		name, form string
	}{
		{"bad signature", logoutForm(signLogoutToken(t, otherKey, kid, s.logoutClaims(sid, devidp.DemoSubject)))},
		{"wrong aud", with(func(c map[string]any) { c["aud"] = "another-client" })},
		{"wrong iss", with(func(c map[string]any) { c["iss"] = "https://evil.example" })},
		{"nonce present", with(func(c map[string]any) { c["nonce"] = "n-1" })},
		{"events missing", with(func(c map[string]any) { delete(c, "events") })},
		{"events with another member", with(func(c map[string]any) {
			c["events"] = map[string]any{"http://schemas.openid.net/event/other": map[string]any{}}
		})},
		{"event member not an object", with(func(c map[string]any) { c["events"] = map[string]any{backchannelEvent: "logout"} })},
		{"event member null", with(func(c map[string]any) { c["events"] = map[string]any{backchannelEvent: nil} })},
		{"events not an object", with(func(c map[string]any) { c["events"] = []string{backchannelEvent} })},
		{"neither sid nor sub", with(func(c map[string]any) { delete(c, "sid"); delete(c, "sub") })},
		{"no jti", with(func(c map[string]any) { delete(c, "jti") })},
		{"no iat", with(func(c map[string]any) { delete(c, "iat") })},
		{"iat older than 10 minutes", with(func(c map[string]any) {
			c["iat"] = s.clock.Now().Add(-11 * time.Minute).Unix()
			delete(c, "exp")
		})},
		{"expired", with(func(c map[string]any) { c["exp"] = s.clock.Now().Add(-5 * time.Minute).Unix() })},
		{"missing logout_token", ""},
		{"empty logout_token", "logout_token="},
		{"not a JWT", logoutForm("not-a-jwt")},
		{"unsigned", logoutForm("eyJhbGciOiJub25lIn0." + base64.RawURLEncoding.EncodeToString([]byte(`{"sid":"`+sid+`"}`)) + ".")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := postLogout(t, b2, tt.form)
			if res.status != http.StatusBadRequest {
				t.Fatalf("= %d %s, want 400", res.status, res.body)
			}
			if got := res.errorCode(t); got != "invalid_request" {
				t.Errorf("error = %q, want invalid_request", got)
			}
			if cc := res.header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", cc)
			}
		})
	}
	t.Run("JSON body", func(t *testing.T) {
		res := do(t, b2, http.MethodPost, "/v1/backchannel-logout", "", map[string]string{
			"logout_token": s.signed(t, s.logoutClaims(sid, "")),
		})
		if res.status != http.StatusBadRequest {
			t.Fatalf("= %d %s, want 400", res.status, res.body)
		}
	})
	t.Run("token in the query, not the body", func(t *testing.T) {
		q := logoutForm(s.signed(t, s.logoutClaims(sid, "")))
		res := doURL(t, http.MethodPost, b2.base+"/v1/backchannel-logout?"+q, "", "", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
		if res.status != http.StatusBadRequest {
			t.Fatalf("= %d %s, want 400", res.status, res.body)
		}
	})
	t.Run("body over 64 KiB", func(t *testing.T) {
		form := logoutForm(s.signed(t, s.logoutClaims(sid, ""))) + "&pad=" + strings.Repeat("x", 64<<10)
		res := postLogout(t, b2, form)
		if res.status != http.StatusBadRequest {
			t.Fatalf("= %d %s, want 400", res.status, res.body)
		}
	})
	wantStatus(t, []*instance{b1, b2}, "/v1/session", canary.Session, http.StatusOK)

	t.Run("replayed jti on another replica", func(t *testing.T) {
		form := logoutForm(s.signed(t, s.logoutClaims("unrelated-sid", "")))
		if res := postLogout(t, b1, form); res.status != http.StatusOK {
			t.Fatalf("first use = %d %s, want 200", res.status, res.body)
		}
		res := postLogout(t, b2, form)
		if res.status != http.StatusBadRequest {
			t.Fatalf("replay on another broker = %d %s, want 400", res.status, res.body)
		}
		if got := res.errorCode(t); got != "invalid_request" {
			t.Errorf("error = %q, want invalid_request", got)
		}
	})
	wantStatus(t, []*instance{b1, b2}, "/v1/session", canary.Session, http.StatusOK)
}

// The back-channel endpoint has a budget per client address of its own:
// past it, even a valid logout token is refused with 429 before it is
// read, and another address is still served.
func TestBackchannelRateLimit(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_RATE_LIMIT_BACKCHANNEL": "3/m"}})
	b := s.start()
	c := s.login(b)
	// Spending the budget of bad handles or exchanges leaves this one whole.
	for range 3 {
		do(t, b, http.MethodGet, "/v1/session", "garbage", nil)
	}
	for i := range 3 {
		if res := postLogout(t, b, logoutForm("not-a-jwt")); res.status != http.StatusBadRequest {
			t.Fatalf("bad logout token %d = %d %s, want 400", i, res.status, res.body)
		}
	}
	valid := logoutForm(s.signed(t, s.logoutClaims(sidOf(t, c), "")))
	res := postLogout(t, b, valid)
	if res.status != http.StatusTooManyRequests || res.errorCode(t) != "rate_limited" {
		t.Fatalf("4th logout token = %d %s, want 429 rate_limited", res.status, res.body)
	}
	if ra, err := strconv.Atoi(res.header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
		t.Errorf("Retry-After = %q, want 1..60 seconds", res.header.Get("Retry-After"))
	}
	wantStatus(t, []*instance{b}, "/v1/session", c.Session, http.StatusOK)

	// The IdP posting from another address has its own budget.
	req, err := http.NewRequest(http.MethodPost, b.base+"/v1/backchannel-logout", strings.NewReader(valid))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := clientFrom(t, "127.0.0.2").Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("logout token from another address = %d, want 200", resp.StatusCode)
	}
	wantStatus(t, []*instance{b}, "/v1/session", c.Session, http.StatusUnauthorized)
}
