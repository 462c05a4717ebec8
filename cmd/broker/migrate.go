package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/mobile-token-broker/broker/migrations"
)

// migrate applies the pending migrations of the session store. It needs only
// BROKER_REDIS_URL.
func migrate(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	rdb, problem := redisFromEnv(getenv)
	if problem != "" {
		return &configError{problems: []string{problem}}
	}
	defer rdb.Close()
	from, to, err := migrations.Apply(ctx, rdb)
	if err != nil {
		if errors.Is(err, migrations.ErrStoreNewer) {
			return err
		}
		return fmt.Errorf("migrate: %w", err)
	}
	if from == to {
		fmt.Fprintf(stdout, "store is at schema version %d: nothing to do\n", to)
		return nil
	}
	fmt.Fprintf(stdout, "store migrated from schema version %d to %d\n", from, to)
	return nil
}
