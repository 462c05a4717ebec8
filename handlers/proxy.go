package handlers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/mobile-token-broker/broker/broker"
)

// Route maps a path prefix of the public listener to an upstream base URL.
type Route struct {
	// Prefix is matched on whole segments of the request's path, in the
	// canonical spelling of canonicalPath.
	Prefix string
	// Upstream is the base URL the rest of the path is appended to.
	Upstream *url.URL
	// WebSocket, when set, lets requests on this route upgrade to WebSocket,
	// and to nothing else, within its limits (see AllowWebSocket). Nil
	// drops every Upgrade.
	WebSocket *TunnelPolicy
}

// reservedPrefix belongs to the broker's own API; a route there would shadow
// it.
const reservedPrefix = "/v1"

// ParseRoutes parses BROKER_ROUTES: comma-separated PREFIX=UPSTREAM_URL
// entries, for example "/api/orders=http://orders:8080,/api/users=https://users.internal/v2".
// Blank entries are skipped; every bad entry is reported, each by name.
//
// A prefix starts with "/", has no trailing "/", no empty, "." or ".."
// segment, and uses only RFC 3986 unreserved characters (section 2.3): it is
// compared with the path as sent and registered as an Echo route, and those
// characters are never escaped by clients nor read as syntax by Echo's router
// (which gives ":" and "*" a meaning). "/" alone is refused, since it would
// capture every path, and so are /v1 and everything under it, the broker's
// own API. An upstream is an absolute http or https URL with a host and no
// user info, query or fragment.
func ParseRoutes(spec string) ([]Route, error) {
	var (
		routes []Route
		errs   []error
	)
	seen := make(map[string]bool)
	for entry := range strings.SplitSeq(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		prefix, raw, ok := strings.Cut(entry, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("route %q: want PREFIX=UPSTREAM_URL", entry))
			continue
		}
		prefix, raw = strings.TrimSpace(prefix), strings.TrimSpace(raw)
		u, err := url.Parse(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("route with prefix %q: upstream is not a URL", prefix))
			continue
		}
		// The entry is named with its upstream redacted: user info is refused
		// below, but a password must not reach the error message either.
		name := prefix + "=" + u.Redacted()
		if err := errors.Join(checkPrefix(prefix), checkUpstream(u)); err != nil {
			errs = append(errs, fmt.Errorf("route %q: %w", name, err))
			continue
		}
		if seen[prefix] {
			errs = append(errs, fmt.Errorf("route %q: prefix %q is configured twice", name, prefix))
			continue
		}
		seen[prefix] = true
		routes = append(routes, Route{Prefix: prefix, Upstream: u})
	}
	if len(routes) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("no route configured"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return routes, nil
}

func checkPrefix(prefix string) error {
	switch {
	case !strings.HasPrefix(prefix, "/"):
		return errors.New(`prefix must start with "/"`)
	case prefix == "/":
		return errors.New(`prefix "/" would capture every path, the broker's own included`)
	case strings.HasSuffix(prefix, "/"):
		return errors.New(`prefix must not end with "/"`)
	case prefix == reservedPrefix || strings.HasPrefix(prefix, reservedPrefix+"/"):
		return fmt.Errorf("prefix %s is reserved for the broker's API", reservedPrefix)
	case prefix == specPath:
		return fmt.Errorf("prefix %s is reserved for the broker's API description", specPath)
	}
	for seg := range strings.SplitSeq(prefix[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("prefix has an empty, %q or %q segment", ".", "..")
		}
		if i := strings.IndexFunc(seg, func(r rune) bool { return !isUnreserved(r) }); i >= 0 {
			return fmt.Errorf("prefix may hold only letters, digits and %q, not %q", "-._~", seg[i:i+1])
		}
	}
	return nil
}

// isUnreserved reports whether r is an RFC 3986 section 2.3 unreserved
// character: ALPHA / DIGIT / "-" / "." / "_" / "~".
func isUnreserved(r rune) bool {
	return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' ||
		r == '-' || r == '.' || r == '_' || r == '~'
}

func checkUpstream(u *url.URL) error {
	switch {
	case u == nil:
		return errors.New("upstream is missing")
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("upstream must be an absolute http or https URL")
	case u.Host == "" || u.Opaque != "":
		return errors.New("upstream has no host")
	case u.User != nil:
		// The broker sets Authorization itself; credentials in the URL would
		// be silently dropped.
		return errors.New("upstream must not hold user info")
	case u.RawQuery != "" || u.ForceQuery:
		return errors.New("upstream must not have a query")
	case u.Fragment != "" || u.RawFragment != "":
		return errors.New("upstream must not have a fragment")
	}
	return nil
}

