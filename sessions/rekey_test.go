package sessions

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// testExpiryIndex checks that Create and End keep the expiry index, which
// CountSessions reads.
func testExpiryIndex(t *testing.T, st *Store) {
	ctx := context.Background()
	var created []*broker.Session
	for i := range 40 {
		s, _ := testSession(t, st.now(), fmt.Sprintf("auth0|expiry-%d", i%3), "")
		mustCreate(t, st, s)
		created = append(created, s)
	}
	for _, s := range created {
		score, err := st.client.ZScore(ctx, expiryKey(s.ID), s.ID).Result()
		if err != nil || int64(score) != s.AbsoluteExpiry.UnixMilli() {
			t.Errorf("ZSCORE %s %s = %v, %v; want %d", expiryKey(s.ID), s.ID, int64(score), err, s.AbsoluteExpiry.UnixMilli())
		}
	}
	if n, err := st.CountSessions(ctx); err != nil || n != int64(len(created)) {
		t.Errorf("CountSessions = %d, %v; want %d", n, err, len(created))
	}
	gone := created[0]
	if _, err := st.End(ctx, gone.ID, testEnd); err != nil {
		t.Fatalf("End = %v", err)
	}
	if err := st.client.ZScore(ctx, expiryKey(gone.ID), gone.ID).Err(); !errors.Is(err, redis.Nil) {
		t.Errorf("expiry index entry of an ended session: ZSCORE = %v, want none", err)
	}
	if n, err := st.CountSessions(ctx); err != nil || n != int64(len(created)-1) {
		t.Errorf("CountSessions after an End = %d, %v; want %d", n, err, len(created)-1)
	}
	if ttl, err := st.client.PTTL(ctx, expiryKey(created[1].ID)).Result(); err != nil || ttl <= 0 {
		t.Errorf("PTTL of an expiry index shard = %v, %v; want it to expire with its last entry", ttl, err)
	}
}

// testRekey moves sessions from key A to key B with the keyring "B,A", after
// which the keyring "B" alone reads them all.
func testRekey(t *testing.T, st *Store) {
	ctx := context.Background()
	keyA, keyB, keyC := "A:"+randomKey(t), "B:"+randomKey(t), "C:"+randomKey(t)
	onA := withKeys(st, mustKeyring(t, keyA))
	onBA := withKeys(st, mustKeyring(t, keyB+","+keyA))
	onB := withKeys(st, mustKeyring(t, keyB))

	var old []*broker.Session
	for i := range 5 {
		s, _ := testSession(t, st.now(), "auth0|rekey", fmt.Sprintf("op-%d", i))
		mustCreate(t, onA, s)
		old = append(old, s)
	}
	// A held refresh lease matches the SCAN pattern too.
	if _, ok, err := onA.TryLock(ctx, old[0].ID, time.Minute); err != nil || !ok {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}
	fresh, _ := testSession(t, st.now(), "auth0|rekey", "")
	mustCreate(t, onBA, fresh)
	lost, _ := testSession(t, st.now(), "auth0|rekey", "")
	mustCreate(t, withKeys(st, mustKeyring(t, keyC)), lost)
	ttlBefore := st.client.PTTL(ctx, sessionKey(old[1].ID)).Val()

	// Without rekeying, retiring A would end the old sessions: this is what
	// the rest of the test shows Rekey prevents.
	_, err := onB.Get(ctx, old[0].ID)
	assertUnreadable(t, "Get of a session sealed under A with keyring B, before Rekey", old[0].ID, err)

	got, err := onBA.Rekey(ctx, RekeyOptions{})
	if want := (RekeyReport{Rekeyed: len(old), Current: 1, Unreadable: 1, UnreadableIDs: []string{lost.ID}}); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Rekey = %+v, %v; want %+v, nil", got, err, want)
	}
	for _, s := range old {
		for _, f := range []string{fieldClaims, fieldTok, fieldLU} {
			if id := sealedFieldKeyID(t, st, s.ID, f); id != "B" {
				t.Errorf("session %s: %s sealed under key %q after Rekey, want B", s.ID, f, id)
			}
		}
		g, err := onB.Get(ctx, s.ID)
		if err != nil {
			t.Errorf("Get with keyring B after Rekey = %v", err)
			continue
		}
		assertSameSession(t, g, s)
	}
	if ttl := st.client.PTTL(ctx, sessionKey(old[1].ID)).Val(); ttl <= 0 || ttl > ttlBefore {
		t.Errorf("PTTL after Rekey = %v, want at most the %v before: rekeying is no use", ttl, ttlBefore)
	}
	if id := sealedKeyID(t, st, lost.ID); id != "C" {
		t.Errorf("unreadable session sealed under key %q after Rekey, want C, left alone", id)
	}

	got, err = onBA.Rekey(ctx, RekeyOptions{})
	if want := (RekeyReport{Current: len(old) + 1, Unreadable: 1, UnreadableIDs: []string{lost.ID}}); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Rekey again = %+v, %v; want %+v, nil", got, err, want)
	}
	if _, err := st.Get(ctx, lost.ID); !errors.As(err, new(*broker.UnreadableError)) {
		t.Errorf("Get of the unreadable session after Rekey without RemoveUnreadable = %v, want it left, unreadable", err)
	}
}

