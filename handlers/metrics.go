package handlers

import (
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mobile-token-broker/broker/broker"
)

// Metrics is the broker's Prometheus instrumentation: HTTP requests of both
// listeners, the domain's decisions (it implements broker.Metrics) and the
// errors rendered to clients. It has a registry of its own rather than the
// process-wide default, so that several brokers in one process (as in the
// tests) keep their counts apart.
type Metrics struct {
	*dependencyMetrics
	registry    *prometheus.Registry
	requests    *prometheus.CounterVec
	durations   *prometheus.HistogramVec
	exchanges   *prometheus.CounterVec
	refreshes   *prometheus.CounterVec
	revocations *prometheus.CounterVec
	errors      map[broker.Code]prometheus.Counter
	errorsVec   *prometheus.CounterVec
	tunnelsOpen prometheus.Gauge
	tunnelsDone *prometheus.CounterVec
	refusedVec  *prometheus.CounterVec
	dpop        *prometheus.CounterVec

	// series caches the labelled request counter and histogram of each
	// listener, route, method and status met, so that a request costs a
	// map lookup rather than building and hashing label values. The map is
	// replaced, never changed, so that readers take no lock; its size is
	// bounded by the routes, methods and statuses there are.
	series   atomic.Pointer[map[seriesKey]requestSeries]
	seriesMu sync.Mutex
	// proxied holds the route patterns of the proxy, whose responses come
	// from upstreams; it is set before the listeners serve (useProxyRoutes).
	proxied map[string]bool
}

// The sources of a response in broker_http_requests_total.
const (
	sourceBroker   = "broker"
	sourceUpstream = "upstream"
)

// useProxyRoutes tells m which route patterns are proxied.
func (m *Metrics) useProxyRoutes(patterns ...string) {
	if m.proxied == nil {
		m.proxied = make(map[string]bool)
	}
	for _, p := range patterns {
		m.proxied[p] = true
	}
}

var _ broker.Metrics = (*Metrics)(nil)

type seriesKey struct {
	listener, route, method string
	status                  int
	// brokerError is set when the broker rendered the response as an
	// error of its own (BrokerErrorHeader).
	brokerError bool
}

type requestSeries struct {
	count    prometheus.Counter
	duration prometheus.Observer
}

// The outcomes and reasons the broker reports, created at zero so that a
// dashboard or alert sees every series from the start.
var (
	exchangeOutcomes  = []string{"ok", "rejected", "idp_unavailable", "store_unavailable"}
	refreshOutcomes   = []string{"ok", "failed", "rejected", "coalesced"}
	revocationReasons = []string{"logout", "admin", "user_revoke", "backchannel_logout", "refresh_rejected", "expired"}
	errorCodes        = []broker.Code{
		broker.CodeInvalidRequest, broker.CodeInvalidGrant, broker.CodeInvalidToken, broker.CodeNotFound,
		broker.CodeRateLimited, broker.CodeUpstreamUnavailable, broker.CodeIdPUnavailable,
		broker.CodeStoreUnavailable, broker.CodeInternal, broker.CodeInvalidDPoPProof, broker.CodeUseDPoPNonce,
	}
)

// NewMetrics returns the broker's metrics on a new registry that also holds
// the Go runtime and process collectors.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		dependencyMetrics: newDependencyMetrics(reg),
		registry:          reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_http_requests_total",
			Help: "HTTP requests answered, by listener (public or admin), route pattern (\"unmatched\" for no route), method, status (499: the client went away first) and source: upstream for a status an upstream answered through the proxy, broker for the broker's own answers.",
		}, []string{"listener", "route", "method", "status", "source"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "broker_http_request_duration_seconds",
			Help: "Time from the request to the end of the response, by listener and route pattern; proxied responses count until the upstream's body is relayed.",
			// The default buckets stop at 10s; proxied calls and IdP round
			// trips may take longer.
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"listener", "route"}),
		exchanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_exchanges_total",
			Help: "Code exchanges (POST /v1/sessions), by outcome.",
		}, []string{"outcome"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_refreshes_total",
			Help: "Access token refreshes, by outcome: ok, failed (IdP or store unavailable), rejected (the IdP ended the grant), coalesced (waited for a refresh that another request, on this replica or another, ran).",
		}, []string{"outcome"}),
		revocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_sessions_ended_total",
			Help: "Sessions ended, by reason: logout, admin (one session), user_revoke (all of a user's), backchannel_logout, refresh_rejected, expired (found past its idle or absolute end when used).",
		}, []string{"reason"}),
		errorsVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_errors_total",
			Help: "Error responses rendered, by contract error code.",
		}, []string{"code"}),
		errors: make(map[broker.Code]prometheus.Counter, len(errorCodes)),
		tunnelsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "broker_websocket_tunnels_open",
			Help: "Proxied WebSocket tunnels open now.",
		}),
		tunnelsDone: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_websocket_tunnels_closed_total",
			Help: "Proxied WebSocket tunnels closed, by reason: closed (by either end), session_ended, max_lifetime, check_failed (the session store did not answer), shutdown (the broker stopped).",
		}, []string{"reason"}),
		refusedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_connections_refused_total",
			Help: "Connections closed as soon as accepted, by listener and the cap that was reached: max_connections or max_connections_per_client.",
		}, []string{"listener", "reason"}),
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.requests, m.durations, m.exchanges, m.refreshes, m.revocations, m.errorsVec,
		m.tunnelsOpen, m.tunnelsDone, m.refusedVec,
	)
	m.dpop = newDPoPCounter(reg)
	// The admin listener has no per-client cap.
	m.refusedVec.WithLabelValues("public", refusedMax)
	m.refusedVec.WithLabelValues("public", refusedPerClient)
	m.refusedVec.WithLabelValues("admin", refusedMax)
	for _, o := range exchangeOutcomes {
		m.exchanges.WithLabelValues(o)
	}
	for _, o := range refreshOutcomes {
		m.refreshes.WithLabelValues(o)
	}
	for _, r := range revocationReasons {
		m.revocations.WithLabelValues(r)
	}
	for _, c := range errorCodes {
		m.errors[c] = m.errorsVec.WithLabelValues(string(c))
	}
	for _, r := range tunnelCloseReasons {
		m.tunnelsDone.WithLabelValues(r)
	}
	empty := map[seriesKey]requestSeries{}
	m.series.Store(&empty)
	return m
}

