package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/migrations"
)

// With Redis unreachable every route that needs it answers 503
// store_unavailable, and the broker recovers by itself when Redis returns.
func TestRedisDownAndBack(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	c := s.login(b)
	code, verifier := s.authorize("n")

	s.redis.Stop(t)
	checks := []struct {
		name, method, path, handle string
		body                       any
	}{
		{"session", http.MethodGet, "/v1/session", c.Session, nil},
		{"userinfo", http.MethodGet, "/v1/userinfo", c.Session, nil},
		{"proxy", http.MethodGet, "/api/x", c.Session, nil},
		{"logout", http.MethodDelete, "/v1/session", c.Session, nil},
		{"exchange", http.MethodPost, "/v1/sessions", "", map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI}},
	}
	for _, tt := range checks {
		res := do(t, b, tt.method, tt.path, tt.handle, tt.body)
		if res.status != http.StatusServiceUnavailable || res.errorCode(t) != "store_unavailable" {
			t.Errorf("%s with Redis down = %d %s, want 503 store_unavailable", tt.name, res.status, res.body)
		}
	}
	if res := doURL(t, http.MethodGet, b.admin+"/readyz", "", nil, nil); res.status != http.StatusServiceUnavailable {
		t.Errorf("/readyz with Redis down = %d, want 503", res.status)
	}
	if res := doURL(t, http.MethodGet, b.admin+"/healthz", "", nil, nil); res.status != http.StatusOK {
		t.Errorf("/healthz with Redis down = %d, want 200", res.status)
	}

	s.redis.Restart(t)
	// Nothing was lost: the session still works and the code, which was
	// never sent to the IdP, still opens a session.
	if res := do(t, b, http.MethodGet, "/api/x", c.Session, nil); res.status != http.StatusOK {
		t.Errorf("proxy after Redis is back = %d %s, want 200", res.status, res.body)
	}
	if res := do(t, b, http.MethodPost, "/v1/sessions", "", map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI}); res.status != http.StatusCreated {
		t.Errorf("exchange after Redis is back = %d %s, want 201", res.status, res.body)
	}
	if res := doURL(t, http.MethodGet, b.admin+"/readyz", "", nil, nil); res.status != http.StatusOK {
		t.Errorf("/readyz after Redis is back = %d, want 200", res.status)
	}
}

// The broker starts while the IdP is down; /readyz says so until discovery
// succeeds.
func TestIdPDownAtStart(t *testing.T) {
	s := newStack(t, stackOptions{})
	if err := s.idp.Stop(); err != nil {
		t.Fatal(err)
	}
	b := s.start()
	if res := doURL(t, http.MethodGet, b.admin+"/readyz", "", nil, nil); res.status != http.StatusServiceUnavailable {
		t.Errorf("/readyz before discovery = %d, want 503", res.status)
	}
	res := do(t, b, http.MethodPost, "/v1/sessions", "", map[string]string{"code": "c", "code_verifier": strings.Repeat("v", 43), "redirect_uri": redirectURI})
	if res.status != http.StatusBadGateway || res.errorCode(t) != "idp_unavailable" {
		t.Errorf("exchange before discovery = %d %s, want 502 idp_unavailable", res.status, res.body)
	}
	if err := s.idp.Restart(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, b)
	c := s.login(b)
	// An IdP outage after start does not make the broker unready.
	if err := s.idp.Stop(); err != nil {
		t.Fatal(err)
	}
	if res := doURL(t, http.MethodGet, b.admin+"/readyz", "", nil, nil); res.status != http.StatusOK {
		t.Errorf("/readyz with the IdP down after start = %d, want 200", res.status)
	}
	if res := do(t, b, http.MethodGet, "/api/x", c.Session, nil); res.status != http.StatusOK {
		t.Errorf("proxy with a valid token while the IdP is down = %d, want 200", res.status)
	}
}

func waitReady(t *testing.T, b *instance) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if res := doURL(t, http.MethodGet, b.admin+"/readyz", "", nil, nil); res.status == http.StatusOK {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("/readyz did not become 200")
}

// SIGTERM lets requests in flight finish.
func TestGracefulShutdown(t *testing.T) {
	s := newStack(t, stackOptions{})
	release := make(chan struct{})
	slow := newSlowUpstream(t, release)
	s.env["BROKER_ROUTES"] = "/api=" + slow
	b := s.start()
	c := s.login(b)

	got := make(chan response, 1)
	go func() { got <- do(t, b, http.MethodGet, "/api/slow", c.Session, nil) }()
	time.Sleep(200 * time.Millisecond) // let the request reach the upstream
	stopped := make(chan error, 1)
	go func() { stopped <- b.stop() }()
	time.Sleep(100 * time.Millisecond)
	close(release)
	if res := <-got; res.status != http.StatusOK || string(res.body) != "done" {
		t.Errorf("request in flight at shutdown = %d %q, want 200 done", res.status, res.body)
	}
	if err := <-stopped; err != nil {
		t.Errorf("serve after shutdown = %v, want nil", err)
	}
}

