package devidp

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"
)

func TestUserinfoHonoursAccessTokenTTL(t *testing.T) {
	p, err := Start(Config{AccessTokenTTL: time.Minute})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { p.Close() })

	now := time.Now()
	p.store.mu.Lock()
	p.store.now = func() time.Time { return now }
	p.store.mu.Unlock()
	advance := func(d time.Duration) {
		p.store.mu.Lock()
		now = now.Add(d)
		p.store.mu.Unlock()
	}

	const verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
	code, err := p.Login(t.Context(), LoginRequest{CodeChallenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"})
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	resp, err := http.PostForm(p.Issuer()+"/oauth/token", url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"code_verifier": {verifier},
		"client_id":     {p.ClientID()},
		"redirect_uri":  {DefaultRedirectURI},
	})
	if err != nil {
		t.Fatalf("token request: %v", err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusOK || tok.AccessToken == "" {
		t.Fatalf("token response = %d (%v), want 200 with an access token", resp.StatusCode, err)
	}

	userinfo := func() int {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, p.Issuer()+"/userinfo", nil)
		req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("userinfo: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	advance(59 * time.Second)
	if got := userinfo(); got != http.StatusOK {
		t.Errorf("userinfo before expiry = %d, want 200", got)
	}
	advance(time.Second)
	if got := userinfo(); got == http.StatusOK {
		t.Errorf("userinfo at expiry = %d, want an error", got)
	}
}

// expires_in is the configured lifetime, whole seconds included, on code
// and refresh grants.
func TestExpiresInIsTheTTL(t *testing.T) {
	for _, ttl := range []time.Duration{time.Second, 7 * time.Second, time.Minute} {
		p, err := Start(Config{AccessTokenTTL: ttl})
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		t.Cleanup(func() { p.Close() })
		const verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
		code, err := p.Login(t.Context(), LoginRequest{CodeChallenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"})
		if err != nil {
			t.Fatalf("Login: %v", err)
		}
		grant := func(form url.Values) (refreshToken string, expiresIn int) {
			t.Helper()
			form.Set("client_id", p.ClientID())
			resp, err := http.PostForm(p.Issuer()+"/oauth/token", form)
			if err != nil {
				t.Fatalf("token request: %v", err)
			}
			defer resp.Body.Close()
			var tok struct {
				RefreshToken string `json:"refresh_token"`
				ExpiresIn    int    `json:"expires_in"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("token response = %d (%v), want 200", resp.StatusCode, err)
			}
			return tok.RefreshToken, tok.ExpiresIn
		}
		rt, got := grant(url.Values{"grant_type": {"authorization_code"}, "code": {code}, "code_verifier": {verifier}, "redirect_uri": {DefaultRedirectURI}})
		if want := int(ttl / time.Second); got != want {
			t.Errorf("TTL %v: code grant expires_in = %d, want %d", ttl, got, want)
		}
		if _, got := grant(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}); got != int(ttl/time.Second) {
			t.Errorf("TTL %v: refresh grant expires_in = %d, want %d", ttl, got, int(ttl/time.Second))
		}
	}
}
