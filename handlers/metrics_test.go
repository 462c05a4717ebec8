package handlers

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	dto "github.com/prometheus/client_model/go"

	"github.com/mobile-token-broker/broker/broker"
)

// counterValue returns the value of the counter of family name whose labels
// include want, or -1 if there is none.
func counterValue(t *testing.T, m *Metrics, name string, want map[string]string) float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, metric := range f.GetMetric() {
			if hasLabels(metric, want) {
				return metric.GetCounter().GetValue()
			}
		}
	}
	return -1
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

func TestRequestMetrics(t *testing.T) {
	m := NewMetrics()
	e := newEcho(slog.New(slog.DiscardHandler))
	e.HTTPErrorHandler = errorRenderer(slog.New(slog.DiscardHandler), m.errorRendered)
	e.Use(m.observe("public"))
	e.GET("/v1/session/:id", func(c echo.Context) error { return c.NoContent(http.StatusNoContent) })
	e.GET("/v1/store", func(c echo.Context) error { return broker.ErrStoreUnavailable })

	for _, r := range []struct{ method, path string }{
		{http.MethodGet, "/v1/session/a"},
		{http.MethodGet, "/v1/session/b"},
		{http.MethodGet, "/nowhere/1"},
		{http.MethodGet, "/nowhere/2"},
		{"BREW", "/v1/session/a"},
		{http.MethodGet, "/v1/store"},
	} {
		e.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(r.method, r.path, nil))
	}

	tests := []struct {
		name   string
		family string
		labels map[string]string
		want   float64
	}{
		{"route pattern, not path", "broker_http_requests_total",
			map[string]string{"listener": "public", "route": "/v1/session/:id", "method": "GET", "status": "204"}, 2},
		{"unmatched", "broker_http_requests_total",
			map[string]string{"listener": "public", "route": "unmatched", "method": "GET", "status": "404"}, 2},
		{"invented method", "broker_http_requests_total",
			map[string]string{"route": "/v1/session/:id", "method": "other", "status": "405"}, 1},
		{"store error", "broker_errors_total", map[string]string{"code": "store_unavailable"}, 1},
		{"no route", "broker_errors_total", map[string]string{"code": "not_found"}, 2},
		{"method not allowed", "broker_errors_total", map[string]string{"code": "invalid_request"}, 1},
		{"created at zero", "broker_errors_total", map[string]string{"code": "idp_unavailable"}, 0},
		{"refresh outcome at zero", "broker_refreshes_total", map[string]string{"outcome": "coalesced"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := counterValue(t, m, tt.family, tt.labels); got != tt.want {
				t.Errorf("%s%v = %v, want %v", tt.family, tt.labels, got, tt.want)
			}
		})
	}
}

// The proxy's hot path pays one request series lookup: once a series exists,
// counting a request allocates nothing.
func TestRequestMetricsDoNotAllocate(t *testing.T) {
	m := NewMetrics()
	k := seriesKey{listener: "public", route: "/api/*", method: http.MethodGet, status: http.StatusOK}
	m.seriesOf(k)
	allocs := testing.AllocsPerRun(1000, func() {
		s := m.seriesOf(k)
		s.count.Inc()
		s.duration.Observe(0.01)
	})
	if allocs != 0 {
		t.Errorf("counting a request allocates %v times, want 0", allocs)
	}
}

// Redis commands are on the request path too: once a command's series
// exists, timing it allocates nothing.
func TestRedisMetricsDoNotAllocate(t *testing.T) {
	m := NewMetrics()
	m.RedisCommand("get", "ok", time.Millisecond)
	allocs := testing.AllocsPerRun(1000, func() {
		m.RedisCommand("get", "ok", time.Millisecond)
	})
	if allocs != 0 {
		t.Errorf("timing a Redis command allocates %v times, want 0", allocs)
	}
}

func TestBrokerMetrics(t *testing.T) {
	m := NewMetrics()
	var bm broker.Metrics = m
	bm.Exchange("ok")
	bm.Refresh("ok")
	bm.Refresh("coalesced")
	bm.Revocation("admin")
	if got := counterValue(t, m, "broker_sessions_opened_total", nil); got != 1 {
		t.Errorf("broker_sessions_opened_total = %v after one exchange, want 1", got)
	}
	for _, c := range []struct {
		family, label, value string
	}{
		{"broker_exchanges_total", "outcome", "ok"},
		{"broker_refreshes_total", "outcome", "ok"},
		{"broker_refreshes_total", "outcome", "coalesced"},
		{"broker_sessions_ended_total", "reason", "admin"},
	} {
		if got := counterValue(t, m, c.family, map[string]string{c.label: c.value}); got != 1 {
			t.Errorf("%s{%s=%q} = %v, want 1", c.family, c.label, c.value, got)
		}
	}
}

// broker_sessions_active is read at scrape time, at most once per
// activeSessionsMaxAge, and left out of a scrape whose read failed.
func TestActiveSessionsGauge(t *testing.T) {
	m := NewMetrics()
	var calls int
	var fail error
	m.CountSessions(func(ctx context.Context) (int64, error) {
		calls++
		if _, ok := ctx.Deadline(); !ok {
			t.Error("the count has no deadline")
		}
		return 7, fail
	})
	gauge := func() (float64, bool) {
		t.Helper()
		families, err := m.Registry().Gather()
		if err != nil {
			t.Fatalf("Gather: %v", err)
		}
		for _, f := range families {
			if f.GetName() == "broker_sessions_active" {
				return f.GetMetric()[0].GetGauge().GetValue(), true
			}
		}
		return 0, false
	}
	for i := range 3 {
		if v, ok := gauge(); !ok || v != 7 {
			t.Fatalf("scrape %d: broker_sessions_active = %v (present %v), want 7", i, v, ok)
		}
	}
	if calls != 1 {
		t.Errorf("three scrapes within %v counted %d times, want 1", activeSessionsMaxAge, calls)
	}

	m = NewMetrics()
	fail = errors.New("store unavailable")
	m.CountSessions(func(context.Context) (int64, error) { return 0, fail })
	if v, ok := gauge(); ok {
		t.Errorf("broker_sessions_active = %v when the count failed, want it left out", v)
	}
}
