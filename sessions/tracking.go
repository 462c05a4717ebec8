package sessions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The session cache's invalidation channel: Redis server-assisted
// client-side caching (CLIENT TRACKING) in broadcast mode on the prefix of
// the session keys. Redis itself tells every broker of every change to a
// session key, whoever made it and however: a script of any replica, an
// expiry, a FLUSHALL, or an operator's HSET or DEL by hand. Writers need
// not publish anything, so no path that changes a session can forget to.
//
// Each Redis master gets one dedicated connection of its own (a Cluster has
// several), in RESP2: it turns tracking on, redirected to itself, and
// subscribes to __redis__:invalidate, where Redis then posts the names of
// the changed keys. The cache is used only while every one of these
// connections is subscribed and answers its pings; it is emptied whenever
// one goes down and again when all are back, since a change made meanwhile
// was never announced.
const (
	invalidateChannel = "__redis__:invalidate"
	// trackedPrefix covers the session keys (and, harmlessly, their leases
	// and tombstones, whose invalidations are ignored).
	trackedPrefix = keyPrefix + "session:{"
	// pingEvery is how long a channel may stay silent before it is pinged;
	// one that stays silent for twice as long is taken as down, which
	// bounds how long a network cut that no error reports leaves the cache
	// in use.
	pingEvery = 200 * time.Millisecond
	// staleAfter is how long a subscribed channel may go without
	// delivering anything (a message, or the answer to the ping sent after
	// pingEvery) before the watchdog takes it as down.
	staleAfter = 2*pingEvery + pingEvery/2
	// retryMin and retryMax bound the pause between attempts to bring a
	// channel back.
	retryMin = 100 * time.Millisecond
	retryMax = 2 * time.Second
	// subscribeWithin bounds the wait for a channel's subscription to be
	// confirmed.
	subscribeWithin = 5 * time.Second
	// rescanEvery is how often the masters of a Cluster are listed again,
	// so that a failover or a new master gets its channel.
	rescanEvery = time.Second
)

// tracker runs the invalidation channels of one cache.
type tracker struct {
	cache *sessionCache
	log   *slog.Logger

	mu        sync.Mutex
	listeners map[string]*listener // by address
	closed    bool

	stop context.CancelFunc
	done sync.WaitGroup
}

// listener is the channel to one master.
type listener struct {
	addr   string
	client *redis.Client
	up     bool // subscribed and heard from; guarded by tracker.mu
	cancel context.CancelFunc
	// heard is when the channel last delivered anything (Unix ns); the
	// watchdog takes a channel that stays silent past staleAfter as down,
	// even while go-redis is still inside a reconnect that has not
	// reported its error yet.
	heard atomic.Int64
	// stale is set by the watchdog when it took the channel down; the
	// channel is up again with its next message.
	stale atomic.Bool
}

// startTracker starts the channels for client's masters and keeps them up
// until close.
func startTracker(client redis.UniversalClient, cache *sessionCache, opened *openCache, log *slog.Logger) *tracker {
	ctx, cancel := context.WithCancel(context.Background())
	t := &tracker{cache: cache, log: log, listeners: make(map[string]*listener), stop: cancel}
	switch c := client.(type) {
	case *redis.ClusterClient:
		t.done.Go(func() { t.followCluster(ctx, c) })
	case *redis.Client:
		t.add(ctx, c.Options())
	default:
		log.Warn("session cache off: the Redis client is of an unknown kind", "kind", fmt.Sprintf("%T", client))
	}
	t.done.Go(func() { t.watch(ctx) })
	t.done.Go(func() {
		tick := time.NewTicker(max(cache.opts.TTL/4, time.Second))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				cache.sweep()
				// The opened blobs serve the re-reads after a touch (at
				// most a minute apart) and the reads while the cache is
				// off: kept twice as long as a cached session.
				opened.sweep(2 * cache.opts.TTL)
			}
		}
	})
	return t
}

