package sessions

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"sync"
	"time"
)

// openCacheSize bounds the opened values kept per process: the claims and
// the tokens of about as many sessions again.
const openCacheSize = 20000

// openCache keeps the decrypted, decoded claims and tokens of recently read
// sessions, each valid only for the exact ciphertext it came from and the
// exact additional data it was opened with. Get still reads Redis on every
// call, so a revoked or refreshed session is seen at once; the cache only
// saves decrypting and JSON-decoding the same bytes again, which is most of
// the hot path's CPU. Equal authenticated ciphertext under equal additional
// data always opens to equal plaintext, so a hit cannot be stale; keying on
// the additional data as well means that a record whose clear fields were
// edited misses the cache and fails to open, as it must.
//
// Cached values are shared: callers must treat Session.Claims as read-only.
type openCache struct {
	mu      sync.Mutex
	entries map[openKey]openEntry
	// swept is when put last dropped the entries idle for openIdle, so
	// that plaintext leaves memory with or without the session cache.
	swept time.Time
}

// openIdle is how long an opened value is kept without use when nothing
// sweeps sooner (the session cache sweeps at twice its TTL).
const openIdle = 2 * time.Minute

type openKey struct{ id, field string }

type openEntry struct {
	blob  string
	aad   []byte
	value any
	// sum is the SHA-1 of blob in hex, as Lua's redis.sha1hex gives it:
	// how a read asks Redis to leave out a blob this process already has
	// (see getScript). SHA-1 only names the bytes here; what they are
	// worth is still decided by opening them under their additional data.
	sum string
	// used is when the entry was last put or hit, for sweep.
	used time.Time
}

func newOpenCache() *openCache {
	return &openCache{entries: make(map[openKey]openEntry)}
}

func (c *openCache) get(id, field, blob string, aad []byte) (any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := openKey{id, field}
	e, ok := c.entries[k]
	if !ok || e.blob != blob || !bytes.Equal(e.aad, aad) {
		return nil, false
	}
	e.used = time.Now()
	c.entries[k] = e
	return e.value, true
}

func (c *openCache) put(id, field, blob string, aad []byte, value any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := openKey{id, field}
	if now := time.Now(); now.Sub(c.swept) > openIdle/2 {
		c.swept = now
		c.sweepLocked(now.Add(-openIdle))
	}
	if _, ok := c.entries[k]; !ok && len(c.entries) >= openCacheSize {
		// Evict an arbitrary entry: map iteration order is random enough
		// for a cache whose misses cost microseconds.
		for old := range c.entries {
			delete(c.entries, old)
			break
		}
	}
	sum := sha1.Sum([]byte(blob))
	c.entries[k] = openEntry{blob: blob, aad: bytes.Clone(aad), value: value, sum: hex.EncodeToString(sum[:]), used: time.Now()}
}

// sweep forgets what was not used for idle, so that the plaintext of
// sessions no longer in use leaves memory.
func (c *openCache) sweep(idle time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweepLocked(time.Now().Add(-idle))
}

func (c *openCache) sweepLocked(cutoff time.Time) {
	for k, e := range c.entries {
		if e.used.Before(cutoff) {
			delete(c.entries, k)
		}
	}
}

// known returns the blob of a field of id last opened, and its SHA-1; ok
// false when there is none.
func (c *openCache) known(id, field string) (blob, sum string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[openKey{id, field}]
	return e.blob, e.sum, ok
}

// drop forgets what was opened of a session that ended.
func (c *openCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, openKey{id, fieldClaims})
	delete(c.entries, openKey{id, fieldTok})
}
