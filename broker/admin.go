package broker

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The security team's use cases: list and end sessions centrally, read the
// audit trail. Ending a session deletes it from the store, which every
// replica reads on every request, so it stops working everywhere at once.

// Session returns the live session with the given public id, or ErrNotFound.
// An unreadable record is returned flagged Session.Unreadable, with the
// clear-text fields it has, so that it can be found and ended.
func (s *Service) Session(ctx context.Context, id string) (*Session, error) {
	if !ValidSessionID(id) {
		return nil, ErrNotFound
	}
	sess, err := s.cfg.Store.Get(ctx, id)
	var unreadable *UnreadableError
	switch {
	case errors.As(err, &unreadable):
		return unreadable.Session, nil
	case err != nil:
		return nil, fmt.Errorf("get session: %w", err)
	case sess.Ended(s.cfg.Now()):
		return nil, ErrNotFound
	}
	return sess, nil
}

// UserSessions returns the live sessions of a subject, newest first, with
// its unreadable records flagged; none for an unknown subject.
func (s *Service) UserSessions(ctx context.Context, sub string) ([]*Session, error) {
	all, err := s.cfg.Store.ListBySubject(ctx, sub)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	now := s.cfg.Now()
	live := all[:0]
	for _, sess := range all {
		if sess.Unreadable || !sess.Ended(now) {
			live = append(live, sess)
		}
	}
	return live, nil
}

// RevokeSession ends one session on behalf of an admin and revokes its
// refresh token at the IdP. An IdP failure does not undo the local end: it is
// recorded in the audit trail and retried by the outbox. A session that
// ended within EndRetention is reported as ended again (a retried revoke
// whose first answer was lost); ErrNotFound if the session is unknown.
func (s *Service) RevokeSession(ctx context.Context, id, actor string) error {
	if !ValidSessionID(id) {
		return ErrNotFound
	}
	_, err := s.end(ctx, id, EndReason{Actor: actor, Action: ActionSessionRevoke, Reason: "admin", RevokeAtIdP: true})
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	ended, lerr := s.ended(ctx, id)
	switch {
	case lerr != nil:
		return lerr
	case ended == nil:
		return err
	}
	return nil
}

// UserRevocation is the outcome of ending all of a user's sessions.
type UserRevocation struct {
	// Revoked counts the sessions ended.
	Revoked int
	// IdPFailures counts refresh tokens the IdP could not revoke; those
	// sessions are ended all the same, and the outbox retries them.
	IdPFailures int
}

// idpRevokeParallelism bounds concurrent RFC 7009 calls of a revoke-all.
const idpRevokeParallelism = 8

// RevokeUser ends every session of a subject, unreadable ones included,
// then revokes their refresh tokens at the IdP, and records one audit event
// for the whole action. Each end is durable on its own: if the broker or
// the store fails part way, the outbox finishes what was ended, and a
// repeat of the call ends the rest.
func (s *Service) RevokeUser(ctx context.Context, sub, actor string) (UserRevocation, error) {
	list, err := s.cfg.Store.ListBySubject(ctx, sub)
	if err != nil {
		return UserRevocation{}, fmt.Errorf("list sessions: %w", err)
	}
	why := EndReason{Actor: actor, Action: ActionUserRevoke, Reason: "user_revoke", RevokeAtIdP: true, Detail: "one of all the sessions of the user"}
	var ended []*Ending
	for _, sess := range list {
		e, err := s.cfg.Store.End(ctx, sess.ID, why)
		switch {
		case errors.Is(err, ErrNotFound):
			continue
		case err != nil:
			s.audit(ctx, AuditEvent{Actor: actor, Action: ActionUserRevoke, Subject: sub, Outcome: OutcomeError,
				Detail: fmt.Sprintf("stopped after ending %d sessions: the store failed", len(ended))})
			s.settleAll(ctx, ended)
			return UserRevocation{Revoked: len(ended)}, fmt.Errorf("end session: %w", err)
		}
		s.cfg.Metrics.Revocation(why.Reason)
		ended = append(ended, e)
	}
	res := UserRevocation{Revoked: len(ended), IdPFailures: s.settleAll(ctx, ended)}
	ev := AuditEvent{Actor: actor, Action: ActionUserRevoke, Subject: sub, Outcome: OutcomeOK,
		Detail: fmt.Sprintf("%d sessions ended", res.Revoked)}
	if res.IdPFailures > 0 {
		ev.Outcome = OutcomeError
		ev.Detail += fmt.Sprintf("; the identity provider failed to revoke %d refresh tokens (retried by the outbox)", res.IdPFailures)
	}
	s.audit(ctx, ev)
	s.log.InfoContext(ctx, "user sessions ended", "sub", sub, "actor", actor, "revoked", res.Revoked, "idp_failures", res.IdPFailures)
	return res, nil
}

