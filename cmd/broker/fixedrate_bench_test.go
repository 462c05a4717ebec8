package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkProxyFixedRate sends GET requests to the plain proxy and to the
// broker at a fixed rate and reports the latency the broker adds:
//
//	go test -run='^$' -bench='^BenchmarkProxyFixedRate$' -benchtime=1x ./cmd/broker/
//
// The load is open: request i is due at start + i/rate whatever happened to
// the ones before, is sent as soon as the generator gets to it, and its
// latency counts from when it was due, so that a stall shows in the
// figures instead of slowing the load down (no coordinated omission). Each
// round runs both targets, each after an unmeasured warm-up, in an order
// that alternates from round to round; the figures are medians over the
// rounds: each target's p50, p99, p99.9 and max, and added-p50-ms and
// added-p99-ms, the medians of the rounds' broker minus plain. gen-lag-p99-ms
// is how late the generator sent the requests (already counted in the
// latencies); a large one means the machine could not keep the rate. The
// generator runs in this process, next to both proxies.

var (
	rateRPS      = flag.Int("rate.rps", 2000, "BenchmarkProxyFixedRate: requests per second")
	rateDuration = flag.Duration("rate.duration", 10*time.Second, "BenchmarkProxyFixedRate: length of each measured run")
	rateWarmup   = flag.Duration("rate.warmup", 2*time.Second, "BenchmarkProxyFixedRate: length of the unmeasured run before each measured one")
	rateRounds   = flag.Int("rate.rounds", 3, "BenchmarkProxyFixedRate: interleaved rounds")
)

// rateMaxConns bounds the connections the fixed-rate load opens to a
// target.
const rateMaxConns = 128

// rateResult is what one fixed-rate run measured, in milliseconds.
type rateResult struct {
	requests              int
	p50, p99, p999, worst float64
	lagP99                float64
}

func BenchmarkProxyFixedRate(b *testing.B) {
	env := newBenchEnv(b)
	client := loadClient(rateMaxConns)
	// A stall must not open more connections than the broker lets one
	// client address have (handlers.DefaultMaxConnectionsPerClient): the
	// requests beyond wait for a connection, their wait counted.
	client.Transport.(*http.Transport).MaxConnsPerHost = rateMaxConns
	defer client.CloseIdleConnections()
	targets := []benchTarget{env.plain, env.broker}
	runs := map[string][]rateResult{}
	var addedP50, addedP99 []float64
	b.ResetTimer()
	for round := range max(*rateRounds, 1) {
		m := map[string]rateResult{}
		for i := range targets {
			t := targets[(i+round)%len(targets)]
			if _, err := openLoop(client, t, *rateRPS, *rateWarmup); err != nil {
				b.Fatalf("warm-up on %s: %v", t.name, err)
			}
			res, err := openLoop(client, t, *rateRPS, *rateDuration)
			if err != nil {
				b.Fatalf("%s: %v", t.name, err)
			}
			b.Logf("round %d %-6s %d requests at %d/s: p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms; generator late by %.3f ms at p99",
				round+1, t.name, res.requests, *rateRPS, res.p50, res.p99, res.p999, res.worst, res.lagP99)
			m[t.name] = res
			runs[t.name] = append(runs[t.name], res)
		}
		addedP50 = append(addedP50, m["broker"].p50-m["plain"].p50)
		addedP99 = append(addedP99, m["broker"].p99-m["plain"].p99)
	}
	b.StopTimer()
	for _, t := range targets {
		rs := runs[t.name]
		b.ReportMetric(median(rs, func(r rateResult) float64 { return r.p50 }), t.name+"-p50-ms")
		b.ReportMetric(median(rs, func(r rateResult) float64 { return r.p99 }), t.name+"-p99-ms")
		b.ReportMetric(median(rs, func(r rateResult) float64 { return r.p999 }), t.name+"-p99.9-ms")
		b.ReportMetric(median(rs, func(r rateResult) float64 { return r.worst }), t.name+"-max-ms")
		b.ReportMetric(median(rs, func(r rateResult) float64 { return r.lagP99 }), t.name+"-gen-lag-p99-ms")
	}
	ident := func(v float64) float64 { return v }
	b.ReportMetric(median(addedP50, ident), "added-p50-ms")
	b.ReportMetric(median(addedP99, ident), "added-p99-ms")
	b.ReportMetric(float64(*rateRPS), "req/s")
	b.ReportMetric(0, "ns/op")
}

// openLoop sends GET requests to target at rate per second for d, each on
// its own goroutine as soon as it is due, and returns the latency
// percentiles counted from the moments the requests were due.
func openLoop(client *http.Client, target benchTarget, rate int, d time.Duration) (rateResult, error) {
	interval := time.Second / time.Duration(rate)
	n := int(d / interval)
	if n == 0 {
		return rateResult{}, errors.New("the run is shorter than one interval")
	}
	latencies := make([]time.Duration, n)
	lags := make([]time.Duration, n)
	var (
		wg       sync.WaitGroup
		failures atomic.Int64
		lastErr  atomic.Value
	)
	pprof.Do(context.Background(), pprof.Labels("role", "client"), func(context.Context) {
		start := time.Now()
		for i := range n {
			due := start.Add(time.Duration(i) * interval)
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
			lags[i] = time.Since(due)
			wg.Go(func() {
				if err := get(client, target); err != nil {
					failures.Add(1)
					lastErr.Store(err)
				}
				latencies[i] = time.Since(due)
			})
		}
		wg.Wait()
	})
	if f := failures.Load(); f > 0 {
		return rateResult{}, fmt.Errorf("%d of %d requests failed, last: %v", f, n, lastErr.Load())
	}
	return rateResult{
		requests: n,
		p50:      percentile(latencies, 0.50),
		p99:      percentile(latencies, 0.99),
		p999:     percentile(latencies, 0.999),
		worst:    percentile(latencies, 1),
		lagP99:   percentile(lags, 0.99),
	}, nil
}
