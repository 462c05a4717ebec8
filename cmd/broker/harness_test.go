package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/mobile-token-broker/broker/handlers"
	"github.com/mobile-token-broker/broker/internal/devidp"
	"github.com/mobile-token-broker/broker/internal/redistest"
	"github.com/mobile-token-broker/broker/migrations"
	"github.com/mobile-token-broker/broker/sessions"
)

// The end-to-end tests run the broker's real wiring (serve) against a real
// redis-server and a real OpenID Provider over HTTP, and play the app.

const redirectURI = devidp.DefaultRedirectURI

// testClock is the brokers' clock: the wall clock plus an offset that tests
// move forward to expire tokens and sessions without sleeping.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// upstream is an API behind the broker that records what it received.
type upstream struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*http.Request
	auths    map[string]int
}

func newUpstream(t testing.TB) *upstream {
	t.Helper()
	u := &upstream{auths: map[string]int{}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.requests = append(u.requests, r.Clone(context.Background()))
		u.auths[r.Header.Get("Authorization")]++
		u.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"method":        r.Method,
			"path":          r.URL.EscapedPath(),
			"query":         r.URL.RawQuery,
			"authorization": r.Header.Get("Authorization"),
			"body":          string(body),
		})
	}))
	t.Cleanup(u.Close)
	return u
}

// authorizations returns the distinct Authorization headers seen.
func (u *upstream) authorizations() map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return maps.Clone(u.auths)
}

// stack is one Redis, one IdP, one upstream, and any number of brokers.
type stack struct {
	t        testing.TB
	redis    *redistest.Server
	idp      *devidp.Provider
	upstream *upstream
	clock    *testClock
	env      map[string]string
	bodies   handlers.BodyLimits
	brokers  []*instance
}

type stackOptions struct {
	clientSecret   string
	accessTokenTTL time.Duration
	env            map[string]string
	// redisURL points the stack at a Redis the test started, e.g. a
	// Sentinel or Cluster URL; the stack's own standalone Redis when empty,
	// and then only is stack.redis set.
	redisURL string
	// bodies replaces the brokers' default body limits.
	bodies handlers.BodyLimits
}

func newStack(t testing.TB, opts stackOptions) *stack {
	t.Helper()
	var rs *redistest.Server
	redisURL := opts.redisURL
	if redisURL == "" {
		rs = redistest.Start(t)
		redisURL = rs.URL()
	}
	idp, err := devidp.Start(devidp.Config{
		ClientSecret:   opts.clientSecret,
		RedirectURIs:   []string{redirectURI},
		AccessTokenTTL: opts.accessTokenTTL,
	})
	if err != nil {
		t.Fatalf("devidp.Start: %v", err)
	}
	t.Cleanup(func() { _ = idp.Close() })
	up := newUpstream(t)
	rdb, err := sessions.NewClient(redisURL)
	if err != nil {
		t.Fatalf("sessions.NewClient: %v", err)
	}
	defer rdb.Close()
	if _, err := migrations.Apply(context.Background(), rdb, migrations.Options{}); err != nil {
		t.Fatalf("migrations.Apply: %v", err)
	}
	env := map[string]string{
		"BROKER_LISTEN":             "127.0.0.1:0",
		"BROKER_ADMIN_LISTEN":       "127.0.0.1:0",
		"BROKER_REDIS_URL":          redisURL,
		"BROKER_OIDC_ISSUER":        idp.Issuer(),
		"BROKER_OIDC_CLIENT_ID":     idp.ClientID(),
		"BROKER_OIDC_CLIENT_SECRET": opts.clientSecret,
		"BROKER_REDIRECT_URIS":      redirectURI + ",com.example.other:/cb",
		"BROKER_ROUTES":             "/api=" + up.URL + "/base,/api/orders=" + up.URL + "/orders/v2",
		"BROKER_ENCRYPTION_KEYS":    "k1:" + randomKey(t),
		"BROKER_ADMIN_TOKENS":       "secops:" + randomKey(t),
		// Tests fire bursts from one IP; the rate limit tests set their own.
		"BROKER_RATE_LIMIT_EXCHANGE":    "1000/s",
		"BROKER_RATE_LIMIT_INVALID":     "1000/s",
		"BROKER_RATE_LIMIT_BACKCHANNEL": "1000/s",
	}
	maps.Copy(env, opts.env)
	return &stack{t: t, redis: rs, idp: idp, upstream: up, clock: &testClock{}, env: env, bodies: opts.bodies}
}

