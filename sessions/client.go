package sessions

import (
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"time"

	"github.com/redis/go-redis/v9"
)

// Client defaults for a proxy on the request path: fail fast when Redis is
// away rather than hold every request, and keep enough connections for many
// concurrent requests. A URL query parameter (dial_timeout, pool_size, ...)
// overrides each of them.
const (
	defaultDialTimeout  = 2 * time.Second
	defaultReadTimeout  = 2 * time.Second
	defaultWriteTimeout = 2 * time.Second
	defaultMaxRetries   = 1
	// go-redis retries a failed dial 5 times 100 ms apart by default, which
	// makes an outage take half a second per command to report.
	defaultDialerRetries = 2
)

// NewClient returns a Redis client for a redis:// or rediss:// (TLS) URL, with
// optional ACL user and password and a database number:
//
//	redis://[user:password@]host[:port][/db][?option=value]
//
// Errors never quote the URL, since it may hold the password.
func NewClient(rawURL string) (redis.UniversalClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return nil, fmt.Errorf("redis url: %w", err)
	}
	// Sentinel and Cluster URLs get their own schemes and cases here.
	switch u.Scheme {
	case "redis", "rediss":
		opts, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis url: %w", err)
		}
		applyDefaults(opts)
		return redis.NewClient(opts), nil
	default:
		return nil, fmt.Errorf("redis url: scheme %q is not supported (want redis or rediss)", u.Scheme)
	}
}

// applyDefaults fills in what the URL left unset.
func applyDefaults(o *redis.Options) {
	if o.DialTimeout == 0 {
		o.DialTimeout = defaultDialTimeout
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = defaultReadTimeout
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = defaultWriteTimeout
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = defaultMaxRetries
	}
	if o.PoolSize == 0 {
		o.PoolSize = 10 * runtime.GOMAXPROCS(0)
	}
	if o.DialerRetries == 0 {
		o.DialerRetries = defaultDialerRetries
	}
	// A request's deadline bounds its Redis calls too.
	o.ContextTimeoutEnabled = true
}
