package sessions

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

// Defaults of CacheOptions.
const (
	DefaultCacheEntries = 10000
	DefaultCacheBytes   = 64 << 20
	DefaultCacheTTL     = time.Minute
)

// CacheOptions bound the in-process session cache (see Store.Lookup).
type CacheOptions struct {
	// Disabled turns the cache off: every Lookup reads Redis.
	Disabled bool
	// MaxEntries bounds the sessions held; DefaultCacheEntries when zero.
	MaxEntries int
	// MaxBytes bounds their estimated size in memory (tokens, claims and
	// fixed fields); DefaultCacheBytes when zero.
	MaxBytes int64
	// TTL is how long an opened session is kept after it was read from
	// Redis, so that plaintext tokens do not stay in memory for sessions no
	// longer in use; DefaultCacheTTL when zero. Entries also leave when the
	// access token they hold expires. The opened blobs behind them (see
	// openCache) are forgotten after twice as long without use.
	TTL time.Duration
}

func (o CacheOptions) withDefaults() CacheOptions {
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultCacheEntries
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultCacheBytes
	}
	if o.TTL <= 0 {
		o.TTL = DefaultCacheTTL
	}
	return o
}

// sessionCache holds opened sessions for the request path. It is correct
// only together with an invalidation channel that calls invalidate for
// every change to a session key made anywhere, and flush whenever that
// channel may have missed one (see tracking.go): it is used only while
// the channel says it is live, and emptied on every transition.
//
// A read from Redis that races a change is the classic hazard of such a
// cache: the read is answered with the old record, the change's
// invalidation arrives and finds nothing to drop, and only then does the
// old record get stored. Fills are therefore tickets: a reader takes one
// before it sends its read, an invalidation of that id (or a flush) voids
// it, and a void ticket stores nothing. Redis sends the invalidation of a
// change after it executed the change, so a read it answered before the
// change was sent after the ticket was taken, and the invalidation voids
// it.
type sessionCache struct {
	opts CacheOptions
	// live is set while the invalidation channel delivers; Lookup and fills
	// consult it before taking the lock.
	live atomic.Bool

	mu      sync.RWMutex
	entries map[string]*cacheEntry
	bytes   int64
	// tickets are the outstanding fills by session id; epoch counts
	// flushes, so that a ticket taken before a flush is void after it.
	tickets map[string]uint64
	nextTic uint64
	epoch   uint64

	// Figures, read by Stats.
	hits, misses, invalidations, flushes, evictions atomic.Uint64
}

type cacheEntry struct {
	sess    *broker.Session // never modified once cached
	size    int64
	expires time.Time // on the monotonic clock
}

// ticket is a permission to store what a read returns.
type ticket struct {
	id     string
	serial uint64
	epoch  uint64
}

func newSessionCache(opts CacheOptions) *sessionCache {
	return &sessionCache{
		opts:    opts.withDefaults(),
		entries: make(map[string]*cacheEntry),
		tickets: make(map[string]uint64),
	}
}

// get returns a copy of the cached session, which the caller may modify.
func (c *sessionCache) get(id string) (*broker.Session, bool) {
	if !c.live.Load() {
		return nil, false
	}
	c.mu.RLock()
	e, ok := c.entries[id]
	c.mu.RUnlock()
	if !ok || time.Now().After(e.expires) {
		c.misses.Add(1)
		return nil, false
	}
	c.hits.Add(1)
	cp := *e.sess
	return &cp, true
}

