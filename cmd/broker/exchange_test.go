package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

func TestCreateSession(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	code, verifier := s.authorize("nonce-1")
	before := s.clock.Now()
	res := do(t, b, http.MethodPost, "/v1/sessions", "", map[string]string{
		"code": code, "code_verifier": verifier, "redirect_uri": redirectURI, "nonce": "nonce-1",
	})
	if res.status != http.StatusCreated {
		t.Fatalf("POST /v1/sessions = %d %s, want 201", res.status, res.body)
	}
	if cc := res.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	var c created
	res.decode(t, &c)
	if c.TokenType != "Bearer" {
		t.Errorf("token_type = %q, want Bearer", c.TokenType)
	}
	// 256 bits of secret at least, plus the id.
	if len(c.Session) < 43 {
		t.Errorf("handle has %d characters, want at least 43", len(c.Session))
	}
	if c.SessionID == "" || c.SessionID == c.Session {
		t.Errorf("session_id %q must be set and differ from the handle", c.SessionID)
	}
	if c.User["sub"] == nil || c.User["email"] == nil || c.User["name"] == nil {
		t.Errorf("user = %v, want sub, name and email", c.User)
	}
	wantExp := before.Add(720 * time.Hour)
	if d := c.ExpiresAt.Sub(wantExp); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("expires_at = %v, want about %v (idle timeout)", c.ExpiresAt, wantExp)
	}
	// The ID token is the IdP's own, for the app's use.
	p, err := oidc.NewProvider(context.Background(), s.idp.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	idt, err := p.Verifier(&oidc.Config{ClientID: s.idp.ClientID()}).Verify(context.Background(), c.IDToken)
	if err != nil {
		t.Fatalf("id_token does not verify: %v", err)
	}
	if idt.Subject != c.User["sub"] || idt.Nonce != "nonce-1" {
		t.Errorf("id_token sub=%q nonce=%q, want %v and nonce-1", idt.Subject, idt.Nonce, c.User["sub"])
	}

	// The handle works; the public session id does not.
	if got := do(t, b, http.MethodGet, "/v1/session", c.Session, nil); got.status != http.StatusOK {
		t.Errorf("GET /v1/session with handle = %d, want 200", got.status)
	}
	if got := do(t, b, http.MethodGet, "/v1/session", c.SessionID, nil); got.status != http.StatusUnauthorized {
		t.Errorf("GET /v1/session with session_id = %d, want 401", got.status)
	}
}

func TestCreateSessionConfidentialClient(t *testing.T) {
	s := newStack(t, stackOptions{clientSecret: "s3cr3t-client-secret"})
	b := s.start()
	c := s.login(b)
	if got := do(t, b, http.MethodGet, "/api/x", c.Session, nil); got.status != http.StatusOK {
		t.Fatalf("GET /api/x = %d %s, want 200", got.status, got.body)
	}
	if strings.Contains(s.allLogs(), "s3cr3t-client-secret") {
		t.Error("the client secret reached the logs")
	}
}

