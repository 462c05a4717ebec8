package sessions

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/mobile-token-broker/broker/internal/redistest"
)

// newStandaloneStore returns a Store on srv built the way the broker builds
// it, through NewClient, on an emptied database.
func newStandaloneStore(t *testing.T, srv *redistest.Server) *Store {
	t.Helper()
	client, err := NewClient(srv.URL())
	if err != nil {
		t.Fatalf("NewClient(%s) = %v", srv.URL(), err)
	}
	t.Cleanup(func() { client.Close() })
	if err := client.FlushDB(context.Background()).Err(); err != nil {
		t.Fatalf("FLUSHDB: %v", err)
	}
	keys, err := NewEphemeralKeyring()
	if err != nil {
		t.Fatal(err)
	}
	return New(client, keys, Options{})
}

func TestStandalone(t *testing.T) {
	srv := redistest.Start(t)
	runStoreSuite(t, func(t *testing.T) *Store { return newStandaloneStore(t, srv) })
}

// TestStoreUnavailable stops Redis under a Store: every method must report
// broker.ErrStoreUnavailable within a bound a request can wait, and the same
// Store must serve again once Redis is back.
func TestStoreUnavailable(t *testing.T) {
	srv := redistest.Start(t)
	st := newStandaloneStore(t, srv)
	ctx := context.Background()
	held, _ := testSession(t, time.Now(), "auth0|down", "op-session-down")
	mustCreate(t, st, held)
	lease, ok, err := st.TryLock(ctx, held.ID, time.Minute)
	if err != nil || !ok {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}

	srv.Stop(t)

	fresh, _ := testSession(t, time.Now(), "auth0|down", "")
	calls := []struct {
		name string
		call func() error
	}{
		{"Ping", func() error { return st.Ping(ctx) }},
		{"Create", func() error { return st.Create(ctx, fresh) }},
		{"Get", func() error { _, err := st.Get(ctx, held.ID); return err }},
		{"UpdateTokens", func() error { return st.UpdateTokens(ctx, held.ID, lease, 1, held.Tokens) }},
		{"Touch", func() error { return st.Touch(ctx, held.ID, time.Now(), time.Now().Add(time.Hour)) }},
		{"End", func() error { _, err := st.End(ctx, held.ID, testEnd); return err }},
		{"Ending", func() error { _, err := st.Ending(ctx, held.ID); return err }},
		{"CompleteEnd", func() error { return st.CompleteEnd(ctx, held.ID) }},
		{"ClaimEnds", func() error { _, err := st.ClaimEnds(ctx, time.Minute, time.Minute, 10); return err }},
		{"ListBySubject", func() error { _, err := st.ListBySubject(ctx, held.Subject); return err }},
		{"ListBySID", func() error { _, err := st.ListBySID(ctx, held.SID); return err }},
		{"TryLock", func() error { _, _, err := st.TryLock(ctx, fresh.ID, time.Minute); return err }},
		{"Lease.Extend", func() error { return lease.Extend(ctx) }},
		{"Lease.Release", func() error { return lease.Release(ctx) }},
		{"FirstUse", func() error { _, err := st.FirstUse(ctx, "jti", time.Minute); return err }},
		{"Used", func() error { _, err := st.Used(ctx, "jti"); return err }},
		{"Append", func() error {
			return st.Append(ctx, broker.AuditEvent{Actor: "admin", Action: broker.ActionUserRevoke, Outcome: broker.OutcomeOK})
		}},
		{"List", func() error { _, err := st.List(ctx, 10); return err }},
	}
	// Connection refused fails at once; the bound leaves room for the
	// client's dial and command retries.
	const bound = 2 * time.Second
	for _, c := range calls {
		start := time.Now()
		err := c.call()
		if took := time.Since(start); took > bound {
			t.Errorf("%s with Redis down took %v, want under %v", c.name, took, bound)
		}
		if !errors.Is(err, broker.ErrStoreUnavailable) {
			t.Errorf("%s with Redis down = %v, want ErrStoreUnavailable", c.name, err)
		}
		if broker.ErrorCode(err) != broker.CodeStoreUnavailable {
			t.Errorf("%s with Redis down: ErrorCode = %s, want %s", c.name, broker.ErrorCode(err), broker.CodeStoreUnavailable)
		}
	}

	srv.Restart(t)

	// After a run of failed dials the client's pool stops dialling and
	// probes the server once a second instead, so recovery takes up to
	// that long.
	deadline := time.Now().Add(5 * time.Second)
	for err := st.Ping(ctx); err != nil; err = st.Ping(ctx) {
		if time.Now().After(deadline) {
			t.Fatalf("Ping after Restart = %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mustCreate(t, st, fresh)
	got, err := st.Get(ctx, fresh.ID)
	if err != nil {
		t.Fatalf("Get after Restart = %v", err)
	}
	assertSameSession(t, got, fresh)
	// The server lost its script cache with its data: scripts must reload.
	if err := st.Touch(ctx, fresh.ID, time.Now(), time.Now().Add(time.Hour)); err != nil {
		t.Errorf("Touch after Restart = %v", err)
	}
	if _, err := st.End(ctx, fresh.ID, testEnd); err != nil {
		t.Errorf("End after Restart = %v", err)
	}
}

// TestCallerGaveUp checks that a call whose own context ended reports the
// context's error, not an outage of the store: the caller went away, Redis
// did not.
func TestCallerGaveUp(t *testing.T) {
	srv := redistest.Start(t)
	st := newStandaloneStore(t, srv)
	s, _ := testSession(t, time.Now(), "auth0|gave-up", "")
	mustCreate(t, st, s)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	for _, c := range []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"canceled", canceled, context.Canceled},
		{"past its deadline", expired, context.DeadlineExceeded},
	} {
		calls := map[string]func() error{
			"Get":   func() error { _, err := st.Get(c.ctx, s.ID); return err },
			"Touch": func() error { return st.Touch(c.ctx, s.ID, time.Now(), time.Now().Add(time.Hour)) },
			"End":   func() error { _, err := st.End(c.ctx, s.ID, testEnd); return err },
			"Ping":  func() error { return st.Ping(c.ctx) },
		}
		for name, call := range calls {
			err := call()
			if !errors.Is(err, c.want) || errors.Is(err, broker.ErrStoreUnavailable) {
				t.Errorf("%s with a context %s = %v, want %v and not ErrStoreUnavailable", name, c.name, err, c.want)
			}
		}
	}
	if _, err := st.Get(context.Background(), s.ID); err != nil {
		t.Errorf("Get with a live context = %v", err)
	}
}