// testRekeyCompareAndSet checks that a rewrite made from tokens that a
// refresh replaced meanwhile is refused, and that Rekey beside a stream of
// refreshes never brings back older tokens. The refreshes come from a
// broker not yet moved from "A,B" to "B,A", so each puts an A blob back for
// Rekey to race on.
func testRekeyCompareAndSet(t *testing.T, st *Store) {
	ctx := context.Background()
	keyA, keyB := "A:"+randomKey(t), "B:"+randomKey(t)
	onA := withKeys(st, mustKeyring(t, keyA))
	onBA := withKeys(st, mustKeyring(t, keyB+","+keyA))
	onAB := withKeys(st, mustKeyring(t, keyA+","+keyB))

	s, _ := testSession(t, st.now(), "auth0|rekey-cas", "")
	mustCreate(t, onA, s)
	key := sessionKey(s.ID)
	stale := st.client.HGet(ctx, key, fieldTok).Val()
	s.Tokens.AccessToken = "ACCESS-REFRESHED"
	if err := refresh(t, onA, s.ID, s.Tokens); err != nil {
		t.Fatal(err)
	}
	refreshed := st.client.HGet(ctx, key, fieldTok).Val()
	if n, err := casScript.Run(ctx, st.client, []string{key}, 1, fieldTok, stale, fieldTok, "REPLACEMENT").Int(); err != nil || n != 2 {
		t.Errorf("compare-and-set script from a stale blob = %d, %v; want 2 (changed)", n, err)
	}
	if cur := st.client.HGet(ctx, key, fieldTok).Val(); cur != refreshed {
		t.Error("compare-and-set script from a stale blob replaced the refreshed tokens")
	}
	if r, err := onBA.rekeyBatch(ctx, []string{randomString(t, 16)}, RekeyOptions{}); err != nil || !reflect.DeepEqual(r, RekeyReport{Gone: 1}) {
		t.Errorf("rekeyBatch of a session that is gone = %+v, %v; want Gone 1", r, err)
	}

	s, _ = testSession(t, st.now(), "auth0|rekey-cas", "")
	mustCreate(t, onA, s)
	const refreshes = 200
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		defer close(stop)
		for i := range refreshes {
			s.Tokens.AccessToken = fmt.Sprintf("ACCESS-%d", i)
			if err := refresh(t, onAB, s.ID, s.Tokens); err != nil {
				t.Errorf("UpdateTokens = %v", err)
				return
			}
			// Only a later refresh may replace these tokens, and there is
			// none yet: reading anything else means Rekey wrote older ones.
			g, err := onAB.Get(ctx, s.ID)
			if err != nil {
				t.Errorf("Get = %v", err)
				return
			}
			if g.Tokens.AccessToken != s.Tokens.AccessToken {
				t.Errorf("access token right after refresh %d = %q, want %q", i, g.Tokens.AccessToken, s.Tokens.AccessToken)
				return
			}
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			// Losing every attempt to the refreshes is allowed, and said.
			if _, err := onBA.Rekey(ctx, RekeyOptions{}); err != nil && !strings.Contains(err.Error(), "run rekey again") {
				t.Errorf("Rekey = %v", err)
				return
			}
		}
	})
	wg.Wait()
	g, err := onBA.Get(ctx, s.ID)
	if err != nil {
		t.Fatalf("Get = %v", err)
	}
	if want := fmt.Sprintf("ACCESS-%d", refreshes-1); g.Tokens.AccessToken != want {
		t.Errorf("access token after Rekey raced refreshes = %q, want the last refresh's %q", g.Tokens.AccessToken, want)
	}
}

