package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// How a fuzzed logout token is signed.
const (
	signedByOP     = iota // RS256 with the OP's own key
	signedByOther         // RS256 with a key the OP never published
	signedWithNone        // "alg": "none", no signature
	signedWithMAC         // HS256 keyed with the OP's public key
	rawToken              // the fuzzed bytes are the whole token
	signerKinds
)

// opKid in a fuzzed kid stands for the OP's real key id, and issuerMark in
// fuzzed claims for its issuer, both new at every run.
const (
	opKid      = "<op>"
	issuerMark = "<issuer>"
)

// The back-channel logout validation accepts a token only if the OP
// signed it, and then only with the claims OpenID Connect Back-Channel
// Logout 1.0 section 2.6 requires: iss, aud, the event, jti, sid or sub, a
// recent iat, no nonce. The broker discovers the real development OP over
// HTTP, as in production; only the replay check (step 8), which needs the
// store, is left out.
func FuzzLogoutToken(f *testing.F) {
	op, err := devidp.Start(devidp.Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = op.Close() })
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s := &Service{
		cfg: Config{Issuer: op.Issuer(), ClientID: op.ClientID(), Now: func() time.Time { return now },
			IdPTimeout: 10 * time.Second, HTTPClient: &http.Client{Timeout: 10 * time.Second}},
		log: slog.New(slog.DiscardHandler),
	}
	if err := s.Discover(context.Background()); err != nil {
		f.Fatal(err)
	}
	d := s.idp.Load()
	opKey, opKeyID := op.SigningKey()
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	publicDER, err := x509.MarshalPKIXPublicKey(&opKey.PublicKey)
	if err != nil {
		f.Fatal(err)
	}

	valid := func(change func(map[string]any)) []byte {
		c := map[string]any{
			"iss":    op.Issuer(),
			"aud":    op.ClientID(),
			"iat":    now.Unix(),
			"jti":    "jti-1",
			"sid":    "sid-1",
			"sub":    devidp.DemoSubject,
			"events": map[string]any{backchannelEvent: map[string]any{}},
		}
		if change != nil {
			change(c)
		}
		b, err := json.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	// The properties below hold vacuously if nothing is accepted.
	if _, err := s.validateLogoutToken(context.Background(), d, signJWS(f, jose.RS256, opKey, opKeyID, valid(nil))); err != nil {
		f.Fatalf("a valid logout token signed by the OP = %v, want accepted", err)
	}
	for _, signer := range []byte{signedByOP, signedByOther, signedWithNone, signedWithMAC} {
		f.Add(valid(nil), signer, opKid)
	}
	f.Add(valid(nil), byte(signedByOP), "")
	f.Add(valid(nil), byte(signedByOther), "")
	f.Add(valid(nil), byte(signedByOther), "unknown-kid")
	f.Add(valid(func(c map[string]any) { delete(c, "sid") }), byte(signedByOP), opKid)
	f.Add(valid(func(c map[string]any) { delete(c, "sid"); delete(c, "sub") }), byte(signedByOP), opKid)
	f.Add(valid(func(c map[string]any) { c["aud"] = []string{"other", op.ClientID()} }), byte(signedByOP), opKid)
	f.Add(valid(func(c map[string]any) { c["nonce"] = "n" }), byte(signedByOP), opKid)
	f.Add(valid(func(c map[string]any) { c["iat"] = now.Add(-11 * time.Minute).Unix() }), byte(signedByOP), opKid)
	f.Add(valid(func(c map[string]any) { c["exp"] = now.Add(-2 * time.Minute).Unix() }), byte(signedByOP), opKid)
	f.Add(valid(func(c map[string]any) { c["events"] = map[string]any{backchannelEvent: "x"} }), byte(signedByOP), opKid)
	f.Add([]byte(`{"iss":"`+op.Issuer()+`","aud":"`+op.ClientID()+`","iat":1767268800,"jti":"j","sub":"a","sub":"","events":{"`+backchannelEvent+`":{}}}`), byte(signedByOP), opKid)
	f.Add([]byte("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"), byte(rawToken), "")

	f.Fuzz(func(t *testing.T, claims []byte, signer byte, kid string) {
		if kid == opKid {
			kid = opKeyID
		}
		// The OP's issuer has a new port at every run.
		claims = bytes.ReplaceAll(claims, []byte(issuerMark), []byte(op.Issuer()))
		var token string
		switch signer % signerKinds {
		case signedByOP:
			token = signJWS(t, jose.RS256, opKey, kid, claims)
		case signedByOther:
			token = signJWS(t, jose.RS256, other, kid, claims)
		case signedWithNone:
			header, _ := json.Marshal(map[string]string{"alg": "none", "kid": kid, "typ": "logout+jwt"})
			token = base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims) + "."
		case signedWithMAC:
			token = signJWS(t, jose.HS256, publicDER, kid, claims)
		case rawToken:
			token = string(claims)
		}
		c, err := s.validateLogoutToken(context.Background(), d, token)
		if err != nil {
			if ErrorCode(err) != CodeInvalidRequest {
				t.Fatalf("validateLogoutToken = %v, want a refusal as invalid_request", err)
			}
			return
		}
		if signer%signerKinds != signedByOP {
			t.Fatalf("accepted a token not signed by the OP (signer %d, kid %q): %s", signer%signerKinds, kid, claims)
		}
		if problem := logoutTokenProblem(claims, op.Issuer(), op.ClientID(), now); problem != "" {
			t.Fatalf("accepted a logout token with %s: %s", problem, claims)
		}
		if c.JTI == "" || (c.SID == "" && c.Subject == "") {
			t.Fatalf("accepted claims %+v without jti, or without sid and sub", c)
		}
	})
}

