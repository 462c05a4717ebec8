package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The proxy benchmarks put the broker next to the cheapest proxy that could
// do its job: an httputil.ReverseProxy that injects a fixed token and looks
// nothing up. Both forward to the same upstream over the same kind of
// transport, so the difference is what the broker adds: the session lookup
// in Redis, decryption, routing, logging.
//
//	go test -run='^$' -bench='^BenchmarkProxy$' -benchtime=5s ./cmd/broker/
//	go test -run='^$' -bench='^BenchmarkProxyWrk$' -benchtime=1x -cpuprofile=cpu.out ./cmd/broker/
//	go tool pprof -top -tagfocus=role=broker cmd/broker/broker.test cpu.out
//
// The servers' goroutines carry the pprof label role=broker, plain, upstream
// or client, so one CPU profile of a whole run can be split by role.

var (
	wrkDuration    = flag.Duration("wrk.duration", 10*time.Second, "BenchmarkProxyWrk: length of each measured wrk run")
	wrkWarmup      = flag.Duration("wrk.warmup", 2*time.Second, "BenchmarkProxyWrk: length of the unmeasured wrk run before each measured one")
	wrkThreads     = flag.Int("wrk.threads", 2, "BenchmarkProxyWrk: wrk threads (-t)")
	wrkConnections = flag.Int("wrk.connections", 64, "BenchmarkProxyWrk: wrk connections (-c)")
)

// benchClients is how many requests BenchmarkProxy keeps in flight.
const benchClients = 64

// benchBody is the upstream's whole answer: small, so that the proxies'
// own work dominates.
const benchBody = `{"id":42,"name":"widget","price":{"amount":1999,"currency":"EUR"},"tags":["a","b"]}`

// plainToken is what the plain proxy puts in Authorization.
const plainToken = "plain-benchmark-access-token-0123456789abcdef"

// benchTarget is one proxy under load.
type benchTarget struct {
	name string
	url  string // GET this URL
	auth string // Authorization header sent by the client
	// proof, when set, signs the DPoP proof of each request.
	proof func() (string, error)
}

// benchEnv is a broker with a live session and a plain proxy, both in front
// of one fast upstream.
type benchEnv struct {
	broker, plain benchTarget
	// dpop is the broker with a DPoP-bound session: a proof per request.
	dpop          benchTarget
	stack         *stack
	inst          *instance
	rdb           *redis.Client // the stack's Redis, for INFO
	upstreamConns *atomic.Int64 // connections the upstream accepted
}

// newBenchEnv starts the upstream, a broker on a real stack whose session has
// an access token that will not need a refresh during the run, and the plain
// proxy.
func newBenchEnv(tb testing.TB) *benchEnv {
	tb.Helper()
	ctx := context.Background()
	var conns atomic.Int64
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(benchBody)))
		_, _ = io.WriteString(w, benchBody)
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	pprof.Do(ctx, pprof.Labels("role", "upstream"), func(context.Context) { up.Start() })
	tb.Cleanup(up.Close)

	s := newStack(tb, stackOptions{
		accessTokenTTL: 24 * time.Hour,
		env:            map[string]string{"BROKER_ROUTES": "/api=" + up.URL + "/base"},
	})
	var inst *instance
	pprof.Do(ctx, pprof.Labels("role", "broker"), func(context.Context) { inst = s.start() })
	session := s.login(inst)
	key := newTestKey(tb)
	bound := s.loginDPoP(inst, key)

	base, err := url.Parse(up.URL + "/base")
	if err != nil {
		tb.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(base)
			pr.Out.Header.Set("Authorization", "Bearer "+plainToken)
			pr.SetXForwarded()
		},
		Transport: upstreamTransport(),
		// wrk ends a run with requests in flight; their "context canceled"
		// is noise.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	// The same server settings as the broker's public listener.
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	pprof.Do(ctx, pprof.Labels("role", "plain"), func(context.Context) {
		go func() { _ = srv.Serve(l) }()
	})
	tb.Cleanup(func() { _ = srv.Close() })

	auth := "Bearer " + session.Session
	return &benchEnv{
		broker: benchTarget{name: "broker", url: inst.base + "/api/items/42?fields=all", auth: auth},
		plain:  benchTarget{name: "plain", url: "http://" + l.Addr().String() + "/items/42?fields=all", auth: auth},
		dpop: benchTarget{name: "broker-dpop", url: inst.base + "/api/items/42?fields=all", auth: "DPoP " + bound.Session,
			proof: func() (string, error) {
				return key.proof(http.MethodGet, inst.base+"/api/items/42", bound.Session, "", time.Now())
			}},
		stack:         s,
		inst:          inst,
		rdb:           s.redis.Client(tb),
		upstreamConns: &conns,
	}
}

