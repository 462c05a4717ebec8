package broker

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"strings"
	"time"
)

// Session is one signed-in app installation: the tokens the IdP issued, held
// server-side, and what the admin API shows about it.
type Session struct {
	// ID is the public session id: 128 random bits, base64url. It names the
	// session in logs, the admin API and the store, and is not a credential.
	ID string
	// SecretHash is SHA-256 of the secret part of the handle. The handle
	// itself is never stored.
	SecretHash []byte
	// Subject is the ID token's sub; SID its sid (OIDC session), if any.
	Subject string
	SID     string
	// ClientID is the OAuth client the app authorized with.
	ClientID string
	// Claims are the ID token's claims, shown to the app as "user".
	Claims map[string]any
	// Tokens are encrypted at rest by the store.
	Tokens Tokens
	// JKT is the RFC 7638 SHA-256 thumbprint (base64url) of the public key
	// the session is bound to (RFC 9449 section 6.1); empty for a bearer
	// session.
	JKT string
	// Generation counts the stored token sets: 1 at creation, one more at
	// every refresh that stored new tokens. Writers compare it to tell
	// whether the tokens they read are still the current ones.
	Generation uint64
	// Unreadable marks a record listed although it cannot be opened (see
	// UnreadableError): only its id and clear-text fields are set.
	Unreadable bool

	CreatedAt  time.Time
	LastUsedAt time.Time
	// AbsoluteExpiry is when the session ends, used or not.
	AbsoluteExpiry time.Time
	// IdleTimeout is how long the session survives without use.
	IdleTimeout time.Duration

	// IP and UserAgent are those of the request that opened the session,
	// at most MaxIPLen and MaxUserAgentLen bytes.
	IP        string
	UserAgent string
}

// Bounds of what a session and an audit event keep of what clients send.
const (
	MaxUserAgentLen   = 256
	MaxIPLen          = 64
	MaxAuditDetailLen = 512
	MaxRequestIDLen   = 128
)

// truncate cuts s to at most n bytes without leaving a partial UTF-8
// sequence (or any invalid one) behind.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// ExpiresAt is when the session ends if unused from now on: the earlier of its
// absolute end and its idle end as of the last recorded use.
func (s *Session) ExpiresAt() time.Time {
	idle := s.LastUsedAt.Add(s.IdleTimeout)
	if s.AbsoluteExpiry.Before(idle) {
		return s.AbsoluteExpiry
	}
	return idle
}

// Ended reports whether the session is over at now.
func (s *Session) Ended(now time.Time) bool {
	return !now.Before(s.ExpiresAt())
}

// Tokens are the IdP's tokens of a session.
type Tokens struct {
	AccessToken  string
	TokenType    string
	RefreshToken string
	IDToken      string
	// Expiry of the access token; zero when the IdP gave none.
	Expiry time.Time
	// IssuedAt is when the broker received them, on its clock; with
	// Expiry it gives the access token's lifetime. Zero in records
	// written before it was kept.
	IssuedAt time.Time
}

// Handles.
//
// A handle is "<session id>.<secret>": the id selects the stored record in one
// lookup and the 256-bit secret is verified against its stored SHA-256 in
// constant time. The id alone (shown to admins and in logs) is not a
// credential, and a copy of the store holds no usable handle.
const (
	idBytes     = 16
	secretBytes = 32
)

// newHandle returns a fresh session id, handle and the hash of its secret.
func newHandle() (id, handle string, secretHash []byte, err error) {
	buf := make([]byte, idBytes+secretBytes)
	if _, err := rand.Read(buf); err != nil {
		return "", "", nil, err
	}
	id = base64.RawURLEncoding.EncodeToString(buf[:idBytes])
	secret := base64.RawURLEncoding.EncodeToString(buf[idBytes:])
	sum := sha256.Sum256([]byte(secret))
	return id, id + "." + secret, sum[:], nil
}

// parseHandle splits a handle into its session id and secret hash. It reports
// false for anything that is not shaped like a handle: both parts must be
// canonical base64url (see canonical), so one handle has one spelling.
func parseHandle(handle string) (id string, secretHash []byte, ok bool) {
	id, secret, found := strings.Cut(handle, ".")
	if !found || !canonical(id, idBytes) || !canonical(secret, secretBytes) {
		return "", nil, false
	}
	sum := sha256.Sum256([]byte(secret))
	return id, sum[:], true
}

// ValidSessionID reports whether id has the shape of a session id, so that
// adapters can reject garbage before a store lookup. Like handles, ids are
// accepted only in canonical base64url.
func ValidSessionID(id string) bool {
	return canonical(id, idBytes)
}

// canonical reports whether s is the unpadded base64url encoding of exactly
// n bytes, spelled as the encoder spells it. Go's decoder skips CR and LF
// anywhere in its input and ignores the unused low bits of the last
// character, so several strings decode to the same bytes; a string is
// accepted only if re-encoding what it decodes to gives it back. Then an id
// or handle cannot be smuggled through logs, headers or keys in a second
// spelling.
func canonical(s string, n int) bool {
	if len(s) != base64.RawURLEncoding.EncodedLen(n) {
		return false
	}
	// Equivalent to decoding and encoding again, without allocating: every
	// character is of the alphabet, and the bits of the last one beyond
	// the n bytes are zero.
	var last int
	for i := range len(s) {
		v := base64URLValue(s[i])
		if v < 0 {
			return false
		}
		last = v
	}
	unused := len(s)*6 - n*8
	return last&(1<<unused-1) == 0
}

// base64URLValue is the value of a base64url character, -1 for any other
// byte.
func base64URLValue(c byte) int {
	switch {
	case 'A' <= c && c <= 'Z':
		return int(c - 'A')
	case 'a' <= c && c <= 'z':
		return int(c-'a') + 26
	case '0' <= c && c <= '9':
		return int(c-'0') + 52
	case c == '-':
		return 62
	case c == '_':
		return 63
	}
	return -1
}

// matches compares the stored secret hash with the presented one in constant
// time.
func (s *Session) matches(secretHash []byte) bool {
	return len(s.SecretHash) == len(secretHash) && subtle.ConstantTimeCompare(s.SecretHash, secretHash) == 1
}
