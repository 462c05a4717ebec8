package broker_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/mobile-token-broker/broker/internal/devidp"
)

// A refreshed ID token that fails the checks of a code grant's ID token is
// ignored: the session keeps its ID token, and the refresh still counts.
func TestRefreshedIDTokenChecks(t *testing.T) {
	e := newEnv(t, time.Minute)
	a := e.replica(replicaOptions{})
	ns := e.login(a)
	id := ns.Session.ID
	client := e.idp.ClientID()
	tests := []struct {
		name    string
		rewrite func(c map[string]any)
		kept    bool
	}{
		{"no sub", func(c map[string]any) { delete(c, "sub") }, false},
		{"two audiences without azp", func(c map[string]any) { c["aud"] = []string{client, "another-client"}; delete(c, "azp") }, false},
		{"azp another client", func(c map[string]any) { c["azp"] = "another-client" }, false},
		{"iat a day ahead", func(c map[string]any) { c["iat"] = e.clock.Now().Add(24 * time.Hour).Unix() }, false},
		{"another sub", func(c map[string]any) { c["sub"] = "someone-else" }, false},
		{"two audiences, azp this client", func(c map[string]any) { c["aud"] = []string{client, "another-client"}; c["azp"] = client }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := storedSession(t, a, id)
			const ignored = "ignoring an ID token from a refresh"
			logged := strings.Count(a.logs.String(), ignored)
			e.idp.RewriteIDTokens(tt.rewrite)
			defer e.idp.RewriteIDTokens(nil)
			e.expire(a, id)
			if got := mustAccessToken(t, a, ns.Handle); got == before.Tokens.AccessToken {
				t.Fatal("the access token was not refreshed")
			}
			after := storedSession(t, a, id)
			if after.Generation != before.Generation+1 {
				t.Fatalf("generation %d after the refresh, want %d", after.Generation, before.Generation+1)
			}
			switch kept := after.Tokens.IDToken != before.Tokens.IDToken; {
			case kept && !tt.kept:
				t.Error("the session took the refreshed ID token, want it ignored")
			case !kept && tt.kept:
				t.Error("the session kept its old ID token, want the refreshed one")
			}
			if n := strings.Count(a.logs.String(), ignored) - logged; !tt.kept && n != 1 {
				t.Errorf("the log says %d times that the refreshed ID token was ignored, want once", n)
			}
		})
	}
}

