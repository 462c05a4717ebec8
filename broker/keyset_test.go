package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// testKey is an ES256 key under a kid.
type testKey struct {
	kid  string
	priv *ecdsa.PrivateKey
}

func newTestKey(t testing.TB, kid string) testKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{kid: kid, priv: priv}
}

// public is the key as a JWKS lists it.
func (k testKey) public() jose.JSONWebKey {
	return jose.JSONWebKey{Key: &k.priv.PublicKey, KeyID: k.kid, Algorithm: string(jose.ES256), Use: "sig"}
}

// sign signs payload with the key, naming kid in the header (none when
// empty).
func (k testKey) sign(t testing.TB, kid string, payload []byte) string {
	t.Helper()
	raw, err := devidp.SignJWS(jose.ES256, k.priv, kid, "", payload)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// fakeJWKS serves a changeable key list to a keySet and counts fetches.
type fakeJWKS struct {
	keys    atomic.Pointer[[]jose.JSONWebKey]
	fail    atomic.Bool
	fetches atomic.Int32
}

func (f *fakeJWKS) set(keys ...jose.JSONWebKey) { f.keys.Store(&keys) }

func (f *fakeJWKS) fetch(context.Context) ([]jose.JSONWebKey, error) {
	f.fetches.Add(1)
	if f.fail.Load() {
		return nil, errors.New("keys endpoint answered 503")
	}
	return *f.keys.Load(), nil
}

func TestKeySet(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var offset atomic.Int64
	clock := func() time.Time { return now.Add(time.Duration(offset.Load())) }
	advance := func(d time.Duration) { offset.Add(int64(d)) }
	a, b, c := newTestKey(t, "a"), newTestKey(t, "b"), newTestKey(t, "c")
	payload := []byte(`{"sub":"x"}`)
	jwks := &fakeJWKS{}
	jwks.set(a.public(), b.public())
	ks := newKeySet(jwks.fetch, clock)
	ctx := context.Background()

	verify := func(name, token string, wantErr error, wantFetches int32) {
		t.Helper()
		before := jwks.fetches.Load()
		got, err := ks.VerifySignature(ctx, token)
		switch {
		case wantErr == nil && (err != nil || string(got) != string(payload)):
			t.Errorf("%s: VerifySignature = %q, %v; want the payload", name, got, err)
		case wantErr != nil && !errors.Is(err, wantErr):
			t.Errorf("%s: VerifySignature = %v, want %v", name, err, wantErr)
		}
		if n := jwks.fetches.Load() - before; n != wantFetches {
			t.Errorf("%s: %d fetches, want %d", name, n, wantFetches)
		}
	}

	verify("first use loads the keys", a.sign(t, "a", payload), nil, 1)
	verify("known kid", b.sign(t, "b", payload), nil, 0)
	verify("no kid: every known key is tried", b.sign(t, "", payload), nil, 0)
	verify("known kid, another key's signature", c.sign(t, "a", payload), errBadSignature, 0)
	verify("unknown kid within the interval", c.sign(t, "c", payload), errUnknownKey, 0)
	verify("no kid, no known key within the interval", c.sign(t, "", payload), errUnknownKey, 0)

	advance(keyRefetchInterval)
	verify("unknown kid, not published", c.sign(t, "c", payload), errUnknownKey, 1)
	verify("right after, no second fetch", c.sign(t, "c", payload), errUnknownKey, 0)

	advance(keyRefetchInterval)
	jwks.set(a.public(), c.public())
	verify("rotated in", c.sign(t, "c", payload), nil, 1)
	verify("rotated out, within the interval", b.sign(t, "b", payload), errUnknownKey, 0)

	// A failed fetch keeps the keys and may be retried sooner.
	advance(keyRefetchInterval)
	jwks.fail.Store(true)
	verify("fetch fails", newTestKey(t, "d").sign(t, "d", payload), errUnknownKey, 1)
	verify("known keys still verify", a.sign(t, "a", payload), nil, 0)
	advance(keyRetryInterval)
	jwks.fail.Store(false)
	d := newTestKey(t, "d")
	jwks.set(a.public(), c.public(), d.public())
	verify("retried after keyRetryInterval", d.sign(t, "d", payload), nil, 1)

	// A MAC with the public key as its secret, or no signature at all,
	// is never accepted.
	der, err := json.Marshal(a.public())
	if err != nil {
		t.Fatal(err)
	}
	hs, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: der}, (&jose.SignerOptions{}).WithHeader("kid", "a"))
	if err != nil {
		t.Fatal(err)
	}
	jws, err := hs.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := jws.CompactSerialize()
	if _, err := ks.VerifySignature(ctx, mac); err == nil {
		t.Error("VerifySignature accepted an HS256 token")
	}
	if _, err := ks.VerifySignature(ctx, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."); err == nil {
		t.Error(`VerifySignature accepted an "alg": "none" token`)
	}
}

