package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/mobile-token-broker/broker/console"
	"github.com/mobile-token-broker/broker/handlers"
	"github.com/mobile-token-broker/broker/migrations"
	"github.com/mobile-token-broker/broker/sessions"
)

// errStoreNotChecked keeps the broker unready until the store's schema has
// been checked.
var errStoreNotChecked = errors.New("the session store's schema is not checked yet")

// shutdownGrace is how long requests in flight may take after SIGTERM.
const shutdownGrace = 30 * time.Second

// upstreamConns is room for the file descriptors the broker holds besides
// its listeners' connections: the upstream transport's idle connections
// (up to 1024) and those in use, Redis, the IdP, logs.
const upstreamConns = 2048

// hooks let tests observe and steer a broker run; production passes nil.
type hooks struct {
	// listening receives the bound public and admin addresses.
	listening func(public, admin string)
	// now replaces the wall clock.
	now func() time.Time
	// tracerProvider receives the tracer provider when tracing is on.
	tracerProvider func(*sdktrace.TracerProvider)
	// service adjusts the broker's configuration before it starts.
	service func(*broker.Config)
	// bodies replaces the default body limits.
	bodies handlers.BodyLimits
}

func serve(ctx context.Context, getenv func(string) string, _, stderr io.Writer, h *hooks) error {
	getenv, err := resolveEnv(getenv)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(getenv, true)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	redis.SetLogger(redisLogger{log})
	warnSettings(log, cfg, getenv)
	rdb, err := sessions.NewClient(cfg.RedisURL)
	if err != nil {
		return fmt.Errorf("BROKER_REDIS_URL: %w", err)
	}
	defer rdb.Close()
	return runBroker(ctx, cfg, rdb, cfg.EncryptionKeys.Keyring, log, h)
}

// Waiting for the store at start.
const (
	// firstStoreCheck bounds the check of the store made before listening.
	firstStoreCheck = 2 * time.Second
	// storeRetry is how often an unreachable store is tried again: a store
	// that comes up is in use within about this, plus go-redis's own pace
	// of redialling (1 s).
	storeRetry = 100 * time.Millisecond
	// storeWarnEvery spaces the warnings about a store still unreachable.
	storeWarnEvery = 30 * time.Second
)

// schemaMismatch reports an error of migrations.Check that waiting does not
// cure: the store's layout is not the one this broker knows.
func schemaMismatch(err error) bool {
	return errors.Is(err, migrations.ErrStoreOlder) || errors.Is(err, migrations.ErrStoreNewer)
}

// checkStoreOnce checks the store's schema once, within firstStoreCheck.
// A store one version behind passes, as it is served, with a warning: it
// still needs `broker migrate`.
func checkStoreOnce(ctx context.Context, rdb redis.UniversalClient, log *slog.Logger) error {
	cctx, cancel := context.WithTimeout(ctx, firstStoreCheck)
	defer cancel()
	v, err := migrations.Current(cctx, rdb)
	if err != nil {
		return err
	}
	if err := migrations.Compatible(v); err != nil {
		return err
	}
	if latest := migrations.Latest(); v < latest {
		log.Warn(fmt.Sprintf("store schema version %d is one behind this broker's %d: served, writing the old layout; run `broker migrate` once no broker of the previous release serves it", v, latest),
			"schema_version", v, "latest_schema_version", latest)
	}
	return nil
}

// waitForStore checks the store's schema until it passes, then sets ready;
// it returns the error of a schema mismatch, nil when it passed or ctx
// ended. It never gives up on an unreachable store: an orchestrator sees
// the broker unready (/readyz) meanwhile, not a crash loop.
func waitForStore(ctx context.Context, rdb redis.UniversalClient, ready *atomic.Bool, log *slog.Logger) error {
	lastWarn := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(storeRetry):
		}
		err := checkStoreOnce(ctx, rdb, log)
		switch {
		case err == nil:
			ready.Store(true)
			log.Info("session store reachable")
			return nil
		case schemaMismatch(err):
			return err
		case ctx.Err() != nil:
			return nil
		case time.Since(lastWarn) >= storeWarnEvery:
			lastWarn = time.Now()
			log.Warn("session store still not reachable, retrying", "error", err)
		}
	}
}

