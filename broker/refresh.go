package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/sync/singleflight"
)

// The refresh protocol.
//
// Exactly one refresh per expiry reaches the IdP, however many requests and
// replicas ask at once, and no session is lost to an ordinary fault. Its
// guarantees live in the data, not in timing:
//
//   - Requests in one process share one refresh (singleflight). Across
//     replicas the holder of the session's lease refreshes; the others wait
//     and adopt what it stores, telling new tokens from old ones by the
//     session's generation, never by comparing tokens.
//   - The rotated tokens are stored by a fenced write: one atomic step that
//     succeeds only while the writer still holds the lease and the record is
//     still at the generation it read (Store.UpdateTokens).
//   - A refresh token is never sent again while an earlier call with it may
//     still be processed by the IdP: the call that holds the lease waits for
//     the IdP's answer for up to RefreshTimeout, far longer than any request
//     waits, and keeps renewing the lease meanwhile.
//   - Tokens the IdP rotated are never dropped: if the store cannot take
//     them, the process keeps them, serves them, and keeps trying to store
//     them in the background for as long as pendingWriteLimit.
//   - A refusal ends the session only when it is definite for the tokens
//     that are still current: the session is re-read first, a newer
//     generation is adopted, and the end is conditional on the generation.

// How long requests wait for a refresh. A request whose access token is
// still valid waits at most usableRefreshWait and then goes through with the
// token it has; one whose token has expired waits at most
// expiredRefreshWait and then gets 502. After a refresh failed for an IdP
// outage, the session's next refresh waits refreshBackoff, and requests
// whose token has expired meanwhile get 502 at once rather than wait on an
// IdP already known to be failing.
const (
	usableRefreshWait  = 2 * time.Second
	expiredRefreshWait = 5 * time.Second
	refreshBackoff     = 5 * time.Second
)

// Timings of the protocol between replicas.
const (
	// pollMin and pollMax bound how often a replica that waits for another
	// one's refresh re-reads the session.
	pollMin = 25 * time.Millisecond
	pollMax = 250 * time.Millisecond
	// waitForOther bounds one wait for another replica's refresh; a request
	// that comes later starts a new one.
	waitForOther = 10 * time.Second
	// retryPause separates the two calls of a refusal that may be
	// transient (invalid_request: Hydra's "please retry", Dex's dead token).
	retryPause = 500 * time.Millisecond
	// adoptGrace is how long a refused refresh waits for the generation to
	// move before it ends the session: a holder that lost its lease while
	// its IdP call ran may hold the rotated tokens and be about to store
	// them.
	adoptGrace = 2 * time.Second
	// pendingWriteLimit bounds how long rotated tokens that the store could
	// not take are kept and retried.
	pendingWriteLimit = 10 * time.Minute
	writeRetryMin     = 50 * time.Millisecond
	writeRetryMax     = 500 * time.Millisecond
)

// refreshOutcome is the result of one refresh flight.
type refreshOutcome struct {
	tokens Tokens
	gen    uint64
	// adopted is set when the flight did not call the IdP but took what
	// another replica's refresh stored.
	adopted bool
}

