package console

import (
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

// countingMetrics records what Activity passes on; the methods it does not
// count are the embedded nil interface's, never called here.
type countingMetrics struct {
	broker.Metrics
	exchanges, refreshes, revocations int
}

func (m *countingMetrics) Exchange(string)   { m.exchanges++ }
func (m *countingMetrics) Refresh(string)    { m.refreshes++ }
func (m *countingMetrics) Revocation(string) { m.revocations++ }

func TestActivityLastHour(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 30, 0, time.UTC)
	clock := func() time.Time { return now }
	next := &countingMetrics{}
	a := NewActivity(next, clock)

	a.Exchange("ok")
	a.Exchange("rejected") // not a session opened
	a.Refresh("ok")
	a.Refresh("coalesced")
	a.Revocation("logout")
	now = now.Add(30 * time.Minute)
	a.Exchange("ok")
	a.Refresh("rejected")

	if next.exchanges != 3 || next.refreshes != 3 || next.revocations != 1 {
		t.Errorf("passed on %d exchanges, %d refreshes, %d revocations; want 3, 3, 1", next.exchanges, next.refreshes, next.revocations)
	}
	sum := func(hour []Minute) (opened, ended int, refresh [4]int) {
		for _, m := range hour {
			opened += m.Opened
			ended += m.Ended
			for i, v := range m.RefreshOutcome {
				refresh[i] += v
			}
		}
		return
	}
	hour := a.LastHour()
	if len(hour) != 60 || !hour[59].Start.Equal(now.Truncate(time.Minute)) {
		t.Fatalf("LastHour = %d minutes ending %v, want 60 ending %v", len(hour), hour[len(hour)-1].Start, now.Truncate(time.Minute))
	}
	if opened, ended, refresh := sum(hour); opened != 2 || ended != 1 || refresh != [4]int{1, 1, 0, 1} {
		t.Errorf("after 30 min: opened %d, ended %d, refreshes %v; want 2, 1, [1 1 0 1]", opened, ended, refresh)
	}
	// An hour on, the first minute's counts have left the window, even
	// though its bucket was not written again.
	now = now.Add(31 * time.Minute)
	if opened, ended, refresh := sum(a.LastHour()); opened != 1 || ended != 0 || refresh != [4]int{0, 0, 0, 1} {
		t.Errorf("after 61 min: opened %d, ended %d, refreshes %v; want 1, 0, [0 0 0 1]", opened, ended, refresh)
	}
	// A bucket reused for a later minute starts from zero.
	now = now.Add(59 * time.Minute)
	a.Exchange("ok")
	if opened, _, _ := sum(a.LastHour()); opened != 1 {
		t.Errorf("after reusing a bucket: opened %d, want 1", opened)
	}
}

func TestSignInsExpire(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		// uses are the offsets at which the sign-in is used before the
		// check at the last offset.
		uses  []time.Duration
		check time.Duration
		live  bool
	}{
		{"fresh", nil, time.Minute, true},
		{"idle too long", nil, 15 * time.Minute, false},
		{"kept alive by use", []time.Duration{10 * time.Minute, 20 * time.Minute}, 30 * time.Minute, true},
		{"past the lifetime however used", []time.Duration{14 * time.Minute, 28 * time.Minute, 42 * time.Minute, 56 * time.Minute, 70 * time.Minute, 84 * time.Minute, 98 * time.Minute, 112 * time.Minute}, 2 * time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSignIns(DefaultIdleTimeout, DefaultMaxLifetime)
			cookie, _ := s.open("secops", start)
			for _, u := range tt.uses {
				if s.find(cookie, start.Add(u)) == nil {
					t.Fatalf("sign-in ended at +%v, before the check", u)
				}
			}
			if got := s.find(cookie, start.Add(tt.check)) != nil; got != tt.live {
				t.Errorf("live at +%v = %v, want %v", tt.check, got, tt.live)
			}
		})
	}
}

func TestSignInsBounded(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s := newSignIns(DefaultIdleTimeout, DefaultMaxLifetime)
	first, in := s.open("secops", now)
	if in.actor != "secops" || len(in.csrf) < 43 || first == in.csrf {
		t.Fatalf("sign-in = %+v, want the actor and a CSRF token of its own", in)
	}
	for i := range maxSignIns {
		s.open("secops", now.Add(time.Duration(i+1)*time.Millisecond))
	}
	if len(s.byHash) != maxSignIns {
		t.Errorf("%d sign-ins kept, want at most %d", len(s.byHash), maxSignIns)
	}
	if s.find(first, now) != nil {
		t.Error("the oldest sign-in was kept past the bound")
	}
	s.close(first)
	if s.find("", now) != nil || s.find("x", now) != nil {
		t.Error("an empty or unknown cookie found a sign-in")
	}
}
