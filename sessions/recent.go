package sessions

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// maxRecentRounds bounds the index reads of one ListRecent call: each round
// reads up to limit entries of every expiry shard and the records of the
// newest limit of them. Entries whose session is gone (ended, idle) are
// pruned as they are met, so a short page is rare and the next one starts
// where this one stopped.
const maxRecentRounds = 4

// recentEntry is an expiry index entry: a session id and its absolute
// expiry, the index's score.
type recentEntry struct {
	pos   broker.SessionPosition
	shard int
}

// ListRecent walks the expiry index, all sixteen shards merged, in
// broker.SessionOrder. Every shard is read in the same order (Redis sorts
// members of equal score by their bytes, which ZREVRANGEBYSCORE reverses),
// so a page is the newest limit entries of the union past the cursor: for
// each shard, the entries scored at most the cursor's expiry, less those
// that share its expiry but do not sort after its id. Records are then read
// in one pipeline; an entry whose record is gone is pruned and skipped.
func (s *Store) ListRecent(ctx context.Context, after broker.SessionPosition, limit int) ([]*broker.Session, broker.SessionPosition, error) {
	const op = "list recent sessions"
	if limit < 1 {
		return nil, broker.SessionPosition{}, nil
	}
	now := s.now()
	var out []*broker.Session
	for range maxRecentRounds {
		entries, more, err := s.recentEntries(ctx, after, limit-len(out), now)
		if err != nil {
			return nil, broker.SessionPosition{}, storeError(ctx, op, err)
		}
		if len(entries) == 0 {
			return out, broker.SessionPosition{}, nil
		}
		cmds := make([]*redis.MapStringStringCmd, len(entries))
		_, err = s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, e := range entries {
				if broker.ValidSessionID(e.pos.ID) {
					cmds[i] = pipe.HGetAll(ctx, sessionKey(e.pos.ID))
				}
			}
			return nil
		})
		if err != nil {
			return nil, broker.SessionPosition{}, storeError(ctx, op, err)
		}
		gone := map[int][]any{}
		for i, e := range entries {
			var h map[string]string
			if cmds[i] != nil {
				h = cmds[i].Val()
			}
			if len(h) == 0 {
				gone[e.shard] = append(gone[e.shard], e.pos.ID)
				continue
			}
			sess, err := s.decode(e.pos.ID, h, true)
			var unreadable *broker.UnreadableError
			switch {
			case errors.As(err, &unreadable):
				out = append(out, unreadable.Session)
			case err != nil:
				return nil, broker.SessionPosition{}, fmt.Errorf("%s: %w", op, err)
			case !sess.Ended(now):
				// Redis expires keys within a millisecond or so; the
				// clock decides.
				out = append(out, sess)
			}
		}
		if len(gone) > 0 {
			// Pruning is housekeeping: the answer stands without it. A
			// session key never comes back once gone, and End removes its
			// own entry likewise.
			pipe := s.client.Pipeline()
			for shard, ids := range gone {
				pipe.ZRem(ctx, expiryShardKey(shard), ids...)
			}
			_, _ = pipe.Exec(ctx)
		}
		after = entries[len(entries)-1].pos
		if !more {
			return out, broker.SessionPosition{}, nil
		}
		if len(out) >= limit {
			break
		}
	}
	return out, after, nil
}

// recentEntries returns the next limit entries of the merged expiry index
// past after, in broker.SessionOrder, skipping those past their absolute
// expiry at now; more reports that entries may follow them.
func (s *Store) recentEntries(ctx context.Context, after broker.SessionPosition, limit int, now time.Time) (entries []recentEntry, more bool, err error) {
	hi := "+inf"
	ties := make([]int64, expiryShards)
	if !after.IsZero() {
		// Entries sharing the cursor's expiry come first in each shard;
		// those not past the cursor are read and dropped, so ask for as
		// many more.
		hi = strconv.FormatInt(after.AbsoluteExpiry.UnixMilli(), 10)
		pipe := s.client.Pipeline()
		counts := make([]*redis.IntCmd, expiryShards)
		for n := range expiryShards {
			counts[n] = pipe.ZCount(ctx, expiryShardKey(n), hi, hi)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, false, err
		}
		for n, c := range counts {
			ties[n] = c.Val()
		}
	}
	lo := "(" + strconv.FormatInt(now.UnixMilli(), 10)
	pipe := s.client.Pipeline()
	ranges := make([]*redis.ZSliceCmd, expiryShards)
	for n := range expiryShards {
		ranges[n] = pipe.ZRevRangeByScoreWithScores(ctx, expiryShardKey(n), &redis.ZRangeBy{
			Max: hi, Min: lo, Count: int64(limit) + ties[n],
		})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, false, err
	}
	for n, r := range ranges {
		zs := r.Val()
		if int64(len(zs)) == int64(limit)+ties[n] {
			// This shard may hold more past what it returned.
			more = true
		}
		for _, z := range zs {
			id, _ := z.Member.(string)
			e := recentEntry{pos: broker.SessionPosition{AbsoluteExpiry: time.UnixMilli(int64(z.Score)).UTC(), ID: id}, shard: n}
			if !after.IsZero() && broker.SessionOrder(e.pos, after) <= 0 {
				continue
			}
			entries = append(entries, e)
		}
	}
	slices.SortFunc(entries, func(a, b recentEntry) int { return broker.SessionOrder(a.pos, b.pos) })
	if len(entries) > limit {
		entries, more = entries[:limit], true
	}
	return entries, more, nil
}
