package sessions

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// Fields a tombstone holds besides those of the record it replaced.
const (
	fieldEndActor  = "end_actor"
	fieldEndAction = "end_action"
	fieldEndReason = "end_reason"
	fieldEndDetail = "end_detail"
	fieldEndRevoke = "end_revoke" // "1" to revoke the refresh token at the IdP
	fieldEndAt     = "end_at"     // Unix ms
	// fieldDone is "1" once the end's work is done; its tokens are then
	// forgotten.
	fieldDone = "done"
)

// Two more fields are read and written by the scripts alone: end_token,
// random per End call, so that a repeat of the call can tell its own end
// from another caller's; and claim_until, the Unix ms until which a
// ClaimEnds caller owns the end's work ("0" when unclaimed).

// End ends a session in three steps. First the id goes into the outbox
// (endsKey), so that a crash after the next step leaves the end's work
// findable by ClaimEnds. Then one script deletes the session and writes its
// tombstone, so that of concurrent calls exactly one sees the session.
// Last, best effort, the session leaves its indexes: an entry left behind is
// pruned when its index is next listed.
//
// The outbox entry is never removed here, even by a call that found nothing
// to end: a concurrent call that did end the session shares it.
// CompleteEnd removes it, and ClaimEnds removes those of ends that found
// nothing.
func (s *Store) End(ctx context.Context, id string, why broker.EndReason) (*broker.Ending, error) {
	if !broker.ValidSessionID(id) {
		return nil, fmt.Errorf("end session: %w", broker.ErrNotFound)
	}
	token := rand.Text()
	now := s.now()
	// A plain ZADD: an entry left by an earlier call that ended nothing
	// (IfGeneration refused) must not make this end look old enough for
	// ClaimEnds while this caller is still doing the work itself.
	err := s.client.ZAdd(ctx, endsKey, redis.Z{Score: float64(now.UnixMilli()), Member: id}).Err()
	if err != nil {
		return nil, storeError(ctx, "end session "+id, err)
	}
	revoke := "0"
	if why.RevokeAtIdP {
		revoke = "1"
	}
	res, err := endScript.Run(ctx, s.client, []string{sessionKey(id), endedKey(id), lockKey(id)},
		token, strconv.FormatUint(why.IfGeneration, 10),
		why.Actor, why.Action, why.Reason, why.Detail, revoke, now.UnixMilli(),
		broker.EndRetention.Milliseconds()).Slice()
	s.forget(id)
	if err != nil {
		return nil, storeError(ctx, "end session "+id, err)
	}
	switch status, _ := res[0].(int64); status {
	case 0:
		return nil, fmt.Errorf("end session %s: %w", id, broker.ErrNotFound)
	case 2:
		return nil, fmt.Errorf("end session %s at generation %d: %w", id, why.IfGeneration, broker.ErrGenerationMoved)
	}
	h := fieldMap(res[1])
	s.opened.drop(id)

	pipe := s.client.Pipeline()
	pipe.ZRem(ctx, subjectKey(h[fieldSub]), id)
	pipe.ZRem(ctx, expiryKey(id), id)
	if sid := h[fieldSID]; sid != "" {
		pipe.ZRem(ctx, sidKey(sid), id)
	}
	// The session is gone whatever the index cleanup does.
	_, _ = pipe.Exec(ctx)

	return s.decodeEnding(id, h), nil
}

// Ending returns the tombstone of a session that ended within
// broker.EndRetention.
func (s *Store) Ending(ctx context.Context, id string) (*broker.Ending, error) {
	if !broker.ValidSessionID(id) {
		return nil, fmt.Errorf("ending of session: %w", broker.ErrNotFound)
	}
	h, err := s.client.HGetAll(ctx, endedKey(id)).Result()
	if err != nil {
		return nil, storeError(ctx, "ending of session "+id, err)
	}
	if len(h) == 0 {
		return nil, fmt.Errorf("ending of session %s: %w", id, broker.ErrNotFound)
	}
	return s.decodeEnding(id, h), nil
}

