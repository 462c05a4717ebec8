package sessions

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// RekeyReport counts what Rekey found for each stored session.
type RekeyReport struct {
	// Rekeyed sessions were resealed under the keyring's first key.
	Rekeyed int
	// Current sessions were sealed under the first key already.
	Current int
	// Gone sessions ended between the walk seeing them and the rewrite.
	Gone int
	// Unreadable sessions are sealed under a key the keyring lacks, or
	// damaged; they were left alone, and cannot be used anyway.
	Unreadable int
}

// rekeyAttempts bounds how often Rekey retries one session whose tokens keep
// changing under it, which takes a refresh at every attempt.
const rekeyAttempts = 5

// rekeyScript replaces the sealed tokens of a session (KEYS[1]) with
// ARGV[2] only if they are still ARGV[1], the blob the new one was made
// from: a refresh that wrote newer tokens meanwhile is never overwritten
// with the older ones. It returns 1 when replaced, 0 when the session is
// gone, 2 when its tokens changed. HSET keeps the key's expiry.
var rekeyScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'tok')
if not cur then return 0 end
if cur ~= ARGV[1] then return 2 end
redis.call('HSET', KEYS[1], 'tok', ARGV[2])
return 1
`)

// Rekey reseals the tokens of every stored session under the keyring's
// first key, so that the keys after it can be retired once it reports no
// unreadable session. It walks the keyspace with SCAN, which sees every
// session that lives throughout the walk; sessions created meanwhile are
// sealed under the first key already. Each rewrite is a compare-and-set, so
// Rekey is safe beside serving brokers and safe to run again or after an
// interruption: a second run finds every session current.
func (s *Store) Rekey(ctx context.Context) (RekeyReport, error) {
	var (
		mu    sync.Mutex // batches of a Cluster's masters run at once
		total RekeyReport
	)
	err := scanSessionIDs(ctx, s.client, func(ids []string) error {
		r, err := s.rekeyBatch(ctx, ids)
		mu.Lock()
		defer mu.Unlock()
		total.Rekeyed += r.Rekeyed
		total.Current += r.Current
		total.Gone += r.Gone
		total.Unreadable += r.Unreadable
		return err
	})
	return total, err
}

// rekeyBatch rekeys a batch in two pipelined round trips, then retries, as
// a smaller batch, the sessions whose tokens changed in between.
func (s *Store) rekeyBatch(ctx context.Context, ids []string) (RekeyReport, error) {
	var r RekeyReport
	pending := ids
	for attempt := 0; len(pending) > 0; attempt++ {
		if attempt == rekeyAttempts {
			return r, fmt.Errorf("%d sessions changed at each of %d attempts, starting with session %s: run rekey again", len(pending), rekeyAttempts, pending[0])
		}
		pipe := s.client.Pipeline()
		reads := make([]*redis.StringCmd, len(pending))
		for i, id := range pending {
			reads[i] = pipe.HGet(ctx, sessionKey(id), fieldTok)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return r, storeError("read sessions to rekey", err)
		}
		pipe = s.client.Pipeline()
		var writing []string
		var writes []*redis.Cmd
		for i, id := range pending {
			blob, err := reads[i].Bytes()
			switch {
			case errors.Is(err, redis.Nil):
				r.Gone++
				continue
			case s.keys.sealedWithPrimary(blob):
				r.Current++
				continue
			}
			plaintext, err := s.keys.Open(blob, tokAAD(id))
			if err != nil {
				r.Unreadable++
				continue
			}
			resealed, err := s.keys.Seal(plaintext, tokAAD(id))
			if err != nil {
				return r, fmt.Errorf("reseal session %s: %w", id, err)
			}
			writing = append(writing, id)
			writes = append(writes, rekeyScript.Eval(ctx, pipe, []string{sessionKey(id)}, blob, resealed))
		}
		if len(writes) == 0 {
			return r, nil
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return r, storeError("rewrite rekeyed sessions", err)
		}
		var changed []string
		for i, w := range writes {
			switch n, _ := w.Int(); n {
			case 1:
				r.Rekeyed++
			case 0:
				r.Gone++
			default:
				changed = append(changed, writing[i])
			}
		}
		pending = changed
	}
	return r, nil
}

// Primary returns the id of the key that seals new values.
func (k *Keyring) Primary() string { return k.primary }

// sealedWithPrimary reports whether a sealed value names the first key in
// its header. It does not authenticate the value: Rekey leaves such values
// as they are, whatever they hold.
func (k *Keyring) sealedWithPrimary(sealed []byte) bool {
	if len(sealed) < 2 || sealed[0] != sealFormat {
		return false
	}
	end := 2 + int(sealed[1])
	return len(sealed) >= end && string(sealed[2:end]) == k.primary
}

// scanBatch is the COUNT hint of each SCAN call and so roughly how many
// sessions one pipeline carries.
const scanBatch = 1000

// scanSessionIDs calls fn with the ids of the stored sessions, a batch at a
// time, on every master of a Cluster, since each holds its own keyspace.
// SCAN may return a key twice; callers are idempotent. fn may run
// concurrently for different masters.
func scanSessionIDs(ctx context.Context, c redis.UniversalClient, fn func(ids []string) error) error {
	if cc, ok := c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return scanNode(ctx, node, fn)
		})
	}
	return scanNode(ctx, c, fn)
}

func scanNode(ctx context.Context, c redis.Cmdable, fn func(ids []string) error) error {
	var cursor uint64
	for {
		keys, next, err := c.Scan(ctx, cursor, sessionKey("*"), scanBatch).Result()
		if err != nil {
			return storeError("scan sessions", err)
		}
		ids := keys[:0]
		for _, k := range keys {
			// The pattern matches the refresh leases too, which end after
			// the '}'; their id is not a valid session id.
			id, ok := strings.CutSuffix(strings.TrimPrefix(k, keyPrefix+"session:{"), "}")
			if ok && broker.ValidSessionID(id) {
				ids = append(ids, id)
			}
		}
		if len(ids) > 0 {
			if err := fn(ids); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}