// testRekeyRemoveUnreadable ends, through End, the sessions that cannot be
// read, and leaves the others as a plain Rekey would.
func testRekeyRemoveUnreadable(t *testing.T, st *Store) {
	ctx := context.Background()
	keyA, keyC := "A:"+randomKey(t), "C:"+randomKey(t)
	onA := withKeys(st, mustKeyring(t, keyA))
	var readable []*broker.Session
	for range 2 {
		s, _ := testSession(t, st.now(), "auth0|rekey-remove", "")
		mustCreate(t, onA, s)
		readable = append(readable, s)
	}
	lost, _ := testSession(t, st.now(), "auth0|rekey-remove", "")
	mustCreate(t, withKeys(st, mustKeyring(t, keyC)), lost)
	edited, _ := testSession(t, st.now(), "auth0|rekey-remove", "")
	mustCreate(t, onA, edited)
	if err := st.client.HSet(ctx, sessionKey(edited.ID), fieldAbsExp, millis(edited.AbsoluteExpiry.Add(time.Hour))).Err(); err != nil {
		t.Fatal(err)
	}

	got, err := onA.Rekey(ctx, RekeyOptions{RemoveUnreadable: true})
	if err != nil {
		t.Fatalf("Rekey(RemoveUnreadable) = %v", err)
	}
	slices.Sort(got.UnreadableIDs)
	want := RekeyReport{Current: 2, Unreadable: 2, Removed: 2, UnreadableIDs: sorted(lost.ID, edited.ID)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Rekey(RemoveUnreadable) = %+v, want %+v", got, want)
	}
	for _, s := range []*broker.Session{lost, edited} {
		assertGone(t, st, s.ID)
		e, err := onA.Ending(ctx, s.ID)
		if err != nil {
			t.Errorf("Ending of a removed session = %v", err)
			continue
		}
		if e.Why != rekeyEnd || !e.Session.Unreadable || e.Session.Subject != s.Subject || e.Done {
			t.Errorf("Ending of a removed session = %+v, Session %+v; want why %+v, flagged Unreadable, not done", e, e.Session, rekeyEnd)
		}
		if !inOutbox(t, st, s.ID) {
			t.Errorf("removed session %s is not in the outbox, where the brokers' worker audits it", s.ID)
		}
	}
	for _, s := range readable {
		if _, err := onA.Get(ctx, s.ID); err != nil {
			t.Errorf("Get of a readable session after Rekey(RemoveUnreadable) = %v", err)
		}
	}
	if got, err := onA.Rekey(ctx, RekeyOptions{RemoveUnreadable: true}); err != nil || !reflect.DeepEqual(got, RekeyReport{Current: 2}) {
		t.Errorf("Rekey(RemoveUnreadable) again = %+v, %v; want 2 current", got, err)
	}
}