// watch takes down the channels that went silent, so that the cache is
// never used for longer than staleAfter after the last sign of life of
// every channel, whatever a channel's goroutine is blocked in.
func (t *tracker) watch(ctx context.Context) {
	tick := time.NewTicker(pingEvery / 4)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cutoff := time.Now().Add(-staleAfter).UnixNano()
		t.mu.Lock()
		for _, l := range t.listeners {
			if l.up && l.heard.Load() < cutoff {
				l.up = false
				l.stale.Store(true)
				t.log.Warn("session cache off: the invalidation channel went silent", "redis", l.addr)
			}
		}
		t.settle()
		t.mu.Unlock()
	}
}

// close stops every channel and turns the cache off.
func (t *tracker) close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.stop()
	t.done.Wait()
	t.cache.flush(false)
}

// followCluster keeps one channel per master of a Cluster, listing the
// masters again every rescanEvery and when the client meets a new node.
func (t *tracker) followCluster(ctx context.Context, c *redis.ClusterClient) {
	rescan := time.NewTicker(rescanEvery)
	defer rescan.Stop()
	for {
		masters := make(map[string]*redis.Options)
		var mu sync.Mutex
		err := c.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			masters[node.Options().Addr] = node.Options()
			return nil
		})
		if err == nil {
			t.sync(ctx, masters)
		} else if ctx.Err() == nil {
			// Without the list of masters a new one may be missed: the
			// channels already up stay up, but the cache goes off until
			// the list is known again.
			t.mu.Lock()
			if t.cache.live.Load() {
				t.log.Warn("session cache off: the Cluster's masters cannot be listed", "error", err)
			}
			t.cache.flush(false)
			for _, l := range t.listeners {
				l.up = false
				l.cancel()
			}
			clear(t.listeners)
			t.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-rescan.C:
		}
	}
}

// sync starts channels for new masters and stops those of nodes that are no
// longer masters.
func (t *tracker) sync(ctx context.Context, masters map[string]*redis.Options) {
	t.mu.Lock()
	var stale []*listener
	for addr, l := range t.listeners {
		if _, ok := masters[addr]; !ok {
			stale = append(stale, l)
			delete(t.listeners, addr)
		}
	}
	t.mu.Unlock()
	for _, l := range stale {
		l.cancel()
	}
	for addr, opts := range masters {
		t.mu.Lock()
		_, ok := t.listeners[addr]
		t.mu.Unlock()
		if !ok {
			t.add(ctx, opts)
		}
	}
	// A master that left takes its channel with it; if the rest are up,
	// the cache can be on (a change on the node that left was announced
	// while its channel was up, or the cache was off).
	t.mu.Lock()
	t.settle()
	t.mu.Unlock()
}

// add starts the channel of the master that opts dial.
func (t *tracker) add(ctx context.Context, opts *redis.Options) {
	o := *opts
	o.Protocol = 2 // invalidations arrive as pub/sub messages
	o.PoolSize = 1
	o.MinIdleConns = 0
	o.MaxRetries = -1
	connect := o.OnConnect
	o.OnConnect = func(ctx context.Context, cn *redis.Conn) error {
		if connect != nil {
			if err := connect(ctx, cn); err != nil {
				return err
			}
		}
		id, err := cn.ClientID(ctx).Result()
		if err != nil {
			return err
		}
		// Redirected to itself: in RESP2 the connection that receives the
		// invalidations must be subscribed to __redis__:invalidate, and
		// this one subscribes next.
		return cn.Do(ctx, "CLIENT", "TRACKING", "ON", "REDIRECT", id, "BCAST", "PREFIX", trackedPrefix).Err()
	}
	lctx, cancel := context.WithCancel(ctx)
	l := &listener{addr: o.Addr, client: redis.NewClient(&o), cancel: cancel}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		cancel()
		_ = l.client.Close()
		return
	}
	t.listeners[l.addr] = l
	t.settle()
	t.mu.Unlock()
	t.done.Go(func() {
		defer l.client.Close()
		t.keep(lctx, l)
	})
}

