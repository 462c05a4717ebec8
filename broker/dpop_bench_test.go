package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"testing"
	"time"
)

// BenchmarkDPoPVerify measures the CPU a proof costs the broker besides the
// replay record: parsing, the ES256 signature, the thumbprint and the
// comparisons with the request.
func BenchmarkDPoPVerify(b *testing.B) {
	_, handle, _, err := newHandle()
	if err != nil {
		b.Fatal(err)
	}
	d, err := newDPoP(DPoPConfig{}, noMetrics{})
	if err != nil {
		b.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	sum := sha256.Sum256([]byte(handle))
	req := ProofRequest{Method: "GET", URL: "https://broker.example/api/items/42",
		Proofs: []string{fuzzProof(b, key, "dpop+jwt", map[string]any{
			"jti": "j", "htm": "GET", "htu": "https://broker.example/api/items/42", "iat": now.Unix(),
			"ath": base64.RawURLEncoding.EncodeToString(sum[:]),
		})}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.verify(req, handle, now); err != nil {
			b.Fatal(err)
		}
	}
}