// freshTokens returns tokens whose access token has at least RefreshSkew
// left (or, for one that lives shorter than that, see fresh), refreshing
// them when needed, and never an expired access token.
func (s *Service) freshTokens(ctx context.Context, sess *Session) (Tokens, error) {
	now := s.cfg.Now()
	if s.fresh(sess.Tokens, now) {
		return sess.Tokens, nil
	}
	if p, ok := s.pending.get(sess.ID); ok && p.gen > sess.Generation && s.usable(p.tokens, now) {
		// This process holds rotated tokens the store has not taken yet.
		return p.tokens, nil
	}
	usable := s.usable(sess.Tokens, now)
	if sess.Tokens.RefreshToken == "" {
		if usable {
			return sess.Tokens, nil
		}
		// Session.Ended normally catches this, since such a session ends
		// with its access token.
		return Tokens{}, ErrInvalidToken
	}
	if s.backoff.active(sess.ID, now) {
		// A refresh of this session failed for an IdP outage moments ago:
		// spare the IdP, and the request the wait.
		if usable {
			return sess.Tokens, nil
		}
		return Tokens{}, errIdPFailing
	}
	wait := usableRefreshWait
	if !usable {
		wait = expiredRefreshWait
	}
	ch, led, started := s.startRefresh(ctx, sess)
	if time.Since(started) >= wait {
		// The refresh this request would join has already run longer than
		// a request waits: the IdP is hanging.
		return s.withoutRefresh(ctx, sess, errIdPFailing)
	}
	timer := time.NewTimer(wait - time.Since(started))
	defer timer.Stop()
	select {
	case r := <-ch:
		out, _ := r.Val.(refreshOutcome)
		if !led.Load() || out.adopted {
			// This request waited for a refresh that another one started,
			// in this process or on another replica: the one that ran it
			// counted its outcome.
			s.cfg.Metrics.Refresh("coalesced")
		}
		if r.Err != nil {
			return s.withoutRefresh(ctx, sess, r.Err)
		}
		if !s.usable(out.tokens, s.cfg.Now()) {
			return Tokens{}, wrap(CodeIdPUnavailable, errors.New("refreshed access token already expired"), "the identity provider issued an access token that has already expired")
		}
		return out.tokens, nil
	case <-timer.C:
		return s.withoutRefresh(ctx, sess, errIdPFailing)
	case <-ctx.Done():
		return Tokens{}, wrap(CodeIdPUnavailable, ctx.Err(), "the request ended while the session was being refreshed")
	}
}

// errIdPFailing answers a request that cannot wait for the IdP any longer.
var errIdPFailing = Errorf(CodeIdPUnavailable, "the identity provider is unavailable, retry later")

// withoutRefresh answers a request whose refresh did not succeed: it goes
// through with its current access token while that token lasts, unless the
// refresh showed that the session is over.
func (s *Service) withoutRefresh(ctx context.Context, sess *Session, err error) (Tokens, error) {
	if ErrorCode(err) == CodeIdPUnavailable && s.usable(sess.Tokens, s.cfg.Now()) {
		s.log.WarnContext(ctx, "refresh not done, using the current access token while it lasts", "session_id", sess.ID, "error", err)
		return sess.Tokens, nil
	}
	return Tokens{}, err
}

// startRefresh joins or starts the process's refresh flight of a session and
// reports when that flight started. led is set, before the result is sent,
// when the flight is this call's own rather than one it joined. The flight
// is detached from every request: a request that stops waiting leaves it to
// finish and store its result, and Close waits for it. It keeps the values
// of the request that started it (its request id, for the logs).
func (s *Service) startRefresh(reqCtx context.Context, sess *Session) (_ <-chan singleflight.Result, led *atomic.Bool, _ time.Time) {
	id, seen := sess.ID, sess.Generation
	led = new(atomic.Bool)
	ch := s.flight.DoChan("refresh:"+id, func() (any, error) {
		led.Store(true)
		s.flights.begin(id)
		defer s.flights.done(id)
		var out refreshOutcome
		var err error
		if !s.work(func(base context.Context) {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(reqCtx), s.cfg.RefreshTimeout+2*s.cfg.LockTTL)
			defer cancel()
			defer context.AfterFunc(base, cancel)()
			out, err = s.refresh(ctx, id, seen)
		}) {
			return nil, errClosing
		}
		if ErrorCode(err) == CodeInternal && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
			// The flight's own deadline, or Close: the broker's timeout,
			// not the store's.
			err = wrap(CodeIdPUnavailable, err, "the session's refresh did not finish in time, retry later")
		}
		switch {
		case err == nil:
			s.backoff.clear(id)
		case errors.Is(err, errOtherReplicaSlow):
			// Nothing is known about the IdP from here.
		case ErrorCode(err) == CodeIdPUnavailable:
			s.backoff.set(id, s.cfg.Now().Add(refreshBackoff))
		}
		return out, err
	})
	// A flight this call just started may not have recorded its start yet.
	started, ok := s.flights.since(id)
	if !ok {
		started = time.Now()
	}
	return ch, led, started
}

// errOtherReplicaSlow ends a wait for another replica's refresh.
var errOtherReplicaSlow = Errorf(CodeIdPUnavailable, "the session's refresh on another replica has not finished, retry later")

// errClosing refuses work that would start after Close.
var errClosing = Errorf(CodeIdPUnavailable, "the broker is shutting down, retry later")