// Registry is where the broker's metrics live, for a caller that serves or
// extends them elsewhere.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Exchange implements broker.Metrics.
func (m *Metrics) Exchange(outcome string) {
	m.exchanges.WithLabelValues(outcome).Inc()
	if outcome == "ok" {
		m.opened.Inc()
	}
}

// Refresh implements broker.Metrics.
func (m *Metrics) Refresh(outcome string) { m.refreshes.WithLabelValues(outcome).Inc() }

// Revocation implements broker.Metrics.
func (m *Metrics) Revocation(reason string) { m.revocations.WithLabelValues(reason).Inc() }

// tunnelOpened counts a WebSocket tunnel that opened; a nil m counts
// nothing.
func (m *Metrics) tunnelOpened() {
	if m != nil {
		m.tunnelsOpen.Inc()
	}
}

// tunnelClosed counts a WebSocket tunnel that closed, and why.
func (m *Metrics) tunnelClosed(reason string) {
	if m != nil {
		m.tunnelsOpen.Dec()
		m.tunnelsDone.WithLabelValues(reason).Inc()
	}
}

// errorRendered counts an error response.
func (m *Metrics) errorRendered(code broker.Code) {
	if c, ok := m.errors[code]; ok {
		c.Inc()
		return
	}
	m.errorsVec.WithLabelValues(string(code)).Inc()
}

// connectionRefused counts a connection refused at a cap.
func (m *Metrics) connectionRefused(listener, reason string) {
	m.refusedVec.WithLabelValues(listener, reason).Inc()
}

// handler serves the registry in the Prometheus text format.
func (m *Metrics) handler(log *slog.Logger) echo.HandlerFunc {
	return echo.WrapHandler(promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		Registry: m.registry,
	}))
}

// observe counts and times every request of a listener. It renders an
// error the handlers returned itself, so that the status it reads is final.
func (m *Metrics) observe(listener string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if err := next(c); err != nil {
				c.Error(err)
			}
			st := finished(c)
			s := m.seriesOf(seriesKey{
				listener:    listener,
				route:       c.Path(),
				method:      methodLabel(c.Request().Method),
				status:      st.status,
				brokerError: len(c.Response().Header()[BrokerErrorHeader]) > 0,
			})
			s.count.Inc()
			s.duration.Observe(st.elapsed.Seconds())
			return nil
		}
	}
}

func (m *Metrics) seriesOf(k seriesKey) requestSeries {
	if s, ok := (*m.series.Load())[k]; ok {
		return s
	}
	m.seriesMu.Lock()
	defer m.seriesMu.Unlock()
	cur := *m.series.Load()
	if s, ok := cur[k]; ok {
		return s
	}
	route := k.route
	if route == "" {
		route = "unmatched"
	}
	// A proxied route's response is the upstream's unless the broker
	// answered it itself: an error it rendered, or a client that went away.
	source := sourceBroker
	if m.proxied[k.route] && !k.brokerError && k.status != statusClientClosed {
		source = sourceUpstream
	}
	s := requestSeries{
		count:    m.requests.WithLabelValues(k.listener, route, k.method, strconv.Itoa(k.status), source),
		duration: m.durations.WithLabelValues(k.listener, route),
	}
	next := maps.Clone(cur)
	next[k] = s
	m.series.Store(&next)
	return s
}

// methodLabel keeps the method label bounded: the proxy passes any method
// on, and a client may invent its own.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return "other"
}
