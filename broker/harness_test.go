package broker_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/redis/go-redis/v9"
	"golang.org/x/oauth2"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/mobile-token-broker/broker/internal/devidp"
	"github.com/mobile-token-broker/broker/internal/redistest"
	"github.com/mobile-token-broker/broker/migrations"
	"github.com/mobile-token-broker/broker/sessions"
)

// The broker-level tests run the domain on the real Redis adapter, a real
// redis-server and the real development OP over HTTP. Faults are injected
// around the real parts: a decorator around the real store, a TCP proxy
// that loses Redis's replies, Redis stopped, the IdP paused.

const redirectURI = devidp.DefaultRedirectURI

// clock is the brokers' clock: the wall clock plus an offset that tests move
// forward to expire tokens without sleeping.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// env is one Redis, one IdP and one keyring that any number of broker
// replicas (Services) share.
type env struct {
	t     *testing.T
	redis *redistest.Server
	idp   *devidp.Provider
	keys  *sessions.Keyring
	clock *clock
}

func newEnv(t *testing.T, accessTokenTTL time.Duration) *env {
	t.Helper()
	return newEnvWith(t, devidp.Config{AccessTokenTTL: accessTokenTTL})
}

// newEnvWith is newEnv with an IdP configured as given.
func newEnvWith(t *testing.T, idpConfig devidp.Config) *env {
	t.Helper()
	rs := redistest.Start(t)
	idp, err := devidp.Start(idpConfig)
	if err != nil {
		t.Fatalf("devidp.Start: %v", err)
	}
	t.Cleanup(func() { _ = idp.Close() })
	keys, err := sessions.NewEphemeralKeyring()
	if err != nil {
		t.Fatal(err)
	}
	rdb := rs.Client(t)
	if _, err := migrations.Apply(context.Background(), rdb, migrations.Options{}); err != nil {
		t.Fatalf("migrations.Apply: %v", err)
	}
	return &env{t: t, redis: rs, idp: idp, keys: keys, clock: &clock{}}
}

// replica is one broker on the env: its Service, the real store under it
// and its log.
type replica struct {
	*broker.Service
	store *sessions.Store
	logs  *syncBuffer
}

type replicaOptions struct {
	// redisURL overrides the env's Redis, e.g. with a fault proxy.
	redisURL string
	// keys overrides the env's keyring.
	keys *sessions.Keyring
	// wrap decorates the real store as the broker sees it.
	wrap func(broker.Store) broker.Store
	// locker decorates the real store's leases.
	locker func(broker.Locker) broker.Locker
	// config adjusts the broker's configuration.
	config func(*broker.Config)
	// undiscovered leaves the IdP undiscovered, as a replica that started
	// while the IdP was down.
	undiscovered bool
}

// replica starts one more broker on the env.
func (e *env) replica(opts replicaOptions) *replica {
	e.t.Helper()
	url := opts.redisURL
	if url == "" {
		url = e.redis.URL()
	}
	rdb, err := sessions.NewClient(url)
	if err != nil {
		e.t.Fatal(err)
	}
	keys := opts.keys
	if keys == nil {
		keys = e.keys
	}
	store := sessions.New(rdb, keys, sessions.Options{Now: e.clock.Now})
	var bs broker.Store = store
	if opts.wrap != nil {
		bs = opts.wrap(store)
	}
	var locker broker.Locker = store
	if opts.locker != nil {
		locker = opts.locker(store)
	}
	logs := &syncBuffer{}
	cfg := broker.Config{
		Issuer:       e.idp.Issuer(),
		ClientID:     e.idp.ClientID(),
		RedirectURIs: []string{redirectURI},
		Store:        bs,
		Locker:       locker,
		Audit:        store,
		Replay:       store,
		Now:          e.clock.Now,
		Logger:       slog.New(slog.NewJSONHandler(logs, nil)),
	}
	if opts.config != nil {
		opts.config(&cfg)
	}
	svc, err := broker.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	// Registered after the client's cleanup, so it runs before it.
	e.t.Cleanup(func() { _ = rdb.Close() })
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := svc.Close(ctx); err != nil {
			e.t.Errorf("Close = %v", err)
		}
	})
	if opts.undiscovered {
		return &replica{Service: svc, store: store, logs: logs}
	}
	if err := svc.Discover(context.Background()); err != nil {
		e.t.Fatalf("Discover: %v", err)
	}
	return &replica{Service: svc, store: store, logs: logs}
}

// login plays the app: the user signs in at the IdP, and the app hands the
// code to the broker.
func (e *env) login(r *replica) *broker.NewSession {
	e.t.Helper()
	return e.loginAs(r, devidp.LoginRequest{}, "test")
}

