package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// BenchmarkRevocationLatency measures how long a replica keeps serving a
// session from its cache after another replica revoked it:
//
//	go test -run='^$' -bench='^BenchmarkRevocationLatency$' -benchtime=200x ./cmd/broker/
//
// Two brokers share one Redis. Each iteration signs a new session in on
// broker A, has broker B serve it from its session cache, puts B under load
// on it (-revoke.clients keep-alive clients sending proxied requests back
// to back), revokes it through A's admin API (DELETE
// /admin/v1/sessions/{id}) and waits for every client to get its 401. It
// reports, over the b.N revocations, the time from the moment A's revoke
// call returned until B's first 401 reached a client (from-return) and from
// the moment the call was sent (from-sent), p50, p99 and max; a 401 that
// arrives before the call returned counts as 0 from-return (early-401 says
// how many did). stale-200 counts the requests B answered 200 although they
// were sent after the revoke call returned, and stale-window-max-ms is the
// latest such request's send time after the return: B's cache had not had
// Redis's invalidation yet (each such revocation is logged, with when the
// invalidation reached this process). from-invalidation is the time from
// the moment Redis's invalidation of the session key reached this process,
// on a tracking connection of the benchmark's own, to B's first 401: the
// brokers' own share of the delay. Run it with -benchtime=Nx: each op is
// one revocation.

var revokeClients = flag.Int("revoke.clients", 4, "BenchmarkRevocationLatency: concurrent clients loading replica B")

func BenchmarkRevocationLatency(b *testing.B) {
	env := newBenchEnv(b)
	brokerA := env.inst
	var brokerB *instance
	pprof.Do(context.Background(), pprof.Labels("role", "broker"), func(context.Context) { brokerB = env.stack.start() })
	_, adminToken := env.stack.adminToken()
	admin := loadClient(1)
	defer admin.CloseIdleConnections()
	clients := max(*revokeClients, 1)
	client := loadClient(clients)
	defer client.CloseIdleConnections()

	seen := watchInvalidations(b, env.stack.redis.URL())
	var (
		fromReturn, fromSent, revokeCall []time.Duration
		fromInvalidation                 []time.Duration
		staleWindow                      time.Duration
		lastServed                       []time.Duration
		stale, early, served             int
	)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		c := env.stack.login(brokerA)
		id, _, _ := strings.Cut(c.Session, ".")
		target := benchTarget{name: "broker-B", url: brokerB.base + "/api/items/42?fields=all", auth: "Bearer " + c.Session}
		awaitCacheHit(b, client, brokerB, target)
		b.StartTimer()

		load := startRevocationLoad(client, target, clients)
		<-load.ramped
		req, err := http.NewRequest(http.MethodDelete, brokerA.admin+"/admin/v1/sessions/"+id, nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+adminToken)
		sent := time.Now()
		status, err := statusOf(admin, req)
		returned := time.Now()
		if err != nil || status != http.StatusNoContent {
			load.stop()
			b.Fatalf("DELETE /admin/v1/sessions/{id} on A = %d, %v; want 204", status, err)
		}
		obs, err := load.wait()
		if err != nil {
			b.Fatal(err)
		}

		var (
			first, last200 time.Time
			staleHere      int
		)
		for _, o := range obs {
			if o.status == http.StatusOK && o.sent.After(last200) {
				last200 = o.sent
			}
			switch {
			case o.status == http.StatusUnauthorized:
				if first.IsZero() || o.recv.Before(first) {
					first = o.recv
				}
			case o.sent.After(returned):
				staleHere++
			}
			if o.status == http.StatusOK {
				served++
			}
		}
		invalidated, ok := seen.after("broker:session:{"+id+"}", sent)
		if !ok {
			b.Fatalf("revocation %d: Redis sent no invalidation of the session key", len(fromReturn)+1)
		}
		fromInvalidation = append(fromInvalidation, max(first.Sub(invalidated), 0))
		if staleHere > 0 {
			stale += staleHere
			staleWindow = max(staleWindow, last200.Sub(returned))
			b.Logf("revocation %d: %d requests sent up to %v after the revoke call returned (it took %v) were answered 200; the first 401 came %v after it returned; Redis's invalidation reached this process %v after the call was sent",
				len(fromReturn)+1, staleHere, last200.Sub(returned), returned.Sub(sent), first.Sub(returned), invalidated.Sub(sent))
		}
		d := first.Sub(returned)
		if d < 0 {
			early++
			d = 0
		}
		fromReturn = append(fromReturn, d)
		fromSent = append(fromSent, first.Sub(sent))
		revokeCall = append(revokeCall, returned.Sub(sent))
		lastServed = append(lastServed, last200.Sub(sent))
	}
	b.StopTimer()
	n := len(fromReturn)
	b.ReportMetric(percentile(fromReturn, 0.50), "from-return-p50-ms")
	b.ReportMetric(percentile(fromReturn, 0.99), "from-return-p99-ms")
	b.ReportMetric(percentile(fromReturn, 1), "from-return-max-ms")
	b.ReportMetric(percentile(fromSent, 0.50), "from-sent-p50-ms")
	b.ReportMetric(percentile(fromSent, 0.99), "from-sent-p99-ms")
	b.ReportMetric(percentile(fromSent, 1), "from-sent-max-ms")
	b.ReportMetric(percentile(fromInvalidation, 0.50), "from-invalidation-p50-ms")
	b.ReportMetric(percentile(fromInvalidation, 0.99), "from-invalidation-p99-ms")
	b.ReportMetric(percentile(fromInvalidation, 1), "from-invalidation-max-ms")
	b.ReportMetric(percentile(revokeCall, 0.50), "revoke-call-p50-ms")
	b.ReportMetric(percentile(lastServed, 0.50), "last-200-sent-p50-ms")
	b.ReportMetric(percentile(lastServed, 0.99), "last-200-sent-p99-ms")
	b.ReportMetric(float64(early), "early-401")
	b.ReportMetric(float64(stale), "stale-200")
	b.ReportMetric(float64(staleWindow)/float64(time.Millisecond), "stale-window-max-ms")
	b.ReportMetric(float64(served)/float64(n), "served-200/op")
	b.ReportMetric(0, "ns/op")
}