// signJWT signs claims with RS256 under key, with the kid header unless
// kid is empty.
func signJWT(t *testing.T, key *rsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	raw, err := devidp.SignJWT(jose.RS256, key, kid, devidp.LogoutTokenType, claims)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// logoutClaims are the claims of a valid logout token for sub.
func (e *env) logoutClaims(sub string) map[string]any {
	return map[string]any{
		"iss":    e.idp.Issuer(),
		"aud":    e.idp.ClientID(),
		"iat":    e.clock.Now().Unix(),
		"jti":    rand.Text(),
		"sub":    sub,
		"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}},
	}
}

// A flood of badly signed logout tokens costs the IdP at most one JWKS
// fetch per interval, whether they name the IdP's key, an unknown one or
// none; a token signed with a key the IdP rotated in is accepted after one
// fetch.
func TestKeyRefetch(t *testing.T) {
	e := newEnv(t, time.Hour)
	a := e.replica(replicaOptions{})
	ns := e.login(a)
	if n := e.idp.KeySetFetches(); n != 1 {
		t.Fatalf("%d JWKS fetches after the first sign-in, want 1", n)
	}
	forged, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	flood := func(what string, n int) {
		t.Helper()
		_, kid := e.idp.SigningKey()
		before := e.idp.KeySetFetches()
		var wg sync.WaitGroup
		var accepted atomic.Int32
		tokens := make(chan string)
		for range 8 {
			wg.Go(func() {
				for tok := range tokens {
					if _, err := a.BackchannelLogout(context.Background(), tok); broker.ErrorCode(err) != broker.CodeInvalidRequest {
						accepted.Add(1)
					}
				}
			})
		}
		for i := range n {
			claims := e.logoutClaims(devidp.DemoSubject)
			switch i % 3 {
			case 0: // the IdP's kid, another key's signature
				tokens <- signJWT(t, forged, kid, claims)
			case 1: // a kid the IdP does not publish
				tokens <- signJWT(t, forged, "unknown-"+rand.Text(), claims)
			case 2: // no kid
				tokens <- signJWT(t, forged, "", claims)
			}
		}
		close(tokens)
		wg.Wait()
		if n := accepted.Load(); n != 0 {
			t.Fatalf("%s: %d badly signed logout tokens were not refused as invalid_request", what, n)
		}
		if got := e.idp.KeySetFetches() - before; got > 1 {
			t.Errorf("%s: %d badly signed logout tokens made %d JWKS fetches, want at most 1", what, n, got)
		}
	}

	flood("right after the sign-in", 300)
	e.clock.Advance(time.Minute + time.Second)
	flood("a minute later", 300)

	// The IdP rotates its key once the interval has passed: a logout token
	// signed with the new key costs one fetch and is accepted.
	e.clock.Advance(time.Minute + time.Second)
	key, kid, err := e.idp.RotateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	before := e.idp.KeySetFetches()
	n, err := a.BackchannelLogout(context.Background(), signJWT(t, key, kid, e.logoutClaims(devidp.DemoSubject)))
	if err != nil || n != 1 {
		t.Fatalf("logout token signed with the rotated-in key = %d, %v; want 1 session ended", n, err)
	}
	if got := e.idp.KeySetFetches() - before; got != 1 {
		t.Errorf("the rotated-in key cost %d JWKS fetches, want 1", got)
	}
	if _, err := accessToken(a, ns.Handle); !isInvalidToken(err) {
		t.Errorf("AccessToken after the logout = %v, want invalid_token", err)
	}
	// ID tokens signed with the new key verify without another fetch, and
	// the old key's kid is still known.
	e.login(a)
	flood("after the rotation", 150)
	if got := e.idp.KeySetFetches() - before; got != 1 {
		t.Errorf("%d JWKS fetches since the rotation, want 1", got)
	}
}

// Access tokens that live shorter than the refresh skew are never "fresh":
// each request used to refresh its session (6 sessions made 5,018 IdP
// refreshes in 40 s). They are refreshed at most once per half lifetime
// (at least a second), on every replica alike, and the broker says once
// why.
func TestTokensShorterThanTheSkew(t *testing.T) {
	e := newEnv(t, time.Second)
	skew := func(c *broker.Config) { c.RefreshSkew = 10 * time.Second }
	a, b := e.replica(replicaOptions{config: skew}), e.replica(replicaOptions{config: skew})
	sessions := []*broker.NewSession{e.login(a), e.login(b)}
	before := e.idp.Count(devidp.GrantRefreshToken)
	start := time.Now()
	const run = 3 * time.Second
	var wg sync.WaitGroup
	var requests atomic.Int32
	for w := range 8 {
		wg.Go(func() {
			r := []*replica{a, b}[w%2]
			ns := sessions[w/2%2]
			for time.Since(start) < run {
				requests.Add(1)
				if _, err := accessToken(r, ns.Handle); err != nil {
					t.Errorf("AccessToken = %v", err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	refreshes := e.idp.Count(devidp.GrantRefreshToken) - before
	t.Logf("%d requests over %v made %d refreshes", requests.Load(), elapsed.Round(time.Millisecond), refreshes)
	// One refresh per session per second, and one more each for the
	// seconds' edges.
	if limit := len(sessions) * (int(elapsed/time.Second) + 2); refreshes > limit {
		t.Errorf("%d requests over %v made %d refreshes, want at most %d (one per session per second)", requests.Load(), elapsed.Round(time.Millisecond), refreshes, limit)
	}
	if refreshes == 0 {
		t.Error("no refresh: the 1 s access tokens were used past their expiry")
	}
	const warning = "access tokens that live shorter than the refresh skew"
	for name, r := range map[string]*replica{"A": a, "B": b} {
		if n := strings.Count(r.logs.String(), warning); n != 1 {
			t.Errorf("replica %s warned %d times that tokens live shorter than the skew, want once", name, n)
		}
	}
}

// An app may receive its code on a claimed https redirect (an iOS Universal
// Link or Android App Link) as well as on a private-use URI scheme.
func TestClaimedHTTPSRedirect(t *testing.T) {
	const claimed = "https://app.example.com/oauth2redirect"
	e := newEnvWith(t, devidp.Config{RedirectURIs: []string{redirectURI, claimed}})
	a := e.replica(replicaOptions{config: func(c *broker.Config) { c.RedirectURIs = []string{redirectURI, claimed} }})
	for _, uri := range []string{claimed, redirectURI} {
		verifier := oauth2.GenerateVerifier()
		code, err := e.idp.Login(context.Background(), devidp.LoginRequest{
			RedirectURI: uri, CodeChallenge: oauth2.S256ChallengeFromVerifier(verifier), State: "st-" + rand.Text(),
		})
		if err != nil {
			t.Fatalf("Login(%s): %v", uri, err)
		}
		ns, err := a.Exchange(context.Background(), broker.ExchangeRequest{Code: code, CodeVerifier: verifier, RedirectURI: uri})
		if err != nil {
			t.Fatalf("Exchange with redirect URI %s = %v, want a session", uri, err)
		}
		mustAccessToken(t, a, ns.Handle)
	}
}
