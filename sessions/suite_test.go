package sessions

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// runStoreSuite is the behaviour every deployment of the store must show:
// standalone, Sentinel and Cluster alike. newStore returns a Store on an
// empty keyspace.
func runStoreSuite(t *testing.T, newStore func(t *testing.T) *Store) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, newStore(t)) })
	t.Run("UnknownID", func(t *testing.T) { testUnknownID(t, newStore(t)) })
	t.Run("ExpiryTTL", func(t *testing.T) { testExpiryTTL(t, newStore(t)) })
	t.Run("ExpiryReal", func(t *testing.T) { testExpiryReal(t, newStore(t)) })
	t.Run("Touch", func(t *testing.T) { testTouch(t, newStore(t)) })
	t.Run("TouchDeleted", func(t *testing.T) { testTouchDeleted(t, newStore(t)) })
	t.Run("TouchNeverBackwards", func(t *testing.T) { testTouchNeverBackwards(t, newStore(t)) })
	t.Run("UpdateTokens", func(t *testing.T) { testUpdateTokens(t, newStore(t)) })
	t.Run("UpdateTokensDeleted", func(t *testing.T) { testUpdateTokensDeleted(t, newStore(t)) })
	t.Run("FencedWrite", func(t *testing.T) { testFencedWrite(t, newStore(t)) })
	t.Run("FencedWriteRepeat", func(t *testing.T) { testFencedWriteRepeat(t, newStore(t)) })
	t.Run("FencedWriteLease", func(t *testing.T) { testFencedWriteLease(t, newStore(t)) })
	t.Run("RescueWrite", func(t *testing.T) { testRescueWrite(t, newStore(t)) })
	t.Run("ConcurrentEnd", func(t *testing.T) { testConcurrentEnd(t, newStore(t)) })
	t.Run("EndRepeat", func(t *testing.T) { testEndRepeat(t, newStore(t)) })
	t.Run("EndIfGeneration", func(t *testing.T) { testEndIfGeneration(t, newStore(t)) })
	t.Run("CompleteEnd", func(t *testing.T) { testCompleteEnd(t, newStore(t)) })
	t.Run("ClaimEnds", func(t *testing.T) { testClaimEnds(t, newStore(t)) })
	t.Run("ClaimEndsHousekeeping", func(t *testing.T) { testClaimEndsHousekeeping(t, newStore(t)) })
	t.Run("ListBySubject", func(t *testing.T) { testListBySubject(t, newStore(t)) })
	t.Run("ListBySubjectPrunes", func(t *testing.T) { testListPrunes(t, newStore(t)) })
	t.Run("ListBySID", func(t *testing.T) { testListBySID(t, newStore(t)) })
	t.Run("ListRecent", func(t *testing.T) { testListRecent(t, newStore(t)) })
	t.Run("IndexTTL", func(t *testing.T) { testIndexTTL(t, newStore(t)) })
	t.Run("LockExcludes", func(t *testing.T) { testLockExcludes(t, newStore(t)) })
	t.Run("LockReleaseByNonOwner", func(t *testing.T) { testLockReleaseByNonOwner(t, newStore(t)) })
	t.Run("LockExtend", func(t *testing.T) { testLockExtend(t, newStore(t)) })
	t.Run("LockRepeat", func(t *testing.T) { testLockRepeat(t, newStore(t)) })
	t.Run("FirstUse", func(t *testing.T) { testFirstUse(t, newStore(t)) })
	t.Run("AuditNewestFirst", func(t *testing.T) { testAuditNewestFirst(t, newStore(t)) })
	t.Run("AuditCapped", func(t *testing.T) { testAuditCapped(t, newStore(t)) })
	t.Run("AuditRepeat", func(t *testing.T) { testAuditRepeat(t, newStore(t)) })
	t.Run("AuditFieldsBounded", func(t *testing.T) { testAuditFieldsBounded(t, newStore(t)) })
	t.Run("AuditSearch", func(t *testing.T) { testAuditSearch(t, newStore(t)) })
	t.Run("AuditSearchBounded", func(t *testing.T) { testAuditSearchBounded(t, newStore(t)) })
	t.Run("NoPlaintext", func(t *testing.T) { testNoPlaintext(t, newStore(t)) })
	t.Run("KeyRotation", func(t *testing.T) { testKeyRotation(t, newStore(t)) })
	t.Run("TamperedTok", func(t *testing.T) { testTamperedTok(t, newStore(t)) })
	t.Run("MovedTok", func(t *testing.T) { testMovedTok(t, newStore(t)) })
	t.Run("TamperedFields", func(t *testing.T) { testTamperedFields(t, newStore(t)) })
	t.Run("UnknownKeyListedAndEnded", func(t *testing.T) { testUnknownKeyListedAndEnded(t, newStore(t)) })
	t.Run("ReadAfterChange", func(t *testing.T) { testReadAfterChange(t, newStore(t)) })
	t.Run("ExpiryIndex", func(t *testing.T) { testExpiryIndex(t, newStore(t)) })
	t.Run("Rekey", func(t *testing.T) { testRekey(t, newStore(t)) })
	t.Run("RekeyCompareAndSet", func(t *testing.T) { testRekeyCompareAndSet(t, newStore(t)) })
	t.Run("RekeyRemoveUnreadable", func(t *testing.T) { testRekeyRemoveUnreadable(t, newStore(t)) })
	t.Run("UpgradeRecords", func(t *testing.T) { testUpgradeRecords(t, newStore(t)) })
	t.Run("SchemaBehind", func(t *testing.T) { testSchemaBehind(t, newStore(t)) })
	t.Run("Cache", func(t *testing.T) { runCacheSuite(t, newStore) })
	t.Run("DPoPBinding", func(t *testing.T) { testDPoPBinding(t, newStore(t)) })
}

