package devidp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// app is a relying party of the dev IdP, as the broker will be.
type app struct {
	p        *devidp.Provider
	provider *oidc.Provider
	oauth    oauth2.Config
	verifier *oidc.IDTokenVerifier
}

func start(t *testing.T, cfg devidp.Config) *app {
	t.Helper()
	p, err := devidp.Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return newApp(t, p, cfg.ClientSecret)
}

func newApp(t *testing.T, p *devidp.Provider, secret string) *app {
	t.Helper()
	provider, err := oidc.NewProvider(t.Context(), p.Issuer())
	if err != nil {
		t.Fatalf("oidc.NewProvider(%q): %v", p.Issuer(), err)
	}
	return &app{
		p:        p,
		provider: provider,
		oauth: oauth2.Config{
			ClientID:     p.ClientID(),
			ClientSecret: secret,
			Endpoint:     provider.Endpoint(),
			RedirectURL:  devidp.DefaultRedirectURI,
			Scopes:       devidp.DefaultScopes,
		},
		verifier: provider.Verifier(&oidc.Config{ClientID: p.ClientID()}),
	}
}

// login signs the demo user in and returns the code and PKCE verifier.
func (a *app) login(t *testing.T, nonce string) (code, verifier string) {
	t.Helper()
	verifier = oauth2.GenerateVerifier()
	code, err := a.p.Login(t.Context(), devidp.LoginRequest{
		CodeChallenge: oauth2.S256ChallengeFromVerifier(verifier),
		Nonce:         nonce,
		State:         "state-" + nonce,
	})
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	return code, verifier
}

// tokens runs a full login and code exchange.
func (a *app) tokens(t *testing.T, nonce string) *oauth2.Token {
	t.Helper()
	code, verifier := a.login(t, nonce)
	tok, err := a.oauth.Exchange(t.Context(), code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("Exchange(code) = %v, want tokens", err)
	}
	return tok
}

func (a *app) refresh(ctx context.Context, refreshToken string) (*oauth2.Token, error) {
	return a.oauth.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
}

func (a *app) idToken(t *testing.T, tok *oauth2.Token) *oidc.IDToken {
	t.Helper()
	raw, ok := tok.Extra("id_token").(string)
	if !ok || raw == "" {
		t.Fatal("token response has no id_token")
	}
	idt, err := a.verifier.Verify(t.Context(), raw)
	if err != nil {
		t.Fatalf("Verify(id_token): %v", err)
	}
	return idt
}

type idClaims struct {
	Email string `json:"email"`
	Name  string `json:"name"`
	SID   string `json:"sid"`
}

func claimsOf(t *testing.T, idt *oidc.IDToken) idClaims {
	t.Helper()
	var c idClaims
	if err := idt.Claims(&c); err != nil {
		t.Fatalf("Claims: %v", err)
	}
	return c
}

func wantOAuthError(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("%s = %v, want %d %s", what, err, status, code)
	}
	if re.Response.StatusCode != status || re.ErrorCode != code {
		t.Fatalf("%s = %d %q, want %d %q", what, re.Response.StatusCode, re.ErrorCode, status, code)
	}
}

