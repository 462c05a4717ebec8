package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/mobile-token-broker/broker/internal/redistest"
	"github.com/mobile-token-broker/broker/sessions"
)

// The scale benchmarks give the figures an operator sizes Redis with: the
// memory of a session, the cost of a user with very many sessions, whether
// a lookup slows as the store fills, and how long a rekey takes. They build
// their own data, so run each on its own:
//
//	go test -run='^$' -bench='^BenchmarkSessionMemory$' -benchtime=1x ./cmd/broker/
//	go test -run='^$' -bench='^BenchmarkUserWith10kSessions$' -benchtime=3x ./cmd/broker/
//	go test -run='^$' -bench='^BenchmarkStoreGet$' ./cmd/broker/
//	go test -run='^$' -bench='^BenchmarkRekey$' -benchtime=1x ./cmd/broker/
//
// Redis runs with appendfsync everysec, the usual production setting,
// rather than the tests' always.

// scaleB64 returns n characters of base64url from random bytes, which do
// not compress, like the signatures and payloads of real tokens.
func scaleB64(tb testing.TB, n int) string {
	tb.Helper()
	b := make([]byte, base64.RawURLEncoding.DecodedLen(n)+3)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}

// scaleJWT returns a compact JWS of about size characters: a header, a
// payload and an RS256 signature (256 bytes, 342 characters).
func scaleJWT(tb testing.TB, size int) string {
	tb.Helper()
	const header, sig = 100, 342
	return scaleB64(tb, header) + "." + scaleB64(tb, size-header-sig-2) + "." + scaleB64(tb, sig)
}

// scaleSession returns a session with tokens and claims of realistic size:
// a 1.2 KB access token, a 1 KB ID token, a 64-character opaque refresh
// token and the claims a typical IdP puts in an ID token.
func scaleSession(tb testing.TB, sub, sid string, now time.Time) *broker.Session {
	tb.Helper()
	now = now.Truncate(time.Millisecond)
	return &broker.Session{
		ID:         scaleID(tb),
		SecretHash: make([]byte, 32),
		Subject:    sub,
		SID:        sid,
		ClientID:   "mobile-app",
		Claims: map[string]any{
			"iss":            "https://login.example.com/",
			"sub":            sub,
			"aud":            "mobile-app",
			"email":          "jane.doe@example.com",
			"email_verified": true,
			"name":           "Jane Doe",
			"given_name":     "Jane",
			"family_name":    "Doe",
			"locale":         "en-GB",
			"picture":        "https://cdn.example.com/avatars/" + scaleB64(tb, 32) + ".png",
			"auth_time":      float64(now.Unix()),
			"amr":            []any{"pwd", "mfa"},
			"groups":         []any{"staff", "beta-testers", "eu-west"},
			"sid":            sid,
		},
		Tokens: broker.Tokens{
			AccessToken:  scaleJWT(tb, 1200),
			TokenType:    "Bearer",
			RefreshToken: scaleB64(tb, 64),
			IDToken:      scaleJWT(tb, 1000),
			Expiry:       now.Add(time.Hour),
		},
		CreatedAt:      now,
		LastUsedAt:     now,
		AbsoluteExpiry: now.Add(90 * 24 * time.Hour),
		IdleTimeout:    30 * 24 * time.Hour,
		IP:             "203.0.113.7",
		UserAgent:      "ExampleApp/4.2.1 (iPhone15,2; iOS 18.1; Scale/3.00)",
	}
}

func scaleID(tb testing.TB) string {
	tb.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// scaleRedis starts a Redis configured like production for the figures.
func scaleRedis(tb testing.TB) *redis.Client {
	tb.Helper()
	rdb := redistest.Start(tb).Client(tb)
	if err := rdb.ConfigSet(context.Background(), "appendfsync", "everysec").Err(); err != nil {
		tb.Fatal(err)
	}
	return rdb
}

func scaleKeyring(tb testing.TB) *sessions.Keyring {
	tb.Helper()
	k, err := sessions.ParseKeyring("k1:" + randomKey(tb))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// usedMemory returns Redis's used_memory in bytes.
func usedMemory(tb testing.TB, rdb *redis.Client) int64 {
	tb.Helper()
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return n
		}
	}
	tb.Fatal("INFO memory has no used_memory")
	return 0
}

// memoryOf sums MEMORY USAGE (every element sampled) of the keys matching
// pattern.
func memoryOf(tb testing.TB, rdb *redis.Client, pattern string) (bytes, keys int64) {
	tb.Helper()
	ctx := context.Background()
	iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		n, err := rdb.MemoryUsage(ctx, iter.Val(), 0).Result()
		if err != nil {
			tb.Fatal(err)
		}
		bytes += n
		keys++
	}
	if err := iter.Err(); err != nil {
		tb.Fatal(err)
	}
	return bytes, keys
}