// testReadAfterChange reads a session repeatedly while its record changes
// underneath, from this store and from another replica's: every read reflects
// the record as it is now, never an earlier opened copy.
func testReadAfterChange(t *testing.T, st *Store) {
	ctx := context.Background()
	other := withOptions(st, Options{Now: st.now})
	s, _ := testSession(t, st.now(), "sub-change", "")
	mustCreate(t, st, s)
	for i := range 3 {
		got, err := st.Get(ctx, s.ID)
		if err != nil {
			t.Fatalf("Get = %v", err)
		}
		if want := s.Tokens.AccessToken; got.Tokens.AccessToken != want {
			t.Fatalf("read %d: access token %q, want %q", i, got.Tokens.AccessToken, want)
		}
		s.Tokens.AccessToken = fmt.Sprintf("ACCESS-ROTATED-%d", i)
		if err := refresh(t, other, s.ID, s.Tokens); err != nil {
			t.Fatalf("UpdateTokens on another replica = %v", err)
		}
	}
	if _, err := other.End(ctx, s.ID, testEnd); err != nil {
		t.Fatalf("End on another replica = %v", err)
	}
	if _, err := st.Get(ctx, s.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get after an end elsewhere = %v, want ErrNotFound", err)
	}
}

// clock is a settable clock that starts at the real time, since Redis
// expires keys by its own clock.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off += d
}

// withOptions returns a Store on the same Redis and keyring as st.
func withOptions(st *Store, opts Options) *Store { return New(st.client, st.keys, opts) }

// withKeys returns a Store on the same Redis as st with another keyring.
func withKeys(st *Store, keys *Keyring) *Store {
	return New(st.client, keys, Options{Now: st.now, AuditMaxLen: st.auditMaxLen})
}

func randomString(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// testSession returns a session that started at now, lasts an hour if used,
// and whose tokens are distinctive strings; secret is its handle's secret.
func testSession(t *testing.T, now time.Time, sub, sid string) (s *broker.Session, secret string) {
	t.Helper()
	now = now.Truncate(time.Millisecond).UTC()
	secret = "SECRET-" + randomString(t, 32)
	sum := sha256.Sum256([]byte(secret))
	tag := randomString(t, 8)
	return &broker.Session{
		ID:         randomString(t, 16),
		SecretHash: sum[:],
		Subject:    sub,
		SID:        sid,
		ClientID:   "mobile-app",
		Claims: map[string]any{
			"sub":            sub,
			"email":          "EMAIL-" + tag + "@example.test",
			"email_verified": true,
			"auth_time":      float64(now.Unix()),
			"groups":         []any{"GROUP-" + tag, "staff"},
			"address":        map[string]any{"locality": "LOCALITY-" + tag},
		},
		Tokens: broker.Tokens{
			AccessToken:  "ACCESS-" + tag,
			TokenType:    "Bearer",
			RefreshToken: "REFRESH-" + tag,
			IDToken:      "IDTOKEN-" + tag,
			Expiry:       now.Add(5*time.Minute + 123456789*time.Nanosecond),
		},
		CreatedAt:      now,
		LastUsedAt:     now,
		AbsoluteExpiry: now.Add(24 * time.Hour),
		IdleTimeout:    time.Hour,
		IP:             "203.0.113.7",
		UserAgent:      "ExampleApp/1.0 (iPhone; iOS 18.1)",
	}, secret
}

func mustCreate(t *testing.T, st *Store, s *broker.Session) {
	t.Helper()
	if err := st.Create(context.Background(), s); err != nil {
		t.Fatalf("Create(%s) = %v", s.ID, err)
	}
}

// testEnd is the reason the tests end sessions with when the reason does
// not matter.
var testEnd = broker.EndReason{Actor: broker.ActorUser, Action: broker.ActionLogout, Reason: "logout", RevokeAtIdP: true}

// refresh stores new tokens the way the broker does: under the session's
// lease, from the generation it read. It may run outside the test's
// goroutine, so it reports rather than stops.
func refresh(t *testing.T, st *Store, id string, tok broker.Tokens) error {
	t.Helper()
	ctx := context.Background()
	lease, ok, err := st.TryLock(ctx, id, 10*time.Second)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("TryLock(%s) = false, want the lease", id)
	}
	defer lease.Release(ctx)
	cur, err := st.Get(ctx, id)
	if err != nil {
		return err
	}
	return st.UpdateTokens(ctx, id, lease, cur.Generation, tok)
}

