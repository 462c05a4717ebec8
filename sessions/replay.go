package sessions

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"
)

// FirstUse records id as used for ttl, so that of any number of replicas
// presenting the same id, exactly one sees true. Each call writes a value
// of its own, so that a repeat of the command after its reply was lost
// recognises its own record and still reports the first use.
func (s *Store) FirstUse(ctx context.Context, id string, ttl time.Duration) (bool, error) {
	if ttl < time.Millisecond {
		return false, fmt.Errorf("record one-time token: ttl %v is below a millisecond", ttl)
	}
	first, err := acquireScript.Run(ctx, s.client, []string{replayKey(id)}, rand.Text(), ttl.Milliseconds()).Bool()
	if err != nil {
		return false, storeError(ctx, "record one-time token", err)
	}
	return first, nil
}

// Used reports whether id was recorded by FirstUse and its record lasts.
func (s *Store) Used(ctx context.Context, id string) (bool, error) {
	n, err := s.client.Exists(ctx, replayKey(id)).Result()
	if err != nil {
		return false, storeError(ctx, "look up one-time token", err)
	}
	return n > 0, nil
}