// take hands out a ticket for a read of id, or reports false while the
// cache is not in use.
func (c *sessionCache) take(id string) (ticket, bool) {
	if !c.live.Load() {
		return ticket{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextTic++
	c.tickets[id] = c.nextTic
	return ticket{id: id, serial: c.nextTic, epoch: c.epoch}, true
}

// fill stores sess, read under t, unless t was voided meanwhile. sess must
// not be modified afterwards. now is the time on the store's clock, which
// the access token's expiry is counted on.
func (c *sessionCache) fill(t ticket, sess *broker.Session, now time.Time) {
	size := sessionSize(sess)
	keep := c.opts.TTL
	if exp := sess.Tokens.Expiry; !exp.IsZero() {
		keep = min(keep, exp.Sub(now))
	}
	if keep <= 0 {
		c.release(t)
		return
	}
	expires := time.Now().Add(keep)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tickets[t.id] != t.serial || c.epoch != t.epoch || !c.live.Load() {
		return
	}
	delete(c.tickets, t.id)
	if size > c.opts.MaxBytes {
		return
	}
	if old, ok := c.entries[t.id]; ok {
		c.bytes -= old.size
		delete(c.entries, t.id)
	}
	for len(c.entries) >= c.opts.MaxEntries || c.bytes+size > c.opts.MaxBytes {
		// Evict an arbitrary entry: map iteration order is random, and a
		// miss costs one read of Redis.
		for id, e := range c.entries {
			c.bytes -= e.size
			delete(c.entries, id)
			c.evictions.Add(1)
			break
		}
	}
	c.entries[t.id] = &cacheEntry{sess: sess, size: size, expires: expires}
	c.bytes += size
}

// release gives back a ticket whose read stored nothing.
func (c *sessionCache) release(t ticket) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tickets[t.id] == t.serial {
		delete(c.tickets, t.id)
	}
}

// invalidate drops id and voids the tickets of reads of it in flight.
func (c *sessionCache) invalidate(id string) {
	c.invalidations.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[id]; ok {
		c.bytes -= e.size
		delete(c.entries, id)
	}
	delete(c.tickets, id)
}

// flush empties the cache and voids every ticket; with live false the
// cache also stops being used until setLive(true).
func (c *sessionCache) flush(live bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !live {
		// Before the entries go: a Lookup that reads live after this
		// finds the cache off rather than a last stale entry.
		c.live.Store(false)
	}
	c.flushes.Add(1)
	c.entries = make(map[string]*cacheEntry)
	c.tickets = make(map[string]uint64)
	c.bytes = 0
	c.epoch++
	if live {
		c.live.Store(true)
	}
}

// sweep drops the entries whose time is up, so that their tokens leave
// memory even when nothing asks for them.
func (c *sessionCache) sweep() {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, e := range c.entries {
		if now.After(e.expires) {
			c.bytes -= e.size
			delete(c.entries, id)
		}
	}
}

// CacheStats are the session cache's figures since the Store was made.
type CacheStats struct {
	// Live reports whether the cache is in use: its invalidation channel
	// delivers.
	Live bool
	// Entries and Bytes are its current size (Bytes estimated).
	Entries int
	Bytes   int64
	// Hits and Misses count lookups made while it was in use.
	Hits, Misses uint64
	// Invalidations counts sessions dropped because they changed in Redis;
	// Flushes counts times it was emptied (the channel went down or came
	// up, or Redis was flushed); Evictions counts sessions dropped for
	// room.
	Invalidations, Flushes, Evictions uint64
}

func (c *sessionCache) stats() CacheStats {
	c.mu.RLock()
	n, b := len(c.entries), c.bytes
	c.mu.RUnlock()
	return CacheStats{
		Live:          c.live.Load(),
		Entries:       n,
		Bytes:         b,
		Hits:          c.hits.Load(),
		Misses:        c.misses.Load(),
		Invalidations: c.invalidations.Load(),
		Flushes:       c.flushes.Load(),
		Evictions:     c.evictions.Load(),
	}
}

// sessionSize estimates the memory a cached session holds: its strings
// and a fixed amount for the struct, the entry and the map slot. The claims
// are shared with the open cache and counted by the size of their JSON
// keys and string values.
func sessionSize(s *broker.Session) int64 {
	const fixed = 512
	n := fixed + len(s.ID) + len(s.SecretHash) + len(s.Subject) + len(s.SID) + len(s.ClientID) +
		len(s.IP) + len(s.UserAgent) +
		len(s.Tokens.AccessToken) + len(s.Tokens.RefreshToken) + len(s.Tokens.IDToken) + len(s.Tokens.TokenType)
	for k, v := range s.Claims {
		n += len(k) + 16
		if str, ok := v.(string); ok {
			n += len(str)
		}
	}
	return int64(n)
}
