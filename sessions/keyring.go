package sessions

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// keySize is the AES-256 key length: a shorter key would silently select
// AES-128 or AES-192.
const keySize = 32

// sealFormat is the first byte of every sealed value, so that a later change
// of layout can be told apart from this one.
const sealFormat = 1

// maxKeyIDLen keeps the key id within the one length byte of the header.
const maxKeyIDLen = 255

// Keyring holds the AES-256-GCM keys that encrypt session tokens at rest. The
// first key seals every new value; every key opens, so that keys can be
// rotated without ending the sessions sealed under the previous one.
type Keyring struct {
	primary string
	aeads   map[string]cipher.AEAD
}

// ParseKeyring parses "KEYID:BASE64,KEYID2:BASE64" where each BASE64 is 32
// bytes in standard or URL base64, padded or not. Errors name the entry by
// its position and say what is wrong, but never quote the entry, not even
// its key id: an entry written KEY:ID by mistake has the key where the id
// belongs, and errors end up in logs.
func ParseKeyring(spec string) (*Keyring, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, errors.New("keyring: no keys given")
	}
	k := &Keyring{aeads: make(map[string]cipher.AEAD)}
	positions := make(map[string]int)
	for i, entry := range strings.Split(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			return nil, fmt.Errorf("keyring: entry %d is empty", i+1)
		}
		id, encoded, ok := strings.Cut(entry, ":")
		if !ok {
			return nil, fmt.Errorf("keyring: entry %d is not KEYID:BASE64", i+1)
		}
		id = strings.TrimSpace(id)
		switch {
		case id == "":
			return nil, fmt.Errorf("keyring: entry %d has an empty key id", i+1)
		case len(id) > maxKeyIDLen:
			return nil, fmt.Errorf("keyring: entry %d has a key id longer than %d bytes", i+1, maxKeyIDLen)
		case strings.Contains(encoded, ":"):
			// Base64 has no ':', so a second one means the id holds one.
			return nil, fmt.Errorf("keyring: entry %d has more than one ':' (key ids cannot contain ':')", i+1)
		case !printable(id):
			return nil, fmt.Errorf("keyring: entry %d has a key id that is not printable ASCII", i+1)
		}
		if first, dup := positions[id]; dup {
			return nil, fmt.Errorf("keyring: entries %d and %d have the same key id", first, i+1)
		}
		positions[id] = i + 1
		key, ok := decodeKey(strings.TrimSpace(encoded))
		if !ok {
			return nil, fmt.Errorf("keyring: the key of entry %d is not valid base64 (is the entry written KEYID:BASE64?)", i+1)
		}
		if len(key) != keySize {
			return nil, fmt.Errorf("keyring: the key of entry %d is %d bytes, want %d", i+1, len(key), keySize)
		}
		aead, err := newAEAD(key)
		if err != nil {
			return nil, fmt.Errorf("keyring: the key of entry %d: %w", i+1, err)
		}
		if k.primary == "" {
			k.primary = id
		}
		k.aeads[id] = aead
	}
	return k, nil
}

// printable reports whether id is visible ASCII, since ids appear in logs and
// error messages.
func printable(id string) bool {
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

// decodeKey accepts every base64 flavour an operator is likely to paste:
// openssl rand -base64 gives padded standard base64, other tools URL-safe or
// unpadded output.
func decodeKey(s string) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{
		base64.StdEncoding, base64.RawStdEncoding,
		base64.URLEncoding, base64.RawURLEncoding,
	} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, true
		}
	}
	return nil, false
}

// NewEphemeralKeyring returns a keyring with one random key. Everything
// sealed with it is lost with the process, which suits development only.
func NewEphemeralKeyring() (*Keyring, error) {
	key := make([]byte, keySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	return &Keyring{primary: "ephemeral", aeads: map[string]cipher.AEAD{"ephemeral": aead}}, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Seal encrypts plaintext under the first key. The result is
//
//	format(1) | len(key id)(1) | key id | nonce(12) | ciphertext and tag
//
// so that Open finds the key that sealed it after a rotation. aad is
// authenticated but not stored: the caller passes the same value to Open,
// which binds the ciphertext to where it was stored. The header is
// authenticated too, so a value cannot be relabelled with another key id.
func (k *Keyring) Seal(plaintext, aad []byte) ([]byte, error) {
	aead := k.aeads[k.primary]
	headerLen := 2 + len(k.primary)
	nonceSize := aead.NonceSize()
	out := make([]byte, headerLen+nonceSize, headerLen+nonceSize+len(plaintext)+aead.Overhead())
	out[0] = sealFormat
	out[1] = byte(len(k.primary))
	copy(out[2:], k.primary)
	// A random 96-bit nonce per value: with at most a few billion values
	// sealed under one key the collision risk stays negligible, and rotation
	// resets the count.
	nonce := out[headerLen:]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return aead.Seal(out, nonce, plaintext, withHeader(out[:headerLen], aad)), nil
}

// Open decrypts a value produced by Seal with the same aad.
func (k *Keyring) Open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < 2 || sealed[0] != sealFormat {
		return nil, errors.New("open: not a sealed value of a known format")
	}
	headerLen := 2 + int(sealed[1])
	if len(sealed) < headerLen {
		return nil, errors.New("open: sealed value is truncated")
	}
	id := string(sealed[2:headerLen])
	aead, ok := k.aeads[id]
	if !ok {
		// The id is not quoted: it comes from the stored value, which
		// anyone with write access to the store can set to anything.
		return nil, errors.New("open: sealed with a key that is not in the keyring")
	}
	if len(sealed) < headerLen+aead.NonceSize()+aead.Overhead() {
		return nil, errors.New("open: sealed value is truncated")
	}
	nonce := sealed[headerLen : headerLen+aead.NonceSize()]
	ciphertext := sealed[headerLen+aead.NonceSize():]
	plaintext, err := aead.Open(nil, nonce, ciphertext, withHeader(sealed[:headerLen], aad))
	if err != nil {
		return nil, fmt.Errorf("open: value under key %q fails authentication (tampered, moved or another key with the same id)", id)
	}
	return plaintext, nil
}

// withHeader is the data GCM authenticates: the header, whose length is
// fixed by its own length byte, followed by the caller's aad.
func withHeader(header, aad []byte) []byte {
	full := make([]byte, 0, len(header)+len(aad))
	return append(append(full, header...), aad...)
}