// upstreamTransport is the plain proxy's transport, configured like the
// broker's default one (handlers.newTransport).
func upstreamTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 5 * time.Second
	t.ResponseHeaderTimeout = 30 * time.Second
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 90 * time.Second
	t.ForceAttemptHTTP2 = true
	return t
}

// loadClient keeps a connection per concurrent caller alive.
func loadClient(concurrency int) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 0
	t.MaxIdleConnsPerHost = 2 * concurrency
	t.DisableCompression = true
	return &http.Client{Transport: t}
}

// BenchmarkProxy drives GET requests through the plain proxy and then
// through the broker with benchClients concurrent keep-alive clients in this
// process, and reports throughput and latency percentiles of each. The
// broker's line also gives its throughput relative to the plain proxy's last
// run (broker/plain), the Redis commands per request (redis-cmds/op;
// connection set-up excluded), the writes among them, and the log bytes per
// request.
func BenchmarkProxy(b *testing.B) {
	env := newBenchEnv(b)
	var plain loadResult
	b.Run("plain", func(b *testing.B) {
		plain = benchParallel(b, env, env.plain)
	})
	b.Run("broker", func(b *testing.B) {
		res := benchParallel(b, env, env.broker)
		if plain.rps > 0 {
			b.ReportMetric(res.rps/plain.rps, "broker/plain")
		}
	})
	// The client signs a proof per request in this process: its ECDSA
	// signature counts in cpu-us/op.
	b.Run("broker-dpop", func(b *testing.B) {
		res := benchParallel(b, env, env.dpop)
		if plain.rps > 0 {
			b.ReportMetric(res.rps/plain.rps, "broker/plain")
		}
	})
}

// loadResult is the outcome of one measured run.
type loadResult struct {
	requests int64
	rps      float64
	p50, p99 float64 // milliseconds
}

