package sessions

import (
	"context"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

var _ broker.ReplayGuard = (*Store)(nil)

// FirstUse records id as used for ttl with SET NX, so that of any number of
// replicas presenting the same id, exactly one sees true.
func (s *Store) FirstUse(ctx context.Context, id string, ttl time.Duration) (bool, error) {
	ok, err := s.client.SetNX(ctx, replayKey(id), "1", ttl).Result()
	if err != nil {
		return false, storeError("record one-time token", err)
	}
	return ok, nil
}
