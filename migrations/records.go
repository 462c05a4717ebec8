package migrations

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"
)

// bindFields is step 3: it hands the version 1 session records to
// opts.Records to convert. It picks them by their field v itself, so that
// a store without any (a new one) needs no Records, and so that a second
// run, or one after an interrupted run, hands over only what is left.
func bindFields(ctx context.Context, c redis.UniversalClient, opts Options, res *Result) error {
	var mu sync.Mutex // batches of a Cluster's masters run at once
	return scanSessions(ctx, c, func(ids []string) error {
		pipe := c.Pipeline()
		reads := make([]*redis.StringCmd, len(ids))
		for i, id := range ids {
			reads[i] = pipe.HGet(ctx, sessionKey(id), "v")
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("read sessions: %w", err)
		}
		var v1 []string
		for i, id := range ids {
			// Gone since the SCAN saw it, or at another version.
			if reads[i].Val() == "1" {
				v1 = append(v1, id)
			}
		}
		if len(v1) == 0 {
			return nil
		}
		if opts.Records == nil {
			return ErrRecordsNeeded
		}
		upgraded, unreadable, err := opts.Records.UpgradeRecords(ctx, v1)
		mu.Lock()
		defer mu.Unlock()
		res.Upgraded += upgraded
		res.Unreadable += len(unreadable)
		for _, id := range unreadable {
			if len(res.UnreadableIDs) < MaxReportedIDs {
				res.UnreadableIDs = append(res.UnreadableIDs, id)
			}
		}
		if err != nil {
			return fmt.Errorf("convert sessions: %w", err)
		}
		return nil
	})
}
