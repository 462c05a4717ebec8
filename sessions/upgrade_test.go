package sessions

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

// writeV1 writes a session the way a broker of record version 1 did: the
// claims sealed with the tokens in tok, bound to the id and field only, and
// the last use in the clear.
func writeV1(t *testing.T, st *Store, keys *Keyring, s *broker.Session) {
	t.Helper()
	ctx := context.Background()
	plaintext, err := json.Marshal(v1Sealed{sealedTokens: tokensOf(s.Tokens), Claims: s.Claims})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := keys.Seal(plaintext, []byte("broker:session:"+s.ID+"\x00tok"))
	if err != nil {
		t.Fatal(err)
	}
	key := sessionKey(s.ID)
	err = st.client.HSet(ctx, key,
		"v", "1",
		"secret_hash", hex.EncodeToString(s.SecretHash),
		"sub", s.Subject,
		"sid", s.SID,
		"client_id", s.ClientID,
		"created_at", s.CreatedAt.UnixMilli(),
		"last_used_at", s.LastUsedAt.UnixMilli(),
		"abs_exp", s.AbsoluteExpiry.UnixMilli(),
		"idle", s.IdleTimeout.Milliseconds(),
		"ip", s.IP,
		"ua", s.UserAgent,
		"tok", tok,
	).Err()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.client.PExpireAt(ctx, key, s.ExpiresAt()).Err(); err != nil {
		t.Fatal(err)
	}
}

func testUpgradeRecords(t *testing.T, st *Store) {
	ctx := context.Background()
	var v1 []*broker.Session
	for i := range 3 {
		s, _ := testSession(t, st.now().Add(-time.Duration(i)*time.Minute), "auth0|upgrade", "")
		if i == 1 {
			s.SID = "op-upgrade"
			s.Claims = nil
		}
		s.LastUsedAt = s.LastUsedAt.Add(30 * time.Second)
		writeV1(t, st, st.keys, s)
		v1 = append(v1, s)
	}
	lost, _ := testSession(t, st.now(), "auth0|upgrade", "")
	writeV1(t, st, mustKeyring(t, "C:"+randomKey(t)), lost)
	current, _ := testSession(t, st.now(), "auth0|upgrade", "")
	mustCreate(t, st, current)
	currentTok := st.client.HGet(ctx, sessionKey(current.ID), fieldTok).Val()
	ttlBefore := pttl(t, st.client, sessionKey(v1[0].ID))

	// A version 1 broker still serving touches a session between the read
	// and the write: the write is refused, and made again from the new
	// state.
	h := st.client.HGetAll(ctx, sessionKey(v1[2].ID)).Val()
	args, err := st.upgradeArgs(v1[2].ID, h)
	if err != nil {
		t.Fatalf("upgradeArgs = %v", err)
	}
	v1[2].LastUsedAt = v1[2].LastUsedAt.Add(time.Minute)
	if err := st.client.HSet(ctx, sessionKey(v1[2].ID), fieldLastUsedAt, v1[2].LastUsedAt.UnixMilli()).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := casScript.Run(ctx, st.client, []string{sessionKey(v1[2].ID)}, args...).Int(); err != nil || n != 2 {
		t.Errorf("conversion after a touch = %d, %v; want 2 (changed)", n, err)
	}

	ids := []string{v1[0].ID, v1[1].ID, v1[2].ID, lost.ID, current.ID, randomString(t, 16)}
	upgraded, unreadable, err := st.UpgradeRecords(ctx, ids)
	if err != nil || upgraded != 3 || !reflect.DeepEqual(unreadable, []string{lost.ID}) {
		t.Fatalf("UpgradeRecords = %d, %v, %v; want 3, [%s], nil", upgraded, unreadable, err, lost.ID)
	}
	for _, s := range v1 {
		got, err := st.Get(ctx, s.ID)
		if err != nil {
			t.Errorf("Get of an upgraded session = %v", err)
			continue
		}
		assertSameSession(t, got, s)
		if got.Generation != 1 {
			t.Errorf("upgraded session at generation %d, want 1", got.Generation)
		}
	}
	if after := pttl(t, st.client, sessionKey(v1[0].ID)); after <= 0 || after > ttlBefore {
		t.Errorf("PTTL after the upgrade = %v, want kept at about %v", after, ttlBefore)
	}
	if tok := st.client.HGet(ctx, sessionKey(current.ID), fieldTok).Val(); tok != currentTok {
		t.Error("UpgradeRecords rewrote a record at version 2")
	}
	_, err = st.Get(ctx, lost.ID)
	if clear := assertUnreadable(t, "Get of a version 1 session that could not be upgraded", lost.ID, err); clear != nil && clear.Subject != lost.Subject {
		t.Errorf("unreadable version 1 session: Subject = %q, want %q", clear.Subject, lost.Subject)
	}

	upgraded, unreadable, err = st.UpgradeRecords(ctx, ids)
	if err != nil || upgraded != 0 || !reflect.DeepEqual(unreadable, []string{lost.ID}) {
		t.Errorf("UpgradeRecords again = %d, %v, %v; want 0, [%s], nil", upgraded, unreadable, err, lost.ID)
	}
	// The upgraded records are bound like new ones.
	if err := st.client.HSet(ctx, sessionKey(v1[0].ID), fieldSub, "auth0|attacker").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, v1[0].ID); !errors.Is(err, broker.ErrUnreadable) {
		t.Errorf("Get of an upgraded session after editing sub = %v, want ErrUnreadable", err)
	}
}

