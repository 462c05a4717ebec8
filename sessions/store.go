// Package sessions keeps the broker's sessions in Redis: the key layout, the
// encryption of tokens at rest, the refresh leases, the per-subject and
// per-sid indexes, the endings still owing work and the audit stream. It
// turns Redis's answers into the broker's errors, so that nothing above it
// needs to know about Redis.
package sessions

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
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
	// Cache, when set, keeps opened sessions in process for Lookup, kept
	// coherent by Redis's invalidations (see tracking.go); Close stops it.
	// Nil means Lookup reads Redis every time.
	Cache *CacheOptions
	// Logger receives the cache's changes of state; slog.Default() when
	// nil.
	Logger *slog.Logger
}

// Store is the Redis implementation of the broker's session store, refresh
// locker, replay guard and audit log. It is safe for concurrent use.
type Store struct {
	client      redis.UniversalClient
	keys        *Keyring
	now         func() time.Time
	auditMaxLen int64
	opened      *openCache
	cache       *sessionCache // nil without Options.Cache
	tracker     *tracker
}

var (
	_ broker.Store       = (*Store)(nil)
	_ broker.Locker      = (*Store)(nil)
	_ broker.ReplayGuard = (*Store)(nil)
	_ broker.AuditLog    = (*Store)(nil)
)

// New returns a Store on client that seals sessions with keys. It panics on a
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
	if opts.Cache != nil && !opts.Cache.Disabled {
		log := opts.Logger
		if log == nil {
			log = slog.Default()
		}
		s.cache = newSessionCache(*opts.Cache)
		s.tracker = startTracker(client, s.cache, s.opened, log)
	}
	return s
}

// Close stops the session cache's invalidation channels. The Store keeps
// working without the cache; the Redis client is the caller's to close,
// after Close.
func (s *Store) Close() {
	if s.tracker != nil {
		s.tracker.close()
	}
}

// CacheStats returns the session cache's figures; the zero value without
// a cache.
func (s *Store) CacheStats() CacheStats {
	if s.cache == nil {
		return CacheStats{}
	}
	return s.cache.stats()
}

// Create stores a new session at generation 1, at record version 1 on a
// store one schema version behind (see writesVersion1) unless it is
// DPoP-bound, then adds it to the
// subject's index, the expiry index and, if it has one, the sid's. The index
// entries come second: a session missing from an index could escape a
// revocation, while an index entry without a session is merely pruned later.
// If indexing fails the session is removed again as well as Redis allows;
// one that stays behind is harmless, since its handle is only handed out
// after Create succeeded.
func (s *Store) Create(ctx context.Context, sess *broker.Session) error {
	if !broker.ValidSessionID(sess.ID) {
		return errors.New("create session: invalid session id")
	}
	v1, err := s.writesVersion1(ctx)
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	if v1 && sess.JKT == "" {
		// A version 1 record cannot bind a DPoP key: a bound session is
		// written at the current version, which brokers without DPoP
		// cannot open, so that its handle never works there as a bearer
		// credential.
		return s.create(ctx, sess, s.version1Fields)
	}
	return s.create(ctx, sess, s.recordFields)
}

// recordFields returns the fields of sess as a record of the current
// version, at generation 1.
func (s *Store) recordFields(sess *broker.Session) ([]any, error) {
	b := bindingOf(sess)
	claims, err := s.sealClaims(sess.ID, b, sess.Claims)
	if err != nil {
		return nil, err
	}
	tok, err := s.sealTokens(sess.ID, b, 1, sess.Tokens)
	if err != nil {
		return nil, err
	}
	lu, err := s.sealLastUse(sess.ID, sess.LastUsedAt)
	if err != nil {
		return nil, err
	}
	fields := []any{
		fieldVersion, recordVersion,
		fieldGen, 1,
		fieldSecretHash, hex.EncodeToString(sess.SecretHash),
		fieldSub, sess.Subject,
		fieldSID, sess.SID,
		fieldClientID, sess.ClientID,
		fieldCreatedAt, b.createdAt,
		fieldAbsExp, b.absExp,
		fieldIdle, b.idle,
		fieldLastUsedAt, sess.LastUsedAt.UnixMilli(),
		fieldIP, sess.IP,
		fieldUA, sess.UserAgent,
		fieldClaims, claims,
		fieldTok, tok,
		fieldLU, lu,
	}
	if sess.JKT != "" {
		fields = append(fields, fieldJKT, sess.JKT)
	}
	return fields, nil
}

// create writes the record that fields returns, then indexes it (see
// Create).
func (s *Store) create(ctx context.Context, sess *broker.Session, fields func(*broker.Session) ([]any, error)) error {
	values, err := fields(sess)
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	key := sessionKey(sess.ID)
	_, err = s.client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.HSet(ctx, key, values...)
		pipe.PExpireAt(ctx, key, sess.ExpiresAt())
		return nil
	})
	if err != nil {
		return storeError(ctx, "create session "+sess.ID, err)
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
			return storeError(ctx, "index session "+sess.ID, err)
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
	h, err := s.read(ctx, id)
	if err != nil {
		return nil, storeError(ctx, "get session "+id, err)
	}
	if len(h) == 0 {
		return nil, fmt.Errorf("get session %s: %w", id, broker.ErrNotFound)
	}
	sess, err := s.decode(id, h, true)
	if err != nil {
		return nil, fmt.Errorf("get session: %w", err)
	}
	return sess, nil
}

