package redistest_test

import (
	"errors"
	"io"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/mobile-token-broker/broker/internal/redistest"
)

// proxied returns a client of s that connects through a new proxy, with
// go-redis's default retries when maxRetries is 0.
func proxied(t *testing.T, s *redistest.Server, maxRetries int) (*redistest.Proxy, *redis.Client) {
	t.Helper()
	p := redistest.NewProxy(t, s.Addr())
	opts, err := redis.ParseURL(s.URL())
	if err != nil {
		t.Fatalf("parse %q: %v", s.URL(), err)
	}
	opts.Addr = p.Addr()
	opts.MaxRetries = maxRetries
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	// Connect now, so that no fault fires on the handshake.
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("PING through the proxy: %v", err)
	}
	return p, c
}

func TestProxyForwards(t *testing.T) {
	s := redistest.Start(t)
	p, c := proxied(t, s, 0)
	if p.URL() != "redis://"+p.Addr() {
		t.Errorf("URL() = %q, want redis://%s", p.URL(), p.Addr())
	}
	ctx := t.Context()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET through the proxy: %v", err)
	}
	if got, err := s.Client(t).Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Errorf("GET k on the server = %q, %v; want v", got, err)
	}
	if got := p.Fired(); got != 0 {
		t.Errorf("Fired() = %d, want 0", got)
	}
}

// The command runs, its reply is lost: a client that does not retry sees
// an error for a write that took effect.
func TestProxyDropReplyOnce(t *testing.T) {
	s := redistest.Start(t)
	p, c := proxied(t, s, -1)
	ctx := t.Context()

	p.DropReplyOnce([]byte("k"))
	if err := c.Set(ctx, "k", "v", 0).Err(); !errors.Is(err, io.EOF) {
		t.Fatalf("SET k with its reply dropped = %v, want io.EOF", err)
	}
	if got := p.Fired(); got != 1 {
		t.Errorf("Fired() = %d, want 1", got)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET k after the lost reply = %q, %v; want v", got, err)
	}
	// The fault fired once.
	if err := c.Set(ctx, "k", "w", 0).Err(); err != nil {
		t.Fatalf("second SET k: %v", err)
	}
	if got := p.Fired(); got != 1 {
		t.Errorf("Fired() after a second SET = %d, want 1", got)
	}
}

// go-redis retries a command whose reply was lost: INCR runs twice. This
// is the blind retry a non-idempotent write must be guarded against.
func TestProxyDropReplyOnceRetriedTwice(t *testing.T) {
	s := redistest.Start(t)
	p, c := proxied(t, s, 0)
	ctx := t.Context()

	p.DropReplyOnce([]byte("counter"))
	n, err := c.Incr(ctx, "counter").Result()
	if err != nil {
		t.Fatalf("INCR counter with default retries: %v", err)
	}
	if n != 2 {
		t.Errorf("INCR counter = %d, want 2 (the lost first run and the retry)", n)
	}
	if got, err := s.Client(t).Get(ctx, "counter").Int(); err != nil || got != 2 {
		t.Errorf("GET counter = %d, %v; want 2", got, err)
	}
	if got := p.Fired(); got != 1 {
		t.Errorf("Fired() = %d, want 1", got)
	}
}

// A script run with EVALSHA is matched by its SHA1, not its body.
func TestProxyDropReplyOnceMatchesScriptSHA(t *testing.T) {
	s := redistest.Start(t)
	p, c := proxied(t, s, -1)
	ctx := t.Context()
	script := redis.NewScript(`return redis.call("INCR", KEYS[1])`)
	if err := script.Load(ctx, c).Err(); err != nil {
		t.Fatalf("SCRIPT LOAD: %v", err)
	}

	p.DropReplyOnce([]byte(script.Hash()))
	if err := script.EvalSha(ctx, c, []string{"runs"}).Err(); !errors.Is(err, io.EOF) {
		t.Fatalf("EVALSHA with its reply dropped = %v, want io.EOF", err)
	}
	if got, err := c.Get(ctx, "runs").Int(); err != nil || got != 1 {
		t.Errorf("GET runs = %d, %v; want 1", got, err)
	}
}

func TestProxyCutHeal(t *testing.T) {
	s := redistest.Start(t)
	p, c := proxied(t, s, -1)
	ctx := t.Context()

	p.Cut()
	if err := c.Set(ctx, "k", "v", 0).Err(); err == nil {
		t.Fatal("SET on a connection open at Cut succeeded, want an error")
	}
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING on a new connection after Cut succeeded, want an error")
	}
	// A client with retries gives up too.
	retrying := redis.NewClient(&redis.Options{Addr: p.Addr()})
	defer retrying.Close()
	if err := retrying.Ping(ctx).Err(); err == nil {
		t.Fatal("PING with retries after Cut succeeded, want an error")
	}

	p.Heal()
	if err := c.Set(ctx, "k", "healed", 0).Err(); err != nil {
		t.Fatalf("SET after Heal: %v", err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "healed" {
		t.Errorf("GET k after Heal = %q, %v; want healed", got, err)
	}
}
