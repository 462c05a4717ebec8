package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// The security team's use cases: list and end sessions centrally, read the
// audit trail. Ending a session deletes it from the store, which every
// replica reads on every request, so it stops working everywhere at once.

// Session returns the live session with the given public id, or ErrNotFound.
func (s *Service) Session(ctx context.Context, id string) (*Session, error) {
	if !ValidSessionID(id) {
		return nil, ErrNotFound
	}
	sess, err := s.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("get session: %w", err)
	}
	if sess.Ended(s.cfg.Now()) {
		return nil, ErrNotFound
	}
	return sess, nil
}

// UserSessions returns the live sessions of a subject, newest first; none
// for an unknown subject.
func (s *Service) UserSessions(ctx context.Context, sub string) ([]*Session, error) {
	all, err := s.cfg.Store.ListBySubject(ctx, sub)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	now := s.cfg.Now()
	live := all[:0]
	for _, sess := range all {
		if !sess.Ended(now) {
			live = append(live, sess)
		}
	}
	return live, nil
}

// RevokeSession ends one session on behalf of an admin and revokes its
// refresh token at the IdP. An IdP failure does not undo the local end: it is
// recorded in the audit trail. ErrNotFound if the session is unknown.
func (s *Service) RevokeSession(ctx context.Context, id, actor string) error {
	if !ValidSessionID(id) {
		return ErrNotFound
	}
	_, err := s.end(ctx, id, endReason{actor: actor, action: ActionSessionRevoke, reason: "admin", revokeAtIdP: true})
	return err
}

// UserRevocation is the outcome of ending all of a user's sessions.
type UserRevocation struct {
	// Revoked counts the sessions ended.
	Revoked int
	// IdPFailures counts refresh tokens the IdP could not revoke; those
	// sessions are ended all the same.
	IdPFailures int
}

// idpRevokeParallelism bounds concurrent RFC 7009 calls of a revoke-all.
const idpRevokeParallelism = 8

// RevokeUser ends every session of a subject, then revokes their refresh
// tokens at the IdP, and records one audit event for the whole action.
func (s *Service) RevokeUser(ctx context.Context, sub, actor string) (UserRevocation, error) {
	list, err := s.cfg.Store.ListBySubject(ctx, sub)
	if err != nil {
		return UserRevocation{}, fmt.Errorf("list sessions: %w", err)
	}
	var ended []*Session
	for _, sess := range list {
		e, err := s.cfg.Store.End(ctx, sess.ID, EndReason{Actor: actor, Action: ActionUserRevoke, Reason: "admin", RevokeAtIdP: true})
		switch {
		case errors.Is(err, ErrNotFound):
			continue
		case err != nil:
			s.audit(ctx, AuditEvent{Actor: actor, Action: ActionUserRevoke, Subject: sub, Outcome: OutcomeError,
				Detail: fmt.Sprintf("stopped after ending %d sessions: the store failed", len(ended))})
			return UserRevocation{Revoked: len(ended)}, fmt.Errorf("delete session: %w", err)
		}
		s.cfg.Metrics.Revocation("admin")
		ended = append(ended, e.Session)
	}
	res := UserRevocation{Revoked: len(ended), IdPFailures: s.revokeAll(ctx, ended)}
	ev := AuditEvent{Actor: actor, Action: ActionUserRevoke, Subject: sub, Outcome: OutcomeOK,
		Detail: fmt.Sprintf("%d sessions ended", res.Revoked)}
	if res.IdPFailures > 0 {
		ev.Outcome = OutcomeError
		ev.Detail += fmt.Sprintf("; the identity provider failed to revoke %d refresh tokens", res.IdPFailures)
	}
	s.audit(ctx, ev)
	s.log.InfoContext(ctx, "user sessions ended", "sub", sub, "actor", actor, "revoked", res.Revoked, "idp_failures", res.IdPFailures)
	return res, nil
}

// revokeAll revokes the refresh tokens of ended sessions at the IdP with
// bounded parallelism and returns how many failed.
func (s *Service) revokeAll(ctx context.Context, ended []*Session) int {
	d := s.idp.Load()
	if d == nil || d.revocationURL == "" {
		return 0
	}
	ctx = context.WithoutCancel(ctx)
	var (
		mu       sync.Mutex
		failures int
		wg       sync.WaitGroup
		slots    = make(chan struct{}, idpRevokeParallelism)
	)
	for _, sess := range ended {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			if _, err := s.revoke(ctx, d, sess.Tokens.RefreshToken); err != nil {
				s.log.Warn("revocation at the identity provider failed", "session_id", sess.ID, "error", err)
				mu.Lock()
				failures++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failures
}

// Audit returns up to limit audit events, newest first.
func (s *Service) Audit(ctx context.Context, limit int) ([]AuditEvent, error) {
	if s.cfg.Audit == nil {
		return nil, nil
	}
	events, err := s.cfg.Audit.List(ctx, limit)
	if err != nil {
		return nil, fmt.Errorf("list audit events: %w", err)
	}
	return events, nil
}

// AdminDenied records a refused admin call. detail must not hold the
// presented credential.
func (s *Service) AdminDenied(ctx context.Context, detail string) {
	s.audit(ctx, AuditEvent{Actor: "unknown", Action: ActionAdminDenied, Outcome: OutcomeError, Detail: detail})
}
