package sessions

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

// mustLock takes the refresh lease of a session.
func mustLock(t *testing.T, st *Store, id string, ttl time.Duration) broker.Lease {
	t.Helper()
	l, ok, err := st.TryLock(context.Background(), id, ttl)
	if err != nil || !ok {
		t.Fatalf("TryLock(%s) = %v, %v; want the lease", id, ok, err)
	}
	return l
}

// assertTokens checks the generation and tokens stored for a session.
func assertTokens(t *testing.T, st *Store, id string, gen uint64, want broker.Tokens) {
	t.Helper()
	got, err := st.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%s) = %v", id, err)
	}
	if got.Generation != gen || !sameTokens(got.Tokens, want) {
		t.Errorf("session %s at generation %d with access token %q, want generation %d with %q", id, got.Generation, got.Tokens.AccessToken, gen, want.AccessToken)
	}
}

func testFencedWrite(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|fenced", "")
	mustCreate(t, st, s)
	l := mustLock(t, st, s.ID, time.Minute)

	second := broker.Tokens{AccessToken: "ACCESS-2", RefreshToken: "REFRESH-2", Expiry: time.Now().Add(time.Hour)}
	if err := st.UpdateTokens(ctx, s.ID, l, 1, second); err != nil {
		t.Fatalf("UpdateTokens(from 1) with the lease = %v", err)
	}
	assertTokens(t, st, s.ID, 2, second)

	stale := broker.Tokens{AccessToken: "ACCESS-STALE", RefreshToken: "REFRESH-STALE"}
	err := st.UpdateTokens(ctx, s.ID, l, 1, stale)
	if !errors.Is(err, broker.ErrGenerationMoved) {
		t.Errorf("UpdateTokens(from 1) at generation 2 = %v, want ErrGenerationMoved", err)
	}
	assertTokens(t, st, s.ID, 2, second)

	// The lease expired, or was deleted, under its holder.
	if err := st.client.Del(ctx, lockKey(s.ID)).Err(); err != nil {
		t.Fatal(err)
	}
	third := broker.Tokens{AccessToken: "ACCESS-3", RefreshToken: "REFRESH-3"}
	if err := st.UpdateTokens(ctx, s.ID, l, 2, third); !errors.Is(err, broker.ErrLeaseLost) {
		t.Errorf("UpdateTokens without the lease key = %v, want ErrLeaseLost", err)
	}
	assertTokens(t, st, s.ID, 2, second)

	// The lease expired and another holder took it: only the new holder
	// writes.
	first := mustLock(t, st, s.ID, 50*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	next := mustLock(t, st, s.ID, time.Minute)
	if err := st.UpdateTokens(ctx, s.ID, first, 2, third); !errors.Is(err, broker.ErrLeaseLost) {
		t.Errorf("UpdateTokens by a holder whose lease another took = %v, want ErrLeaseLost", err)
	}
	assertTokens(t, st, s.ID, 2, second)
	if err := st.UpdateTokens(ctx, s.ID, next, 2, third); err != nil {
		t.Errorf("UpdateTokens by the new holder = %v", err)
	}
	assertTokens(t, st, s.ID, 3, third)
}

// testFencedWriteRepeat checks that a write whose reply was lost answers
// its repeat as it answered the first time, both when go-redis sends the
// script again and when the broker calls again after ErrStoreUnavailable.
func testFencedWriteRepeat(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|fenced-repeat", "")
	mustCreate(t, st, s)
	l := mustLock(t, st, s.ID, time.Minute)

	second := broker.Tokens{AccessToken: "ACCESS-2", RefreshToken: "REFRESH-2", Expiry: time.Now().Add(time.Hour)}
	for i := range 2 {
		if err := st.UpdateTokens(ctx, s.ID, l, 1, second); err != nil {
			t.Fatalf("UpdateTokens(from 1) call %d = %v, want nil", i+1, err)
		}
	}
	assertTokens(t, st, s.ID, 2, second)
	other := broker.Tokens{AccessToken: "ACCESS-OTHER", RefreshToken: "REFRESH-OTHER"}
	if err := st.UpdateTokens(ctx, s.ID, l, 1, other); !errors.Is(err, broker.ErrGenerationMoved) {
		t.Errorf("UpdateTokens(from 1) with other tokens after the write = %v, want ErrGenerationMoved", err)
	}

	third := broker.Tokens{AccessToken: "ACCESS-3", RefreshToken: "REFRESH-3"}
	blob, err := st.sealTokens(s.ID, bindingOf(s), 3, third)
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{sessionKey(s.ID), lockKey(s.ID)}
	for i := range 2 {
		n, err := updateTokensScript.Run(ctx, st.client, keys, "2", "3", l.(*lease).token, blob, recordVersion).Int()
		if err != nil || n != 1 {
			t.Errorf("update tokens script run %d = %d, %v; want 1 (written)", i+1, n, err)
		}
		// A repeat is recognised by the blob, not the lease: the first run
		// took effect, whatever happened to the lease since.
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	assertTokens(t, st, s.ID, 3, third)
	n, err := updateTokensScript.Run(ctx, st.client, keys, "2", "3", l.(*lease).token, "ANOTHER BLOB", recordVersion).Int()
	if err != nil || n != 2 {
		t.Errorf("update tokens script from generation 2 with another blob at 3 = %d, %v; want 2 (moved)", n, err)
	}
}

// otherLease is a broker.Lease that is not one of the store's.
type otherLease struct{}

func (otherLease) Extend(context.Context) error  { return nil }
func (otherLease) Release(context.Context) error { return nil }

func testFencedWriteLease(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|fenced-lease", "")
	mustCreate(t, st, s)
	other, _ := testSession(t, time.Now(), "auth0|fenced-lease", "")
	mustCreate(t, st, other)
	next := broker.Tokens{AccessToken: "ACCESS-NEVER"}
	tests := []struct {
		name  string
		lease broker.Lease
	}{
		{"another type", otherLease{}},
		{"another session's", mustLock(t, st, other.ID, time.Minute)},
	}
	for _, tt := range tests {
		err := st.UpdateTokens(ctx, s.ID, tt.lease, 1, next)
		if err == nil || broker.ErrorCode(err) != broker.CodeInternal ||
			errors.Is(err, broker.ErrLeaseLost) || errors.Is(err, broker.ErrGenerationMoved) {
			t.Errorf("UpdateTokens with %s lease = %v, want an internal error", tt.name, err)
		}
	}
	assertTokens(t, st, s.ID, 1, s.Tokens)
}

// testRescueWrite: a nil lease stores tokens fenced by the generation alone,
// also while another holder has the lease; it never overwrites a newer
// generation, and its repeat succeeds.
func testRescueWrite(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|rescue", "")
	mustCreate(t, st, s)
	mustLock(t, st, s.ID, time.Minute) // another holder
	next := broker.Tokens{AccessToken: "ACCESS-RESCUED", RefreshToken: "REFRESH-RESCUED"}
	if err := st.UpdateTokens(ctx, s.ID, nil, 1, next); err != nil {
		t.Fatalf("rescue write at the current generation = %v, want it stored", err)
	}
	if err := st.UpdateTokens(ctx, s.ID, nil, 1, next); err != nil {
		t.Errorf("repeat of the rescue write = %v, want success", err)
	}
	assertTokens(t, st, s.ID, 2, next)
	stale := broker.Tokens{AccessToken: "ACCESS-STALE"}
	if err := st.UpdateTokens(ctx, s.ID, nil, 1, stale); !errors.Is(err, broker.ErrGenerationMoved) {
		t.Errorf("rescue write from an older generation = %v, want ErrGenerationMoved", err)
	}
	assertTokens(t, st, s.ID, 2, next)
}

func testTouchNeverBackwards(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now().Add(-10*time.Minute), "auth0|touch-order", "")
	mustCreate(t, st, s)
	later := time.Now().Truncate(time.Millisecond)
	earlier := later.Add(-time.Minute)
	// A touch, its repeat, then a request that started earlier and
	// finished last, on any replica.
	for _, at := range []time.Time{later, later, earlier} {
		if err := st.Touch(ctx, s.ID, at, at.Add(s.IdleTimeout)); err != nil {
			t.Fatalf("Touch(%v) = %v", at, err)
		}
	}
	got, err := st.Get(ctx, s.ID)
	if err != nil {
		t.Fatalf("Get = %v", err)
	}
	if !got.LastUsedAt.Equal(later) {
		t.Errorf("LastUsedAt after a late, older touch = %v, want the newer %v", got.LastUsedAt, later)
	}
	assertTTL(t, st.client, sessionKey(s.ID), later.Add(s.IdleTimeout))
}
