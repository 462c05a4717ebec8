package sessions

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

// Fields of the session hash broker:session:{<id>}, record version 2.
//
// The clear fields say who the session belongs to and how long it lives;
// none of them lets a copy of Redis act as the user (the handle's secret is
// only there as a SHA-256). The sealed fields are AES-GCM under the
// Keyring, and their additional data binds them to the clear fields that
// grant access or decide the session's life: a record edited in Redis by
// anyone without the keys fails to open instead of being read with the
// edited values.
const (
	fieldVersion    = "v"
	fieldGen        = "gen" // decimal, 1 at Create, one more per refresh
	fieldSecretHash = "secret_hash"
	fieldSub        = "sub"
	fieldSID        = "sid"
	fieldClientID   = "client_id"
	fieldCreatedAt  = "created_at" // Unix ms, like every time field
	fieldAbsExp     = "abs_exp"
	fieldIdle       = "idle" // ms
	fieldIP         = "ip"
	fieldUA         = "ua"
	// fieldJKT is the thumbprint of the key a DPoP-bound session is bound
	// to; absent for a bearer session. It is bound into the additional
	// data only when set, so that records written before it open as they
	// did, while deleting or emptying it in a bound record makes the
	// record unreadable, never unbound.
	fieldJKT = "jkt"
	// fieldLastUsedAt is a clear copy of the last use, read only by the
	// touch script, so that a late touch never moves the last use back. A
	// session's LastUsedAt always comes from the sealed fieldLU.
	fieldLastUsedAt = "last_used_at"

	fieldClaims = "claims" // sealed ID token claims, JSON; written at Create only
	fieldTok    = "tok"    // sealed tokens, JSON; rewritten by every refresh
	fieldLU     = "lu"     // sealed last use, Unix ms

	// recordVersion is the layout of the hash above. A record of version 1
	// is read too (upgrade.go); one of another version is unreadable rather
	// than misread.
	recordVersion = "2"
)

// binding is what the claims and tokens of a record authenticate besides
// their session and field: the clear fields that grant access or decide how
// long the session lives.
type binding struct {
	secretHash         []byte
	sub, sid, clientID string
	createdAt, absExp  int64 // Unix ms
	idle               int64 // ms
	jkt                string
}

func bindingOf(s *broker.Session) binding {
	return binding{
		secretHash: s.SecretHash,
		sub:        s.Subject,
		sid:        s.SID,
		clientID:   s.ClientID,
		createdAt:  s.CreatedAt.UnixMilli(),
		absExp:     s.AbsoluteExpiry.UnixMilli(),
		idle:       s.IdleTimeout.Milliseconds(),
		jkt:        s.JKT,
	}
}

// appendString appends s with a length prefix, so that no two different
// sequences of strings encode to the same bytes.
func appendString(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(s)))
	return append(dst, s...)
}

func (b binding) appendTo(dst []byte) []byte {
	dst = appendString(dst, string(b.secretHash))
	dst = appendString(dst, b.sub)
	dst = appendString(dst, b.sid)
	dst = appendString(dst, b.clientID)
	dst = binary.BigEndian.AppendUint64(dst, uint64(b.createdAt))
	dst = binary.BigEndian.AppendUint64(dst, uint64(b.absExp))
	dst = binary.BigEndian.AppendUint64(dst, uint64(b.idle))
	if b.jkt != "" {
		// Only bound records have it: the additional data of a bearer
		// record is as it was before DPoP, and that of a bound one is
		// longer, so neither passes for the other.
		dst = appendString(append(dst, fieldJKT...), b.jkt)
	}
	return dst
}

// fieldAAD binds a sealed value to its session and field: a value copied
// into another session's record, or into another field, fails to open.
func fieldAAD(id, field string) []byte {
	return appendString(appendString(nil, id), field)
}

func claimsAAD(id string, b binding) []byte { return b.appendTo(fieldAAD(id, fieldClaims)) }

// tokAAD binds the generation too, so that the tokens of one generation
// cannot be presented as another's.
func tokAAD(id string, b binding, gen uint64) []byte {
	return binary.BigEndian.AppendUint64(b.appendTo(fieldAAD(id, fieldTok)), gen)
}

func luAAD(id string) []byte { return fieldAAD(id, fieldLU) }