// runBroker wires the broker and serves until ctx ends, then shuts down
// gracefully.
func runBroker(ctx context.Context, cfg *config, rdb redis.UniversalClient, keys *sessions.Keyring, log *slog.Logger, h *hooks) error {
	if h == nil {
		h = &hooks{}
	}
	if h.now == nil {
		h.now = time.Now
	}
	// Every line logged with a request's context carries its request id,
	// the broker package's included.
	log = slog.New(handlers.NewLogHandler(log.Handler()))
	redis.SetLogger(redisLogger{log})
	// A store that answers is checked before listening, so that one of
	// another schema stops the broker before it takes traffic; one that
	// does not answer yet is waited for in the background, the listeners
	// and probes up meanwhile.
	var storeReady atomic.Bool
	switch err := checkStoreOnce(ctx, rdb, log); {
	case err == nil:
		storeReady.Store(true)
	case schemaMismatch(err), ctx.Err() != nil:
		return err
	default:
		log.Warn("session store not reachable yet: listening meanwhile, /readyz answers 503 until it is", "error", err)
	}
	tp, err := newTracerProvider(ctx, cfg)
	if err != nil {
		return err
	}
	if tp != nil {
		defer func() {
			// Flush the spans still batched; an unreachable collector must
			// not hold up the exit for long.
			sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer scancel()
			if err := tp.Shutdown(sctx); err != nil {
				log.Warn("flushing traces failed", "error", err)
			}
		}()
		if h.tracerProvider != nil {
			h.tracerProvider(tp)
		}
	}
	store := sessions.New(rdb, keys, sessions.Options{Now: h.now, Cache: cfg.cacheOptions(), Logger: log})
	// After the service's background work, which reads the store, and
	// before the Redis client closes.
	defer store.Close()
	metrics := handlers.NewMetrics()
	if err := metrics.Register(cacheCollector{store.CacheStats}); err != nil {
		return err
	}
	bv := readBuildVersion()
	metrics.SetBuild(bv.Version, bv.Revision)
	sessions.Instrument(rdb, metrics)
	metrics.CountSessions(store.CountSessions)
	// The security console's overview counts the last hour from the
	// figures the service reports.
	activity := console.NewActivity(metrics, h.now)
	bcfg := broker.Config{
		Issuer:       cfg.Issuer,
		ClientID:     cfg.ClientID,
		ClientSecret: cfg.ClientSecret,
		RedirectURIs: cfg.RedirectURIs,
		IdleTimeout:  time.Duration(cfg.IdleTimeout),
		MaxLifetime:  time.Duration(cfg.MaxLifetime),
		RefreshSkew:  time.Duration(cfg.RefreshSkew),
		Store:        store,
		Locker:       store,
		Audit:        store,
		Replay:       store,
		// Nonces are sealed under the session keyring, which every
		// replica shares, so that any replica accepts any one's nonce.
		DPoP:    broker.DPoPConfig{Mode: string(cfg.DPoP), Algorithms: cfg.DPoPAlgorithms, Nonces: keys, Metrics: metrics},
		Logger:  log,
		Now:     h.now,
		Metrics: activity,
	}
	if h.service != nil {
		h.service(&bcfg)
	}
	svc, err := broker.New(bcfg)
	if err != nil {
		return err
	}
	// The service's background work (refreshes, rotated tokens still to be
	// stored, revocations, the outbox) uses the Redis client, which the
	// caller closes after this returns: wait for that work first, within
	// the shutdown grace, which the HTTP servers' shutdown shares.
	var graceEnd time.Time
	defer func() {
		if graceEnd.IsZero() {
			graceEnd = time.Now().Add(shutdownGrace)
		}
		cctx, ccancel := context.WithDeadline(context.WithoutCancel(ctx), graceEnd)
		defer ccancel()
		if err := svc.Close(cctx); err != nil {
			log.Warn("background work did not finish within the shutdown grace", "error", err)
		}
	}()
	proxy, err := handlers.NewProxy(handlers.ProxyConfig{
		Routes:          cfg.Routes,
		Tokens:          svc,
		UpstreamTimeout: time.Duration(cfg.UpstreamTimeout),
		TrustedProxies:  cfg.TrustedProxies,
		Logger:          log,
		TracerProvider:  tracerProviderOrNil(tp),
	})
	if err != nil {
		return err
	}
	con, err := console.New(console.Config{
		Service:        svc,
		ActiveSessions: store.CountSessions,
		Ping:           store.Ping,
		Activity:       activity,
		Now:            h.now,
		Logger:         log,
	})
	if err != nil {
		return err
	}
	srv, err := handlers.New(handlers.Config{
		Service:           svc,
		Proxy:             proxy,
		TrustedProxies:    cfg.TrustedProxies,
		RateLimiter:       sessions.NewRateLimiter(rdb),
		ExchangeRate:      handlers.Rate(cfg.RateExchange),
		InvalidHandleRate: handlers.Rate(cfg.RateInvalid),
		BackchannelRate:   handlers.Rate(cfg.RateBackchannel),
		ClientIPv6Prefix:  int(cfg.ClientIPv6Prefix),
		Bodies:            h.bodies,
		Ping: func(ctx context.Context) error {
			if !storeReady.Load() {
				return errStoreNotChecked
			}
			return store.Ping(ctx)
		},
		AdminTokens:    cfg.AdminTokens,
		Console:        con,
		Metrics:        metrics,
		TracerProvider: tracerProviderOrNil(tp),
		Logger:         log,
	})
	if err != nil {
		return err
	}
	if len(cfg.AdminTokens) == 0 {
		log.Warn("BROKER_ADMIN_TOKENS is not set: every /admin/v1/ call will get 401")
	}
	for _, w := range handlers.AdminTokenWarnings(cfg.AdminTokens) {
		log.Warn(w)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go svc.DiscoverUntilReady(ctx)

	public, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("BROKER_LISTEN: %w", err)
	}
	admin, err := net.Listen("tcp", cfg.AdminListen)
	if err != nil {
		public.Close()
		return fmt.Errorf("BROKER_ADMIN_LISTEN: %w", err)
	}
	maxConns := cmp.Or(int(cfg.MaxConnections), handlers.DefaultMaxConnections)
	public = handlers.LimitListener(public, handlers.ConnLimits{
		Name:       "public",
		Max:        maxConns,
		PerClient:  cmp.Or(int(cfg.MaxConnectionsPerClient), handlers.DefaultMaxConnectionsPerClient),
		IPv6Prefix: int(cfg.ClientIPv6Prefix),
		Exempt:     cfg.TrustedProxies,
		Metrics:    metrics,
		Logger:     log,
	})
	admin = handlers.LimitListener(admin, handlers.ConnLimits{Name: "admin", Max: handlers.AdminMaxConnections, Metrics: metrics, Logger: log})
	warnFileLimit(log, maxConns+handlers.AdminMaxConnections+upstreamConns)
	if h.listening != nil {
		h.listening(public.Addr().String(), admin.Addr().String())
	}
	servers := []*http.Server{newHTTPServer(srv.Public, log), newHTTPServer(srv.Admin, log)}
	// Shutdown does not see hijacked connections: close the WebSocket
	// tunnels when it begins, so clients reconnect to another replica.
	servers[0].RegisterOnShutdown(proxy.CloseTunnels)
	errc := make(chan error, 3)
	tlsOn := cfg.TLSCert != ""
	go func() {
		if tlsOn {
			// ServeTLS offers h2 and http/1.1 by ALPN.
			errc <- servers[0].ServeTLS(public, cfg.TLSCert, cfg.TLSKey)
			return
		}
		errc <- servers[0].Serve(public)
	}()
	go func() { errc <- servers[1].Serve(admin) }()
	if !storeReady.Load() {
		go func() {
			if err := waitForStore(ctx, rdb, &storeReady, log); err != nil {
				errc <- err
			}
		}()
	}
	log.Info("broker listening", "public", public.Addr().String(), "admin", admin.Addr().String(), "tls", tlsOn, "tracing", tp != nil, "issuer", cfg.Issuer, "routes", len(cfg.Routes))

	var stopErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		cancel()
		if !schemaMismatch(err) {
			return fmt.Errorf("listener stopped: %w", err)
		}
		stopErr = err
	}
	log.Info("shutting down, finishing requests in flight", "grace", shutdownGrace)
	graceEnd = time.Now().Add(shutdownGrace)
	sctx, scancel := context.WithDeadline(context.WithoutCancel(ctx), graceEnd)
	defer scancel()
	errs := []error{stopErr}
	for _, s := range servers {
		if err := s.Shutdown(sctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler: h,
		// TLS 1.2 at least, with Go's default cipher suites, which keep
		// HTTP/2's required suites available.
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12},
		// No read or write timeout: proxied bodies stream both ways for as
		// long as they keep moving. The handlers give request bodies their
		// deadlines (handlers.BodyLimits).
		ReadHeaderTimeout: handlers.ReadHeaderTimeout,
		MaxHeaderBytes:    handlers.MaxHeaderBytes,
		IdleTimeout:       120 * time.Second,
		HTTP2: &http.HTTP2Config{
			// One connection cannot hold more handlers than this, each
			// bounded by the body deadlines.
			MaxConcurrentStreams: handlers.HTTP2MaxConcurrentStreams,
			// A connection that sends nothing for 30 s is pinged, and
			// closed if the ping is not answered within 15 s; one whose
			// client reads nothing of what is written for 60 s is closed.
			SendPingTimeout:  30 * time.Second,
			PingTimeout:      15 * time.Second,
			WriteByteTimeout: 60 * time.Second,
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// newTracerProvider returns an OpenTelemetry tracer provider exporting over
// OTLP/HTTP when an endpoint is configured, nil otherwise: without one the
// broker starts no span at all.
func newTracerProvider(ctx context.Context, cfg *config) (*sdktrace.TracerProvider, error) {
	endpoint := cfg.tracesEndpoint()
	if endpoint == "" {
		return nil, nil
	}
	// The endpoint is passed explicitly because the broker reads its
	// settings through getenv; the exporter still reads the other standard
	// variables (headers, timeout, compression, certificates) itself.
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(endpoint))
	if err != nil {
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", cfg.OTelServiceName)))
	if err != nil {
		return nil, fmt.Errorf("OpenTelemetry resource: %w", err)
	}
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}

// tracerProviderOrNil keeps a nil provider an untyped nil interface, which
// the handlers read as "tracing off".
func tracerProviderOrNil(tp *sdktrace.TracerProvider) trace.TracerProvider {
	if tp == nil {
		return nil
	}
	return tp
}
