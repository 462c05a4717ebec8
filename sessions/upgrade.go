package sessions

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// Record version 1, which UpgradeRecords converts: the same clear fields
// without gen and lu, the last use in the clear only, and the claims sealed
// together with the tokens in tok, whose additional data bound the session
// id and the field name alone.
const recordVersion1 = "1"

func v1TokAAD(id string) []byte { return []byte("broker:session:" + id + "\x00" + fieldTok) }

// v1Sealed is the plaintext of a version 1 tok field.
type v1Sealed struct {
	sealedTokens
	Claims map[string]any `json:"claims,omitempty"`
}

// UpgradeRecords converts the version 1 records among ids to version 2 in
// place: the claims get a field of their own, the last use is sealed, and
// every sealed field is bound to the clear fields (see record.go), at
// generation 1 (or the one a refresh by this broker gave it). It is migration step 3, and implements
// migrations.Records. Ids without a record, and records at another version,
// are left alone, so that running it again is harmless.
//
// Each conversion is a compare-and-set on every field it read, so that a
// record a broker of the old version changes meanwhile is converted from
// its new state, never overwritten with the old one. A version 1 record
// that cannot be opened (sealed under a key the keyring lacks, or damaged)
// is left as it is and its id returned in unreadable; the brokers of the
// new version report it unreadable, and `broker rekey --remove-unreadable`
// ends it.
func (s *Store) UpgradeRecords(ctx context.Context, ids []string) (upgraded int, unreadable []string, err error) {
	pending := ids
	for attempt := 0; len(pending) > 0; attempt++ {
		if attempt == rekeyAttempts {
			return upgraded, unreadable, fmt.Errorf("%d sessions changed at each of %d attempts, starting with session %s: run the migration again", len(pending), rekeyAttempts, pending[0])
		}
		pipe := s.client.Pipeline()
		reads := make([]*redis.MapStringStringCmd, len(pending))
		for i, id := range pending {
			reads[i] = pipe.HGetAll(ctx, sessionKey(id))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return upgraded, unreadable, storeError(ctx, "read sessions to upgrade", err)
		}
		pipe = s.client.Pipeline()
		var writing []string
		var writes []*redis.Cmd
		for i, id := range pending {
			h := reads[i].Val()
			if h[fieldVersion] != recordVersion1 || !broker.ValidSessionID(id) {
				continue
			}
			args, err := s.upgradeArgs(id, h)
			if err != nil {
				unreadable = append(unreadable, id)
				continue
			}
			writing = append(writing, id)
			writes = append(writes, casScript.Eval(ctx, pipe, []string{sessionKey(id)}, args...))
		}
		if len(writes) > 0 {
			if _, err := pipe.Exec(ctx); err != nil {
				return upgraded, unreadable, storeError(ctx, "rewrite upgraded sessions", err)
			}
		}
		var changed []string
		for i, w := range writes {
			switch n, _ := w.Int(); n {
			case 1:
				upgraded++
			case 2:
				changed = append(changed, writing[i])
			}
		}
		pending = changed
	}
	return upgraded, unreadable, nil
}

// upgradeArgs returns the arguments of casScript that turn a version 1
// record into a version 2 one. Its errors name the field, never a value.
func (s *Store) upgradeArgs(id string, h map[string]string) ([]any, error) {
	plaintext, err := s.keys.Open([]byte(h[fieldTok]), v1TokAAD(id))
	if err != nil {
		return nil, err
	}
	var old v1Sealed
	if err := json.Unmarshal(plaintext, &old); err != nil {
		return nil, errors.New("field tok does not decode")
	}
	b, gen, lastUse, err := parseVersion1(h)
	if err != nil {
		return nil, err
	}
	claims, err := s.sealClaims(id, b, old.Claims)
	if err != nil {
		return nil, err
	}
	tok, err := s.sealTokens(id, b, gen, old.tokens())
	if err != nil {
		return nil, err
	}
	lu, err := s.sealLastUse(id, time.UnixMilli(lastUse))
	if err != nil {
		return nil, err
	}
	// Every field the new seals were made from must be as read. A field
	// the record lacks (an empty sid may be) cannot be compared and is
	// bound as empty.
	expect := []any{fieldVersion, recordVersion1, fieldTok, h[fieldTok], fieldLastUsedAt, h[fieldLastUsedAt]}
	for _, f := range []string{fieldGen, fieldSecretHash, fieldSub, fieldSID, fieldClientID, fieldCreatedAt, fieldAbsExp, fieldIdle} {
		if v, ok := h[f]; ok {
			expect = append(expect, f, v)
		}
	}
	args := append([]any{len(expect) / 2}, expect...)
	return append(args,
		fieldVersion, recordVersion,
		fieldGen, gen,
		fieldClaims, claims,
		fieldTok, tok,
		fieldLU, lu,
	), nil
}

