package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/mobile-token-broker/broker/handlers"
	"github.com/mobile-token-broker/broker/internal/devidp"
)

// oncallUpstream is an API behind the broker for the on-call figures:
// /hang holds the request until its client goes away, /unauthorized answers
// 401 and tries to pass itself off as the broker, anything else answers 200.
type oncallUpstream struct {
	*httptest.Server
	hanging chan struct{} // receives once per request /hang holds
}

func newOncallUpstream(t *testing.T) *oncallUpstream {
	t.Helper()
	u := &oncallUpstream{hanging: make(chan struct{}, 1)}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hang":
			u.hanging <- struct{}{}
			<-r.Context().Done()
		case "/unauthorized":
			w.Header().Set(handlers.BrokerErrorHeader, "invalid_token")
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"invalid_token","error_description":"the upstream's own refusal"}`))
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"ok":true}`))
		}
	}))
	t.Cleanup(u.Close)
	return u
}

// scrapeText reads GET /metrics of inst as the text it serves.
func scrapeText(t *testing.T, inst *instance) []byte {
	t.Helper()
	res := doURL(t, http.MethodGet, inst.admin+"/metrics", "", nil, nil)
	if res.status != http.StatusOK {
		t.Fatalf("GET /metrics = %d", res.status)
	}
	return res.body
}

