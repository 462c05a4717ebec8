package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// The DPoP tests play an app holding a P-256 key, with real signatures,
// against real brokers on a real Redis and a real OP.

func newTestKey(t testing.TB) *dpopKey {
	t.Helper()
	k, err := newDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// proofFor signs a fresh proof of k for method and the URL of path on inst.
func proofFor(t testing.TB, k *dpopKey, inst *instance, method, path, handle, nonce string, iat time.Time) string {
	t.Helper()
	p, err := k.proof(method, inst.base+path, handle, nonce, iat)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// dpopHeaders are the headers of a request with a DPoP-bound handle.
func dpopHeaders(handle string, proofs ...string) http.Header {
	h := http.Header{}
	if handle != "" {
		h.Set("Authorization", "DPoP "+handle)
	}
	for _, p := range proofs {
		h.Add("DPoP", p)
	}
	return h
}

// doDPoP sends a request with handle under the DPoP scheme and proofs.
func doDPoP(t testing.TB, inst *instance, method, path, handle string, proofs ...string) response {
	t.Helper()
	return doURL(t, method, inst.base+path, "", nil, dpopHeaders(handle, proofs...))
}

// loginDPoP signs in at inst with a proof of k and returns the session.
func (s *stack) loginDPoP(inst *instance, k *dpopKey) created {
	s.t.Helper()
	res := s.signIn(inst, "", dpopHeaders("", proofFor(s.t, k, inst, http.MethodPost, "/v1/sessions", "", "", s.clock.Now())))
	if res.status != http.StatusCreated {
		s.t.Fatalf("POST /v1/sessions with a proof = %d %s, want 201", res.status, res.body)
	}
	var c created
	res.decode(s.t, &c)
	if c.TokenType != "DPoP" {
		s.t.Fatalf("POST /v1/sessions with a proof: token_type = %q, want DPoP", c.TokenType)
	}
	return c
}

// signIn redeems a fresh code of the demo user (or of username) at inst
// with the given headers.
func (s *stack) signIn(inst *instance, username string, h http.Header) response {
	s.t.Helper()
	code, verifier := s.authorizeAs(username)
	return doURL(s.t, http.MethodPost, inst.base+"/v1/sessions", "", map[string]string{
		"code": code, "code_verifier": verifier, "redirect_uri": redirectURI,
	}, h)
}

func (s *stack) authorizeAs(username string) (code, verifier string) {
	s.t.Helper()
	if username == "" {
		return s.authorize("n-" + rand.Text())
	}
	password := devidp.DemoPassword
	if username == devidp.OtherUsername {
		password = devidp.OtherPassword
	}
	verifier = oauth2.GenerateVerifier()
	code, err := s.idp.Login(context.Background(), devidp.LoginRequest{
		Username: username, Password: password,
		CodeChallenge: oauth2.S256ChallengeFromVerifier(verifier), State: "st",
	})
	if err != nil {
		s.t.Fatalf("Login(%s): %v", username, err)
	}
	return code, verifier
}

// wantDPoPError checks a refusal of RFC 9449 section 7.1: status 401, the
// error in the JSON body and in a DPoP challenge.
func wantDPoPError(t *testing.T, what string, res response, code string) {
	t.Helper()
	if res.status != http.StatusUnauthorized {
		t.Errorf("%s = %d %s, want 401", what, res.status, res.body)
		return
	}
	if got := res.errorCode(t); got != code {
		t.Errorf("%s: error = %q, want %q", what, got, code)
	}
	if ch := res.header.Get("WWW-Authenticate"); !strings.HasPrefix(ch, `DPoP error="`+code+`"`) || !strings.Contains(ch, `algs="ES256"`) {
		t.Errorf("%s: WWW-Authenticate = %q, want a DPoP challenge with error %q and algs", what, ch, code)
	}
}

// forged builds a compact JWS by hand, for the algorithms and headers no
// honest signer produces.
func forged(t *testing.T, header map[string]any, claims appProofClaims, sign func(input string) []byte) string {
	t.Helper()
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	return input + "." + base64.RawURLEncoding.EncodeToString(sign(input))
}

func TestDPoPBoundSession(t *testing.T) {
	s := newStack(t, stackOptions{})
	b1, b2 := s.start(), s.start()
	k := newTestKey(t)
	sess := s.loginDPoP(b1, k)
	h := sess.Session
	now := s.clock.Now

	// A bound session works with proofs, on every replica, for the
	// broker's API and through the proxy.
	for i, b := range []*instance{b1, b2} {
		if res := doDPoP(t, b, http.MethodGet, "/v1/session", h, proofFor(t, k, b, http.MethodGet, "/v1/session", h, "", now())); res.status != http.StatusOK {
			t.Fatalf("broker %d: GET /v1/session with a proof = %d %s, want 200", i+1, res.status, res.body)
		}
	}
	res := doDPoP(t, b1, http.MethodGet, "/api/items?x=1", h, proofFor(t, k, b1, http.MethodGet, "/api/items?x=1", h, "", now()))
	if res.status != http.StatusOK {
		t.Fatalf("proxied GET with a proof = %d %s, want 200", res.status, res.body)
	}
	var seen struct {
		Authorization string `json:"authorization"`
	}
	res.decode(t, &seen)
	if !strings.HasPrefix(seen.Authorization, "Bearer ") || strings.Contains(seen.Authorization, h) {
		t.Errorf("the upstream got Authorization %q, want the access token as a bearer token", seen.Authorization)
	}
	s.upstream.mu.Lock()
	last := s.upstream.requests[len(s.upstream.requests)-1]
	s.upstream.mu.Unlock()
	if last.Header.Get("DPoP") != "" {
		t.Error("the upstream got the app's DPoP proof")
	}
	upstreamBefore := len(s.upstream.authorizations())

	replayed := proofFor(t, k, b1, http.MethodGet, "/v1/session", h, "", now())
	if res := doDPoP(t, b1, http.MethodGet, "/v1/session", h, replayed); res.status != http.StatusOK {
		t.Fatalf("GET /v1/session = %d %s, want 200", res.status, res.body)
	}
	other := newTestKey(t)
	sum := sha256.Sum256([]byte("another handle"))
	wrongATH := appProofClaims{JTI: rand.Text(), HTM: http.MethodGet, HTU: b1.base + "/v1/session", IAT: now().Unix(), ATH: base64.RawURLEncoding.EncodeToString(sum[:])}
	rightATH := func() appProofClaims {
		sum := sha256.Sum256([]byte(h))
		return appProofClaims{JTI: rand.Text(), HTM: http.MethodGet, HTU: b1.base + "/v1/session", IAT: now().Unix(), ATH: base64.RawURLEncoding.EncodeToString(sum[:])}
	}
	signed := func(c appProofClaims) string {
		p, err := k.sign(c)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	pub, _ := json.Marshal(jose.JSONWebKey{Key: k.priv.Public()})
	var pubJWK map[string]any
	_ = json.Unmarshal(pub, &pubJWK)
	hmacKey := []byte("0123456789abcdef0123456789abcdef")
	privateInHeader := func() string {
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k.priv},
			(&jose.SignerOptions{ExtraHeaders: map[jose.HeaderKey]any{"jwk": jose.JSONWebKey{Key: k.priv}}}).WithType("dpop+jwt"))
		if err != nil {
			t.Fatal(err)
		}
		c, _ := json.Marshal(rightATH())
		jws, err := signer.Sign(c)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := jws.CompactSerialize()
		return out
	}
	cases := []struct {
		name   string
		broker *instance
		header http.Header
		method string
		want   string
	}{
		{"bearer use of a bound handle", b1, http.Header{"Authorization": {"Bearer " + h}}, http.MethodGet, "invalid_token"},
		{"no proof", b1, dpopHeaders(h), http.MethodGet, "invalid_dpop_proof"},
		{"two proofs", b1, dpopHeaders(h, proofFor(t, k, b1, http.MethodGet, "/v1/session", h, "", now()), proofFor(t, k, b1, http.MethodGet, "/v1/session", h, "", now())), http.MethodGet, "invalid_dpop_proof"},
		{"replayed proof, same replica", b1, dpopHeaders(h, replayed), http.MethodGet, "invalid_dpop_proof"},
		{"proof for another method", b1, dpopHeaders(h, proofFor(t, k, b1, http.MethodPost, "/v1/session", h, "", now())), http.MethodGet, "invalid_dpop_proof"},
		{"proof for another URL", b1, dpopHeaders(h, proofFor(t, k, b1, http.MethodGet, "/v1/userinfo", h, "", now())), http.MethodGet, "invalid_dpop_proof"},
		{"proof for another host", b1, dpopHeaders(h, func() string {
			p, _ := k.proof(http.MethodGet, "http://broker.example/v1/session", h, "", now())
			return p
		}()), http.MethodGet, "invalid_dpop_proof"},
		{"stale iat", b1, dpopHeaders(h, proofFor(t, k, b1, http.MethodGet, "/v1/session", h, "", now().Add(-5*time.Minute))), http.MethodGet, "use_dpop_nonce"},
		{"future iat", b1, dpopHeaders(h, proofFor(t, k, b1, http.MethodGet, "/v1/session", h, "", now().Add(5*time.Minute))), http.MethodGet, "use_dpop_nonce"},
		{"unknown nonce", b1, dpopHeaders(h, proofFor(t, k, b1, http.MethodGet, "/v1/session", h, "bm90LWEtbm9uY2U", now())), http.MethodGet, "use_dpop_nonce"},
		{"wrong ath", b1, dpopHeaders(h, signed(wrongATH)), http.MethodGet, "invalid_dpop_proof"},
		{"no ath", b1, dpopHeaders(h, proofFor(t, k, b1, http.MethodGet, "/v1/session", "", "", now())), http.MethodGet, "invalid_dpop_proof"},
		{"another key", b1, dpopHeaders(h, proofFor(t, other, b1, http.MethodGet, "/v1/session", h, "", now())), http.MethodGet, "invalid_dpop_proof"},
		{"alg none", b1, dpopHeaders(h, forged(t, map[string]any{"alg": "none", "typ": "dpop+jwt", "jwk": pubJWK}, rightATH(), func(string) []byte { return nil })), http.MethodGet, "invalid_dpop_proof"},
		{"alg HS256", b1, dpopHeaders(h, forged(t, map[string]any{"alg": "HS256", "typ": "dpop+jwt", "jwk": map[string]any{"kty": "oct", "k": base64.RawURLEncoding.EncodeToString(hmacKey)}}, rightATH(), func(in string) []byte {
			m := hmac.New(sha256.New, hmacKey)
			m.Write([]byte(in))
			return m.Sum(nil)
		})), http.MethodGet, "invalid_dpop_proof"},
		{"private key in the jwk header", b1, dpopHeaders(h, privateInHeader()), http.MethodGet, "invalid_dpop_proof"},
		{"typ not dpop+jwt", b1, dpopHeaders(h, func() string {
			signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k.priv}, (&jose.SignerOptions{EmbedJWK: true}).WithType("JWT"))
			c, _ := json.Marshal(rightATH())
			jws, _ := signer.Sign(c)
			out, _ := jws.CompactSerialize()
			return out
		}()), http.MethodGet, "invalid_dpop_proof"},
		{"ES384 when only ES256 is allowed", b1, dpopHeaders(h, func() string {
			p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES384, Key: p384}, (&jose.SignerOptions{EmbedJWK: true}).WithType("dpop+jwt"))
			c, _ := json.Marshal(rightATH())
			jws, _ := signer.Sign(c)
			out, _ := jws.CompactSerialize()
			return out
		}()), http.MethodGet, "invalid_dpop_proof"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := doURL(t, c.method, c.broker.base+"/v1/session", "", nil, c.header)
			wantDPoPError(t, c.name, res, c.want)
			if c.want == "use_dpop_nonce" && res.header.Get("DPoP-Nonce") == "" {
				t.Errorf("%s: no DPoP-Nonce header with use_dpop_nonce", c.name)
			}
		})
	}
	// The proxy refuses likewise, before any upstream call.
	res = doURL(t, http.MethodGet, b2.base+"/api/items", "", nil, http.Header{"Authorization": {"Bearer " + h}})
	wantDPoPError(t, "proxied bearer use of a bound handle", res, "invalid_token")
	res = doDPoP(t, b2, http.MethodGet, "/api/items", h, proofFor(t, other, b2, http.MethodGet, "/api/items", h, "", now()))
	wantDPoPError(t, "proxied request with a proof by another key", res, "invalid_dpop_proof")
	if got := len(s.upstream.authorizations()); got != upstreamBefore {
		t.Errorf("the upstream saw refused requests")
	}

	// Possible thefts are audited with the session id, and counted.
	events, raw := s.audit(b1, "50")
	thefts := 0
	for _, e := range events {
		if e.Action == "dpop.refused" && e.SessionID == sess.SessionID && e.Actor == "broker" && e.Outcome == "error" {
			thefts++
		}
	}
	if thefts == 0 {
		t.Errorf("no dpop.refused audit event for session %s in %s", sess.SessionID, raw.body)
	}
	if strings.Contains(string(raw.body), h) {
		t.Error("the audit trail holds the handle")
	}
	metrics := doURL(t, http.MethodGet, b1.admin+"/metrics", "", nil, nil)
	for _, series := range []string{`broker_dpop_total{outcome="bearer_use"} 1`, `broker_dpop_total{outcome="other_key"} 1`, `broker_dpop_total{outcome="replayed"} 1`} {
		if !strings.Contains(string(metrics.body), series) {
			t.Errorf("metrics of broker 1 lack %s", series)
		}
	}
	for _, b := range []*instance{b1, b2} {
		if strings.Contains(b.logs.String(), h) {
			t.Error("a broker logged the handle")
		}
	}

	// The session still works with a good proof after all that.
	if res := doDPoP(t, b2, http.MethodGet, "/v1/session", h, proofFor(t, k, b2, http.MethodGet, "/v1/session", h, "", now())); res.status != http.StatusOK {
		t.Fatalf("GET /v1/session with a good proof after the refusals = %d %s, want 200", res.status, res.body)
	}
	// Logging out a bound session needs its proof too.
	wantDPoPError(t, "DELETE /v1/session as a bearer", doURL(t, http.MethodDelete, b1.base+"/v1/session", h, nil, nil), "invalid_token")
	if res := doDPoP(t, b1, http.MethodDelete, "/v1/session", h, proofFor(t, k, b1, http.MethodDelete, "/v1/session", h, "", now())); res.status != http.StatusNoContent {
		t.Fatalf("DELETE /v1/session with a proof = %d %s, want 204", res.status, res.body)
	}
	res = doDPoP(t, b2, http.MethodGet, "/v1/session", h, proofFor(t, k, b2, http.MethodGet, "/v1/session", h, "", now()))
	if res.status != http.StatusUnauthorized {
		t.Errorf("GET /v1/session after logout = %d, want 401", res.status)
	}
}

