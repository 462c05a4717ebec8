package main

import (
	"context"
	"fmt"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The replica benchmarks run 1, 2 and 3 brokers on one stack (one Redis, one
// IdP, one upstream) and spread the same load across them, with one session
// shared by all. They show what one more replica costs or gains on this
// machine and that the hot path stays at one Redis command per request
// whatever the number of replicas.
//
//	go test -run='^$' -bench='^BenchmarkProxyReplicas$' -benchtime=5s ./cmd/broker/
//	go test -run='^$' -bench='^BenchmarkProxyReplicasWrk$' -benchtime=1x ./cmd/broker/
//
// Every broker, the clients and Redis share this machine's cores: on a small
// machine more replicas cannot add throughput, only show whether anything
// degrades.

// replicaCounts are the numbers of brokers the replica benchmarks run.
var replicaCounts = []int{1, 2, 3}

// replicaTargets returns the first n brokers of env's stack as targets,
// starting more brokers if the stack has fewer.
func replicaTargets(tb testing.TB, env *benchEnv, n int) []benchTarget {
	tb.Helper()
	for len(env.stack.brokers) < n {
		pprof.Do(context.Background(), pprof.Labels("role", "broker"), func(context.Context) { env.stack.start() })
	}
	targets := make([]benchTarget, n)
	for i, inst := range env.stack.brokers[:n] {
		targets[i] = benchTarget{
			name: "broker-" + strconv.Itoa(i+1),
			url:  inst.base + "/api/items/42?fields=all",
			auth: env.broker.auth,
		}
	}
	return targets
}

// BenchmarkProxyReplicas drives GET requests through 1, 2 and then 3 brokers
// with benchClients concurrent keep-alive clients in this process, each
// client sending its requests to the brokers in turn, and reports throughput
// and latency percentiles as BenchmarkProxy does, with the Redis commands
// per request over all brokers (redis-cmds/op).
func BenchmarkProxyReplicas(b *testing.B) {
	env := newBenchEnv(b)
	for _, n := range replicaCounts {
		targets := replicaTargets(b, env, n)
		b.Run("brokers="+strconv.Itoa(n), func(b *testing.B) {
			benchParallel(b, env, targets...)
		})
	}
}

// BenchmarkProxyReplicasWrk loads 1, 2 and then 3 brokers with one wrk
// process per broker, all running at once and sharing -wrk.connections
// between them, each after an unmeasured concurrent warm-up run. It reports
// the summed requests per second, the worst p50 and p99 among the wrk
// processes (wrk's percentiles cannot be merged), the CPU time this process
// spent per request (all brokers plus the upstream) and the Redis commands
// per request. Run it once: -benchtime=1x.
func BenchmarkProxyReplicasWrk(b *testing.B) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not in PATH: install it (apt-get install wrk, brew install wrk) to run this benchmark")
	}
	env := newBenchEnv(b)
	for _, n := range replicaCounts {
		targets := replicaTargets(b, env, n)
		b.Run("brokers="+strconv.Itoa(n), func(b *testing.B) {
			benchReplicasWrk(b, env, bin, targets)
		})
	}
}

func benchReplicasWrk(b *testing.B, env *benchEnv, bin string, targets []benchTarget) {
	b.ResetTimer()
	means := meanMetrics{}
	for range b.N {
		if _, err := runWrkReplicas(bin, targets, *wrkWarmup); err != nil {
			b.Fatalf("wrk warm-up: %v", err)
		}
		before := takeSnapshot(b, env)
		res, err := runWrkReplicas(bin, targets, *wrkDuration)
		if err != nil {
			b.Fatalf("wrk: %v", err)
		}
		after := takeSnapshot(b, env)
		var total wrkResult
		for i, r := range res {
			b.Logf("%s: %d requests, %.0f req/s, p50 %.3f ms, p99 %.3f ms", targets[i].name, r.requests, r.rps, r.p50, r.p99)
			total.requests += r.requests
			total.rps += r.rps
			total.p50 = max(total.p50, r.p50)
			total.p99 = max(total.p99, r.p99)
		}
		// wrk does not count the requests in flight when it stops, Redis
		// does: expect redis-cmds/req a little above 1.
		use := redisUseBetween(b, env.rdb, before, after)
		b.Logf("all: %d requests, %.0f req/s; Redis %s", total.requests, total.rps, use)
		metrics := map[string]float64{
			"req/s":          total.rps,
			"p50-ms":         total.p50,
			"p99-ms":         total.p99,
			"cpu-us/req":     float64(after.cpu-before.cpu) / float64(time.Microsecond) / float64(total.requests),
			"redis-cmds/req": float64(use.commands) / float64(total.requests),
			"redis-writes":   float64(use.writes),
		}
		means.add(b, metrics)
	}
	b.StopTimer()
	means.report(b)
}

// runWrkReplicas runs one wrk process per target at once for d, sharing
// -wrk.connections and -wrk.threads between them, and returns their reports
// in the order of targets.
func runWrkReplicas(bin string, targets []benchTarget, d time.Duration) ([]wrkResult, error) {
	n := len(targets)
	threads := max(*wrkThreads/n, 1)
	secs := max(int(d.Round(time.Second)/time.Second), 1)
	results := make([]wrkResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, target := range targets {
		// The first connections%n processes take one connection more.
		conns := *wrkConnections / n
		if i < *wrkConnections%n {
			conns++
		}
		conns = max(conns, threads)
		wg.Go(func() {
			cmd := exec.Command(bin,
				"-t", strconv.Itoa(threads),
				"-c", strconv.Itoa(conns),
				"-d", strconv.Itoa(secs)+"s",
				"--timeout", "5s",
				"--latency",
				"-H", "Authorization: "+target.auth,
				target.url,
			)
			out, err := cmd.CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("%s: %v: %s", target.name, err, out)
				return
			}
			if results[i], err = parseWrk(string(out)); err != nil {
				errs[i] = fmt.Errorf("%s: %w", target.name, err)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return results, nil
}
