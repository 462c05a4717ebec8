package broker_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/mobile-token-broker/broker/internal/devidp"
	"github.com/mobile-token-broker/broker/internal/redistest"
	"github.com/mobile-token-broker/broker/sessions"
)

// expire moves the brokers' clock past the stored access token of session
// id and makes the IdP issue tokens that are valid at the new time.
func (e *env) expire(r *replica, id string) {
	e.t.Helper()
	exp := storedSession(e.t, r, id).Tokens.Expiry
	e.clock.Advance(exp.Sub(e.clock.Now()) + time.Second)
	// A little over the offset, so the clock moves little at each expiry
	// and stays within the ID tokens' lifetime across many.
	e.idp.SetAccessTokenTTL(time.Duration(e.clock.offset.Load()) + 2*time.Minute)
}

func lockKey(id string) string { return "broker:session:{" + id + "}:lock" }

func sessionKey(id string) string { return "broker:session:{" + id + "}" }

// A replica loses its lease while its IdP call runs (a pause past the
// lease's ttl, a Redis failover that lost the key); another replica takes
// the lease and refreshes with the same refresh token. Whichever call the
// IdP answers first rotates the token, the other is refused: the refused
// one adopts the tokens the other stores instead of ending the session.
func TestLeaseLostMidRefresh(t *testing.T) {
	e := newEnv(t, time.Minute)
	a, b := e.replica(replicaOptions{}), e.replica(replicaOptions{})
	rdb := e.client()
	ctx := context.Background()
	// The IdP answers the two calls in either order; each round is one
	// more chance for both orders to have been seen.
	for round := range 3 {
		ns := e.login(a)
		id := ns.Session.ID
		e.expire(a, id)
		before, okBefore := e.idp.Count(devidp.GrantRefreshToken), e.idp.SuccessfulRefreshes()

		e.idp.Pause()
		type result struct {
			tok string
			err error
		}
		resA, resB := make(chan result, 1), make(chan result, 1)
		go func() { tok, err := accessToken(a, ns.Handle); resA <- result{tok, err} }()
		eventually(t, 5*time.Second, "replica A's refresh to reach the IdP", func() bool { return e.idp.Count(devidp.GrantRefreshToken) == before+1 })
		if err := rdb.Del(ctx, lockKey(id)).Err(); err != nil {
			t.Fatal(err)
		}
		go func() { tok, err := accessToken(b, ns.Handle); resB <- result{tok, err} }()
		eventually(t, 5*time.Second, "replica B's refresh to reach the IdP", func() bool { return e.idp.Count(devidp.GrantRefreshToken) == before+2 })
		e.idp.Resume()

		ra, rb := <-resA, <-resB
		if ra.err != nil || rb.err != nil {
			t.Fatalf("round %d: requests on A and B = %v, %v; want both to get a token", round, ra.err, rb.err)
		}
		if got := e.idp.SuccessfulRefreshes() - okBefore; got != 1 {
			t.Errorf("round %d: %d refreshes succeeded at the IdP, want 1", round, got)
		}
		eventually(t, 5*time.Second, "the rotated tokens to be stored", func() bool {
			s, err := a.store.Get(ctx, id)
			return err == nil && s.Generation == 2
		})
		if ra.tok != rb.tok {
			t.Errorf("round %d: A and B serve different access tokens after the refresh", round)
		}
		// The session goes on: the stored refresh token is the live one.
		e.expire(a, id)
		mustAccessToken(t, b, ns.Handle)
	}
}

