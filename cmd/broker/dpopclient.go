//go:build !nodev

package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spf13/cobra"
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

// newDevProofCommand is `broker dev proof`: it prints a DPoP proof for one
// request, signed with a key saved by `broker dev login --dpop`.
func newDevProofCommand(a *app) *cobra.Command {
	var keyFile, handle, nonce string
	c := &cobra.Command{
		Use:   "proof METHOD URL",
		Short: "Print a DPoP proof for one request, signed with the key of `broker dev login --dpop`",
		Args:  cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			key, err := loadDPoPKey(keyFile)
			if err != nil {
				return err
			}
			proof, err := key.proof(strings.ToUpper(args[0]), args[1], handle, nonce, time.Now())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(a.stdout, proof)
			return err
		},
	}
	c.Flags().StringVar(&keyFile, "key", "dpop-key.json", "the key saved by `broker dev login --dpop`")
	c.Flags().StringVar(&handle, "handle", "", "the session handle the proof goes with (its hash is the ath claim)")
	c.Flags().StringVar(&nonce, "nonce", "", "the broker's DPoP-Nonce, when it asked for one (use_dpop_nonce)")
	return c
}
