package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestRekeyRetiresOldKey rotates the encryption key without logging anyone
// out: sessions sealed under A keep working with "B,A", where new sessions
// are sealed under B; `broker rekey` moves the old ones to B, after which
// "B" alone serves them all. Before the rekey, "B" alone fails them, which
// is what makes the last step a proof.
func TestRekeyRetiresOldKey(t *testing.T) {
	ctx := context.Background()
	keyA, keyB := "a:"+randomKey(t), "b:"+randomKey(t)
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_ENCRYPTION_KEYS": keyA}})
	onA := s.start()
	var logins []created
	for range 3 {
		logins = append(logins, s.login(onA))
	}
	if err := onA.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	onB, err := s.tryStart(map[string]string{"BROKER_ENCRYPTION_KEYS": keyB})
	if err != nil {
		t.Fatalf("serve with keys B: %v", err)
	}
	for _, c := range logins {
		if res := do(t, onB, http.MethodGet, "/api/x", c.Session, nil); res.status == http.StatusOK {
			t.Fatalf("GET /api/x with a handle sealed under A, on a broker with keys B = 200, want a failure")
		}
	}
	if err := onB.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	rotated := keyB + "," + keyA
	onBA, err := s.tryStart(map[string]string{"BROKER_ENCRYPTION_KEYS": rotated})
	if err != nil {
		t.Fatalf("serve with keys B,A: %v", err)
	}
	for _, c := range logins {
		if res := do(t, onBA, http.MethodGet, "/api/x", c.Session, nil); res.status != http.StatusOK {
			t.Errorf("GET /api/x with a handle sealed under A, on a broker with keys B,A = %d %s, want 200", res.status, res.body)
		}
	}
	logins = append(logins, s.login(onBA))

	// The rekey runs beside a serving broker, with nothing but the two
	// variables it needs.
	env := map[string]string{"BROKER_REDIS_URL": s.env["BROKER_REDIS_URL"], "BROKER_ENCRYPTION_KEYS": rotated}
	getenv := func(k string) string { return env[k] }
	var out strings.Builder
	if err := run(ctx, []string{"rekey"}, getenv, &out, io.Discard); err != nil {
		t.Fatalf("broker rekey = %v", err)
	}
	if want := `rekeyed 3 sessions to key "b"; 1 already current; 0 gone meanwhile; 0 unreadable`; !strings.Contains(out.String(), want) {
		t.Errorf("broker rekey printed %q, want %q", out.String(), want)
	}
	out.Reset()
	if err := run(ctx, []string{"rekey"}, getenv, &out, io.Discard); err != nil || !strings.Contains(out.String(), "rekeyed 0 sessions") || !strings.Contains(out.String(), "4 already current") {
		t.Errorf("broker rekey again = %v, printed %q; want 4 already current", err, out.String())
	}
	if err := onBA.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	onlyB, err := s.tryStart(map[string]string{"BROKER_ENCRYPTION_KEYS": keyB})
	if err != nil {
		t.Fatalf("serve with keys B: %v", err)
	}
	for i, c := range logins {
		if res := do(t, onlyB, http.MethodGet, "/api/x", c.Session, nil); res.status != http.StatusOK {
			t.Errorf("session %d: GET /api/x on a broker with keys B after rekey = %d %s, want 200", i+1, res.status, res.body)
		}
	}
}

// TestRekeyRemoveUnreadable leaves behind a session sealed under a key no
// longer in BROKER_ENCRYPTION_KEYS: `broker rekey` reports it and fails,
// saying how to remove it; `broker rekey --remove-unreadable` ends it,
// after which its handle gets 401 and the other sessions work as before.
func TestRekeyRemoveUnreadable(t *testing.T) {
	ctx := context.Background()
	keyLost, keyA := "lost:"+randomKey(t), "a:"+randomKey(t)
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_ENCRYPTION_KEYS": keyLost}})
	onLost := s.start()
	lost := s.login(onLost)
	if err := onLost.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	onA, err := s.tryStart(map[string]string{"BROKER_ENCRYPTION_KEYS": keyA})
	if err != nil {
		t.Fatalf("serve with keys A: %v", err)
	}
	kept := s.login(onA)

	env := map[string]string{"BROKER_REDIS_URL": s.env["BROKER_REDIS_URL"], "BROKER_ENCRYPTION_KEYS": keyA}
	getenv := func(k string) string { return env[k] }
	var out strings.Builder
	err = run(ctx, []string{"rekey"}, getenv, &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--remove-unreadable") {
		t.Errorf("broker rekey with an unreadable session = %v, want an error pointing to --remove-unreadable", err)
	}
	for _, want := range []string{"1 already current; 0 gone meanwhile; 1 unreadable", "unreadable sessions: " + lost.SessionID} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("broker rekey printed %q, want %q", out.String(), want)
		}
	}

	out.Reset()
	if err := run(ctx, []string{"rekey", "--remove-unreadable"}, getenv, &out, io.Discard); err != nil {
		t.Fatalf("broker rekey --remove-unreadable = %v", err)
	}
	if want := "1 unreadable, 1 of them removed"; !strings.Contains(out.String(), want) {
		t.Errorf("broker rekey --remove-unreadable printed %q, want %q", out.String(), want)
	}
	if res := do(t, onA, http.MethodGet, "/api/x", lost.Session, nil); res.status != http.StatusUnauthorized {
		t.Errorf("GET /api/x with the removed session's handle = %d %s, want 401", res.status, res.body)
	}
	if res := do(t, onA, http.MethodGet, "/api/x", kept.Session, nil); res.status != http.StatusOK {
		t.Errorf("GET /api/x with a readable session's handle = %d %s, want 200", res.status, res.body)
	}
	out.Reset()
	if err := run(ctx, []string{"rekey", "--remove-unreadable"}, getenv, &out, io.Discard); err != nil || !strings.Contains(out.String(), "0 unreadable, 0 of them removed") {
		t.Errorf("broker rekey --remove-unreadable again = %v, printed %q; want nothing unreadable", err, out.String())
	}
	if err := run(ctx, []string{"rekey", "--remove"}, getenv, io.Discard, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("broker rekey --remove = %v, want a usage error", err)
	}
}

func TestRekeyConfig(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"nothing", nil, []string{"BROKER_REDIS_URL is required", "BROKER_ENCRYPTION_KEYS is required"}},
		{"bad keys", map[string]string{"BROKER_REDIS_URL": "redis://127.0.0.1:1", "BROKER_ENCRYPTION_KEYS": "k1:c2hvcnQ="}, []string{"BROKER_ENCRYPTION_KEYS: keyring: the key of entry 1 is 5 bytes"}},
		{"bad url", map[string]string{"BROKER_REDIS_URL": "http://x", "BROKER_ENCRYPTION_KEYS": "k1:" + randomKey(t)}, []string{"BROKER_REDIS_URL is not a valid"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), []string{"rekey"}, func(k string) string { return tt.env[k] }, io.Discard, io.Discard)
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("broker rekey = %v, want a configuration error", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("broker rekey = %q, want it to say %q", err, w)
				}
			}
		})
	}
}