// benchParallel drives GET requests at the targets with benchClients
// concurrent keep-alive clients, each client sending its requests to the
// targets in turn, and reports throughput, latency percentiles and, for
// brokers, the Redis commands and log bytes per request.
func benchParallel(b *testing.B, env *benchEnv, targets ...benchTarget) loadResult {
	ctx := context.Background()
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((benchClients + procs - 1) / procs)
	client := loadClient(benchClients)
	defer client.CloseIdleConnections()

	before := takeSnapshot(b, env)
	var (
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, b.N)
		failures  atomic.Int64
		lastErr   atomic.Value
		next      atomic.Int64 // first target of each client
		perTarget = make([]atomic.Int64, len(targets))
	)
	b.ResetTimer()
	start := time.Now()
	pprof.Do(ctx, pprof.Labels("role", "client"), func(context.Context) {
		b.RunParallel(func(pb *testing.PB) {
			own := make([]time.Duration, 0, 1024)
			i := int(next.Add(1))
			for pb.Next() {
				i = (i + 1) % len(targets)
				t0 := time.Now()
				if err := get(client, targets[i]); err != nil {
					failures.Add(1)
					lastErr.Store(fmt.Errorf("%s: %w", targets[i].name, err))
					continue
				}
				own = append(own, time.Since(t0))
				perTarget[i].Add(1)
			}
			mu.Lock()
			latencies = append(latencies, own...)
			mu.Unlock()
		})
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if n := failures.Load(); n > 0 {
		b.Fatalf("%d of %d requests failed, last: %v", n, b.N, lastErr.Load())
	}
	after := takeSnapshot(b, env)

	res := loadResult{
		requests: int64(b.N),
		rps:      float64(b.N) / elapsed.Seconds(),
		p50:      percentile(latencies, 0.50),
		p99:      percentile(latencies, 0.99),
	}
	b.ReportMetric(res.rps, "req/s")
	b.ReportMetric(res.p50, "p50-ms")
	b.ReportMetric(res.p99, "p99-ms")
	b.ReportMetric(float64(after.upstreamConns-before.upstreamConns), "upstream-dials")
	// The clients run in this process too: compare, do not read as the
	// proxy's own cost.
	b.ReportMetric(float64(after.cpu-before.cpu)/float64(time.Microsecond)/float64(b.N), "cpu-us/op")
	if targets[0].name != env.plain.name {
		use := redisUseBetween(b, env.rdb, before, after)
		b.ReportMetric(float64(use.commands)/float64(b.N), "redis-cmds/op")
		b.ReportMetric(float64(use.writes), "redis-writes")
		b.ReportMetric(float64(after.logBytes-before.logBytes)/float64(b.N), "log-B/op")
		if use.writes > 0 || use.commands > int64(b.N) {
			b.Logf("Redis on the hot path: %s", use)
		}
	}
	// Each target's share is 1/n of the requests; a lopsided share would
	// make the throughput figure lie.
	for i := range perTarget {
		if got, want := perTarget[i].Load(), int64(b.N/len(targets)); b.N >= 100*len(targets) && (got < want*9/10 || got > want*11/10) {
			b.Errorf("%s served %d of %d requests, want about %d", targets[i].name, got, b.N, want)
		}
	}
	return res
}

// get sends one request and reads the whole answer, so that the connection
// goes back to the pool.
func get(client *http.Client, target benchTarget) error {
	req, err := http.NewRequest(http.MethodGet, target.url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", target.auth)
	if target.proof != nil {
		p, err := target.proof()
		if err != nil {
			return err
		}
		req.Header.Set("DPoP", p)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	switch {
	case err != nil:
		return err
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("status %d", resp.StatusCode)
	case n != int64(len(benchBody)):
		return fmt.Errorf("body of %d bytes, want %d", n, len(benchBody))
	}
	return nil
}

// percentile returns the q-quantile of d in milliseconds, sorting d.
func percentile(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := max(int(math.Ceil(q*float64(len(d))))-1, 0)
	return float64(d[i]) / float64(time.Millisecond)
}

// BenchmarkProxyWrk loads the plain proxy and then the broker with wrk, each
// after an unmeasured warm-up run, and reports wrk's requests per second and
// latency percentiles for both, their throughput ratio (broker/plain), the
// CPU time this process spent per request (broker or plain proxy, plus the
// upstream), and for the broker the Redis commands per request. Run it once:
// -benchtime=1x.
func BenchmarkProxyWrk(b *testing.B) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not in PATH: install it (apt-get install wrk, brew install wrk) to run this benchmark")
	}
	env := newBenchEnv(b)
	b.ResetTimer()
	means := meanMetrics{}
	for range b.N {
		m := map[string]wrkResult{}
		for _, target := range []benchTarget{env.plain, env.broker} {
			if _, err := runWrk(bin, target, *wrkWarmup); err != nil {
				b.Fatalf("wrk warm-up on %s: %v", target.name, err)
			}
			before := takeSnapshot(b, env)
			res, err := runWrk(bin, target, *wrkDuration)
			if err != nil {
				b.Fatalf("wrk on %s: %v", target.name, err)
			}
			after := takeSnapshot(b, env)
			res.cpuPerReq = float64(after.cpu-before.cpu) / float64(time.Microsecond) / float64(res.requests)
			res.upstreamDials = after.upstreamConns - before.upstreamConns
			if target.name == "broker" {
				res.redis = redisUseBetween(b, env.rdb, before, after)
				res.redisCPUPerReq = float64(after.redisCPU-before.redisCPU) / float64(time.Microsecond) / float64(res.requests)
				res.logBytesPerReq = float64(after.logBytes-before.logBytes) / float64(res.requests)
			}
			m[target.name] = res
		}
		br, pl := m["broker"], m["plain"]
		b.Logf("plain:  %s", pl)
		b.Logf("broker: %s; Redis %s", br, br.redis)
		metrics := map[string]float64{
			"broker-req/s":          br.rps,
			"plain-req/s":           pl.rps,
			"broker/plain":          br.rps / pl.rps,
			"broker-p50-ms":         br.p50,
			"broker-p99-ms":         br.p99,
			"plain-p50-ms":          pl.p50,
			"plain-p99-ms":          pl.p99,
			"broker-cpu-us/req":     br.cpuPerReq,
			"plain-cpu-us/req":      pl.cpuPerReq,
			"redis-cmds/req":        float64(br.redis.commands) / float64(br.requests),
			"redis-writes":          float64(br.redis.writes),
			"redis-cpu-us/req":      br.redisCPUPerReq,
			"broker-log-B/req":      br.logBytesPerReq,
			"broker-upstream-dials": float64(br.upstreamDials),
		}
		means.add(b, metrics)
	}
	b.StopTimer()
	means.report(b)
}

// wrkResult is what one wrk run measured, and what the process spent.
type wrkResult struct {
	requests       int64
	rps            float64
	p50, p99       float64 // milliseconds
	cpuPerReq      float64 // µs of this process's CPU time
	redisCPUPerReq float64 // µs of redis-server's CPU time
	logBytesPerReq float64
	upstreamDials  int64
	redis          redisUse
}

func (r wrkResult) String() string {
	return fmt.Sprintf("%d requests, %.0f req/s, p50 %.3f ms, p99 %.3f ms, %.1f µs CPU/req in this process, %d new upstream connections",
		r.requests, r.rps, r.p50, r.p99, r.cpuPerReq, r.upstreamDials)
}

// runWrk runs wrk against target for d and parses its report.
func runWrk(bin string, target benchTarget, d time.Duration) (wrkResult, error) {
	secs := max(int(d.Round(time.Second)/time.Second), 1)
	cmd := exec.Command(bin,
		"-t", strconv.Itoa(*wrkThreads),
		"-c", strconv.Itoa(*wrkConnections),
		"-d", strconv.Itoa(secs)+"s",
		"--timeout", "5s",
		"--latency",
		"-H", "Authorization: "+target.auth,
		target.url,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("%v: %s", err, out)
	}
	return parseWrk(string(out))
}

// parseWrk reads the figures of a wrk --latency report. A run with socket
// errors or non-2xx answers is an error: its throughput means nothing.
func parseWrk(out string) (wrkResult, error) {
	var (
		r                  wrkResult
		haveRPS, have50    bool
		have99, haveTotals bool
	)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 0:
		case f[0] == "Requests/sec:" && len(f) == 2:
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return r, fmt.Errorf("wrk: Requests/sec %q: %v", f[1], err)
			}
			r.rps, haveRPS = v, true
		case (f[0] == "50%" || f[0] == "99%") && len(f) == 2:
			v, err := parseWrkDuration(f[1])
			if err != nil {
				return r, err
			}
			if f[0] == "50%" {
				r.p50, have50 = v, true
			} else {
				r.p99, have99 = v, true
			}
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return r, fmt.Errorf("wrk: request count %q: %v", f[0], err)
			}
			r.requests, haveTotals = n, true
		case f[0] == "Socket" && len(f) > 1 && f[1] == "errors:":
			return r, fmt.Errorf("wrk reported %s", strings.Join(f, " "))
		case f[0] == "Non-2xx":
			return r, fmt.Errorf("wrk reported %s", strings.Join(f, " "))
		}
	}
	if !haveRPS || !have50 || !have99 || !haveTotals || r.requests == 0 {
		return r, fmt.Errorf("wrk report without requests, Requests/sec and 50%%/99%% latency lines:\n%s", out)
	}
	return r, nil
}