// Redis becomes unreachable while the IdP rotates the refresh token. The
// rotated tokens are kept and served, and stored once Redis is back: the
// session survives and its next refresh works.
func TestStoreDownAfterRotation(t *testing.T) {
	e := newEnv(t, time.Minute)
	a := e.replica(replicaOptions{config: func(c *broker.Config) { c.LockTTL = 3 * time.Second }})
	ctx := context.Background()
	ns := e.login(a)
	id := ns.Session.ID
	e.expire(a, id)

	e.idp.Pause()
	type result struct {
		tok string
		err error
	}
	res := make(chan result, 1)
	go func() { tok, err := accessToken(a, ns.Handle); res <- result{tok, err} }()
	eventually(t, 5*time.Second, "the refresh to reach the IdP", func() bool { return e.idp.Count(devidp.GrantRefreshToken) == 1 })
	e.redis.Stop(t)
	e.idp.Resume()
	r := <-res
	if r.err != nil || r.tok == "" || r.tok == ns.Session.Tokens.AccessToken {
		t.Fatalf("request whose refresh the store could not take = %q, %v; want the new access token", r.tok, r.err)
	}
	if !strings.Contains(a.logs.String(), "did not take the new tokens yet") {
		t.Error("the log does not say that the refreshed tokens are not stored yet")
	}

	e.redis.Restart(t)
	eventually(t, 10*time.Second, "the rotated tokens to be stored after Redis returned", func() bool {
		s, err := a.store.Get(ctx, id)
		return err == nil && s.Generation == 2
	})
	if got := mustAccessToken(t, a, ns.Handle); got != r.tok {
		t.Errorf("after Redis returned the broker serves another access token than the rotated one")
	}
	e.expire(a, id)
	mustAccessToken(t, a, ns.Handle)
	if got := e.idp.SuccessfulRefreshes(); got != 2 {
		t.Errorf("successful refreshes = %d, want 2 (the rotated refresh token was used for the second)", got)
	}
}

// A replica holds tokens the IdP rotated, but lost its lease to another
// replica that now holds it for long (its own IdP call with the spent token
// hangs). The tokens are stored all the same, fenced by the generation, so
// that the other replica, once refused, adopts them instead of ending the
// session.
func TestRotatedTokensStoredWhileAnotherHoldsTheLease(t *testing.T) {
	e := newEnv(t, time.Minute)
	a := e.replica(replicaOptions{})
	ctx := context.Background()
	ns := e.login(a)
	id := ns.Session.ID
	e.expire(a, id)
	e.idp.Pause()
	res := make(chan error, 1)
	go func() { _, err := accessToken(a, ns.Handle); res <- err }()
	eventually(t, 5*time.Second, "the refresh to reach the IdP", func() bool { return e.idp.Count(devidp.GrantRefreshToken) == 1 })
	if err := e.client().Del(ctx, lockKey(id)).Err(); err != nil {
		t.Fatal(err)
	}
	other, ok, err := a.store.TryLock(ctx, id, time.Minute)
	if err != nil || !ok {
		t.Fatalf("another holder takes the lease = %v, %v", ok, err)
	}
	defer other.Release(ctx)
	e.idp.Resume()
	if err := <-res; err != nil {
		t.Fatalf("AccessToken = %v, want the rotated token", err)
	}
	eventually(t, 5*time.Second, "the rotated tokens to be stored while another holds the lease", func() bool {
		s, err := a.store.Get(ctx, id)
		return err == nil && s.Generation == 2
	})
}

// A replica that has not discovered the IdP yet (it started during an IdP
// outage) must not settle the endings other replicas left for the outbox:
// their refresh tokens would never be revoked.
func TestUndiscoveredReplicaLeavesRevocationsPending(t *testing.T) {
	e := newEnv(t, time.Hour)
	a := e.replica(replicaOptions{})
	ctx := context.Background()
	ns := e.login(a)
	e.idp.SetFailure(http.StatusServiceUnavailable)
	if err := a.RevokeSession(ctx, ns.Session.ID, "secops"); err != nil {
		t.Fatalf("RevokeSession while the IdP fails = %v", err)
	}
	late := e.replica(replicaOptions{undiscovered: true, config: func(c *broker.Config) { c.Issuer = "http://127.0.0.1:1" }})
	if n, err := late.DrainEndings(ctx, 0); err != nil || n != 0 {
		t.Errorf("DrainEndings on an undiscovered replica = %d, %v; want nothing settled", n, err)
	}
	if ending, err := a.store.Ending(ctx, ns.Session.ID); err != nil || ending.Done {
		t.Fatalf("Ending = %+v, %v; want it still pending", ending, err)
	}
	e.idp.SetFailure(0)
	// Past the claim the undiscovered replica took.
	e.client().ZAdd(ctx, "broker:ends", redis.Z{Score: 0, Member: ns.Session.ID})
	e.client().HSet(ctx, sessionKey(ns.Session.ID)+":ended", "claim_until", "0")
	if n, err := a.DrainEndings(ctx, 0); err != nil || n != 1 {
		t.Fatalf("DrainEndings once the IdP is back = %d, %v; want 1", n, err)
	}
	if got := e.idp.Revoked(); len(got) != 1 || got[0] != ns.Session.Tokens.RefreshToken {
		t.Errorf("the IdP revoked %d tokens, want the session's refresh token", len(got))
	}
}