// settleAll revokes the refresh tokens of endings at the IdP with bounded
// parallelism and records each ending whose revocation succeeded as done;
// the others stay for the outbox. Once one revocation failed, the IdP is
// not called for the rest, which are left to the outbox too: a revoke-all
// must not wait on a failing IdP once per session. The caller writes the
// audit event. It returns how many revocations failed or were left.
func (s *Service) settleAll(ctx context.Context, ended []*Ending) int {
	ctx = context.WithoutCancel(ctx)
	var (
		failures  atomic.Int64
		idpFailed atomic.Bool
		wg        sync.WaitGroup
		slots     = make(chan struct{}, idpRevokeParallelism)
	)
	for _, e := range ended {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			if !e.Session.Unreadable {
				if idpFailed.Load() {
					failures.Add(1)
					return
				}
				rctx, cancel := context.WithTimeout(ctx, inlineRevokeWait)
				_, err := s.revokeAt(rctx, e.Session.Tokens.RefreshToken)
				cancel()
				if err != nil {
					s.log.Warn("revocation at the identity provider failed; the outbox retries it", "session_id", e.Session.ID, "error", err)
					idpFailed.Store(true)
					failures.Add(1)
					return
				}
			}
			if err := s.cfg.Store.CompleteEnd(ctx, e.Session.ID); err != nil {
				s.log.Warn("recording a finished end failed; the outbox will finish it again", "session_id", e.Session.ID, "error", err)
			}
		})
	}
	wg.Wait()
	return int(failures.Load())
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

// AuditPage is one page of an audit search.
type AuditPage struct {
	Events []AuditEvent
	// Next is the cursor of the following page; "" on the last one.
	Next string
}

// SearchAudit returns a page of the audit events q selects, newest first;
// see AuditLog.Search for what a page holds.
func (s *Service) SearchAudit(ctx context.Context, q AuditQuery) (AuditPage, error) {
	if s.cfg.Audit == nil {
		return AuditPage{}, nil
	}
	if q.Limit < 1 {
		q.Limit = 1
	}
	events, next, err := s.cfg.Audit.Search(ctx, q)
	if err != nil {
		return AuditPage{}, fmt.Errorf("search audit events: %w", err)
	}
	return AuditPage{Events: events, Next: next}, nil
}

// SessionQuery selects sessions for the security team's search. With
// neither Subject nor SessionID it selects every live session.
type SessionQuery struct {
	Subject   string
	SessionID string
	// ClientIP, when set, keeps the sessions opened from this client
	// address, or from an address of this prefix ("203.0.113.0/24"). A
	// value that is neither selects nothing.
	ClientIP string
	// After is the cursor of the previous page's Next; "" starts at the
	// newest.
	After string
	// Limit is at least 1.
	Limit int
}

// SessionPage is one page of a session search, in SessionOrder.
type SessionPage struct {
	Sessions []*Session
	// Next is the cursor of the following page; "" on the last one.
	Next string
}

// maxSessionCursorLen bounds a session cursor: a millisecond time and a
// session id.
const maxSessionCursorLen = 64

// sessionCursor is a SessionPosition as an opaque cursor,
// "<Unix ms>.<session id>"; "" for the zero position.
func sessionCursor(p SessionPosition) string {
	if p.IsZero() {
		return ""
	}
	return strconv.FormatInt(p.AbsoluteExpiry.UnixMilli(), 10) + "." + p.ID
}

// parseSessionCursor reads a cursor sessionCursor wrote; ErrBadCursor for
// anything else.
func parseSessionCursor(c string) (SessionPosition, error) {
	if c == "" {
		return SessionPosition{}, nil
	}
	if len(c) > maxSessionCursorLen {
		return SessionPosition{}, ErrBadCursor
	}
	ms, id, ok := strings.Cut(c, ".")
	n, err := strconv.ParseInt(ms, 10, 64)
	if !ok || err != nil || n < 0 || !ValidSessionID(id) {
		return SessionPosition{}, ErrBadCursor
	}
	return SessionPosition{AbsoluteExpiry: time.UnixMilli(n).UTC(), ID: id}, nil
}