// refresh brings session id's tokens past generation seen: it takes the
// lease and refreshes, or waits for the holder and adopts what it stores.
func (s *Service) refresh(ctx context.Context, id string, seen uint64) (refreshOutcome, error) {
	poll := pollMin
	deadline := time.Now().Add(waitForOther)
	for {
		if p, ok := s.pending.get(id); ok && p.gen > seen {
			return refreshOutcome{p.tokens, p.gen, true}, nil
		}
		lease, ok, err := s.cfg.Locker.TryLock(ctx, id, s.cfg.LockTTL)
		if err != nil {
			return refreshOutcome{}, fmt.Errorf("take refresh lease: %w", err)
		}
		if ok {
			return s.refreshHolding(ctx, id, seen, lease)
		}
		// Another replica refreshes: wait for its result.
		if time.Now().After(deadline) {
			return refreshOutcome{}, errOtherReplicaSlow
		}
		if err := sleep(ctx, poll); err != nil {
			return refreshOutcome{}, wrap(CodeIdPUnavailable, err, "the session's refresh did not finish in time")
		}
		poll = min(2*poll, pollMax)
		sess, err := s.read(ctx, id)
		if err != nil {
			return refreshOutcome{}, err
		}
		if sess.Generation > seen && s.usable(sess.Tokens, s.cfg.Now()) {
			return refreshOutcome{sess.Tokens, sess.Generation, true}, nil
		}
	}
}

// read gets a session for the refresh protocol: an ended or unreadable one
// is an invalid handle.
func (s *Service) read(ctx context.Context, id string) (*Session, error) {
	sess, err := s.cfg.Store.Get(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrUnreadable):
		return nil, ErrInvalidToken
	case err != nil:
		return nil, fmt.Errorf("get session: %w", err)
	}
	return sess, nil
}

// refreshHolding runs the refresh while holding lease. The lease is
// renewed for as long as the IdP call runs, and released at the end unless
// rotated tokens still wait to be stored, whose writer then owns it.
func (s *Service) refreshHolding(ctx context.Context, id string, seen uint64, lease Lease) (refreshOutcome, error) {
	keep := s.keepLease(id, lease)
	handedOver := false
	defer func() {
		if !handedOver {
			keep.release()
		}
	}()
	// Re-read under the lease: the previous holder may have just finished.
	sess, err := s.read(ctx, id)
	if err != nil {
		return refreshOutcome{}, err
	}
	if sess.Generation > seen && s.fresh(sess.Tokens, s.cfg.Now()) {
		return refreshOutcome{sess.Tokens, sess.Generation, true}, nil
	}
	next, err := s.redeemRefresh(ctx, sess)
	if errors.Is(err, errRefused) {
		keep.release()
		return s.refused(ctx, sess, err)
	}
	if err != nil {
		return refreshOutcome{}, err
	}
	out := refreshOutcome{tokens: next, gen: sess.Generation + 1}
	if l := keep.current(); l == nil {
		err = ErrLeaseLost
	} else {
		err = s.cfg.Store.UpdateTokens(ctx, id, l, sess.Generation, next)
	}
	switch {
	case err == nil:
		s.cfg.Metrics.Refresh("ok")
		s.log.InfoContext(ctx, "session refreshed", "session_id", id, "generation", out.gen, "expires_in", next.Expiry.Sub(s.cfg.Now()).Round(time.Second))
		return out, nil
	case errors.Is(err, ErrNotFound):
		// Ended while the IdP answered: do not leave the new refresh
		// token alive.
		s.cfg.Metrics.Refresh("failed")
		s.revokeDetached(ctx, next.RefreshToken, id)
		return refreshOutcome{}, ErrInvalidToken
	case errors.Is(err, ErrGenerationMoved):
		// Another writer stored tokens of a newer generation: theirs are
		// current. Ours are left alone, not revoked: an IdP that returns
		// the same refresh token within a reuse interval (Dex) would
		// revoke theirs with it.
		s.cfg.Metrics.Refresh("ok")
		stored, err := s.read(ctx, id)
		if err != nil {
			return refreshOutcome{}, err
		}
		return refreshOutcome{tokens: stored.Tokens, gen: stored.Generation}, nil
	}
	// The store could not take the rotated tokens (unreachable, or the
	// lease was lost): the old refresh token is spent, so these are the
	// session's only valid tokens. Keep them, serve them, and store them in
	// the background.
	s.cfg.Metrics.Refresh("ok")
	handedOver = true
	s.log.WarnContext(ctx, "session refreshed, but the store did not take the new tokens yet; serving them and retrying the write", "session_id", id, "generation", out.gen, "error", err)
	s.pending.put(id, out)
	if !s.spawn(func(bg context.Context) { s.storePending(bg, id, sess.Generation, keep) }) {
		// Close has begun: this flight is counted work, so write here,
		// within the shutdown grace.
		s.storePending(s.life.base, id, sess.Generation, keep)
	}
	return out, nil
}