// AccessTokens gives the proxy the access token of a session, and tells an
// open WebSocket tunnel whether its session still lives.
type AccessTokens interface {
	// AccessToken returns the id and a currently valid access token of the
	// session of a credential (its handle, and its DPoP proof when the
	// session is bound), refreshing the token first when it is
	// about to expire. A malformed (empty included), unknown or ended handle
	// yields an error with broker.CodeInvalidToken; other failures carry
	// their contract code (idp_unavailable, store_unavailable...). Errors are
	// rendered to the client as they are.
	AccessToken(ctx context.Context, cred broker.Credential) (sessionID, accessToken string, err error)
	// SessionLive returns nil while the session with the given id lives,
	// an error with broker.CodeInvalidToken once it ended on any replica,
	// and another error when that cannot be told.
	SessionLive(ctx context.Context, sessionID string) error
}

// DefaultUpstreamTimeout is how long an upstream has to send its response
// headers when ProxyConfig.UpstreamTimeout is zero (the contract's default).
const DefaultUpstreamTimeout = 30 * time.Second

// ProxyConfig configures NewProxy.
type ProxyConfig struct {
	// Routes are the route prefixes and their upstreams; at least one.
	Routes []Route
	// Tokens turns a session handle into an access token.
	Tokens AccessTokens
	// UpstreamTimeout is the time an upstream has to send its response
	// headers; zero means DefaultUpstreamTimeout. The body may take longer:
	// responses are streamed. It applies to the default transport only.
	UpstreamTimeout time.Duration
	// TrustedProxies are the peers whose X-Forwarded-* headers are kept.
	TrustedProxies []netip.Prefix
	// Logger receives upstream failures; nil means slog.Default().
	Logger *slog.Logger
	// Transport carries requests to the upstreams. Nil means one transport
	// shared by every route, so that connections are pooled and reused: a
	// clone of http.DefaultTransport with 5s dial and TLS handshake
	// timeouts, UpstreamTimeout as response header timeout, up to 1024 idle
	// connections (256 per host) kept for 90s, and HTTP/2 when offered.
	Transport http.RoundTripper
	// TracerProvider, when set, traces each upstream call as a client span
	// whose context the upstream receives in traceparent. Nil means none.
	TracerProvider trace.TracerProvider
}

// Proxy is the reverse proxy of the configured routes: it swaps the app's
// session handle for the session's access token and streams the request to
// the route's upstream and the response back.
type Proxy struct {
	routes  []Route // longest prefix first, so the first match wins
	tokens  AccessTokens
	trusted []netip.Prefix
	log     *slog.Logger
	rp      *httputil.ReverseProxy
	tracer  trace.Tracer // nil without tracing
	metrics *Metrics     // nil until useMetrics
	tunnels tunnelSet
}