func TestDiscovery(t *testing.T) {
	a := start(t, devidp.Config{})
	if !strings.HasPrefix(a.p.Issuer(), "http://127.0.0.1:") || strings.HasSuffix(a.p.Issuer(), "/") {
		t.Errorf("Issuer() = %q, want http://127.0.0.1:PORT", a.p.Issuer())
	}
	var doc struct {
		Issuer        string   `json:"issuer"`
		Revocation    string   `json:"revocation_endpoint"`
		Userinfo      string   `json:"userinfo_endpoint"`
		Token         string   `json:"token_endpoint"`
		JWKS          string   `json:"jwks_uri"`
		GrantTypes    []string `json:"grant_types_supported"`
		PKCEMethods   []string `json:"code_challenge_methods_supported"`
		SigningAlgIDs []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := a.provider.Claims(&doc); err != nil {
		t.Fatalf("Claims: %v", err)
	}
	if doc.Issuer != a.p.Issuer() {
		t.Errorf("issuer = %q, want %q", doc.Issuer, a.p.Issuer())
	}
	for name, got := range map[string]string{"revocation_endpoint": doc.Revocation, "userinfo_endpoint": doc.Userinfo, "token_endpoint": doc.Token, "jwks_uri": doc.JWKS} {
		if !strings.HasPrefix(got, a.p.Issuer()+"/") {
			t.Errorf("%s = %q, want under the issuer", name, got)
		}
	}
	if !slices.Contains(doc.GrantTypes, "refresh_token") || !slices.Contains(doc.PKCEMethods, "S256") || !slices.Contains(doc.SigningAlgIDs, "RS256") {
		t.Errorf("discovery = %+v, want refresh_token, S256 and RS256 supported", doc)
	}
}

func TestCodeFlow(t *testing.T) {
	a := start(t, devidp.Config{AccessTokenTTL: 90 * time.Second})
	tok := a.tokens(t, "nonce-1")

	if tok.AccessToken == "" || tok.RefreshToken == "" {
		t.Fatalf("Exchange = access %t, refresh %t, want both", tok.AccessToken != "", tok.RefreshToken != "")
	}
	if tok.ExpiresIn < 85 || tok.ExpiresIn > 90 {
		t.Errorf("expires_in = %d, want about 90", tok.ExpiresIn)
	}
	idt := a.idToken(t, tok)
	if idt.Issuer != a.p.Issuer() || idt.Subject != devidp.DemoSubject || idt.Nonce != "nonce-1" {
		t.Errorf("id_token iss, sub, nonce = %q, %q, %q; want %q, %q, %q", idt.Issuer, idt.Subject, idt.Nonce, a.p.Issuer(), devidp.DemoSubject, "nonce-1")
	}
	c := claimsOf(t, idt)
	if c.Email != devidp.DemoEmail || c.Name != devidp.DemoName || c.SID == "" {
		t.Errorf("id_token claims = %+v, want email %q, name %q and a sid", c, devidp.DemoEmail, devidp.DemoName)
	}

	info, err := a.provider.UserInfo(t.Context(), oauth2.StaticTokenSource(tok))
	if err != nil {
		t.Fatalf("UserInfo: %v", err)
	}
	if info.Subject != devidp.DemoSubject || info.Email != devidp.DemoEmail {
		t.Errorf("UserInfo = %q, %q; want %q, %q", info.Subject, info.Email, devidp.DemoSubject, devidp.DemoEmail)
	}

	other := a.tokens(t, "nonce-2")
	if sid := claimsOf(t, a.idToken(t, other)).SID; sid == c.SID {
		t.Errorf("second login sid = first login sid %q, want a new session", sid)
	}
	if got := a.p.Count(devidp.GrantAuthorizationCode); got != 2 {
		t.Errorf("Count(authorization_code) = %d, want 2", got)
	}
}

func TestLoginAsOtherUser(t *testing.T) {
	a := start(t, devidp.Config{})
	verifier := oauth2.GenerateVerifier()
	code, err := a.p.Login(t.Context(), devidp.LoginRequest{
		Username:      devidp.OtherUsername,
		Password:      devidp.OtherPassword,
		CodeChallenge: oauth2.S256ChallengeFromVerifier(verifier),
	})
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	tok, err := a.oauth.Exchange(t.Context(), code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	if sub := a.idToken(t, tok).Subject; sub != devidp.OtherSubject {
		t.Errorf("sub = %q, want %q", sub, devidp.OtherSubject)
	}
}

func TestLoginErrors(t *testing.T) {
	a := start(t, devidp.Config{})
	challenge := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	tests := []struct {
		name string
		req  devidp.LoginRequest
		want func(error) bool
	}{
		{
			name: "wrong password",
			req:  devidp.LoginRequest{Username: devidp.DemoUsername, Password: "nope", CodeChallenge: challenge},
			want: func(err error) bool { return errors.Is(err, devidp.ErrLoginFailed) },
		},
		{
			name: "unregistered redirect URI",
			req:  devidp.LoginRequest{RedirectURI: "com.evil.app:/cb", CodeChallenge: challenge},
			want: func(err error) bool { return err != nil },
		},
		{
			name: "no code challenge",
			req:  devidp.LoginRequest{},
			want: func(err error) bool { return err != nil },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, err := a.p.Login(t.Context(), tt.req)
			if !tt.want(err) {
				t.Errorf("Login = %q, %v; want an error", code, err)
			}
		})
	}
}

func TestCodeExchangeRejected(t *testing.T) {
	a := start(t, devidp.Config{})

	t.Run("wrong verifier", func(t *testing.T) {
		code, _ := a.login(t, "n")
		_, err := a.oauth.Exchange(t.Context(), code, oauth2.VerifierOption(oauth2.GenerateVerifier()))
		wantOAuthError(t, "Exchange(code, wrong verifier)", err, http.StatusBadRequest, "invalid_grant")
	})
	t.Run("reused code", func(t *testing.T) {
		code, verifier := a.login(t, "n")
		if _, err := a.oauth.Exchange(t.Context(), code, oauth2.VerifierOption(verifier)); err != nil {
			t.Fatalf("first Exchange: %v", err)
		}
		_, err := a.oauth.Exchange(t.Context(), code, oauth2.VerifierOption(verifier))
		wantOAuthError(t, "second Exchange(code)", err, http.StatusBadRequest, "invalid_grant")
	})
	t.Run("no verifier", func(t *testing.T) {
		code, _ := a.login(t, "n")
		_, err := a.oauth.Exchange(t.Context(), code)
		wantOAuthError(t, "Exchange(code, no verifier)", err, http.StatusBadRequest, "invalid_request")
	})
}

func TestRefreshRotates(t *testing.T) {
	a := start(t, devidp.Config{AccessTokenTTL: 42 * time.Second})
	first := a.tokens(t, "n")
	sid := claimsOf(t, a.idToken(t, first)).SID

	second, err := a.refresh(t.Context(), first.RefreshToken)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if second.RefreshToken == "" || second.RefreshToken == first.RefreshToken {
		t.Errorf("refresh returned refresh token %q, want a new one", second.RefreshToken)
	}
	if second.AccessToken == first.AccessToken {
		t.Error("refresh returned the same access token")
	}
	if second.ExpiresIn < 37 || second.ExpiresIn > 42 {
		t.Errorf("refresh expires_in = %d, want about 42", second.ExpiresIn)
	}
	idt := a.idToken(t, second)
	if got := claimsOf(t, idt).SID; got != sid || idt.Subject != devidp.DemoSubject {
		t.Errorf("refreshed id_token sub, sid = %q, %q; want %q, %q", idt.Subject, got, devidp.DemoSubject, sid)
	}

	_, err = a.refresh(t.Context(), first.RefreshToken)
	wantOAuthError(t, "refresh(rotated token)", err, http.StatusBadRequest, "invalid_grant")

	third, err := a.refresh(t.Context(), second.RefreshToken)
	if err != nil {
		t.Fatalf("refresh(new token): %v", err)
	}
	if got := claimsOf(t, a.idToken(t, third)).SID; got != sid {
		t.Errorf("second refresh sid = %q, want %q", got, sid)
	}
	if got := a.p.Count(devidp.GrantRefreshToken); got != 3 {
		t.Errorf("Count(refresh_token) = %d, want 3", got)
	}
	if got := a.p.SuccessfulRefreshes(); got != 2 {
		t.Errorf("SuccessfulRefreshes() = %d, want 2", got)
	}
}

func TestSetFailure(t *testing.T) {
	a := start(t, devidp.Config{})
	tok := a.tokens(t, "n")

	a.p.SetFailure(http.StatusServiceUnavailable)
	_, err := a.refresh(t.Context(), tok.RefreshToken)
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.Response.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("refresh while sick = %v, want 503", err)
	}
	if _, err := oidc.NewProvider(t.Context(), a.p.Issuer()); err == nil {
		t.Error("discovery while sick succeeded, want an error")
	}

	a.p.SetFailure(0)
	if _, err := a.refresh(t.Context(), tok.RefreshToken); err != nil {
		t.Fatalf("refresh after healing: %v", err)
	}
	if got, want := a.p.Count(devidp.GrantRefreshToken), 2; got != want {
		t.Errorf("Count(refresh_token) = %d, want %d", got, want)
	}
	if got := a.p.SuccessfulRefreshes(); got != 1 {
		t.Errorf("SuccessfulRefreshes() = %d, want 1", got)
	}
}

