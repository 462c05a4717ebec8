package sessions

import "sync"

// openCacheSize bounds the opened blobs kept per process.
const openCacheSize = 10000

// openCache keeps the decrypted, decoded tok field of recently read sessions,
// keyed by session id and valid only for the exact ciphertext it came from.
// Get still reads Redis on every call, so a revoked or refreshed session is
// seen at once; the cache only saves decrypting and JSON-decoding the same
// bytes again, which is most of the hot path's CPU. Equal authenticated
// ciphertext always opens to equal plaintext, so a hit cannot be stale.
//
// Cached values are shared: callers must treat Session.Claims as read-only.
type openCache struct {
	mu      sync.Mutex
	entries map[string]openEntry
}

type openEntry struct {
	blob string
	p    *sealed
}

func newOpenCache() *openCache {
	return &openCache{entries: make(map[string]openEntry)}
}

func (c *openCache) get(id, blob string) (*sealed, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok || e.blob != blob {
		return nil, false
	}
	return e.p, true
}

func (c *openCache) put(id, blob string, p *sealed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[id]; !ok && len(c.entries) >= openCacheSize {
		// Evict an arbitrary entry: map iteration order is random enough
		// for a cache whose misses cost microseconds.
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[id] = openEntry{blob: blob, p: p}
}

func (c *openCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, id)
}