// read returns a session's fields. When this process opened the session's
// tokens or claims before, Redis leaves out the blobs that did not change
// (see getScript): a re-read after a touch, or while the session cache is
// off, moves the small fields only, not the 2-3 KB of sealed tokens. An
// empty map means the session does not exist.
func (s *Store) read(ctx context.Context, id string) (map[string]string, error) {
	key := sessionKey(id)
	tokBlob, tokSum, haveTok := s.opened.known(id, fieldTok)
	claimsBlob, claimsSum, haveClaims := s.opened.known(id, fieldClaims)
	if !haveTok && !haveClaims {
		return s.client.HGetAll(ctx, key).Result()
	}
	res, err := getScript.RunRO(ctx, s.client, []string{key}, tokSum, claimsSum).Slice()
	if err != nil {
		return nil, err
	}
	if len(res) != 3 {
		return nil, fmt.Errorf("read session: %d values in the reply, want 3", len(res))
	}
	flat, _ := res[0].([]any)
	h := make(map[string]string, len(flat)/2+2)
	for i := 0; i+1 < len(flat); i += 2 {
		k, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		h[k] = v
	}
	if same, _ := res[1].(int64); same == 1 {
		h[fieldTok] = tokBlob
	}
	if same, _ := res[2].(int64); same == 1 {
		h[fieldClaims] = claimsBlob
	}
	return h, nil
}

// Lookup is Get for the request path: a warm session is answered from the
// in-process cache without a round trip, while the cache's invalidation
// channel is up; otherwise it reads Redis as Get does, and keeps what it
// read. Errors are never cached.
func (s *Store) Lookup(ctx context.Context, id string) (*broker.Session, error) {
	if s.cache == nil {
		return s.Get(ctx, id)
	}
	if sess, ok := s.cache.get(id); ok {
		return sess, nil
	}
	t, fill := s.cache.take(id)
	sess, err := s.Get(ctx, id)
	switch {
	case !fill:
	case err != nil:
		s.cache.release(t)
	default:
		kept := *sess
		s.cache.fill(t, &kept, s.now())
	}
	return sess, err
}

// forget drops a session this process just changed from its cache: the
// invalidation Redis sends for the change does the same, moments later.
func (s *Store) forget(id string) {
	if s.cache != nil {
		s.cache.invalidate(id)
	}
}

// UpdateTokens stores t as generation from+1, fenced by the lease and the
// generation in one script (see updateTokensScript).
//
// The new tokens are sealed in Go, bound to the record's clear fields, so
// those are read first and authenticated by opening the claims (usually a
// cache hit): sealing with values that were only read, not authenticated,
// would make a record edited in Redis open with the edits. A record edited
// between this read and the script does not open afterwards either, since
// the tokens stay bound to the values authenticated here.
//
// A call repeated after its first run took effect (its reply lost, or
// retried after ErrStoreUnavailable) finds the record at from+1 holding
// these very tokens, and succeeds as the first run would have.
func (s *Store) UpdateTokens(ctx context.Context, id string, l broker.Lease, from uint64, t broker.Tokens) error {
	if !broker.ValidSessionID(id) {
		return fmt.Errorf("update tokens: %w", broker.ErrNotFound)
	}
	// A decorated lease (a wrapper that counts or injects faults) names
	// the lease it wraps.
	for {
		u, ok := l.(interface{ Unwrap() broker.Lease })
		if !ok {
			break
		}
		l = u.Unwrap()
	}
	held, ok := l.(*lease)
	if l == nil {
		// A rescue write: fenced by the generation alone.
		held, ok = &lease{sessionID: id}, true
	}
	switch {
	case !ok || held == nil:
		return fmt.Errorf("update tokens of session %s: the lease (%T) was not taken from this store", id, l)
	case held.sessionID != id:
		return fmt.Errorf("update tokens of session %s: the lease is of session %s", id, held.sessionID)
	case from == 0 || from == math.MaxUint64:
		return fmt.Errorf("update tokens of session %s: generation %d is out of range", id, from)
	}
	// A record a migration converts between the read and the write is
	// read again, once per conversion it can meet.
	for attempt := 0; ; attempt++ {
		res, err := s.updateTokens(ctx, id, held, from, t)
		if err != nil || res != 4 || attempt == 2 {
			if res == 4 {
				return fmt.Errorf("update tokens of session %s: its record version kept changing", id)
			}
			return err
		}
	}
}

