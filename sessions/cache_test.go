package sessions

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/mobile-token-broker/broker/internal/redistest"
)

// runCacheSuite checks the session cache on one kind of Redis deployment:
// a replica that serves a session from its cache sees every change made
// to it elsewhere, by every path, within the time the news takes to come.
func runCacheSuite(t *testing.T, newStore func(t *testing.T) *Store) {
	t.Run("WarmLookupNoRoundTrip", func(t *testing.T) { testCacheWarm(t, newStore(t)) })
	t.Run("InvalidatedByEveryPath", func(t *testing.T) { testCacheInvalidated(t, newStore(t)) })
	t.Run("ConcurrentChanges", func(t *testing.T) { testCacheConcurrentChanges(t, newStore(t)) })
}

// cachedReplica returns a store on st's Redis with the cache on, as
// another replica of the broker, and waits until its cache is in use.
func cachedReplica(t *testing.T, st *Store, opts CacheOptions) *Store {
	t.Helper()
	c := New(st.client, st.keys, Options{Now: st.now, Cache: &opts})
	t.Cleanup(c.Close)
	awaitLive(t, c, true)
	return c
}

// proxiedReplica returns a store with the cache on that reaches writer's
// Redis through proxy, as another replica behind a network that faults
// can be injected into, and waits until its cache is in use.
func proxiedReplica(t *testing.T, writer *Store, proxy *redistest.Proxy) *Store {
	t.Helper()
	client, err := NewClient(proxy.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	reader := New(client, writer.keys, Options{Cache: &CacheOptions{}})
	t.Cleanup(reader.Close)
	awaitLive(t, reader, true)
	return reader
}

// awaitLive waits until the store's cache is in use (or not).
func awaitLive(t *testing.T, st *Store, live bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for st.CacheStats().Live != live {
		if time.Now().After(deadline) {
			t.Fatalf("session cache live = %v after 10s, want %v", !live, live)
		}
		time.Sleep(time.Millisecond)
	}
}

// commandCounter counts the commands a client sends.
type commandCounter struct{ n atomic.Int64 }

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// testCacheWarm: the first Lookup reads Redis, the next ones do not, and
// each answer is the caller's own copy.
func testCacheWarm(t *testing.T, st *Store) {
	ctx := context.Background()
	s, _ := testSession(t, st.now(), "sub-warm", "")
	mustCreate(t, st, s)
	counter := &commandCounter{}
	st.client.AddHook(counter)
	c := cachedReplica(t, st, CacheOptions{})

	before := counter.n.Load()
	first, err := c.Lookup(ctx, s.ID)
	if err != nil {
		t.Fatalf("Lookup = %v", err)
	}
	if n := counter.n.Load() - before; n != 1 {
		t.Errorf("cold Lookup sent %d commands, want 1", n)
	}
	first.LastUsedAt = time.Time{} // the caller's copy
	before = counter.n.Load()
	for range 10 {
		got, err := c.Lookup(ctx, s.ID)
		if err != nil {
			t.Fatalf("warm Lookup = %v", err)
		}
		assertSameSession(t, got, s)
	}
	if n := counter.n.Load() - before; n != 0 {
		t.Errorf("10 warm Lookups sent %d commands, want 0", n)
	}
	if st := c.CacheStats(); st.Hits < 10 || st.Entries != 1 || st.Bytes <= 0 {
		t.Errorf("CacheStats = %+v, want at least 10 hits and one entry", st)
	}
}

// testCacheInvalidated changes a cached session elsewhere by every path
// and expects the replica that cached it to see the change.
func testCacheInvalidated(t *testing.T, st *Store) {
	ctx := context.Background()
	c := cachedReplica(t, st, CacheOptions{})
	cases := []struct {
		name   string
		change func(t *testing.T, s *broker.Session)
		check  func(got *broker.Session, err error) bool
	}{
		{"End", func(t *testing.T, s *broker.Session) {
			if _, err := st.End(ctx, s.ID, testEnd); err != nil {
				t.Fatalf("End = %v", err)
			}
		}, isNotFound},
		{"UpdateTokens", func(t *testing.T, s *broker.Session) {
			tok := s.Tokens
			tok.AccessToken = "ACCESS-ROTATED"
			if err := refresh(t, st, s.ID, tok); err != nil {
				t.Fatalf("UpdateTokens = %v", err)
			}
		}, func(got *broker.Session, err error) bool {
			return err == nil && got.Generation == 2 && got.Tokens.AccessToken == "ACCESS-ROTATED"
		}},
		{"Touch", func(t *testing.T, s *broker.Session) {
			at := s.LastUsedAt.Add(time.Minute)
			if err := st.Touch(ctx, s.ID, at, at.Add(time.Hour)); err != nil {
				t.Fatalf("Touch = %v", err)
			}
		}, func(got *broker.Session, err error) bool {
			return err == nil && got.LastUsedAt.After(got.CreatedAt)
		}},
		{"DeletedByHand", func(t *testing.T, s *broker.Session) {
			if err := st.client.Del(ctx, sessionKey(s.ID)).Err(); err != nil {
				t.Fatal(err)
			}
		}, isNotFound},
		{"EditedByHand", func(t *testing.T, s *broker.Session) {
			if err := st.client.HSet(ctx, sessionKey(s.ID), fieldSub, "someone-else").Err(); err != nil {
				t.Fatal(err)
			}
		}, func(_ *broker.Session, err error) bool { return errors.Is(err, broker.ErrUnreadable) }},
		{"Expired", func(t *testing.T, s *broker.Session) {
			if err := st.client.PExpire(ctx, sessionKey(s.ID), time.Millisecond).Err(); err != nil {
				t.Fatal(err)
			}
		}, isNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := testSession(t, st.now(), "sub-"+tc.name, "")
			mustCreate(t, st, s)
			warm(t, c, s.ID)
			tc.change(t, s)
			awaitLookup(t, c, s.ID, tc.name, tc.check)
		})
	}
}

