package main

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mobile-token-broker/broker/sessions"
)

// BenchmarkSessionCacheMemory gives the memory a replica spends per session
// it holds in its session cache, for sessions with realistic tokens and
// claims (scaleSession: a 1.2 KB access token, a 64-character refresh
// token, a 1 KB ID token, 14 claims):
//
//	go test -run='^$' -bench='^BenchmarkSessionCacheMemory$' -benchtime=1x ./cmd/broker/
//
// It stores cacheBenchSessions sessions in Redis, then looks each up once
// through a fresh Store with the session cache on, and once through a
// fresh Store with it off, and reports:
//   - est-B/session: the cache's own estimate, CacheStats().Bytes/Entries,
//     which its byte bound (BROKER_SESSION_CACHE_MAX_BYTES) is counted in;
//   - heap-B/session: the live heap the Store with the cache kept per
//     session looked up (runtime.ReadMemStats after a GC, before and after);
//   - heap-nocache-B/session: the same without the cache: what the Store
//     keeps anyway, the decrypted values of its open cache;
//   - cache-heap-B/session: the difference, what the session cache itself
//     adds. Its entries share the token strings with the open cache, so
//     this is below the estimate, which counts the tokens in full as they
//     are once the open cache has dropped them.
//
// Redis's side, used_memory per stored session, is BenchmarkSessionMemory's
// used-B.
func BenchmarkSessionCacheMemory(b *testing.B) {
	ctx := context.Background()
	rdb := scaleRedis(b)
	keys := scaleKeyring(b)
	writer := sessions.New(rdb, keys, sessions.Options{})
	ids := make([]string, cacheBenchSessions+1)
	for i := range ids {
		s := scaleSession(b, fmt.Sprintf("auth0|%024d", i), scaleB64(b, 22), time.Now())
		if err := writer.Create(ctx, s); err != nil {
			b.Fatal(err)
		}
		ids[i] = s.ID
	}

	var with, without cacheMemory
	for b.Loop() {
		with = measureCacheMemory(b, rdb, keys, ids, &sessions.CacheOptions{})
		without = measureCacheMemory(b, rdb, keys, ids, nil)
	}
	if with.stats.Entries != len(ids) {
		b.Fatalf("the cache holds %d sessions, want %d: %+v", with.stats.Entries, len(ids), with.stats)
	}
	b.ReportMetric(float64(with.stats.Bytes)/float64(with.stats.Entries), "est-B/session")
	b.ReportMetric(with.heapPerSession, "heap-B/session")
	b.ReportMetric(without.heapPerSession, "heap-nocache-B/session")
	b.ReportMetric(with.heapPerSession-without.heapPerSession, "cache-heap-B/session")
	b.ReportMetric(0, "ns/op")
}

// cacheBenchSessions is how many sessions BenchmarkSessionCacheMemory
// caches: well within the cache's default bounds.
const cacheBenchSessions = 5000

type cacheMemory struct {
	heapPerSession float64
	stats          sessions.CacheStats
}

// measureCacheMemory looks up every session of ids but the first through a
// fresh Store with cache options opts (nil: no cache) and returns the live
// heap it grew by per session. The first id is looked up before the
// measure, so that the Store's connections and lazily made structures are
// not counted.
func measureCacheMemory(b *testing.B, rdb *redis.Client, keys *sessions.Keyring, ids []string, opts *sessions.CacheOptions) cacheMemory {
	b.Helper()
	ctx := context.Background()
	st := sessions.New(rdb, keys, sessions.Options{Cache: opts})
	defer st.Close()
	if opts != nil {
		deadline := time.Now().Add(10 * time.Second)
		for !st.CacheStats().Live {
			if time.Now().After(deadline) {
				b.Fatal("the session cache's invalidation channel did not come up within 10s")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if _, err := st.Lookup(ctx, ids[0]); err != nil {
		b.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, id := range ids[1:] {
		if _, err := st.Lookup(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	m := cacheMemory{
		heapPerSession: (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / float64(len(ids)-1),
		stats:          st.CacheStats(),
	}
	runtime.KeepAlive(st)
	return m
}