// BenchmarkSessionMemory stores 10,000 sessions of 5,000 users (two devices
// each, one IdP session per device) and reports the memory a session costs:
// its hash (session-B), its share of the subject, sid and expiry indexes
// (user-index-B, sid-index-B, expiry-index-B), the sealed tokens alone (tok-B), and Redis's whole used_memory
// growth divided by the sessions (used-B), which includes the keyspace's own
// overhead.
func BenchmarkSessionMemory(b *testing.B) {
	ctx := context.Background()
	rdb := scaleRedis(b)
	st := sessions.New(rdb, scaleKeyring(b), sessions.Options{})
	const users, perUser = 5000, 2
	const n = users * perUser
	var sessionB, usedB, tokB int64
	var indexB [3]int64 // subject, sid, expiry
	for b.Loop() {
		b.StopTimer()
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		all := make([]*broker.Session, n)
		for i := range all {
			all[i] = scaleSession(b, fmt.Sprintf("auth0|%024d", i/perUser), scaleB64(b, 22), time.Now())
		}
		before := usedMemory(b, rdb)
		b.StartTimer()
		var g errgroup.Group
		g.SetLimit(16)
		for _, s := range all {
			g.Go(func() error { return st.Create(ctx, s) })
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		usedB = (usedMemory(b, rdb) - before) / n
		var k int64
		sessionB, k = memoryOf(b, rdb, "broker:session:{*}")
		if k != n {
			b.Fatalf("%d session keys, want %d", k, n)
		}
		sessionB /= n
		for i, pattern := range []string{"broker:user:*", "broker:sid:*", "broker:expiry:*"} {
			m, _ := memoryOf(b, rdb, pattern)
			indexB[i] = m / n
		}
		tok, err := rdb.HGet(ctx, "broker:session:{"+all[0].ID+"}", "tok").Result()
		if err != nil {
			b.Fatal(err)
		}
		tokB = int64(len(tok))
		b.StartTimer()
	}
	b.ReportMetric(float64(sessionB), "session-B")
	b.ReportMetric(float64(indexB[0]), "user-index-B")
	b.ReportMetric(float64(indexB[1]), "sid-index-B")
	b.ReportMetric(float64(indexB[2]), "expiry-index-B")
	b.ReportMetric(float64(tokB), "tok-B")
	b.ReportMetric(float64(usedB), "used-B")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkUserWith10kSessions creates 10,000 sessions of one user, one
// after another through the store as a login does, then ends them all
// through the admin API of a running broker, which also revokes each
// refresh token at the IdP (eight at a time), and reports both times.
func BenchmarkUserWith10kSessions(b *testing.B) {
	ctx := context.Background()
	s := newStack(b, stackOptions{})
	rdb := s.redis.Client(b)
	if err := rdb.ConfigSet(ctx, "appendfsync", "everysec").Err(); err != nil {
		b.Fatal(err)
	}
	keys, err := sessions.ParseKeyring(s.env["BROKER_ENCRYPTION_KEYS"])
	if err != nil {
		b.Fatal(err)
	}
	st := sessions.New(rdb, keys, sessions.Options{})
	inst := s.start()
	const n = 10000
	var create, revoke time.Duration
	for b.Loop() {
		b.StopTimer()
		sub := "auth0|scale-" + scaleB64(b, 12)
		all := make([]*broker.Session, n)
		for i := range all {
			all[i] = scaleSession(b, sub, scaleB64(b, 22), time.Now())
		}
		b.StartTimer()
		start := time.Now()
		for _, sess := range all {
			if err := st.Create(ctx, sess); err != nil {
				b.Fatal(err)
			}
		}
		create += time.Since(start)
		start = time.Now()
		res := s.admin(inst, http.MethodDelete, "/admin/v1/users/"+url.PathEscape(sub)+"/sessions")
		revoke += time.Since(start)
		if res.status != http.StatusOK || !strings.Contains(string(res.body), fmt.Sprintf(`"revoked":%d`, n)) {
			b.Fatalf("DELETE /admin/v1/users/{sub}/sessions = %d %s, want 200 revoking %d", res.status, res.body, n)
		}
	}
	b.ReportMetric(create.Seconds()/float64(b.N), "create-10k-s")
	b.ReportMetric(revoke.Seconds()/float64(b.N), "revoke-all-10k-s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkStoreGet reads sessions with realistic tokens from a store that
// holds 1,000 sessions and from one that holds 1,000,000, warm (this replica
// opened the session before, as on every request after the first) and cold
// (decrypted and decoded on the read). Only the 1,000 sessions read are
// created through the store; the others are written by pipelined HSETs of
// one template record with a short tok, since a lookup's cost depends on how
// many keys there are and not on what the others hold (nothing reads them).
func BenchmarkStoreGet(b *testing.B) {
	for _, stored := range []int{1000, 1_000_000} {
		b.Run(fmt.Sprintf("sessions=%d", stored), func(b *testing.B) {
			if stored > 1000 && testing.Short() {
				b.Skip("a million sessions take a few hundred MB of Redis and a minute to load")
			}
			ctx := context.Background()
			rdb := scaleRedis(b)
			// Loading a million keys through the AOF gains nothing here.
			if err := rdb.ConfigSet(ctx, "appendonly", "no").Err(); err != nil {
				b.Fatal(err)
			}
			keys := scaleKeyring(b)
			st := sessions.New(rdb, keys, sessions.Options{})
			const read = 1000
			ids := make([]string, read)
			for i := range ids {
				sess := scaleSession(b, fmt.Sprintf("auth0|%024d", i), scaleB64(b, 22), time.Now())
				if err := st.Create(ctx, sess); err != nil {
					b.Fatal(err)
				}
				ids[i] = sess.ID
			}
			template, err := rdb.HGetAll(ctx, "broker:session:{"+ids[0]+"}").Result()
			if err != nil {
				b.Fatal(err)
			}
			// A short tok keeps a million keys to a few hundred MB.
			template["tok"] = scaleB64(b, 64)
			end := time.Now().Add(24 * time.Hour)
			for done := read; done < stored; {
				pipe := rdb.Pipeline()
				for ; done < stored && pipe.Len() < 2*10000; done++ {
					key := "broker:session:{" + scaleID(b) + "}"
					pipe.HSet(ctx, key, template)
					pipe.PExpireAt(ctx, key, end)
				}
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
			}
			if size := rdb.DBSize(ctx).Val(); size < int64(stored) {
				b.Fatalf("DBSIZE = %d, want at least %d", size, stored)
			}
			mib := float64(usedMemory(b, rdb)) / (1 << 20)
			b.Run("warm", func(b *testing.B) {
				i := 0
				for b.Loop() {
					if _, err := st.Get(ctx, ids[i%read]); err != nil {
						b.Fatal(err)
					}
					i++
				}
				b.ReportMetric(mib, "redis-MiB")
			})
			b.Run("cold", func(b *testing.B) {
				i := 0
				for b.Loop() {
					// A new Store has nothing opened yet.
					cold := sessions.New(rdb, keys, sessions.Options{})
					if _, err := cold.Get(ctx, ids[i%read]); err != nil {
						b.Fatal(err)
					}
					i++
				}
				b.ReportMetric(mib, "redis-MiB")
			})
		})
	}
}

// BenchmarkRekey times `broker rekey`'s work on 20,000 sessions sealed under
// the key being retired, and reports it per session.
func BenchmarkRekey(b *testing.B) {
	ctx := context.Background()
	rdb := scaleRedis(b)
	keyA, keyB := "a:"+randomKey(b), "b:"+randomKey(b)
	onA, err := sessions.ParseKeyring(keyA)
	if err != nil {
		b.Fatal(err)
	}
	onBA, err := sessions.ParseKeyring(keyB + "," + keyA)
	if err != nil {
		b.Fatal(err)
	}
	const n = 20000
	var took time.Duration
	for b.Loop() {
		b.StopTimer()
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		st := sessions.New(rdb, onA, sessions.Options{})
		var g errgroup.Group
		g.SetLimit(16)
		for i := range n {
			sess := scaleSession(b, fmt.Sprintf("auth0|%024d", i/2), scaleB64(b, 22), time.Now())
			g.Go(func() error { return st.Create(ctx, sess) })
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		report, err := sessions.New(rdb, onBA, sessions.Options{}).Rekey(ctx, sessions.RekeyOptions{})
		took += time.Since(start)
		if err != nil || report.Rekeyed != n {
			b.Fatalf("Rekey = %+v, %v; want %d rekeyed", report, err, n)
		}
	}
	b.ReportMetric(took.Seconds()/float64(b.N), "rekey-20k-s")
	b.ReportMetric(float64(took.Microseconds())/float64(b.N*n), "µs/session")
	b.ReportMetric(0, "ns/op")
}
