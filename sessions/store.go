// Package sessions keeps the broker's sessions in Redis: the key layout, the
// encryption of tokens at rest, the refresh leases, the per-subject and
// per-sid indexes and the audit stream. It turns Redis's answers into the
// broker's errors, so that nothing above it needs to know about Redis.
package sessions

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// Fields of the session hash. Everything but tok is plaintext and holds
// nothing that lets a copy of Redis act as the user: the handle's secret is
// only there as a SHA-256, and the tokens and claims are sealed in tok.
const (
	fieldVersion    = "v"
	fieldSecretHash = "secret_hash"
	fieldSub        = "sub"
	fieldSID        = "sid"
	fieldClientID   = "client_id"
	fieldCreatedAt  = "created_at" // Unix ms, like every time field
	fieldLastUsedAt = "last_used_at"
	fieldAbsExp     = "abs_exp"
	fieldIdle       = "idle" // ms
	fieldIP         = "ip"
	fieldUA         = "ua"
	fieldTok        = "tok"

	// recordVersion is the layout of the hash above. A record of another
	// version is refused rather than misread.
	recordVersion = "1"
)

// DefaultAuditMaxLen is how many audit events are kept when
// Options.AuditMaxLen is zero.
const DefaultAuditMaxLen = 10000

// Options configure a Store. The zero value is ready to use.
type Options struct {
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// AuditMaxLen is roughly how many audit events are kept (Redis trims
	// the stream in whole nodes, so a few more may stay); DefaultAuditMaxLen
	// when zero.
	AuditMaxLen int64
}

// Store is the Redis implementation of the broker's session store, refresh
// locker and audit log. It is safe for concurrent use.
type Store struct {
	client      redis.UniversalClient
	keys        *Keyring
	now         func() time.Time
	auditMaxLen int64
	opened      *openCache
}

var (
	_ broker.Store    = (*Store)(nil)
	_ broker.Locker   = (*Store)(nil)
	_ broker.AuditLog = (*Store)(nil)
)

// New returns a Store on client that seals tokens with keys. It panics on a
// nil client or keyring, which is a wiring mistake rather than a runtime
// condition.
func New(client redis.UniversalClient, keys *Keyring, opts Options) *Store {
	if client == nil || keys == nil {
		panic("sessions: New needs a client and a keyring")
	}
	s := &Store{client: client, keys: keys, now: opts.Now, auditMaxLen: opts.AuditMaxLen, opened: newOpenCache()}
	if s.now == nil {
		s.now = time.Now
	}
	if s.auditMaxLen <= 0 {
		s.auditMaxLen = DefaultAuditMaxLen
	}
	return s
}

// sealed is the plaintext of the tok field: everything of a session that
// would let its holder act as the user, or that says who the user is.
type sealed struct {
	AccessToken  string         `json:"access_token,omitempty"`
	TokenType    string         `json:"token_type,omitempty"`
	RefreshToken string         `json:"refresh_token,omitempty"`
	IDToken      string         `json:"id_token,omitempty"`
	Expiry       time.Time      `json:"expiry,omitzero"`
	Claims       map[string]any `json:"claims,omitempty"`
}

func (p *sealed) setTokens(t broker.Tokens) {
	p.AccessToken = t.AccessToken
	p.TokenType = t.TokenType
	p.RefreshToken = t.RefreshToken
	p.IDToken = t.IDToken
	p.Expiry = t.Expiry.UTC()
}

func (s *Store) seal(id string, p *sealed) ([]byte, error) {
	plaintext, err := json.Marshal(p)
	if err != nil {
		// Only the claims can fail to encode; say which session, not what.
		return nil, fmt.Errorf("session %s: encode tokens and claims: %T", id, err)
	}
	return s.keys.Seal(plaintext, tokAAD(id))
}

func (s *Store) open(id, blob string) (*sealed, error) {
	plaintext, err := s.keys.Open([]byte(blob), tokAAD(id))
	if err != nil {
		return nil, fmt.Errorf("session %s: %w", id, err)
	}
	var p sealed
	if err := json.Unmarshal(plaintext, &p); err != nil {
		// The decoder's message may quote the plaintext, hence not %w.
		return nil, fmt.Errorf("session %s: sealed tokens do not decode", id)
	}
	return &p, nil
}

