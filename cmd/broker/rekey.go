package main

import (
	"context"
	"fmt"
	"io"

	"github.com/mobile-token-broker/broker/migrations"
	"github.com/mobile-token-broker/broker/sessions"
)

// rekey reseals every stored session under the first key of
// BROKER_ENCRYPTION_KEYS, so that the keys after it can then be removed
// without ending anyone's session. It needs only BROKER_REDIS_URL and
// BROKER_ENCRYPTION_KEYS, and runs beside serving brokers.
func rekey(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	var problems []string
	rdb, problem := redisFromEnv(getenv)
	if problem != "" {
		problems = append(problems, problem)
	} else {
		defer rdb.Close()
	}
	rawKeys := getenv("BROKER_ENCRYPTION_KEYS")
	var keys *sessions.Keyring
	if rawKeys == "" {
		problems = append(problems, "BROKER_ENCRYPTION_KEYS is required: comma-separated KEYID:BASE64(32 bytes)")
	} else {
		var err error
		if keys, err = sessions.ParseKeyring(rawKeys); err != nil {
			// ParseKeyring never quotes key material.
			problems = append(problems, "BROKER_ENCRYPTION_KEYS: "+err.Error())
		}
	}
	if len(problems) > 0 {
		return &configError{problems: problems}
	}
	// Rekeying a layout this broker does not know could miss sessions or
	// touch keys it misreads.
	if err := migrations.Check(ctx, rdb); err != nil {
		return err
	}
	report, err := sessions.New(rdb, keys, sessions.Options{}).Rekey(ctx)
	fmt.Fprintf(stdout, "rekeyed %d sessions to key %q; %d already current; %d gone meanwhile; %d unreadable\n",
		report.Rekeyed, keys.Primary(), report.Current, report.Gone, report.Unreadable)
	if err != nil {
		return fmt.Errorf("rekey: %w", err)
	}
	if report.Unreadable > 0 {
		return fmt.Errorf("rekey: %d sessions are sealed under a key missing from BROKER_ENCRYPTION_KEYS or are damaged; they cannot be used whatever the keys", report.Unreadable)
	}
	return nil
}
