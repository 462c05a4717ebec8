package redistest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestStartCluster(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := StartCluster(t)
	t.Logf("cluster of %d nodes up in %v", len(c.Nodes()), time.Since(start))
	if !strings.HasPrefix(c.URL(), "redis+cluster://") || strings.Count(c.URL(), ",") != 2 {
		t.Errorf("URL() = %q, want redis+cluster:// with 3 nodes", c.URL())
	}
	ctx := context.Background()
	cc := c.Client(t)
	masters := map[string]bool{}
	for i := range 30 {
		key := fmt.Sprintf("key-%d", i)
		if err := cc.Set(ctx, key, i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		m := c.MasterOf(t, key)
		masters[m.Addr()] = true
		// The key lives on the node MasterOf names, not just somewhere.
		nc := nodeClient(m)
		n, err := nc.Exists(ctx, key).Result()
		nc.Close()
		if err != nil || n != 1 {
			t.Errorf("EXISTS %s on its master %s = %d, %v; want 1", key, m.Addr(), n, err)
		}
	}
	if len(masters) != 3 {
		t.Errorf("30 keys landed on %d masters, want 3", len(masters))
	}
}

// A stopped master's replica takes over its slots, and WaitHealthy sees it.
func TestClusterFailover(t *testing.T) {
	t.Parallel()
	c := StartClusterWithReplicas(t)
	ctx := context.Background()
	cc := c.Client(t)
	if err := cc.Set(ctx, "survivor", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// The write must reach the replica before the master goes.
	old := c.MasterOf(t, "survivor")
	oc := nodeClient(old)
	if err := oc.Do(ctx, "WAIT", 1, 2000).Err(); err != nil {
		t.Fatalf("WAIT: %v", err)
	}
	oc.Close()

	start := time.Now()
	old.Stop(t)
	c.WaitHealthy(t)
	t.Logf("failover took %v", time.Since(start))
	if m := c.MasterOf(t, "survivor"); m == old {
		t.Fatalf("MasterOf after failover = the stopped node")
	}
	var got string
	var err error
	for range 100 {
		if got, err = cc.Get(ctx, "survivor").Result(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got != "v" {
		t.Errorf("GET survivor after failover = %q, %v; want v", got, err)
	}
}

func TestStartSentinel(t *testing.T) {
	t.Parallel()
	start := time.Now()
	s := StartSentinel(t)
	t.Logf("master, replica and %d sentinels up in %v", len(s.Sentinels()), time.Since(start))
	ctx := context.Background()
	fc := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:    SentinelMaster,
		SentinelAddrs: []string{s.Sentinels()[0].Addr(), s.Sentinels()[1].Addr()},
	})
	defer fc.Close()
	if err := fc.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET through the sentinels: %v", err)
	}
	mc := nodeClient(s.Master())
	defer mc.Close()
	if got, err := mc.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Errorf("GET k on the master = %q, %v; want v", got, err)
	}
	if !strings.HasPrefix(s.URL(), "redis+sentinel://") || !strings.HasSuffix(s.URL(), "/0?master="+SentinelMaster) {
		t.Errorf("URL() = %q", s.URL())
	}
}
