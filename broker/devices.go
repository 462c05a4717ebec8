package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// "My devices": a user, authenticated by one of their sessions, lists and
// ends their own sessions. Every end is a logout of that session: audited
// with actor "user" and its refresh token revoked at the IdP. Records that
// cannot be read work for nobody and are left to the operator (the admin
// API, broker rekey --remove-unreadable).

// OwnSessions authenticates cred and returns its session and the live
// sessions of the same user and client, newest first, the caller's
// included.
func (s *Service) OwnSessions(ctx context.Context, cred Credential) (current *Session, all []*Session, err error) {
	current, err = s.Authenticate(ctx, cred)
	if err != nil {
		return nil, nil, err
	}
	all, err = s.ownSessions(ctx, current)
	if err != nil {
		return nil, nil, err
	}
	return current, all, nil
}

func (s *Service) ownSessions(ctx context.Context, current *Session) ([]*Session, error) {
	list, err := s.UserSessions(ctx, current.Subject)
	if err != nil {
		return nil, err
	}
	own := list[:0]
	for _, sess := range list {
		if !sess.Unreadable && sess.ClientID == current.ClientID {
			own = append(own, sess)
		}
	}
	return own, nil
}

// EndOwnSession ends the session id of the user of cred (the caller's own
// included) and revokes its refresh token at the IdP. ErrNotFound when id
// is not a live session of that user: another user's session is
// indistinguishable from one that does not exist. A session of the user's
// that already ended within EndRetention is not an error, so that a
// repeated call answers as the first did.
func (s *Service) EndOwnSession(ctx context.Context, cred Credential, id string) error {
	current, err := s.Authenticate(ctx, cred)
	if err != nil {
		return err
	}
	if !ValidSessionID(id) {
		return ErrNotFound
	}
	target, err := s.cfg.Store.Get(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return s.endedOwn(ctx, current, id)
	case errors.Is(err, ErrUnreadable):
		return ErrNotFound
	case err != nil:
		return fmt.Errorf("get session: %w", err)
	case target.Subject != current.Subject || target.ClientID != current.ClientID || target.Ended(s.cfg.Now()):
		return ErrNotFound
	}
	_, err = s.end(ctx, id, s.ownEnd(current))
	if errors.Is(err, ErrNotFound) {
		// Ended meanwhile, by another call.
		return s.endedOwn(ctx, current, id)
	}
	return err
}

// endedOwn answers an end of a session that is gone: one of the user's own
// that ended within EndRetention was ended as asked, as a repeated call
// after a lost reply expects; any other id is not found.
func (s *Service) endedOwn(ctx context.Context, current *Session, id string) error {
	e, err := s.ended(ctx, id)
	switch {
	case err != nil:
		return err
	case e == nil || e.Session == nil || e.Session.Unreadable || e.Session.Subject != current.Subject || e.Session.ClientID != current.ClientID:
		return ErrNotFound
	}
	return nil
}

// ownEnd is the reason of an end by the user from their session current.
func (s *Service) ownEnd(current *Session) EndReason {
	return EndReason{Actor: ActorUser, Action: ActionSessionRevoke, Reason: "logout", RevokeAtIdP: true,
		Detail: "signed out by the user from session " + current.ID}
}

// EndOtherSessions ends every live session of the user of cred but the
// caller's own, revokes their refresh tokens at the IdP and audits each
// end. It returns how many it ended. Each end is durable on its own: if
// the store fails part way, what was ended is finished and the error
// returned; a repeat ends the rest.
func (s *Service) EndOtherSessions(ctx context.Context, cred Credential) (int, error) {
	current, err := s.Authenticate(ctx, cred)
	if err != nil {
		return 0, err
	}
	list, err := s.ownSessions(ctx, current)
	if err != nil {
		return 0, err
	}
	why := s.ownEnd(current)
	var ended []*Ending
	var endErr error
	for _, sess := range list {
		if sess.ID == current.ID {
			continue
		}
		e, err := s.cfg.Store.End(ctx, sess.ID, why)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			endErr = fmt.Errorf("end session: %w", err)
			break
		}
		s.cfg.Metrics.Revocation(why.Reason)
		ended = append(ended, e)
	}
	// Each ending is finished as a logout is: revoked at the IdP and
	// audited, with bounded parallelism; what fails is the outbox's.
	fctx := context.WithoutCancel(ctx)
	var wg sync.WaitGroup
	slots := make(chan struct{}, idpRevokeParallelism)
	for _, e := range ended {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			s.finish(fctx, e, false)
		})
	}
	wg.Wait()
	s.log.InfoContext(ctx, "other sessions of the user ended", "session_id", current.ID, "sub", current.Subject, "revoked", len(ended))
	return len(ended), endErr
}