// warm reads a session into c's cache and checks that the next read hits.
func warm(t *testing.T, c *Store, id string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.Lookup(ctx, id); err != nil {
			t.Fatalf("Lookup(%s) = %v", id, err)
		}
		hits := c.CacheStats().Hits
		if _, err := c.Lookup(ctx, id); err != nil {
			t.Fatalf("Lookup(%s) = %v", id, err)
		}
		if c.CacheStats().Hits > hits {
			return
		}
		// The invalidation of the session's creation may have voided
		// the first fill.
		if time.Now().After(deadline) {
			t.Fatalf("Lookup(%s) never hit the cache", id)
		}
	}
}

func isNotFound(_ *broker.Session, err error) bool { return errors.Is(err, broker.ErrNotFound) }

// awaitLookup looks a session up in c until check accepts the answer, for
// at most 2 s: the news of a change comes from Redis asynchronously, but
// without it the cache would keep the old record for its whole TTL.
func awaitLookup(t *testing.T, c *Store, id, what string, check func(*broker.Session, error) bool) {
	t.Helper()
	start := time.Now()
	for {
		got, err := c.Lookup(context.Background(), id)
		if check(got, err) {
			t.Logf("%s: seen after %v", what, time.Since(start))
			return
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("Lookup 2s after %s = %+v, %v; the cache kept the old record", what, got, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// testCacheConcurrentChanges reads a session from a cached replica while
// another replica refreshes it over and over: once the writes stop and
// their news has arrived, the cache holds the last generation, never one
// that a read racing a write put back.
func testCacheConcurrentChanges(t *testing.T, st *Store) {
	ctx := context.Background()
	c := cachedReplica(t, st, CacheOptions{})
	s, _ := testSession(t, st.now(), "sub-race", "")
	mustCreate(t, st, s)
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.Lookup(ctx, s.ID); err != nil {
				done <- err
				return
			}
		}
	}()
	const writes = 50
	for range writes {
		if err := refresh(t, st, s.ID, s.Tokens); err != nil {
			t.Fatalf("UpdateTokens = %v", err)
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("Lookup during the writes = %v", err)
	}
	awaitLookup(t, c, s.ID, "the last write", func(got *broker.Session, err error) bool {
		return err == nil && got.Generation == writes+1
	})
	// And it stays there: no late fill of an older read.
	for range 100 {
		if got, _ := c.Lookup(ctx, s.ID); got.Generation != writes+1 {
			t.Fatalf("Lookup = generation %d after generation %d was seen", got.Generation, writes+1)
		}
	}
}

// TestCacheTickets: a fill whose ticket an invalidation or a flush voided
// stores nothing, since its read may predate the change.
func TestCacheTickets(t *testing.T) {
	now := time.Now()
	sess := &broker.Session{ID: "id", Tokens: broker.Tokens{AccessToken: "a", Expiry: now.Add(time.Hour)}}
	for _, tc := range []struct {
		name    string
		between func(c *sessionCache)
		stored  bool
	}{
		{"nothing", func(*sessionCache) {}, true},
		{"invalidated", func(c *sessionCache) { c.invalidate("id") }, false},
		{"other id invalidated", func(c *sessionCache) { c.invalidate("other") }, true},
		{"flushed", func(c *sessionCache) { c.flush(true) }, false},
		{"went off", func(c *sessionCache) { c.flush(false) }, false},
		{"newer ticket", func(c *sessionCache) { c.take("id") }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newSessionCache(CacheOptions{})
			c.flush(true)
			tk, ok := c.take("id")
			if !ok {
				t.Fatal("take on a live cache = false")
			}
			tc.between(c)
			c.fill(tk, sess, now)
			if _, got := c.get("id"); got != tc.stored {
				t.Errorf("cached after fill = %v, want %v", got, tc.stored)
			}
		})
	}
	t.Run("off", func(t *testing.T) {
		c := newSessionCache(CacheOptions{})
		if _, ok := c.take("id"); ok {
			t.Error("take on a cache that is off = true")
		}
	})
	t.Run("expired token", func(t *testing.T) {
		c := newSessionCache(CacheOptions{})
		c.flush(true)
		tk, _ := c.take("id")
		c.fill(tk, sess, now.Add(2*time.Hour))
		if _, ok := c.get("id"); ok {
			t.Error("a session whose access token expired was cached")
		}
	})
}

// TestCacheBounds: the cache holds at most MaxEntries sessions and
// MaxBytes of them.
func TestCacheBounds(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name string
		opts CacheOptions
	}{
		{"entries", CacheOptions{MaxEntries: 10}},
		{"bytes", CacheOptions{MaxBytes: 10 * sessionSize(&broker.Session{ID: "id-00"})}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newSessionCache(tc.opts)
			c.flush(true)
			for i := range 100 {
				id := "id-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
				tk, _ := c.take(id)
				c.fill(tk, &broker.Session{ID: id}, now)
			}
			st := c.stats()
			if st.Entries > 10 || st.Bytes > c.opts.MaxBytes || st.Evictions == 0 {
				t.Errorf("stats after 100 fills = %+v, want at most 10 entries within %d bytes, with evictions", st, c.opts.MaxBytes)
			}
		})
	}
}