func assertSameSession(t *testing.T, got, want *broker.Session) {
	t.Helper()
	check := func(field string, g, w any) {
		t.Helper()
		if !reflect.DeepEqual(g, w) {
			t.Errorf("session %s: %s = %#v, want %#v", want.ID, field, g, w)
		}
	}
	checkTime := func(field string, g, w time.Time) {
		t.Helper()
		if !g.Equal(w) {
			t.Errorf("session %s: %s = %v, want %v", want.ID, field, g, w)
		}
	}
	check("ID", got.ID, want.ID)
	check("SecretHash", got.SecretHash, want.SecretHash)
	check("Subject", got.Subject, want.Subject)
	check("SID", got.SID, want.SID)
	check("ClientID", got.ClientID, want.ClientID)
	check("Unreadable", got.Unreadable, false)
	check("Claims", got.Claims, want.Claims)
	check("Tokens.AccessToken", got.Tokens.AccessToken, want.Tokens.AccessToken)
	check("Tokens.TokenType", got.Tokens.TokenType, want.Tokens.TokenType)
	check("Tokens.RefreshToken", got.Tokens.RefreshToken, want.Tokens.RefreshToken)
	check("Tokens.IDToken", got.Tokens.IDToken, want.Tokens.IDToken)
	checkTime("Tokens.Expiry", got.Tokens.Expiry, want.Tokens.Expiry)
	checkTime("CreatedAt", got.CreatedAt, want.CreatedAt)
	checkTime("LastUsedAt", got.LastUsedAt, want.LastUsedAt)
	checkTime("AbsoluteExpiry", got.AbsoluteExpiry, want.AbsoluteExpiry)
	check("IdleTimeout", got.IdleTimeout, want.IdleTimeout)
	check("IP", got.IP, want.IP)
	check("UserAgent", got.UserAgent, want.UserAgent)
}

func assertNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("%s = %v, want ErrNotFound", what, err)
	}
}

// assertUnreadable checks that err reports the record of session id as
// unreadable, neither "not found" nor "unavailable": a record that cannot be
// read must not pass for a missing one. It returns what the record says in
// the clear.
func assertUnreadable(t *testing.T, what, id string, err error) *broker.Session {
	t.Helper()
	var unreadable *broker.UnreadableError
	if !errors.As(err, &unreadable) || !errors.Is(err, broker.ErrUnreadable) {
		t.Errorf("%s = %v, want an *UnreadableError", what, err)
		return nil
	}
	if broker.ErrorCode(err) != broker.CodeInternal {
		t.Errorf("%s: ErrorCode = %s, want %s", what, broker.ErrorCode(err), broker.CodeInternal)
	}
	if s := unreadable.Session; s == nil || s.ID != id || !s.Unreadable {
		t.Errorf("%s: UnreadableError.Session = %+v, want session %s flagged Unreadable", what, s, id)
		return nil
	}
	return unreadable.Session
}

func pttl(t *testing.T, c redis.UniversalClient, key string) time.Duration {
	t.Helper()
	d, err := c.PTTL(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("PTTL %s: %v", key, err)
	}
	return d
}

// assertTTL checks that key expires at about want: within the time the test
// took between setting the expiry and asking.
func assertTTL(t *testing.T, c redis.UniversalClient, key string, want time.Time) {
	t.Helper()
	got := pttl(t, c, key)
	expected := time.Until(want)
	if diff := expected - got; diff < -50*time.Millisecond || diff > time.Second {
		t.Errorf("PTTL %s = %v, want about %v", key, got, expected)
	}
}

func testRoundTrip(t *testing.T, st *Store) {
	ctx := context.Background()
	withSID, _ := testSession(t, time.Now(), "auth0|round-trip", "sid-1")
	withoutSID, _ := testSession(t, time.Now(), "auth0|round-trip", "")
	withoutSID.Claims = nil
	withoutSID.Tokens.RefreshToken = ""
	withoutSID.Tokens.Expiry = time.Time{}
	for _, want := range []*broker.Session{withSID, withoutSID} {
		mustCreate(t, st, want)
		got, err := st.Get(ctx, want.ID)
		if err != nil {
			t.Fatalf("Get(%s) = %v", want.ID, err)
		}
		assertSameSession(t, got, want)
		if !got.Tokens.Expiry.IsZero() && got.Tokens.Expiry.Nanosecond()%int(time.Millisecond) == 0 {
			t.Errorf("Tokens.Expiry lost its sub-millisecond part: %v", got.Tokens.Expiry)
		}
	}
}

func testUnknownID(t *testing.T, st *Store) {
	ctx := context.Background()
	for _, id := range []string{randomString(t, 16), "not-a-session-id", "", "{x}"} {
		_, err := st.Get(ctx, id)
		assertNotFound(t, fmt.Sprintf("Get(%q)", id), err)
		_, err = st.End(ctx, id, testEnd)
		assertNotFound(t, fmt.Sprintf("End(%q)", id), err)
		_, err = st.Ending(ctx, id)
		assertNotFound(t, fmt.Sprintf("Ending(%q)", id), err)
		err = st.CompleteEnd(ctx, id)
		assertNotFound(t, fmt.Sprintf("CompleteEnd(%q)", id), err)
	}
}

func testExpiryTTL(t *testing.T, st *Store) {
	now := time.Now()
	idleBound, _ := testSession(t, now, "auth0|ttl", "")
	idleBound.IdleTimeout = 30 * time.Minute
	absBound, _ := testSession(t, now, "auth0|ttl", "")
	absBound.AbsoluteExpiry = absBound.CreatedAt.Add(10 * time.Minute)
	for _, s := range []*broker.Session{idleBound, absBound} {
		mustCreate(t, st, s)
		assertTTL(t, st.client, sessionKey(s.ID), s.ExpiresAt())
	}
}

func testExpiryReal(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|expiry", "")
	s.IdleTimeout = 1500 * time.Millisecond
	mustCreate(t, st, s)
	if _, err := st.Get(ctx, s.ID); err != nil {
		t.Fatalf("Get before expiry = %v", err)
	}
	time.Sleep(time.Until(s.ExpiresAt()) + 50*time.Millisecond)
	_, err := st.Get(ctx, s.ID)
	assertNotFound(t, "Get after ExpiresAt", err)
}

