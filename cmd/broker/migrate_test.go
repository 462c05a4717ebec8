package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mobile-token-broker/broker/internal/redistest"
	"github.com/mobile-token-broker/broker/migrations"
	"github.com/mobile-token-broker/broker/sessions"
)

// rollBackToV1 leaves the store as a broker of schema version 1 would have:
// the same sessions in record version 1 (the claims sealed with the tokens
// in tok, bound to the session id and field alone; the last use in the
// clear) and no expiry index.
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
	recordsToV1(t, s)
	if err := rdb.Set(ctx, migrations.VersionKey, 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
}

// recordsToV1 rewrites every session record of the store in record
// version 1, as brokers of schema versions 1 and 2 wrote them.
func recordsToV1(t *testing.T, s *stack) {
	t.Helper()
	ctx := context.Background()
	rdb := s.redis.Client(t)
	keys, err := sessions.ParseKeyring(s.env["BROKER_ENCRYPTION_KEYS"])
	if err != nil {
		t.Fatal(err)
	}
	st := sessions.New(rdb, keys, sessions.Options{})
	records, err := rdb.Keys(ctx, "broker:session:{*}").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range records {
		id, ok := strings.CutSuffix(strings.TrimPrefix(key, "broker:session:{"), "}")
		if !ok {
			continue
		}
		sess, err := st.Get(ctx, id)
		if err != nil {
			t.Fatalf("Get(%s) = %v", id, err)
		}
		plaintext, err := json.Marshal(map[string]any{
			"access_token": sess.Tokens.AccessToken, "token_type": sess.Tokens.TokenType,
			"refresh_token": sess.Tokens.RefreshToken, "id_token": sess.Tokens.IDToken,
			"expiry": sess.Tokens.Expiry, "claims": sess.Claims,
		})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := keys.Seal(plaintext, []byte("broker:session:"+id+"\x00tok"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.HDel(ctx, key, "gen", "claims", "lu")
			pipe.HSet(ctx, key, "v", "1", "tok", tok, "last_used_at", sess.LastUsedAt.UnixMilli())
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
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
// refuses to run without the encryption keys, then indexes every session
// and converts its record, and the handles work on the broker started
// after.
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

	onlyRedis := func(k string) string {
		if k == "BROKER_REDIS_URL" {
			return s.env[k]
		}
		return ""
	}
	err = run(ctx, []string{"migrate"}, onlyRedis, io.Discard, io.Discard)
	var ce *configError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "BROKER_ENCRYPTION_KEYS is required") {
		t.Fatalf("broker migrate without BROKER_ENCRYPTION_KEYS = %v, want a configuration error naming it", err)
	}
	if v, err := migrations.Current(ctx, s.redis.Client(t)); err != nil || v != 1 {
		t.Fatalf("schema version after a refused migrate = %d, %v; want 1", v, err)
	}

	env := func(k string) string { return s.env[k] }
	var out strings.Builder
	if err := run(ctx, []string{"migrate"}, env, &out, io.Discard); err != nil {
		t.Fatalf("broker migrate = %v", err)
	}
	for _, want := range []string{fmt.Sprintf("from schema version 1 to %d", migrations.Latest()), fmt.Sprintf("%d sessions converted", len(logins))} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("broker migrate printed %q, want %q", out.String(), want)
		}
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

// TestMigrateReportsUnreadable migrates a store holding a version 1 record
// that no key opens: the migration goes through, leaves the record as it
// is, and names it.
func TestMigrateReportsUnreadable(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	id := "AAAAAAAAAAAAAAAAAAAAAA"
	key := "broker:session:{" + id + "}"
	err := rdb.HSet(ctx, key, "v", "1", "secret_hash", strings.Repeat("00", 32), "sub", "auth0|lost", "sid", "",
		"client_id", "app", "created_at", 1, "last_used_at", 1, "abs_exp", time.Now().Add(time.Hour).UnixMilli(), "idle", 1,
		"ip", "", "ua", "", "tok", "\x01\x04gone"+strings.Repeat("x", 40)).Err()
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, migrations.VersionKey, 2, 0).Err(); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"BROKER_REDIS_URL": srv.URL(), "BROKER_ENCRYPTION_KEYS": "k1:" + randomKey(t)}
	var out strings.Builder
	if err := run(ctx, []string{"migrate"}, func(k string) string { return env[k] }, &out, io.Discard); err != nil {
		t.Fatalf("broker migrate = %v", err)
	}
	for _, want := range []string{"1 sessions could not be opened", id, "--remove-unreadable", "from schema version 2 to 3"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("broker migrate printed %q, want %q", out.String(), want)
		}
	}
	if v := rdb.HGet(ctx, key, "v").Val(); v != "1" {
		t.Errorf("unreadable record at version %q after the migration, want it left at 1", v)
	}
}

// TestMigrateAndRekeyWarnUnknownVariables: the one-shot service commands
// name a misspelt BROKER_ variable on stderr as serve does in its log,
// without its value, and still do their work.
func TestMigrateAndRekeyWarnUnknownVariables(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	const value = "value-of-a-misspelt-variable"
	t.Setenv("BROKER_ENCRYPTION_KEY", value)
	env := map[string]string{
		"BROKER_REDIS_URL":       srv.URL(),
		"BROKER_ENCRYPTION_KEYS": "k1:" + randomKey(t),
		"BROKER_ENCRYPTION_KEY":  value,
	}
	getenv := func(k string) string { return env[k] }
	const want = "warning: BROKER_ENCRYPTION_KEY is not a setting of the broker and is ignored; did you mean BROKER_ENCRYPTION_KEYS?\n"
	for _, args := range [][]string{{"migrate"}, {"rekey"}} {
		var stdout, stderr strings.Builder
		if err := run(ctx, args, getenv, &stdout, &stderr); err != nil {
			t.Fatalf("broker %s = %v", args[0], err)
		}
		if stderr.String() != want {
			t.Errorf("broker %s wrote %q on stderr, want %q", args[0], stderr.String(), want)
		}
		if strings.Contains(stdout.String()+stderr.String(), value) {
			t.Errorf("broker %s printed the value of the unknown variable", args[0])
		}
	}
	// Without the misspelt variable, no warning.
	delete(env, "BROKER_ENCRYPTION_KEY")
	var stderr strings.Builder
	if err := run(ctx, []string{"migrate"}, getenv, io.Discard, &stderr); err != nil || stderr.String() != "" {
		t.Errorf("broker migrate = %v, stderr %q; want no warning", err, stderr.String())
	}
}
