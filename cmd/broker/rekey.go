package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/mobile-token-broker/broker/migrations"
	"github.com/mobile-token-broker/broker/sessions"
)

// rekey reseals every stored session under the first key of
// BROKER_ENCRYPTION_KEYS, so that the keys after it can then be removed
// without ending anyone's session. It needs only BROKER_REDIS_URL and
// BROKER_ENCRYPTION_KEYS, and runs beside serving brokers. With
// --remove-unreadable it ends the sessions that cannot be read, which the
// serving brokers then audit.
func rekey(ctx context.Context, removeUnreadable bool, getenv func(string) string, stdout, stderr io.Writer) error {
	warnUnknownVariables(stderr, getenv)
	getenv, err := resolveEnv(getenv)
	if err != nil {
		return err
	}
	var problems []string
	rdb, problem := redisFromEnv(getenv)
	if problem != "" {
		problems = append(problems, problem)
	} else {
		defer rdb.Close()
	}
	keys, problem := keyringFromEnv(getenv, "the key to reseal under and the keys to open with")
	if problem != "" {
		problems = append(problems, problem)
	}
	if len(problems) > 0 {
		return &configError{problems: problems}
	}
	// Rekeying a layout this broker does not know could miss sessions or
	// touch keys it misreads.
	if err := migrations.Check(ctx, rdb); err != nil {
		return err
	}
	report, err := sessions.New(rdb, keys, sessions.Options{}).Rekey(ctx, sessions.RekeyOptions{RemoveUnreadable: removeUnreadable})
	fmt.Fprintf(stdout, "rekeyed %d sessions to key %q; %d already current; %d gone meanwhile; %d unreadable",
		report.Rekeyed, keys.Primary(), report.Current, report.Gone, report.Unreadable)
	if removeUnreadable {
		fmt.Fprintf(stdout, ", %d of them removed", report.Removed)
	}
	fmt.Fprintln(stdout)
	if len(report.UnreadableIDs) > 0 {
		more := ""
		if report.Unreadable > len(report.UnreadableIDs) {
			more = ", ..."
		}
		fmt.Fprintf(stdout, "unreadable sessions: %s%s\n", strings.Join(report.UnreadableIDs, ", "), more)
	}
	if err != nil {
		return fmt.Errorf("rekey: %w", err)
	}
	if left := report.Unreadable - report.Removed; left > 0 {
		return fmt.Errorf("rekey: %d sessions are sealed under a key missing from BROKER_ENCRYPTION_KEYS or are damaged; they cannot be used whatever the keys, and `broker rekey --remove-unreadable` ends them", left)
	}
	return nil
}