func TestStopRestart(t *testing.T) {
	a := start(t, devidp.Config{})
	tok := a.tokens(t, "n")
	issuer := a.p.Issuer()

	if err := a.p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	_, err := a.refresh(t.Context(), tok.RefreshToken)
	var re *oauth2.RetrieveError
	if err == nil || errors.As(err, &re) {
		t.Fatalf("refresh while stopped = %v, want a transport error", err)
	}
	u, _ := url.Parse(issuer)
	if conn, err := net.Dial("tcp", u.Host); !errors.Is(err, syscall.ECONNREFUSED) {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("dial %s while stopped = %v, want connection refused", u.Host, err)
	}

	if err := a.p.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if a.p.Issuer() != issuer {
		t.Errorf("Issuer() after Restart = %q, want %q", a.p.Issuer(), issuer)
	}
	b := newApp(t, a.p, "")
	b.idToken(t, tok) // keys survive the restart
	next, err := b.refresh(t.Context(), tok.RefreshToken)
	if err != nil {
		t.Fatalf("refresh after Restart: %v", err)
	}
	b.idToken(t, next)

	if err := a.p.Restart(); err != nil {
		t.Fatalf("Restart while running: %v", err)
	}
	if _, err := b.refresh(t.Context(), next.RefreshToken); err != nil {
		t.Fatalf("refresh after second Restart: %v", err)
	}
}

