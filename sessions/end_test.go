package sessions

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// inOutbox reports whether a session id is in the outbox of endings.
func inOutbox(t *testing.T, st *Store, id string) bool {
	t.Helper()
	err := st.client.ZScore(context.Background(), endsKey, id).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	return err == nil
}

func endingIDs(es []*broker.Ending) []string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.Session.ID
	}
	slices.Sort(ids)
	return ids
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func millis(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

func sorted(ids ...string) []string {
	return slices.Sorted(slices.Values(ids))
}

// testEndRepeat runs the end script twice with the same token, as go-redis
// does when the first reply is lost: both runs answer with the Ending.
// Then it checks what the end left.
func testEndRepeat(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|end-repeat", "op-end-repeat")
	mustCreate(t, st, s)
	mustLock(t, st, s.ID, time.Minute)
	at := time.Now().Truncate(time.Millisecond).UTC()
	keys := []string{sessionKey(s.ID), endedKey(s.ID), lockKey(s.ID)}
	run := func(token string) []any {
		t.Helper()
		res, err := endScript.Run(ctx, st.client, keys, token, "0",
			"secops", broker.ActionSessionRevoke, "admin", "by the book", "1", at.UnixMilli(),
			broker.EndRetention.Milliseconds()).Slice()
		if err != nil {
			t.Fatalf("end script = %v", err)
		}
		return res
	}
	first, second := run("token-1"), run("token-1")
	if len(first) != 2 || len(second) != 2 {
		t.Fatalf("end script twice with one token answered %v then %v; want 1 and the tombstone both times", first, second)
	}
	if first[0].(int64) != 1 || second[0].(int64) != 1 || !reflect.DeepEqual(fieldMap(first[1]), fieldMap(second[1])) {
		t.Errorf("end script twice with one token answered %v then %v, tombstones equal %v; want 1 and 1 with the same tombstone",
			first[0], second[0], reflect.DeepEqual(fieldMap(first[1]), fieldMap(second[1])))
	}
	if other := run("token-2"); other[0].(int64) != 0 {
		t.Errorf("end script with another token after the end answered %v, want 0 (not found)", other[0])
	}
	if _, err := st.End(ctx, s.ID, testEnd); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("End after the end = %v, want ErrNotFound", err)
	}

	e, err := st.Ending(ctx, s.ID)
	if err != nil {
		t.Fatalf("Ending = %v", err)
	}
	assertSameSession(t, e.Session, s)
	want := broker.EndReason{Actor: "secops", Action: broker.ActionSessionRevoke, Reason: "admin", Detail: "by the book", RevokeAtIdP: true}
	if e.Why != want || !e.At.Equal(at) || e.Done {
		t.Errorf("Ending = %+v at %v, done %v; want %+v at %v, not done", e.Why, e.At, e.Done, want, at)
	}
	assertGone(t, st, s.ID)
	if n := st.client.Exists(ctx, lockKey(s.ID)).Val(); n != 0 {
		t.Error("the refresh lease of an ended session is still there")
	}
	assertTTL(t, st.client, endedKey(s.ID), time.Now().Add(broker.EndRetention))
}

func testEndIfGeneration(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|end-generation", "")
	mustCreate(t, st, s)
	if err := refresh(t, st, s.ID, broker.Tokens{AccessToken: "ACCESS-2"}); err != nil {
		t.Fatal(err)
	}
	why := testEnd
	why.IfGeneration = 1
	if _, err := st.End(ctx, s.ID, why); !errors.Is(err, broker.ErrGenerationMoved) {
		t.Errorf("End(IfGeneration 1) at generation 2 = %v, want ErrGenerationMoved", err)
	}
	if _, err := st.Get(ctx, s.ID); err != nil {
		t.Errorf("Get after a refused End = %v, want the session still there", err)
	}
	why.IfGeneration = 2
	e, err := st.End(ctx, s.ID, why)
	if err != nil {
		t.Fatalf("End(IfGeneration 2) at generation 2 = %v", err)
	}
	if e.Session.Generation != 2 || e.Session.Tokens.AccessToken != "ACCESS-2" {
		t.Errorf("Ending.Session at generation %d with %q, want 2 with ACCESS-2", e.Session.Generation, e.Session.Tokens.AccessToken)
	}
	assertGone(t, st, s.ID)
}