// TestDPoPNonces: an app whose clock is off is told to use a server nonce,
// gets one, and its proofs with that nonce are accepted by every replica.
func TestDPoPNonces(t *testing.T) {
	s := newStack(t, stackOptions{})
	b1, b2 := s.start(), s.start()
	k := newTestKey(t)
	skewed := func() time.Time { return s.clock.Now().Add(-time.Hour) }

	// At sign-in, a stale proof gets the token endpoint's 400 with a nonce
	// (RFC 9449 section 8), and the code is not spent.
	code, verifier := s.authorizeAs("")
	body := map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI}
	res := doURL(t, http.MethodPost, b1.base+"/v1/sessions", "", body, dpopHeaders("", proofFor(t, k, b1, http.MethodPost, "/v1/sessions", "", "", skewed())))
	if res.status != http.StatusBadRequest || res.errorCode(t) != "use_dpop_nonce" || res.header.Get("DPoP-Nonce") == "" {
		t.Fatalf("sign-in with a stale proof = %d %s (DPoP-Nonce %q), want 400 use_dpop_nonce with a nonce", res.status, res.body, res.header.Get("DPoP-Nonce"))
	}
	nonce := res.header.Get("DPoP-Nonce")
	res = doURL(t, http.MethodPost, b2.base+"/v1/sessions", "", body, dpopHeaders("", proofFor(t, k, b2, http.MethodPost, "/v1/sessions", "", nonce, skewed())))
	if res.status != http.StatusCreated {
		t.Fatalf("sign-in with the nonce of another replica = %d %s, want 201", res.status, res.body)
	}
	var sess created
	res.decode(t, &sess)
	h := sess.Session

	for i, b := range []*instance{b2, b1} {
		if res := doDPoP(t, b, http.MethodGet, "/api/x", h, proofFor(t, k, b, http.MethodGet, "/api/x", h, nonce, skewed())); res.status != http.StatusOK {
			t.Fatalf("request %d with a nonce and a skewed clock = %d %s, want 200", i+1, res.status, res.body)
		}
	}
	// A nonce lives its step and the next: 5 to 10 minutes.
	s.clock.Advance(11 * time.Minute)
	res = doDPoP(t, b1, http.MethodGet, "/api/x", h, proofFor(t, k, b1, http.MethodGet, "/api/x", h, nonce, skewed()))
	wantDPoPError(t, "a proof with an expired nonce", res, "use_dpop_nonce")
	fresh := res.header.Get("DPoP-Nonce")
	if fresh == "" || fresh == nonce {
		t.Fatalf("DPoP-Nonce after expiry = %q, want a new nonce", fresh)
	}
	if res := doDPoP(t, b2, http.MethodGet, "/api/x", h, proofFor(t, k, b2, http.MethodGet, "/api/x", h, fresh, skewed())); res.status != http.StatusOK {
		t.Fatalf("request with the new nonce = %d %s, want 200", res.status, res.body)
	}
}