// Every bad input gets the contract's 400 and spends nothing: the same code
// still opens a session afterwards, unless the IdP itself consumed it.
func TestCreateSessionBadInput(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	code, verifier := s.authorize("n1")
	valid := map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for kk, vv := range valid {
			m[kk] = vv
		}
		if v == "<delete>" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name        string
		body        any
		contentType string
		want        string
	}{
		{"malformed JSON", `{"code": `, "", "invalid_request"},
		{"not an object", `[1,2]`, "", "invalid_request"},
		{"empty body", ``, "", "invalid_request"},
		{"two values", `{"code":"a"}{"code":"b"}`, "", "invalid_request"},
		{"wrong field type", `{"code": 12, "code_verifier": "x", "redirect_uri": "y"}`, "", "invalid_request"},
		{"form content type", "code=a", "application/x-www-form-urlencoded", "invalid_request"},
		{"missing code", with("code", "<delete>"), "", "invalid_request"},
		{"missing verifier", with("code_verifier", "<delete>"), "", "invalid_request"},
		{"short verifier", with("code_verifier", "abc"), "", "invalid_request"},
		{"verifier with bad characters", with("code_verifier", strings.Repeat("a", 42)+"!"), "", "invalid_request"},
		{"missing redirect_uri", with("redirect_uri", "<delete>"), "", "invalid_request"},
		{"redirect_uri not allowed", with("redirect_uri", "com.evil.app:/cb"), "", "invalid_request"},
		{"body over 64 KiB", with("nonce", strings.Repeat("n", 65<<10)), "", "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h http.Header
			if tt.contentType != "" {
				h = http.Header{"Content-Type": {tt.contentType}}
			}
			res := doURL(t, http.MethodPost, b.base+"/v1/sessions", "", tt.body, h)
			if res.status != http.StatusBadRequest {
				t.Fatalf("POST /v1/sessions = %d %s, want 400", res.status, res.body)
			}
			if got := res.errorCode(t); got != tt.want {
				t.Errorf("error = %q, want %q", got, tt.want)
			}
			if strings.Contains(string(res.body), code) || strings.Contains(string(res.body), verifier) {
				t.Errorf("error body %s echoes the code or verifier", res.body)
			}
		})
	}
	if s.idp.Count("authorization_code") != 0 {
		t.Errorf("the IdP saw %d code grants for bad input, want 0", s.idp.Count("authorization_code"))
	}
	if res := do(t, b, http.MethodPost, "/v1/sessions", "", valid); res.status != http.StatusCreated {
		t.Fatalf("the code no longer works after bad input: %d %s", res.status, res.body)
	}
}

// What the IdP rejects, and ID tokens that fail verification, are
// invalid_grant.
func TestCreateSessionRejectedByIdP(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	post := func(body map[string]string) response {
		t.Helper()
		return do(t, b, http.MethodPost, "/v1/sessions", "", body)
	}
	t.Run("wrong verifier", func(t *testing.T) {
		code, _ := s.authorize("n")
		_, other := s.authorize("n2")
		res := post(map[string]string{"code": code, "code_verifier": other, "redirect_uri": redirectURI})
		if res.status != http.StatusBadRequest || res.errorCode(t) != "invalid_grant" {
			t.Fatalf("= %d %s, want 400 invalid_grant", res.status, res.body)
		}
	})
	t.Run("reused code", func(t *testing.T) {
		code, verifier := s.authorize("n")
		body := map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI}
		if res := post(body); res.status != http.StatusCreated {
			t.Fatalf("first use = %d %s, want 201", res.status, res.body)
		}
		res := post(body)
		if res.status != http.StatusBadRequest || res.errorCode(t) != "invalid_grant" {
			t.Fatalf("second use = %d %s, want 400 invalid_grant", res.status, res.body)
		}
	})
	t.Run("unknown code", func(t *testing.T) {
		_, verifier := s.authorize("n")
		res := post(map[string]string{"code": "no-such-code", "code_verifier": verifier, "redirect_uri": redirectURI})
		if res.status != http.StatusBadRequest || res.errorCode(t) != "invalid_grant" {
			t.Fatalf("= %d %s, want 400 invalid_grant", res.status, res.body)
		}
	})
	t.Run("redirect_uri allowed but not the one authorized", func(t *testing.T) {
		code, verifier := s.authorize("n")
		res := post(map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": "com.example.other:/cb"})
		if res.status != http.StatusBadRequest || res.errorCode(t) != "invalid_grant" {
			t.Fatalf("= %d %s, want 400 invalid_grant", res.status, res.body)
		}
	})
	t.Run("wrong nonce", func(t *testing.T) {
		code, verifier := s.authorize("the-nonce")
		res := post(map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI, "nonce": "another-nonce"})
		if res.status != http.StatusBadRequest || res.errorCode(t) != "invalid_grant" {
			t.Fatalf("= %d %s, want 400 invalid_grant", res.status, res.body)
		}
	})
	t.Run("expired ID token", func(t *testing.T) {
		code, verifier := s.authorize("n")
		s.clock.Advance(24 * time.Hour)
		defer s.clock.Advance(-24 * time.Hour)
		res := post(map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI})
		if res.status != http.StatusBadRequest || res.errorCode(t) != "invalid_grant" {
			t.Fatalf("= %d %s, want 400 invalid_grant", res.status, res.body)
		}
	})
}

