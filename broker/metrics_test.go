package broker_test

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

// countingMetrics records what the broker reports, for tests that check its
// figures.
type countingMetrics struct {
	mu     sync.Mutex
	counts map[string]int
}

func newCountingMetrics() *countingMetrics { return &countingMetrics{counts: map[string]int{}} }

func (m *countingMetrics) add(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.counts[key]++
}

func (m *countingMetrics) snapshot() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.counts)
}

func (m *countingMetrics) get(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[key]
}

func (m *countingMetrics) Exchange(outcome string)  { m.add("exchange:" + outcome) }
func (m *countingMetrics) Refresh(outcome string)   { m.add("refresh:" + outcome) }
func (m *countingMetrics) Revocation(reason string) { m.add("ended:" + reason) }
func (m *countingMetrics) IdPRequest(endpoint, outcome string, _ time.Duration) {
	m.add("idp:" + endpoint + ":" + outcome)
}

// gettingStore counts the session reads of the real store under it, on
// the request path (Lookup) and the refresh's (Get) alike.
type gettingStore struct {
	broker.Store
	gets atomic.Int64
}

func (g *gettingStore) Get(ctx context.Context, id string) (*broker.Session, error) {
	g.gets.Add(1)
	return g.Store.Get(ctx, id)
}

func (g *gettingStore) Lookup(ctx context.Context, id string) (*broker.Session, error) {
	g.gets.Add(1)
	return g.Store.Lookup(ctx, id)
}

// TestRefreshCoalescedCount has five requests need one refresh at once:
// the one that refreshes counts ok, the four that waited for it count
// coalesced, and none counts both.
func TestRefreshCoalescedCount(t *testing.T) {
	e := newEnv(t, time.Minute)
	m := newCountingMetrics()
	gs := &gettingStore{}
	r := e.replica(replicaOptions{
		wrap:   func(s broker.Store) broker.Store { gs.Store = s; return gs },
		config: func(c *broker.Config) { c.Metrics = m },
	})
	ns := e.login(r)
	e.clock.Advance(time.Minute) // the access token has expired

	const n = 5
	e.idp.Pause()
	resumed := false
	defer func() {
		if !resumed {
			e.idp.Resume()
		}
	}()
	before := gs.gets.Load()
	refreshes := e.idp.Count("refresh_token")
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { _, errs[i] = accessToken(r, ns.Handle) })
	}
	// Every request has read the session (with its expired token) and the
	// refresh that one of them started is held at the IdP: n reads, and
	// the refresh's own read under its lease.
	eventually(t, 5*time.Second, "every request waits for the refresh", func() bool {
		return gs.gets.Load()-before >= n+1 && e.idp.Count("refresh_token")-refreshes == 1
	})
	e.idp.Resume()
	resumed = true
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("request %d: %v", i, err)
		}
	}
	if got := e.idp.Count("refresh_token") - refreshes; got != 1 {
		t.Errorf("the IdP saw %d refresh grants, want 1", got)
	}
	if got := m.get("refresh:ok"); got != 1 {
		t.Errorf("refresh ok = %d, want 1", got)
	}
	if got := m.get("refresh:coalesced"); got != n-1 {
		t.Errorf("refresh coalesced = %d, want %d (only the requests that waited for another's refresh)", got, n-1)
	}
}

// TestIdPRequestOutcomes reports each call to the IdP by its endpoint and
// outcome: an answer in 5xx or 4xx, and no answer in time.
func TestIdPRequestOutcomes(t *testing.T) {
	e := newEnv(t, time.Minute)
	m := newCountingMetrics()
	r := e.replica(replicaOptions{config: func(c *broker.Config) {
		c.Metrics = m
		c.IdPTimeout = 300 * time.Millisecond
	}})
	if got := m.get("idp:discovery:ok"); got != 1 {
		t.Errorf("discovery ok = %d, want 1", got)
	}
	ns := e.login(r)
	if got := m.get("idp:token:ok"); got != 1 {
		t.Errorf("token ok after a code grant = %d, want 1", got)
	}

	// A userinfo call the paused IdP does not answer within IdPTimeout;
	// the access token is fresh, so no refresh comes first.
	e.idp.Pause()
	_, err := r.UserInfo(context.Background(), broker.Credential{Handle: ns.Handle})
	e.idp.Resume()
	if err == nil {
		t.Fatal("UserInfo with the IdP paused succeeded")
	}
	if got := m.get("idp:userinfo:timeout"); got != 1 {
		t.Errorf("userinfo timeout with the IdP paused = %d, want 1 (%v)", got, m.snapshot())
	}

	e.idp.FailRefresh(503, "temporarily_unavailable", "down", 1)
	e.clock.Advance(time.Minute)
	_, _ = accessToken(r, ns.Handle)
	if got := m.get("idp:token:status_5xx"); got != 1 {
		t.Errorf("token status_5xx after a 503 = %d, want 1", got)
	}
	if got := m.get("idp:other:ok"); got != 0 {
		t.Errorf("%d calls to an endpoint the discovery document does not list", got)
	}
}
