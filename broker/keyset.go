package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
)

// The IdP's signing keys.
//
// go-oidc's RemoteKeySet fetches the JWKS again whenever a signature does
// not verify, so each badly signed token posted to the back-channel
// endpoint cost the IdP a JWKS fetch (300 posts made 155), and hosted IdPs
// throttle that endpoint. keySet fetches only when a token names a key it
// does not know, at most once per keyRefetchInterval and one fetch at a
// time: OIDC Core 10.1.1 has relying parties "re-retrieve the keys when
// [they see] an unfamiliar kid value", and a known kid with a bad signature
// is simply a bad signature.
const (
	// keyRefetchInterval is the least time between two fetches of the
	// JWKS. An IdP that starts signing with a new key less than this after
	// the last fetch has its tokens refused until it has passed; OIDC Core
	// 10.1.1 asks IdPs to publish a key before they sign with it.
	keyRefetchInterval = time.Minute
	// keyRetryInterval replaces it after a fetch that failed.
	keyRetryInterval = 5 * time.Second
	// maxJWKSBytes bounds the JWKS document read.
	maxJWKSBytes = 1 << 20
)

// signingAlgs are the JWS algorithms the broker verifies: the asymmetric
// ones go-oidc supports. A MAC (HS256...) would need a key the IdP shares
// with every client, and "none" signs nothing.
var signingAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.EdDSA,
}

// keySet is the IdP's JWKS as go-oidc's KeySet. It is safe for concurrent
// use.
type keySet struct {
	fetch func(context.Context) ([]jose.JSONWebKey, error)
	now   func() time.Time

	mu   sync.Mutex
	keys []jose.JSONWebKey
	// next is the earliest time a fetch may start.
	next time.Time
	// fetching is closed when the running fetch ends; nil when none runs.
	fetching chan struct{}
}

var _ oidc.KeySet = (*keySet)(nil)

// newKeySet returns a key set that loads its keys with fetch on first use.
func newKeySet(fetch func(context.Context) ([]jose.JSONWebKey, error), now func() time.Time) *keySet {
	return &keySet{fetch: fetch, now: now}
}

var (
	errUnknownKey   = errors.New("the token is signed with a key the identity provider does not publish")
	errBadSignature = errors.New("the token's signature does not verify")
)

// VerifySignature verifies the JWS signature of jwt with the key its kid
// names, or, for a token without kid, with each known key in turn, and
// returns the payload. go-oidc's verifier calls it after checking the alg
// against the IdP's list.
func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	jws, err := jose.ParseSigned(jwt, signingAlgs)
	if err != nil {
		return nil, fmt.Errorf("malformed jwt: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("a jwt carries exactly one signature")
	}
	payload, known, ok := k.verify(jws)
	switch {
	case ok:
		return payload, nil
	case known:
		return nil, errBadSignature
	case !k.refetch(ctx):
		return nil, errUnknownKey
	}
	if payload, known, ok = k.verify(jws); ok {
		return payload, nil
	}
	if known {
		return nil, errBadSignature
	}
	return nil, errUnknownKey
}

// verify tries the known keys that jws may be signed with. known reports
// whether its kid names a known key; a token without kid names none, so
// that an IdP that sets no kid can still rotate its key.
func (k *keySet) verify(jws *jose.JSONWebSignature) (payload []byte, known, ok bool) {
	k.mu.Lock()
	keys := k.keys
	k.mu.Unlock()
	header := jws.Signatures[0].Header
	for _, key := range keys {
		if header.KeyID != "" && key.KeyID != header.KeyID {
			continue
		}
		known = header.KeyID != ""
		// RFC 7517 section 4.4: a key's alg, when given, is the one
		// algorithm it is used with.
		if key.Algorithm != "" && key.Algorithm != header.Algorithm {
			continue
		}
		if p, err := jws.Verify(key.Key); err == nil {
			return p, known, true
		}
	}
	return nil, known, false
}

// refetch fetches the JWKS unless a fetch ran less than the interval ago,
// or joins the one that runs. It reports whether the keys may have changed.
func (k *keySet) refetch(ctx context.Context) bool {
	k.mu.Lock()
	if ch := k.fetching; ch != nil {
		k.mu.Unlock()
		select {
		case <-ch:
			return true
		case <-ctx.Done():
			return false
		}
	}
	start := k.now()
	if start.Before(k.next) {
		k.mu.Unlock()
		return false
	}
	ch := make(chan struct{})
	k.fetching = ch
	k.next = start.Add(keyRefetchInterval)
	k.mu.Unlock()

	// The fetch is not the caller's to cancel: others may be waiting for
	// it. fetch bounds its own time.
	keys, err := k.fetch(context.WithoutCancel(ctx))

	k.mu.Lock()
	defer k.mu.Unlock()
	if err == nil {
		k.keys = keys
	} else {
		k.next = start.Add(keyRetryInterval)
	}
	k.fetching = nil
	close(ch)
	return err == nil
}

// fetchJWKS returns a fetch function for keySet that GETs the JWKS at url
// with the broker's IdP client.
func (s *Service) fetchJWKS(url string) func(context.Context) ([]jose.JSONWebKey, error) {
	return func(ctx context.Context) ([]jose.JSONWebKey, error) {
		ctx, cancel := context.WithTimeout(ctx, s.cfg.IdPTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", "application/jwk-set+json, application/json")
		keys, err := s.readJWKS(req)
		if err != nil {
			s.log.WarnContext(ctx, "fetching the identity provider's keys failed", "error", err)
			return nil, err
		}
		s.log.InfoContext(ctx, "identity provider keys fetched", "keys", len(keys))
		return keys, nil
	}
}

func (s *Service) readJWKS(req *http.Request) ([]jose.JSONWebKey, error) {
	resp, err := s.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("keys request: %w", redactURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("keys endpoint answered %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("the keys document is over %d bytes", maxJWKSBytes)
	}
	return parseJWKS(body)
}

// parseJWKS returns the keys of a JWK Set (RFC 7517 section 5) that can
// verify signatures: public RSA, EC and Ed25519 keys not marked for
// encryption. Other members are skipped ("Implementations SHOULD ignore
// JWKs within a JWK Set that use "kty" (key type) values that are not
// understood by them"); a set without any usable key is an error, so that
// the keys known so far are kept.
func parseJWKS(body []byte) ([]jose.JSONWebKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("the keys document is not a JWK Set: %w", err)
	}
	var keys []jose.JSONWebKey
	for _, raw := range set.Keys {
		var key jose.JSONWebKey
		if err := json.Unmarshal(raw, &key); err != nil || !key.Valid() || !key.IsPublic() || key.Use == "enc" {
			continue
		}
		if key.Algorithm != "" && !slices.Contains(signingAlgs, jose.SignatureAlgorithm(key.Algorithm)) {
			continue
		}
		switch key.Key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
			keys = append(keys, key)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("the keys document has no usable signing key")
	}
	return keys, nil
}

// idTokenAlgs returns the algorithms of the IdP's discovery document
// (id_token_signing_alg_values_supported) that the broker verifies; none
// leaves go-oidc's default, RS256.
func idTokenAlgs(advertised []string) []string {
	var algs []string
	for _, a := range advertised {
		if slices.Contains(signingAlgs, jose.SignatureAlgorithm(a)) {
			algs = append(algs, a)
		}
	}
	return algs
}