// A repeated revoke whose look-up of the ending fails answers that the store
// is unavailable, never 404: a 404 would tell the admin the session never
// existed.
func TestRepeatedRevokeWithTheStoreFailing(t *testing.T) {
	e := newEnv(t, time.Hour)
	fs := &faultyStore{}
	a := e.replica(replicaOptions{wrap: func(s broker.Store) broker.Store { fs.Store = s; return fs }})
	ns := e.login(a)
	ctx := context.Background()
	if err := a.RevokeSession(ctx, ns.Session.ID, "secops"); err != nil {
		t.Fatal(err)
	}
	fs.ending = func(context.Context, string) (*broker.Ending, error) { return nil, errStoreUnavailable }
	if err := a.RevokeSession(ctx, ns.Session.ID, "secops"); broker.ErrorCode(err) != broker.CodeStoreUnavailable {
		t.Errorf("repeated revoke with the store failing = %v (%s), want store_unavailable", err, broker.ErrorCode(err))
	}
}

// A replica cannot release its lease after a refresh (Redis restarting, its
// pool still reconnecting): it retries, so the session's next refresh, on
// any replica, is not blocked until the lease's ttl runs out.
func TestLeaseReleaseRetried(t *testing.T) {
	e := newEnv(t, time.Minute)
	fl := &flakyLocker{}
	fl.failReleases.Store(2)
	a := e.replica(replicaOptions{locker: func(l broker.Locker) broker.Locker { fl.Locker = l; return fl }})
	b := e.replica(replicaOptions{})
	ns := e.login(a)
	e.expire(a, ns.Session.ID)
	mustAccessToken(t, a, ns.Handle)
	// The lease's ttl (10 s) is longer than a request with an expired token
	// waits (5 s): a lease left behind would make this request fail.
	e.expire(a, ns.Session.ID)
	mustAccessToken(t, b, ns.Handle)
	if got := e.idp.SuccessfulRefreshes(); got != 2 {
		t.Errorf("successful refreshes = %d, want 2", got)
	}
}