func testCompleteEnd(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|complete-end", "op-complete")
	mustCreate(t, st, s)
	e, err := st.End(ctx, s.ID, testEnd)
	if err != nil {
		t.Fatalf("End = %v", err)
	}
	assertSameSession(t, e.Session, s)
	if e.Done || !inOutbox(t, st, s.ID) {
		t.Errorf("End: Done %v, in the outbox %v; want not done, in the outbox", e.Done, inOutbox(t, st, s.ID))
	}
	for i := range 2 {
		if err := st.CompleteEnd(ctx, s.ID); err != nil {
			t.Fatalf("CompleteEnd call %d = %v", i+1, err)
		}
	}
	done, err := st.Ending(ctx, s.ID)
	if err != nil {
		t.Fatalf("Ending after CompleteEnd = %v", err)
	}
	if !done.Done || done.Session.Unreadable || done.Why != testEnd {
		t.Errorf("Ending after CompleteEnd = %+v, Session.Unreadable %v; want done, readable, why %+v", done, done.Session.Unreadable, testEnd)
	}
	if done.Session.Tokens != (broker.Tokens{}) || done.Session.Claims != nil {
		t.Errorf("Ending after CompleteEnd still holds tokens or claims: %+v", done.Session)
	}
	if done.Session.Subject != s.Subject || done.Session.SID != s.SID || !done.Session.LastUsedAt.Equal(s.LastUsedAt) {
		t.Errorf("Ending after CompleteEnd: Session = %+v, want the session's subject, sid and last use", done.Session)
	}
	if n := st.client.HExists(ctx, endedKey(s.ID), fieldTok).Val() || st.client.HExists(ctx, endedKey(s.ID), fieldClaims).Val(); n {
		t.Error("the tombstone of a completed end still holds the sealed tokens or claims")
	}
	if inOutbox(t, st, s.ID) {
		t.Error("a completed end is still in the outbox")
	}
}

func testClaimEnds(t *testing.T, st *Store) {
	ctx := context.Background()
	clk := &clock{}
	st = withOptions(st, Options{Now: clk.Now})
	var ids []string
	for range 3 {
		s, _ := testSession(t, clk.Now(), "auth0|claim-ends", "")
		mustCreate(t, st, s)
		if _, err := st.End(ctx, s.ID, testEnd); err != nil {
			t.Fatalf("End = %v", err)
		}
		ids = append(ids, s.ID)
	}
	claim := func(limit int) []*broker.Ending {
		t.Helper()
		es, err := st.ClaimEnds(ctx, time.Minute, time.Minute, limit)
		if err != nil {
			t.Fatalf("ClaimEnds = %v", err)
		}
		return es
	}
	if got := claim(10); len(got) != 0 {
		t.Errorf("ClaimEnds of ends younger than olderThan = %v, want none", endingIDs(got))
	}
	clk.Advance(2 * time.Minute)

	firstTwo := claim(2)
	if len(firstTwo) != 2 {
		t.Fatalf("ClaimEnds(limit 2) = %v, want 2", endingIDs(firstTwo))
	}
	for _, e := range firstTwo {
		if e.Done || e.Session.Unreadable || e.Session.Tokens.RefreshToken == "" || e.Why != testEnd {
			t.Errorf("claimed Ending = %+v, want the session with its tokens, for the worker to revoke", e)
		}
	}
	rest := claim(10)
	if got, want := endingIDs(append(firstTwo, rest...)), sorted(ids...); !reflect.DeepEqual(got, want) {
		t.Errorf("ClaimEnds twice = %v, want each end once: %v", got, want)
	}
	if got := claim(10); len(got) != 0 {
		t.Errorf("ClaimEnds with every end claimed = %v, want none", endingIDs(got))
	}

	// A claim lapses after claimFor: the worker that held it died.
	if err := st.CompleteEnd(ctx, ids[0]); err != nil {
		t.Fatalf("CompleteEnd = %v", err)
	}
	clk.Advance(2 * time.Minute)
	if got, want := endingIDs(claim(10)), sorted(ids[1:]...); !reflect.DeepEqual(got, want) {
		t.Errorf("ClaimEnds after the claims lapsed = %v, want the ends not done %v", got, want)
	}
}