// loginAs is login with the given sign-in request and the app's user agent.
func (e *env) loginAs(r *replica, req devidp.LoginRequest, userAgent string) *broker.NewSession {
	e.t.Helper()
	verifier := oauth2.GenerateVerifier()
	req.CodeChallenge = oauth2.S256ChallengeFromVerifier(verifier)
	req.State = "st-" + rand.Text()
	code, err := e.idp.Login(context.Background(), req)
	if err != nil {
		e.t.Fatalf("Login: %v", err)
	}
	ns, err := r.Exchange(context.Background(), broker.ExchangeRequest{Code: code, CodeVerifier: verifier, RedirectURI: redirectURI, IP: "192.0.2.1", UserAgent: userAgent})
	if err != nil {
		e.t.Fatalf("Exchange = %v", err)
	}
	return ns
}

// client is a plain Redis client on the env's Redis, for looking at and
// editing what the broker stored.
func (e *env) client() *redis.Client { return e.redis.Client(e.t) }

// syncBuffer collects a replica's log output.
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

// eventually waits until cond holds, polling; it fails the test after
// timeout. It synchronises on a condition, never on a fixed sleep.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// accessToken asks the replica for a fresh access token of handle.
func accessToken(r *replica, handle string) (string, error) {
	_, tok, err := r.AccessToken(context.Background(), broker.Credential{Handle: handle})
	return tok, err
}

// mustAccessToken is accessToken that fails the test on an error.
func mustAccessToken(t *testing.T, r *replica, handle string) string {
	t.Helper()
	tok, err := accessToken(r, handle)
	if err != nil {
		t.Fatalf("AccessToken = %v (code %s), want a token", err, broker.ErrorCode(err))
	}
	return tok
}

// storedSession reads a session as the store has it.
func storedSession(t *testing.T, r *replica, id string) *broker.Session {
	t.Helper()
	sess, err := r.store.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%s) = %v", id, err)
	}
	return sess
}

// faultyStore decorates the real store: each hook, when set, runs in place
// of the method and may call the real one.
type faultyStore struct {
	broker.Store
	mu     sync.Mutex
	end    func(ctx context.Context, id string, why broker.EndReason) (*broker.Ending, error)
	ending func(ctx context.Context, id string) (*broker.Ending, error)
}

func (f *faultyStore) Ending(ctx context.Context, id string) (*broker.Ending, error) {
	f.mu.Lock()
	hook := f.ending
	f.mu.Unlock()
	if hook != nil {
		return hook(ctx, id)
	}
	return f.Store.Ending(ctx, id)
}

func (f *faultyStore) End(ctx context.Context, id string, why broker.EndReason) (*broker.Ending, error) {
	f.mu.Lock()
	hook := f.end
	f.mu.Unlock()
	if hook != nil {
		return hook(ctx, id, why)
	}
	return f.Store.End(ctx, id, why)
}

// flakyLocker decorates the real locker: the first failReleases releases of
// its leases fail as if Redis did not answer, without reaching Redis.
type flakyLocker struct {
	broker.Locker
	failReleases atomic.Int32
}

func (f *flakyLocker) TryLock(ctx context.Context, id string, ttl time.Duration) (broker.Lease, bool, error) {
	l, ok, err := f.Locker.TryLock(ctx, id, ttl)
	if !ok || err != nil {
		return l, ok, err
	}
	return &flakyLease{Lease: l, locker: f}, true, nil
}

type flakyLease struct {
	broker.Lease
	locker *flakyLocker
}

func (l *flakyLease) Unwrap() broker.Lease { return l.Lease }

func (l *flakyLease) Release(ctx context.Context) error {
	if l.locker.failReleases.Add(-1) >= 0 {
		return errStoreUnavailable
	}
	return l.Lease.Release(ctx)
}

// errStoreUnavailable is the error the real store gives when Redis does not
// answer.
var errStoreUnavailable = fmt.Errorf("injected: %w", broker.ErrStoreUnavailable)

// signLogoutToken signs a logout token with the IdP's own key, as the IdP
// sends it to the back-channel endpoint.
func (e *env) signLogoutToken(claims map[string]any) string {
	e.t.Helper()
	key, kid := e.idp.SigningKey()
	raw, err := devidp.SignJWT(jose.RS256, key, kid, devidp.LogoutTokenType, claims)
	if err != nil {
		e.t.Fatal(err)
	}
	return raw
}

// logoutToken returns a signed logout token for sub with a fresh jti.
func (e *env) logoutToken(sub string) string {
	return e.signLogoutToken(map[string]any{
		"iss":    e.idp.Issuer(),
		"aud":    e.idp.ClientID(),
		"iat":    e.clock.Now().Unix(),
		"jti":    rand.Text(),
		"sub":    sub,
		"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}},
	})
}

// auditActions returns the newest audit events.
func auditEvents(t *testing.T, r *replica) []broker.AuditEvent {
	t.Helper()
	events, err := r.Audit(context.Background(), 100)
	if err != nil {
		t.Fatalf("Audit = %v", err)
	}
	return events
}

// isInvalidToken reports whether err is the answer for an ended session.
func isInvalidToken(err error) bool {
	return errors.Is(err, broker.ErrInvalidToken) || broker.ErrorCode(err) == broker.CodeInvalidToken
}