// An IdP that issues ID tokens the broker must refuse: signed by the IdP's
// own key and valid for go-oidc's verifier, but failing OIDC Core 2 or
// 3.1.3.7. Each is 400 invalid_grant and has its refresh token revoked;
// the nearby tokens that are fine open sessions.
func TestCreateSessionFaultyIDTokens(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	client := s.idp.ClientID()
	tests := []struct {
		name    string
		rewrite func(c map[string]any)
		want    int
	}{
		{"no sub", func(c map[string]any) { delete(c, "sub") }, http.StatusBadRequest},
		{"empty sub", func(c map[string]any) { c["sub"] = "" }, http.StatusBadRequest},
		{"two audiences without azp", func(c map[string]any) {
			c["aud"] = []string{client, "another-client"}
			delete(c, "azp")
		}, http.StatusBadRequest},
		{"two audiences, azp another client", func(c map[string]any) {
			c["aud"] = []string{client, "another-client"}
			c["azp"] = "another-client"
		}, http.StatusBadRequest},
		{"one audience, azp another client", func(c map[string]any) {
			c["aud"] = client
			c["azp"] = "another-client"
		}, http.StatusBadRequest},
		{"azp not a string", func(c map[string]any) { c["azp"] = []string{client} }, http.StatusBadRequest},
		{"iat a day ahead", func(c map[string]any) { c["iat"] = time.Now().Add(24 * time.Hour).Unix() }, http.StatusBadRequest},
		{"iat two minutes ahead", func(c map[string]any) { c["iat"] = time.Now().Add(2 * time.Minute).Unix() }, http.StatusBadRequest},

		{"two audiences, azp this client", func(c map[string]any) {
			c["aud"] = []string{client, "another-client"}
			c["azp"] = client
		}, http.StatusCreated},
		{"one audience, azp this client", func(c map[string]any) { c["azp"] = client }, http.StatusCreated},
		{"iat 30 s ahead, within the skew", func(c map[string]any) { c["iat"] = time.Now().Add(30 * time.Second).Unix() }, http.StatusCreated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, verifier := s.authorize("n")
			s.idp.RewriteIDTokens(tt.rewrite)
			defer s.idp.RewriteIDTokens(nil)
			revoked := len(s.idp.Revoked())
			res := do(t, b, http.MethodPost, "/v1/sessions", "", map[string]string{
				"code": code, "code_verifier": verifier, "redirect_uri": redirectURI, "nonce": "n",
			})
			if res.status != tt.want {
				t.Fatalf("POST /v1/sessions = %d %s, want %d", res.status, res.body, tt.want)
			}
			if tt.want == http.StatusCreated {
				return
			}
			if got := res.errorCode(t); got != "invalid_grant" {
				t.Errorf("error = %q, want invalid_grant", got)
			}
			// The revocation runs detached from the request.
			for deadline := time.Now().Add(5 * time.Second); len(s.idp.Revoked()) == revoked && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			if got := len(s.idp.Revoked()) - revoked; got != 1 {
				t.Errorf("%d tokens revoked at the IdP, want the refresh token of the refused exchange", got)
			}
		})
	}
}

func TestCreateSessionIdPUnavailable(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	code, verifier := s.authorize("n")
	body := map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI}

	s.idp.SetFailure(http.StatusServiceUnavailable)
	res := do(t, b, http.MethodPost, "/v1/sessions", "", body)
	if res.status != http.StatusBadGateway || res.errorCode(t) != "idp_unavailable" {
		t.Fatalf("IdP answering 503: = %d %s, want 502 idp_unavailable", res.status, res.body)
	}
	s.idp.SetFailure(0)

	if err := s.idp.Stop(); err != nil {
		t.Fatal(err)
	}
	res = do(t, b, http.MethodPost, "/v1/sessions", "", body)
	if res.status != http.StatusBadGateway || res.errorCode(t) != "idp_unavailable" {
		t.Fatalf("IdP down: = %d %s, want 502 idp_unavailable", res.status, res.body)
	}
	if err := s.idp.Restart(); err != nil {
		t.Fatal(err)
	}
	// Nothing was lost: the code still opens a session.
	if res := do(t, b, http.MethodPost, "/v1/sessions", "", body); res.status != http.StatusCreated {
		t.Fatalf("after the IdP is back: = %d %s, want 201", res.status, res.body)
	}
}