// TestOnCallSignals runs a scripted flow against a real broker and checks
// every figure on-call relies on: the metrics of sessions, refreshes, the
// IdP, Redis and the build; the broker's own answers told from upstream
// ones, in the metrics and by the Broker-Error header; a client that went
// away counted as 499; the access log's client address; durations in
// seconds. Then it checks the example alert rules and dashboard in deploy/
// against what the broker served.
func TestOnCallSignals(t *testing.T) {
	up := newOncallUpstream(t)
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_ROUTES": "/api=" + up.URL}})
	b := s.start()

	a, c, d, e := s.login(b), s.login(b), s.login(b), s.login(b)
	if res := do(t, b, http.MethodGet, "/v1/userinfo", a.Session, nil); res.status != http.StatusOK {
		t.Fatalf("GET /v1/userinfo = %d %s", res.status, res.body)
	}
	s.clock.Advance(devidp.DefaultAccessTokenTTL)
	if res := do(t, b, http.MethodGet, "/api/x", a.Session, nil); res.status != http.StatusOK {
		t.Fatalf("proxied request after the access token expired = %d %s", res.status, res.body)
	}

	t.Run("broker 401", func(t *testing.T) {
		for _, tt := range []struct {
			name, handle, challenge string
		}{
			{"unknown handle", "garbage", `Bearer error="invalid_token"`},
			{"no handle", "", "Bearer"},
		} {
			res := do(t, b, http.MethodGet, "/api/x", tt.handle, nil)
			if res.status != http.StatusUnauthorized {
				t.Fatalf("%s: GET /api/x = %d, want 401", tt.name, res.status)
			}
			if got := res.header.Values(handlers.BrokerErrorHeader); len(got) != 1 || got[0] != "invalid_token" {
				t.Errorf("%s: %s = %q, want [invalid_token]", tt.name, handlers.BrokerErrorHeader, got)
			}
			if got := res.header.Get("WWW-Authenticate"); got != tt.challenge {
				t.Errorf("%s: WWW-Authenticate = %q, want %q", tt.name, got, tt.challenge)
			}
		}
	})
	t.Run("upstream 401", func(t *testing.T) {
		res := do(t, b, http.MethodGet, "/api/unauthorized", a.Session, nil)
		if res.status != http.StatusUnauthorized {
			t.Fatalf("GET /api/unauthorized = %d, want the upstream's 401", res.status)
		}
		if got := res.header.Values(handlers.BrokerErrorHeader); len(got) != 0 {
			t.Errorf("the upstream's 401 reached the app with %s %q: an upstream can pass itself off as the broker", handlers.BrokerErrorHeader, got)
		}
		if got := res.header.Get("WWW-Authenticate"); got != `Bearer error="invalid_token"` {
			t.Errorf("WWW-Authenticate = %q, want the upstream's own", got)
		}
		// The session the upstream refused for its own reasons lives on.
		if res := do(t, b, http.MethodGet, "/v1/session", a.Session, nil); res.status != http.StatusOK {
			t.Errorf("GET /v1/session after an upstream's 401 = %d, want 200", res.status)
		}
	})
	t.Run("broker 404", func(t *testing.T) {
		// Every error the broker renders carries the header, not only 401.
		res := do(t, b, http.MethodGet, "/nowhere", "", nil)
		if got := res.header.Get(handlers.BrokerErrorHeader); res.status != http.StatusNotFound || got != "not_found" {
			t.Errorf("GET /nowhere = %d with %s %q, want 404 not_found", res.status, handlers.BrokerErrorHeader, got)
		}
	})

	// The first read of broker_sessions_active: a, c, d and e live. (Later
	// scrapes within 10 s get the same figure from the cache.)
	first := scrape(t, b)

	// A client that gives up on a slow upstream.
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.base+"/api/hang", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+a.Session)
	req.Header.Set("X-Request-Id", "client-gone-1")
	gone := make(chan error, 1)
	go func() {
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
		}
		gone <- err
	}()
	<-up.hanging
	cancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("the cancelled request = %v, want context.Canceled", err)
	}
	const cancelled = `broker_http_requests_total{listener="public",method="GET",route="/api/*",source="broker",status="499"}`
	eventually(t, 5*time.Second, "the cancelled request counted as 499", func() bool { return scrape(t, b)[cancelled] == 1 })

	// Sessions end in every way there is.
	if res := do(t, b, http.MethodDelete, "/v1/session", a.Session, nil); res.status != http.StatusNoContent {
		t.Fatalf("logout = %d", res.status)
	}
	if res := s.admin(b, http.MethodDelete, "/admin/v1/sessions/"+c.SessionID); res.status != http.StatusNoContent {
		t.Fatalf("admin revoke = %d %s", res.status, res.body)
	}
	g := s.login(b)
	if res := postLogout(t, b, logoutForm(s.signed(t, s.logoutClaims(sidOf(t, g), "")))); res.status != http.StatusOK {
		t.Fatalf("back-channel logout = %d %s", res.status, res.body)
	}
	if res := s.admin(b, http.MethodDelete, "/admin/v1/users/"+url.PathEscape(d.User["sub"].(string))+"/sessions"); res.status != http.StatusOK {
		t.Fatalf("admin revoke all = %d %s", res.status, res.body)
	}
	for _, h := range []string{d.Session, e.Session} {
		if res := do(t, b, http.MethodGet, "/v1/session", h, nil); res.status != http.StatusUnauthorized {
			t.Fatalf("a session of the revoked user = %d, want 401", res.status)
		}
	}
	f := s.login(b)
	s.clock.Advance(90*24*time.Hour + time.Hour)
	if res := do(t, b, http.MethodGet, "/api/x", f.Session, nil); res.status != http.StatusUnauthorized {
		t.Fatalf("a session past its maximum lifetime = %d, want 401", res.status)
	}
	body := scrapeText(t, b)
	after := scrape(t, b)

	for _, tt := range []struct {
		series string
		want   float64
	}{
		{`broker_sessions_active`, 4},
	} {
		if got, ok := first[tt.series]; !ok || got != tt.want {
			t.Errorf("%s = %v (present %v), want %v", tt.series, got, ok, tt.want)
		}
	}
	for _, tt := range []struct {
		series string
		want   float64
	}{
		{`broker_sessions_opened_total`, 6},
		{`broker_sessions_ended_total{reason="logout"}`, 1},
		{`broker_sessions_ended_total{reason="admin"}`, 1},
		{`broker_sessions_ended_total{reason="user_revoke"}`, 2},
		{`broker_sessions_ended_total{reason="expired"}`, 1},
		{`broker_sessions_ended_total{reason="backchannel_logout"}`, 1},
		{`broker_refreshes_total{outcome="ok"}`, 1},
		{`broker_refreshes_total{outcome="coalesced"}`, 0},
		// Six code grants and a refresh grant.
		{`broker_idp_request_duration_seconds_count{endpoint="token",outcome="ok"}`, 7},
		{`broker_idp_request_duration_seconds_count{endpoint="userinfo",outcome="ok"}`, 1},
		{`broker_idp_request_duration_seconds_count{endpoint="discovery",outcome="ok"}`, 1},
		{`broker_idp_request_duration_seconds_count{endpoint="keys",outcome="ok"}`, 1},
		// logout, admin, the user's two, expired: each revokes at the IdP;
		// a back-channel logout, which the IdP itself sent, does not.
		{`broker_idp_request_duration_seconds_count{endpoint="revocation",outcome="ok"}`, 5},
		{`broker_idp_request_duration_seconds_count{endpoint="other",outcome="ok"}`, 0},
		{`broker_http_requests_total{listener="public",method="GET",route="/api/*",source="upstream",status="401"}`, 1},
		{`broker_http_requests_total{listener="public",method="GET",route="/api/*",source="upstream",status="200"}`, 1},
		// The unknown handle, no handle, the expired session.
		{`broker_http_requests_total{listener="public",method="GET",route="/api/*",source="broker",status="401"}`, 3},
		{`broker_http_requests_total{listener="public",method="GET",route="/v1/session",source="broker",status="200"}`, 1},
		{cancelled, 1},
		{`broker_errors_total{code="invalid_token"}`, 3 + 2},
		{`broker_errors_total{code="idp_unavailable"}`, 0},
	} {
		if got, ok := after[tt.series]; !ok || got != tt.want {
			t.Errorf("%s = %v (present %v), want %v", tt.series, got, ok, tt.want)
		}
	}
	// The version and revision depend on how the binary was built: a test
	// binary records no VCS revision.
	builds := 0
	for series, v := range after {
		if strings.HasPrefix(series, "broker_build_info{") {
			builds++
			if v != 1 || !strings.Contains(series, `go_version="`+runtime.Version()+`"`) ||
				strings.Contains(series, `revision=""`) || strings.Contains(series, `version=""`) {
				t.Errorf("%s = %v, want 1 with this Go version and a revision and version (or unknown)", series, v)
			}
		}
	}
	if builds != 1 {
		t.Errorf("%d broker_build_info series, want 1", builds)
	}
	var redisOK float64
	for series, v := range after {
		if !strings.HasPrefix(series, "broker_redis_command_duration_seconds_count{") {
			continue
		}
		if strings.Contains(series, `command="other"`) {
			t.Errorf("%s = %v: a command the broker sends is missing from the label list", series, v)
		}
		if strings.Contains(series, `outcome="ok"`) {
			redisOK += v
		}
		if strings.Contains(series, `outcome="error"`) {
			t.Errorf("%s = %v, want no Redis error", series, v)
		}
	}
	if redisOK == 0 {
		t.Error("no Redis command was counted")
	}
	for k := range after {
		for _, secret := range []string{a.Session, a.SessionID, up.URL, "/api/hang"} {
			if strings.Contains(k, secret) {
				t.Errorf("series %s carries a request detail", k)
			}
		}
	}

	t.Run("access log", func(t *testing.T) {
		lines := logLines(t, b, "client-gone-1")
		var found bool
		for _, l := range lines {
			if l["msg"] != "request" {
				continue
			}
			found = true
			if l["status"] != float64(499) || l["client"] != "127.0.0.1" {
				t.Errorf("access log of the cancelled request: status %v, client %v; want 499, 127.0.0.1", l["status"], l["client"])
			}
		}
		if !found {
			t.Fatalf("no access log line for the cancelled request in %v", messages(lines))
		}
	})
	t.Run("durations in seconds", func(t *testing.T) {
		var seen bool
		for _, l := range logLinesWhere(t, b, func(l map[string]any) bool { return l["msg"] == "session refreshed" }) {
			seen = true
			// devidp's access tokens live an hour: 3600 s, not 3.6e12 ns.
			if v, ok := l["expires_in"].(float64); !ok || v <= 0 || v > 3600 {
				t.Errorf("session refreshed: expires_in = %v, want seconds, at most 3600", l["expires_in"])
			}
		}
		if !seen {
			t.Fatal("no session refreshed line")
		}
	})
	t.Run("exposition lint", func(t *testing.T) {
		problems, err := promlint.New(bytes.NewReader(body)).Lint()
		if err != nil {
			t.Fatalf("promlint: %v", err)
		}
		for _, p := range problems {
			if strings.HasPrefix(p.Metric, "broker_") {
				t.Errorf("promlint: %s: %s", p.Metric, p.Text)
			}
		}
		promtool, err := exec.LookPath("promtool")
		if err != nil {
			t.Skip("promtool is not installed: `promtool check metrics` not run (the promlint check above is the same linter)")
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		out, err := cmd.CombinedOutput()
		if err != nil {
			// promtool exits 3 for lint problems only; the Go runtime
			// collector's own names are not the broker's to fix.
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if strings.HasPrefix(line, "broker_") {
					t.Errorf("promtool check metrics: %s", line)
				}
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 {
				t.Errorf("promtool check metrics: %v\n%s", err, out)
			}
		}
	})
	t.Run("deploy", func(t *testing.T) { checkMonitoring(t, after) })
}