func testTouch(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now().Add(-10*time.Minute), "auth0|touch", "")
	mustCreate(t, st, s)
	at := time.Now().Truncate(time.Millisecond)
	expiresAt := at.Add(s.IdleTimeout)
	if err := st.Touch(ctx, s.ID, at, expiresAt); err != nil {
		t.Fatalf("Touch = %v", err)
	}
	got, err := st.Get(ctx, s.ID)
	if err != nil {
		t.Fatalf("Get after Touch = %v", err)
	}
	if !got.LastUsedAt.Equal(at) {
		t.Errorf("LastUsedAt after Touch = %v, want %v", got.LastUsedAt, at)
	}
	if !got.ExpiresAt().Equal(expiresAt) {
		t.Errorf("ExpiresAt after Touch = %v, want %v", got.ExpiresAt(), expiresAt)
	}
	assertTTL(t, st.client, sessionKey(s.ID), expiresAt)
}

func testTouchDeleted(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|touch-deleted", "")
	mustCreate(t, st, s)
	if _, err := st.End(ctx, s.ID, testEnd); err != nil {
		t.Fatalf("End = %v", err)
	}
	err := st.Touch(ctx, s.ID, time.Now(), time.Now().Add(time.Hour))
	assertNotFound(t, "Touch after End", err)
	assertGone(t, st, s.ID)
}

// assertGone checks that nothing was written back under a session's key.
func assertGone(t *testing.T, st *Store, id string) {
	t.Helper()
	n, err := st.client.Exists(context.Background(), sessionKey(id)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("session key %s exists again after its session ended", id)
	}
}

func testUpdateTokens(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|update", "sid-update")
	mustCreate(t, st, s)
	ttlBefore := pttl(t, st.client, sessionKey(s.ID))
	s.Tokens = broker.Tokens{
		AccessToken:  "ACCESS-2",
		TokenType:    "DPoP",
		RefreshToken: "REFRESH-2",
		IDToken:      "IDTOKEN-2",
		Expiry:       time.Now().Add(time.Hour).UTC(),
	}
	if err := refresh(t, st, s.ID, s.Tokens); err != nil {
		t.Fatalf("UpdateTokens = %v", err)
	}
	got, err := st.Get(ctx, s.ID)
	if err != nil {
		t.Fatalf("Get after UpdateTokens = %v", err)
	}
	assertSameSession(t, got, s)
	if got.Generation != 2 {
		t.Errorf("Generation after one refresh = %d, want 2", got.Generation)
	}
	if after := pttl(t, st.client, sessionKey(s.ID)); after <= 0 || after > ttlBefore {
		t.Errorf("PTTL after UpdateTokens = %v, want kept at about %v", after, ttlBefore)
	}
}

func testUpdateTokensDeleted(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|update-deleted", "")
	mustCreate(t, st, s)
	l, ok, err := st.TryLock(ctx, s.ID, time.Minute)
	if err != nil || !ok {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}
	if _, err := st.End(ctx, s.ID, testEnd); err != nil {
		t.Fatalf("End = %v", err)
	}
	err = st.UpdateTokens(ctx, s.ID, l, 1, broker.Tokens{AccessToken: "ACCESS-late"})
	assertNotFound(t, "UpdateTokens after End", err)
	assertGone(t, st, s.ID)
	// The script alone, as if the session ended between the read and it.
	n, err := updateTokensScript.Run(ctx, st.client, []string{sessionKey(s.ID), lockKey(s.ID)}, "1", "2", l.(*lease).token, "BLOB", recordVersion).Int()
	if err != nil || n != 0 {
		t.Errorf("update tokens script on an ended session = %d, %v; want 0 (gone)", n, err)
	}
	assertGone(t, st, s.ID)
	unknown := randomString(t, 16)
	l, _, _ = st.TryLock(ctx, unknown, time.Minute)
	err = st.UpdateTokens(ctx, unknown, l, 1, broker.Tokens{AccessToken: "ACCESS-never"})
	assertNotFound(t, "UpdateTokens of an unknown id", err)
	assertGone(t, st, unknown)
}