func revoke(t *testing.T, a *app, token, hint string) int {
	t.Helper()
	var doc struct {
		Revocation string `json:"revocation_endpoint"`
	}
	if err := a.provider.Claims(&doc); err != nil {
		t.Fatalf("Claims: %v", err)
	}
	form := url.Values{"token": {token}, "client_id": {a.p.ClientID()}}
	if hint != "" {
		form.Set("token_type_hint", hint)
	}
	resp, err := http.PostForm(doc.Revocation, form)
	if err != nil {
		t.Fatalf("POST revocation: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestRevocation(t *testing.T) {
	a := start(t, devidp.Config{})
	tok := a.tokens(t, "n")

	if got := revoke(t, a, tok.RefreshToken, "refresh_token"); got != http.StatusOK {
		t.Fatalf("revoke(refresh token) = %d, want 200", got)
	}
	_, err := a.refresh(t.Context(), tok.RefreshToken)
	wantOAuthError(t, "refresh(revoked token)", err, http.StatusBadRequest, "invalid_grant")
	if _, err := a.provider.UserInfo(t.Context(), oauth2.StaticTokenSource(tok)); err == nil {
		t.Error("UserInfo with the access token of a revoked refresh token succeeded")
	}

	other := a.tokens(t, "n")
	if got := revoke(t, a, other.AccessToken, ""); got != http.StatusOK {
		t.Fatalf("revoke(access token) = %d, want 200", got)
	}
	if _, err := a.provider.UserInfo(t.Context(), oauth2.StaticTokenSource(other)); err == nil {
		t.Error("UserInfo with a revoked access token succeeded")
	}
	if _, err := a.refresh(t.Context(), other.RefreshToken); err != nil {
		t.Errorf("refresh after revoking only the access token: %v", err)
	}

	want := []string{tok.RefreshToken, other.AccessToken}
	if got := a.p.Revoked(); !slices.Equal(got, want) {
		t.Errorf("Revoked() = %q, want %q", got, want)
	}
}

func TestConfidentialClient(t *testing.T) {
	a := start(t, devidp.Config{ClientID: "broker", ClientSecret: "s3cret"})
	tok := a.tokens(t, "n")
	if tok.RefreshToken == "" {
		t.Fatal("Exchange returned no refresh token")
	}
	if _, err := a.refresh(t.Context(), tok.RefreshToken); err != nil {
		t.Fatalf("refresh: %v", err)
	}

	wrong := *a
	wrong.oauth.ClientSecret = "wrong"
	code, verifier := a.login(t, "n")
	_, err := wrong.oauth.Exchange(t.Context(), code, oauth2.VerifierOption(verifier))
	wantOAuthError(t, "Exchange(wrong secret)", err, http.StatusUnauthorized, "invalid_client")

	code, _ = a.login(t, "n")
	_, err = a.oauth.Exchange(t.Context(), code, oauth2.VerifierOption(oauth2.GenerateVerifier()))
	wantOAuthError(t, "Exchange(wrong verifier)", err, http.StatusBadRequest, "invalid_grant")
}

func TestSigningKeyVerifiesAgainstJWKS(t *testing.T) {
	a := start(t, devidp.Config{})
	key, kid := a.p.SigningKey()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, nil)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	payload, _ := json.Marshal(map[string]any{"iss": a.p.Issuer(), "events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}})
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	raw, err := jws.CompactSerialize()
	if err != nil {
		t.Fatalf("CompactSerialize: %v", err)
	}
	var doc struct {
		JWKS string `json:"jwks_uri"`
	}
	if err := a.provider.Claims(&doc); err != nil {
		t.Fatalf("Claims: %v", err)
	}
	if _, err := oidc.NewRemoteKeySet(t.Context(), doc.JWKS).VerifySignature(t.Context(), raw); err != nil {
		t.Errorf("VerifySignature(token signed with SigningKey) = %v, want ok", err)
	}

	tok := a.tokens(t, "n")
	parsed, err := jose.ParseSigned(tok.Extra("id_token").(string), []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("ParseSigned(id_token): %v", err)
	}
	if got := parsed.Signatures[0].Header.KeyID; got != kid {
		t.Errorf("id_token kid = %q, want %q", got, kid)
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  devidp.Config
	}{
		{"negative TTL", devidp.Config{AccessTokenTTL: -time.Second}},
		{"relative redirect URI", devidp.Config{RedirectURIs: []string{"/cb"}}},
		{"bad address", devidp.Config{Addr: "127.0.0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := devidp.Start(tt.cfg)
			if err == nil {
				p.Close()
				t.Fatal("Start succeeded, want an error")
			}
		})
	}
}

// waitFor polls cond until it holds, failing the test after a few seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// refreshResult is what a refresh run in the background returned.
type refreshResult struct {
	tok *oauth2.Token
	err error
}

// refreshInBackground starts a refresh grant and returns where its result
// arrives.
func (a *app) refreshInBackground(ctx context.Context, refreshToken string) <-chan refreshResult {
	done := make(chan refreshResult, 1)
	go func() {
		tok, err := a.refresh(ctx, refreshToken)
		done <- refreshResult{tok, err}
	}()
	return done
}

// notYet fails the test if a result arrives on done within a short while.
func notYet[T any](t *testing.T, what string, done <-chan T) {
	t.Helper()
	select {
	case r := <-done:
		t.Fatalf("%s returned while paused: %+v", what, r)
	case <-time.After(200 * time.Millisecond):
	}
}

func receive[T any](t *testing.T, what string, done <-chan T) T {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not return", what)
		panic("unreachable")
	}
}

func TestPauseHoldsRequestsUntilResume(t *testing.T) {
	a := start(t, devidp.Config{})
	tok := a.tokens(t, "n")

	a.p.Pause()
	refreshed := a.refreshInBackground(t.Context(), tok.RefreshToken)
	discovered := make(chan error, 1)
	go func() {
		_, err := oidc.NewProvider(t.Context(), a.p.Issuer())
		discovered <- err
	}()
	waitFor(t, "the held refresh to be counted", func() bool { return a.p.Count(devidp.GrantRefreshToken) == 1 })
	notYet(t, "refresh", refreshed)
	notYet(t, "discovery", discovered)
	if got := a.p.SuccessfulRefreshes(); got != 0 {
		t.Errorf("SuccessfulRefreshes() while paused = %d, want 0", got)
	}

	a.p.Resume()
	r := receive(t, "refresh after Resume", refreshed)
	if r.err != nil {
		t.Fatalf("refresh held until Resume = %v, want tokens", r.err)
	}
	if r.tok.RefreshToken == "" || r.tok.RefreshToken == tok.RefreshToken {
		t.Errorf("refresh held until Resume returned refresh token %q, want a new one", r.tok.RefreshToken)
	}
	if err := receive(t, "discovery after Resume", discovered); err != nil {
		t.Errorf("discovery held until Resume = %v, want ok", err)
	}
	if _, err := a.refresh(t.Context(), r.tok.RefreshToken); err != nil {
		t.Errorf("refresh after Resume = %v, want tokens", err)
	}
	if got := a.p.SuccessfulRefreshes(); got != 2 {
		t.Errorf("SuccessfulRefreshes() = %d, want 2", got)
	}
}

// A paused IdP still has the request of a client that gave up, and serves
// it when resumed: the refresh token rotates although nobody got the new
// one.
func TestPauseServesRequestsWhoseClientGaveUp(t *testing.T) {
	a := start(t, devidp.Config{})
	tok := a.tokens(t, "n")

	a.p.Pause()
	ctx, cancel := context.WithCancel(t.Context())
	refreshed := a.refreshInBackground(ctx, tok.RefreshToken)
	waitFor(t, "the held refresh to be counted", func() bool { return a.p.Count(devidp.GrantRefreshToken) == 1 })
	cancel()
	if r := receive(t, "cancelled refresh", refreshed); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled refresh = %v, want context.Canceled", r.err)
	}
	// Let the server see the connection close before it resumes.
	time.Sleep(50 * time.Millisecond)

	a.p.Resume()
	waitFor(t, "the abandoned refresh to be served", func() bool { return a.p.SuccessfulRefreshes() == 1 })
	_, err := a.refresh(t.Context(), tok.RefreshToken)
	wantOAuthError(t, "refresh(token rotated by the abandoned request)", err, http.StatusBadRequest, "invalid_grant")
	if got := len(a.p.IssuedRefreshTokens()); got != 2 {
		t.Errorf("IssuedRefreshTokens() has %d tokens, want 2 (login and abandoned refresh)", got)
	}
}

func TestCloseDropsHeldRequests(t *testing.T) {
	a := start(t, devidp.Config{})
	tok := a.tokens(t, "n")

	a.p.Pause()
	refreshed := a.refreshInBackground(t.Context(), tok.RefreshToken)
	waitFor(t, "the held refresh to be counted", func() bool { return a.p.Count(devidp.GrantRefreshToken) == 1 })
	if err := a.p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if r := receive(t, "refresh held at Close", refreshed); r.err == nil {
		t.Fatal("refresh held at Close succeeded, want an error")
	}

	// The dropped request never reached the OP, and the restarted
	// Provider is not paused.
	if err := a.p.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if _, err := a.refresh(t.Context(), tok.RefreshToken); err != nil {
		t.Fatalf("refresh after Restart = %v, want tokens", err)
	}
	if got := a.p.SuccessfulRefreshes(); got != 1 {
		t.Errorf("SuccessfulRefreshes() = %d, want 1", got)
	}
}

func TestFailRefresh(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		code        string
		description string
	}{
		{"Dex: unknown refresh token", http.StatusBadRequest, "invalid_request", "Refresh token is invalid or has already been claimed by another client."},
		{"Dex: connector failure", http.StatusInternalServerError, "invalid_request", ""},
		{"Hydra: concurrent refresh", http.StatusBadRequest, "invalid_request", "Please retry the request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := start(t, devidp.Config{})
			tok := a.tokens(t, "n")

			a.p.FailRefresh(tt.status, tt.code, tt.description, 1)
			_, err := a.refresh(t.Context(), tok.RefreshToken)
			wantOAuthError(t, "refresh(failed)", err, tt.status, tt.code)
			var re *oauth2.RetrieveError
			errors.As(err, &re)
			if re.ErrorDescription != tt.description {
				t.Errorf("error_description = %q, want %q", re.ErrorDescription, tt.description)
			}
			if ct := re.Response.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}

			// The failure used up its one time and left the token valid.
			if _, err := a.refresh(t.Context(), tok.RefreshToken); err != nil {
				t.Fatalf("refresh after the failure = %v, want tokens", err)
			}
			if got := a.p.Count(devidp.GrantRefreshToken); got != 2 {
				t.Errorf("Count(refresh_token) = %d, want 2", got)
			}
			if got := a.p.SuccessfulRefreshes(); got != 1 {
				t.Errorf("SuccessfulRefreshes() = %d, want 1", got)
			}
		})
	}
}

