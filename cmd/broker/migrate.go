package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/mobile-token-broker/broker/migrations"
	"github.com/mobile-token-broker/broker/sessions"
)

// migrate applies the pending migrations of the session store. It needs
// BROKER_REDIS_URL, and BROKER_ENCRYPTION_KEYS when a pending step converts
// sealed session records.
func migrate(ctx context.Context, getenv func(string) string, stdout, stderr io.Writer) error {
	warnUnknownVariables(stderr, getenv)
	getenv, err := resolveEnv(getenv)
	if err != nil {
		return err
	}
	rdb, problem := redisFromEnv(getenv)
	if problem != "" {
		return &configError{problems: []string{problem}}
	}
	defer rdb.Close()
	pending, err := migrations.Pending(ctx, rdb)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var opts migrations.Options
	if step, ok := needingRecords(pending); ok {
		keys, problem := keyringFromEnv(getenv, fmt.Sprintf("migration %d (%s) re-encrypts every session", step.Version, step.Name))
		if problem != "" {
			return &configError{problems: []string{problem}}
		}
		opts.Records = sessions.New(rdb, keys, sessions.Options{})
		// Brokers may serve the store meanwhile: convert what they wrote
		// in the old layout before they saw the new version.
		opts.Settle = migrations.Settle
	}
	res, err := migrations.Apply(ctx, rdb, opts)
	reportUnreadable(stdout, res)
	if err != nil {
		if errors.Is(err, migrations.ErrStoreNewer) {
			return err
		}
		return fmt.Errorf("migrate: %w", err)
	}
	if res.From == res.To {
		fmt.Fprintf(stdout, "store is at schema version %d: nothing to do\n", res.To)
		return nil
	}
	fmt.Fprintf(stdout, "store migrated from schema version %d to %d\n", res.From, res.To)
	if res.Upgraded > 0 {
		fmt.Fprintf(stdout, "%d sessions converted to the new record layout\n", res.Upgraded)
	}
	return nil
}

// needingRecords returns the first of steps that converts sealed records.
func needingRecords(steps []migrations.Step) (migrations.Step, bool) {
	for _, s := range steps {
		if s.NeedsRecords {
			return s, true
		}
	}
	return migrations.Step{}, false
}

// reportUnreadable says which sessions a migration could not convert. They
// are not an error of the migration: the brokers report them unreadable,
// and `broker rekey --remove-unreadable` ends them.
func reportUnreadable(w io.Writer, res migrations.Result) {
	if res.Unreadable == 0 {
		return
	}
	fmt.Fprintf(w, "%d sessions could not be opened with BROKER_ENCRYPTION_KEYS and were left as they are (sealed under a key missing from it, or damaged): %s",
		res.Unreadable, strings.Join(res.UnreadableIDs, ", "))
	if res.Unreadable > len(res.UnreadableIDs) {
		fmt.Fprint(w, ", ...")
	}
	fmt.Fprintln(w, "; they cannot be used, and `broker rekey --remove-unreadable` ends them")
}