// NewProxy validates cfg and builds the proxy.
func NewProxy(cfg ProxyConfig) (*Proxy, error) {
	var errs []error
	if len(cfg.Routes) == 0 {
		errs = append(errs, errors.New("proxy: no route configured"))
	}
	seen := make(map[string]bool)
	routes := slices.Clone(cfg.Routes)
	for i, r := range routes {
		if err := errors.Join(checkPrefix(r.Prefix), checkUpstream(r.Upstream)); err != nil {
			errs = append(errs, fmt.Errorf("proxy: route %q: %w", r.Prefix, err))
		}
		if r.WebSocket != nil {
			policy, err := r.WebSocket.withDefaults()
			if err != nil {
				errs = append(errs, fmt.Errorf("proxy: route %q: %w", r.Prefix, err))
			}
			routes[i].WebSocket = &policy
		}
		if seen[r.Prefix] {
			errs = append(errs, fmt.Errorf("proxy: route %q is configured twice", r.Prefix))
		}
		seen[r.Prefix] = true
	}
	if cfg.Tokens == nil {
		errs = append(errs, errors.New("proxy: an access token source is required"))
	}
	if cfg.UpstreamTimeout < 0 {
		errs = append(errs, errors.New("proxy: upstream timeout must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Transport == nil {
		cfg.Transport = newTransport(cfg.UpstreamTimeout)
	}

	slices.SortStableFunc(routes, func(a, b Route) int { return cmp.Compare(len(b.Prefix), len(a.Prefix)) })
	p := &Proxy{
		routes:  routes,
		tokens:  cfg.Tokens,
		trusted: slices.Clone(cfg.TrustedProxies),
		log:     cfg.Logger,
	}
	if cfg.TracerProvider != nil {
		p.tracer = cfg.TracerProvider.Tracer(instrumentationName)
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:   p.rewrite,
		Transport: cfg.Transport,
		// Zero: responses of unknown length (chunked: server-sent events,
		// long polls, streamed downloads) and text/event-stream are flushed
		// after every write, so they reach the app as the upstream produces
		// them; a response of known length goes out as the server's buffer
		// fills, which saves a flush per response on the hot path.
		FlushInterval:  0,
		BufferPool:     copyBuffers,
		ModifyResponse: p.checkResponse,
		ErrorHandler:   p.upstreamError,
		ErrorLog:       slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	return p, nil
}

// newTransport is the one transport shared by every route.
func newTransport(responseHeaderTimeout time.Duration) *http.Transport {
	var t *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		t = dt.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment}
	}
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 5 * time.Second
	t.ResponseHeaderTimeout = responseHeaderTimeout
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 90 * time.Second
	t.ForceAttemptHTTP2 = true
	return t
}

// useMetrics has the proxy count its WebSocket tunnels in m.
func (p *Proxy) useMetrics(m *Metrics) { p.metrics = m }

// Routes returns the configured routes, longest prefix first.
func (p *Proxy) Routes() []Route {
	return slices.Clone(p.routes)
}

// Match returns the route whose prefix matches escapedPath on whole segments
// ("/api" matches "/api" and "/api/x", never "/apix"), the longest one when
// several do, and the rest of the path after the prefix, still escaped. It
// compares bytes: the handler passes it the canonical path (see resolve).
func (p *Proxy) Match(escapedPath string) (route Route, tail string, ok bool) {
	for _, r := range p.routes {
		rest, found := strings.CutPrefix(escapedPath, r.Prefix)
		if found && (rest == "" || rest[0] == '/') {
			return r, rest, true
		}
	}
	return Route{}, "", false
}

// target is what the handler hands to rewrite and upstreamError through the
// request context: ReverseProxy is built once and shared, so per-request data
// cannot live on it.
type target struct {
	route       Route
	path        string // outbound path, decoded
	rawPath     string // outbound path, escaped as the client sent it
	sessionID   string
	accessToken string
	// tunnel is set for a WebSocket upgrade on a route that allows it.
	tunnel *tunnel
	// err is set by upstreamError, for Handler to return to Echo's error
	// renderer, where every error response is written and counted.
	err error
}

// targetOf returns the target of a proxied request.
func targetOf(ctx context.Context) *target {
	if st := stateOf(ctx); st != nil {
		return st.target
	}
	return nil
}

// Handler is the Echo handler of a path that any route may match.
func (p *Proxy) Handler(c echo.Context) error { return p.serve(c, nil) }

// handlerFor is the Echo handler registered for route's own paths: Echo's
// router has already chosen the route, so the proxy does not match again.
func (p *Proxy) handlerFor(route Route) echo.HandlerFunc {
	return func(c echo.Context) error { return p.serve(c, &route) }
}

func (p *Proxy) serve(c echo.Context, bound *Route) error {
	r, w := c.Request(), c.Response()
	// The path is checked before the handle so that a hostile path costs no
	// store lookup and no token refresh.
	route, tail, decoded, ok, err := p.resolve(r.URL.EscapedPath(), bound)
	if !ok {
		return broker.Errorf(broker.CodeNotFound, "no route for this path")
	}
	if err != nil {
		return err
	}
	cred, present := credential(r, p.trusted)
	if !present {
		return errNoHandle
	}
	sessionID, token, err := p.tokens.AccessToken(r.Context(), cred)
	if err != nil {
		if broker.ErrorCode(err) == broker.CodeInternal {
			p.log.ErrorContext(r.Context(), "access token lookup failed", "route", route.Prefix, "error", err)
		}
		return err
	}
	path, rawPath := joinPath(route.Upstream, decoded, tail)
	t := &target{
		route:       route,
		path:        path,
		rawPath:     rawPath,
		sessionID:   sessionID,
		accessToken: token,
	}
	// The target rides in the request's state, which its context already
	// holds: no further copy of the request is needed to hand it to
	// rewrite, unless a span must be added.
	ctx := r.Context()
	st := stateOf(ctx)
	if st == nil {
		// Served outside the broker's middleware, as in some tests.
		st = &requestState{start: time.Now()}
		ctx = broker.WithRequest(ctx, st)
	}
	st.sessionID, st.target = sessionID, t
	if p.tracer != nil {
		var span trace.Span
		ctx, span = p.tracer.Start(ctx, "proxy "+route.Prefix,
			trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(
				attribute.String("http.request.method", methodLabel(r.Method)),
				attribute.String("server.address", route.Upstream.Host),
				attribute.String("broker.route", route.Prefix),
			))
		defer func() {
			if t.err != nil {
				span.SetStatus(codes.Error, broker.ErrorMessage(t.err))
			}
			span.End()
		}()
	}
	if ctx != r.Context() {
		r = r.WithContext(ctx)
	}
	if route.WebSocket != nil && isWebSocketUpgrade(r) {
		p.serveTunnel(w, r, t)
		if _, opened := t.tunnel.opened(); opened {
			// The client's connection was handed over to the tunnel: the
			// access log and metrics count a 101 that lasted until the
			// tunnel closed.
			w.Status, w.Committed = http.StatusSwitchingProtocols, true
			return nil
		}
		return t.err
	}
	p.rp.ServeHTTP(w, r)
	return t.err
}

// joinPath appends the tail of the inbound path to the upstream's path, in
// both the decoded and the escaped form so that the escapes the client sent
// (such as %20) reach the upstream unchanged. An empty tail keeps the
// upstream's path as it is.
func joinPath(base *url.URL, tail, escapedTail string) (path, rawPath string) {
	if escapedTail == "" {
		return base.Path, base.RawPath
	}
	path, rawPath = base.Path, base.EscapedPath()
	if strings.HasSuffix(rawPath, "/") {
		path, rawPath = path[:len(path)-1], rawPath[:len(rawPath)-1]
	}
	return path + tail, rawPath + escapedTail
}

// rewrite turns the inbound request into the upstream request. ReverseProxy
// has already removed the hop-by-hop headers, those named by Connection
// included (RFC 9110 section 7.6.1), as well as Forwarded (RFC 7239) and
// X-Forwarded-*; setForwarded sets the latter again.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	t := targetOf(pr.In.Context())
	// ReverseProxy puts Upgrade and "Connection: Upgrade" back to tunnel
	// any protocol the client asks for; on a 101 the client would be
	// spliced to the upstream, past every check of the broker (with h2c, on
	// a connection where any path and any Authorization can be sent).
	// Upgrade is hop-by-hop (RFC 9110 sections 7.6.1 and 7.8), and so is
	// HTTP2-Settings ("a connection-specific header field", RFC 7540
	// section 3.2.1): both are dropped, even when Connection does not name
	// them.
	pr.Out.Header.Del("Upgrade")
	pr.Out.Header.Del("Connection")
	pr.Out.Header.Del("Http2-Settings")
	if t.tunnel != nil {
		// A WebSocket upgrade on a route that allows it (RFC 6455 section
		// 4.1), and nothing else.
		pr.Out.Header.Set("Connection", "Upgrade")
		pr.Out.Header.Set("Upgrade", "websocket")
	}
	up := t.route.Upstream
	pr.Out.URL = &url.URL{
		Scheme:   up.Scheme,
		Host:     up.Host,
		Path:     t.path,
		RawPath:  t.rawPath,
		RawQuery: pr.Out.URL.RawQuery,
	}
	pr.Out.Host = up.Host
	// Set replaces every Authorization header: the handle must never reach
	// an upstream.
	pr.Out.Header.Set("Authorization", "Bearer "+t.accessToken)
	// The proof is the broker's to check; it names the broker's URL and
	// hashes the handle, and is nothing the upstream can use.
	pr.Out.Header.Del(dpopHeader)
	setForwarded(pr.Out, pr.In, p.trusted)
	if id := RequestID(pr.In.Context()); id != "" {
		pr.Out.Header.Set(requestIDHeader, id)
	}
	if p.tracer != nil {
		// Values the app sent give way to the context of the broker's
		// span, itself a child of the app's trace when it sent one.
		pr.Out.Header.Del("Traceparent")
		pr.Out.Header.Del("Tracestate")
		injectTraceContext(pr.In.Context(), pr.Out.Header)
	}
}