func TestFailRefreshTimes(t *testing.T) {
	a := start(t, devidp.Config{})
	tok := a.tokens(t, "n")

	a.p.FailRefresh(http.StatusBadRequest, "invalid_request", "Please retry the request", 2)
	for i := range 2 {
		_, err := a.refresh(t.Context(), tok.RefreshToken)
		wantOAuthError(t, fmt.Sprintf("refresh %d of 2 failed", i+1), err, http.StatusBadRequest, "invalid_request")
	}
	next, err := a.refresh(t.Context(), tok.RefreshToken)
	if err != nil {
		t.Fatalf("third refresh = %v, want tokens", err)
	}

	a.p.FailRefresh(http.StatusInternalServerError, "invalid_request", "", -1)
	for i := range 5 {
		_, err := a.refresh(t.Context(), next.RefreshToken)
		wantOAuthError(t, fmt.Sprintf("refresh %d while failing until healed", i+1), err, http.StatusInternalServerError, "invalid_request")
	}
	// Code grants are not refresh grants.
	a.tokens(t, "n")

	a.p.FailRefresh(0, "", "", 0)
	if _, err := a.refresh(t.Context(), next.RefreshToken); err != nil {
		t.Fatalf("refresh after healing = %v, want tokens", err)
	}
	if got := a.p.Count(devidp.GrantRefreshToken); got != 9 {
		t.Errorf("Count(refresh_token) = %d, want 9", got)
	}
	if got := a.p.SuccessfulRefreshes(); got != 2 {
		t.Errorf("SuccessfulRefreshes() = %d, want 2", got)
	}
}

