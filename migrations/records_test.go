package migrations

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/mobile-token-broker/broker/internal/redistest"
	"github.com/mobile-token-broker/broker/sessions"
)

// writeV1 writes a session the way a broker of record version 1 did: the
// claims sealed with the tokens in tok, bound to the id and field only, and
// the last use in the clear.
func writeV1(ctx context.Context, c redis.UniversalClient, keys *sessions.Keyring, s *broker.Session) error {
	plaintext, err := json.Marshal(struct {
		AccessToken  string         `json:"access_token,omitempty"`
		TokenType    string         `json:"token_type,omitempty"`
		RefreshToken string         `json:"refresh_token,omitempty"`
		IDToken      string         `json:"id_token,omitempty"`
		Expiry       time.Time      `json:"expiry,omitzero"`
		Claims       map[string]any `json:"claims,omitempty"`
	}{s.Tokens.AccessToken, s.Tokens.TokenType, s.Tokens.RefreshToken, s.Tokens.IDToken, s.Tokens.Expiry, s.Claims})
	if err != nil {
		return err
	}
	tok, err := keys.Seal(plaintext, []byte("broker:session:"+s.ID+"\x00tok"))
	if err != nil {
		return err
	}
	key := sessionKey(s.ID)
	_, err = c.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.HSet(ctx, key,
			"v", "1",
			"secret_hash", hex.EncodeToString(s.SecretHash),
			"sub", s.Subject,
			"sid", s.SID,
			"client_id", s.ClientID,
			"created_at", s.CreatedAt.UnixMilli(),
			"last_used_at", s.LastUsedAt.UnixMilli(),
			"abs_exp", s.AbsoluteExpiry.UnixMilli(),
			"idle", s.IdleTimeout.Milliseconds(),
			"ip", s.IP,
			"ua", s.UserAgent,
			"tok", tok,
		)
		pipe.PExpireAt(ctx, key, s.ExpiresAt())
		return nil
	})
	return err
}

func v1Session(i int, now time.Time) *broker.Session {
	id := make([]byte, 16)
	rand.Read(id)
	secret := make([]byte, 32)
	rand.Read(secret)
	return &broker.Session{
		ID:         base64.RawURLEncoding.EncodeToString(id),
		SecretHash: secret,
		Subject:    fmt.Sprintf("auth0|user-%d", i%7),
		SID:        fmt.Sprintf("op-%d", i%11),
		ClientID:   "mobile-app",
		Claims:     map[string]any{"email": fmt.Sprintf("user-%d@example.test", i), "groups": []any{"staff"}},
		Tokens: broker.Tokens{AccessToken: fmt.Sprintf("at-%d", i), TokenType: "Bearer", RefreshToken: fmt.Sprintf("rt-%d", i),
			Expiry: now.Add(5 * time.Minute).UTC()},
		CreatedAt:      now.Add(-time.Hour),
		LastUsedAt:     now.Add(-time.Duration(i) * time.Second),
		AbsoluteExpiry: now.Add(time.Duration(i+1) * time.Hour),
		IdleTimeout:    2 * time.Hour,
		IP:             "203.0.113.7",
		UserAgent:      "ExampleApp/1.0",
	}
}

func TestBindFields(t *testing.T) {
	testBindFields(t, redistest.Start(t).Client(t))
}

// On Cluster every master holds a part of the sessions, and the step must
// walk them all.
func TestBindFieldsCluster(t *testing.T) {
	t.Parallel()
	testBindFields(t, redistest.StartCluster(t).Client(t))
}

