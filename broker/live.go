package broker

import "context"

// SessionLive reports whether the session with the given public id has not
// ended: nil while it lives; ErrInvalidToken once it ended on any replica
// (logout, revocation, back-channel logout, a refresh token the IdP
// refused, its idle timeout or maximum lifetime), or when its record cannot
// be read; the store's errors when it cannot tell. It reads the store, as
// Authenticate does, but takes no handle, records no use and refreshes
// nothing: it is how a long use of a session that began with a handle, such
// as a proxied WebSocket, notices that the session ended.
func (s *Service) SessionLive(ctx context.Context, id string) error {
	if !ValidSessionID(id) {
		return ErrInvalidToken
	}
	sess, err := s.get(ctx, id)
	if err != nil {
		return err
	}
	if sess.Ended(s.cfg.Now()) {
		return ErrInvalidToken
	}
	return nil
}