func TestSessionIDOfKey(t *testing.T) {
	for key, want := range map[string]string{
		sessionKey("abc"):          "abc",
		lockKey("abc"):             "",
		endedKey("abc"):            "",
		"broker:session:{a}b}":     "",
		"broker:session:{}":        "",
		"broker:user:{abc}":        "",
		"broker:session:{a{b}":     "",
		"other:broker:session:{x}": "",
	} {
		got, ok := sessionIDOfKey(key)
		if got != want || ok != (want != "") {
			t.Errorf("sessionIDOfKey(%q) = %q, %v; want %q", key, got, ok, want)
		}
	}
}

// TestCacheFailsClosed cuts one replica's connections to Redis while
// another ends a session that the first has cached: the change is never
// announced to it, so its cache must be off from the cut until its channel
// is back, and emptied when it comes back.
func TestCacheFailsClosed(t *testing.T) {
	srv := redistest.Start(t)
	writer := newStandaloneStore(t, srv)
	proxy := redistest.NewProxy(t, srv.Addr())
	reader := proxiedReplica(t, writer, proxy)
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "sub-cut", "")
	mustCreate(t, writer, s)
	warm(t, reader, s.ID)

	proxy.Cut()
	awaitLive(t, reader, false)
	if _, err := reader.Lookup(ctx, s.ID); !errors.Is(err, broker.ErrStoreUnavailable) {
		t.Errorf("Lookup while cut off = %v, want ErrStoreUnavailable, not the cached session", err)
	}
	if _, err := writer.End(ctx, s.ID, testEnd); err != nil {
		t.Fatalf("End = %v", err)
	}
	proxy.Heal()
	if _, err := reader.Lookup(ctx, s.ID); err != nil && !isNotFound(nil, err) && !errors.Is(err, broker.ErrStoreUnavailable) {
		t.Fatalf("Lookup after the cut = %v", err)
	}
	awaitLive(t, reader, true)
	if _, err := reader.Lookup(ctx, s.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Lookup once back = %v, want ErrNotFound: an end made during the cut was missed", err)
	}
}

// TestCacheSilentRedis: a Redis that stops answering without closing the
// connection (a paused process, a cut that sends no reset) turns the cache
// off within two ping intervals, and on again once it answers.
func TestCacheSilentRedis(t *testing.T) {
	srv := redistest.Start(t)
	st := newStandaloneStore(t, srv)
	c := cachedReplica(t, st, CacheOptions{})
	srv.Pause(t)
	start := time.Now()
	awaitLive(t, c, false)
	t.Logf("off %v after the pause", time.Since(start))
	srv.Resume(t)
	awaitLive(t, c, true)
}