// A rolling deploy: SIGTERM arrives while a refresh that its request
// stopped waiting for still runs. serve waits for it and stores the rotated
// tokens before it closes the Redis client, so the next broker refreshes
// with the live refresh token.
func TestShutdownWaitsForDetachedRefresh(t *testing.T) {
	s := newStack(t, stackOptions{accessTokenTTL: time.Minute})
	b := s.start()
	c := s.login(b)
	s.clock.Advance(51 * time.Second) // about 9s left: refresh due, token still valid
	s.idp.SetLatency(4 * time.Second)
	// The request waits briefly for the refresh, then goes through with its
	// still valid token; the refresh goes on without it.
	if res := do(t, b, http.MethodGet, "/api/a", c.Session, nil); res.status != http.StatusOK {
		t.Fatalf("request during the slow refresh = %d %s, want 200", res.status, res.body)
	}
	if got := s.idp.Count("refresh_token"); got != 1 {
		t.Fatalf("refresh grants = %d, want 1 in flight", got)
	}
	if err := b.stop(); err != nil {
		t.Fatalf("serve after SIGTERM = %v", err)
	}
	if got := s.idp.SuccessfulRefreshes(); got != 1 {
		t.Fatalf("successful refreshes when serve returned = %d, want 1 (it waited for the refresh)", got)
	}
	s.idp.SetLatency(0)

	next := s.start()
	s.idp.SetAccessTokenTTL(time.Hour)
	s.clock.Advance(2 * time.Minute) // the rotated access token has expired too
	if res := do(t, next, http.MethodGet, "/api/b", c.Session, nil); res.status != http.StatusOK {
		t.Fatalf("the next broker's refresh = %d %s, want 200 (the rotated refresh token was stored)", res.status, res.body)
	}
	if got := s.idp.SuccessfulRefreshes(); got != 2 {
		t.Errorf("successful refreshes = %d, want 2", got)
	}
}

func newSlowUpstream(t *testing.T, release <-chan struct{}) string {
	t.Helper()
	u := newUpstream(t)
	u.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "done")
	})
	return u.URL
}

// serve refuses a store whose schema it does not know, saying what to run.
func TestSchemaVersionCheck(t *testing.T) {
	s := newStack(t, stackOptions{})
	rdb := s.redis.Client(t)
	ctx := context.Background()

	rdb.Del(ctx, migrations.VersionKey)
	if _, err := s.tryStart(nil); err == nil || !strings.Contains(err.Error(), "broker migrate") {
		t.Errorf("serve on an unmigrated store = %v, want an error saying to run `broker migrate`", err)
	}
	var out strings.Builder
	env := func(k string) string { return s.env[k] }
	if err := run(ctx, []string{"migrate"}, env, &out, io.Discard); err != nil {
		t.Fatalf("broker migrate: %v", err)
	}
	if v, _ := rdb.Get(ctx, migrations.VersionKey).Int(); v != migrations.Latest() {
		t.Errorf("%s = %d, want %d", migrations.VersionKey, v, migrations.Latest())
	}
	if _, err := s.tryStart(nil); err != nil {
		t.Errorf("serve after migrate: %v", err)
	}
	rdb.Set(ctx, migrations.VersionKey, migrations.Latest()+1, 0)
	if _, err := s.tryStart(nil); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("serve on a newer store = %v, want a refusal", err)
	}
}

// What a hostile client sends is bounded in Redis and in the logs: headers
// over the 64 KiB cap are refused before any handler runs, and a User-Agent
// just under it when opening a session, or a method as long in a refused
// admin call, is cut short where it is kept.
func TestHugeUserAgentAndMethodAreBounded(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	for _, req := range []struct {
		method, url, ua string
	}{
		{http.MethodPost, b.base + "/v1/sessions", strings.Repeat("A", 1<<20)},
		{strings.Repeat("M", 512<<10), b.admin + "/admin/v1/audit", ""},
	} {
		r, err := http.NewRequest(req.method, req.url, strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("User-Agent", req.ua)
		// The broker answers 431 and closes; the client may be resetting
		// while it still sends.
		if resp, err := http.DefaultClient.Do(r); err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Errorf("a request with %d bytes of headers = %d, want 431", len(req.method)+len(req.ua), resp.StatusCode)
			}
		}
	}

	huge := strings.Repeat("A", 60<<10)
	code, verifier := s.authorize("n")
	res := doURL(t, http.MethodPost, b.base+"/v1/sessions", "", map[string]string{
		"code": code, "code_verifier": verifier, "redirect_uri": redirectURI,
	}, http.Header{"User-Agent": {huge}})
	if res.status != http.StatusCreated {
		t.Fatalf("POST /v1/sessions with a 60 KiB User-Agent = %d %s, want 201", res.status, res.body)
	}
	var c created
	res.decode(t, &c)
	ua := s.redis.Client(t).HGet(context.Background(), "broker:session:{"+c.SessionID+"}", "ua").Val()
	if len(ua) > 256 {
		t.Errorf("stored user agent of %d bytes, want at most 256", len(ua))
	}

	method := strings.Repeat("M", 60<<10)
	if res := doURL(t, method, b.admin+"/admin/v1/audit", "", nil, nil); res.status != http.StatusUnauthorized {
		t.Fatalf("admin call with a 60 KiB method and no token = %d, want 401", res.status)
	}
	events, _ := s.audit(b, "5")
	if len(events) == 0 || events[0].Action != "admin.denied" {
		t.Fatalf("newest audit events = %+v, want admin.denied first", events)
	}
	if n := len(events[0].Detail); n > 512 || strings.Contains(events[0].Detail, "MMMM") {
		t.Errorf("admin.denied detail of %d bytes holds the raw method", n)
	}
	for _, line := range strings.Split(s.allLogs(), "\n") {
		if len(line) > 4096 {
			t.Errorf("a log line of %d bytes: %.200s...", len(line), line)
		}
	}
}