func TestSetStaticAccessToken(t *testing.T) {
	a := start(t, devidp.Config{AccessTokenTTL: 42 * time.Second})
	first := a.tokens(t, "n")

	const static = "the-same-access-token"
	a.p.SetStaticAccessToken(static)
	if other := a.tokens(t, "n"); other.AccessToken == static {
		t.Error("code grant returned the static access token, want only refresh grants to")
	}
	second, err := a.refresh(t.Context(), first.RefreshToken)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	third, err := a.refresh(t.Context(), second.RefreshToken)
	if err != nil {
		t.Fatalf("second refresh: %v", err)
	}
	for i, tok := range []*oauth2.Token{second, third} {
		if tok.AccessToken != static {
			t.Errorf("refresh %d access_token = %q, want %q", i+1, tok.AccessToken, static)
		}
		// Every other field is the OP's.
		if tok.RefreshToken == "" || tok.TokenType != "Bearer" || tok.ExpiresIn < 37 || tok.ExpiresIn > 42 {
			t.Errorf("refresh %d = refresh token %t, token_type %q, expires_in %d; want a refresh token, Bearer, about 42", i+1, tok.RefreshToken != "", tok.TokenType, tok.ExpiresIn)
		}
		a.idToken(t, tok)
	}
	if second.RefreshToken == third.RefreshToken {
		t.Error("refresh tokens did not rotate")
	}

	// The rewritten body is sent with its own length.
	resp, err := http.PostForm(a.oauth.Endpoint.TokenURL, url.Values{
		"grant_type":    {devidp.GrantRefreshToken},
		"refresh_token": {third.RefreshToken},
		"client_id":     {a.p.ClientID()},
	})
	if err != nil {
		t.Fatalf("POST token: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("read token response: %v", err)
	}
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(body)) {
		t.Fatalf("token response = %d with Content-Length %d and %d bytes, want 200 with matching length", resp.StatusCode, resp.ContentLength, len(body))
	}
	var fourth struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal(body, &fourth); err != nil || fourth.AccessToken != static {
		t.Fatalf("token response access_token = %q (%v), want %q", fourth.AccessToken, err, static)
	}

	a.p.SetStaticAccessToken("")
	healed, err := a.refresh(t.Context(), fourth.RefreshToken)
	if err != nil {
		t.Fatalf("refresh after healing: %v", err)
	}
	if healed.AccessToken == static || healed.AccessToken == "" {
		t.Errorf("refresh after healing access_token = %q, want the OP's", healed.AccessToken)
	}
	if got := a.p.SuccessfulRefreshes(); got != 4 {
		t.Errorf("SuccessfulRefreshes() = %d, want 4", got)
	}
}

func TestRefreshTokensSeen(t *testing.T) {
	a := start(t, devidp.Config{})
	tok := a.tokens(t, "n")

	next, err := a.refresh(t.Context(), tok.RefreshToken)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	_, err = a.refresh(t.Context(), tok.RefreshToken)
	wantOAuthError(t, "refresh(rotated token)", err, http.StatusBadRequest, "invalid_grant")
	a.p.FailRefresh(http.StatusBadRequest, "invalid_request", "", 1)
	_, err = a.refresh(t.Context(), next.RefreshToken)
	wantOAuthError(t, "refresh(failed)", err, http.StatusBadRequest, "invalid_request")
	if _, err := a.refresh(t.Context(), next.RefreshToken); err != nil {
		t.Fatalf("refresh: %v", err)
	}

	want := []string{tok.RefreshToken, tok.RefreshToken, next.RefreshToken, next.RefreshToken}
	if got := a.p.RefreshTokensSeen(); !slices.Equal(got, want) {
		t.Errorf("RefreshTokensSeen() = %q, want %q", got, want)
	}
}
