package sessions

import (
	"context"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// RateLimiter counts events per key in Redis with the generic cell rate
// algorithm (GCRA) of go-redis/redis_rate, so every replica shares one
// budget per key. Each key is one small string under "rate:broker:", which
// expires once its budget has refilled.
type RateLimiter struct {
	limiter *redis_rate.Limiter
}

// NewRateLimiter returns a limiter on client.
func NewRateLimiter(client redis.UniversalClient) *RateLimiter {
	return &RateLimiter{limiter: redis_rate.NewLimiter(client)}
}

// Allow records one event under key against a budget of n events per period
// (bursts up to n) and reports whether it fits, and if not, when to retry.
func (l *RateLimiter) Allow(ctx context.Context, key string, n int, per time.Duration) (bool, time.Duration, error) {
	res, err := l.limiter.Allow(ctx, "broker:"+key, redis_rate.Limit{Rate: n, Burst: n, Period: per})
	if err != nil {
		return false, 0, storeError(ctx, "rate limit", err)
	}
	return res.Allowed > 0, res.RetryAfter, nil
}
