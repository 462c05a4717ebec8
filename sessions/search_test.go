package sessions

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// testListRecent walks every session in pages, newest first: sessions of
// many subjects over every expiry shard, several sharing one absolute
// expiry (so that a page boundary falls among them), one ended, one gone
// by its idle timeout, one past its absolute expiry and one unreadable.
func testListRecent(t *testing.T, st *Store) {
	ctx := context.Background()
	clk := &clock{}
	st = withOptions(st, Options{Now: clk.Now})
	base := clk.Now().Truncate(time.Millisecond)

	var want []broker.SessionPosition
	create := func(st *Store, s *broker.Session) {
		t.Helper()
		s.IdleTimeout = 24 * time.Hour
		mustCreate(t, st, s)
		want = append(want, broker.PositionOf(s))
	}
	for i := range 30 {
		s, _ := testSession(t, base, fmt.Sprintf("auth0|recent-%d", i%7), "")
		s.AbsoluteExpiry = base.Add(time.Duration(i) * time.Minute).Add(24 * time.Hour)
		create(st, s)
	}
	for range 5 {
		s, _ := testSession(t, base, "auth0|recent-tie", "")
		s.AbsoluteExpiry = base.Add(10*time.Minute + 24*time.Hour)
		create(st, s)
	}
	lost, _ := testSession(t, base, "auth0|recent-lost", "")
	create(withKeys(st, mustKeyring(t, "retired:"+randomKey(t))), lost)

	ended, _ := testSession(t, base, "auth0|recent-ended", "")
	mustCreate(t, st, ended)
	if _, err := st.End(ctx, ended.ID, testEnd); err != nil {
		t.Fatalf("End = %v", err)
	}
	idle, _ := testSession(t, base, "auth0|recent-idle", "")
	mustCreate(t, st, idle)
	// The idle end as Redis sees it: the key is gone, the index entry
	// stays until a listing meets it.
	if err := st.client.Del(ctx, sessionKey(idle.ID)).Err(); err != nil {
		t.Fatal(err)
	}
	// Idle by the store's clock once it moves on, while Redis, on its own
	// clock, still holds the key.
	idleByClock, _ := testSession(t, base, "auth0|recent-idle-clock", "")
	mustCreate(t, st, idleByClock)
	past, _ := testSession(t, base, "auth0|recent-past", "")
	past.AbsoluteExpiry = base.Add(time.Hour)
	past.IdleTimeout = 30 * time.Minute
	mustCreate(t, st, past)
	clk.Advance(2 * time.Hour)

	slices.SortFunc(want, broker.SessionOrder)
	for _, limit := range []int{1, 4, 7, 100} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			var got []broker.SessionPosition
			var after broker.SessionPosition
			for pages := 0; ; pages++ {
				if pages > len(want)+1 {
					t.Fatalf("ListRecent(limit %d) did not finish after %d pages", limit, pages)
				}
				page, next, err := st.ListRecent(ctx, after, limit)
				if err != nil {
					t.Fatalf("ListRecent(%+v, %d) = %v", after, limit, err)
				}
				if len(page) > limit {
					t.Fatalf("ListRecent(%d) returned %d sessions", limit, len(page))
				}
				for _, s := range page {
					got = append(got, broker.PositionOf(s))
					if s.ID == lost.ID != s.Unreadable {
						t.Errorf("session %s: Unreadable = %v", s.ID, s.Unreadable)
					}
				}
				if next.IsZero() {
					break
				}
				after = next
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("ListRecent pages = %d sessions %v\nwant %d in SessionOrder %v", len(got), positions(got), len(want), positions(want))
			}
		})
	}
	if err := st.client.ZScore(ctx, expiryKey(idle.ID), idle.ID).Err(); err == nil {
		t.Errorf("the expiry index still holds a session whose key is gone, after a listing met it")
	}
	if page, next, err := st.ListRecent(ctx, want[len(want)-1], 10); err != nil || len(page) != 0 || !next.IsZero() {
		t.Errorf("ListRecent after the last session = %d sessions, %+v, %v; want none and no next page", len(page), next, err)
	}
}