// testClaimEndsHousekeeping checks what ClaimEnds does with outbox entries
// that have no end to claim.
func testClaimEndsHousekeeping(t *testing.T, st *Store) {
	ctx := context.Background()
	clk := &clock{}
	st = withOptions(st, Options{Now: clk.Now})
	add := func(id string) {
		t.Helper()
		if err := st.client.ZAdd(ctx, endsKey, redis.Z{Score: float64(clk.Now().UnixMilli()), Member: id}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// An End that found nothing leaves its entry.
	nothing := randomString(t, 16)
	if _, err := st.End(ctx, nothing, testEnd); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("End of an unknown id = %v, want ErrNotFound", err)
	}
	// An End stopped between its entry and its script: the session lives.
	live, _ := testSession(t, clk.Now(), "auth0|housekeeping", "")
	mustCreate(t, st, live)
	add(live.ID)
	// A CompleteEnd stopped before it removed the entry.
	done, _ := testSession(t, clk.Now(), "auth0|housekeeping", "")
	mustCreate(t, st, done)
	if _, err := st.End(ctx, done.ID, testEnd); err != nil {
		t.Fatal(err)
	}
	if err := st.CompleteEnd(ctx, done.ID); err != nil {
		t.Fatal(err)
	}
	add(done.ID)
	add("not a session id")

	clk.Advance(2 * time.Minute)
	if got, err := st.ClaimEnds(ctx, time.Minute, time.Minute, 10); err != nil || len(got) != 0 {
		t.Errorf("ClaimEnds = %v, %v; want nothing to claim", endingIDs(got), err)
	}
	left, err := st.client.ZRange(ctx, endsKey, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(left, []string{live.ID}) {
		t.Errorf("outbox after ClaimEnds = %v, want only the live session's entry %s", left, live.ID)
	}
	if _, err := st.Get(ctx, live.ID); err != nil {
		t.Errorf("Get of the live session = %v", err)
	}
	if got, err := st.ClaimEnds(ctx, time.Minute, time.Minute, 0); err != nil || len(got) != 0 {
		t.Errorf("ClaimEnds(limit 0) = %v, %v; want none", got, err)
	}
	// Older than any End takes between its steps (a conditional End its
	// condition refused leaves such an entry), the live session's entry
	// goes; the session stays.
	clk.Advance(staleIntent)
	if _, err := st.ClaimEnds(ctx, time.Minute, time.Minute, 10); err != nil {
		t.Fatal(err)
	}
	if n := st.client.ZCard(ctx, endsKey).Val(); n != 0 {
		t.Errorf("outbox holds %d entries after the live session's went stale, want 0", n)
	}
	if _, err := st.Get(ctx, live.ID); err != nil {
		t.Errorf("Get of the live session after housekeeping = %v", err)
	}
}

// testUnknownKeyListedAndEnded checks that a record sealed under a key the
// keyring lacks blocks nothing: it is listed, flagged, and can be ended,
// and its end drains like any other.
func testUnknownKeyListedAndEnded(t *testing.T, st *Store) {
	ctx := context.Background()
	clk := &clock{}
	st = withOptions(st, Options{Now: clk.Now})
	onC := withKeys(st, mustKeyring(t, "retired-2025:"+randomKey(t)))
	sub, sid := "auth0|unknown-key", "op-unknown-key"
	lost, _ := testSession(t, clk.Now(), sub, sid)
	mustCreate(t, onC, lost)
	readable, _ := testSession(t, clk.Now().Add(time.Second), sub, sid)
	mustCreate(t, st, readable)

	_, err := st.Get(ctx, lost.ID)
	clear := assertUnreadable(t, "Get of a session sealed under a key the keyring lacks", lost.ID, err)
	if err != nil && strings.Contains(err.Error(), "retired-2025") {
		t.Errorf("Get of a session sealed under a key the keyring lacks = %q, quoting the key id stored in the record", err)
	}
	if clear != nil {
		want := &broker.Session{ID: lost.ID, Subject: sub, SID: sid, ClientID: lost.ClientID, CreatedAt: lost.CreatedAt,
			AbsoluteExpiry: lost.AbsoluteExpiry, IP: lost.IP, UserAgent: lost.UserAgent, Unreadable: true}
		if !reflect.DeepEqual(clear, want) {
			t.Errorf("UnreadableError.Session = %+v, want the clear fields only: %+v", clear, want)
		}
	}
	for name, list := range map[string]func() ([]*broker.Session, error){
		"ListBySubject": func() ([]*broker.Session, error) { return st.ListBySubject(ctx, sub) },
		"ListBySID":     func() ([]*broker.Session, error) { return st.ListBySID(ctx, sid) },
	} {
		got, err := list()
		if err != nil {
			t.Fatalf("%s = %v", name, err)
		}
		if ids := sessionIDs(got); !reflect.DeepEqual(ids, []string{readable.ID, lost.ID}) {
			t.Errorf("%s = %v, want %v", name, ids, []string{readable.ID, lost.ID})
			continue
		}
		if got[0].Unreadable || !got[1].Unreadable {
			t.Errorf("%s: Unreadable = %v, %v; want false, true", name, got[0].Unreadable, got[1].Unreadable)
		}
	}

	e, err := st.End(ctx, lost.ID, testEnd)
	if err != nil {
		t.Fatalf("End of an unreadable session = %v", err)
	}
	if !e.Session.Unreadable || e.Session.ID != lost.ID || e.Session.Subject != sub || e.Why != testEnd {
		t.Errorf("End of an unreadable session = %+v, Session %+v; want it flagged Unreadable", e, e.Session)
	}
	assertGone(t, st, lost.ID)
	if got, err := st.ListBySubject(ctx, sub); err != nil || !reflect.DeepEqual(sessionIDs(got), []string{readable.ID}) {
		t.Errorf("ListBySubject after the End = %v, %v; want %s only", sessionIDs(got), err, readable.ID)
	}
	clk.Advance(2 * time.Minute)
	claimed, err := st.ClaimEnds(ctx, time.Minute, time.Minute, 10)
	if err != nil || len(claimed) != 1 || claimed[0].Session.ID != lost.ID || !claimed[0].Session.Unreadable {
		t.Errorf("ClaimEnds = %v, %v; want the unreadable session's end", endingIDs(claimed), err)
	}
	if err := st.CompleteEnd(ctx, lost.ID); err != nil {
		t.Errorf("CompleteEnd of an unreadable session's end = %v", err)
	}
}

// testTamperedFields edits each field that grants access or decides how
// long a session lives, as someone with write access to Redis but not the
// keys would, and checks that the record no longer opens, even for a
// store that opened it before the edit. Clear fields the encryption does
// not bind (ip, ua, the touch script's copy of the last use) are not in the
// list.
func testTamperedFields(t *testing.T, st *Store) {
	ctx := context.Background()
	later, _ := testSession(t, time.Now().Add(time.Hour), "auth0|tamper-fields", "")
	mustCreate(t, st, later)
	laterHash := st.client.HGetAll(ctx, sessionKey(later.ID)).Val()
	attackerHash := sha256Hex("SECRET-ATTACKER")

	tests := []struct {
		field string
		value func(s *broker.Session) string
	}{
		{fieldSecretHash, func(*broker.Session) string { return attackerHash }},
		{fieldSub, func(*broker.Session) string { return "auth0|attacker" }},
		{fieldSID, func(*broker.Session) string { return "op-attacker" }},
		{fieldClientID, func(*broker.Session) string { return "other-client" }},
		{fieldCreatedAt, func(s *broker.Session) string { return millis(s.CreatedAt.Add(24 * time.Hour)) }},
		{fieldAbsExp, func(s *broker.Session) string { return millis(s.AbsoluteExpiry.Add(365 * 24 * time.Hour)) }},
		{fieldIdle, func(s *broker.Session) string { return strconv.FormatInt((100 * s.IdleTimeout).Milliseconds(), 10) }},
		{fieldGen, func(*broker.Session) string { return "2" }},
		{fieldLU, func(*broker.Session) string { return laterHash[fieldLU] }},
		{fieldTok, func(*broker.Session) string { return laterHash[fieldTok] }},
		{fieldClaims, func(*broker.Session) string { return laterHash[fieldClaims] }},
		{fieldVersion, func(*broker.Session) string { return "1" }},
		{fieldCreatedAt, func(*broker.Session) string { return "soon" }},
		{fieldGen, func(*broker.Session) string { return "0" }},
	}
	for _, tt := range tests {
		s, _ := testSession(t, time.Now(), "auth0|tamper-fields", "op-tamper")
		mustCreate(t, st, s)
		if _, err := st.Get(ctx, s.ID); err != nil {
			t.Fatalf("Get before editing %s = %v", tt.field, err)
		}
		value := tt.value(s)
		if err := st.client.HSet(ctx, sessionKey(s.ID), tt.field, value).Err(); err != nil {
			t.Fatal(err)
		}
		_, err := st.Get(ctx, s.ID)
		what := "Get after HSET " + tt.field + " " + value
		if len(value) > 40 {
			what = "Get after HSET " + tt.field + " <another session's>"
		}
		assertUnreadable(t, what, s.ID, err)
		assertNoSecrets(t, err, s)
		var unreadable *broker.UnreadableError
		if errors.As(err, &unreadable) && len(value) >= 4 && strings.Contains(unreadable.Err.Error(), value) {
			t.Errorf("%s: the error %q quotes the edited value", what, unreadable.Err)
		}
		if tt.field == fieldSub {
			got, err := st.ListBySubject(ctx, s.Subject)
			if err != nil || !slices.ContainsFunc(got, func(g *broker.Session) bool { return g.ID == s.ID && g.Unreadable && g.Subject == value }) {
				t.Errorf("ListBySubject after editing sub = %v, %v; want %s listed, flagged, as stored", sessionIDs(got), err, s.ID)
			}
		}
	}
}
