package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/mobile-token-broker/broker/migrations"
)

// rollBackToV1 leaves the store as a version 1 broker would have: the same
// sessions, no expiry index.
func rollBackToV1(t *testing.T, s *stack) {
	t.Helper()
	ctx := context.Background()
	rdb := s.redis.Client(t)
	shards, err := rdb.Keys(ctx, "broker:expiry:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) == 0 {
		t.Fatal("no expiry index to roll back: the broker did not write it")
	}
	if err := rdb.Del(ctx, shards...).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, migrations.VersionKey, 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
}

// expiryIndexed returns the session ids in the expiry index.
func expiryIndexed(t *testing.T, s *stack) map[string]bool {
	t.Helper()
	ctx := context.Background()
	rdb := s.redis.Client(t)
	shards, err := rdb.Keys(ctx, "broker:expiry:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, shard := range shards {
		for _, id := range rdb.ZRange(ctx, shard, 0, -1).Val() {
			ids[id] = true
		}
	}
	return ids
}

// TestMigrateFromV1KeepsSessions logs in on a store that is then rolled back
// to version 1: serve refuses it and says to migrate, `broker migrate`
// indexes every session, and the handles work on the broker started after.
func TestMigrateFromV1KeepsSessions(t *testing.T) {
	ctx := context.Background()
	s := newStack(t, stackOptions{})
	first := s.start()
	var logins []created
	for range 3 {
		logins = append(logins, s.login(first))
	}
	if err := first.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	rollBackToV1(t, s)

	_, err := s.tryStart(nil)
	if err == nil || !strings.Contains(err.Error(), "older") || !strings.Contains(err.Error(), "run `broker migrate`") {
		t.Fatalf("serve on a version 1 store = %v, want a refusal saying to run `broker migrate`", err)
	}

	env := func(k string) string { return s.env[k] }
	var out strings.Builder
	if err := run(ctx, []string{"migrate"}, env, &out, io.Discard); err != nil {
		t.Fatalf("broker migrate = %v", err)
	}
	if want := "from schema version 1 to 2"; !strings.Contains(out.String(), want) {
		t.Errorf("broker migrate printed %q, want %q", out.String(), want)
	}
	indexed := expiryIndexed(t, s)
	for _, c := range logins {
		if !indexed[c.SessionID] {
			t.Errorf("session %s is not in the expiry index after migrating", c.SessionID)
		}
	}
	if len(indexed) != len(logins) {
		t.Errorf("expiry index holds %d sessions after migrating, want %d", len(indexed), len(logins))
	}
	out.Reset()
	if err := run(ctx, []string{"migrate"}, env, &out, io.Discard); err != nil || !strings.Contains(out.String(), "nothing to do") {
		t.Errorf("broker migrate again = %v, printed %q; want nothing to do", err, out.String())
	}

	second := s.start()
	for _, c := range logins {
		if res := do(t, second, http.MethodGet, "/api/x", c.Session, nil); res.status != http.StatusOK {
			t.Errorf("GET /api/x with a handle from before the migration = %d %s, want 200", res.status, res.body)
		}
	}
	if len(s.upstream.authorizations()) != len(logins) {
		t.Errorf("upstream saw %d distinct access tokens, want %d", len(s.upstream.authorizations()), len(logins))
	}
	// The new layout serves revocation as before.
	if res := s.admin(second, http.MethodDelete, "/admin/v1/users/"+logins[0].User["sub"].(string)+"/sessions"); res.status != http.StatusOK {
		t.Errorf("DELETE /admin/v1/users/{sub}/sessions = %d %s, want 200", res.status, res.body)
	}
	if got := expiryIndexed(t, s); len(got) != 0 {
		t.Errorf("expiry index holds %d sessions after revoking them all, want none", len(got))
	}

	if err := s.redis.Client(t).Set(ctx, migrations.VersionKey, migrations.Latest()+1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.tryStart(nil); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("serve on a store newer than it knows = %v, want a refusal", err)
	}
	if err := run(ctx, []string{"migrate"}, env, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "upgrade the broker") {
		t.Errorf("broker migrate on a store newer than it knows = %v, want a refusal", err)
	}
}
