package redistest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// SentinelMaster is the name the Sentinels of StartSentinel monitor.
	SentinelMaster = "mymaster"
	// sentinels is how many Sentinels StartSentinel runs, the smallest
	// number that lets a majority agree when one of them is down.
	sentinels = 3
)

// Sentinel is a master, its replica and the Sentinels that monitor them,
// all run by one test.
type Sentinel struct {
	master, replica *Server
	sentinels       []*Server
}

// StartSentinel starts a master, a replica of it and three Sentinels on
// free 127.0.0.1 ports, waits until the replica is in sync and every
// Sentinel names the master, and kills them all when the test ends.
// BROKER_TEST_REDIS_URL does not apply.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	bin := lookPath(t, "redis-server", "")
	s := &Sentinel{master: startServer(t, bin, nil)}
	masterPort := strconv.Itoa(s.master.port)
	s.replica = startServer(t, bin, func(dir string, port int) ([]string, error) {
		return append(standaloneArgs(dir, port), "--replicaof", "127.0.0.1", masterPort), nil
	})
	for range sentinels {
		s.sentinels = append(s.sentinels, startServer(t, bin, sentinelArgs(masterPort)))
	}
	s.waitReady(t)
	return s
}

// sentinelArgs writes a Sentinel's configuration file, which Sentinel
// requires and rewrites as it learns, and returns its arguments.
func sentinelArgs(masterPort string) func(dir string, port int) ([]string, error) {
	return func(dir string, port int) ([]string, error) {
		conf := filepath.Join(dir, "sentinel.conf")
		args := []string{conf, "--sentinel", "--port", strconv.Itoa(port)}
		if _, err := os.Stat(conf); err == nil {
			// A restart keeps what the Sentinel learned.
			return args, nil
		}
		text := strings.Join([]string{
			"port " + strconv.Itoa(port),
			"bind 127.0.0.1",
			"dir " + dir,
			"sentinel monitor " + SentinelMaster + " 127.0.0.1 " + masterPort + " 2",
			"sentinel down-after-milliseconds " + SentinelMaster + " 1000",
			"sentinel failover-timeout " + SentinelMaster + " 5000",
		}, "\n") + "\n"
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			return nil, err
		}
		return args, nil
	}
}

func (s *Sentinel) waitReady(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	replica := redis.NewClient(&redis.Options{Addr: s.replica.Addr()})
	defer replica.Close()
	for {
		err := s.ready(ctx, replica)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("redistest: sentinel setup not ready within %v: %v", readyTimeout, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *Sentinel) ready(ctx context.Context, replica *redis.Client) error {
	info, err := replica.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	if !strings.Contains(info, "master_link_status:up") {
		return fmt.Errorf("replica not in sync with the master")
	}
	for _, sn := range s.sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr()})
		addr, err := sc.GetMasterAddrByName(ctx, SentinelMaster).Result()
		sc.Close()
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", sn.Addr(), err)
		}
		if got := strings.Join(addr, ":"); got != s.master.Addr() {
			return fmt.Errorf("sentinel %s names master %s, want %s", sn.Addr(), got, s.master.Addr())
		}
	}
	return nil
}

// URL returns the redis+sentinel:// URL naming every Sentinel.
func (s *Sentinel) URL() string {
	addrs := make([]string, len(s.sentinels))
	for i, sn := range s.sentinels {
		addrs[i] = sn.Addr()
	}
	return "redis+sentinel://" + strings.Join(addrs, ",") + "/0?master=" + SentinelMaster
}

// Master returns the master the Sentinels were started with.
func (s *Sentinel) Master() *Server { return s.master }

// Replica returns the master's replica.
func (s *Sentinel) Replica() *Server { return s.replica }

// Sentinels returns the Sentinels.
func (s *Sentinel) Sentinels() []*Server { return s.sentinels }
