package sessions

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// storeError turns an error of a Redis call into one the broker can act on:
// a missing key is broker.ErrNotFound, anything that means "Redis cannot
// answer right now" is broker.ErrStoreUnavailable, and the rest stays an
// internal error. op names the operation for the logs.
//
// A call whose own context ended is reported as that context's error: the
// caller gave up, Redis did not fail, and counting it as an outage would
// page someone for a client that hung up.
func storeError(ctx context.Context, op string, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", op, ctx.Err())
	case errors.Is(err, redis.Nil):
		return fmt.Errorf("%s: %w", op, broker.ErrNotFound)
	case unavailable(err):
		return fmt.Errorf("%s: %w: %w", op, broker.ErrStoreUnavailable, err)
	default:
		return fmt.Errorf("%s: %w", op, err)
	}
}

// unavailable reports whether err says that Redis could not be reached or
// could not serve the command for now, so that the caller may retry later
// without anything having been lost.
func unavailable(err error) bool {
	var netErr net.Error
	switch {
	case errors.As(err, &netErr),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, redis.ErrClosed),
		errors.Is(err, redis.ErrPoolTimeout),
		errors.Is(err, redis.ErrPoolExhausted):
		return true
	case redis.IsLoadingError(err),
		redis.IsClusterDownError(err),
		redis.IsTryAgainError(err),
		redis.IsMasterDownError(err),
		redis.IsMaxClientsError(err),
		// A replica promoted away from under us, or a primary that lost its
		// replicas, answers writes like this until the failover settles.
		redis.IsReadOnlyError(err),
		redis.IsNoReplicasError(err),
		// Out of memory and a busy script clear up without the broker's help.
		redis.IsOOMError(err),
		redis.HasErrorPrefix(err, "BUSY"),
		// Rotated credentials: the store is unusable until the operator acts,
		// which for a client is the same as unreachable.
		redis.IsAuthError(err):
		return true
	}
	return false
}