// signJWS signs payload as a compact JWS with the kid header (none when
// empty), typed as a logout token.
func signJWS(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, payload []byte) string {
	t.Helper()
	raw, err := devidp.SignJWS(alg, key, kid, devidp.LogoutTokenType, payload)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// logoutTokenProblem is an oracle for the claims of an acceptable logout
// token, read with encoding/json alone: it names the first requirement of
// section 2.4 and 2.6 the claims miss, or returns "".
func logoutTokenProblem(payload []byte, issuer, clientID string, now time.Time) string {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var c map[string]any
	if err := dec.Decode(&c); err != nil {
		return "claims that are not a JSON object"
	}
	str := func(name string) string { v, _ := c[name].(string); return v }
	unix := func(name string) (time.Time, bool) {
		n, ok := c[name].(json.Number)
		if !ok {
			return time.Time{}, false
		}
		v, err := n.Int64()
		return time.Unix(v, 0), err == nil
	}
	if str("iss") != issuer {
		return "another iss"
	}
	switch aud := c["aud"].(type) {
	case string:
		if aud != clientID {
			return "another aud"
		}
	case []any:
		if !slices.Contains(aud, any(clientID)) {
			return "an aud without this client"
		}
	default:
		return "no aud"
	}
	events, _ := c["events"].(map[string]any)
	if _, ok := events[backchannelEvent].(map[string]any); !ok {
		return "no back-channel logout event"
	}
	if str("jti") == "" {
		return "no jti"
	}
	if str("sid") == "" && str("sub") == "" {
		return "neither sid nor sub"
	}
	if _, ok := c["nonce"]; ok {
		return "a nonce"
	}
	iat, ok := unix("iat")
	if !ok || now.Sub(iat) > logoutTokenMaxAge || iat.Sub(now) > logoutTokenSkew {
		return "no recent iat"
	}
	if _, present := c["exp"]; present {
		if exp, ok := unix("exp"); !ok || !now.Before(exp.Add(logoutTokenSkew)) {
			return "an exp that has passed"
		}
	}
	return ""
}