// logLinesWhere returns the broker's JSON log lines for which keep holds.
func logLinesWhere(t *testing.T, inst *instance, keep func(map[string]any) bool) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(inst.logs.String(), "\n") {
		var l map[string]any
		if json.Unmarshal([]byte(line), &l) == nil && keep(l) {
			out = append(out, l)
		}
	}
	return out
}

// Where the example monitoring lives, from this package's directory.
var (
	alertRulesFile = filepath.Join("..", "..", "deploy", "prometheus", "alerts.yaml")
	dashboardFile  = filepath.Join("..", "..", "deploy", "grafana", "broker.json")
)

// checkMonitoring checks the example alert rules and dashboard: the rules
// parse with Prometheus's own rule parser (and promtool's, when installed),
// every expression parses as PromQL, and every metric they name is one the
// broker served (served: the series of a scrape).
func checkMonitoring(t *testing.T, served map[string]float64) {
	names := map[string]bool{}
	for series := range served {
		name, _, _ := strings.Cut(series, "{")
		names[name] = true
	}
	used := map[string][]string{} // metric -> where

	groups, errs := rulefmt.ParseFile(alertRulesFile, false, model.UTF8Validation)
	for _, err := range errs {
		t.Errorf("%s: %v", alertRulesFile, err)
	}
	if groups == nil || len(groups.Groups) == 0 {
		t.Fatalf("%s: no rule group", alertRulesFile)
	}
	rules := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			rules++
			metricNames(t, r.Expr, "alert "+r.Alert, used)
			if r.Annotations["summary"] == "" {
				t.Errorf("alert %s has no summary", r.Alert)
			}
		}
	}
	if rules == 0 {
		t.Errorf("%s has no rule", alertRulesFile)
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		if out, err := exec.Command(promtool, "check", "rules", alertRulesFile).CombinedOutput(); err != nil {
			t.Errorf("promtool check rules: %v\n%s", err, out)
		}
	} else {
		t.Log("promtool is not installed: `promtool check rules` not run (rulefmt, the parser it uses, did)")
	}

	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Errorf("%s: title %q, uid %q, %d panels; want all three", dashboardFile, dash.Title, dash.UID, len(dash.Panels))
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			// Grafana's interval variable, as Grafana fills it in.
			expr := strings.ReplaceAll(tg.Expr, "$__rate_interval", "5m")
			metricNames(t, expr, "panel "+p.Title, used)
		}
	}

	for name, where := range used {
		if !names[name] {
			t.Errorf("metric %s (%s) is not served by the broker", name, strings.Join(where, ", "))
		}
	}
}

// metricNames parses expr as PromQL and records every metric it selects.
func metricNames(t *testing.T, expr, where string, into map[string][]string) {
	t.Helper()
	e, err := parser.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q: %v", where, expr, err)
		return
	}
	n := 0
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			if vs.Name == "" {
				t.Errorf("%s: a selector without a metric name: %s", where, vs)
			}
			into[vs.Name] = append(into[vs.Name], where)
			n++
		}
		return nil
	})
	if n == 0 {
		t.Errorf("%s: %q selects no metric", where, expr)
	}
}