// TestCacheRedisRestart: a Redis restarted while sessions are cached, and
// flushed meanwhile, answers for itself: no cached session outlives it.
func TestCacheRedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	st := newStandaloneStore(t, srv)
	c := cachedReplica(t, st, CacheOptions{})
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "sub-restart", "")
	mustCreate(t, st, s)
	warm(t, c, s.ID)
	srv.Restart(t)
	if err := st.client.Del(ctx, sessionKey(s.ID)).Err(); err != nil {
		t.Fatalf("DEL after the restart = %v", err)
	}
	if _, err := c.Lookup(ctx, s.ID); err == nil {
		t.Fatal("Lookup after the restart and a delete = the cached session")
	}
	awaitLive(t, c, true)
	if _, err := c.Lookup(ctx, s.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Lookup = %v, want ErrNotFound", err)
	}
}

// TestCacheFlushAll: FLUSHALL announces itself with a null invalidation,
// which empties the cache.
func TestCacheFlushAll(t *testing.T) {
	srv := redistest.Start(t)
	st := newStandaloneStore(t, srv)
	c := cachedReplica(t, st, CacheOptions{})
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "sub-flush", "")
	mustCreate(t, st, s)
	warm(t, c, s.ID)
	if err := st.client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	awaitLookup(t, c, s.ID, "FLUSHALL", isNotFound)
}

// TestCacheClusterFailover fails over the master that holds a cached
// session: the promoted replica gets a channel of its own, and a change
// made there reaches the cache.
func TestCacheClusterFailover(t *testing.T) {
	t.Parallel()
	cl := redistest.StartClusterWithReplicas(t)
	st := newStoreFromURL(t, cl.URL())
	c := cachedReplica(t, st, CacheOptions{})
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "sub-failover", "")
	mustCreate(t, st, s)
	warm(t, c, s.ID)
	old := cl.MasterOf(t, sessionKey(s.ID))
	waitReplicated(t, old)
	old.Stop(t)
	cl.WaitHealthy(t)
	if m := cl.MasterOf(t, sessionKey(s.ID)); m == old {
		t.Fatal("the stopped master still holds the session's slot")
	}
	// The session survived on the promoted replica; cache it from there,
	// then end it there.
	awaitLive(t, c, true)
	var err error
	for range 100 {
		if _, err = c.Lookup(ctx, s.ID); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Lookup after failover = %v", err)
	}
	warm(t, c, s.ID)
	if _, err := st.End(ctx, s.ID, testEnd); err != nil {
		t.Fatalf("End on the new master = %v", err)
	}
	awaitLookup(t, c, s.ID, "an end on the new master", isNotFound)
}

// waitReplicated waits until the master's writes reached a replica.
func waitReplicated(t *testing.T, master *redistest.Server) {
	t.Helper()
	mc := redis.NewClient(&redis.Options{Addr: master.Addr(), Dialer: (&net.Dialer{}).DialContext})
	defer mc.Close()
	if err := mc.Do(context.Background(), "WAIT", 1, 2000).Err(); err != nil {
		t.Fatalf("WAIT: %v", err)
	}
}

// replyCapture keeps the replies of the scripts a client runs.
type replyCapture struct {
	commandCounter
	mu      sync.Mutex
	replies [][]string
}

func (c *replyCapture) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if name := cmd.Name(); name == "evalsha_ro" || name == "eval_ro" {
			if v, ok := cmd.(*redis.Cmd); ok {
				if res, err := v.Slice(); err == nil && len(res) > 0 {
					fields, _ := res[0].([]any)
					flat := make([]string, 0, len(fields))
					for _, f := range fields {
						s, _ := f.(string)
						flat = append(flat, s)
					}
					c.mu.Lock()
					c.replies = append(c.replies, flat)
					c.mu.Unlock()
				}
			}
		}
		return err
	}
}

