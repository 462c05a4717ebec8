package migrations

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// expiryShards and expiryShardKey repeat package sessions' layout of the
// expiry index: this package sees only Redis, and a step must keep doing
// what it did even after the broker's own layout moves on.
const expiryShards = 16

func expiryShardKey(id string) string {
	h := fnv.New32a()
	h.Write([]byte(id))
	return fmt.Sprintf("broker:expiry:{%x}", h.Sum32()%expiryShards)
}

// indexByExpiry adds every stored session to the expiry index. ZADD of an
// id already there only sets its score again, so a second run, or a run
// after an interrupted one, ends where a single run would.
func indexByExpiry(ctx context.Context, c redis.UniversalClient) error {
	return scanSessions(ctx, c, func(ids []string) error {
		pipe := c.Pipeline()
		reads := make([]*redis.SliceCmd, len(ids))
		for i, id := range ids {
			reads[i] = pipe.HMGet(ctx, sessionKey(id), "abs_exp")
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("read sessions: %w", err)
		}
		now := time.Now().UnixMilli()
		pipe = c.Pipeline()
		for i, id := range ids {
			raw, _ := reads[i].Val()[0].(string)
			end, err := strconv.ParseInt(raw, 10, 64)
			if err != nil || end <= now {
				// Gone since the SCAN saw it, or ended: nothing to index.
				continue
			}
			shard := expiryShardKey(id)
			pipe.ZAdd(ctx, shard, redis.Z{Score: float64(end), Member: id})
			// Like the store's own writes, the shard lives as long as its
			// longest-lived entry: NX gives a new shard an expiry, GT
			// moves an existing one later only.
			pipe.Do(ctx, "PEXPIREAT", shard, end, "NX")
			pipe.Do(ctx, "PEXPIREAT", shard, end, "GT")
		}
		if pipe.Len() == 0 {
			return nil
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("index sessions: %w", err)
		}
		return nil
	})
}

func sessionKey(id string) string { return "broker:session:{" + id + "}" }

// scanBatch is the COUNT hint of each SCAN call and so roughly how many
// sessions one pipeline carries.
const scanBatch = 1000

// scanSessions calls fn with the ids of the stored sessions, a batch at a
// time. The sessions package has the same walk for rekey; a migration step
// keeps its own copy of what it reads so that it goes on doing what it did
// when it was written, whatever later layouts change in the store.
//
// It walks every master of a Cluster (each holds its own keyspace).
// SCAN may return a key more than once and misses none that lived
// throughout, which suits idempotent steps. fn may run concurrently for
// different masters.
func scanSessions(ctx context.Context, c redis.UniversalClient, fn func(ids []string) error) error {
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
		keys, next, err := c.Scan(ctx, cursor, "broker:session:{*}", scanBatch).Result()
		if err != nil {
			return fmt.Errorf("scan sessions: %w", err)
		}
		ids := keys[:0]
		for _, k := range keys {
			// The pattern also matches the refresh leases,
			// broker:session:{<id>}:lock, which end after the '}'.
			id := strings.TrimPrefix(k, "broker:session:{")
			if id, ok := strings.CutSuffix(id, "}"); ok && id != "" && !strings.ContainsAny(id, "{}") {
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