// Create stores a new session, then adds it to the subject's index, the
// expiry index and, if it has one, the sid's. The index entries come
// second: a session missing from an index could escape a revocation, while
// an index entry without a session is merely pruned later. If indexing
// fails the session is removed again as well as Redis allows; one that
// stays behind is harmless, since its handle is only handed out after
// Create succeeded.
func (s *Store) Create(ctx context.Context, sess *broker.Session) error {
	if !broker.ValidSessionID(sess.ID) {
		return errors.New("create session: invalid session id")
	}
	p := &sealed{Claims: sess.Claims}
	p.setTokens(sess.Tokens)
	tok, err := s.seal(sess.ID, p)
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	key := sessionKey(sess.ID)
	_, err = s.client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.HSet(ctx, key,
			fieldVersion, recordVersion,
			fieldSecretHash, hex.EncodeToString(sess.SecretHash),
			fieldSub, sess.Subject,
			fieldSID, sess.SID,
			fieldClientID, sess.ClientID,
			fieldCreatedAt, sess.CreatedAt.UnixMilli(),
			fieldLastUsedAt, sess.LastUsedAt.UnixMilli(),
			fieldAbsExp, sess.AbsoluteExpiry.UnixMilli(),
			fieldIdle, sess.IdleTimeout.Milliseconds(),
			fieldIP, sess.IP,
			fieldUA, sess.UserAgent,
			fieldTok, tok,
		)
		pipe.PExpireAt(ctx, key, sess.ExpiresAt())
		return nil
	})
	if err != nil {
		return storeError("create session "+sess.ID, err)
	}

	now := s.now().UnixMilli()
	indexes := []string{subjectKey(sess.Subject), expiryKey(sess.ID)}
	if sess.SID != "" {
		indexes = append(indexes, sidKey(sess.SID))
	}
	for _, index := range indexes {
		err := indexAddScript.Run(ctx, s.client, []string{index}, sess.AbsoluteExpiry.UnixMilli(), sess.ID, now).Err()
		if err != nil {
			s.client.Del(context.WithoutCancel(ctx), key)
			return storeError("index session "+sess.ID, err)
		}
	}
	return nil
}

// Get reads a session in one round trip: it sits on the path of every
// proxied request.
func (s *Store) Get(ctx context.Context, id string) (*broker.Session, error) {
	if !broker.ValidSessionID(id) {
		return nil, fmt.Errorf("get session: %w", broker.ErrNotFound)
	}
	h, err := s.client.HGetAll(ctx, sessionKey(id)).Result()
	if err != nil {
		return nil, storeError("get session "+id, err)
	}
	if len(h) == 0 {
		return nil, fmt.Errorf("get session %s: %w", id, broker.ErrNotFound)
	}
	sess, err := s.decode(id, h)
	if err != nil {
		return nil, fmt.Errorf("get session: %w", err)
	}
	return sess, nil
}

// UpdateTokens reseals the session's tokens, keeping its claims. The claims
// come from the current record, read first: they never change after Create,
// so a write racing between the read and the script cannot make them stale.
// Resealing also moves the record to the keyring's current key.
func (s *Store) UpdateTokens(ctx context.Context, id string, t broker.Tokens) error {
	if !broker.ValidSessionID(id) {
		return fmt.Errorf("update tokens: %w", broker.ErrNotFound)
	}
	key := sessionKey(id)
	blob, err := s.client.HGet(ctx, key, fieldTok).Result()
	if err != nil {
		return storeError("update tokens of session "+id, err)
	}
	p, err := s.open(id, blob)
	if err != nil {
		return fmt.Errorf("update tokens: %w", err)
	}
	p.setTokens(t)
	tok, err := s.seal(id, p)
	if err != nil {
		return fmt.Errorf("update tokens: %w", err)
	}
	updated, err := updateTokensScript.Run(ctx, s.client, []string{key}, tok).Int()
	if err != nil {
		return storeError("update tokens of session "+id, err)
	}
	if updated == 0 {
		return fmt.Errorf("update tokens of session %s: %w", id, broker.ErrNotFound)
	}
	return nil
}

// Touch records a use and moves the key's expiry, in a script so that a
// session deleted meanwhile stays deleted.
func (s *Store) Touch(ctx context.Context, id string, at, expiresAt time.Time) error {
	if !broker.ValidSessionID(id) {
		return fmt.Errorf("touch session: %w", broker.ErrNotFound)
	}
	touched, err := touchScript.Run(ctx, s.client, []string{sessionKey(id)}, at.UnixMilli(), expiresAt.UnixMilli()).Int()
	if err != nil {
		return storeError("touch session "+id, err)
	}
	if touched == 0 {
		return fmt.Errorf("touch session %s: %w", id, broker.ErrNotFound)
	}
	return nil
}

// Delete reads and deletes the session in one script, so that of concurrent
// calls exactly one sees it. Its index entries go afterwards, best effort:
// an entry left behind is pruned when its index is next listed.
func (s *Store) Delete(ctx context.Context, id string) (*broker.Session, error) {
	if !broker.ValidSessionID(id) {
		return nil, fmt.Errorf("delete session: %w", broker.ErrNotFound)
	}
	flat, err := deleteScript.Run(ctx, s.client, []string{sessionKey(id)}).StringSlice()
	if err != nil {
		return nil, storeError("delete session "+id, err)
	}
	h := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		h[flat[i]] = flat[i+1]
	}
	pipe := s.client.Pipeline()
	pipe.ZRem(ctx, subjectKey(h[fieldSub]), id)
	pipe.ZRem(ctx, expiryKey(id), id)
	if sid := h[fieldSID]; sid != "" {
		pipe.ZRem(ctx, sidKey(sid), id)
	}
	// The session is gone whatever the index cleanup does.
	_, _ = pipe.Exec(ctx)

	sess, err := s.decode(id, h)
	s.opened.drop(id)
	if err != nil {
		return nil, fmt.Errorf("delete session: %w", err)
	}
	return sess, nil
}