// A revoke while the IdP hangs answers once the session has ended, without
// waiting for the IdP: the revocation is left to the outbox.
func TestRevokeDoesNotWaitOnAHangingIdP(t *testing.T) {
	e := newEnv(t, time.Hour)
	a := e.replica(replicaOptions{config: func(c *broker.Config) { c.IdPTimeout = 20 * time.Second }})
	ns := e.login(a)
	ctx := context.Background()
	e.idp.Pause()
	defer e.idp.Resume()
	start := time.Now()
	if err := a.RevokeSession(ctx, ns.Session.ID, "secops"); err != nil {
		t.Fatalf("RevokeSession while the IdP hangs = %v, want success", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("RevokeSession took %v with a 20 s IdP timeout, want the short inline bound", d)
	}
	if _, err := accessToken(a, ns.Handle); !isInvalidToken(err) {
		t.Errorf("AccessToken after the revoke = %v, want invalid_token", err)
	}
	ending, err := a.store.Ending(ctx, ns.Session.ID)
	if err != nil || ending.Done {
		t.Fatalf("Ending = %+v, %v; want it pending for the outbox", ending, err)
	}
	e.idp.Resume()
	if n, err := a.DrainEndings(ctx, 0); err != nil || n != 1 {
		t.Fatalf("DrainEndings once the IdP is back = %d, %v; want 1", n, err)
	}
	if got := e.idp.Revoked(); len(got) == 0 || got[len(got)-1] != ns.Session.Tokens.RefreshToken {
		t.Error("the outbox did not revoke the refresh token at the IdP")
	}
}

// An IdP that answers two refreshes with the same access token: replicas
// tell a finished refresh by the session's generation, not by comparing
// access tokens, so each expiry still costs exactly one refresh.
func TestIdPReturnsTheSameAccessTokenTwice(t *testing.T) {
	e := newEnv(t, time.Minute)
	rs := []*replica{e.replica(replicaOptions{}), e.replica(replicaOptions{}), e.replica(replicaOptions{})}
	ns := e.login(rs[0])
	e.idp.SetStaticAccessToken("static-access-token")
	for expiry := range 3 {
		e.expire(rs[0], ns.Session.ID)
		before := e.idp.Count(devidp.GrantRefreshToken)
		var wg sync.WaitGroup
		errs := make([]error, 60)
		for i := range errs {
			wg.Go(func() {
				tok, err := accessToken(rs[i%len(rs)], ns.Handle)
				if err == nil && tok != "static-access-token" {
					err = errors.New("unexpected access token")
				}
				errs[i] = err
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("expiry %d: request %d = %v", expiry, i, err)
			}
		}
		if got := e.idp.Count(devidp.GrantRefreshToken) - before; got != 1 {
			t.Errorf("expiry %d: the IdP saw %d refresh grants, want exactly 1", expiry, got)
		}
	}
}

// How IdPs refuse a refresh differs (IDP-NOTES): the broker ends a session
// only for an answer that means the refresh token is dead, retries a
// possibly transient refusal once, and treats the rest as an outage.
func TestRefreshRefusals(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		code, desc  string
		times       int
		wantEnded   bool
		wantOutage  bool
		wantGrants  int
		wantSuccess int
	}{
		{"invalid_grant ends the session", 400, "invalid_grant", "refresh token is invalid", -1, true, false, 1, 0},
		{"Dex: invalid_request for a dead token, said twice, ends it", 400, "invalid_request", "Refresh token is invalid or has already been claimed by another client.", -1, true, false, 2, 0},
		{"Hydra: invalid_request once is retried and succeeds", 400, "invalid_request", "The request could not be completed. Please retry the request.", 1, false, false, 2, 1},
		{"Dex: 500 invalid_request is an outage", 500, "invalid_request", "connector failure", 1, false, true, 1, 0},
		{"invalid_client is the broker's problem, not the session's", 401, "invalid_client", "client authentication failed", 1, false, true, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, time.Minute)
			a := e.replica(replicaOptions{})
			ns := e.login(a)
			e.expire(a, ns.Session.ID)
			e.idp.FailRefresh(tt.status, tt.code, tt.desc, tt.times)
			_, err := accessToken(a, ns.Handle)
			switch {
			case tt.wantEnded && !isInvalidToken(err):
				t.Errorf("AccessToken = %v, want invalid_token (session ended)", err)
			case tt.wantOutage && broker.ErrorCode(err) != broker.CodeIdPUnavailable:
				t.Errorf("AccessToken = %v, want idp_unavailable", err)
			case !tt.wantEnded && !tt.wantOutage && err != nil:
				t.Errorf("AccessToken = %v, want a token", err)
			}
			if got := e.idp.Count(devidp.GrantRefreshToken); got != tt.wantGrants {
				t.Errorf("refresh grants = %d, want %d", got, tt.wantGrants)
			}
			if got := e.idp.SuccessfulRefreshes(); got != tt.wantSuccess {
				t.Errorf("successful refreshes = %d, want %d", got, tt.wantSuccess)
			}
			if !strings.Contains(a.logs.String(), `"idp_error":"`+tt.code+`"`) {
				t.Errorf("no WARN line names the IdP's error code %q", tt.code)
			}
			_, gerr := a.store.Get(context.Background(), ns.Session.ID)
			if ended := errors.Is(gerr, broker.ErrNotFound); ended != tt.wantEnded {
				t.Errorf("session ended = %v, want %v", ended, tt.wantEnded)
			}
			if tt.wantOutage {
				// The session recovers once the IdP does.
				e.idp.FailRefresh(0, "", "", 0)
				e.clock.Advance(10 * time.Second) // past the refresh back-off
				e.idp.SetAccessTokenTTL(time.Duration(e.clock.offset.Load()) + time.Hour)
				mustAccessToken(t, a, ns.Handle)
			}
		})
	}
}

