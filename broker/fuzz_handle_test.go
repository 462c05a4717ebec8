package broker

import (
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
)

// base64url is the alphabet of RFC 4648 section 5, in value order.
const base64url = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// spelledCanonically is an oracle written without the base64 package: s
// has exactly the characters that encode n bytes without padding, all from
// the base64url alphabet, and the bits of its last character beyond the
// n bytes are zero (RFC 4648 section 3.5).
func spelledCanonically(s string, n int) bool {
	if len(s) != (8*n+5)/6 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(base64url, s[i]) < 0 {
			return false
		}
	}
	unused := 6*len(s) - 8*n
	last := strings.IndexByte(base64url, s[len(s)-1])
	return last&(1<<unused-1) == 0
}

// A handle is accepted exactly when both its parts are canonical
// base64url of the right length; an accepted handle names the id it
// starts with, hashes the secret it ends with, and re-encodes to itself.
func FuzzParseHandle(f *testing.F) {
	_, handle, _, err := newHandle()
	if err != nil {
		f.Fatal(err)
	}
	id, secret, _ := strings.Cut(handle, ".")
	for _, seed := range []string{
		handle,
		"",
		".",
		id,
		id + ".",
		id + "." + secret + "=",
		id[:20] + "\r\n." + secret,
		id + "." + secret[:40] + "\r\n\r",
		withPaddingBits(id) + "." + secret,
		id + "." + withPaddingBits(secret),
		id + "." + secret[:20] + "." + secret[21:],
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, h string) {
		gotID, hash, ok := parseHandle(h)
		wantID, wantSecret, found := strings.Cut(h, ".")
		want := found && spelledCanonically(wantID, idBytes) && spelledCanonically(wantSecret, secretBytes)
		if ok != want {
			t.Fatalf("parseHandle(%q) ok = %v, want %v", h, ok, want)
		}
		if !ok {
			if gotID != "" || hash != nil {
				t.Fatalf("parseHandle(%q) refused but returned %q, %x", h, gotID, hash)
			}
			return
		}
		if gotID != wantID || len(gotID) != len(id) {
			t.Fatalf("parseHandle(%q) id = %q, want %q of %d characters", h, gotID, wantID, len(id))
		}
		if sum := sha256.Sum256([]byte(wantSecret)); string(hash) != string(sum[:]) {
			t.Fatalf("parseHandle(%q) hash is not SHA-256 of the secret", h)
		}
		rawID, _ := base64.RawURLEncoding.DecodeString(gotID)
		rawSecret, _ := base64.RawURLEncoding.DecodeString(wantSecret)
		if again := base64.RawURLEncoding.EncodeToString(rawID) + "." + base64.RawURLEncoding.EncodeToString(rawSecret); again != h {
			t.Fatalf("parseHandle(%q) accepted a handle that re-encodes to %q", h, again)
		}
		if !ValidSessionID(gotID) {
			t.Fatalf("parseHandle(%q) returned id %q that ValidSessionID refuses", h, gotID)
		}
	})
}

// A session id is accepted exactly when it is canonical base64url of 16
// bytes: 22 characters that decode and re-encode to themselves.
func FuzzValidSessionID(f *testing.F) {
	id, _, _, err := newHandle()
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		id,
		"",
		id[:21],
		id + "A",
		id[:20] + "\r\n",
		id[:10] + "\r\n" + id[10:20],
		withPaddingBits(id),
		id[:20] + "==",
		id[:21] + "+",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ok := ValidSessionID(s)
		if want := spelledCanonically(s, idBytes); ok != want {
			t.Fatalf("ValidSessionID(%q) = %v, want %v", s, ok, want)
		}
		if !ok {
			return
		}
		raw, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || len(raw) != idBytes || len(s) != len(id) || base64.RawURLEncoding.EncodeToString(raw) != s {
			t.Fatalf("ValidSessionID(%q) accepted an id that does not round-trip to %d bytes", s, idBytes)
		}
	})
}
