package devidp

import (
	"encoding/json"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
)

// LogoutTokenType is the typ header of a logout token (OpenID Connect
// Back-Channel Logout 1.0 section 2.4).
const LogoutTokenType = "logout+jwt"

// SignJWS signs payload as a compact JWS with alg and key, naming kid and
// typ in the header when they are not empty: how tests forge, or sign as
// the OP, the logout and ID tokens the broker must judge.
func SignJWS(alg jose.SignatureAlgorithm, key any, kid, typ string, payload []byte) (string, error) {
	opts := &jose.SignerOptions{}
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		return "", fmt.Errorf("devidp: signer: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("devidp: sign: %w", err)
	}
	return jws.CompactSerialize()
}

// SignJWT is SignJWS of claims encoded as JSON.
func SignJWT(alg jose.SignatureAlgorithm, key any, kid, typ string, claims any) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("devidp: encode claims: %w", err)
	}
	return SignJWS(alg, key, kid, typ, payload)
}