// testAuditSearch pages through the audit trail with each filter.
func testAuditSearch(t *testing.T, st *Store) {
	ctx := context.Background()
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var all []broker.AuditEvent
	for i := range 40 {
		e := broker.AuditEvent{
			Time:      base.Add(time.Duration(i) * time.Minute),
			Actor:     []string{"secops", broker.ActorUser, broker.ActorBroker, "unknown"}[i%4],
			Action:    []string{broker.ActionSessionRevoke, broker.ActionLogout, broker.ActionExpired, broker.ActionAdminDenied}[i%4],
			SessionID: fmt.Sprintf("session-%d", i%5),
			Subject:   fmt.Sprintf("auth0|%d", i%3),
			Outcome:   broker.OutcomeOK,
			Detail:    fmt.Sprint(i),
			ClientIP:  "198.51.100.4",
			UserAgent: "curl/8.5.0",
			RequestID: fmt.Sprintf("req-%d", i),
		}
		if err := st.Append(ctx, e); err != nil {
			t.Fatalf("Append = %v", err)
		}
		all = append(all, e)
	}
	slices.Reverse(all)

	for _, tc := range []struct {
		name string
		q    broker.AuditQuery
	}{
		{"everything", broker.AuditQuery{}},
		{"action", broker.AuditQuery{Action: broker.ActionExpired}},
		{"actor", broker.AuditQuery{Actor: "secops"}},
		{"subject", broker.AuditQuery{Subject: "auth0|1"}},
		{"session", broker.AuditQuery{SessionID: "session-3"}},
		{"time range", broker.AuditQuery{Since: base.Add(10 * time.Minute), Until: base.Add(20 * time.Minute)}},
		{"combined", broker.AuditQuery{Actor: broker.ActorUser, Subject: "auth0|2", Since: base.Add(5 * time.Minute)}},
		{"nothing", broker.AuditQuery{Action: "no-such-action"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []string
			for _, e := range all {
				if tc.q.Match(e) {
					want = append(want, e.Detail)
				}
			}
			for _, limit := range []int{1, 3, 100} {
				q := tc.q
				q.Limit = limit
				var got []string
				for pages := 0; ; pages++ {
					if pages > len(all)+1 {
						t.Fatalf("Search did not finish")
					}
					page, next, err := st.Search(ctx, q)
					if err != nil {
						t.Fatalf("Search(%+v) = %v", q, err)
					}
					if len(page) > limit {
						t.Fatalf("Search(limit %d) returned %d events", limit, len(page))
					}
					for _, e := range page {
						if e.ID == "" || e.ClientIP != "198.51.100.4" || e.UserAgent != "curl/8.5.0" || e.RequestID != "req-"+e.Detail {
							t.Errorf("event %s = %+v, want its id and client fields", e.Detail, e)
						}
						got = append(got, e.Detail)
					}
					if next == "" {
						break
					}
					q.Before = next
				}
				if !slices.Equal(got, want) {
					t.Errorf("Search(limit %d) pages = %v, want newest first %v", limit, got, want)
				}
			}
		})
	}
	for _, bad := range []string{"x", "1-", "-1", "1-2-3", "+1-0", "99999999999999999999-0"} {
		if _, _, err := st.Search(ctx, broker.AuditQuery{Before: bad, Limit: 1}); !errors.Is(err, broker.ErrBadCursor) {
			t.Errorf("Search(Before %q) = %v, want ErrBadCursor", bad, err)
		}
	}
	if page, next, err := st.Search(ctx, broker.AuditQuery{Before: "0-0", Limit: 1}); err != nil || len(page) != 0 || next != "" {
		t.Errorf("Search(Before 0-0) = %v, %q, %v; want nothing", page, next, err)
	}
}

// testAuditSearchBounded checks that a search that matches nothing stops
// after examining a bounded number of events and says where to go on.
func testAuditSearchBounded(t *testing.T, st *Store) {
	ctx := context.Background()
	const n = auditSearchScan + 5
	pipe := st.client.Pipeline()
	for i := range n {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: auditKey, Values: []any{
			auditFieldTime, time.Now().UTC().Format(auditTimeFormat), auditFieldAction, broker.ActionLogout, auditFieldDetail, fmt.Sprint(i),
		}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	q := broker.AuditQuery{Action: broker.ActionExpired, Limit: 10}
	page, next, err := st.Search(ctx, q)
	if err != nil || len(page) != 0 || next == "" {
		t.Fatalf("Search over %d unmatched events = %d events, next %q, %v; want none and a cursor to go on from", n, len(page), next, err)
	}
	q.Before = next
	if page, next, err = st.Search(ctx, q); err != nil || len(page) != 0 || next != "" {
		t.Errorf("the second page = %d events, next %q, %v; want none and the end", len(page), next, err)
	}
}

func positions(ps []broker.SessionPosition) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = fmt.Sprintf("%d.%s", p.AbsoluteExpiry.UnixMilli(), p.ID)
	}
	return out
}
