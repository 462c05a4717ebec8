package sessions

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mobile-token-broker/broker/broker"
)

// The tests below run a script twice with the same per-call value, as
// go-redis does when it sends a command again after losing its reply, and
// check that the repeat answers as the first run did.

func testLockRepeat(t *testing.T, st *Store) {
	ctx := context.Background()
	id := randomString(t, 16)
	keys := []string{lockKey(id)}
	for i := range 2 {
		if ok, err := acquireScript.Run(ctx, st.client, keys, "holder-1", 10000).Bool(); err != nil || !ok {
			t.Errorf("lock script run %d with one token = %v, %v; want true", i+1, ok, err)
		}
	}
	if ok, err := acquireScript.Run(ctx, st.client, keys, "holder-2", 10000).Bool(); err != nil || ok {
		t.Errorf("lock script with another token = %v, %v; want false", ok, err)
	}
	if _, ok, err := st.TryLock(ctx, id, time.Minute); err != nil || ok {
		t.Errorf("TryLock while held = %v, %v; want false", ok, err)
	}
	if d := pttl(t, st.client, lockKey(id)); d <= 9*time.Second || d > 10*time.Second {
		t.Errorf("lease PTTL = %v, want about 10s", d)
	}
}

func testFirstUse(t *testing.T, st *Store) {
	ctx := context.Background()
	id := "logout-jti\x00https://idp.example\x00" + randomString(t, 8)
	if used, err := st.Used(ctx, id); err != nil || used {
		t.Errorf("Used before FirstUse = %v, %v; want false", used, err)
	}
	if first, err := st.FirstUse(ctx, id, time.Minute); err != nil || !first {
		t.Errorf("FirstUse = %v, %v; want true", first, err)
	}
	if used, err := st.Used(ctx, id); err != nil || !used {
		t.Errorf("Used after FirstUse = %v, %v; want true", used, err)
	}
	if first, err := st.FirstUse(ctx, id, time.Minute); err != nil || first {
		t.Errorf("FirstUse again = %v, %v; want false", first, err)
	}
	assertTTL(t, st.client, replayKey(id), time.Now().Add(time.Minute))

	other := randomString(t, 8)
	keys := []string{replayKey(other)}
	for i := range 2 {
		if first, err := acquireScript.Run(ctx, st.client, keys, "call-1", 60000).Bool(); err != nil || !first {
			t.Errorf("replay script run %d with one value = %v, %v; want true", i+1, first, err)
		}
	}
	if first, err := acquireScript.Run(ctx, st.client, keys, "call-2", 60000).Bool(); err != nil || first {
		t.Errorf("replay script with another value = %v, %v; want false", first, err)
	}
}

func testAuditRepeat(t *testing.T, st *Store) {
	ctx := context.Background()
	fields := []any{auditFieldTime, time.Now().UTC().Format(auditTimeFormat), auditFieldActor, "secops",
		auditFieldAction, broker.ActionSessionRevoke, auditFieldOutcome, broker.OutcomeOK}
	run := func(eventID string) int {
		t.Helper()
		n, err := appendAuditScript.Run(ctx, st.client, []string{auditKey}, append([]any{1000, eventID}, fields...)...).Int()
		if err != nil {
			t.Fatalf("audit script = %v", err)
		}
		return n
	}
	if a, b := run("event-1"), run("event-1"); a != 1 || b != 0 {
		t.Errorf("audit script twice with one event id = %d, %d; want 1 (added), 0 (a repeat)", a, b)
	}
	// Other events in between do not hide a repeat.
	for range 5 {
		if err := st.Append(ctx, broker.AuditEvent{Actor: "admin", Action: broker.ActionUserRevoke, Outcome: broker.OutcomeOK}); err != nil {
			t.Fatalf("Append = %v", err)
		}
	}
	if n := run("event-1"); n != 0 {
		t.Errorf("audit script with the first event id after 5 others = %d, want 0", n)
	}
	if n := st.client.XLen(ctx, auditKey).Val(); n != 6 {
		t.Errorf("audit stream holds %d events, want 6", n)
	}
	got, err := st.List(ctx, 10)
	if err != nil || len(got) != 6 || got[5].Actor != "secops" {
		t.Errorf("List = %+v, %v; want 6 events, the oldest by secops", got, err)
	}
}

func testAuditFieldsBounded(t *testing.T, st *Store) {
	ctx := context.Background()
	long := strings.Repeat("é", 1000)
	e := broker.AuditEvent{Actor: long, Action: long, SessionID: long, Subject: long, Outcome: long, Detail: long}
	if err := st.Append(ctx, e); err != nil {
		t.Fatalf("Append = %v", err)
	}
	got, err := st.List(ctx, 1)
	if err != nil || len(got) != 1 {
		t.Fatalf("List = %v, %v", got, err)
	}
	g := got[0]
	for name, f := range map[string]struct {
		v   string
		max int
	}{
		"Actor": {g.Actor, maxAuditFieldLen}, "Action": {g.Action, maxAuditFieldLen},
		"SessionID": {g.SessionID, maxAuditFieldLen}, "Subject": {g.Subject, maxAuditFieldLen},
		"Outcome": {g.Outcome, maxAuditFieldLen}, "Detail": {g.Detail, broker.MaxAuditDetailLen},
	} {
		if len(f.v) > f.max || len(f.v) < f.max-3 || !utf8.ValidString(f.v) || !strings.HasPrefix(long, f.v) {
			t.Errorf("%s stored as %d bytes (valid UTF-8: %v), want a prefix of at most %d", name, len(f.v), utf8.ValidString(f.v), f.max)
		}
	}
}