// TestDPoPModes: optional binds only sessions opened with a proof;
// required refuses sign-ins without one and every unbound session.
func TestDPoPModes(t *testing.T) {
	s := newStack(t, stackOptions{})
	opt := s.start()
	req, err := s.tryStart(map[string]string{"BROKER_DPOP": "required"})
	if err != nil {
		t.Fatalf("serve with BROKER_DPOP=required: %v", err)
	}
	k := newTestKey(t)

	bearer := s.login(opt)
	if bearer.TokenType != "Bearer" {
		t.Errorf("sign-in without a proof: token_type = %q, want Bearer", bearer.TokenType)
	}
	wantStatus(t, []*instance{opt}, "/v1/session", bearer.Session, http.StatusOK)
	res := doDPoP(t, opt, http.MethodGet, "/v1/session", bearer.Session, proofFor(t, k, opt, http.MethodGet, "/v1/session", bearer.Session, "", s.clock.Now()))
	wantDPoPError(t, "an unbound handle under the DPoP scheme", res, "invalid_token")

	// A proof that fails at sign-in does not spend the code.
	code, verifier := s.authorizeAs("")
	body := map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI}
	res = doURL(t, http.MethodPost, opt.base+"/v1/sessions", "", body, dpopHeaders("", proofFor(t, k, opt, http.MethodPost, "/v1/session", "", "", s.clock.Now())))
	if res.status != http.StatusBadRequest || res.errorCode(t) != "invalid_dpop_proof" {
		t.Fatalf("sign-in with a proof for another URL = %d %s, want 400 invalid_dpop_proof", res.status, res.body)
	}
	res = doURL(t, http.MethodPost, opt.base+"/v1/sessions", "", body, dpopHeaders("", proofFor(t, k, opt, http.MethodPost, "/v1/sessions", "", "", s.clock.Now())))
	if res.status != http.StatusCreated {
		t.Fatalf("sign-in with the same code and a good proof = %d %s, want 201", res.status, res.body)
	}

	res = s.signIn(req, "", nil)
	if res.status != http.StatusBadRequest || res.errorCode(t) != "invalid_dpop_proof" {
		t.Fatalf("sign-in without a proof in required mode = %d %s, want 400 invalid_dpop_proof", res.status, res.body)
	}
	bound := s.loginDPoP(req, k)
	if res := doDPoP(t, req, http.MethodGet, "/v1/session", bound.Session, proofFor(t, k, req, http.MethodGet, "/v1/session", bound.Session, "", s.clock.Now())); res.status != http.StatusOK {
		t.Fatalf("bound session in required mode = %d %s, want 200", res.status, res.body)
	}
	res = doURL(t, http.MethodGet, req.base+"/v1/session", bearer.Session, nil, nil)
	wantDPoPError(t, "an unbound session in required mode", res, "invalid_token")

	// Other algorithms are the operator's choice.
	es384, err := s.tryStart(map[string]string{"BROKER_DPOP_ALGORITHMS": "ES256, ES384"})
	if err != nil {
		t.Fatalf("serve with BROKER_DPOP_ALGORITHMS=ES256,ES384: %v", err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES384, Key: p384}, (&jose.SignerOptions{EmbedJWK: true}).WithType("dpop+jwt"))
	if err != nil {
		t.Fatal(err)
	}
	claims, _ := json.Marshal(appProofClaims{JTI: rand.Text(), HTM: http.MethodPost, HTU: es384.base + "/v1/sessions", IAT: s.clock.Now().Unix()})
	jws, err := signer.Sign(claims)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := jws.CompactSerialize()
	if res := s.signIn(es384, "", dpopHeaders("", p)); res.status != http.StatusCreated {
		t.Errorf("sign-in with an ES384 proof where ES384 is allowed = %d %s, want 201", res.status, res.body)
	} else if res := s.signIn(es384, "", dpopHeaders("", proofFor(t, k, es384, http.MethodPost, "/v1/sessions", "", "", s.clock.Now()))); res.status != http.StatusCreated {
		t.Errorf("sign-in with an ES256 proof where ES256 and ES384 are allowed = %d %s, want 201", res.status, res.body)
	}

	for _, env := range []map[string]string{{"BROKER_DPOP": "always"}, {"BROKER_DPOP_ALGORITHMS": "ES256,HS256"}, {"BROKER_DPOP_ALGORITHMS": "none"}} {
		if _, err := s.tryStart(env); err == nil || !strings.Contains(err.Error(), "BROKER_DPOP") {
			t.Errorf("serve with %v = %v, want an error naming the variable", env, err)
		}
	}
}