// awaitCacheHit sends requests on target until broker inst answers one
// from its session cache.
func awaitCacheHit(tb testing.TB, client *http.Client, inst *instance, target benchTarget) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := metricValue(tb, inst, cacheHits)
		if err := get(client, target); err != nil {
			tb.Fatalf("GET %s: %v", target.url, err)
		}
		if metricValue(tb, inst, cacheHits) > before {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatal("no proxied request was answered from the session cache within 10s")
		}
	}
}

// metricValue returns the value of one series on inst's /metrics, 0 when
// it is absent.
func metricValue(tb testing.TB, inst *instance, series string) float64 {
	tb.Helper()
	res := doURL(tb, http.MethodGet, inst.admin+"/metrics", "", nil, nil)
	if res.status != http.StatusOK {
		tb.Fatalf("GET /metrics = %d, want 200", res.status)
	}
	for line := range strings.SplitSeq(string(res.body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatalf("metrics line %q: %v", line, err)
			}
			return f
		}
	}
	return 0
}

// observation is one proxied request of the revocation load.
type observation struct {
	sent, recv time.Time
	status     int
}

// revocationLoad is clients sending proxied requests back to back, each
// until it gets a 401.
type revocationLoad struct {
	ramped  chan struct{} // closed once every client has had answers
	done    chan struct{}
	quit    atomic.Bool
	mu      sync.Mutex
	obs     []observation
	lastErr error
}

// revocationRamp is how many answers each client has had before the load
// counts as ramped up.
const revocationRamp = 5

// revocationTimeout bounds a client's wait for its 401.
const revocationTimeout = 10 * time.Second

