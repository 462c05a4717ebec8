package devidp

import (
	"crypto/rand"
	"crypto/rsa"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
)

// RotateSigningKey makes a new RSA key the one ID tokens are signed with,
// under a new key id, as an IdP rotating its keys does: the JWKS lists it
// from now on, next to every earlier key, so tokens signed before stay
// verifiable. It returns the new key and its id.
func (p *Provider) RotateSigningKey() (*rsa.PrivateKey, string, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, "", fmt.Errorf("devidp: generate signing key: %w", err)
	}
	kid, err := randomID()
	if err != nil {
		return nil, "", err
	}
	p.store.rotate(&signingKey{id: kid, key: key})
	return key, kid, nil
}

// KeySetFetches returns the number of GET requests to the JWKS endpoint
// (jwks_uri), whatever their outcome, counted when they arrive.
func (p *Provider) KeySetFetches() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.keyFetches
}

// sign signs payload as a compact JWS with the current key, its kid and
// the given typ header.
func (p *Provider) sign(payload []byte, typ jose.ContentType) (string, error) {
	k := p.store.currentKey()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: k.key, KeyID: k.id}},
		(&jose.SignerOptions{}).WithType(typ))
	if err != nil {
		return "", err
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return jws.CompactSerialize()
}
