package handlers

import (
	"context"
	"maps"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mobile-token-broker/broker/broker"
)

// dependencyMetrics are the figures of what the broker depends on: the IdP,
// Redis and the sessions Redis holds, and the build that runs. Figures
// kept by another package (the session cache's) come in as a collector
// through Metrics.Register.
type dependencyMetrics struct {
	idp    *prometheus.HistogramVec
	redis  *prometheus.HistogramVec
	opened prometheus.Counter
	active *activeSessions
	build  *prometheus.GaugeVec

	// redisSeries caches the observer of each command and outcome, as
	// series does for the requests: Redis commands are on the request
	// path.
	redisSeries   atomic.Pointer[map[[2]string]prometheus.Observer]
	redisSeriesMu sync.Mutex
}

func newDependencyMetrics(reg *prometheus.Registry) *dependencyMetrics {
	d := &dependencyMetrics{
		idp: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "broker_idp_request_duration_seconds",
			Help: "HTTP requests to the identity provider, to the response's headers, by endpoint (discovery, keys, token, userinfo, revocation, other) and outcome (ok, status_4xx, status_5xx, timeout, canceled, network_error).",
			// The IdP timeout is 10 s by default; a refresh grant may wait
			// longer (BROKER_REFRESH_TIMEOUT).
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"endpoint", "outcome"}),
		redis: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "broker_redis_command_duration_seconds",
			Help: "Redis commands, round trip included, by command (a fixed list; pipeline for a pipeline sent at once; other) and outcome: ok (a nil reply included), reply_error (Redis answered an error), error (no answer).",
			// Redis answers in well under a millisecond; the client's
			// timeouts are 2 s.
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"command", "outcome"}),
		opened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "broker_sessions_opened_total",
			Help: "Sessions opened by a code exchange.",
		}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "broker_build_info",
		Help: "The running build: 1, labelled by the module version, the VCS revision and the Go version it was built with, from the binary's build information.",
	}, []string{"version", "revision", "go_version"})
	build.WithLabelValues(buildLabels()).Set(1)
	d.build = build
	reg.MustRegister(d.idp, d.redis, d.opened, build)
	for _, e := range broker.IdPEndpoints {
		d.idp.WithLabelValues(e, broker.IdPOutcomeOK)
	}
	empty := map[[2]string]prometheus.Observer{}
	d.redisSeries.Store(&empty)
	return d
}

// buildLabels reads the version, revision and Go version of the binary;
// "unknown" for what the build did not record (a build without VCS
// stamping has no revision).
func buildLabels() (version, revision, goVersion string) {
	version, revision, goVersion = "unknown", "unknown", runtime.Version()
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	if bi.Main.Version != "" {
		version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		goVersion = bi.GoVersion
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			revision = s.Value
		}
	}
	return
}

// SetBuild replaces the version and revision broker_build_info reads from
// the build information with those the command knows, set at link time
// where the build had no VCS (the image); an empty value keeps "unknown".
func (d *dependencyMetrics) SetBuild(version, revision string) {
	_, _, goVersion := buildLabels()
	if version == "" {
		version = "unknown"
	}
	if revision == "" {
		revision = "unknown"
	}
	d.build.Reset()
	d.build.WithLabelValues(version, revision, goVersion).Set(1)
}

// IdPRequest implements broker.Metrics.
func (d *dependencyMetrics) IdPRequest(endpoint, outcome string, elapsed time.Duration) {
	d.idp.WithLabelValues(endpoint, outcome).Observe(elapsed.Seconds())
}

// RedisCommand times one Redis command (sessions.CommandObserver); the
// labels come from sessions' fixed lists.
func (d *dependencyMetrics) RedisCommand(command, outcome string, elapsed time.Duration) {
	k := [2]string{command, outcome}
	o, ok := (*d.redisSeries.Load())[k]
	if !ok {
		o = d.redisObserver(k)
	}
	o.Observe(elapsed.Seconds())
}

func (d *dependencyMetrics) redisObserver(k [2]string) prometheus.Observer {
	d.redisSeriesMu.Lock()
	defer d.redisSeriesMu.Unlock()
	cur := *d.redisSeries.Load()
	if o, ok := cur[k]; ok {
		return o
	}
	o := d.redis.WithLabelValues(k[0], k[1])
	next := maps.Clone(cur)
	next[k] = o
	d.redisSeries.Store(&next)
	return o
}

// How broker_sessions_active is read: at scrape time, from the store, at
// most once per activeSessionsMaxAge (scrapes in between, from several
// Prometheus servers say, get the value last read), each read given
// activeSessionsTimeout.
const (
	activeSessionsMaxAge  = 10 * time.Second
	activeSessionsTimeout = time.Second
)

// CountSessions has /metrics report broker_sessions_active, read with count
// (the store's session count). A count that fails leaves the gauge out of
// that scrape rather than report a stale figure; the Redis metrics say why.
// Call it once, before the listeners serve.
func (m *Metrics) CountSessions(count func(context.Context) (int64, error)) {
	m.active = &activeSessions{
		count: count,
		desc: prometheus.NewDesc("broker_sessions_active",
			"Sessions that have not reached their absolute expiry, from the store's expiry index, read at most every 10 s; an upper bound: a session that reached its idle timeout unused stays counted until its absolute expiry.",
			nil, nil),
	}
	m.registry.MustRegister(m.active)
}

// Register adds a collector of figures kept elsewhere (the session
// cache's) to the broker's registry, so that /metrics shows them.
func (m *Metrics) Register(c prometheus.Collector) error { return m.registry.Register(c) }

// activeSessions is the collector of broker_sessions_active.
type activeSessions struct {
	count func(context.Context) (int64, error)
	desc  *prometheus.Desc

	mu     sync.Mutex
	value  float64
	readAt time.Time // zero until a read succeeded
}

func (a *activeSessions) Describe(ch chan<- *prometheus.Desc) { ch <- a.desc }

func (a *activeSessions) Collect(ch chan<- prometheus.Metric) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.readAt.IsZero() || time.Since(a.readAt) >= activeSessionsMaxAge {
		ctx, cancel := context.WithTimeout(context.Background(), activeSessionsTimeout)
		n, err := a.count(ctx)
		cancel()
		if err != nil {
			a.readAt = time.Time{}
			return
		}
		a.value, a.readAt = float64(n), time.Now()
	}
	ch <- prometheus.MustNewConstMetric(a.desc, prometheus.GaugeValue, a.value)
}