func startRevocationLoad(client *http.Client, target benchTarget, clients int) *revocationLoad {
	l := &revocationLoad{ramped: make(chan struct{}), done: make(chan struct{})}
	var (
		wg      sync.WaitGroup
		rampWG  sync.WaitGroup
		started = time.Now()
	)
	rampWG.Add(clients)
	for range clients {
		wg.Go(func() {
			own := make([]observation, 0, 256)
			rampedUp := false
			defer func() {
				if !rampedUp {
					rampWG.Done()
				}
				l.mu.Lock()
				l.obs = append(l.obs, own...)
				l.mu.Unlock()
			}()
			for !l.quit.Load() {
				req, err := http.NewRequest(http.MethodGet, target.url, nil)
				if err != nil {
					l.fail(err)
					return
				}
				req.Header.Set("Authorization", target.auth)
				sent := time.Now()
				status, err := statusOf(client, req)
				if err != nil {
					l.fail(err)
					return
				}
				own = append(own, observation{sent: sent, recv: time.Now(), status: status})
				if !rampedUp && len(own) >= revocationRamp {
					rampedUp = true
					rampWG.Done()
				}
				switch {
				case status == http.StatusUnauthorized:
					return
				case status != http.StatusOK:
					l.fail(fmt.Errorf("GET %s = %d, want 200 or 401", target.url, status))
					return
				case time.Since(started) > revocationTimeout:
					l.fail(fmt.Errorf("GET %s still 200 after %v", target.url, revocationTimeout))
					return
				}
			}
		})
	}
	go func() { rampWG.Wait(); close(l.ramped) }()
	go func() { wg.Wait(); close(l.done) }()
	return l
}

func (l *revocationLoad) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastErr = err
}

// stop ends the load without waiting for the 401s.
func (l *revocationLoad) stop() {
	l.quit.Store(true)
	<-l.done
}

// wait returns every client's observations once each has had its 401.
func (l *revocationLoad) wait() ([]observation, error) {
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.obs, l.lastErr
}

// statusOf sends req and reads the whole answer, so that the connection
// goes back to the pool, and returns its status.
func statusOf(client *http.Client, req *http.Request) (int, error) {
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

// invalidations records when Redis's broadcast invalidations of each
// session key reached this process, on a tracking connection of its own like
// the brokers' (see sessions/tracking.go).
type invalidations struct {
	mu    sync.Mutex
	times map[string][]time.Time
}

// after returns when the first invalidation of key that reached this
// process at or after t did.
func (v *invalidations) after(key string, t time.Time) (time.Time, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, at := range v.times[key] {
		if !at.Before(t) {
			return at, true
		}
	}
	return time.Time{}, false
}

func watchInvalidations(tb testing.TB, redisURL string) *invalidations {
	tb.Helper()
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		tb.Fatal(err)
	}
	opts.Protocol = 2
	opts.PoolSize = 1
	opts.OnConnect = func(ctx context.Context, cn *redis.Conn) error {
		id, err := cn.ClientID(ctx).Result()
		if err != nil {
			return err
		}
		return cn.Do(ctx, "CLIENT", "TRACKING", "ON", "REDIRECT", id, "BCAST", "PREFIX", "broker:session:{").Err()
	}
	rdb := redis.NewClient(opts)
	ctx, cancel := context.WithCancel(context.Background())
	ps := rdb.Subscribe(ctx, "__redis__:invalidate")
	if _, err := ps.Receive(ctx); err != nil {
		tb.Fatalf("SUBSCRIBE __redis__:invalidate: %v", err)
	}
	v := &invalidations{times: map[string][]time.Time{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := ps.ReceiveMessage(ctx)
			if err != nil {
				return
			}
			now := time.Now()
			keys := append(msg.PayloadSlice, msg.Payload)
			v.mu.Lock()
			for _, k := range keys {
				if k != "" {
					v.times[k] = append(v.times[k], now)
				}
			}
			v.mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		cancel()
		_ = ps.Close()
		<-done
		_ = rdb.Close()
	})
	return v
}