// settle turns the cache on when every channel is up and off otherwise.
// The caller holds t.mu.
func (t *tracker) settle() {
	all := len(t.listeners) > 0 && !t.closed
	for _, l := range t.listeners {
		all = all && l.up
	}
	switch {
	case all && !t.cache.live.Load():
		// Emptied as it goes on: what was cached before the channels were
		// all up may have missed a change.
		t.cache.flush(true)
		t.log.Info("session cache on: invalidations flow from every Redis master", "masters", len(t.listeners))
	case !all && t.cache.live.Load():
		t.cache.flush(false)
	}
}

// keep holds l's channel up until ctx ends, reconnecting after any error.
func (t *tracker) keep(ctx context.Context, l *listener) {
	pause := retryMin
	warned := false // since the channel was last up
	for ctx.Err() == nil {
		err := t.listen(ctx, l)
		t.mu.Lock()
		wasUp := l.up
		l.up = false
		t.settle()
		t.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		switch {
		case wasUp:
			pause, warned = retryMin, true
			t.log.Warn("session cache off: the invalidation channel went down; every request reads Redis until it is back",
				"redis", l.addr, "error", err)
		case !warned:
			// A channel that cannot be opened at all (CLIENT TRACKING
			// refused by an ACL, a Redis older than 6) is said once.
			warned = true
			t.log.Warn("session cache off: the invalidation channel cannot be opened; every request reads Redis, and it is retried",
				"redis", l.addr, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, retryMax)
	}
}

// Errors that end a channel: it answered neither messages nor pings, or it
// answers pings but never confirmed its subscription.
var (
	errSilent        = errors.New("no answer to a ping")
	errNotSubscribed = errors.New("the subscription to " + invalidateChannel + " was not confirmed")
)

// listen subscribes l's channel and applies its invalidations until it
// fails. Any reply it does not expect, a flush's null payload included,
// ends it: the cache is then emptied and the channel opened afresh.
func (t *tracker) listen(ctx context.Context, l *listener) error {
	ps := l.client.Subscribe(ctx, invalidateChannel)
	defer ps.Close()
	pinged, subscribed := false, false
	started := time.Now()
	for {
		if !subscribed && time.Since(started) > subscribeWithin {
			// The client may have reconnected after a failed SUBSCRIBE
			// without subscribing again: open a channel afresh.
			return errNotSubscribed
		}
		msg, err := ps.ReceiveTimeout(ctx, pingEvery)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || ctx.Err() != nil {
				return err
			}
			if pinged {
				return errSilent
			}
			if err := ps.Ping(ctx); err != nil {
				return err
			}
			pinged = true
			continue
		}
		pinged = false
		l.heard.Store(time.Now().UnixNano())
		if subscribed && l.stale.Load() {
			// The watchdog took the channel down while it was silent;
			// it speaks again, in order, so nothing was missed.
			t.mu.Lock()
			if l.stale.CompareAndSwap(true, false) {
				l.up = true
				t.settle()
			}
			t.mu.Unlock()
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" || m.Channel != invalidateChannel {
				return errors.New("unexpected subscription " + m.Kind + " " + strconv.Quote(m.Channel))
			}
			if subscribed {
				// A second confirmation means the client subscribed
				// again on a new connection: what came between is lost.
				return errors.New("subscribed again without notice")
			}
			subscribed = true
			t.mu.Lock()
			l.stale.Store(false)
			l.up = true
			t.settle()
			t.mu.Unlock()
		case *redis.Message:
			keys := m.PayloadSlice
			if m.Payload != "" {
				keys = append(keys, m.Payload)
			}
			for _, key := range keys {
				if id, ok := sessionIDOfKey(key); ok {
					t.cache.invalidate(id)
				}
			}
		case *redis.Pong:
		}
	}
}

// sessionIDOfKey returns the session id of a session key, and false for
// every other key (a lease, a tombstone).
func sessionIDOfKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, trackedPrefix)
	if !ok || !strings.HasSuffix(rest, "}") {
		return "", false
	}
	id := rest[:len(rest)-1]
	if id == "" || strings.ContainsAny(id, "{}") {
		return "", false
	}
	return id, true
}
