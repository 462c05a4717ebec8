package main

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/internal/devidp"
	"github.com/mobile-token-broker/broker/internal/redistest"
)

// sessionKeyOf is the Redis key of a session, as sessions/keys.go lays it
// out: the hash tag is the session id, so the id alone decides the slot.
func sessionKeyOf(id string) string { return "broker:session:{" + id + "}" }

// TestCluster runs three brokers on a three-master Redis Cluster: a session
// and its lease share a slot, while a user's sessions and indexes are spread
// over slots and nodes, so revocation and the refresh lease must work across
// them.
func TestCluster(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartCluster(t)
	s := newStack(t, stackOptions{accessTokenTTL: 2 * time.Second, redisURL: cluster.URL()})
	brokers := []*instance{s.start(), s.start(), s.start()}

	t.Run("revoke on one broker ends the session on all", func(t *testing.T) {
		c := s.login(brokers[0])
		other := s.login(brokers[1])
		wantStatus(t, brokers, "/v1/session", c.Session, http.StatusOK)
		if res := s.admin(brokers[2], http.MethodDelete, "/admin/v1/sessions/"+c.SessionID); res.status != http.StatusNoContent {
			t.Fatalf("DELETE /admin/v1/sessions/{id} = %d %s, want 204", res.status, res.body)
		}
		wantStatus(t, brokers, "/v1/session", c.Session, http.StatusUnauthorized)
		wantStatus(t, brokers, "/v1/session", other.Session, http.StatusOK)
		// Leave the user with no session for the next case.
		if res := s.admin(brokers[0], http.MethodDelete, "/admin/v1/sessions/"+other.SessionID); res.status != http.StatusNoContent {
			t.Fatalf("DELETE /admin/v1/sessions/{id} = %d %s, want 204", res.status, res.body)
		}
	})

	t.Run("revoke all of a user's sessions across slots", func(t *testing.T) {
		ctx := context.Background()
		rdb := cluster.Client(t)
		var opened []created
		slots := map[int64]bool{}
		masters := map[string]bool{}
		// Six sessions land on more than one master but for a 0.4% chance;
		// more are opened then, so that the case always spans nodes.
		for len(opened) < 6 || len(masters) < 2 {
			if len(opened) == 20 {
				t.Fatalf("20 sessions all on one master")
			}
			c := s.login(brokers[len(opened)%len(brokers)])
			opened = append(opened, c)
			slot, err := rdb.ClusterKeySlot(ctx, sessionKeyOf(c.SessionID)).Result()
			if err != nil {
				t.Fatalf("CLUSTER KEYSLOT: %v", err)
			}
			slots[slot] = true
			masters[cluster.MasterOf(t, sessionKeyOf(c.SessionID)).Addr()] = true
		}
		if len(slots) < 2 {
			t.Fatalf("%d sessions hash to %d slot, want more than one", len(opened), len(slots))
		}
		res := s.admin(brokers[1], http.MethodDelete, "/admin/v1/users/"+devidp.DemoSubject+"/sessions")
		if res.status != http.StatusOK {
			t.Fatalf("DELETE /admin/v1/users/{sub}/sessions = %d %s, want 200", res.status, res.body)
		}
		var got struct {
			Revoked *int `json:"revoked"`
		}
		res.decode(t, &got)
		if got.Revoked == nil || *got.Revoked != len(opened) {
			t.Errorf("revoke all of %d sessions in %d slots on %d masters = %s, want revoked %d", len(opened), len(slots), len(masters), res.body, len(opened))
		}
		for _, c := range opened {
			wantStatus(t, brokers, "/v1/session", c.Session, http.StatusUnauthorized)
		}
	})

	// The shape of TestRefreshStorm: the lease that admits one refresher
	// lives in the session's slot.
	t.Run("refresh storm", func(t *testing.T) {
		c := s.login(brokers[0])
		s.refreshStorm(t, brokers, c.Session, 200)
	})
}

// TestClusterFailover stops the master that holds a session: once its
// replica is promoted, the session works again through the brokers, with
// nothing lost. Until the brokers' client reloads its slot map (every 2 s
// while commands flow), requests for that slot answer 503, so the test polls
// with a bound; a 401 would mean the session was lost and fails at once.
func TestClusterFailover(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartClusterWithReplicas(t)
	s := newStack(t, stackOptions{redisURL: cluster.URL()})
	brokers := []*instance{s.start(), s.start()}
	var opened []created
	for range 4 {
		opened = append(opened, s.login(brokers[0]))
	}
	victim := opened[0]
	master := cluster.MasterOf(t, sessionKeyOf(victim.SessionID))
	// Replication is asynchronous: wait until the replica has the session,
	// as a production failover would lose the last writes otherwise.
	if n, err := master.Client(t).Do(context.Background(), "WAIT", 1, 2000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 on the session's master = %d, %v; want 1", n, err)
	}

	stopped := time.Now()
	master.Stop(t)
	cluster.WaitHealthy(t)
	promoted := time.Since(stopped)
	if cluster.MasterOf(t, sessionKeyOf(victim.SessionID)) == master {
		t.Fatal("the stopped master still serves the session's slot")
	}

	const bound = 15 * time.Second
	for i, b := range brokers {
		attempts, unavailable := 0, 0
		for {
			attempts++
			res := do(t, b, http.MethodGet, "/v1/session", victim.Session, nil)
			if res.status == http.StatusOK {
				break
			}
			if res.status != http.StatusServiceUnavailable {
				t.Fatalf("broker %d: GET /v1/session after failover = %d %s, want 200 (or 503 until the slot map is reloaded)", i+1, res.status, res.body)
			}
			unavailable++
			if time.Since(stopped) > bound {
				t.Fatalf("broker %d: session still unavailable %v after its master stopped", i+1, bound)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("broker %d: session served again after %d attempts (%d answered 503), %v after the master stopped; promotion took %v",
			i+1, attempts, unavailable, time.Since(stopped), promoted)
	}
	for _, c := range opened {
		wantStatus(t, brokers, "/api/x", c.Session, http.StatusOK)
	}
	// New sessions land on the promoted master too.
	for range 3 {
		c := s.login(brokers[1])
		wantStatus(t, brokers, "/v1/session", c.Session, http.StatusOK)
	}
}
