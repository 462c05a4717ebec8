package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// clusterNodeTimeout is how long a node may be silent before the others
	// suspect it; kept small so that a failover takes a few seconds.
	clusterNodeTimeout = 1000 * time.Millisecond
	// clusterMasters is the smallest cluster Redis lets redis-cli create.
	clusterMasters = 3
	// clusterTimeout bounds cluster creation and each wait for a healthy
	// cluster.
	clusterTimeout = 20 * time.Second
	clusterSlots   = 16384
)

// Cluster is a Redis Cluster of redis-server processes run by one test.
type Cluster struct {
	nodes []*Server
}

// StartCluster starts a cluster of three masters without replicas on free
// 127.0.0.1 ports, waits until every node reports cluster_state:ok and kills
// the nodes when the test ends. It needs redis-server and redis-cli in PATH;
// BROKER_TEST_REDIS_URL does not apply, as a cluster's nodes are its own.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	return startCluster(t, 0)
}

// StartClusterWithReplicas is StartCluster with one replica per master:
// six nodes, of which a stopped master's replica takes over its slots within
// a few seconds.
func StartClusterWithReplicas(t testing.TB) *Cluster {
	t.Helper()
	return startCluster(t, 1)
}

func startCluster(t testing.TB, replicas int) *Cluster {
	t.Helper()
	bin := lookPath(t, "redis-server", "")
	cli := lookPath(t, "redis-cli", "")
	c := &Cluster{}
	for range clusterMasters * (1 + replicas) {
		c.nodes = append(c.nodes, startServer(t, bin, clusterNodeArgs()))
	}

	args := []string{"--cluster", "create"}
	for _, n := range c.nodes {
		args = append(args, n.Addr())
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, lastLines(string(out), 20))
	}
	c.WaitHealthy(t)
	return c
}

// clusterNodeArgs returns the arguments of a cluster node. The cluster bus
// gets a free port of its own: the default, the data port plus 10000, may be
// taken or beyond 65535.
func clusterNodeArgs() func(dir string, port int) ([]string, error) {
	busPorts := map[int]int{}
	return func(dir string, port int) ([]string, error) {
		bus, ok := busPorts[port]
		if !ok {
			var err error
			if bus, err = freePort(); err != nil {
				return nil, fmt.Errorf("find a free bus port: %w", err)
			}
			busPorts[port] = bus
		}
		return append(standaloneArgs(dir, port),
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(bus),
			"--cluster-node-timeout", strconv.Itoa(int(clusterNodeTimeout.Milliseconds())),
			// A replica takes over however long ago it last heard from its
			// master: a test's data is never too stale to serve.
			"--cluster-replica-validity-factor", "0",
		), nil
	}
}

// URL returns the cluster's redis+cluster:// URL, naming every node as a
// seed.
func (c *Cluster) URL() string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	return "redis+cluster://" + strings.Join(addrs, ",")
}

// Nodes returns the cluster's nodes, masters first as created. Roles change
// after a failover; MasterOf tells the current one.
func (c *Cluster) Nodes() []*Server { return c.nodes }

// Client returns a cluster client, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	// A short reload interval lets the client find a promoted replica soon
	// after a failover, as the broker's client does.
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ClusterStateReloadInterval: 500 * time.Millisecond})
	t.Cleanup(func() { cc.Close() })
	return cc
}

// MasterOf returns the node that serves key's slot, as a running node sees
// it.
func (c *Cluster) MasterOf(t testing.TB, key string) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	i := slices.IndexFunc(c.nodes, (*Server).running)
	if i < 0 {
		t.Fatal("redistest: no node of the cluster is running")
	}
	nc := nodeClient(c.nodes[i])
	defer nc.Close()
	slot, err := nc.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		t.Fatalf("redistest: CLUSTER KEYSLOT on %s: %v", c.nodes[i].Addr(), err)
	}
	shards, err := nc.ClusterShards(ctx).Result()
	if err != nil {
		t.Fatalf("redistest: CLUSTER SHARDS on %s: %v", c.nodes[i].Addr(), err)
	}
	for _, sh := range shards {
		for _, r := range sh.Slots {
			if r.Start <= slot && slot <= r.End {
				if m := c.node(shardMaster(sh)); m != nil {
					return m
				}
			}
		}
	}
	t.Fatalf("redistest: no node of the cluster serves slot %d", slot)
	return nil
}

// shardMaster returns the host:port of a shard's master, or "" if it has
// none.
func shardMaster(sh redis.ClusterShard) string {
	for _, n := range sh.Nodes {
		if n.Role == "master" {
			return net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
		}
	}
	return ""
}

func (c *Cluster) node(addr string) *Server {
	for _, n := range c.nodes {
		if n.Addr() == addr {
			return n
		}
	}
	return nil
}

// WaitHealthy waits until every running node reports cluster_state:ok and
// sees all slots served by running masters, and every running replica is in
// sync with its master: after start, and after a
// master was stopped, once its replica was promoted and every node knows.
func (c *Cluster) WaitHealthy(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(clusterTimeout)
	var err error
	for time.Now().Before(deadline) {
		if err = c.healthy(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("redistest: cluster not healthy within %v: %v", clusterTimeout, err)
}

func (c *Cluster) healthy() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var running []string
	for _, n := range c.nodes {
		if n.running() {
			running = append(running, n.Addr())
		}
	}
	for _, addr := range running {
		nc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		err := func() error {
			defer nc.Close()
			info, err := nc.ClusterInfo(ctx).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return errors.New("cluster_state is not ok")
			}
			shards, err := nc.ClusterShards(ctx).Result()
			if err != nil {
				return err
			}
			covered := int64(0)
			for _, sh := range shards {
				if len(sh.Slots) == 0 {
					continue
				}
				if m := shardMaster(sh); !slices.Contains(running, m) {
					return fmt.Errorf("slots %d-%d are served by a stopped node", sh.Slots[0].Start, sh.Slots[0].End)
				}
				for _, r := range sh.Slots {
					covered += r.End - r.Start + 1
				}
			}
			if covered != clusterSlots {
				return fmt.Errorf("%d of %d slots are served", covered, clusterSlots)
			}
			// A replica that has not synced yet could not take over.
			repl, err := nc.Info(ctx, "replication").Result()
			if err != nil {
				return err
			}
			if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
				return errors.New("replica not in sync with its master")
			}
			return nil
		}()
		if err != nil {
			return fmt.Errorf("node %s: %w", addr, err)
		}
	}
	return nil
}

func nodeClient(n *Server) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: n.Addr()})
}
