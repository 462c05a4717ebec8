package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/oauth2"
)

// refreshPoll is how often a replica that waits for another one's refresh
// re-reads the session.
const refreshPoll = 25 * time.Millisecond

// While an access token is still valid, a request waits at most
// usableRefreshWait for its refresh, and after a refresh failed for an IdP
// outage the session tries again only after refreshBackoff: an IdP that
// hangs must not add its timeout to every request.
const (
	usableRefreshWait = 2 * time.Second
	refreshBackoff    = 5 * time.Second
)

// backoffs remembers, per session, until when not to retry a refresh that
// failed for an IdP outage. It is per process: at worst each replica tries
// once per interval.
type backoffs struct {
	mu    sync.Mutex
	until map[string]time.Time
}

// backoffLimit bounds the map; past it, entries that ran out are dropped.
const backoffLimit = 10000

func (b *backoffs) active(id string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.until[id]
	return ok && now.Before(t)
}

func (b *backoffs) set(id string, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.until == nil {
		b.until = map[string]time.Time{}
	}
	if len(b.until) >= backoffLimit {
		for k, t := range b.until {
			if t.Before(until.Add(-refreshBackoff)) {
				delete(b.until, k)
			}
		}
	}
	b.until[id] = until
}

func (b *backoffs) clear(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.until, id)
}

// freshTokens returns tokens whose access token has at least RefreshSkew
// left, refreshing them when needed.
//
// Exactly one refresh reaches the IdP per expiry, however many requests and
// replicas ask at once: requests in one process share one call
// (singleflight), and across replicas the holder of the session's refresh
// lease refreshes while the others wait and re-read the stored result. A
// rotated refresh token is stored before any caller gets the new access
// token, so no later refresh can use a spent one.
func (s *Service) freshTokens(ctx context.Context, sess *Session) (Tokens, error) {
	now := s.cfg.Now()
	if s.fresh(sess.Tokens, now) {
		return sess.Tokens, nil
	}
	if sess.Tokens.RefreshToken == "" {
		if s.usable(sess.Tokens, now) {
			return sess.Tokens, nil
		}
		// Session.Ended normally catches this, since such a session ends
		// with its access token.
		return Tokens{}, ErrInvalidToken
	}
	usable := s.usable(sess.Tokens, now)
	if usable && s.backoff.active(sess.ID, now) {
		// A refresh of this session failed for an IdP outage moments ago:
		// spare the IdP, and the request the wait, while the token lasts.
		return sess.Tokens, nil
	}
	stale := sess.Tokens.AccessToken
	ch := s.flight.DoChan("refresh:"+sess.ID, func() (any, error) {
		// Detached from the first caller: its cancellation must not fail
		// the callers that joined it, and a caller that stops waiting
		// leaves the refresh to finish and store its result.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.LockTTL+2*s.cfg.IdPTimeout)
		defer cancel()
		t, err := s.refreshShared(ctx, sess.ID, stale)
		if ErrorCode(err) == CodeIdPUnavailable {
			s.backoff.set(sess.ID, s.cfg.Now().Add(refreshBackoff))
		} else {
			s.backoff.clear(sess.ID)
		}
		return t, err
	})
	// A request whose token is still valid waits for a slow IdP only
	// briefly; one whose token has expired has nothing else to use.
	var patience <-chan time.Time
	if usable {
		t := time.NewTimer(usableRefreshWait)
		defer t.Stop()
		patience = t.C
	}
	var res singleflightResult
	select {
	case r := <-ch:
		res = singleflightResult{r.Val, r.Err, r.Shared}
	case <-patience:
		s.log.WarnContext(ctx, "refresh is slow, using the current access token while it lasts", "session_id", sess.ID)
		return sess.Tokens, nil
	case <-ctx.Done():
		return Tokens{}, wrap(CodeIdPUnavailable, ctx.Err(), "the request ended while the session was being refreshed")
	}
	if res.shared {
		s.cfg.Metrics.Refresh("coalesced")
	}
	if res.err == nil {
		return res.val.(Tokens), nil
	}
	// An IdP outage does not stop a request whose token is still valid.
	if ErrorCode(res.err) == CodeIdPUnavailable && s.usable(sess.Tokens, s.cfg.Now()) {
		s.log.WarnContext(ctx, "refresh failed, using the current access token while it lasts", "session_id", sess.ID, "error", res.err)
		return sess.Tokens, nil
	}
	return Tokens{}, res.err
}

type singleflightResult struct {
	val    any
	err    error
	shared bool
}

// fresh reports whether the access token has at least RefreshSkew left.
func (s *Service) fresh(t Tokens, now time.Time) bool {
	return t.Expiry.IsZero() || t.Expiry.Sub(now) >= s.cfg.RefreshSkew
}

// usable reports whether the access token has not expired yet.
func (s *Service) usable(t Tokens, now time.Time) bool {
	return t.Expiry.IsZero() || now.Before(t.Expiry)
}

// refreshShared refreshes the tokens of session id unless another holder of
// the lease already replaced stale, the access token the caller saw.
func (s *Service) refreshShared(ctx context.Context, id, stale string) (Tokens, error) {
	for {
		lease, ok, err := s.cfg.Locker.TryLock(ctx, id, s.cfg.LockTTL)
		if err != nil {
			return Tokens{}, fmt.Errorf("take refresh lease: %w", err)
		}
		if ok {
			return s.refreshHolding(ctx, id, stale, lease)
		}
		// Another replica refreshes: wait for its result.
		select {
		case <-ctx.Done():
			return Tokens{}, wrap(CodeIdPUnavailable, ctx.Err(), "the session's refresh did not finish in time")
		case <-time.After(refreshPoll):
		}
		sess, err := s.cfg.Store.Get(ctx, id)
		if err != nil {
			return Tokens{}, s.sessionGone(err)
		}
		if sess.Tokens.AccessToken != stale && s.usable(sess.Tokens, s.cfg.Now()) {
			return sess.Tokens, nil
		}
	}
}

