package handlers

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/mobile-token-broker/broker/broker"
)

// RateLimiter counts events per key across every replica.
type RateLimiter interface {
	// Allow records one event under key against a budget of n per period
	// and reports whether it fits, and if not, when to retry.
	Allow(ctx context.Context, key string, n int, per time.Duration) (ok bool, retryAfter time.Duration, err error)
}

// Rate is a budget of N events per Per; a zero N turns the limit off.
type Rate struct {
	N   int
	Per time.Duration
}

// limit reports whether one more event under key fits rate. A limiter that
// fails lets the request through: the store outage is answered where the
// store is needed, and a limiter must not take the service down with it.
func (s *Server) limit(c echo.Context, key string, rate Rate) error {
	if rate.N <= 0 || s.cfg.RateLimiter == nil {
		return nil
	}
	r := c.Request()
	ok, retry, err := s.cfg.RateLimiter.Allow(r.Context(), key+":"+clientKey(r, s.cfg.TrustedProxies, s.cfg.ClientIPv6Prefix), rate.N, rate.Per)
	if err != nil {
		s.log.WarnContext(r.Context(), "rate limiter unavailable, letting the request through", "limit", key, "error", err)
		return nil
	}
	if !ok {
		return &rateLimitedError{retryAfterSeconds: int(math.Ceil(retry.Seconds()))}
	}
	return nil
}

// limitExchange caps POST /v1/sessions per client IP.
func (s *Server) limitExchange(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if err := s.limit(c, "exchange", s.cfg.ExchangeRate); err != nil {
			return err
		}
		return next(c)
	}
}

// limitBackchannel caps POST /v1/backchannel-logout per client IP, before
// the body is read: the endpoint needs no credentials, and every logout
// token costs a signature check, a valid one store round trips.
func (s *Server) limitBackchannel(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if err := s.limit(c, "backchannel", s.cfg.BackchannelRate); err != nil {
			return err
		}
		return next(c)
	}
}

// limitInvalidHandles counts requests whose handle turned out unknown, ended
// or malformed, per client IP, and answers 429 instead of 401 once a client
// is over budget. Requests with a live handle never touch the limiter, so
// the proxy's hot path stays at one store round trip.
func (s *Server) limitInvalidHandles(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		err := next(c)
		var missing *missingCredentialsError
		code := broker.ErrorCode(err)
		if err == nil || (code != broker.CodeInvalidToken && code != broker.CodeInvalidDPoPProof) || errors.As(err, &missing) {
			return err
		}
		if lerr := s.limit(c, "invalid", s.cfg.InvalidHandleRate); lerr != nil {
			return lerr
		}
		return err
	}
}