// TestDPoPBehindProxy: behind trusted proxies, htu names the URL the app
// addressed (X-Forwarded-Proto and X-Forwarded-Host), so replicas behind
// one load balancer share it, and a proof used at one is refused at every
// other.
func TestDPoPBehindProxy(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_TRUSTED_PROXIES": "127.0.0.1/32,::1/128"}})
	b1, b2 := s.start(), s.start()
	k := newTestKey(t)
	const public = "https://api.example.com"
	via := func(h http.Header) http.Header {
		h.Set("X-Forwarded-Proto", "https")
		h.Set("X-Forwarded-Host", "api.example.com")
		return h
	}
	prove := func(method, path, handle string) string {
		p, err := k.proof(method, public+path, handle, "", s.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	res := doURL(t, http.MethodPost, b1.base+"/v1/sessions", "", func() map[string]string {
		code, verifier := s.authorizeAs("")
		return map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI}
	}(), via(dpopHeaders("", prove(http.MethodPost, "/v1/sessions", ""))))
	if res.status != http.StatusCreated {
		t.Fatalf("sign-in through the proxy = %d %s, want 201", res.status, res.body)
	}
	var sess created
	res.decode(t, &sess)
	h := sess.Session

	p := prove(http.MethodGet, "/api/orders/1", h)
	if res := doURL(t, http.MethodGet, b1.base+"/api/orders/1", "", nil, via(dpopHeaders(h, p))); res.status != http.StatusOK {
		t.Fatalf("proxied request through the proxy = %d %s, want 200", res.status, res.body)
	}
	res = doURL(t, http.MethodGet, b2.base+"/api/orders/1", "", nil, via(dpopHeaders(h, p)))
	wantDPoPError(t, "the same proof at another replica", res, "invalid_dpop_proof")
	if !strings.Contains(string(res.body), "used before") {
		t.Errorf("the same proof at another replica: %s, want it refused as replayed", res.body)
	}
	// A proof naming the broker's own address is not one for the URL the
	// app addressed.
	own := proofFor(t, k, b2, http.MethodGet, "/api/orders/1", h, "", s.clock.Now())
	wantDPoPError(t, "a proof for the broker's own address", doURL(t, http.MethodGet, b2.base+"/api/orders/1", "", nil, via(dpopHeaders(h, own))), "invalid_dpop_proof")
}

// TestMyDevices: a user lists and ends their own sessions with one of them;
// another user's session is not theirs to see or end.
func TestMyDevices(t *testing.T) {
	s := newStack(t, stackOptions{})
	b1, b2 := s.start(), s.start()
	k := newTestKey(t)
	phone := s.loginDPoP(b1, k)
	tablet := s.loginFrom(b2, devidp.DemoUsername, devidp.DemoPassword, "Tablet/2.0")
	laptop := s.loginFrom(b1, devidp.DemoUsername, devidp.DemoPassword, "Laptop/3.0")
	theirs := s.loginFrom(b2, devidp.OtherUsername, devidp.OtherPassword, "OtherApp/1.0")
	prove := func(b *instance, method, path string) string {
		return proofFor(t, k, b, method, path, phone.Session, "", s.clock.Now())
	}

	res := doURL(t, http.MethodGet, b1.base+"/v1/sessions", "", nil, nil)
	if res.status != http.StatusUnauthorized {
		t.Errorf("GET /v1/sessions without a handle = %d, want 401", res.status)
	}
	wantDPoPError(t, "GET /v1/sessions with the bound handle as a bearer", do(t, b1, http.MethodGet, "/v1/sessions", phone.Session, nil), "invalid_token")

	res = doDPoP(t, b2, http.MethodGet, "/v1/sessions", phone.Session, prove(b2, http.MethodGet, "/v1/sessions"))
	if res.status != http.StatusOK {
		t.Fatalf("GET /v1/sessions = %d %s, want 200", res.status, res.body)
	}
	type own struct {
		SessionID  string    `json:"session_id"`
		CreatedAt  time.Time `json:"created_at"`
		LastUsedAt time.Time `json:"last_used_at"`
		ExpiresAt  time.Time `json:"expires_at"`
		IP         string    `json:"ip"`
		UserAgent  string    `json:"user_agent"`
		DPoPBound  bool      `json:"dpop_bound"`
		Current    bool      `json:"current"`
	}
	var list struct {
		Sessions []own `json:"sessions"`
	}
	res.decode(t, &list)
	if strings.Contains(string(res.body), phone.Session) || strings.Contains(string(res.body), tablet.Session) {
		t.Error("GET /v1/sessions shows a handle")
	}
	var ids []string
	for _, o := range list.Sessions {
		ids = append(ids, o.SessionID)
	}
	if want := []string{laptop.SessionID, tablet.SessionID, phone.SessionID}; strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Fatalf("GET /v1/sessions lists %v, want %v (newest first, the other user's left out)", ids, want)
	}
	for _, o := range list.Sessions {
		mine := o.SessionID == phone.SessionID
		if o.Current != mine || o.DPoPBound != mine {
			t.Errorf("session %s: current %v, dpop_bound %v; want both %v", o.SessionID, o.Current, o.DPoPBound, mine)
		}
		if o.IP == "" || o.UserAgent == "" || o.CreatedAt.IsZero() || o.LastUsedAt.IsZero() || !o.ExpiresAt.After(o.CreatedAt) {
			t.Errorf("session %+v lacks a field", o)
		}
	}

	// Another user's session is not found, and stays alive.
	res = doDPoP(t, b1, http.MethodDelete, "/v1/sessions/"+theirs.SessionID, phone.Session, prove(b1, http.MethodDelete, "/v1/sessions/"+theirs.SessionID))
	if res.status != http.StatusNotFound || res.errorCode(t) != "not_found" {
		t.Errorf("DELETE another user's session = %d %s, want 404 not_found", res.status, res.body)
	}
	res = doDPoP(t, b1, http.MethodDelete, "/v1/sessions/nonsense", phone.Session, prove(b1, http.MethodDelete, "/v1/sessions/nonsense"))
	if res.status != http.StatusNotFound {
		t.Errorf("DELETE /v1/sessions/nonsense = %d %s, want 404", res.status, res.body)
	}
	wantStatus(t, []*instance{b1, b2}, "/v1/session", theirs.Session, http.StatusOK)

	// One device signed out: it stops working everywhere, is audited with
	// actor user, and its refresh token is revoked at the IdP.
	revokedBefore := len(s.idp.Revoked())
	res = doDPoP(t, b1, http.MethodDelete, "/v1/sessions/"+tablet.SessionID, phone.Session, prove(b1, http.MethodDelete, "/v1/sessions/"+tablet.SessionID))
	if res.status != http.StatusNoContent {
		t.Fatalf("DELETE /v1/sessions/{tablet} = %d %s, want 204", res.status, res.body)
	}
	wantStatus(t, []*instance{b1, b2}, "/v1/session", tablet.Session, http.StatusUnauthorized)
	if got := len(s.idp.Revoked()) - revokedBefore; got != 1 {
		t.Errorf("the IdP revoked %d refresh tokens, want 1", got)
	}
	res = doDPoP(t, b2, http.MethodDelete, "/v1/sessions/"+tablet.SessionID, phone.Session, prove(b2, http.MethodDelete, "/v1/sessions/"+tablet.SessionID))
	if res.status != http.StatusNoContent {
		t.Errorf("DELETE /v1/sessions/{tablet} again (a retry after a lost reply) = %d %s, want 204", res.status, res.body)
	}
	if got := len(s.idp.Revoked()) - revokedBefore; got != 1 {
		t.Errorf("after the repeat the IdP revoked %d refresh tokens, want 1", got)
	}

	// Every other device: the caller's own session stays.
	laptop2 := s.loginFrom(b2, devidp.DemoUsername, devidp.DemoPassword, "Laptop/3.1")
	res = doDPoP(t, b2, http.MethodDelete, "/v1/sessions", phone.Session, prove(b2, http.MethodDelete, "/v1/sessions"))
	if res.status != http.StatusBadRequest {
		t.Errorf("DELETE /v1/sessions without except = %d %s, want 400", res.status, res.body)
	}
	revokedBefore = len(s.idp.Revoked())
	res = doDPoP(t, b2, http.MethodDelete, "/v1/sessions?except=current", phone.Session, prove(b2, http.MethodDelete, "/v1/sessions"))
	if res.status != http.StatusOK {
		t.Fatalf("DELETE /v1/sessions?except=current = %d %s, want 200", res.status, res.body)
	}
	var revoked struct {
		Revoked int `json:"revoked"`
	}
	res.decode(t, &revoked)
	if revoked.Revoked != 2 {
		t.Errorf("DELETE /v1/sessions?except=current revoked %d, want 2", revoked.Revoked)
	}
	if got := len(s.idp.Revoked()) - revokedBefore; got != 2 {
		t.Errorf("the IdP revoked %d refresh tokens, want 2", got)
	}
	for _, gone := range []created{laptop, laptop2} {
		wantStatus(t, []*instance{b1, b2}, "/v1/session", gone.Session, http.StatusUnauthorized)
	}
	wantStatus(t, []*instance{b1, b2}, "/v1/session", theirs.Session, http.StatusOK)
	if res := doDPoP(t, b1, http.MethodGet, "/v1/session", phone.Session, prove(b1, http.MethodGet, "/v1/session")); res.status != http.StatusOK {
		t.Errorf("the caller's session after signing out the others = %d, want 200", res.status)
	}

	events, _ := s.audit(b1, "50")
	ended := map[string]bool{}
	for _, e := range events {
		if e.Action == "session.revoke" && e.Actor == "user" && e.Outcome == "ok" && strings.Contains(e.Detail, phone.SessionID) {
			ended[e.SessionID] = true
		}
	}
	for _, id := range []string{tablet.SessionID, laptop.SessionID, laptop2.SessionID} {
		if !ended[id] {
			t.Errorf("no session.revoke event by actor user for session %s", id)
		}
	}
}