// refreshHolding runs the refresh while holding lease.
func (s *Service) refreshHolding(ctx context.Context, id, stale string, lease Lease) (Tokens, error) {
	defer func() {
		if err := lease.Release(context.WithoutCancel(ctx)); err != nil {
			s.log.Warn("releasing the refresh lease failed", "session_id", id, "error", err)
		}
	}()
	// Re-read under the lease: the previous holder may have just finished.
	sess, err := s.cfg.Store.Get(ctx, id)
	if err != nil {
		return Tokens{}, s.sessionGone(err)
	}
	if sess.Tokens.AccessToken != stale && s.usable(sess.Tokens, s.cfg.Now()) {
		return sess.Tokens, nil
	}
	stop := s.keepLease(ctx, id, lease)
	defer stop()
	return s.redeemRefresh(ctx, sess)
}

// keepLease extends the lease while the IdP call runs, so that a slow IdP
// does not let a second replica start a refresh with the same token.
func (s *Service) keepLease(ctx context.Context, id string, lease Lease) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(s.cfg.LockTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if err := lease.Extend(ctx); err != nil {
					s.log.Warn("extending the refresh lease failed", "session_id", id, "error", err)
					return
				}
			}
		}
	}()
	return func() { close(done) }
}

// redeemRefresh calls the IdP's token endpoint with the refresh token and
// stores the result.
func (s *Service) redeemRefresh(ctx context.Context, sess *Session) (Tokens, error) {
	d, err := s.provider(ctx)
	if err != nil {
		s.cfg.Metrics.Refresh("failed")
		return Tokens{}, err
	}
	// An expired token makes x/oauth2 use the refresh token at once.
	old := &oauth2.Token{RefreshToken: sess.Tokens.RefreshToken, Expiry: time.Unix(1, 0)}
	tok, err := s.oauthConfig(d, "").TokenSource(s.clientContext(ctx), old).Token()
	if err != nil {
		te := classifyTokenError(err)
		if te.oauthCode == "invalid_grant" {
			// RFC 6749 section 5.2: the refresh token is invalid, expired
			// or revoked; the session cannot go on.
			s.cfg.Metrics.Refresh("rejected")
			s.endRejected(ctx, sess)
			return Tokens{}, Errorf(CodeInvalidToken, "session ended: the identity provider rejected its refresh")
		}
		s.cfg.Metrics.Refresh("failed")
		return Tokens{}, wrap(CodeIdPUnavailable, redactURLError(err), "the identity provider is unavailable, retry later")
	}
	next := tokensFrom(tok, sess.Tokens.IDToken)
	if rawID, _ := tok.Extra("id_token").(string); rawID != "" {
		// OIDC Core 12.2: a refreshed ID token must keep iss, sub and aud.
		if idt, err := d.refreshVerifier.Verify(s.clientContext(ctx), rawID); err != nil || idt.Subject != sess.Subject {
			s.log.WarnContext(ctx, "ignoring an ID token from a refresh that failed verification", "session_id", sess.ID, "error", err)
		} else {
			next.IDToken = rawID
		}
	}
	if err := s.storeRefreshed(ctx, sess.ID, next); err != nil {
		s.cfg.Metrics.Refresh("failed")
		if errors.Is(err, ErrNotFound) {
			// Revoked while the IdP answered: do not leave the new refresh
			// token alive.
			s.revokeDetached(ctx, d, next.RefreshToken, sess.ID)
			return Tokens{}, ErrInvalidToken
		}
		return Tokens{}, err
	}
	s.cfg.Metrics.Refresh("ok")
	s.log.InfoContext(ctx, "session refreshed", "session_id", sess.ID, "expires_in", next.Expiry.Sub(s.cfg.Now()).Round(time.Second))
	return next, nil
}

// storeRefreshed stores rotated tokens, retrying briefly: the IdP has spent
// the old refresh token, so losing the new one would end the session.
func (s *Service) storeRefreshed(ctx context.Context, id string, t Tokens) error {
	var err error
	for attempt := range 4 {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return err
			case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
			}
		}
		err = s.cfg.Store.UpdateTokens(ctx, id, nil, 0, t)
		if err == nil || !errors.Is(err, ErrStoreUnavailable) {
			return err
		}
	}
	return fmt.Errorf("store refreshed tokens: %w", err)
}

// endRejected ends a session whose refresh the IdP rejected.
func (s *Service) endRejected(ctx context.Context, sess *Session) {
	if _, err := s.cfg.Store.End(ctx, sess.ID, EndReason{Actor: ActorBroker, Action: ActionRefreshRejected, Reason: "refresh_rejected"}); err != nil && !errors.Is(err, ErrNotFound) {
		s.log.WarnContext(ctx, "ending a session whose refresh was rejected failed", "session_id", sess.ID, "error", err)
		return
	}
	s.cfg.Metrics.Revocation("refresh_rejected")
	s.audit(ctx, AuditEvent{Actor: ActorBroker, Action: ActionRefreshRejected, SessionID: sess.ID, Subject: sess.Subject, Outcome: OutcomeOK, Detail: "the identity provider answered invalid_grant"})
}

// sessionGone maps a store error met during a refresh.
func (s *Service) sessionGone(err error) error {
	if errors.Is(err, ErrNotFound) {
		return ErrInvalidToken
	}
	return fmt.Errorf("get session: %w", err)
}
