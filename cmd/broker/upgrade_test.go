package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/migrations"
)

// TestRollingUpgradeServesWhileMigrating is the rolling upgrade of the
// README: a store one schema version behind (version 2, records in the old
// layout) is served by a broker of this version, which keeps writing the
// old layout; `broker migrate` runs while the broker serves proxied
// requests, refreshes (2 s access tokens) and logins; no request fails
// before, during or after, and the migration leaves every record, those
// written while it ran included, in the new layout.
func TestRollingUpgradeServesWhileMigrating(t *testing.T) {
	ctx := context.Background()
	s := newStack(t, stackOptions{accessTokenTTL: 2 * time.Second})
	rdb := s.redis.Client(t)
	first := s.start()
	var logins []created
	for range 4 {
		logins = append(logins, s.login(first))
	}
	if err := first.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if w := schemaBehindWarnings(first.logs.String()); len(w) != 0 {
		t.Errorf("a broker on a store at its own schema version warned %q, want no schema warning", w)
	}
	recordsToV1(t, s)
	behind := migrations.Latest() - 1
	if err := rdb.Set(ctx, migrations.VersionKey, behind, 0).Err(); err != nil {
		t.Fatal(err)
	}

	inst, err := s.tryStart(nil)
	if err != nil {
		t.Fatalf("serve on a store at schema version %d (one behind) = %v, want it served", behind, err)
	}
	w := schemaBehindWarnings(inst.logs.String())
	if len(w) != 1 || !strings.Contains(w[0], "run `broker migrate` once no broker of the previous release serves it") {
		t.Errorf("serve on a store one schema version behind warned %q, want one WARN saying to run broker migrate", w)
	}
	requests := 0
	get := func(phase string, c created) {
		t.Helper()
		requests++
		if res := do(t, inst, http.MethodGet, "/api/x", c.Session, nil); res.status != http.StatusOK {
			t.Fatalf("%s: GET /api/x = %d %s, want 200", phase, res.status, res.body)
		}
	}
	recordVersion := func(c created) string {
		return rdb.HGet(ctx, "broker:session:{"+c.SessionID+"}", "v").Val()
	}
	for _, c := range logins {
		get("before", c)
	}
	c := s.login(inst)
	if v := recordVersion(c); v != "1" {
		t.Errorf("a login on a store at schema version %d wrote record version %q, want 1 (brokers of the previous release read it)", behind, v)
	}
	logins = append(logins, c)
	for _, c := range logins {
		get("before", c)
	}

	env := func(k string) string { return s.env[k] }
	done := make(chan error, 1)
	var out strings.Builder
	go func() { done <- run(ctx, []string{"migrate"}, env, &out, io.Discard) }()
	during, duringLogins := 0, 0
	for migrating := true; migrating; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("broker migrate while serving = %v", err)
			}
			migrating = false
		default:
			before := requests
			for _, c := range logins {
				get("during migrate", c)
			}
			during += requests - before
			logins = append(logins, s.login(inst))
			duringLogins++
		}
	}
	if during == 0 || duringLogins == 0 {
		t.Fatalf("%d requests and %d logins ran during the migration, want some", during, duringLogins)
	}
	if v, err := migrations.Current(ctx, rdb); err != nil || v != migrations.Latest() {
		t.Fatalf("schema version after migrate = %d, %v; want %d", v, err, migrations.Latest())
	}
	for _, c := range logins {
		get("after", c)
		if v := recordVersion(c); v != "2" {
			t.Errorf("session %s at record version %q after migrate, want 2", c.SessionID, v)
		}
	}
	c = s.login(inst)
	get("after", c)
	if v := recordVersion(c); v != "2" {
		t.Errorf("a login after migrate wrote record version %q, want 2", v)
	}
	if refreshed := len(s.upstream.authorizations()); refreshed <= len(logins) {
		t.Errorf("upstream saw %d access tokens for %d sessions: no refresh ran", refreshed, len(logins))
	}
	t.Logf("%d proxied requests and %d logins during a migration of %s", during, duringLogins, strings.TrimSpace(out.String()))
}

// schemaBehindWarnings returns the WARN lines of logs about a store one
// schema version behind.
func schemaBehindWarnings(logs string) []string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		var e struct{ Level, Msg string }
		if json.Unmarshal([]byte(l), &e) == nil && e.Level == "WARN" && strings.Contains(e.Msg, "is one behind this broker's") {
			out = append(out, e.Msg)
		}
	}
	return out
}