// CompleteEnd marks an end's work done and forgets its tokens, then takes
// it out of the outbox. Taking it out is housekeeping: ClaimEnds drops the
// entries of ends that are done.
func (s *Store) CompleteEnd(ctx context.Context, id string) error {
	if !broker.ValidSessionID(id) {
		return fmt.Errorf("complete end of session: %w", broker.ErrNotFound)
	}
	found, err := completeEndScript.Run(ctx, s.client, []string{endedKey(id)}).Int()
	if err != nil {
		return storeError(ctx, "complete end of session "+id, err)
	}
	_ = s.client.ZRem(ctx, endsKey, id).Err()
	if found == 0 {
		return fmt.Errorf("complete end of session %s: %w", id, broker.ErrNotFound)
	}
	return nil
}

// claimPage is how many outbox entries ClaimEnds reads at least per round
// trip.
const claimPage = 64

// ClaimEnds walks the outbox from its oldest entry, claiming the ends whose
// work is not done and that nobody else holds, until it has limit of them
// or has seen every entry old enough. Each claim is a script on the
// tombstone alone, so this works on Cluster, where the outbox and the
// tombstones live on different nodes.
// staleIntent is how old an outbox entry of a session that still lives, with
// no tombstone, must be before ClaimEnds drops it.
const staleIntent = 10 * time.Minute

func (s *Store) ClaimEnds(ctx context.Context, olderThan, claimFor time.Duration, limit int) ([]*broker.Ending, error) {
	if limit < 1 {
		return nil, nil
	}
	now := s.now()
	cutoff := now.Add(-olderThan).UnixMilli()
	until := now.Add(claimFor).UnixMilli()
	var (
		claimed []*broker.Ending
		offset  int64
	)
	for len(claimed) < limit {
		page := int64(max(claimPage, limit-len(claimed)))
		entries, err := s.client.ZRangeByScoreWithScores(ctx, endsKey, &redis.ZRangeBy{
			Min: "-inf", Max: strconv.FormatInt(cutoff, 10), Offset: offset, Count: page,
		}).Result()
		if err != nil {
			return claimed, storeError(ctx, "claim ends", err)
		}
		ids := make([]string, len(entries))
		var gone []any
		for i, entry := range entries {
			id, _ := entry.Member.(string)
			ids[i] = id
			if len(claimed) == limit {
				break
			}
			if !broker.ValidSessionID(id) {
				gone = append(gone, id)
				continue
			}
			res, err := claimEndScript.Run(ctx, s.client, []string{endedKey(id), sessionKey(id)},
				now.UnixMilli(), until, cutoff).Slice()
			if err != nil {
				return claimed, storeError(ctx, "claim end of session "+id, err)
			}
			switch status, _ := res[0].(int64); status {
			case 0:
				gone = append(gone, id)
			case 3:
				// The session lives and has no tombstone: an End between
				// its two steps, or one that its condition refused. No End
				// takes staleIntent between them.
				if int64(entry.Score) < now.Add(-staleIntent).UnixMilli() {
					gone = append(gone, id)
				}
			case 2:
				claimed = append(claimed, s.decodeEnding(id, fieldMap(res[1])))
			}
		}
		if len(gone) > 0 {
			// Housekeeping: a later call removes what this one could not.
			if err := s.client.ZRem(ctx, endsKey, gone...).Err(); err != nil {
				offset += int64(len(gone))
			}
		}
		if int64(len(ids)) < page {
			break
		}
		offset += int64(len(ids) - len(gone))
	}
	return claimed, nil
}

// decodeEnding reads a tombstone. Its Session is the record as it ended,
// Unreadable when the record does not open; once the end's work is done the
// tokens and claims are gone, and the rest is read without them.
func (s *Store) decodeEnding(id string, h map[string]string) *broker.Ending {
	done := h[fieldDone] == "1"
	sess, err := s.decode(id, h, !done)
	if unreadable := (*broker.UnreadableError)(nil); errors.As(err, &unreadable) {
		sess = unreadable.Session
	}
	at, _ := strconv.ParseInt(h[fieldEndAt], 10, 64)
	return &broker.Ending{
		Session: sess,
		Why: broker.EndReason{
			Actor:       h[fieldEndActor],
			Action:      h[fieldEndAction],
			Reason:      h[fieldEndReason],
			Detail:      h[fieldEndDetail],
			RevokeAtIdP: h[fieldEndRevoke] == "1",
		},
		At:   time.UnixMilli(at).UTC(),
		Done: done,
	}
}

// fieldMap turns a script's HGETALL reply into a map.
func fieldMap(reply any) map[string]string {
	flat, _ := reply.([]any)
	h := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		k, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		h[k] = v
	}
	return h
}
