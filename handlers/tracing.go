package handlers

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// instrumentationName names the tracer of the HTTP edge.
const instrumentationName = "github.com/mobile-token-broker/broker/handlers"

// traceContext is the W3C Trace Context propagator (traceparent,
// tracestate). It is used directly rather than through the global
// propagator, so that several brokers in one process (as in the tests) share
// no state.
var traceContext propagation.TraceContext

// tracing starts a server span for every request of a listener, as the
// child of the W3C trace context the request carries, if any: an app or a
// gateway that traces can follow its call through the broker. The span is
// named after the route pattern, never the raw path, which holds ids.
func tracing(tracer trace.Tracer, listener string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			r := c.Request()
			ctx := traceContext.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
			route := c.Path()
			if route == "" {
				route = "unmatched"
			}
			ctx, span := tracer.Start(ctx, methodLabel(r.Method)+" "+route,
				trace.WithSpanKind(trace.SpanKindServer),
				trace.WithAttributes(
					attribute.String("http.request.method", methodLabel(r.Method)),
					attribute.String("http.route", route),
					attribute.String("broker.listener", listener),
					attribute.String("broker.request_id", RequestID(ctx)),
				))
			defer span.End()
			c.SetRequest(r.WithContext(ctx))
			err := next(c)
			if err != nil {
				c.Error(err)
			}
			code := c.Response().Status
			span.SetAttributes(attribute.Int("http.response.status_code", code))
			if code >= http.StatusInternalServerError {
				span.SetStatus(codes.Error, strconv.Itoa(code))
			}
			if id := sessionIDOf(c); id != "" {
				span.SetAttributes(attribute.String("broker.session_id", id))
			}
			return nil
		}
	}
}

// injectTraceContext writes the trace context of ctx into an outbound
// request's headers; without a span in ctx (tracing off) it writes nothing.
func injectTraceContext(ctx context.Context, h http.Header) {
	traceContext.Inject(ctx, propagation.HeaderCarrier(h))
}

// traceAttrs returns the ids of the span in ctx for a log line, so that logs
// and traces can be joined; none without a span.
func traceAttrs(ctx context.Context) []slog.Attr {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return nil
	}
	return []slog.Attr{slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String())}
}