// testSchemaBehind: on a store one schema version behind, a session is
// written at record version 1, read and refreshed in that layout, converted
// by UpgradeRecords at the generation it reached, and refreshed in the new
// layout after; once the store records the new version, new sessions are
// written at version 2.
func testSchemaBehind(t *testing.T, st *Store) {
	ctx := context.Background()
	if err := st.client.Set(ctx, SchemaVersionKey, SchemaRecordsV2-1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	s, _ := testSession(t, time.Now(), "auth0|behind", "sid-behind")
	mustCreate(t, st, s)
	if v := st.client.HGet(ctx, sessionKey(s.ID), fieldVersion).Val(); v != recordVersion1 {
		t.Fatalf("record version on a store at schema %d = %q, want %q", SchemaRecordsV2-1, v, recordVersion1)
	}
	for _, f := range []string{fieldGen, fieldClaims, fieldLU} {
		if st.client.HExists(ctx, sessionKey(s.ID), f).Val() {
			t.Errorf("a version 1 record holds field %s", f)
		}
	}
	got, err := st.Get(ctx, s.ID)
	if err != nil {
		t.Fatalf("Get of a version 1 record = %v", err)
	}
	assertSameSession(t, got, s)

	// A refresh keeps the layout and moves the generation.
	s.Tokens.AccessToken, s.Tokens.RefreshToken = "ACCESS-behind-2", "REFRESH-behind-2"
	if err := refresh(t, st, s.ID, s.Tokens); err != nil {
		t.Fatalf("UpdateTokens of a version 1 record = %v", err)
	}
	if v := st.client.HGet(ctx, sessionKey(s.ID), fieldVersion).Val(); v != recordVersion1 {
		t.Errorf("record version after a refresh = %q, want %q kept", v, recordVersion1)
	}
	if got, err = st.Get(ctx, s.ID); err != nil || got.Generation != 2 {
		t.Fatalf("Get after a refresh = %+v, %v; want generation 2", got, err)
	}
	assertSameSession(t, got, s)
	lease, ok, err := st.TryLock(ctx, s.ID, 10*time.Second)
	if err != nil || !ok {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}
	if err := st.UpdateTokens(ctx, s.ID, lease, 1, s.Tokens); err != nil {
		t.Errorf("UpdateTokens repeated from generation 1 with the tokens it wrote = %v, want nil", err)
	}
	if err := st.UpdateTokens(ctx, s.ID, lease, 1, broker.Tokens{AccessToken: "stale"}); !errors.Is(err, broker.ErrGenerationMoved) {
		t.Errorf("UpdateTokens from a moved generation = %v, want ErrGenerationMoved", err)
	}
	_ = lease.Release(ctx)

	// The migration's conversion keeps the generation.
	if n, unreadable, err := st.UpgradeRecords(ctx, []string{s.ID}); n != 1 || len(unreadable) != 0 || err != nil {
		t.Fatalf("UpgradeRecords = %d, %v, %v; want 1 converted", n, unreadable, err)
	}
	if err := st.client.Set(ctx, SchemaVersionKey, SchemaRecordsV2, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err = st.Get(ctx, s.ID); err != nil || got.Generation != 2 {
		t.Fatalf("Get after the conversion = %+v, %v; want generation 2", got, err)
	}
	assertSameSession(t, got, s)
	s.Tokens.AccessToken = "ACCESS-behind-3"
	if err := refresh(t, st, s.ID, s.Tokens); err != nil {
		t.Fatalf("UpdateTokens after the conversion = %v", err)
	}
	if got, err = st.Get(ctx, s.ID); err != nil || got.Generation != 3 || st.client.HGet(ctx, sessionKey(s.ID), fieldVersion).Val() != recordVersion {
		t.Fatalf("Get after a refresh in the new layout = %+v, %v; want generation 3 at record version %s", got, err, recordVersion)
	}

	fresh, _ := testSession(t, time.Now(), "auth0|behind", "")
	mustCreate(t, st, fresh)
	if v := st.client.HGet(ctx, sessionKey(fresh.ID), fieldVersion).Val(); v != recordVersion {
		t.Errorf("record version once the store is at schema %d = %q, want %q", SchemaRecordsV2, v, recordVersion)
	}
}