// ListBySubject returns the live sessions of a subject, newest first.
func (s *Store) ListBySubject(ctx context.Context, sub string) ([]*broker.Session, error) {
	return s.list(ctx, "list sessions of subject", subjectKey(sub))
}

// ListBySID returns the live sessions opened with an ID token carrying sid
// (the OIDC session), newest first: the sessions a back-channel logout for
// that sid ends.
func (s *Store) ListBySID(ctx context.Context, sid string) ([]*broker.Session, error) {
	return s.list(ctx, "list sessions of sid", sidKey(sid))
}

// list reads the sessions of an index. It prunes the entries past their
// absolute expiry in the script that reads the index, and the entries whose
// session key is gone (idle expiry, deletion) once it has met them: a session
// key never comes back once gone, so removing its entry loses nothing.
func (s *Store) list(ctx context.Context, op, index string) ([]*broker.Session, error) {
	now := s.now()
	ids, err := indexListScript.Run(ctx, s.client, []string{index}, now.UnixMilli()).StringSlice()
	if err != nil {
		return nil, storeError(op, err)
	}
	var gone []any
	live := ids[:0]
	for _, id := range ids {
		if broker.ValidSessionID(id) {
			live = append(live, id)
		} else {
			gone = append(gone, id)
		}
	}
	cmds := make([]*redis.MapStringStringCmd, len(live))
	if len(live) > 0 {
		_, err = s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, id := range live {
				cmds[i] = pipe.HGetAll(ctx, sessionKey(id))
			}
			return nil
		})
		if err != nil {
			return nil, storeError(op, err)
		}
	}
	out := make([]*broker.Session, 0, len(live))
	for i, id := range live {
		h := cmds[i].Val()
		if len(h) == 0 {
			gone = append(gone, id)
			continue
		}
		sess, err := s.decode(id, h)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		// Redis expires keys within a millisecond or so; the clock decides.
		if !sess.Ended(now) {
			out = append(out, sess)
		}
	}
	if len(gone) > 0 {
		// Pruning is housekeeping: the answer stands without it.
		_ = s.client.ZRem(ctx, index, gone...).Err()
	}
	slices.SortFunc(out, func(a, b *broker.Session) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Ping reports whether Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx).Err(); err != nil {
		return storeError("ping", err)
	}
	return nil
}

// decode turns a session hash into a Session. Its errors name the session
// and the field, never a value.
func (s *Store) decode(id string, h map[string]string) (*broker.Session, error) {
	if v := h[fieldVersion]; v != recordVersion {
		return nil, fmt.Errorf("session %s: record version %q is not supported", id, v)
	}
	var err error
	millis := func(field string) int64 {
		n, perr := strconv.ParseInt(h[field], 10, 64)
		if perr != nil && err == nil {
			err = fmt.Errorf("session %s: field %s is not an integer", id, field)
		}
		return n
	}
	sess := &broker.Session{
		ID:             id,
		Subject:        h[fieldSub],
		SID:            h[fieldSID],
		ClientID:       h[fieldClientID],
		CreatedAt:      time.UnixMilli(millis(fieldCreatedAt)).UTC(),
		LastUsedAt:     time.UnixMilli(millis(fieldLastUsedAt)).UTC(),
		AbsoluteExpiry: time.UnixMilli(millis(fieldAbsExp)).UTC(),
		IdleTimeout:    time.Duration(millis(fieldIdle)) * time.Millisecond,
		IP:             h[fieldIP],
		UserAgent:      h[fieldUA],
	}
	if err != nil {
		return nil, err
	}
	if sess.SecretHash, err = hex.DecodeString(h[fieldSecretHash]); err != nil {
		return nil, fmt.Errorf("session %s: field %s is not hex", id, fieldSecretHash)
	}
	p, ok := s.opened.get(id, h[fieldTok])
	if !ok {
		if p, err = s.open(id, h[fieldTok]); err != nil {
			return nil, err
		}
		s.opened.put(id, h[fieldTok], p)
	}
	sess.Claims = p.Claims
	sess.Tokens = broker.Tokens{
		AccessToken:  p.AccessToken,
		TokenType:    p.TokenType,
		RefreshToken: p.RefreshToken,
		IDToken:      p.IDToken,
		Expiry:       p.Expiry,
	}
	return sess, nil
}