// parseWrkDuration turns wrk's "812.00us", "1.20ms", "2.01s" or "1.00m" into
// milliseconds.
func parseWrkDuration(s string) (float64, error) {
	units := []struct {
		suffix string
		ms     float64
	}{{"us", 1e-3}, {"ms", 1}, {"s", 1e3}, {"m", 60e3}, {"h", 3600e3}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return 0, fmt.Errorf("wrk: latency %q: %v", s, err)
			}
			return v * u.ms, nil
		}
	}
	return 0, fmt.Errorf("wrk: latency %q has no known unit", s)
}

// snapshot is the state of the counters a run is measured with.
type snapshot struct {
	commands      map[string]int64 // Redis calls by command, from INFO commandstats
	redisCPU      time.Duration
	cpu           time.Duration // this process, user and system
	upstreamConns int64
	logBytes      int
}

func takeSnapshot(tb testing.TB, env *benchEnv) snapshot {
	tb.Helper()
	ctx := context.Background()
	cmds, err := commandStats(ctx, env.rdb)
	if err != nil {
		tb.Fatal(err)
	}
	redisCPU, err := redisCPUTime(ctx, env.rdb)
	if err != nil {
		tb.Fatal(err)
	}
	return snapshot{
		commands:      cmds,
		redisCPU:      redisCPU,
		cpu:           processCPUTime(),
		upstreamConns: env.upstreamConns.Load(),
		logBytes:      len(env.stack.allLogs()),
	}
}

