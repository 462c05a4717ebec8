// Package handlers is the HTTP edge of the broker: Echo routes, request
// parsing, the one error renderer, the reverse proxy, and the admin and probe
// endpoints. It turns requests into calls of the broker package and broker
// errors into the contract's responses.
package handlers

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/trace"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/mobile-token-broker/broker/console"
)

// maxBodyBytes caps request bodies on /v1/* (the contract's 64 KiB).
const maxBodyBytes = 64 << 10

// Config wires the HTTP edge to the domain.
type Config struct {
	Service        *broker.Service
	Proxy          *Proxy
	TrustedProxies []netip.Prefix
	// RateLimiter, when set, enforces ExchangeRate on POST /v1/sessions,
	// InvalidHandleRate on requests with an unknown or ended handle and
	// BackchannelRate on POST /v1/backchannel-logout, per client IP.
	RateLimiter       RateLimiter
	ExchangeRate      Rate
	InvalidHandleRate Rate
	BackchannelRate   Rate
	// Bodies bound the time request bodies may take; zero fields take the
	// defaults of BodyLimits.
	Bodies BodyLimits
	// ClientIPv6Prefix is how many leading bits of an IPv6 client address
	// share one budget; zero means DefaultIPv6Prefix. IPv4 clients are
	// counted per address.
	ClientIPv6Prefix int
	// Ping reports whether the session store answers, for /readyz.
	Ping func(context.Context) error
	// AdminTokens are the bearer tokens of the admin API; none closes it.
	AdminTokens []AdminToken
	// Console, when set, is served under /console/ on the admin listener,
	// its sign-ins admitted with AdminTokens.
	Console *console.Console
	// Metrics receives the HTTP metrics and serves GET /metrics; pass the
	// one given to broker.Config to have the domain's counts there too.
	// Default: a new one with the HTTP metrics only.
	Metrics *Metrics
	// TracerProvider, when set, traces every request of both listeners
	// (OpenTelemetry, W3C trace context). Nil means no tracing and no cost.
	TracerProvider trace.TracerProvider
	// Logger receives the access log and errors; wrap its handler with
	// NewLogHandler to have request ids on every line.
	Logger *slog.Logger
}

// Server holds the two Echo instances: the public one for apps and the admin
// one for operators.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	Public  *echo.Echo
	Admin   *echo.Echo
}

// New builds the public and admin handlers.
func New(cfg Config) (*Server, error) {
	if cfg.Service == nil || cfg.Proxy == nil || cfg.Ping == nil {
		return nil, errors.New("handlers: service, proxy and ping are required")
	}
	if cfg.ClientIPv6Prefix < 0 || cfg.ClientIPv6Prefix > 128 {
		return nil, errors.New("handlers: the client IPv6 prefix must be from 0 (the default) to 128 bits")
	}
	if cfg.ClientIPv6Prefix == 0 {
		cfg.ClientIPv6Prefix = DefaultIPv6Prefix
	}
	cfg.Bodies = cfg.Bodies.withDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: cfg.Metrics, Public: newEcho(cfg.Logger), Admin: newEcho(cfg.Logger)}
	for _, e := range []*echo.Echo{s.Public, s.Admin} {
		e.HTTPErrorHandler = errorRenderer(cfg.Logger, s.metrics.errorRendered)
	}
	s.routes()
	return s, nil
}

// middleware returns the middleware every request of a listener passes
// through, outermost first: the body's deadline first, so that it holds
// until net/http has read what the handlers left of the body; then the
// request id, so that every later log line and span carries it; and the
// access log last, so that the status it reads is final.
func (s *Server) middleware(listener string) []echo.MiddlewareFunc {
	mw := []echo.MiddlewareFunc{s.bodyDeadline, s.requestID}
	if tp := s.cfg.TracerProvider; tp != nil {
		mw = append(mw, tracing(tp.Tracer(instrumentationName), listener))
	}
	return append(mw, s.metrics.observe(listener), s.accessLog)
}

func newEcho(log *slog.Logger) *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = errorRenderer(log, nil)
	return e
}