// updateTokens is one attempt of UpdateTokens, in the layout the record
// is in. It returns 4 when the record's version changed before the write.
func (s *Store) updateTokens(ctx context.Context, id string, held *lease, from uint64, t broker.Tokens) (int, error) {
	key := sessionKey(id)
	h, err := s.client.HGetAll(ctx, key).Result()
	if err != nil {
		return 0, storeError(ctx, "update tokens of session "+id, err)
	}
	if len(h) == 0 {
		return 0, fmt.Errorf("update tokens of session %s: %w", id, broker.ErrNotFound)
	}
	var gen uint64
	var cur func() (broker.Tokens, error)
	var seal func() ([]byte, error)
	version := h[fieldVersion]
	if version == recordVersion1 {
		// Opening tok authenticates it; the clear fields of version 1 are
		// not bound.
		var sess *broker.Session
		if sess, err = s.openVersion1(id, h, true); err == nil {
			gen = sess.Generation
			cur = func() (broker.Tokens, error) { return sess.Tokens, nil }
			seal = func() ([]byte, error) { return s.sealVersion1(id, t, sess.Claims) }
		}
	} else {
		var b binding
		b, gen, err = parseRecord(h)
		if err == nil {
			_, err = s.openClaims(id, h[fieldClaims], claimsAAD(id, b))
		}
		cur = func() (broker.Tokens, error) { return s.openTokens(id, h[fieldTok], tokAAD(id, b, gen)) }
		seal = func() ([]byte, error) { return s.sealTokens(id, b, from+1, t) }
	}
	if err != nil {
		return 0, fmt.Errorf("update tokens: %w", &broker.UnreadableError{Session: clearSession(id, h), Err: err})
	}
	if gen != from {
		if gen == from+1 {
			if cur, err := cur(); err == nil && sameTokens(cur, t) {
				return 1, nil
			}
		}
		return 0, fmt.Errorf("update tokens of session %s from generation %d: %w", id, from, broker.ErrGenerationMoved)
	}
	tok, err := seal()
	if err != nil {
		return 0, fmt.Errorf("update tokens: %w", err)
	}
	res, err := updateTokensScript.Run(ctx, s.client, []string{key, lockKey(id)},
		strconv.FormatUint(from, 10), strconv.FormatUint(from+1, 10), held.token, tok, version).Int()
	s.forget(id)
	if err != nil {
		return 0, storeError(ctx, "update tokens of session "+id, err)
	}
	switch res {
	case 1, 4:
		return res, nil
	case 0:
		return 0, fmt.Errorf("update tokens of session %s: %w", id, broker.ErrNotFound)
	case 2:
		return 0, fmt.Errorf("update tokens of session %s from generation %d: %w", id, from, broker.ErrGenerationMoved)
	default:
		return 0, fmt.Errorf("update tokens of session %s: %w", id, broker.ErrLeaseLost)
	}
}

// Touch records a use and moves the key's expiry, in a script so that a
// session deleted meanwhile stays deleted and an older use never replaces a
// newer one.
func (s *Store) Touch(ctx context.Context, id string, at, expiresAt time.Time) error {
	if !broker.ValidSessionID(id) {
		return fmt.Errorf("touch session: %w", broker.ErrNotFound)
	}
	lu, err := s.sealLastUse(id, at)
	if err != nil {
		return fmt.Errorf("touch session %s: %w", id, err)
	}
	touched, err := touchScript.Run(ctx, s.client, []string{sessionKey(id)}, at.UnixMilli(), expiresAt.UnixMilli(), lu).Int()
	s.forget(id)
	if err != nil {
		return storeError(ctx, "touch session "+id, err)
	}
	if touched == 0 {
		return fmt.Errorf("touch session %s: %w", id, broker.ErrNotFound)
	}
	return nil
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
// session key is gone (idle expiry, end) once it has met them: a session key
// never comes back once gone, so removing its entry loses nothing. Records
// that do not open are listed, flagged Unreadable, so that they can be
// ended; one whose clear absolute expiry has passed is left out, since
// Redis removes it by then anyway.
func (s *Store) list(ctx context.Context, op, index string) ([]*broker.Session, error) {
	now := s.now()
	ids, err := indexListScript.Run(ctx, s.client, []string{index}, now.UnixMilli()).StringSlice()
	if err != nil {
		return nil, storeError(ctx, op, err)
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
			return nil, storeError(ctx, op, err)
		}
	}
	out := make([]*broker.Session, 0, len(live))
	for i, id := range live {
		h := cmds[i].Val()
		if len(h) == 0 {
			gone = append(gone, id)
			continue
		}
		sess, err := s.decode(id, h, true)
		var unreadable *broker.UnreadableError
		switch {
		case errors.As(err, &unreadable):
			if end := unreadable.Session.AbsoluteExpiry; end.IsZero() || now.Before(end) {
				out = append(out, unreadable.Session)
			}
		case err != nil:
			return nil, fmt.Errorf("%s: %w", op, err)
		case !sess.Ended(now):
			// Redis expires keys within a millisecond or so; the clock
			// decides.
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
		return storeError(ctx, "ping", err)
	}
	return nil
}
