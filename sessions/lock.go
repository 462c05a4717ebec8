package sessions

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

// TryLock takes the refresh lease of a session: a key beside the session's,
// in its hash slot, holding a random token that only this holder knows. It
// is a script rather than SET NX so that a repeat of the command, after its
// reply was lost, finds its own token and reports the lease taken instead
// of held by someone else.
func (s *Store) TryLock(ctx context.Context, sessionID string, ttl time.Duration) (broker.Lease, bool, error) {
	if !broker.ValidSessionID(sessionID) {
		return nil, false, errors.New("lock session: invalid session id")
	}
	if ttl < time.Millisecond {
		return nil, false, fmt.Errorf("lock session %s: ttl %v is below a millisecond", sessionID, ttl)
	}
	l := &lease{store: s, sessionID: sessionID, token: rand.Text(), ttl: ttl}
	ok, err := acquireScript.Run(ctx, s.client, []string{lockKey(sessionID)}, l.token, ttl.Milliseconds()).Bool()
	if err != nil {
		return nil, false, storeError(ctx, "lock session "+sessionID, err)
	}
	if !ok {
		return nil, false, nil
	}
	return l, true, nil
}

// lease is a held refresh lease. Its token tells this holder's lease from a
// later holder's after the key expired and was taken again; UpdateTokens
// checks it in the same script that writes.
type lease struct {
	store     *Store
	sessionID string
	token     string
	ttl       time.Duration
}

func (l *lease) Extend(ctx context.Context) error {
	held, err := extendScript.Run(ctx, l.store.client, []string{lockKey(l.sessionID)}, l.token, l.ttl.Milliseconds()).Int()
	if err != nil {
		return storeError(ctx, "extend lease of session "+l.sessionID, err)
	}
	if held == 0 {
		return fmt.Errorf("extend lease of session %s: %w", l.sessionID, broker.ErrLeaseLost)
	}
	return nil
}

func (l *lease) Release(ctx context.Context) error {
	if err := releaseScript.Run(ctx, l.store.client, []string{lockKey(l.sessionID)}, l.token).Err(); err != nil {
		return storeError(ctx, "release lease of session "+l.sessionID, err)
	}
	return nil
}
