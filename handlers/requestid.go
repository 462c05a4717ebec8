package handlers

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/mobile-token-broker/broker/broker"
)

// requestIDHeader carries a request's id in both directions and to the
// upstream, so that one id ties the app's report, the broker's log lines and
// the upstream's logs together.
const requestIDHeader = "X-Request-Id"

// maxRequestIDLen bounds a client-sent id, which lands on every log line.
const maxRequestIDLen = 128

// requestState is what the broker keeps of one request, in its context
// from the first middleware on: one value, one copy of the request, and one
// clock read at the start, however many parts of the broker use them. It
// is the request's broker.Request: what the audit trail records of the
// client is worked out only when an event is written, so that requests
// that write none (nearly all) pay nothing for it.
type requestState struct {
	id      string    // the request id
	start   time.Time // when the broker began with the request
	r       *http.Request
	trusted []netip.Prefix
	// elapsed and status are the request's duration and status (499 for a
	// client that went away), taken once by the access log for the log
	// line and the metrics alike.
	elapsed time.Duration
	status  int
	// sessionID is the session the request used, for the access log and
	// the trace, once a handler knows it.
	sessionID string
	// target is the proxied request's destination and token (see Proxy).
	target *target
}

var _ broker.Request = (*requestState)(nil)

func (st *requestState) RequestID() string { return st.id }

func (st *requestState) ClientIP() string {
	if st.r == nil {
		return ""
	}
	return clientIP(st.r, st.trusted)
}

func (st *requestState) UserAgent() string {
	if st.r == nil {
		return ""
	}
	return st.r.UserAgent()
}

// ContextWithRequestID returns ctx carrying the request id id.
func ContextWithRequestID(ctx context.Context, id string) context.Context {
	return broker.WithRequest(ctx, &requestState{id: id, start: time.Now()})
}

// stateOf returns the state of the request whose context ctx is, or nil
// outside a request.
func stateOf(ctx context.Context) *requestState {
	st, _ := broker.RequestFrom(ctx).(*requestState)
	return st
}

// RequestID returns the request id ctx carries, or "".
func RequestID(ctx context.Context) string {
	if r := broker.RequestFrom(ctx); r != nil {
		return r.RequestID()
	}
	return ""
}

// setSessionID records the session a request used, for the access log and
// the trace.
func setSessionID(c echo.Context, id string) {
	if st := stateOf(c.Request().Context()); st != nil {
		st.sessionID = id
	}
}

// sessionIDOf returns the session a request used, or "".
func sessionIDOf(c echo.Context) string {
	if st := stateOf(c.Request().Context()); st != nil {
		return st.sessionID
	}
	return ""
}

// saneRequestID reports whether a client-sent id may be kept: 1 to 128
// characters of [A-Za-z0-9._-]. Anything else could forge log fields, split
// log lines or bloat every line of the request, and is replaced.
func saneRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := range len(id) {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// requestID gives every request an id: the client's X-Request-Id when it is
// sane (a gateway in front may have set it), a random one otherwise. The id
// is echoed in the response, put in the request's context for the log lines
// (see NewLogHandler) with what the audit trail records of the client
// (see broker.Request), and set on the request's own header so that the proxy
// passes on the id in use rather than a refused one.
func (s *Server) requestID(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		id := r.Header.Get(requestIDHeader)
		if !saneRequestID(id) {
			// 130 random bits in 26 characters of base32.
			id = rand.Text()
		}
		r.Header.Set(requestIDHeader, id)
		c.Response().Header().Set(requestIDHeader, id)
		st := &requestState{id: id, start: time.Now(), r: r, trusted: s.cfg.TrustedProxies}
		c.SetRequest(r.WithContext(broker.WithRequest(r.Context(), st)))
		return next(c)
	}
}

// NewLogHandler wraps h so that every record logged with a context that
// carries a request id gets a request_id attribute, and, when the context
// carries a recorded trace span, trace_id and span_id. The broker package
// logs with the request's context, so its lines carry them too without
// knowing about HTTP. Every line also loses the secret of whatever
// handle-shaped string it holds (see redactHandles), whoever logged it.
func NewLogHandler(h slog.Handler) slog.Handler {
	if _, ok := h.(*logHandler); ok {
		return h
	}
	return &logHandler{next: h}
}

type logHandler struct{ next slog.Handler }

func (h *logHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := RequestID(ctx); id != "" {
		r.AddAttrs(slog.String("request_id", id))
	}
	r.AddAttrs(traceAttrs(ctx)...)
	return h.next.Handle(ctx, redactRecord(r))
}

func (h *logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &logHandler{next: h.next.WithAttrs(redactAttrs(attrs))}
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	return &logHandler{next: h.next.WithGroup(name)}
}
