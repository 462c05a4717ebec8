package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

// TestSessionLive ends sessions on one replica, in each way there is, and
// asks another whether they still live.
func TestSessionLive(t *testing.T) {
	e := newEnv(t, time.Hour)
	a, b := e.replica(replicaOptions{}), e.replica(replicaOptions{})
	ctx := context.Background()

	live := func(id string) error {
		t.Helper()
		return a.SessionLive(ctx, id)
	}
	ns := e.login(a)
	id := ns.Session.ID
	if err := live(id); err != nil {
		t.Fatalf("SessionLive of a new session = %v, want nil", err)
	}
	lastUsed := storedSession(t, a, id).LastUsedAt
	e.clock.Advance(2 * time.Minute) // past the touch interval
	if err := live(id); err != nil {
		t.Fatalf("SessionLive = %v, want nil", err)
	}
	if got := storedSession(t, a, id).LastUsedAt; !got.Equal(lastUsed) {
		t.Errorf("SessionLive moved the last use from %v to %v; it must record no use", lastUsed, got)
	}

	if err := b.Logout(ctx, broker.Credential{Handle: ns.Handle}); err != nil {
		t.Fatalf("Logout = %v", err)
	}
	if err := live(id); !errors.Is(err, broker.ErrInvalidToken) {
		t.Errorf("SessionLive after a logout on another replica = %v, want ErrInvalidToken", err)
	}

	revoked := e.login(a)
	if err := b.RevokeSession(ctx, revoked.Session.ID, "secops"); err != nil {
		t.Fatalf("RevokeSession = %v", err)
	}
	if err := live(revoked.Session.ID); !errors.Is(err, broker.ErrInvalidToken) {
		t.Errorf("SessionLive after an admin revoke on another replica = %v, want ErrInvalidToken", err)
	}

	byIdP := e.login(a)
	if _, err := b.BackchannelLogout(ctx, e.logoutToken(byIdP.Session.Subject)); err != nil {
		t.Fatalf("BackchannelLogout = %v", err)
	}
	if err := live(byIdP.Session.ID); !errors.Is(err, broker.ErrInvalidToken) {
		t.Errorf("SessionLive after a back-channel logout = %v, want ErrInvalidToken", err)
	}

	old := e.login(a)
	e.clock.Advance(2161 * time.Hour) // past the default maximum lifetime
	if err := live(old.Session.ID); !errors.Is(err, broker.ErrInvalidToken) {
		t.Errorf("SessionLive past the maximum lifetime = %v, want ErrInvalidToken", err)
	}

	for _, bad := range []string{"", "not-an-id", old.Handle} {
		if err := live(bad); !errors.Is(err, broker.ErrInvalidToken) {
			t.Errorf("SessionLive(%.8q...) = %v, want ErrInvalidToken", bad, err)
		}
	}
}