// SearchSessions returns a page of the live sessions q selects, in
// SessionOrder (newest first while BROKER_SESSION_MAX_LIFETIME is
// unchanged), unreadable records included and flagged. A malformed cursor
// is ErrBadCursor. A page may hold fewer than q.Limit sessions while Next
// says more may follow.
func (s *Service) SearchSessions(ctx context.Context, q SessionQuery) (SessionPage, error) {
	after, err := parseSessionCursor(q.After)
	if err != nil {
		return SessionPage{}, err
	}
	if q.Limit < 1 {
		q.Limit = 1
	}
	var keep func(*Session) bool
	if q.ClientIP != "" {
		if keep = clientIPMatcher(q.ClientIP); keep == nil {
			return SessionPage{}, nil
		}
	}
	if keep != nil && q.SessionID == "" && q.Subject == "" {
		return s.searchRecentByIP(ctx, after, q.Limit, keep)
	}
	page, err := s.searchSessions(ctx, q, after)
	if keep != nil {
		page.Sessions = slices.DeleteFunc(page.Sessions, func(x *Session) bool { return !keep(x) })
	}
	return page, err
}

// maxIPSearchRounds bounds the store reads of one page of a search by
// client address: each reads one page of the most recent sessions.
const maxIPSearchRounds = 8

// searchRecentByIP walks the most recent sessions, keeping those keep
// selects, until it has limit of them or has made maxIPSearchRounds reads;
// a short page then says where to go on.
func (s *Service) searchRecentByIP(ctx context.Context, after SessionPosition, limit int, keep func(*Session) bool) (SessionPage, error) {
	var out []*Session
	for range maxIPSearchRounds {
		page, next, err := s.cfg.Store.ListRecent(ctx, after, limit)
		if err != nil {
			return SessionPage{}, fmt.Errorf("list recent sessions: %w", err)
		}
		for _, sess := range page {
			if keep(sess) {
				out = append(out, sess)
				if len(out) == limit {
					return SessionPage{Sessions: out, Next: sessionCursor(PositionOf(sess))}, nil
				}
			}
		}
		if next.IsZero() {
			return SessionPage{Sessions: out}, nil
		}
		after = next
	}
	return SessionPage{Sessions: out, Next: sessionCursor(after)}, nil
}

// clientIPMatcher returns a test of a session's client address against an
// address or a prefix; nil when ip is neither.
func clientIPMatcher(ip string) func(*Session) bool {
	if p, err := netip.ParsePrefix(ip); err == nil {
		p = p.Masked()
		return func(sess *Session) bool {
			a, err := netip.ParseAddr(sess.IP)
			return err == nil && p.Contains(a.Unmap())
		}
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return nil
	}
	a = a.Unmap()
	return func(sess *Session) bool {
		b, err := netip.ParseAddr(sess.IP)
		return err == nil && b.Unmap() == a
	}
}

// searchSessions is SearchSessions by session id, by subject or over all
// sessions.
func (s *Service) searchSessions(ctx context.Context, q SessionQuery, after SessionPosition) (SessionPage, error) {
	switch {
	case q.SessionID != "":
		sess, err := s.Session(ctx, q.SessionID)
		switch {
		case errors.Is(err, ErrNotFound):
			return SessionPage{}, nil
		case err != nil:
			return SessionPage{}, err
		case q.Subject != "" && sess.Subject != q.Subject,
			!after.IsZero() && SessionOrder(PositionOf(sess), after) <= 0:
			return SessionPage{}, nil
		}
		return SessionPage{Sessions: []*Session{sess}}, nil
	case q.Subject != "":
		all, err := s.UserSessions(ctx, q.Subject)
		if err != nil {
			return SessionPage{}, err
		}
		slices.SortFunc(all, func(a, b *Session) int { return SessionOrder(PositionOf(a), PositionOf(b)) })
		if !after.IsZero() {
			all = slices.DeleteFunc(all, func(x *Session) bool { return SessionOrder(PositionOf(x), after) <= 0 })
		}
		if len(all) <= q.Limit {
			return SessionPage{Sessions: all}, nil
		}
		page := all[:q.Limit]
		return SessionPage{Sessions: page, Next: sessionCursor(PositionOf(page[len(page)-1]))}, nil
	}
	page, next, err := s.cfg.Store.ListRecent(ctx, after, q.Limit)
	if err != nil {
		return SessionPage{}, fmt.Errorf("list recent sessions: %w", err)
	}
	return SessionPage{Sessions: page, Next: sessionCursor(next)}, nil
}

// AdminDenied records a refused admin call. detail must not hold the
// presented credential.
func (s *Service) AdminDenied(ctx context.Context, detail string) {
	// The request the probe came from is named by the context (see
	// WithRequest).
	s.audit(ctx, AuditEvent{Actor: "unknown", Action: ActionAdminDenied, Outcome: OutcomeError, Detail: detail})
}