// testBindFields takes a store at version 2 holding version 1 records, more
// than one SCAN batch of them, to version 3, and checks that every session
// reads as it was, that one sealed under a key the store lacks is left and
// reported, and that the step is idempotent.
func testBindFields(t *testing.T, c redis.UniversalClient) {
	ctx := context.Background()
	keys, err := sessions.ParseKeyring("k1:" + base64.StdEncoding.EncodeToString(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	st := sessions.New(c, keys, sessions.Options{})
	now := time.Now().Truncate(time.Millisecond)
	const n = scanBatch + 200
	want := make([]*broker.Session, n)
	var g errgroup.Group
	g.SetLimit(8)
	for i := range n {
		want[i] = v1Session(i, now)
		g.Go(func() error { return writeV1(ctx, c, keys, want[i]) })
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("write version 1 sessions: %v", err)
	}
	other, err := sessions.NewEphemeralKeyring()
	if err != nil {
		t.Fatal(err)
	}
	lost := v1Session(n, now)
	if err := writeV1(ctx, c, other, lost); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, VersionKey, 2, 0).Err(); err != nil {
		t.Fatal(err)
	}

	if _, err := Apply(ctx, c, Options{}); !errors.Is(err, ErrRecordsNeeded) {
		t.Errorf("Apply without Records on a store with version 1 records = %v, want ErrRecordsNeeded", err)
	}
	if v, err := Current(ctx, c); err != nil || v != 2 {
		t.Errorf("version after a refused step 3 = %d, %v; want 2", v, err)
	}

	res, err := Apply(ctx, c, Options{Records: st})
	if wantRes := (Result{From: 2, To: 3, Upgraded: n, Unreadable: 1, UnreadableIDs: []string{lost.ID}}); err != nil || !reflect.DeepEqual(res, wantRes) {
		t.Fatalf("Apply = %+v, %v; want %+v", res, err, wantRes)
	}
	for _, s := range want {
		got, err := st.Get(ctx, s.ID)
		if err != nil {
			t.Fatalf("Get(%s) after the migration = %v", s.ID, err)
		}
		if got.Generation != 1 || got.Subject != s.Subject || got.SID != s.SID || !reflect.DeepEqual(got.SecretHash, s.SecretHash) ||
			!reflect.DeepEqual(got.Claims, s.Claims) || got.Tokens.RefreshToken != s.Tokens.RefreshToken || !got.Tokens.Expiry.Equal(s.Tokens.Expiry) ||
			!got.LastUsedAt.Equal(s.LastUsedAt) || !got.AbsoluteExpiry.Equal(s.AbsoluteExpiry) || got.IdleTimeout != s.IdleTimeout {
			t.Fatalf("session after the migration = %+v, want %+v at generation 1", got, s)
		}
	}
	if _, err := st.Get(ctx, lost.ID); !errors.Is(err, broker.ErrUnreadable) {
		t.Errorf("Get of the version 1 session sealed under another key = %v, want ErrUnreadable", err)
	}

	var again Result
	if err := bindFields(ctx, c, Options{Records: st}, &again); err != nil || again.Upgraded != 0 || again.Unreadable != 1 {
		t.Errorf("step 3 again = %+v, %v; want nothing upgraded, 1 unreadable", again, err)
	}
	// A run that stopped halfway: some records converted, the version not
	// recorded.
	for i := range 5 {
		want[i] = v1Session(i, now)
		if err := writeV1(ctx, c, keys, want[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Set(ctx, VersionKey, 2, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if res, err := Apply(ctx, c, Options{Records: st}); err != nil || res.Upgraded != 5 || res.To != 3 {
		t.Errorf("Apply after a run that stopped halfway = %+v, %v; want 5 upgraded, version 3", res, err)
	}
	if res, err := Apply(ctx, c, Options{Records: st}); err != nil || res.From != 3 || res.Upgraded != 0 {
		t.Errorf("Apply once done = %+v, %v; want nothing to do", res, err)
	}
}

// The session store writes the previous layout on a store whose version it
// reads at the key this package records, until the step converting the
// records.
func TestSessionsKnowTheSchema(t *testing.T) {
	if sessions.SchemaVersionKey != VersionKey {
		t.Errorf("sessions.SchemaVersionKey = %q, want %q", sessions.SchemaVersionKey, VersionKey)
	}
	var converts []int
	for _, s := range Steps() {
		if s.NeedsRecords {
			converts = append(converts, s.Version)
		}
	}
	if len(converts) == 0 || converts[len(converts)-1] != sessions.SchemaRecordsV2 {
		t.Errorf("steps converting records %v; sessions.SchemaRecordsV2 = %d, want the last of them", converts, sessions.SchemaRecordsV2)
	}
	if sessions.SchemaRecordsV2 < Oldest() {
		t.Errorf("sessions.SchemaRecordsV2 = %d is below Oldest() = %d: the old layout would be written where no broker serves", sessions.SchemaRecordsV2, Oldest())
	}
}