func testConcurrentEnd(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|concurrent", "")
	mustCreate(t, st, s)
	const n = 20
	var got, notFound atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			why := testEnd
			why.Detail = fmt.Sprint(i)
			e, err := st.End(ctx, s.ID, why)
			switch {
			case err == nil && e.Session.ID == s.ID && e.Why == why:
				got.Add(1)
			case errors.Is(err, broker.ErrNotFound):
				notFound.Add(1)
			default:
				t.Errorf("End = %+v, %v", e, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if got.Load() != 1 || notFound.Load() != n-1 {
		t.Errorf("%d concurrent Ends: %d got the Ending, %d got ErrNotFound; want 1 and %d", n, got.Load(), notFound.Load(), n-1)
	}
}

func sessionIDs(ss []*broker.Session) []string {
	ids := make([]string, len(ss))
	for i, s := range ss {
		ids[i] = s.ID
	}
	return ids
}

func testListBySubject(t *testing.T, st *Store) {
	ctx := context.Background()
	sub := "auth0|list {with} braces"
	base := time.Now()
	var want []string
	for i := range 3 {
		s, _ := testSession(t, base.Add(time.Duration(i)*time.Second), sub, "")
		mustCreate(t, st, s)
		want = append([]string{s.ID}, want...)
	}
	other, _ := testSession(t, base, "auth0|someone-else", "")
	mustCreate(t, st, other)

	got, err := st.ListBySubject(ctx, sub)
	if err != nil {
		t.Fatalf("ListBySubject = %v", err)
	}
	if ids := sessionIDs(got); !reflect.DeepEqual(ids, want) {
		t.Errorf("ListBySubject = %v, want newest first %v", ids, want)
	}
	if got, err := st.ListBySubject(ctx, "auth0|nobody"); err != nil || len(got) != 0 {
		t.Errorf("ListBySubject(unknown) = %v, %v; want none", got, err)
	}
}

func testListPrunes(t *testing.T, st *Store) {
	ctx := context.Background()
	clk := &clock{}
	st = withOptions(st, Options{Now: clk.Now})
	sub := "auth0|prune"
	index := subjectKey(sub)
	now := time.Now()

	live, _ := testSession(t, now, sub, "")
	live.AbsoluteExpiry = live.CreatedAt.Add(48 * time.Hour)
	live.IdleTimeout = 24 * time.Hour
	deleted, _ := testSession(t, now, sub, "")
	idleGone, _ := testSession(t, now, sub, "")
	pastAbsolute, _ := testSession(t, now, sub, "")
	pastAbsolute.AbsoluteExpiry = pastAbsolute.CreatedAt.Add(2 * time.Hour)
	for _, s := range []*broker.Session{live, deleted, idleGone, pastAbsolute} {
		mustCreate(t, st, s)
	}
	if _, err := st.End(ctx, deleted.ID, testEnd); err != nil {
		t.Fatalf("End = %v", err)
	}
	// As if its idle timeout had passed: the key is gone, the entry stays.
	if err := st.client.Del(ctx, sessionKey(idleGone.ID)).Err(); err != nil {
		t.Fatal(err)
	}
	// An index entry whose session was never written, as after a Create
	// that failed between the session and its index.
	if err := st.client.ZAdd(ctx, index, redis.Z{Score: float64(now.Add(time.Hour).UnixMilli()), Member: randomString(t, 16)}).Err(); err != nil {
		t.Fatal(err)
	}
	// pastAbsolute ends by the clock; its key still lives in Redis, which
	// does not know the store's clock.
	clk.Advance(3 * time.Hour)

	got, err := st.ListBySubject(ctx, sub)
	if err != nil {
		t.Fatalf("ListBySubject = %v", err)
	}
	if ids := sessionIDs(got); !reflect.DeepEqual(ids, []string{live.ID}) {
		t.Errorf("ListBySubject = %v, want only the live session %s", ids, live.ID)
	}
	members, err := st.client.ZRange(ctx, index, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(members, []string{live.ID}) {
		t.Errorf("index after ListBySubject = %v, want pruned to [%s]", members, live.ID)
	}
}

func testListBySID(t *testing.T, st *Store) {
	ctx := context.Background()
	now := time.Now()
	a, _ := testSession(t, now, "auth0|sid-a", "op-session-1")
	b, _ := testSession(t, now.Add(time.Second), "auth0|sid-b", "op-session-1")
	c, _ := testSession(t, now, "auth0|sid-a", "op-session-2")
	gone, _ := testSession(t, now, "auth0|sid-a", "op-session-1")
	for _, s := range []*broker.Session{a, b, c, gone} {
		mustCreate(t, st, s)
	}
	if _, err := st.End(ctx, gone.ID, testEnd); err != nil {
		t.Fatalf("End = %v", err)
	}
	if err := st.client.ZAdd(ctx, sidKey("op-session-1"), redis.Z{Score: float64(now.Add(time.Hour).UnixMilli()), Member: randomString(t, 16)}).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := st.ListBySID(ctx, "op-session-1")
	if err != nil {
		t.Fatalf("ListBySID = %v", err)
	}
	if ids, want := sessionIDs(got), []string{b.ID, a.ID}; !reflect.DeepEqual(ids, want) {
		t.Errorf("ListBySID = %v, want %v", ids, want)
	}
	if n, err := st.client.ZCard(ctx, sidKey("op-session-1")).Result(); err != nil || n != 2 {
		t.Errorf("sid index after ListBySID holds %d entries (%v), want 2", n, err)
	}
	if got, err := st.ListBySID(ctx, "op-session-unknown"); err != nil || len(got) != 0 {
		t.Errorf("ListBySID(unknown) = %v, %v; want none", got, err)
	}
}

func testIndexTTL(t *testing.T, st *Store) {
	now := time.Now()
	sub, sid := "auth0|index-ttl", "op-session-ttl"
	long, _ := testSession(t, now, sub, sid)
	long.AbsoluteExpiry = long.CreatedAt.Add(72 * time.Hour)
	short, _ := testSession(t, now, sub, sid)
	short.AbsoluteExpiry = short.CreatedAt.Add(2 * time.Hour)
	mustCreate(t, st, short)
	assertTTL(t, st.client, subjectKey(sub), short.AbsoluteExpiry)
	mustCreate(t, st, long)
	assertTTL(t, st.client, subjectKey(sub), long.AbsoluteExpiry)
	assertTTL(t, st.client, sidKey(sid), long.AbsoluteExpiry)
	// A later, shorter-lived session must not cut the index's life short.
	shorter, _ := testSession(t, now, sub, sid)
	shorter.AbsoluteExpiry = shorter.CreatedAt.Add(time.Hour)
	mustCreate(t, st, shorter)
	assertTTL(t, st.client, subjectKey(sub), long.AbsoluteExpiry)
}

func testLockExcludes(t *testing.T, st *Store) {
	ctx := context.Background()
	id := randomString(t, 16)
	lease, ok, err := st.TryLock(ctx, id, 10*time.Second)
	if err != nil || !ok {
		t.Fatalf("first TryLock = %v, %v; want the lease", ok, err)
	}
	if _, ok, err := st.TryLock(ctx, id, 10*time.Second); err != nil || ok {
		t.Fatalf("second TryLock while held = %v, %v; want false, nil", ok, err)
	}
	if _, ok, err := st.TryLock(ctx, randomString(t, 16), 10*time.Second); err != nil || !ok {
		t.Errorf("TryLock of another session = %v, %v; want the lease", ok, err)
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatalf("Release = %v", err)
	}
	if _, ok, err := st.TryLock(ctx, id, 10*time.Second); err != nil || !ok {
		t.Errorf("TryLock after Release = %v, %v; want the lease", ok, err)
	}
}

func testLockReleaseByNonOwner(t *testing.T, st *Store) {
	ctx := context.Background()
	id := randomString(t, 16)
	first, ok, err := st.TryLock(ctx, id, 50*time.Millisecond)
	if err != nil || !ok {
		t.Fatalf("first TryLock = %v, %v", ok, err)
	}
	time.Sleep(100 * time.Millisecond)
	second, ok, err := st.TryLock(ctx, id, 10*time.Second)
	if err != nil || !ok {
		t.Fatalf("TryLock after the first lease expired = %v, %v; want the lease", ok, err)
	}
	if err := first.Release(ctx); err != nil {
		t.Errorf("Release by the expired holder = %v, want nil", err)
	}
	if err := first.Extend(ctx); !errors.Is(err, broker.ErrLeaseLost) {
		t.Errorf("Extend by the expired holder = %v, want ErrLeaseLost", err)
	}
	if _, ok, err := st.TryLock(ctx, id, 10*time.Second); err != nil || ok {
		t.Errorf("TryLock after a non-owner's Release = %v, %v; want the second lease still held", ok, err)
	}
	if err := second.Extend(ctx); err != nil {
		t.Errorf("Extend by the owner = %v", err)
	}
}

func testLockExtend(t *testing.T, st *Store) {
	ctx := context.Background()
	id := randomString(t, 16)
	const ttl = time.Second
	lease, ok, err := st.TryLock(ctx, id, ttl)
	if err != nil || !ok {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}
	for range 3 {
		time.Sleep(ttl / 2)
		if err := lease.Extend(ctx); err != nil {
			t.Fatalf("Extend = %v", err)
		}
	}
	// 1.5 ttl after TryLock: past the original ttl, alive by the extensions.
	if _, ok, err := st.TryLock(ctx, id, ttl); err != nil || ok {
		t.Errorf("TryLock past the original ttl of an extended lease = %v, %v; want false", ok, err)
	}
	if d := pttl(t, st.client, lockKey(id)); d <= ttl/2 || d > ttl {
		t.Errorf("lease PTTL after Extend = %v, want about %v", d, ttl)
	}
}

func testAuditNewestFirst(t *testing.T, st *Store) {
	ctx := context.Background()
	clk := &clock{}
	st = withOptions(st, Options{Now: clk.Now})
	base := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	events := []broker.AuditEvent{
		{Time: base, Actor: "secops", Action: broker.ActionSessionRevoke, SessionID: randomString(t, 16), Subject: "auth0|1", Outcome: broker.OutcomeOK},
		{Time: base.Add(time.Second), Actor: broker.ActorBroker, Action: broker.ActionRefreshRejected, SessionID: randomString(t, 16), Subject: "auth0|2", Outcome: broker.OutcomeError, Detail: "invalid_grant"},
		{Actor: broker.ActorUser, Action: broker.ActionLogout, SessionID: randomString(t, 16), Subject: "auth0|3", Outcome: broker.OutcomeOK},
	}
	before := clk.Now().Truncate(time.Millisecond)
	for _, e := range events {
		if err := st.Append(ctx, e); err != nil {
			t.Fatalf("Append = %v", err)
		}
	}
	got, err := st.List(ctx, 10)
	if err != nil {
		t.Fatalf("List = %v", err)
	}
	if len(got) != len(events) {
		t.Fatalf("List returned %d events, want %d", len(got), len(events))
	}
	for i, e := range events {
		g := got[len(got)-1-i]
		if e.Time.IsZero() {
			if g.Time.Before(before) || g.Time.After(clk.Now()) {
				t.Errorf("event %d stamped %v, want the store's clock", i, g.Time)
			}
			e.Time = g.Time
		}
		e.Time = e.Time.Truncate(time.Millisecond)
		if !g.Time.Equal(e.Time) {
			t.Errorf("event %d: Time = %v, want %v", i, g.Time, e.Time)
		}
		if g.ID == "" {
			t.Errorf("event %d has no ID", i)
		}
		g.Time, e.Time, g.ID = time.Time{}, time.Time{}, ""
		if g != e {
			t.Errorf("event %d = %+v, want %+v", i, g, e)
		}
	}
	if got, err := st.List(ctx, 2); err != nil || len(got) != 2 || got[0].Action != broker.ActionLogout {
		t.Errorf("List(2) = %+v, %v; want the 2 newest", got, err)
	}
}

func testAuditCapped(t *testing.T, st *Store) {
	ctx := context.Background()
	const maxLen, appended = 10, 500
	st = withOptions(st, Options{AuditMaxLen: maxLen})
	for i := range appended {
		if err := st.Append(ctx, broker.AuditEvent{Actor: "admin", Action: broker.ActionUserRevoke, Detail: fmt.Sprint(i), Outcome: broker.OutcomeOK}); err != nil {
			t.Fatalf("Append = %v", err)
		}
	}
	n, err := st.client.XLen(ctx, auditKey).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Approximate trimming removes whole stream nodes (100 entries by
	// default), so up to a node more than maxLen may remain.
	if n < maxLen || n > maxLen+100 {
		t.Errorf("audit stream holds %d of %d events, want about %d", n, appended, maxLen)
	}
	got, err := st.List(ctx, 1)
	if err != nil || len(got) != 1 || got[0].Detail != fmt.Sprint(appended-1) {
		t.Errorf("List(1) = %+v, %v; want the last event", got, err)
	}
}

func testNoPlaintext(t *testing.T, st *Store) {
	ctx := context.Background()
	s, secret := testSession(t, time.Now(), "auth0|plaintext", "op-session-plaintext")
	mustCreate(t, st, s)
	if err := refresh(t, st, s.ID, broker.Tokens{AccessToken: "ACCESS-UPDATED-" + randomString(t, 8), RefreshToken: s.Tokens.RefreshToken}); err != nil {
		t.Fatalf("UpdateTokens = %v", err)
	}
	s2, _ := testSession(t, time.Now(), "auth0|plaintext", "")
	mustCreate(t, st, s2)
	// An ended session's tombstone holds its record until the end's work
	// is done: sealed as well.
	s3, secret3 := testSession(t, time.Now(), "auth0|plaintext", "")
	mustCreate(t, st, s3)
	if _, err := st.End(ctx, s3.ID, testEnd); err != nil {
		t.Fatalf("End = %v", err)
	}
	if _, _, err := st.TryLock(ctx, s.ID, time.Minute); err != nil {
		t.Fatalf("TryLock = %v", err)
	}
	if err := st.Append(ctx, broker.AuditEvent{Actor: "admin", Action: broker.ActionSessionRevoke, SessionID: s.ID, Subject: s.Subject, Outcome: broker.OutcomeOK}); err != nil {
		t.Fatalf("Append = %v", err)
	}
	updated, err := st.Get(ctx, s.ID)
	if err != nil {
		t.Fatalf("Get = %v", err)
	}

	dump := dumpKeyspace(t, st.client)
	forbidden := []string{
		secret, secret3,
		s.Tokens.AccessToken, updated.Tokens.AccessToken, s.Tokens.RefreshToken, s.Tokens.IDToken,
		s2.Tokens.AccessToken, s2.Tokens.RefreshToken, s2.Tokens.IDToken,
		s3.Tokens.AccessToken, s3.Tokens.RefreshToken, s3.Tokens.IDToken, s3.Claims["email"].(string),
		s.Claims["email"].(string), s.Claims["groups"].([]any)[0].(string),
		s.Claims["address"].(map[string]any)["locality"].(string),
		// The tags alone, in case a value were stored transformed.
		strings.TrimPrefix(s.Tokens.AccessToken, "ACCESS-"),
	}
	for _, f := range forbidden {
		if bytes.Contains(dump, []byte(f)) {
			t.Errorf("Redis holds %q in plaintext", f)
		}
	}
	// The dump must have seen the record, or the check proves nothing.
	if !bytes.Contains(dump, []byte(s.IP)) || !bytes.Contains(dump, []byte(s.ID)) || !bytes.Contains(dump, []byte(endedKey(s3.ID))) {
		t.Error("keyspace dump does not hold the session's plaintext fields; is the dump complete?")
	}
}

// dumpKeyspace returns every key and value of every primary.
func dumpKeyspace(t *testing.T, c redis.UniversalClient) []byte {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	var out bytes.Buffer
	dumpNode := func(ctx context.Context, node redis.UniversalClient) error {
		iter := node.Scan(ctx, 0, "*", 100).Iterator()
		for iter.Next(ctx) {
			key := iter.Val()
			typ, err := node.Type(ctx, key).Result()
			if err != nil {
				return err
			}
			var val any
			switch typ {
			case "string":
				val, err = node.Get(ctx, key).Result()
			case "hash":
				val, err = node.HGetAll(ctx, key).Result()
			case "zset":
				val, err = node.ZRangeWithScores(ctx, key, 0, -1).Result()
			case "stream":
				val, err = node.XRange(ctx, key, "-", "+").Result()
			case "none":
				continue
			default:
				return fmt.Errorf("key %s has unexpected type %s", key, typ)
			}
			if err != nil {
				return err
			}
			mu.Lock()
			fmt.Fprintf(&out, "%s %s %v\n", typ, key, val)
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	if cc, ok := c.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return dumpNode(ctx, node) })
	} else {
		err = dumpNode(ctx, c)
	}
	if err != nil {
		t.Fatalf("dump keyspace: %v", err)
	}
	return out.Bytes()
}

func mustKeyring(t *testing.T, spec string) *Keyring {
	t.Helper()
	k, err := ParseKeyring(spec)
	if err != nil {
		t.Fatalf("ParseKeyring: %v", err)
	}
	return k
}

func randomKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, keySize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// sealedKeyID returns the id of the key that sealed a session's tok field.
func sealedKeyID(t *testing.T, st *Store, id string) string {
	t.Helper()
	return sealedFieldKeyID(t, st, id, fieldTok)
}

// sealedFieldKeyID returns the id of the key that sealed a sealed field of a
// session.
func sealedFieldKeyID(t *testing.T, st *Store, id, field string) string {
	t.Helper()
	blob, err := st.client.HGet(context.Background(), sessionKey(id), field).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if len(blob) < 2 || len(blob) < 2+int(blob[1]) {
		t.Fatalf("%s of session %s is too short to hold a header", field, id)
	}
	return string(blob[2 : 2+int(blob[1])])
}

func testKeyRotation(t *testing.T, st *Store) {
	ctx := context.Background()
	keyA, keyB := "A:"+randomKey(t), "B:"+randomKey(t)
	onA := withKeys(st, mustKeyring(t, keyA))
	onBA := withKeys(st, mustKeyring(t, keyB+","+keyA))
	onB := withKeys(st, mustKeyring(t, keyB))

	old, _ := testSession(t, time.Now(), "auth0|rotation", "")
	mustCreate(t, onA, old)
	got, err := onBA.Get(ctx, old.ID)
	if err != nil {
		t.Fatalf("Get of a session sealed under A with keyring B,A = %v", err)
	}
	assertSameSession(t, got, old)

	fresh, _ := testSession(t, time.Now(), "auth0|rotation", "")
	mustCreate(t, onBA, fresh)
	if id := sealedKeyID(t, st, fresh.ID); id != "B" {
		t.Errorf("new session sealed under key %q, want B", id)
	}

	_, err = onB.Get(ctx, old.ID)
	assertUnreadable(t, "Get of a session sealed under A with keyring B", old.ID, err)
	if _, err := onB.Get(ctx, fresh.ID); err != nil {
		t.Errorf("Get of a session sealed under B with keyring B = %v", err)
	}

	// A refresh reseals the tokens, and a use the last use, under the
	// current key; the claims, written once, wait for `broker rekey`.
	if err := refresh(t, onBA, old.ID, old.Tokens); err != nil {
		t.Fatalf("UpdateTokens = %v", err)
	}
	old.LastUsedAt = old.LastUsedAt.Add(time.Second)
	if err := onBA.Touch(ctx, old.ID, old.LastUsedAt, old.ExpiresAt()); err != nil {
		t.Fatalf("Touch = %v", err)
	}
	for _, f := range []string{fieldTok, fieldLU} {
		if id := sealedFieldKeyID(t, st, old.ID, f); id != "B" {
			t.Errorf("%s of a refreshed and used session sealed under key %q, want B", f, id)
		}
	}
	if id := sealedFieldKeyID(t, st, old.ID, fieldClaims); id != "A" {
		t.Errorf("claims of a refreshed session sealed under key %q, want A until a rekey", id)
	}
	if _, err := onBA.Rekey(ctx, RekeyOptions{}); err != nil {
		t.Fatalf("Rekey = %v", err)
	}
	got, err = onB.Get(ctx, old.ID)
	if err != nil {
		t.Fatalf("Get of a refreshed, rekeyed session with keyring B = %v", err)
	}
	assertSameSession(t, got, old)
}

func testTamperedTok(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "auth0|tamper", "")
	mustCreate(t, st, s)
	blob, err := st.client.HGet(ctx, sessionKey(s.ID), fieldTok).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	blob[len(blob)-20] ^= 0x01
	if err := st.client.HSet(ctx, sessionKey(s.ID), fieldTok, blob).Err(); err != nil {
		t.Fatal(err)
	}
	_, err = st.Get(ctx, s.ID)
	assertUnreadable(t, "Get with a tampered tok", s.ID, err)
	assertNoSecrets(t, err, s)
}

func testMovedTok(t *testing.T, st *Store) {
	ctx := context.Background()
	victim, _ := testSession(t, time.Now(), "auth0|victim", "")
	attacker, _ := testSession(t, time.Now(), "auth0|attacker", "")
	mustCreate(t, st, victim)
	mustCreate(t, st, attacker)
	blob, err := st.client.HGet(ctx, sessionKey(victim.ID), fieldTok).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.client.HSet(ctx, sessionKey(attacker.ID), fieldTok, blob).Err(); err != nil {
		t.Fatal(err)
	}
	_, err = st.Get(ctx, attacker.ID)
	assertUnreadable(t, "Get with another session's tok", attacker.ID, err)
	assertNoSecrets(t, err, victim)
	// An unreadable record is ended all the same, and says so.
	e, err := st.End(ctx, attacker.ID, testEnd)
	if err != nil {
		t.Fatalf("End of a session holding another session's tok = %v", err)
	}
	if !e.Session.Unreadable || e.Session.ID != attacker.ID || e.Session.Tokens != (broker.Tokens{}) {
		t.Errorf("End of a session holding another session's tok: Session = %+v, want it flagged Unreadable without tokens", e.Session)
	}
}

func assertNoSecrets(t *testing.T, err error, s *broker.Session) {
	t.Helper()
	if err == nil {
		return
	}
	for _, secret := range []string{s.Tokens.AccessToken, s.Tokens.RefreshToken, s.Tokens.IDToken} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q holds a token", err)
		}
	}
}
