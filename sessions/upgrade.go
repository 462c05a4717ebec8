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
// generation 1. It is migration step 3, and implements
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
	var b binding
	if b.secretHash, err = hex.DecodeString(h[fieldSecretHash]); err != nil {
		return nil, errors.New("field secret_hash is not hex")
	}
	b.sub, b.sid, b.clientID = h[fieldSub], h[fieldSID], h[fieldClientID]
	var lastUse int64
	for _, f := range []struct {
		name string
		to   *int64
	}{{fieldCreatedAt, &b.createdAt}, {fieldAbsExp, &b.absExp}, {fieldIdle, &b.idle}, {fieldLastUsedAt, &lastUse}} {
		if *f.to, err = strconv.ParseInt(h[f.name], 10, 64); err != nil {
			return nil, fmt.Errorf("field %s is not an integer", f.name)
		}
	}
	claims, err := s.sealClaims(id, b, old.Claims)
	if err != nil {
		return nil, err
	}
	tok, err := s.sealTokens(id, b, 1, old.tokens())
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
	for _, f := range []string{fieldSecretHash, fieldSub, fieldSID, fieldClientID, fieldCreatedAt, fieldAbsExp, fieldIdle} {
		if v, ok := h[f]; ok {
			expect = append(expect, f, v)
		}
	}
	args := append([]any{len(expect) / 2}, expect...)
	return append(args,
		fieldVersion, recordVersion,
		fieldGen, 1,
		fieldClaims, claims,
		fieldTok, tok,
		fieldLU, lu,
	), nil
}