// errorRenderer returns the Echo error handler through which every error a
// handler returns becomes the contract's JSON. rendered, when set, is told
// the code of each error rendered.
func errorRenderer(log *slog.Logger, rendered func(broker.Code)) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed || clientGone(c) {
			// Nothing can be sent, or no one is left to read it: the
			// request is counted and logged as statusClientClosed.
			return
		}
		var he *echo.HTTPError
		if errors.As(err, &he) {
			switch he.Code {
			case http.StatusNotFound:
				err = broker.Errorf(broker.CodeNotFound, "no such route")
			case http.StatusMethodNotAllowed:
				writeStatusError(c.Response(), http.StatusMethodNotAllowed, broker.CodeInvalidRequest, "method not allowed")
				if rendered != nil {
					rendered(broker.CodeInvalidRequest)
				}
				return
			default:
				err = broker.Errorf(broker.CodeInvalidRequest, "the request cannot be processed")
			}
		}
		// Only what is rendered as internal is logged as an error, so that
		// the log and the response never disagree: errors the renderer
		// knows by type (a 429's rateLimitedError) carry no broker code.
		code := writeError(c.Response(), err)
		if code == broker.CodeInternal {
			log.ErrorContext(c.Request().Context(), "internal error", "method", methodLabel(c.Request().Method), "path", loggedPath(c.Request().URL.Path), "error", err)
		}
		if rendered != nil {
			rendered(code)
		}
	}
}

// accessLog logs every request without its query, headers or body, which may
// carry credentials, with the client's address.
func (s *Server) accessLog(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		r := c.Request()
		st := finished(c)
		var buf [8]slog.Attr
		attrs := append(buf[:0],
			slog.String("method", methodLabel(r.Method)),
			slog.String("path", loggedPath(r.URL.Path)),
			slog.String("client", s.loggedClient(r)),
			slog.Int("status", st.status),
			slog.Float64("duration_ms", float64(st.elapsed.Microseconds())/1000),
			slog.Int64("bytes_out", c.Response().Size),
		)
		if st.sessionID != "" {
			attrs = append(attrs, slog.String("session_id", st.sessionID))
		}
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
		return nil
	}
}

// finished returns the request's state with its duration and status, taken
// once when the handlers are done: the access log and the metrics share
// them.
func finished(c echo.Context) *requestState {
	st := stateOf(c.Request().Context())
	if st == nil {
		// Outside requestID, which every listener runs first.
		st = &requestState{start: time.Now()}
	}
	if st.status == 0 {
		st.elapsed, st.status = time.Since(st.start), responseStatus(c)
	}
	return st
}

// statusClientClosed is the status the access log and the metrics give a
// request whose client went away before its response began (nginx's 499):
// no response is sent, and the broker's error is not rendered.
const statusClientClosed = 499

// clientGone reports whether the client of c cancelled its request: it
// closed the connection, or reset the HTTP/2 stream.
func clientGone(c echo.Context) bool {
	if !errors.Is(c.Request().Context().Err(), context.Canceled) {
		return false
	}
	// net/http also ends the context of an HTTP/1 request whose body read
	// failed, as when the broker cut off a stalled body (see streamBody):
	// that request is answered, with 400.
	b, ok := c.Get(ctxBody).(*deadlineBody)
	return !ok || !b.cutOff()
}

// responseStatus is the status of c's response as counted and logged:
// statusClientClosed when the client went away before the response began.
func responseStatus(c echo.Context) int {
	res := c.Response()
	if !res.Committed && clientGone(c) {
		return statusClientClosed
	}
	return res.Status
}

// loggedClient is the client's address for the access log: the one the
// rate limits use (see clientIP), behind BROKER_TRUSTED_PROXIES included.
// Without trusted proxies it is the peer's host as the server saw it,
// which costs no allocation.
func (s *Server) loggedClient(r *http.Request) string {
	if len(s.cfg.TrustedProxies) == 0 {
		return remoteHost(r)
	}
	return clientIP(r, s.cfg.TrustedProxies)
}

// maxLoggedPath bounds the path a log line keeps of a request: the request
// line may be as long as the header limit.
const maxLoggedPath = 256

// loggedPath is a request path as logs keep it: without the secret of a
// handle pasted into it (see redactHandles), and at most maxLoggedPath
// bytes, marked when cut.
func loggedPath(p string) string {
	p = redactHandles(p)
	if len(p) <= maxLoggedPath {
		return p
	}
	return p[:maxLoggedPath] + "...(cut)"
}