// storePending stores rotated tokens that the store did not take, until
// the write lands, the session ends or moves on, or pendingWriteLimit
// passes. It owns the lease keeper and releases it at the end.
func (s *Service) storePending(ctx context.Context, id string, from uint64, keep *leaseKeeper) {
	defer keep.release()
	p, _ := s.pending.get(id)
	defer s.pending.drop(id, p.gen)
	give := time.Now().Add(pendingWriteLimit)
	pause := writeRetryMin
	for attempt := 1; ; attempt++ {
		if err := sleep(ctx, pause); err != nil {
			s.log.Error("rotated tokens were not stored before shutdown: the session will need a new sign-in", "session_id", id, "generation", p.gen)
			return
		}
		pause = min(2*pause, writeRetryMax)
		lease := keep.current()
		if lease == nil {
			// Lost: take it back, or, if another replica holds it (it is
			// calling the IdP with the spent token, which will be refused),
			// store by the generation alone rather than wait for it: the
			// refused holder ends the session unless the generation moves.
			lease = keep.retake(ctx)
		}
		err := s.cfg.Store.UpdateTokens(ctx, id, lease, from, p.tokens)
		switch {
		case err == nil:
			s.log.Info("rotated tokens stored after a retry", "session_id", id, "generation", p.gen, "attempts", attempt)
			return
		case errors.Is(err, ErrNotFound):
			s.revokeDetached(ctx, p.tokens.RefreshToken, id)
			return
		case errors.Is(err, ErrGenerationMoved):
			return
		case errors.Is(err, ErrLeaseLost):
			keep.lost()
		case !errors.Is(err, ErrStoreUnavailable):
			// Retrying cannot fix it (the record became unreadable, say).
			s.log.Error("rotated tokens cannot be stored: the session will need a new sign-in", "session_id", id, "generation", p.gen, "error", err)
			return
		}
		if time.Now().After(give) {
			s.log.Error("rotated tokens could not be stored: the session will need a new sign-in", "session_id", id, "generation", p.gen, "error", err)
			return
		}
	}
}

// errRefused marks an IdP answer that the refresh token is dead.
var errRefused = errors.New("the identity provider refused the refresh token")

// refused handles a definite refusal of the refresh token of sess, read at
// its generation: another writer may have stored newer tokens (adopt them),
// or may be about to (wait adoptGrace); otherwise the session ends, on the
// condition that its generation has not moved.
func (s *Service) refused(ctx context.Context, sess *Session, cause error) (refreshOutcome, error) {
	deadline := time.Now().Add(adoptGrace)
	for {
		cur, err := s.read(ctx, sess.ID)
		if err != nil {
			return refreshOutcome{}, err
		}
		if cur.Generation > sess.Generation {
			s.log.InfoContext(ctx, "refresh refused, adopting the newer tokens another writer stored", "session_id", sess.ID, "generation", cur.Generation)
			return refreshOutcome{cur.Tokens, cur.Generation, true}, nil
		}
		if time.Now().After(deadline) {
			break
		}
		if err := sleep(ctx, 4*pollMin); err != nil {
			return refreshOutcome{}, wrap(CodeIdPUnavailable, err, "the session's refresh did not finish in time")
		}
	}
	why := EndReason{Actor: ActorBroker, Action: ActionRefreshRejected, Reason: "refresh_rejected",
		Detail: truncate(cause.Error(), MaxAuditDetailLen), IfGeneration: sess.Generation}
	_, err := s.end(ctx, sess.ID, why)
	switch {
	case errors.Is(err, ErrGenerationMoved):
		cur, err := s.read(ctx, sess.ID)
		if err != nil {
			return refreshOutcome{}, err
		}
		return refreshOutcome{cur.Tokens, cur.Generation, true}, nil
	case err != nil && !errors.Is(err, ErrNotFound):
		return refreshOutcome{}, fmt.Errorf("end a session whose refresh was refused: %w", err)
	}
	s.cfg.Metrics.Refresh("rejected")
	return refreshOutcome{}, Errorf(CodeInvalidToken, "session ended: the identity provider rejected its refresh")
}

