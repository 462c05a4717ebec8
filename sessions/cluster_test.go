package sessions

import (
	"context"
	"testing"

	"github.com/mobile-token-broker/broker/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// newStoreFromURL returns a Store built the way the broker builds it,
// through NewClient, on a keyspace emptied on every master.
func newStoreFromURL(t *testing.T, rawURL string) *Store {
	t.Helper()
	client, err := NewClient(rawURL)
	if err != nil {
		t.Fatalf("NewClient(%s) = %v", rawURL, err)
	}
	t.Cleanup(func() { client.Close() })
	ctx := context.Background()
	if cc, ok := client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return node.FlushAll(ctx).Err()
		})
	} else {
		err = client.FlushAll(ctx).Err()
	}
	if err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
	keys, err := NewEphemeralKeyring()
	if err != nil {
		t.Fatal(err)
	}
	return New(client, keys, Options{})
}

func TestSentinel(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t)
	runStoreSuite(t, func(t *testing.T) *Store { return newStoreFromURL(t, s.URL()) })
}

func TestCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	runStoreSuite(t, func(t *testing.T) *Store { return newStoreFromURL(t, c.URL()) })
}
