package broker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Ending a session is never half done. The store deletes the session and
// records its Ending in one atomic step; the IdP revocation and the audit
// event that the end owes are then done at once by the caller, and if the
// caller or the store fails before they are recorded as done, by the outbox
// worker of any replica. The worker may repeat work whose completion was
// not recorded: RFC 7009 revocation is idempotent, and an audit event may
// then appear twice (at least once, never lost).

// Outbox timings.
const (
	// outboxInterval is how often the worker looks for endings to finish.
	outboxInterval = 5 * time.Second
	// outboxClaim is how long a worker owns an ending it took: long enough
	// for a revocation (IdPTimeout) and the writes around it.
	outboxClaim = time.Minute
	// revokeGiveUp is how long after an end the worker keeps retrying a
	// revocation the IdP refuses or cannot answer.
	revokeGiveUp = time.Hour
	// outboxBatch bounds the endings one pass takes.
	outboxBatch = 100
	// inlineRevokeWait bounds the revocation a request that ended a session
	// waits for: the end is already durable, and a revocation that does not
	// finish in time is the outbox's to retry.
	inlineRevokeWait = 2 * time.Second
)

// end ends a session for the reason given and does what the end owes at
// once. It returns the Ending; ErrNotFound when no such session exists;
// ErrGenerationMoved for a conditional end whose condition failed.
func (s *Service) end(ctx context.Context, id string, why EndReason) (*Ending, error) {
	why.Detail = truncate(why.Detail, MaxAuditDetailLen)
	e, err := s.cfg.Store.End(ctx, id, why)
	if err != nil {
		return nil, err
	}
	s.cfg.Metrics.Revocation(why.Reason)
	s.log.InfoContext(ctx, "session ended", "session_id", id, "sub", e.Session.Subject, "reason", why.Reason, "actor", why.Actor, "unreadable", e.Session.Unreadable)
	s.finish(context.WithoutCancel(ctx), e, false)
	return e, nil
}

// finish does the work an Ending owes: the revocation at the IdP, when
// asked for and possible, then the audit event, then it records the Ending
// as done. A revocation that fails leaves the Ending pending for the
// worker, which retries it until revokeGiveUp; the audit event written
// meanwhile says so. byWorker marks work finished late by the outbox.
// finish reports whether the revocation failed.
func (s *Service) finish(ctx context.Context, e *Ending, byWorker bool) (revokeFailed bool) {
	sess := e.Session
	ev := AuditEvent{Actor: e.Why.Actor, Action: e.Why.Action, SessionID: sess.ID, Subject: sess.Subject, Outcome: OutcomeOK, Detail: e.Why.Detail}
	note := func(s string) {
		if ev.Detail != "" {
			ev.Detail += "; "
		}
		ev.Detail += s
	}
	if byWorker {
		note("completed by the outbox after the end was interrupted")
	}
	complete := true
	switch {
	case sess.Unreadable:
		note("the record could not be read, so no refresh token was revoked at the identity provider")
	case e.Why.RevokeAtIdP && sess.Tokens.RefreshToken != "":
		rctx := ctx
		if !byWorker {
			var cancel context.CancelFunc
			rctx, cancel = context.WithTimeout(ctx, inlineRevokeWait)
			defer cancel()
		}
		revoked, err := s.revokeAt(rctx, sess.Tokens.RefreshToken)
		switch {
		case err != nil && time.Since(e.At) < revokeGiveUp:
			revokeFailed, complete = true, false
			ev.Outcome = OutcomeError
			note("session ended; revocation at the identity provider failed and will be retried: " + err.Error())
		case err != nil:
			revokeFailed = true
			ev.Outcome = OutcomeError
			note("session ended; revocation at the identity provider failed, given up: " + err.Error())
		case revoked:
			note("refresh token revoked at the identity provider")
		}
	}
	if !byWorker || complete {
		// The worker writes an event only once the ending is settled, so a
		// revocation retried every pass does not flood the trail.
		if err := s.appendAudit(ctx, ev); err != nil {
			// Left pending: the worker writes the event later.
			return revokeFailed
		}
	}
	if !complete {
		return revokeFailed
	}
	if err := s.cfg.Store.CompleteEnd(ctx, sess.ID); err != nil {
		s.log.WarnContext(ctx, "recording a finished end failed; the outbox will finish it again", "session_id", sess.ID, "error", err)
	}
	return revokeFailed
}

