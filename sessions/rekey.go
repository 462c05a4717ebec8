package sessions

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// RekeyOptions configure Rekey. The zero value rekeys and reports.
type RekeyOptions struct {
	// RemoveUnreadable ends every session whose record cannot be opened
	// with this keyring, through End, so that the serving brokers' outbox
	// worker audits each. Run it with the keyring the brokers serve with:
	// a session unreadable to a smaller keyring may well be readable to
	// theirs.
	RemoveUnreadable bool
}

// RekeyReport counts what Rekey found for each stored session.
type RekeyReport struct {
	// Rekeyed sessions were resealed under the keyring's first key.
	Rekeyed int
	// Current sessions were sealed under the first key already.
	Current int
	// Gone sessions ended between the walk seeing them and the rewrite.
	Gone int
	// Unreadable sessions cannot be opened: sealed under a key the keyring
	// lacks, damaged or edited, or of an older layout that the migration
	// could not convert. They cannot be used anyway; they were left alone
	// unless RemoveUnreadable ended them.
	Unreadable int
	// UnreadableIDs names the first 20 (maxReportedIDs) of them, in no
	// particular order.
	UnreadableIDs []string
	// Removed counts the unreadable sessions that RemoveUnreadable ended.
	Removed int
}

// maxReportedIDs bounds the ids a report names: enough to look into, few
// enough for a terminal.
const maxReportedIDs = 20

func (r *RekeyReport) add(o RekeyReport) {
	r.Rekeyed += o.Rekeyed
	r.Current += o.Current
	r.Gone += o.Gone
	r.Unreadable += o.Unreadable
	r.Removed += o.Removed
	for _, id := range o.UnreadableIDs {
		if len(r.UnreadableIDs) < maxReportedIDs {
			r.UnreadableIDs = append(r.UnreadableIDs, id)
		}
	}
}

// rekeyAttempts bounds how often Rekey retries one session whose record
// keeps changing under it, which takes a refresh or a use at every attempt.
const rekeyAttempts = 5

// rekeyEnd is why RemoveUnreadable ends a session.
var rekeyEnd = broker.EndReason{
	Actor:  broker.ActorBroker,
	Action: broker.ActionSessionRevoke,
	Reason: "unreadable",
	Detail: "removed by broker rekey: the record cannot be read",
}

// Rekey reseals the sealed fields (claims, tokens, last use) of every
// stored session under the keyring's first key, so that the keys after it
// can be retired once it reports no unreadable session. It walks the
// keyspace with SCAN, which sees every session that lives throughout the
// walk; sessions created meanwhile are sealed under the first key already.
// Each rewrite is a compare-and-set on every field it replaces, so Rekey is
// safe beside serving brokers and safe to run again or after an
// interruption: a second run finds every session current.
func (s *Store) Rekey(ctx context.Context, opts RekeyOptions) (RekeyReport, error) {
	var (
		mu    sync.Mutex // batches of a Cluster's masters run at once
		total RekeyReport
	)
	err := scanSessionIDs(ctx, s.client, func(ids []string) error {
		r, err := s.rekeyBatch(ctx, ids, opts)
		mu.Lock()
		defer mu.Unlock()
		total.add(r)
		return err
	})
	return total, err
}