// TestReadLeavesOutKnownBlobs: a second read of a session moves its small
// fields only, and an edit by hand of what the blobs are bound to is still
// caught, since the blobs this process kept are opened under the
// additional data the record gives now.
func TestReadLeavesOutKnownBlobs(t *testing.T) {
	srv := redistest.Start(t)
	st := newStandaloneStore(t, srv)
	capture := &replyCapture{}
	st.client.AddHook(capture)
	ctx := context.Background()
	s, _ := testSession(t, time.Now(), "sub-lean", "")
	mustCreate(t, st, s)
	if _, err := st.Get(ctx, s.ID); err != nil {
		t.Fatalf("Get = %v", err)
	}
	got, err := st.Get(ctx, s.ID)
	if err != nil {
		t.Fatalf("second Get = %v", err)
	}
	assertSameSession(t, got, s)
	capture.mu.Lock()
	if len(capture.replies) != 1 {
		t.Fatalf("second Get ran %d read scripts, want 1", len(capture.replies))
	}
	for _, v := range capture.replies[0] {
		if len(v) > 200 {
			t.Errorf("second Get moved a %d-byte value; the blobs it knows should be left out", len(v))
		}
	}
	capture.mu.Unlock()

	for _, tc := range []struct{ field, value string }{
		{fieldSub, "someone-else"},
		{fieldGen, "7"},
		// A value that looks like the script's old "you have it" answer
		// must not make the process use the bytes it kept.
		{fieldTok, "="},
		{fieldClaims, "="},
		{fieldAbsExp, strconv.FormatInt(time.Now().Add(100*24*time.Hour).UnixMilli(), 10)},
	} {
		t.Run("edited "+tc.field, func(t *testing.T) {
			s, _ := testSession(t, time.Now(), "sub-lean-"+tc.field, "")
			mustCreate(t, st, s)
			if _, err := st.Get(ctx, s.ID); err != nil {
				t.Fatalf("Get = %v", err)
			}
			if err := st.client.HSet(ctx, sessionKey(s.ID), tc.field, tc.value).Err(); err != nil {
				t.Fatal(err)
			}
			_, err := st.Get(ctx, s.ID)
			assertUnreadable(t, "Get after an edit", s.ID, err)
		})
	}
}

// TestOpenCacheSweep: opened blobs not used within the idle time leave
// memory.
func TestOpenCacheSweep(t *testing.T) {
	c := newOpenCache()
	c.put("id", fieldTok, "blob", []byte("aad"), broker.Tokens{AccessToken: "a"})
	c.sweep(time.Hour)
	if _, ok := c.get("id", fieldTok, "blob", []byte("aad")); !ok {
		t.Fatal("an entry used just now was swept with an hour's idle time")
	}
	time.Sleep(2 * time.Millisecond) // the entry's last use must be in the past
	c.sweep(time.Millisecond)
	if _, _, ok := c.known("id", fieldTok); ok {
		t.Error("an entry idle longer than the idle time was kept")
	}
}

// TestCacheSubscriptionNeverConfirmed: a channel whose SUBSCRIBE went
// unanswered (the reply lost on a connection that stays open and keeps
// answering pings) is opened afresh, and the cache comes on; without that
// it would stay off for ever.
func TestCacheSubscriptionNeverConfirmed(t *testing.T) {
	srv := redistest.Start(t)
	writer := newStandaloneStore(t, srv)
	proxy := redistest.NewProxy(t, srv.Addr())
	proxy.SwallowReplyOnceFunc(func(chunk []byte) bool {
		return bytes.Contains(bytes.ToLower(chunk), []byte("subscribe")) && bytes.Contains(chunk, []byte(invalidateChannel))
	})
	proxiedReplica(t, writer, proxy) // waits until the cache is on
	if proxy.Fired() != 1 {
		t.Fatalf("the subscription's confirmation was swallowed %d times, want 1", proxy.Fired())
	}
}

// TestCacheBlackholedRedis: Redis vanishes behind a network that still
// accepts connections, right after a change was made on another replica.
// The channel's connection is reset, and go-redis's reconnect then waits
// on connections that never answer, for its dial and read timeouts,
// before its error reaches the channel's loop. The watchdog turns the
// cache off within staleAfter of the channel's last sign of life all the
// same, well before those timeouts (2 s each here).
func TestCacheBlackholedRedis(t *testing.T) {
	srv := redistest.Start(t)
	writer := newStandaloneStore(t, srv)
	proxy := redistest.NewProxy(t, srv.Addr())
	reader := proxiedReplica(t, writer, proxy)
	s, _ := testSession(t, time.Now(), "sub-blackhole", "")
	mustCreate(t, writer, s)
	warm(t, reader, s.ID)

	proxy.Blackhole()
	start := time.Now()
	awaitLive(t, reader, false)
	if off := time.Since(start); off > 1500*time.Millisecond {
		t.Errorf("cache off %v after the channel went silent, want about %v: it waited for go-redis's timeouts", off, staleAfter)
	}
	proxy.Heal()
}