// redeemRefresh calls the IdP's token endpoint with the session's refresh
// token. It returns errRefused (wrapped) when the IdP says the token is
// dead, and CodeIdPUnavailable for everything else that failed.
//
// OAuth error codes alone do not say that a refresh token is dead (see
// IDP-NOTES): invalid_grant does (RFC 6749 section 5.2); invalid_request
// means a dead token at Dex and a transient conflict at Hydra, so it is
// retried once with the same token after a pause, and taken as dead only
// if the IdP says it again. Every failure is logged with the IdP's error
// code and description, never a token.
func (s *Service) redeemRefresh(ctx context.Context, sess *Session) (Tokens, error) {
	d, err := s.provider(ctx)
	if err != nil {
		s.cfg.Metrics.Refresh("failed")
		return Tokens{}, err
	}
	var tok *oauth2.Token
	for attempt := 1; ; attempt++ {
		tok, err = s.callRefresh(ctx, d, sess.Tokens.RefreshToken)
		if err == nil {
			break
		}
		te := classifyTokenError(err)
		s.log.WarnContext(ctx, "refresh failed at the identity provider", "session_id", sess.ID, "attempt", attempt,
			"status", te.status, "idp_error", truncate(te.oauthCode, 64), "idp_error_description", truncate(te.description, 200), "error", idpCause(err))
		switch {
		case te.status == 400 && te.oauthCode == "invalid_request" && attempt == 1:
			if err := sleep(ctx, retryPause); err != nil {
				return Tokens{}, wrap(CodeIdPUnavailable, err, "the identity provider is unavailable, retry later")
			}
			continue
		case te.dead():
			return Tokens{}, fmt.Errorf("%w: %s", errRefused, te.summary())
		}
		s.cfg.Metrics.Refresh("failed")
		return Tokens{}, wrap(CodeIdPUnavailable, idpCause(err), "the identity provider is unavailable, retry later")
	}
	next := s.tokensFrom(tok, sess.Tokens.IDToken)
	if next.RefreshToken == "" {
		// RFC 6749 section 6: the IdP may keep the refresh token as it is.
		next.RefreshToken = sess.Tokens.RefreshToken
	}
	if rawID, _ := tok.Extra("id_token").(string); rawID != "" {
		// OIDC Core 12.2: a refreshed ID token must keep iss, sub and aud.
		vctx, cancel := context.WithTimeout(ctx, s.cfg.IdPTimeout)
		idt, err := d.refreshVerifier.Verify(s.clientContext(vctx), rawID)
		cancel()
		if err == nil {
			err = s.checkIDToken(idt)
		}
		if err == nil && idt.Subject != sess.Subject {
			err = errors.New("the ID token's sub is not the session's")
		}
		if err != nil {
			s.log.WarnContext(ctx, "ignoring an ID token from a refresh that failed verification", "session_id", sess.ID, "error", err)
		} else {
			next.IDToken = rawID
		}
	}
	return next, nil
}

// callRefresh sends one refresh_token grant and waits up to RefreshTimeout
// for the answer, so that a slow or paused IdP is not sent the same token
// again while this call may still be processed.
func (s *Service) callRefresh(ctx context.Context, d *idp, refreshToken string) (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RefreshTimeout)
	defer cancel()
	// An expired token makes x/oauth2 use the refresh token at once.
	old := &oauth2.Token{RefreshToken: refreshToken, Expiry: time.Unix(1, 0)}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, s.refreshClient)
	return s.oauthConfig(d, "").TokenSource(ctx, old).Token()
}