// A store one schema version behind this broker's (schema 2, before step
// 3 converted the records) is served too, so that `broker migrate` can run
// while the brokers serve: its records are read in either layout, and new
// ones are written at record version 1 until the store is at
// SchemaRecordsV2, so that brokers of the previous release, which read
// version 1 only, open every session during a rolling upgrade.
//
// A record is never moved from version 1 to 2 but by UpgradeRecords: a
// refresh of a version 1 record writes version 1 tokens, conditional on the
// record still being at version 1.
const (
	// SchemaVersionKey is migrations.VersionKey, which this package cannot
	// import (the migrations tests use this package).
	SchemaVersionKey = "broker:schema_version"
	// SchemaRecordsV2 is the schema version from which new records are
	// written at record version 2.
	SchemaRecordsV2 = 3
)

// writesVersion1 reports whether new records are to be written at version
// 1: the store records a schema version below SchemaRecordsV2. A store
// with no recorded version (a new one, before its first migration) is
// written at the current version. It reads the version on every call
// (once per login), so that a broker changes layout at the moment the
// migration records its version, but for a write already under way.
func (s *Store) writesVersion1(ctx context.Context) (bool, error) {
	raw, err := s.client.Get(ctx, SchemaVersionKey).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, storeError(ctx, "read schema version", err)
	}
	v, err := strconv.Atoi(raw)
	if err != nil {
		return false, fmt.Errorf("read schema version: %s is not a version number", SchemaVersionKey)
	}
	return v < SchemaRecordsV2, nil
}

// version1Fields returns the fields of sess as a version 1 record: the
// claims sealed with the tokens in tok, bound to the id and field alone,
// and the last use in the clear.
func (s *Store) version1Fields(sess *broker.Session) ([]any, error) {
	tok, err := s.sealVersion1(sess.ID, sess.Tokens, sess.Claims)
	if err != nil {
		return nil, err
	}
	return []any{
		fieldVersion, recordVersion1,
		fieldSecretHash, hex.EncodeToString(sess.SecretHash),
		fieldSub, sess.Subject,
		fieldSID, sess.SID,
		fieldClientID, sess.ClientID,
		fieldCreatedAt, sess.CreatedAt.UnixMilli(),
		fieldAbsExp, sess.AbsoluteExpiry.UnixMilli(),
		fieldIdle, sess.IdleTimeout.Milliseconds(),
		fieldLastUsedAt, sess.LastUsedAt.UnixMilli(),
		fieldIP, sess.IP,
		fieldUA, sess.UserAgent,
		fieldTok, tok,
	}, nil
}

func (s *Store) sealVersion1(id string, t broker.Tokens, claims map[string]any) ([]byte, error) {
	plaintext, err := json.Marshal(v1Sealed{sealedTokens: tokensOf(t), Claims: claims})
	if err != nil {
		return nil, fmt.Errorf("session %s: encode tokens: %T", id, err)
	}
	return s.keys.Seal(plaintext, v1TokAAD(id))
}

// parseVersion1 reads the clear fields of a version 1 record and its
// generation: the field gen a refresh by this broker adds, 1 without it.
// Its errors name the field, never its value.
func parseVersion1(h map[string]string) (binding, uint64, int64, error) {
	var b binding
	var err error
	if b.secretHash, err = hex.DecodeString(h[fieldSecretHash]); err != nil {
		return binding{}, 0, 0, fmt.Errorf("field %s is not hex", fieldSecretHash)
	}
	b.sub, b.sid, b.clientID = h[fieldSub], h[fieldSID], h[fieldClientID]
	var lastUse int64
	for _, f := range []struct {
		name string
		to   *int64
	}{{fieldCreatedAt, &b.createdAt}, {fieldAbsExp, &b.absExp}, {fieldIdle, &b.idle}, {fieldLastUsedAt, &lastUse}} {
		if *f.to, err = strconv.ParseInt(h[f.name], 10, 64); err != nil {
			return binding{}, 0, 0, fmt.Errorf("field %s is not an integer", f.name)
		}
	}
	gen := uint64(1)
	if raw, ok := h[fieldGen]; ok {
		if gen, err = strconv.ParseUint(raw, 10, 64); err != nil || gen == 0 {
			return binding{}, 0, 0, fmt.Errorf("field %s is not a positive integer", fieldGen)
		}
	}
	return b, gen, lastUse, nil
}

// openVersion1 turns a version 1 record into a Session. Without sealed,
// tok is neither opened nor required.
func (s *Store) openVersion1(id string, h map[string]string, sealed bool) (*broker.Session, error) {
	b, gen, lastUse, err := parseVersion1(h)
	if err != nil {
		return nil, err
	}
	sess := b.session(id, gen, h)
	sess.LastUsedAt = time.UnixMilli(lastUse).UTC()
	if sealed {
		plaintext, err := s.keys.Open([]byte(h[fieldTok]), v1TokAAD(id))
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", fieldTok, err)
		}
		var old v1Sealed
		if err := json.Unmarshal(plaintext, &old); err != nil {
			return nil, fmt.Errorf("field %s does not decode", fieldTok)
		}
		sess.Tokens, sess.Claims = old.tokens(), old.Claims
	}
	return sess, nil
}
