package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// The app's side of DPoP (RFC 9449), as `broker dev login --dpop` and
// `broker dev proof` play it: a P-256 key, as the iOS Secure Enclave and the
// Android Keystore hold one, signs a proof for every request.

// dpopKey is an app's DPoP key pair.
type dpopKey struct {
	priv *ecdsa.PrivateKey
}

func newDPoPKey() (*dpopKey, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &dpopKey{priv: priv}, nil
}

// proofClaims are the claims an app puts in a proof (RFC 9449 section 4.2).
type appProofClaims struct {
	JTI   string `json:"jti"`
	HTM   string `json:"htm"`
	HTU   string `json:"htu"`
	IAT   int64  `json:"iat"`
	ATH   string `json:"ath,omitempty"`
	Nonce string `json:"nonce,omitempty"`
}

// proof signs a proof for a request of method to rawURL (its query and
// fragment left out of htu), at iat, for the handle (none at sign-in) and
// with the server's nonce, if any.
func (k *dpopKey) proof(method, rawURL, handle, nonce string, iat time.Time) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("proof URL: %w", err)
	}
	u.RawQuery, u.Fragment, u.RawFragment, u.ForceQuery = "", "", "", false
	c := appProofClaims{JTI: rand.Text(), HTM: method, HTU: u.String(), IAT: iat.Unix(), Nonce: nonce}
	if handle != "" {
		sum := sha256.Sum256([]byte(handle))
		c.ATH = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return k.sign(c)
}

// sign signs claims as a proof, with the public key in the jwk header.
func (k *dpopKey) sign(claims any) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k.priv},
		(&jose.SignerOptions{EmbedJWK: true}).WithType("dpop+jwt"))
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return jws.CompactSerialize()
}

// save writes the key pair as a private JWK, readable by its owner only.
func (k *dpopKey) save(path string) error {
	b, err := json.Marshal(jose.JSONWebKey{Key: k.priv, Algorithm: string(jose.ES256), Use: "sig"})
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// loadDPoPKey reads a key pair saved by save.
func loadDPoPKey(path string) (*dpopKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("%s is not a JWK", path)
	}
	priv, ok := jwk.Key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New(path + " does not hold an EC private key")
	}
	return &dpopKey{priv: priv}, nil
}

// devProof prints a DPoP proof for one request, signed with a key saved by
// `broker dev login -dpop`: `broker dev proof -key FILE -handle H METHOD URL`.
func devProof(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("broker dev proof", flag.ContinueOnError)
	keyFile := fs.String("key", "dpop-key.json", "the key saved by `broker dev login -dpop`")
	handle := fs.String("handle", "", "the session handle the proof goes with (its hash is the ath claim)")
	nonce := fs.String("nonce", "", "the broker's DPoP-Nonce, when it asked for one (use_dpop_nonce)")
	if err := fs.Parse(args); err != nil || fs.NArg() != 2 {
		return errUsage
	}
	key, err := loadDPoPKey(*keyFile)
	if err != nil {
		return err
	}
	proof, err := key.proof(strings.ToUpper(fs.Arg(0)), fs.Arg(1), *handle, *nonce, time.Now())
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, proof)
	return err
}