// commandStats returns the calls of each command so far, by name as Redis
// reports it ("hgetall", "client|setinfo").
func commandStats(ctx context.Context, rdb *redis.Client) (map[string]int64, error) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("INFO commandstats: %w", err)
	}
	calls := map[string]int64{}
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, found := strings.CutPrefix(name, "cmdstat_")
		if !ok || !found {
			continue
		}
		for kv := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("INFO commandstats: %s: %v", line, err)
				}
				calls[name] = n
			}
		}
	}
	return calls, nil
}

// redisCPUTime is the CPU time redis-server has used, user and system.
func redisCPUTime(ctx context.Context, rdb *redis.Client) (time.Duration, error) {
	info, err := rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, fmt.Errorf("INFO cpu: %w", err)
	}
	var total time.Duration
	for line := range strings.SplitSeq(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k == "used_cpu_user" || k == "used_cpu_sys" {
			secs, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("INFO cpu: %s: %v", line, err)
			}
			total += time.Duration(secs * float64(time.Second))
		}
	}
	return total, nil
}

func processCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisUse is what the broker asked of Redis between two snapshots.
type redisUse struct {
	byCommand map[string]int64
	commands  int64 // all but connection set-up
	setup     int64 // HELLO, CLIENT SETINFO...: once per new connection
	writes    int64 // commands that may modify data, scripts included
}

func (u redisUse) String() string {
	parts := make([]string, 0, len(u.byCommand))
	for _, k := range slices.Sorted(maps.Keys(u.byCommand)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, u.byCommand[k]))
	}
	return fmt.Sprintf("commands %s; %d writes, %d for connection set-up", strings.Join(parts, " "), u.writes, u.setup)
}

// setupCommands are what go-redis sends on each new connection, what the
// session cache's invalidation channel sends to open and keep alive, and
// the outbox worker's poll (every 5 s): none of them is per request.
var setupCommands = map[string]bool{
	"hello": true, "client|setinfo": true, "auth": true, "select": true, "ping": true,
	"client|id": true, "client|tracking": true, "subscribe": true,
	"zrangebyscore": true,
}