func randomKey(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// instance is one running broker.
type instance struct {
	base, admin string
	logs        *syncBuffer
	stop        func() error
}

// syncBuffer collects a broker's log output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// start runs one more broker on the stack's Redis and IdP.
func (s *stack) start() *instance {
	s.t.Helper()
	inst, err := s.tryStart(nil)
	if err != nil {
		s.t.Fatalf("serve: %v", err)
	}
	return inst
}

// tryStart runs a broker with extra environment and returns its error if it
// stops before listening.
func (s *stack) tryStart(extra map[string]string) (*instance, error) {
	s.t.Helper()
	env := maps.Clone(s.env)
	maps.Copy(env, extra)
	getenv := func(k string) string { return env[k] }
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	type addrs struct{ public, admin string }
	ready := make(chan addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, getenv, io.Discard, logs, &hooks{
			now:       s.clock.Now,
			listening: func(p, a string) { ready <- addrs{p, a} },
			bodies:    s.bodies,
		})
	}()
	select {
	case a := <-ready:
		var once sync.Once
		var stopErr error
		inst := &instance{base: "http://" + a.public, admin: "http://" + a.admin, logs: logs}
		inst.stop = func() error {
			once.Do(func() {
				cancel()
				stopErr = <-done
			})
			return stopErr
		}
		s.t.Cleanup(func() { _ = inst.stop() })
		s.brokers = append(s.brokers, inst)
		return inst, nil
	case err := <-done:
		cancel()
		return nil, err
	case <-time.After(30 * time.Second):
		cancel()
		return nil, fmt.Errorf("broker did not start listening")
	}
}

// allLogs returns every broker's log output so far.
func (s *stack) allLogs() string {
	var b strings.Builder
	for _, i := range s.brokers {
		b.WriteString(i.logs.String())
	}
	return b.String()
}

// authorize plays the user in the system browser and returns a fresh code
// and its PKCE verifier.
func (s *stack) authorize(nonce string, scopes ...string) (code, verifier string) {
	s.t.Helper()
	verifier = oauth2.GenerateVerifier()
	code, err := s.idp.Login(context.Background(), devidp.LoginRequest{
		CodeChallenge: oauth2.S256ChallengeFromVerifier(verifier),
		Nonce:         nonce,
		State:         "st-" + nonce,
		Scopes:        scopes,
	})
	if err != nil {
		s.t.Fatalf("Login: %v", err)
	}
	return code, verifier
}

// created is the 201 body of POST /v1/sessions.
type created struct {
	Session   string         `json:"session"`
	TokenType string         `json:"token_type"`
	SessionID string         `json:"session_id"`
	ExpiresAt time.Time      `json:"expires_at"`
	User      map[string]any `json:"user"`
	IDToken   string         `json:"id_token"`
}

// login runs the whole app flow against inst and returns the new session.
func (s *stack) login(inst *instance) created {
	s.t.Helper()
	code, verifier := s.authorize("n-" + rand.Text())
	res := do(s.t, inst, http.MethodPost, "/v1/sessions", "", map[string]string{
		"code": code, "code_verifier": verifier, "redirect_uri": redirectURI,
	})
	if res.status != http.StatusCreated {
		s.t.Fatalf("POST /v1/sessions = %d %s, want 201", res.status, res.body)
	}
	var c created
	res.decode(s.t, &c)
	return c
}

// response is a read HTTP response.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// errorCode returns the "error" of a contract error body.
func (r response) errorCode(t testing.TB) string {
	t.Helper()
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	r.decode(t, &e)
	if e.Description == "" {
		t.Errorf("error body %s has no error_description", r.body)
	}
	return e.Error
}

// do sends a request to the broker's public listener. body may be nil, a
// string (sent raw) or a value encoded as JSON.
func do(t testing.TB, inst *instance, method, path, handle string, body any) response {
	t.Helper()
	return doURL(t, method, inst.base+path, handle, body, nil)
}

func doURL(t testing.TB, method, url, bearer string, body any, header http.Header) response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	maps.Copy(req.Header, header)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := clientFor(t).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// refreshStorm expires the session's access token and sends n concurrent
// proxied requests with its handle, spread over brokers. Every request must
// succeed, the IdP must see exactly one refresh grant, and the upstream must
// see one access token during the storm: the refreshed one.
func (s *stack) refreshStorm(t *testing.T, brokers []*instance, handle string, n int) {
	t.Helper()
	refreshesBefore := s.idp.Count("refresh_token")
	authsBefore := s.upstream.authorizations()
	s.idp.SetAccessTokenTTL(time.Hour)
	s.clock.Advance(5 * time.Second) // the access token has expired

	if v := validatorOf(t); v != nil {
		defer v.hold()()
	}
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Go(func() {
			res := do(t, brokers[i%len(brokers)], http.MethodGet, fmt.Sprintf("/api/storm/%d", i), handle, nil)
			statuses[i] = res.status
		})
	}
	wg.Wait()
	for i, st := range statuses {
		if st != http.StatusOK {
			t.Errorf("request %d = %d, want 200", i, st)
		}
	}
	if got := s.idp.Count("refresh_token") - refreshesBefore; got != 1 {
		t.Errorf("the IdP saw %d refresh grants, want exactly 1", got)
	}
	used := 0
	for auth, count := range s.upstream.authorizations() {
		if count != authsBefore[auth] {
			used++
		}
	}
	if used != 1 {
		t.Errorf("the upstream saw %d distinct access tokens during the storm, want 1", used)
	}
}
