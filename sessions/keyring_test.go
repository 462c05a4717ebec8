package sessions

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

func TestParseKeyringAccepts(t *testing.T) {
	// Bytes that encode to '+' and '/' in standard base64 and to '-' and
	// '_' in URL base64, so that each alphabet is really exercised.
	key := bytes.Repeat([]byte{0xfb, 0xff}, keySize/2)
	other := bytes.Repeat([]byte{0x01}, keySize)
	tests := []struct {
		name string
		spec string
		ids  []string
	}{
		{"std padded", "k1:" + base64.StdEncoding.EncodeToString(key), []string{"k1"}},
		{"std unpadded", "k1:" + base64.RawStdEncoding.EncodeToString(key), []string{"k1"}},
		{"url padded", "k1:" + base64.URLEncoding.EncodeToString(key), []string{"k1"}},
		{"url unpadded", "k1:" + base64.RawURLEncoding.EncodeToString(key), []string{"k1"}},
		{"two keys with spaces", " 2026-02 : " + base64.StdEncoding.EncodeToString(key) + " , 2025-11:" + base64.StdEncoding.EncodeToString(other), []string{"2026-02", "2025-11"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseKeyring(tt.spec)
			if err != nil {
				t.Fatalf("ParseKeyring = %v", err)
			}
			if k.primary != tt.ids[0] {
				t.Errorf("primary key = %q, want %q", k.primary, tt.ids[0])
			}
			if len(k.aeads) != len(tt.ids) {
				t.Errorf("keyring holds %d keys, want %d", len(k.aeads), len(tt.ids))
			}
		})
	}
}

func TestParseKeyringRejects(t *testing.T) {
	valid := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xab}, keySize))
	short := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xcd}, 16))
	long := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xef}, keySize+1))
	tests := []struct {
		name string
		spec string
		want string
	}{
		{"empty", "", "no keys"},
		{"blank", "  ", "no keys"},
		{"no id", valid, "not KEYID:BASE64"},
		{"empty id", ":" + valid, "empty key id"},
		{"empty key", "k1:", "0 bytes"},
		{"empty entry", "k1:" + valid + ",", "entry 2 is empty"},
		{"duplicate id", "k1:" + valid + ",k1:" + valid, "entries 1 and 2 have the same key id"},
		{"colon in id", "k:1:" + valid, "cannot contain ':'"},
		{"comma in id", "k,1:" + valid, "entry 1 is not KEYID:BASE64"},
		{"space in id", "k 1:" + valid, "not printable"},
		{"long id", strings.Repeat("k", 256) + ":" + valid, "longer than 255"},
		{"not base64", "k1:" + strings.Repeat("!", 44), "not valid base64"},
		{"16-byte key", "k1:" + short, "16 bytes, want 32"},
		{"33-byte key", "k1:" + long, "33 bytes, want 32"},
		// KEY:ID instead of KEYID:KEY: the key stands where the id belongs
		// and the id does not decode.
		{"swapped", valid + ":k1", "the key of entry 1 is 1 bytes"},
		{"swapped, second entry", "k1:" + valid + "," + short + ":k2", "the key of entry 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseKeyring(tt.spec)
			if err == nil {
				t.Fatalf("ParseKeyring(%s) = nil, want an error", tt.name)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseKeyring(%s) = %q, want it to say %q", tt.name, err, tt.want)
			}
			for _, material := range []string{valid, short, long, valid[:8], short[:8], long[:8]} {
				if strings.Contains(err.Error(), material) {
					t.Errorf("ParseKeyring(%s) = %q, which quotes key material", tt.name, err)
				}
			}
		})
	}
}

func TestSealOpen(t *testing.T) {
	k, err := NewEphemeralKeyring()
	if err != nil {
		t.Fatal(err)
	}
	plaintext, aad := []byte("refresh-token-value"), []byte("broker:session:abc\x00tok")
	a, err := k.Seal(plaintext, aad)
	if err != nil {
		t.Fatal(err)
	}
	b, err := k.Seal(plaintext, aad)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a, b) {
		t.Error("two Seals of the same plaintext are equal; want a fresh nonce each")
	}
	if bytes.Contains(a, plaintext) {
		t.Error("sealed value holds the plaintext")
	}
	if got, err := k.Open(a, aad); err != nil || !bytes.Equal(got, plaintext) {
		t.Errorf("Open = %q, %v; want the plaintext", got, err)
	}

	other, err := NewEphemeralKeyring()
	if err != nil {
		t.Fatal(err)
	}
	flipped := func(i int) []byte {
		c := bytes.Clone(a)
		c[i] ^= 0x01
		return c
	}
	relabelled := append([]byte{sealFormat, 1, 'x'}, a[2+len("ephemeral"):]...)
	tests := []struct {
		name   string
		keys   *Keyring
		sealed []byte
		aad    []byte
	}{
		{"other aad", k, a, []byte("broker:session:xyz\x00tok")},
		{"no aad", k, a, nil},
		{"flipped ciphertext", k, flipped(len(a) - 1), aad},
		{"flipped nonce", k, flipped(2 + len("ephemeral")), aad},
		{"flipped key id", k, flipped(3), aad},
		{"relabelled key id", k, relabelled, aad},
		{"unknown format", k, flipped(0), aad},
		{"truncated", k, a[:20], aad},
		{"empty", k, nil, aad},
		{"other key with the same id", other, a, aad},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := tt.keys.Open(tt.sealed, tt.aad); err == nil {
				t.Errorf("Open = %q, nil; want an error", got)
			}
		})
	}
}