// startWorker runs the outbox worker until Close.
func (s *Service) startWorker() {
	ctx := s.life.stopping
	s.spawn(func(context.Context) {
		t := time.NewTicker(outboxInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if _, err := s.DrainEndings(ctx, s.cfg.OutboxDelay); err != nil && ctx.Err() == nil {
				s.log.Warn("the outbox worker could not read pending endings", "error", err)
			}
		}
	})
}

// DrainEndings finishes the endings that were left pending for at least
// olderThan: ended by a caller that failed, or whose revocation at the IdP
// failed. It returns how many it settled. Replicas drain concurrently
// without doing the same ending twice at once.
func (s *Service) DrainEndings(ctx context.Context, olderThan time.Duration) (int, error) {
	settled := 0
	for {
		batch, err := s.cfg.Store.ClaimEnds(ctx, olderThan, outboxClaim, outboxBatch)
		if err != nil {
			return settled, fmt.Errorf("claim pending endings: %w", err)
		}
		for _, e := range batch {
			if !s.finish(ctx, e, true) {
				settled++
			}
		}
		if len(batch) < outboxBatch {
			return settled, nil
		}
	}
}

// revokeAt revokes a refresh token at the IdP, discovering it first if
// this process has not yet: an ending must never count as revoked because
// the IdP's endpoints are still unknown.
func (s *Service) revokeAt(ctx context.Context, token string) (bool, error) {
	d, err := s.provider(ctx)
	if err != nil {
		return false, err
	}
	return s.revoke(ctx, d, token)
}

// revokeDetached revokes, in the background, a refresh token that no session
// holds any more, such as one the IdP issued after the session ended.
func (s *Service) revokeDetached(_ context.Context, token, sessionID string) {
	d := s.idp.Load()
	if token == "" || d == nil || d.revocationURL == "" {
		return
	}
	s.spawn(func(ctx context.Context) {
		if _, err := s.revoke(ctx, d, token); err != nil {
			s.log.Warn("revoking an unused refresh token failed", "session_id", sessionID, "error", err)
		}
	})
}

// appendAudit logs an event and appends it to the trail. Fields that come
// from outside are bounded.
func (s *Service) appendAudit(ctx context.Context, e AuditEvent) error {
	if e.Time.IsZero() {
		e.Time = s.cfg.Now()
	}
	if r := RequestFrom(ctx); r != nil && e.ClientIP == "" && e.UserAgent == "" && e.RequestID == "" {
		e.ClientIP, e.UserAgent, e.RequestID = r.ClientIP(), r.UserAgent(), r.RequestID()
	}
	e.Actor = truncate(e.Actor, 128)
	e.Subject = truncate(withoutSecret(e.Subject), 256)
	e.Detail = truncate(e.Detail, MaxAuditDetailLen)
	e.ClientIP = truncate(e.ClientIP, MaxIPLen)
	e.UserAgent = truncate(withoutSecret(e.UserAgent), MaxUserAgentLen)
	e.RequestID = truncate(e.RequestID, MaxRequestIDLen)
	// The log line's request_id comes from the context (see the handlers'
	// log handler).
	s.log.InfoContext(ctx, "audit", "actor", e.Actor, "action", e.Action, "session_id", e.SessionID, "sub", e.Subject,
		"outcome", e.Outcome, "detail", e.Detail, "ip", e.ClientIP, "user_agent", e.UserAgent)
	if s.cfg.Audit == nil {
		return nil
	}
	if err := s.cfg.Audit.Append(context.WithoutCancel(ctx), e); err != nil {
		s.log.WarnContext(ctx, "appending to the audit trail failed", "action", e.Action, "session_id", e.SessionID, "error", err)
		return err
	}
	return nil
}

// withoutSecret keeps a handle that an operator pasted where a subject
// belongs out of the audit trail: its secret is replaced, its session id
// kept.
func withoutSecret(s string) string {
	if id, _, ok := parseHandle(s); ok {
		return id + ".[redacted]"
	}
	return s
}

// audit appends an event whose loss the caller cannot act on.
func (s *Service) audit(ctx context.Context, e AuditEvent) { _ = s.appendAudit(ctx, e) }

// ended returns the Ending of a session that End did not find, if it ended
// within EndRetention, so that a repeated end is told it took effect; nil
// when it did not.
func (s *Service) ended(ctx context.Context, id string) (*Ending, error) {
	e, err := s.cfg.Store.Ending(ctx, id)
	switch {
	case err == nil:
		return e, nil
	case errors.Is(err, ErrNotFound):
		return nil, nil
	}
	return nil, fmt.Errorf("look up the end of session %s: %w", id, err)
}