// The IdP hangs (as a paused process) for longer than the broker's IdP
// timeout, the lease's ttl and any request's patience, while the refreshes
// of many sessions fall due on three replicas. Requests get a bounded 502
// meanwhile, never a 401 and never an expired token; when the IdP resumes,
// every session works again, no refresh token was sent twice, and each
// session was refreshed exactly once.
func TestIdPPausedLongerThanEveryTimeout(t *testing.T) {
	e := newEnv(t, time.Minute)
	short := func(c *broker.Config) { c.IdPTimeout = time.Second; c.LockTTL = time.Second }
	rs := []*replica{e.replica(replicaOptions{config: short}), e.replica(replicaOptions{config: short}), e.replica(replicaOptions{config: short})}
	var handles []string
	old := map[string]bool{}
	for i := range 12 {
		ns := e.login(rs[i%len(rs)])
		handles = append(handles, ns.Handle)
		old[ns.Session.Tokens.AccessToken] = true
	}
	e.idp.SetAccessTokenTTL(time.Hour)
	e.clock.Advance(2 * time.Minute) // every access token has expired
	e.idp.Pause()

	pauseEnds := time.Now().Add(7 * time.Second)
	var mu sync.Mutex
	var problems []string
	for time.Now().Before(pauseEnds) {
		var wg sync.WaitGroup
		for i, h := range handles {
			wg.Go(func() {
				tok, err := accessToken(rs[i%len(rs)], h)
				bad := ""
				switch {
				case err == nil && old[tok]:
					bad = "an expired access token was handed out"
				case err == nil:
					bad = "a token was handed out while the IdP was paused"
				case broker.ErrorCode(err) != broker.CodeIdPUnavailable:
					bad = "answered " + string(broker.ErrorCode(err)) + ", want idp_unavailable"
				}
				if bad != "" {
					mu.Lock()
					problems = append(problems, bad)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	e.idp.Resume()
	for _, p := range problems {
		t.Error(p)
	}
	for i, h := range handles {
		eventually(t, 15*time.Second, "every session to work again", func() bool {
			tok, err := accessToken(rs[i%len(rs)], h)
			if isInvalidToken(err) {
				t.Fatalf("session %d ended", i)
			}
			return err == nil && !old[tok]
		})
	}
	seen := map[string]bool{}
	for _, rt := range e.idp.RefreshTokensSeen() {
		if seen[rt] {
			t.Error("a refresh token was sent to the IdP twice")
		}
		seen[rt] = true
	}
	if got := e.idp.SuccessfulRefreshes(); got != len(handles) {
		t.Errorf("successful refreshes = %d, want %d (one per session)", got, len(handles))
	}
}

// Redis dies right after it ended a session on an admin's request: the admin
// gets 503, but the end took effect, so the IdP revocation and the audit
// event are done by the outbox once Redis is back, and a retry of the revoke
// is told the session is ended.
func TestRedisKilledMidAdminRevoke(t *testing.T) {
	e := newEnv(t, time.Hour)
	fs := &faultyStore{}
	a := e.replica(replicaOptions{wrap: func(s broker.Store) broker.Store { fs.Store = s; return fs }})
	ns := e.login(a)
	id := ns.Session.ID
	ctx := context.Background()
	fs.end = func(ctx context.Context, id string, why broker.EndReason) (*broker.Ending, error) {
		if _, err := fs.Store.End(ctx, id, why); err != nil {
			return nil, err
		}
		e.redis.Stop(t)
		return nil, errStoreUnavailable
	}
	if err := a.RevokeSession(ctx, id, "secops"); broker.ErrorCode(err) != broker.CodeStoreUnavailable {
		t.Fatalf("RevokeSession with Redis dying = %v, want store_unavailable", err)
	}
	fs.end = nil
	e.redis.Restart(t)

	if _, err := accessToken(a, ns.Handle); !isInvalidToken(err) {
		t.Errorf("AccessToken after the revoke = %v, want invalid_token", err)
	}
	if n, err := a.DrainEndings(ctx, 0); err != nil || n != 1 {
		t.Fatalf("DrainEndings = %d, %v; want 1 ending finished", n, err)
	}
	if ending, err := a.store.Ending(ctx, id); err != nil || !ending.Done || ending.Session.Tokens.RefreshToken != "" {
		t.Errorf("Ending after the outbox = %+v, %v; want it done, its tokens forgotten", ending, err)
	}
	if revoked := e.idp.Revoked(); len(revoked) != 1 || revoked[0] != ns.Session.Tokens.RefreshToken {
		t.Errorf("the IdP revoked %d tokens, want the session's refresh token", len(revoked))
	}
	found := false
	for _, ev := range auditEvents(t, a) {
		if ev.Action == broker.ActionSessionRevoke && ev.SessionID == id && ev.Actor == "secops" {
			found = true
		}
	}
	if !found {
		t.Error("no session.revoke event by secops in the audit trail")
	}
	if err := a.RevokeSession(ctx, id, "secops"); err != nil {
		t.Errorf("a retried revoke of the ended session = %v, want success", err)
	}
	if n, err := a.DrainEndings(ctx, 0); err != nil || n != 0 {
		t.Errorf("DrainEndings again = %d, %v; want nothing left", n, err)
	}
}

// Redis runs a command but its reply is lost, and go-redis sends the
// command again: each command that changes something must answer the
// repeat as it answered its first run. Each case first runs the same
// operation once, so that Redis has the script cached and the lost reply is
// that of a command that ran (not a NOSCRIPT answer), then loses the reply
// of exactly the command it names.
func TestLostRepliesOfNonIdempotentCommands(t *testing.T) {
	ctx := context.Background()
	evalsha := func(parts ...string) func([]byte) bool {
		return func(chunk []byte) bool {
			// go-redis writes command names in lower case.
			if !bytes.Contains(bytes.ToLower(chunk), []byte("evalsha")) {
				return false
			}
			for _, p := range parts {
				if !bytes.Contains(chunk, []byte(p)) {
					return false
				}
			}
			return true
		}
	}
	setup := func(t *testing.T, ttl time.Duration) (*env, *redistest.Proxy, *replica) {
		e := newEnv(t, ttl)
		proxy := redistest.NewProxy(t, e.redis.Addr())
		return e, proxy, e.replica(replicaOptions{redisURL: proxy.URL()})
	}
	fired := func(t *testing.T, proxy *redistest.Proxy) {
		t.Helper()
		if proxy.Fired() != 1 {
			t.Fatalf("the fault fired %d times, want 1", proxy.Fired())
		}
	}

	t.Run("end", func(t *testing.T) {
		e, proxy, a := setup(t, time.Hour)
		warm, ns := e.login(a), e.login(a)
		if err := a.RevokeSession(ctx, warm.Session.ID, "secops"); err != nil {
			t.Fatal(err)
		}
		proxy.DropReplyOnceFunc(evalsha(ns.Session.ID + "}:ended"))
		if err := a.RevokeSession(ctx, ns.Session.ID, "secops"); err != nil {
			t.Fatalf("RevokeSession whose reply was lost = %v, want success", err)
		}
		fired(t, proxy)
		n := 0
		for _, ev := range auditEvents(t, a) {
			if ev.Action == broker.ActionSessionRevoke && ev.SessionID == ns.Session.ID {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d session.revoke events for the session, want 1", n)
		}
		if ending, err := a.store.Ending(ctx, ns.Session.ID); err != nil || !ending.Done {
			t.Errorf("Ending = %+v, %v; want it done", ending, err)
		}
	})
	t.Run("lease", func(t *testing.T) {
		e, proxy, a := setup(t, time.Minute)
		warm, ns := e.login(a), e.login(a)
		e.expire(a, warm.Session.ID)
		mustAccessToken(t, a, warm.Handle)
		e.expire(a, ns.Session.ID)
		grants := e.idp.Count(devidp.GrantRefreshToken)
		// The lease's own command holds its key, not the session's.
		proxy.DropReplyOnceFunc(func(chunk []byte) bool {
			return evalsha(ns.Session.ID+"}:lock")(chunk) && !bytes.Contains(chunk, []byte(sessionKey(ns.Session.ID)+"\r\n"))
		})
		mustAccessToken(t, a, ns.Handle)
		fired(t, proxy)
		if got := e.idp.Count(devidp.GrantRefreshToken) - grants; got != 1 {
			t.Errorf("refresh grants = %d, want 1", got)
		}
	})
	t.Run("stored tokens", func(t *testing.T) {
		e, proxy, a := setup(t, time.Minute)
		warm, ns := e.login(a), e.login(a)
		e.expire(a, warm.Session.ID)
		mustAccessToken(t, a, warm.Handle)
		e.expire(a, ns.Session.ID)
		proxy.DropReplyOnceFunc(evalsha(sessionKey(ns.Session.ID)+"\r\n", ns.Session.ID+"}:lock"))
		tok := mustAccessToken(t, a, ns.Handle)
		fired(t, proxy)
		if s := storedSession(t, a, ns.Session.ID); s.Generation != 2 || s.Tokens.AccessToken != tok {
			t.Errorf("stored generation %d, want 2 holding the served token", s.Generation)
		}
		if strings.Contains(a.logs.String(), "did not take the new tokens") {
			t.Error("a repeated write that took effect was taken for a failed one")
		}
	})
	t.Run("logout token", func(t *testing.T) {
		e, proxy, a := setup(t, time.Hour)
		e.login(a)
		if _, err := a.store.FirstUse(ctx, "warm", time.Minute); err != nil {
			t.Fatal(err)
		}
		tok := e.logoutToken(devidp.DemoSubject)
		proxy.DropReplyOnceFunc(evalsha("broker:used:"))
		if n, err := a.BackchannelLogout(ctx, tok); err != nil || n != 1 {
			t.Fatalf("first delivery whose reply was lost = %d, %v; want 1 session ended", n, err)
		}
		fired(t, proxy)
		if _, err := a.BackchannelLogout(ctx, tok); broker.ErrorCode(err) != broker.CodeInvalidRequest {
			t.Errorf("replay = %v, want invalid_request", err)
		}
	})
	t.Run("audit event", func(t *testing.T) {
		_, proxy, a := setup(t, time.Hour)
		a.AdminDenied(ctx, "warm")
		proxy.DropReplyOnceFunc(evalsha("broker:audit", "probe-once"))
		a.AdminDenied(ctx, "probe-once")
		fired(t, proxy)
		n := 0
		for _, ev := range auditEvents(t, a) {
			if ev.Detail == "probe-once" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d events for one append whose reply was lost, want 1", n)
		}
	})
}

// A back-channel logout that fails part way (the store fails) can be
// delivered again by the IdP and then succeeds; once it succeeded, a replay
// is refused.
func TestBackchannelRedeliveredAfterStoreFailure(t *testing.T) {
	e := newEnv(t, time.Hour)
	fs := &faultyStore{}
	a := e.replica(replicaOptions{wrap: func(s broker.Store) broker.Store { fs.Store = s; return fs }})
	first, second := e.login(a), e.login(a)
	ctx := context.Background()
	tok := e.logoutToken(devidp.DemoSubject)

	fs.end = func(context.Context, string, broker.EndReason) (*broker.Ending, error) {
		return nil, errStoreUnavailable
	}
	if _, err := a.BackchannelLogout(ctx, tok); broker.ErrorCode(err) != broker.CodeStoreUnavailable {
		t.Fatalf("delivery with the store failing = %v, want store_unavailable", err)
	}
	fs.end = nil
	if n, err := a.BackchannelLogout(ctx, tok); err != nil || n != 2 {
		t.Fatalf("redelivery = %d, %v; want 2 sessions ended", n, err)
	}
	for _, ns := range []*broker.NewSession{first, second} {
		if _, err := accessToken(a, ns.Handle); !isInvalidToken(err) {
			t.Errorf("AccessToken after the logout = %v, want invalid_token", err)
		}
	}
	if _, err := a.BackchannelLogout(ctx, tok); broker.ErrorCode(err) != broker.CodeInvalidRequest {
		t.Errorf("replay after success = %v, want invalid_request", err)
	}
}

// One record sealed under a key this broker lacks (a key dropped early, a
// rolling key rotation) among a user's sessions: for the app it is an
// ended session, and it blocks none of the operations around it.
func TestUnreadableRecord(t *testing.T) {
	e := newEnv(t, time.Hour)
	a := e.replica(replicaOptions{})
	otherKeys, err := sessions.NewEphemeralKeyring()
	if err != nil {
		t.Fatal(err)
	}
	newer := e.replica(replicaOptions{keys: otherKeys})
	ctx := context.Background()

	readable := []*broker.NewSession{e.login(a), e.login(a)}
	lost := e.login(newer)

	for range 3 {
		if _, err := accessToken(a, lost.Handle); !isInvalidToken(err) {
			t.Fatalf("AccessToken on an unreadable record = %v, want invalid_token", err)
		}
	}
	if n := strings.Count(a.logs.String(), `"session_id":"`+lost.Session.ID+`"`); n != 1 {
		t.Errorf("the unreadable record was logged %d times, want once", n)
	}
	if err := a.Logout(ctx, broker.Credential{Handle: lost.Handle}); err != nil {
		t.Errorf("Logout of an unreadable record = %v, want nil", err)
	}

	list, err := a.UserSessions(ctx, devidp.DemoSubject)
	if err != nil {
		t.Fatalf("UserSessions = %v", err)
	}
	flagged := 0
	for _, s := range list {
		if s.Unreadable {
			flagged++
			if s.ID != lost.Session.ID {
				t.Errorf("flagged %s, want %s", s.ID, lost.Session.ID)
			}
		}
	}
	if len(list) != 3 || flagged != 1 {
		t.Errorf("UserSessions = %d sessions, %d flagged; want 3, 1", len(list), flagged)
	}
	if s, err := a.Session(ctx, lost.Session.ID); err != nil || !s.Unreadable {
		t.Errorf("Session(unreadable) = %+v, %v; want it flagged", s, err)
	}

	res, err := a.RevokeUser(ctx, devidp.DemoSubject, "secops")
	if err != nil || res.Revoked != 3 {
		t.Fatalf("RevokeUser = %+v, %v; want 3 revoked", res, err)
	}
	for _, ns := range readable {
		if _, err := accessToken(a, ns.Handle); !isInvalidToken(err) {
			t.Errorf("AccessToken after revoke-all = %v, want invalid_token", err)
		}
	}
	if _, err := newer.store.Get(ctx, lost.Session.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("the unreadable record after revoke-all: Get = %v, want not found", err)
	}

	t.Run("back-channel logout", func(t *testing.T) {
		lost := e.login(newer)
		e.login(a)
		n, err := a.BackchannelLogout(ctx, e.logoutToken(devidp.DemoSubject))
		if err != nil || n != 2 {
			t.Fatalf("BackchannelLogout = %d, %v; want 2 sessions ended", n, err)
		}
		if _, err := newer.store.Get(ctx, lost.Session.ID); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("the unreadable record after back-channel logout: Get = %v, want not found", err)
		}
	})
}

// Someone who can write to Redis but has no encryption key cannot use or
// extend a session: every field that grants access is bound by the
// encryption, so an edited record is unreadable.
func TestEditedRecord(t *testing.T) {
	e := newEnv(t, time.Hour)
	a := e.replica(replicaOptions{})
	rdb := e.client()
	ctx := context.Background()

	t.Run("secret_hash", func(t *testing.T) {
		victim := e.login(a)
		raw := make([]byte, 32)
		rand.Read(raw)
		mine := base64.RawURLEncoding.EncodeToString(raw)
		sum := sha256.Sum256([]byte(mine))
		rdb.HSet(ctx, sessionKey(victim.Session.ID), "secret_hash", hex.EncodeToString(sum[:]))
		if _, err := accessToken(a, victim.Session.ID+"."+mine); !isInvalidToken(err) {
			t.Errorf("a handle with a secret written into Redis = %v, want invalid_token", err)
		}
		if s, err := a.Session(ctx, victim.Session.ID); err != nil || !s.Unreadable {
			t.Errorf("the edited record = %+v, %v; want it reported unreadable", s, err)
		}
	})
	for _, field := range []string{"abs_exp", "idle", "created_at"} {
		t.Run(field, func(t *testing.T) {
			ns := e.login(a)
			rdb.HSet(ctx, sessionKey(ns.Session.ID), field, "99999999999999")
			if _, err := accessToken(a, ns.Handle); !isInvalidToken(err) {
				t.Errorf("AccessToken after %s was raised = %v, want invalid_token", field, err)
			}
		})
	}
}

// What a session and an audit event keep of what clients send is bounded.
func TestBoundedStorage(t *testing.T) {
	e := newEnv(t, time.Hour)
	a := e.replica(replicaOptions{})
	rdb := e.client()
	ctx := context.Background()
	huge := strings.Repeat("A", 1<<20)
	big := e.loginAs(a, devidp.LoginRequest{}, huge)
	if n := len(rdb.HGet(ctx, sessionKey(big.Session.ID), "ua").Val()); n > broker.MaxUserAgentLen {
		t.Errorf("stored user agent of %d bytes, want at most %d", n, broker.MaxUserAgentLen)
	}
	a.AdminDenied(ctx, "method "+huge)
	events := auditEvents(t, a)
	if len(events) == 0 || len(events[0].Detail) > broker.MaxAuditDetailLen {
		t.Errorf("audit detail of %d bytes, want at most %d", len(events[0].Detail), broker.MaxAuditDetailLen)
	}
	for _, line := range strings.Split(a.logs.String(), "\n") {
		if len(line) > 4096 {
			t.Errorf("a log line of %d bytes", len(line))
		}
	}
}