// sealedTokens is the plaintext of the tok field.
type sealedTokens struct {
	AccessToken  string    `json:"access_token,omitempty"`
	TokenType    string    `json:"token_type,omitempty"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	IDToken      string    `json:"id_token,omitempty"`
	Expiry       time.Time `json:"expiry,omitzero"`
	IssuedAt     time.Time `json:"issued_at,omitzero"`
}

func tokensOf(t broker.Tokens) sealedTokens {
	return sealedTokens{
		AccessToken:  t.AccessToken,
		TokenType:    t.TokenType,
		RefreshToken: t.RefreshToken,
		IDToken:      t.IDToken,
		Expiry:       t.Expiry.UTC(),
		IssuedAt:     t.IssuedAt.UTC(),
	}
}

func (p sealedTokens) tokens() broker.Tokens {
	return broker.Tokens{
		AccessToken:  p.AccessToken,
		TokenType:    p.TokenType,
		RefreshToken: p.RefreshToken,
		IDToken:      p.IDToken,
		Expiry:       p.Expiry,
		IssuedAt:     p.IssuedAt,
	}
}

func (s *Store) sealClaims(id string, b binding, claims map[string]any) ([]byte, error) {
	plaintext, err := json.Marshal(claims)
	if err != nil {
		// Say which session, not what failed to encode.
		return nil, fmt.Errorf("session %s: encode claims: %T", id, err)
	}
	return s.keys.Seal(plaintext, claimsAAD(id, b))
}

func (s *Store) sealTokens(id string, b binding, gen uint64, t broker.Tokens) ([]byte, error) {
	plaintext, err := json.Marshal(tokensOf(t))
	if err != nil {
		return nil, fmt.Errorf("session %s: encode tokens: %T", id, err)
	}
	return s.keys.Seal(plaintext, tokAAD(id, b, gen))
}

func (s *Store) sealLastUse(id string, at time.Time) ([]byte, error) {
	return s.keys.Seal(binary.BigEndian.AppendUint64(nil, uint64(at.UnixMilli())), luAAD(id))
}

// openClaims opens a claims field, from the cache when the same bytes were
// opened with the same additional data before.
func (s *Store) openClaims(id, blob string, aad []byte) (map[string]any, error) {
	if v, ok := s.opened.get(id, fieldClaims, blob, aad); ok {
		return v.(map[string]any), nil
	}
	plaintext, err := s.keys.Open([]byte(blob), aad)
	if err != nil {
		return nil, fmt.Errorf("field %s: %w", fieldClaims, err)
	}
	var claims map[string]any
	if err := json.Unmarshal(plaintext, &claims); err != nil {
		// The decoder's message may quote the plaintext, hence not %w.
		return nil, fmt.Errorf("field %s does not decode", fieldClaims)
	}
	s.opened.put(id, fieldClaims, blob, aad, claims)
	return claims, nil
}

func (s *Store) openTokens(id, blob string, aad []byte) (broker.Tokens, error) {
	if v, ok := s.opened.get(id, fieldTok, blob, aad); ok {
		return v.(broker.Tokens), nil
	}
	plaintext, err := s.keys.Open([]byte(blob), aad)
	if err != nil {
		return broker.Tokens{}, fmt.Errorf("field %s: %w", fieldTok, err)
	}
	var p sealedTokens
	if err := json.Unmarshal(plaintext, &p); err != nil {
		return broker.Tokens{}, fmt.Errorf("field %s does not decode", fieldTok)
	}
	t := p.tokens()
	s.opened.put(id, fieldTok, blob, aad, t)
	return t, nil
}

// openLastUse opens the lu field. It changes with every use, so caching it
// would only churn the cache; opening 8 bytes costs next to nothing.
func (s *Store) openLastUse(id, blob string) (time.Time, error) {
	plaintext, err := s.keys.Open([]byte(blob), luAAD(id))
	if err != nil {
		return time.Time{}, fmt.Errorf("field %s: %w", fieldLU, err)
	}
	if len(plaintext) != 8 {
		return time.Time{}, fmt.Errorf("field %s does not decode", fieldLU)
	}
	return time.UnixMilli(int64(binary.BigEndian.Uint64(plaintext))).UTC(), nil
}

// parseRecord reads the clear fields that the sealed ones bind, and the
// generation. Its errors name the field, never its value.
func parseRecord(h map[string]string) (binding, uint64, error) {
	if h[fieldVersion] != recordVersion {
		// The stored version is not quoted: it is the record's, and may be
		// anything.
		return binding{}, 0, errors.New("record version is not " + recordVersion)
	}
	var b binding
	var err error
	if b.secretHash, err = hex.DecodeString(h[fieldSecretHash]); err != nil {
		return binding{}, 0, fmt.Errorf("field %s is not hex", fieldSecretHash)
	}
	b.sub, b.sid, b.clientID, b.jkt = h[fieldSub], h[fieldSID], h[fieldClientID], h[fieldJKT]
	for _, f := range []struct {
		name string
		to   *int64
	}{{fieldCreatedAt, &b.createdAt}, {fieldAbsExp, &b.absExp}, {fieldIdle, &b.idle}} {
		if *f.to, err = strconv.ParseInt(h[f.name], 10, 64); err != nil {
			return binding{}, 0, fmt.Errorf("field %s is not an integer", f.name)
		}
	}
	gen, err := strconv.ParseUint(h[fieldGen], 10, 64)
	if err != nil || gen == 0 {
		return binding{}, 0, fmt.Errorf("field %s is not a positive integer", fieldGen)
	}
	return b, gen, nil
}

// session is the Session a record's clear fields describe, before its
// sealed fields are opened.
func (b binding) session(id string, gen uint64, h map[string]string) *broker.Session {
	return &broker.Session{
		ID:             id,
		SecretHash:     b.secretHash,
		Subject:        b.sub,
		SID:            b.sid,
		ClientID:       b.clientID,
		JKT:            b.jkt,
		Generation:     gen,
		CreatedAt:      time.UnixMilli(b.createdAt).UTC(),
		AbsoluteExpiry: time.UnixMilli(b.absExp).UTC(),
		IdleTimeout:    time.Duration(b.idle) * time.Millisecond,
		IP:             h[fieldIP],
		UserAgent:      h[fieldUA],
	}
}

// openRecord turns a record into a Session, opening every sealed field.
// Without sealed, the claims and tokens are neither opened nor required:
// an Ending whose work is done has forgotten them.
func (s *Store) openRecord(id string, h map[string]string, sealed bool) (*broker.Session, error) {
	if h[fieldVersion] == recordVersion1 {
		return s.openVersion1(id, h, sealed)
	}
	b, gen, err := parseRecord(h)
	if err != nil {
		return nil, err
	}
	sess := b.session(id, gen, h)
	if sealed {
		if sess.Claims, err = s.openClaims(id, h[fieldClaims], claimsAAD(id, b)); err != nil {
			return nil, err
		}
		if sess.Tokens, err = s.openTokens(id, h[fieldTok], tokAAD(id, b, gen)); err != nil {
			return nil, err
		}
	}
	if sess.LastUsedAt, err = s.openLastUse(id, h[fieldLU]); err != nil {
		return nil, err
	}
	return sess, nil
}

// decode turns a session hash into a Session. A record that does not open
// is an *broker.UnreadableError holding what it says in the clear.
func (s *Store) decode(id string, h map[string]string, sealed bool) (*broker.Session, error) {
	sess, err := s.openRecord(id, h, sealed)
	if err != nil {
		return nil, &broker.UnreadableError{Session: clearSession(id, h), Err: err}
	}
	return sess, nil
}

// clearSession is what a record says in the clear, for listing and
// removing a record that cannot be opened. None of it is authenticated;
// times that do not parse are left zero.
func clearSession(id string, h map[string]string) *broker.Session {
	millis := func(field string) time.Time {
		n, err := strconv.ParseInt(h[field], 10, 64)
		if err != nil {
			return time.Time{}
		}
		return time.UnixMilli(n).UTC()
	}
	return &broker.Session{
		ID:             id,
		Subject:        h[fieldSub],
		SID:            h[fieldSID],
		ClientID:       h[fieldClientID],
		CreatedAt:      millis(fieldCreatedAt),
		AbsoluteExpiry: millis(fieldAbsExp),
		IP:             h[fieldIP],
		UserAgent:      h[fieldUA],
		Unreadable:     true,
	}
}

// sameTokens reports whether two token sets are the same, times compared
// as instants.
func sameTokens(a, b broker.Tokens) bool {
	if !a.Expiry.Equal(b.Expiry) || !a.IssuedAt.Equal(b.IssuedAt) {
		return false
	}
	a.Expiry, b.Expiry = time.Time{}, time.Time{}
	a.IssuedAt, b.IssuedAt = time.Time{}, time.Time{}
	return a == b
}
