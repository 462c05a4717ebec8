package sessions

import (
	"context"
	"fmt"
	"hash/fnv"

	"github.com/redis/go-redis/v9"
)

// expiryShards is how many sorted sets the expiry index is spread over. One
// set for every session would be a single hot key on Redis Cluster, taking a
// write of every login on one node; sixteen spread the writes over sixteen
// hash tags while a full walk stays sixteen calls. Package migrations
// backfills the same keys and must agree on the shard of an id.
const expiryShards = 16

// expiryKey names the expiry index shard of a session: a sorted set of
// session ids scored by absolute expiry (Unix ms).
func expiryKey(id string) string {
	h := fnv.New32a()
	h.Write([]byte(id))
	return expiryShardKey(int(h.Sum32() % expiryShards))
}

func expiryShardKey(n int) string { return fmt.Sprintf("%sexpiry:{%x}", keyPrefix, n) }

// CountSessions returns how many sessions have not reached their absolute
// expiry, from the expiry index rather than a SCAN of the whole keyspace.
// A session that ended early (idle timeout) stays counted until its
// absolute expiry, so the figure is an upper bound.
func (s *Store) CountSessions(ctx context.Context) (int64, error) {
	after := fmt.Sprintf("(%d", s.now().UnixMilli())
	pipe := s.client.Pipeline()
	counts := make([]*redis.IntCmd, expiryShards)
	for n := range expiryShards {
		counts[n] = pipe.ZCount(ctx, expiryShardKey(n), after, "+inf")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, storeError(ctx, "count sessions", err)
	}
	var total int64
	for _, c := range counts {
		total += c.Val()
	}
	return total, nil
}