// leaseKeeper renews a refresh lease in the background and, when it was
// lost, can try to take it again.
type leaseKeeper struct {
	s    *Service
	id   string
	stop chan struct{}
	once sync.Once
	done chan struct{}

	mu    sync.Mutex
	lease Lease // nil while lost
}

// keepLease renews lease every LockTTL/3 until release, under the Service's
// context rather than the refresh's, since a writer of rotated tokens may
// take it over. A renewal the store could not answer is tried again at the
// next tick: the lease may still be held until its ttl runs out.
func (s *Service) keepLease(id string, lease Lease) *leaseKeeper {
	ctx := s.life.base
	k := &leaseKeeper{s: s, id: id, lease: lease, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(k.done)
		t := time.NewTicker(s.cfg.LockTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-k.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			l := k.current()
			if l == nil {
				continue
			}
			ectx, cancel := context.WithTimeout(ctx, s.cfg.LockTTL/3)
			err := l.Extend(ectx)
			cancel()
			switch {
			case errors.Is(err, ErrLeaseLost):
				s.log.Warn("the refresh lease was lost while the refresh ran", "session_id", id)
				k.lost()
			case err != nil:
				s.log.Warn("extending the refresh lease failed, retrying", "session_id", id, "error", err)
			}
		}
	}()
	return k
}

func (k *leaseKeeper) current() Lease {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lease
}

func (k *leaseKeeper) lost() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lease = nil
}

// retake tries to take the lease again after it was lost.
func (k *leaseKeeper) retake(ctx context.Context) Lease {
	l, ok, err := k.s.cfg.Locker.TryLock(ctx, k.id, k.s.cfg.LockTTL)
	if err != nil || !ok {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lease = l
	return l
}

// release stops renewing and frees the lease if it is still held. A
// release the store could not answer (Redis restarting, a pool still
// reconnecting) is retried in the background while the lease could still be
// alive: a lease nobody releases blocks the session's next refresh on every
// replica until its ttl runs out.
func (k *leaseKeeper) release() {
	k.once.Do(func() {
		close(k.stop)
		<-k.done
		l := k.current()
		if l == nil {
			return
		}
		if k.tryRelease(l) {
			return
		}
		until := time.Now().Add(k.s.cfg.LockTTL)
		k.s.spawn(func(context.Context) {
			for time.Now().Before(until) {
				if err := sleep(k.s.life.stopping, releaseRetry); err != nil || k.tryRelease(l) {
					return
				}
			}
			k.s.log.Warn("releasing the refresh lease failed; it expires by itself", "session_id", k.id)
		})
	})
}

// releaseRetry is the pause between attempts to release a lease.
const releaseRetry = 100 * time.Millisecond

// tryRelease frees the lease once and reports whether the store answered.
func (k *leaseKeeper) tryRelease(l Lease) bool {
	ctx, cancel := context.WithTimeout(context.Background(), releaseRetry*5)
	defer cancel()
	return l.Release(ctx) == nil
}

// fresh reports whether the access token can be used without a refresh:
// it has at least RefreshSkew left. A token that lives shorter than
// RefreshSkew never has that much left, and was refreshed before every
// request (6 sessions made 5,018 IdP refreshes in 40 s); it is fresh
// instead while it is valid and younger than shortRefreshInterval of its
// lifetime, so that such a session is refreshed at most once per that
// interval. The issue time is stored with the tokens, so every replica
// agrees.
func (s *Service) fresh(t Tokens, now time.Time) bool {
	if t.Expiry.IsZero() || t.Expiry.Sub(now) >= s.cfg.RefreshSkew {
		return true
	}
	life := t.Expiry.Sub(t.IssuedAt)
	return !t.IssuedAt.IsZero() && life < s.cfg.RefreshSkew &&
		now.Before(t.Expiry) && now.Sub(t.IssuedAt) < shortRefreshInterval(life)
}

// shortRefreshInterval is how long an access token that lives shorter than
// RefreshSkew is used before it is refreshed: half its lifetime, at least
// a second.
func shortRefreshInterval(life time.Duration) time.Duration {
	return max(time.Second, life/2)
}

// usable reports whether the access token has not expired yet.
func (s *Service) usable(t Tokens, now time.Time) bool {
	return t.Expiry.IsZero() || now.Before(t.Expiry)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
