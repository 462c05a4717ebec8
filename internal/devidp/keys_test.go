package devidp_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// rawIDToken returns the ID token of a token response and its claims, read
// after its signature verified against the OP's JWKS.
func (a *app) rawIDToken(t *testing.T, extra func(string) any) (string, map[string]any) {
	t.Helper()
	raw, _ := extra("id_token").(string)
	if raw == "" {
		t.Fatal("token response has no id_token")
	}
	keys := oidc.NewRemoteKeySet(t.Context(), a.jwksURI(t))
	payload, err := keys.VerifySignature(t.Context(), raw)
	if err != nil {
		t.Fatalf("VerifySignature(id_token) = %v, want it signed by the OP", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return raw, claims
}

func (a *app) jwksURI(t *testing.T) string {
	t.Helper()
	var doc struct {
		JWKS string `json:"jwks_uri"`
	}
	if err := a.provider.Claims(&doc); err != nil {
		t.Fatalf("Claims: %v", err)
	}
	return doc.JWKS
}

func TestRewriteIDTokens(t *testing.T) {
	a := start(t, devidp.Config{})
	a.p.RewriteIDTokens(func(c map[string]any) {
		delete(c, "sub")
		c["azp"] = "another-client"
		c["aud"] = []string{a.p.ClientID(), "another-client"}
	})
	tok := a.tokens(t, "n")
	_, claims := a.rawIDToken(t, tok.Extra)
	if _, ok := claims["sub"]; ok || claims["azp"] != "another-client" {
		t.Errorf("code grant: claims = %v, want no sub and azp another-client", claims)
	}
	if aud, _ := claims["aud"].([]any); len(aud) != 2 {
		t.Errorf("code grant: aud = %v, want two audiences", claims["aud"])
	}
	if claims["nonce"] != "n" || claims["iss"] != a.p.Issuer() {
		t.Errorf("code grant: claims = %v, want the other claims kept", claims)
	}

	a.p.RewriteIDTokens(func(c map[string]any) { c["sub"] = "" })
	next, err := a.refresh(t.Context(), tok.RefreshToken)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if _, claims := a.rawIDToken(t, next.Extra); claims["sub"] != "" {
		t.Errorf("refresh grant: sub = %v, want empty", claims["sub"])
	}

	a.p.RewriteIDTokens(nil)
	if _, claims := a.rawIDToken(t, a.tokens(t, "n2").Extra); claims["sub"] != devidp.DemoSubject || claims["azp"] == "another-client" {
		t.Errorf("healed: claims = %v, want the OP's own", claims)
	}
}

func TestRotateSigningKey(t *testing.T) {
	a := start(t, devidp.Config{})
	_, oldKid := a.p.SigningKey()
	before, _ := a.rawIDToken(t, a.tokens(t, "n").Extra)

	key, kid, err := a.p.RotateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if gotKey, gotKid := a.p.SigningKey(); gotKey != key || gotKid != kid || kid == oldKid {
		t.Fatalf("SigningKey() after rotation = %q, want the new key %q", gotKid, kid)
	}
	after, _ := a.rawIDToken(t, a.tokens(t, "n").Extra)
	if got := kidOf(t, after); got != kid {
		t.Errorf("ID token kid after rotation = %q, want %q", got, kid)
	}
	// Tokens signed before the rotation still verify: the old key stays
	// published.
	if _, err := oidc.NewRemoteKeySet(t.Context(), a.jwksURI(t)).VerifySignature(t.Context(), before); err != nil {
		t.Errorf("ID token signed before the rotation: %v", err)
	}
	res, err := http.Get(a.jwksURI(t))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(res.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	if len(set.Key(oldKid)) != 1 || len(set.Key(kid)) != 1 {
		t.Errorf("JWKS has %d keys, want the old and the new one", len(set.Keys))
	}
}

func TestKeySetFetches(t *testing.T) {
	a := start(t, devidp.Config{})
	if n := a.p.KeySetFetches(); n != 0 {
		t.Fatalf("KeySetFetches() after discovery = %d, want 0", n)
	}
	tok := a.tokens(t, "n")
	a.rawIDToken(t, tok.Extra)
	a.rawIDToken(t, tok.Extra)
	if n := a.p.KeySetFetches(); n != 2 {
		t.Errorf("KeySetFetches() = %d, want 2 (one per new remote key set)", n)
	}
}

func kidOf(t *testing.T, raw string) string {
	t.Helper()
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header.KeyID
}
