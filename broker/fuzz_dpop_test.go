package broker

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// testSealer is AES-GCM with a random key, standing in for the keyring.
type testSealer struct{ aead cipher.AEAD }

func newTestSealer(t testing.TB) *testSealer {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	return &testSealer{aead: aead}
}

func (s *testSealer) Seal(plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, plaintext, aad), nil
}

func (s *testSealer) Open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < s.aead.NonceSize() {
		return nil, errors.New("short")
	}
	return s.aead.Open(nil, sealed[:s.aead.NonceSize()], sealed[s.aead.NonceSize():], aad)
}

// fuzzProof signs claims as a DPoP proof with key, its public key in jwk.
func fuzzProof(t testing.TB, key *ecdsa.PrivateKey, typ string, claims map[string]any) string {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{EmbedJWK: true}).WithType(jose.ContentType(typ)))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(claims)
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The proof checks never panic, refuse with a DPoP error that never quotes
// the handle, and accept only a proof an independent reading verifies: one
// compact JWS of typ dpop+jwt, signed with ES256 by the public key of its
// jwk header, whose thumbprint is the one reported, naming this request and
// hashing this handle.
func FuzzDPoPProof(f *testing.F) {
	const (
		method = "GET"
		reqURL = "https://broker.example/api/orders"
	)
	_, handle, _, err := newHandle()
	if err != nil {
		f.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	d, err := newDPoP(DPoPConfig{Nonces: newTestSealer(f)}, noMetrics{})
	if err != nil {
		f.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sum := sha256.Sum256([]byte(handle))
	ath := base64.RawURLEncoding.EncodeToString(sum[:])
	good := map[string]any{"jti": "j1", "htm": method, "htu": reqURL, "iat": now.Unix(), "ath": ath}
	with := func(k string, v any) map[string]any {
		c := map[string]any{}
		for k, v := range good {
			c[k] = v
		}
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	valid := fuzzProof(f, key, "dpop+jwt", good)
	h, c, _ := strings.Cut(valid, ".")
	c, _, _ = strings.Cut(c, ".")
	mac := hmac.New(sha256.New, []byte("k"))
	mac.Write([]byte(h + "." + c))
	for _, seed := range []string{
		valid,
		fuzzProof(f, key, "dpop+jwt", with("nonce", d.newNonce(now))),
		fuzzProof(f, key, "dpop+jwt", with("htu", "HTTPS://Broker.Example:443/api/%6Frders?q=1")),
		fuzzProof(f, key, "dpop+jwt", with("ath", nil)),
		fuzzProof(f, key, "dpop+jwt", with("iat", "1800000000")),
		fuzzProof(f, key, "JWT", good),
		h + "." + c + ".",
		h + "." + c + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)),
		"",
		"a.b.c",
		valid + valid,
	} {
		f.Add(seed)
	}
	req := ProofRequest{Method: method, URL: reqURL}
	// The accepting path is reached: the honest proofs pass.
	for _, honest := range []string{valid, fuzzProof(f, key, "dpop+jwt", with("htu", "HTTPS://Broker.Example:443/api/%6Frders?q=1"))} {
		req.Proofs = []string{honest}
		if _, err := d.verify(req, handle, now); err != nil {
			f.Fatalf("verify of an honest proof = %v", err)
		}
	}
	f.Fuzz(func(t *testing.T, raw string) {
		req.Proofs = []string{raw}
		p, err := d.verify(req, handle, now)
		if err != nil {
			var de *DPoPError
			if !errors.As(err, &de) || (de.Err.Code != CodeInvalidDPoPProof && de.Err.Code != CodeUseDPoPNonce) {
				t.Fatalf("verify refused with %v, want a DPoP error", err)
			}
			if strings.Contains(err.Error(), handle) {
				t.Fatalf("the refusal %q quotes the handle", err)
			}
			return
		}
		jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.ES256})
		if err != nil || len(jws.Signatures) != 1 {
			t.Fatalf("accepted %q, which is not one compact ES256 JWS: %v", raw, err)
		}
		hdr := jws.Signatures[0].Protected
		if hdr.ExtraHeaders[jose.HeaderType] != "dpop+jwt" || hdr.JSONWebKey == nil || !hdr.JSONWebKey.IsPublic() {
			t.Fatalf("accepted %q without typ dpop+jwt and a public jwk", raw)
		}
		payload, err := jws.Verify(hdr.JSONWebKey)
		if err != nil {
			t.Fatalf("accepted %q, whose signature does not verify: %v", raw, err)
		}
		tp, _ := hdr.JSONWebKey.Thumbprint(crypto.SHA256)
		if p.jkt != base64.RawURLEncoding.EncodeToString(tp) {
			t.Fatalf("accepted %q with thumbprint %s, want that of its jwk", raw, p.jkt)
		}
		var claims struct {
			HTM, HTU, ATH, JTI string
		}
		if err := json.Unmarshal(payload, &claims); err != nil {
			t.Fatalf("accepted %q, whose claims do not decode: %v", raw, err)
		}
		if claims.HTM != method || claims.ATH != ath || claims.JTI == "" || !sameHTU(claims.HTU, reqURL) {
			t.Fatalf("accepted %q with claims %+v, which do not name this request and handle", raw, claims)
		}
		if !p.until.After(now) {
			t.Fatalf("accepted %q, acceptable until %v, not after now", raw, p.until)
		}
	})
}
