package migrations

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/mobile-token-broker/broker/internal/redistest"
	"github.com/mobile-token-broker/broker/sessions"
)

// expiryIndex returns every entry of the expiry index: session id to score.
func expiryIndex(t *testing.T, c redis.UniversalClient) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for n := range expiryShards {
		key := fmt.Sprintf("broker:expiry:{%x}", n)
		zs, err := c.ZRangeWithScores(context.Background(), key, 0, -1).Result()
		if err != nil {
			t.Fatalf("ZRANGE %s: %v", key, err)
		}
		for _, z := range zs {
			out[z.Member.(string)] = z.Score
		}
		if len(zs) > 0 {
			if ttl := c.PTTL(context.Background(), key).Val(); ttl <= 0 {
				t.Errorf("PTTL %s = %v, want it to expire with its last entry", key, ttl)
			}
		}
	}
	return out
}

// dropExpiryIndex removes the shards of the expiry index from first on,
// which is what a store written by a version 1 broker lacks.
func dropExpiryIndex(t *testing.T, c redis.UniversalClient, first int) {
	t.Helper()
	for n := first; n < expiryShards; n++ {
		if err := c.Del(context.Background(), fmt.Sprintf("broker:expiry:{%x}", n)).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestIndexByExpiry(t *testing.T) {
	testIndexByExpiry(t, redistest.Start(t).Client(t))
}

// On Cluster every master holds a part of the sessions, and the step must
// walk them all.
func TestIndexByExpiryCluster(t *testing.T) {
	t.Parallel()
	testIndexByExpiry(t, redistest.StartCluster(t).Client(t))
}

// testIndexByExpiry takes a store at version 1 holding live sessions, more
// than one SCAN batch of them, to the latest version, and checks that the step builds
// the index the store itself writes, again and again, and after a run that
// stopped halfway.
func testIndexByExpiry(t *testing.T, c redis.UniversalClient) {
	ctx := context.Background()
	keys, err := sessions.NewEphemeralKeyring()
	if err != nil {
		t.Fatal(err)
	}
	st := sessions.New(c, keys, sessions.Options{})
	now := time.Now().Truncate(time.Millisecond)
	const n = scanBatch + 500
	ids := make([]string, n)
	var g errgroup.Group
	g.SetLimit(8)
	for i := range n {
		raw := make([]byte, 16)
		rand.Read(raw)
		ids[i] = base64.RawURLEncoding.EncodeToString(raw)
		g.Go(func() error {
			return st.Create(ctx, &broker.Session{
				ID:             ids[i],
				SecretHash:     make([]byte, 32),
				Subject:        fmt.Sprintf("auth0|user-%d", i%7),
				SID:            fmt.Sprintf("op-%d", i%11),
				CreatedAt:      now,
				LastUsedAt:     now,
				AbsoluteExpiry: now.Add(time.Duration(i+1) * time.Minute),
				IdleTimeout:    time.Hour,
				Tokens:         broker.Tokens{AccessToken: "at", RefreshToken: "rt"},
			})
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("Create: %v", err)
	}
	// A held refresh lease matches the SCAN pattern too, and is no session.
	if _, ok, err := st.TryLock(ctx, ids[0], time.Minute); err != nil || !ok {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}
	want := expiryIndex(t, c)
	if len(want) != n {
		t.Fatalf("the store indexed %d sessions by expiry, want %d", len(want), n)
	}

	// Roll the store back to what a version 1 broker left.
	dropExpiryIndex(t, c, 0)
	if err := c.Set(ctx, VersionKey, 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := Check(ctx, c); !errors.Is(err, ErrStoreOlder) {
		t.Fatalf("Check at version 1 = %v, want ErrStoreOlder", err)
	}
	res, err := Apply(ctx, c, Options{})
	if err != nil || res.From != 1 || res.To != Latest() {
		t.Fatalf("Apply at version 1 = %+v, %v; want from 1 to %d, nil", res, err, Latest())
	}
	if got := expiryIndex(t, c); !maps.Equal(got, want) {
		t.Errorf("expiry index after migrating holds %d entries, want the %d the store writes, with the same scores", len(got), len(want))
	}

	for name, first := range map[string]int{"again": expiryShards, "after a run that stopped halfway": expiryShards / 2} {
		dropExpiryIndex(t, c, first)
		if err := indexByExpiry(ctx, c); err != nil {
			t.Fatalf("step 2 %s = %v", name, err)
		}
		if got := expiryIndex(t, c); !maps.Equal(got, want) {
			t.Errorf("expiry index after step 2 %s holds %d entries, want %d", name, len(got), len(want))
		}
	}

	for _, id := range []string{ids[0], ids[n/2], ids[n-1]} {
		if _, err := st.Get(ctx, id); err != nil {
			t.Errorf("Get(%s) after migrating = %v", id, err)
		}
	}
	if got, err := st.CountSessions(ctx); err != nil || got != n {
		t.Errorf("CountSessions after migrating = %d, %v; want %d", got, err, n)
	}
}
