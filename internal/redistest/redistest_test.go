package redistest_test

import (
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mobile-token-broker/broker/internal/redistest"
)

func TestStartStopRestart(t *testing.T) {
	s := redistest.Start(t)
	if !strings.HasPrefix(s.URL(), "redis://") || !strings.Contains(s.URL(), s.Addr()) {
		t.Errorf("URL() = %q, want a redis:// URL for %s", s.URL(), s.Addr())
	}
	c := s.Client(t)
	ctx := t.Context()

	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET k = %q, %v; want %q", got, err, "v")
	}

	s.Stop(t)
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING after Stop succeeded, want an error")
	}
	if conn, err := net.Dial("tcp", s.Addr()); !errors.Is(err, syscall.ECONNREFUSED) {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("dial %s after Stop = %v, want connection refused", s.Addr(), err)
	}

	addr := s.Addr()
	s.Restart(t)
	if s.Addr() != addr {
		t.Errorf("Addr() after Restart = %q, want %q", s.Addr(), addr)
	}
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Errorf("GET k after Restart = %q, %v, want the value written before the kill", got, err)
	}

	s.Restart(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart of a running server: %v", err)
	}
}

func TestServersAreIsolated(t *testing.T) {
	if os.Getenv(redistest.EnvURL) != "" {
		t.Skipf("%s is set: every test shares one server", redistest.EnvURL)
	}
	a, b := redistest.Start(t), redistest.Start(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("two servers share %s", a.Addr())
	}
	ctx := t.Context()
	if err := a.Client(t).Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatalf("SET on a: %v", err)
	}
	if err := b.Client(t).Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Errorf("GET k on b = %v, want redis.Nil", err)
	}
}

// A paused server accepts connections and commands but answers nothing
// until resumed; then it runs what reached it, even for a client that gave
// up.
func TestPauseResume(t *testing.T) {
	s := redistest.Start(t)
	ctx := t.Context()
	c := s.Client(t)
	impatient := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, ReadTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { impatient.Close() })
	// Both clients have a connection open before the pause.
	for name, cl := range map[string]*redis.Client{"client": c, "impatient client": impatient} {
		if err := cl.Ping(ctx).Err(); err != nil {
			t.Fatalf("PING from the %s: %v", name, err)
		}
	}

	s.Pause(t)
	var ne net.Error
	if err := impatient.Set(ctx, "abandoned", "v", 0).Err(); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("SET abandoned while paused = %v, want a timeout", err)
	}
	held := make(chan error, 1)
	go func() { held <- c.Set(ctx, "held", "v", 0).Err() }()
	select {
	case err := <-held:
		t.Fatalf("SET held returned while paused: %v", err)
	case <-time.After(200 * time.Millisecond):
	}

	s.Resume(t)
	select {
	case err := <-held:
		if err != nil {
			t.Fatalf("SET held after Resume: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SET held did not return after Resume")
	}
	for _, key := range []string{"held", "abandoned"} {
		if got, err := c.Get(ctx, key).Result(); err != nil || got != "v" {
			t.Errorf("GET %s after Resume = %q, %v; want v", key, got, err)
		}
	}
}
