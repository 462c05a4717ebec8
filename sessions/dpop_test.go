package sessions

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// testDPoPBinding: the key thumbprint of a DPoP-bound session survives a
// refresh and an end, and is bound by the encryption: deleting, emptying or
// changing it in Redis, or adding one to a bearer session, makes the record
// unreadable rather than unbound or bound to the attacker's key.
func testDPoPBinding(t *testing.T, st *Store) {
	ctx := context.Background()
	const jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
	bound, _ := testSession(t, time.Now(), "auth0|dpop", "")
	bound.JKT = jkt
	mustCreate(t, st, bound)
	got, err := st.Get(ctx, bound.ID)
	if err != nil {
		t.Fatalf("Get of a bound session = %v", err)
	}
	if got.JKT != jkt {
		t.Fatalf("Get: JKT = %q, want %q", got.JKT, jkt)
	}
	if err := refresh(t, st, bound.ID, bound.Tokens); err != nil {
		t.Fatalf("UpdateTokens of a bound session = %v", err)
	}
	if got, err := st.Get(ctx, bound.ID); err != nil || got.JKT != jkt {
		t.Fatalf("Get after a refresh = %+v, %v; want JKT %q", got, err, jkt)
	}

	bearer, _ := testSession(t, time.Now(), "auth0|dpop", "")
	mustCreate(t, st, bearer)
	if got, err := st.Get(ctx, bearer.ID); err != nil || got.JKT != "" {
		t.Fatalf("Get of a bearer session = %+v, %v; want no JKT", got, err)
	}

	edits := []struct {
		name string
		id   string
		edit func(key string) error
	}{
		{"jkt deleted", bound.ID, func(key string) error { return st.client.HDel(ctx, key, fieldJKT).Err() }},
		{"jkt emptied", bound.ID, func(key string) error { return st.client.HSet(ctx, key, fieldJKT, "").Err() }},
		{"jkt replaced", bound.ID, func(key string) error {
			return st.client.HSet(ctx, key, fieldJKT, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").Err()
		}},
		{"jkt added to a bearer session", bearer.ID, func(key string) error { return st.client.HSet(ctx, key, fieldJKT, jkt).Err() }},
	}
	for _, e := range edits {
		t.Run(e.name, func(t *testing.T) {
			key := sessionKey(e.id)
			saved, err := st.client.HGetAll(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			if err := e.edit(key); err != nil {
				t.Fatal(err)
			}
			_, err = st.Get(ctx, e.id)
			assertUnreadable(t, "Get with "+e.name, e.id, err)
			// Put the record back as it was for the next edit.
			if _, err := st.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.HDel(ctx, key, fieldJKT)
				p.HSet(ctx, key, saved)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Get(ctx, e.id); err != nil {
				t.Fatalf("Get of the restored record = %v", err)
			}
		})
	}

	// On a store one schema version behind, bearer sessions are written at
	// record version 1 for the older brokers; a bound one stays at the
	// current version, which binds its key and which brokers without DPoP
	// cannot open.
	if err := st.client.Set(ctx, SchemaVersionKey, SchemaRecordsV2-1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	behindBound, _ := testSession(t, time.Now(), "auth0|dpop", "")
	behindBound.JKT = jkt
	behindBearer, _ := testSession(t, time.Now(), "auth0|dpop", "")
	mustCreate(t, st, behindBound)
	mustCreate(t, st, behindBearer)
	for _, c := range []struct {
		id, version string
	}{{behindBound.ID, recordVersion}, {behindBearer.ID, recordVersion1}} {
		if v, err := st.client.HGet(ctx, sessionKey(c.id), fieldVersion).Result(); err != nil || v != c.version {
			t.Errorf("record version of session %s on a store behind = %q, %v; want %q", c.id, v, err, c.version)
		}
	}
	if got, err := st.Get(ctx, behindBound.ID); err != nil || got.JKT != jkt {
		t.Errorf("Get of a bound session created on a store behind = %+v, %v; want JKT %q", got, err, jkt)
	}
	if err := st.client.Del(ctx, SchemaVersionKey).Err(); err != nil {
		t.Fatal(err)
	}

	e, err := st.End(ctx, bound.ID, testEnd)
	if err != nil {
		t.Fatalf("End of a bound session = %v", err)
	}
	if e.Session.JKT != jkt {
		t.Errorf("Ending.Session.JKT = %q, want %q", e.Session.JKT, jkt)
	}
}
