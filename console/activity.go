package console

import (
	"sync"
	"time"

	"github.com/mobile-token-broker/broker/broker"
)

// Activity counts what the broker reports to its metrics (sessions opened,
// sessions ended, refresh outcomes) per minute over the last hour, in the
// process, for the overview's charts. It is a broker.Metrics that passes
// every call on to the one it wraps, so the Prometheus counters and the
// console read the same events.
type Activity struct {
	broker.Metrics
	now func() time.Time

	mu      sync.Mutex
	buckets [activityMinutes]activityBucket
}

// activityMinutes is the span the overview shows, one bucket a minute.
const activityMinutes = 60

// RefreshOutcomes are the refresh outcomes the broker reports, in the order
// the overview shows them.
var RefreshOutcomes = []string{"ok", "coalesced", "failed", "rejected"}

type activityBucket struct {
	// minute is the bucket's Unix minute; a bucket of another minute holds
	// stale counts.
	minute  int64
	opened  int
	ended   int
	refresh [4]int
}

// NewActivity returns an Activity passing calls on to next, which must not
// be nil.
func NewActivity(next broker.Metrics, now func() time.Time) *Activity {
	if now == nil {
		now = time.Now
	}
	return &Activity{Metrics: next, now: now}
}

// add counts into the current minute's bucket.
func (a *Activity) add(f func(*activityBucket)) {
	m := a.now().Unix() / 60
	a.mu.Lock()
	b := &a.buckets[m%activityMinutes]
	if b.minute != m {
		*b = activityBucket{minute: m}
	}
	f(b)
	a.mu.Unlock()
}

// Exchange counts a session opened.
func (a *Activity) Exchange(outcome string) {
	a.Metrics.Exchange(outcome)
	if outcome == "ok" {
		a.add(func(b *activityBucket) { b.opened++ })
	}
}

// Refresh counts a refresh outcome.
func (a *Activity) Refresh(outcome string) {
	a.Metrics.Refresh(outcome)
	for i, o := range RefreshOutcomes {
		if o == outcome {
			a.add(func(b *activityBucket) { b.refresh[i]++ })
		}
	}
}

// Revocation counts a session ended (logged out, revoked, ended by the
// IdP, refused a refresh).
func (a *Activity) Revocation(reason string) {
	a.Metrics.Revocation(reason)
	a.add(func(b *activityBucket) { b.ended++ })
}

// Minute is one minute of activity.
type Minute struct {
	Start          time.Time
	Opened, Ended  int
	RefreshOutcome [4]int
}

// LastHour returns the last activityMinutes minutes, oldest first, the
// current one last.
func (a *Activity) LastHour() []Minute {
	m := a.now().Unix() / 60
	out := make([]Minute, activityMinutes)
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range out {
		want := m - int64(activityMinutes-1-i)
		out[i].Start = time.Unix(want*60, 0).UTC()
		if b := a.buckets[want%activityMinutes]; b.minute == want {
			out[i].Opened, out[i].Ended, out[i].RefreshOutcome = b.opened, b.ended, b.refresh
		}
	}
	return out
}
