package sessions

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

// errLeaseLost is returned by Extend when the lease expired and may have
// been taken by another holder.
var errLeaseLost = errors.New("lease lost")

// TryLock takes the refresh lease of a session: a key beside the session's,
// in its hash slot, holding a random token that only this holder knows.
func (s *Store) TryLock(ctx context.Context, sessionID string, ttl time.Duration) (broker.Lease, bool, error) {
	if !broker.ValidSessionID(sessionID) {
		return nil, false, errors.New("lock session: invalid session id")
	}
	if ttl < time.Millisecond {
		return nil, false, fmt.Errorf("lock session %s: ttl %v is below a millisecond", sessionID, ttl)
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, false, fmt.Errorf("lock session %s: %w", sessionID, err)
	}
	l := &lease{store: s, sessionID: sessionID, token: base64.RawURLEncoding.EncodeToString(raw[:]), ttl: ttl}
	ok, err := s.client.SetNX(ctx, lockKey(sessionID), l.token, ttl).Result()
	if err != nil {
		return nil, false, storeError("lock session "+sessionID, err)
	}
	if !ok {
		return nil, false, nil
	}
	return l, true, nil
}

// lease is a held refresh lease. Its token tells this holder's lease from a
// later holder's after the key expired and was taken again.
type lease struct {
	store     *Store
	sessionID string
	token     string
	ttl       time.Duration
}

func (l *lease) Extend(ctx context.Context) error {
	held, err := extendScript.Run(ctx, l.store.client, []string{lockKey(l.sessionID)}, l.token, l.ttl.Milliseconds()).Int()
	if err != nil {
		return storeError("extend lease of session "+l.sessionID, err)
	}
	if held == 0 {
		return fmt.Errorf("extend lease of session %s: %w", l.sessionID, errLeaseLost)
	}
	return nil
}

func (l *lease) Release(ctx context.Context) error {
	if err := releaseScript.Run(ctx, l.store.client, []string{lockKey(l.sessionID)}, l.token).Err(); err != nil {
		return storeError("release lease of session "+l.sessionID, err)
	}
	return nil
}