// redisUseBetween counts the commands run between two snapshots, leaving out
// the INFO calls that took them. A command counts as a write when Redis flags
// it write or may_replicate (the latter covers EVAL and EVALSHA scripts).
func redisUseBetween(tb testing.TB, rdb *redis.Client, before, after snapshot) redisUse {
	tb.Helper()
	u := redisUse{byCommand: map[string]int64{}}
	var table map[string]*redis.CommandInfo
	for name, n := range after.commands {
		d := n - before.commands[name]
		if d == 0 || name == "info" || strings.HasPrefix(name, "command") {
			continue
		}
		u.byCommand[name] = d
		if setupCommands[name] {
			u.setup += d
			continue
		}
		u.commands += d
		if table == nil {
			var err error
			if table, err = rdb.Command(context.Background()).Result(); err != nil {
				tb.Fatalf("COMMAND: %v", err)
			}
		}
		top, _, _ := strings.Cut(name, "|")
		if info, ok := table[top]; !ok || slices.Contains(info.Flags, "write") || slices.Contains(info.Flags, "may_replicate") {
			u.writes += d
		}
	}
	return u
}

// TestProxyRedisPerRequest holds the broker's hot path to its budget: a
// proxied request on a session the replica has cached costs no Redis
// command, one on a session it has not read yet costs one, neither writes,
// and the upstream connections are kept alive.
func TestProxyRedisPerRequest(t *testing.T) {
	env := newBenchEnv(t)
	client := loadClient(8)
	defer client.CloseIdleConnections()
	// One request first, so that the broker's Redis and upstream
	// connections exist and the session is cached.
	if err := get(client, env.broker); err != nil {
		t.Fatalf("GET %s: %v", env.broker.url, err)
	}
	awaitCached(t, client, env)
	before := takeSnapshot(t, env)
	const n = 200
	var (
		wg      sync.WaitGroup
		lastErr atomic.Value
	)
	for range 4 {
		wg.Go(func() {
			for range n / 4 {
				if err := get(client, env.broker); err != nil {
					lastErr.Store(err)
				}
			}
		})
	}
	wg.Wait()
	if err, ok := lastErr.Load().(error); ok {
		t.Fatalf("GET %s: %v", env.broker.url, err)
	}
	after := takeSnapshot(t, env)
	use := redisUseBetween(t, env.rdb, before, after)
	if use.commands > 0 || use.writes > 0 {
		t.Errorf("%d proxied requests on a cached session: %s; want no command", n, use)
	}
	// A connection goes back to the transport's idle pool just after its
	// response was relayed, so a request that follows at once may dial
	// another; without keep-alive every request would.
	if dials := after.upstreamConns - before.upstreamConns; dials > 8 {
		t.Errorf("%d proxied requests on 4 connections opened %d upstream connections, want at most 8", n, dials)
	}

	cold := env.stack.login(env.inst)
	target := env.broker
	target.auth = "Bearer " + cold.Session
	before = takeSnapshot(t, env)
	if err := get(client, target); err != nil {
		t.Fatalf("GET %s: %v", target.url, err)
	}
	after = takeSnapshot(t, env)
	if use := redisUseBetween(t, env.rdb, before, after); use.commands != 1 || use.writes > 0 {
		t.Errorf("the first proxied request of a new session: %s; want one command, no write", use)
	}
}

// awaitCached waits until a proxied request on the bench session costs no
// Redis command: the broker's cache is on and holds it.
func awaitCached(t *testing.T, client *http.Client, env *benchEnv) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := takeSnapshot(t, env)
		if err := get(client, env.broker); err != nil {
			t.Fatalf("GET %s: %v", env.broker.url, err)
		}
		after := takeSnapshot(t, env)
		if redisUseBetween(t, env.rdb, before, after).commands == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("proxied requests still read Redis after 10s: the session cache is not on")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// meanMetrics averages the metrics of a wrk benchmark's b.N runs.
type meanMetrics map[string]float64

func (m meanMetrics) add(b *testing.B, metrics map[string]float64) {
	for k, v := range metrics {
		m[k] += v / float64(b.N)
	}
}

// report reports every mean, in a stable order, and a zero ns/op: the
// length of the wrk runs means nothing here.
func (m meanMetrics) report(b *testing.B) {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		b.ReportMetric(m[k], k)
	}
	b.ReportMetric(0, "ns/op")
}