// errUpstreamUnavailable is the answer when no response came from upstream.
var errUpstreamUnavailable = broker.Errorf(broker.CodeUpstreamUnavailable, "the upstream API could not be reached")

// upstreamError is called when the upstream gave no response: it could not
// be dialled, the TLS handshake failed, or the response headers did not come
// within the upstream timeout.
func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil || errors.Is(err, context.Canceled) {
		// The app went away; there is no one to answer.
		return
	}
	t := targetOf(r.Context())
	var prefix, sessionID string
	if t != nil {
		prefix, sessionID = t.route.Prefix, t.sessionID
	}
	// A *url.Error repeats the URL, whose query is the app's business and
	// does not belong in the logs.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if t != nil && t.tunnel != nil {
		if _, opened := t.tunnel.opened(); opened {
			// The upstream switched protocols, but the client could not
			// be handed over to it; it may already have been.
			p.log.WarnContext(r.Context(), "websocket tunnel failed to open", "route", prefix, "session_id", sessionID, "error", err)
			return
		}
	}
	p.log.WarnContext(r.Context(), "upstream unavailable", "route", prefix, "session_id", sessionID, "error", err)
	if t == nil {
		writeError(w, errUpstreamUnavailable)
		return
	}
	t.err = errUpstreamUnavailable
}