func TestParseJWKS(t *testing.T) {
	k := newTestKey(t, "k")
	pub, err := json.Marshal(k.public())
	if err != nil {
		t.Fatal(err)
	}
	priv, err := json.Marshal(jose.JSONWebKey{Key: k.priv, KeyID: "private", Algorithm: "ES256"})
	if err != nil {
		t.Fatal(err)
	}
	enc := k.public()
	enc.KeyID, enc.Use = "enc", "enc"
	encJSON, err := json.Marshal(enc)
	if err != nil {
		t.Fatal(err)
	}
	set := `{"keys": [` + string(pub) + `, ` + string(priv) + `, ` + string(encJSON) + `,
		{"kty": "oct", "kid": "mac", "k": "c2VjcmV0"},
		{"kty": "OKP", "crv": "X448", "kid": "unknown-curve", "x": "AAAA"},
		{"kty": "RSA", "kid": "broken"}]}`
	keys, err := parseJWKS([]byte(set))
	if err != nil {
		t.Fatalf("parseJWKS = %v", err)
	}
	if len(keys) != 1 || keys[0].KeyID != "k" {
		kids := []string{}
		for _, key := range keys {
			kids = append(kids, key.KeyID)
		}
		t.Errorf("parseJWKS kept %q, want only the public signing key k", kids)
	}
	for name, doc := range map[string]string{
		"not JSON":        `keys`,
		"no usable key":   `{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}`,
		"empty":           `{"keys": []}`,
		"keys not a list": `{"keys": {}}`,
	} {
		if _, err := parseJWKS([]byte(doc)); err == nil {
			t.Errorf("parseJWKS(%s) = nil error, want one", name)
		}
	}
}

// Concurrent verifications that need the keys share one fetch.
func TestKeySetOneFetchAtATime(t *testing.T) {
	k := newTestKey(t, "k")
	var fetches atomic.Int32
	release := make(chan struct{})
	ks := newKeySet(func(context.Context) ([]jose.JSONWebKey, error) {
		fetches.Add(1)
		<-release
		return []jose.JSONWebKey{k.public()}, nil
	}, time.Now)
	good, unknown := k.sign(t, "k", []byte(`{}`)), newTestKey(t, "x").sign(t, "x", []byte(`{}`))
	errs := make(chan error, 64)
	for i := range cap(errs) {
		go func() {
			tok := good
			if i%2 == 1 {
				tok = unknown
			}
			_, err := ks.VerifySignature(context.Background(), tok)
			if i%2 == 1 && errors.Is(err, errUnknownKey) {
				err = nil
			}
			errs <- err
		}()
	}
	for fetches.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// More verifications join the fetch meanwhile; any that come after it
	// use its keys (or, for the unknown kid, are refused at once).
	time.Sleep(20 * time.Millisecond)
	close(release)
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Errorf("VerifySignature = %v", err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d fetches for %d concurrent verifications, want 1", n, cap(errs))
	}
}