// rekeyBatch rekeys a batch in two pipelined round trips, then retries, as
// a smaller batch, the sessions whose records changed in between.
func (s *Store) rekeyBatch(ctx context.Context, ids []string, opts RekeyOptions) (RekeyReport, error) {
	var r RekeyReport
	pending := ids
	for attempt := 0; len(pending) > 0; attempt++ {
		if attempt == rekeyAttempts {
			return r, fmt.Errorf("%d sessions changed at each of %d attempts, starting with session %s: run rekey again", len(pending), rekeyAttempts, pending[0])
		}
		pipe := s.client.Pipeline()
		reads := make([]*redis.MapStringStringCmd, len(pending))
		for i, id := range pending {
			reads[i] = pipe.HGetAll(ctx, sessionKey(id))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return r, storeError(ctx, "read sessions to rekey", err)
		}
		pipe = s.client.Pipeline()
		var (
			writing, changed []string
			writes           []*redis.Cmd
		)
		for i, id := range pending {
			h := reads[i].Val()
			if len(h) == 0 {
				r.Gone++
				continue
			}
			args, err := s.resealArgs(id, h)
			var unreadable *broker.UnreadableError
			switch {
			case errors.As(err, &unreadable):
				moved, err := s.unreadable(ctx, id, h, opts, &r)
				if err != nil {
					return r, err
				}
				if moved {
					changed = append(changed, id)
				}
				continue
			case err != nil:
				return r, err
			case args == nil:
				r.Current++
				continue
			}
			writing = append(writing, id)
			writes = append(writes, casScript.Eval(ctx, pipe, []string{sessionKey(id)}, args...))
		}
		if len(writes) > 0 {
			if _, err := pipe.Exec(ctx); err != nil {
				return r, storeError(ctx, "rewrite rekeyed sessions", err)
			}
		}
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

// resealArgs returns the arguments of casScript that reseal the fields of a
// record not sealed under the first key, or nil when all of them are. The
// record is opened whole first: only an authentic record is resealed, and
// the plaintexts are resealed as they are, under the same additional data.
func (s *Store) resealArgs(id string, h map[string]string) ([]any, error) {
	if _, err := s.decode(id, h, true); err != nil {
		return nil, err
	}
	type sealedField struct {
		name string
		aad  []byte
	}
	var fields []sealedField
	var expect []any
	if h[fieldVersion] == recordVersion1 {
		// A record of version 1 (upgrade.go) has one sealed field.
		expect = []any{fieldVersion, recordVersion1}
		fields = []sealedField{{fieldTok, v1TokAAD(id)}}
	} else {
		b, gen, _ := parseRecord(h)
		expect = []any{fieldGen, h[fieldGen]}
		fields = []sealedField{
			{fieldClaims, claimsAAD(id, b)},
			{fieldTok, tokAAD(id, b, gen)},
			{fieldLU, luAAD(id)},
		}
	}
	var set []any
	for _, f := range fields {
		blob := []byte(h[f.name])
		if s.keys.sealedWithPrimary(blob) {
			continue
		}
		plaintext, err := s.keys.Open(blob, f.aad)
		if err != nil {
			return nil, fmt.Errorf("reseal session %s: field %s: %w", id, f.name, err)
		}
		resealed, err := s.keys.Seal(plaintext, f.aad)
		if err != nil {
			return nil, fmt.Errorf("reseal session %s: %w", id, err)
		}
		expect = append(expect, f.name, blob)
		set = append(set, f.name, resealed)
	}
	if set == nil {
		return nil, nil
	}
	return append(append([]any{len(expect) / 2}, expect...), set...), nil
}

// unreadable counts a record that does not open and, with
// RemoveUnreadable, ends it. The end is made conditional on the generation
// read, where there is one: a record refreshed meanwhile was readable to
// some broker, and is looked at again (moved) rather than ended.
func (s *Store) unreadable(ctx context.Context, id string, h map[string]string, opts RekeyOptions, r *RekeyReport) (moved bool, err error) {
	if opts.RemoveUnreadable {
		why := rekeyEnd
		why.IfGeneration, _ = strconv.ParseUint(h[fieldGen], 10, 64)
		_, err := s.End(ctx, id, why)
		switch {
		case errors.Is(err, broker.ErrGenerationMoved):
			return true, nil
		case errors.Is(err, broker.ErrNotFound):
			r.Gone++
			return false, nil
		case err != nil:
			return false, fmt.Errorf("remove unreadable session %s: %w", id, err)
		}
		r.Removed++
	}
	r.Unreadable++
	if len(r.UnreadableIDs) < maxReportedIDs {
		r.UnreadableIDs = append(r.UnreadableIDs, id)
	}
	return false, nil
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
			return storeError(ctx, "scan sessions", err)
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
