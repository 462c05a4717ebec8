package broker

import (
	"context"
	"sync"
	"time"
)

// Work the broker detaches from requests (refresh flights, rotated tokens
// waiting to be stored, revocations at the IdP, the outbox worker) runs
// under the Service's own context and is counted, so that Close can wait for
// it before the caller closes the clients that work uses.

// lifecycle tracks the Service's detached work.
type lifecycle struct {
	base   context.Context
	cancel context.CancelFunc
	// stopping ends when Close begins, for work that only tidies up and
	// should not hold the shutdown (lease releases retried).
	stopping context.Context
	stop     context.CancelFunc

	mu      sync.Mutex
	closing bool
	wg      sync.WaitGroup
}

func newLifecycle() *lifecycle {
	ctx, cancel := context.WithCancel(context.Background())
	stopping, stop := context.WithCancel(ctx)
	return &lifecycle{base: ctx, cancel: cancel, stopping: stopping, stop: stop}
}

// add counts one more piece of work, unless Close has begun.
func (l *lifecycle) add() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return false
	}
	l.wg.Add(1)
	return true
}

// work runs fn now, counted, under the Service's context. It reports false,
// without running fn, once Close has begun.
func (s *Service) work(fn func(ctx context.Context)) bool {
	if !s.life.add() {
		return false
	}
	defer s.life.wg.Done()
	fn(s.life.base)
	return true
}

// spawn runs fn in a goroutine, counted, under the Service's context. It
// reports false, without running fn, once Close has begun.
func (s *Service) spawn(fn func(ctx context.Context)) bool {
	if !s.life.add() {
		return false
	}
	go func() {
		defer s.life.wg.Done()
		fn(s.life.base)
	}()
	return true
}

// Close stops the outbox worker, refuses new detached work and waits for
// the work in flight (refreshes, rotated tokens being stored, revocations)
// until ctx ends; then it cancels what is left and returns ctx's error.
// Call it after the HTTP servers have stopped and before closing the store.
func (s *Service) Close(ctx context.Context) error {
	s.life.mu.Lock()
	s.life.closing = true
	s.life.mu.Unlock()
	s.life.stop()
	done := make(chan struct{})
	go func() {
		s.life.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.life.cancel()
		return nil
	case <-ctx.Done():
		s.life.cancel()
		<-done
		return ctx.Err()
	}
}

// backoffs remembers, per session, until when not to retry a refresh that
// failed for an IdP outage. It is per process: at worst each replica tries
// once per interval.
type backoffs struct {
	mu    sync.Mutex
	until map[string]time.Time
}

// backoffLimit bounds the map; past it, entries that ran out are dropped.
const backoffLimit = 10000

func (b *backoffs) active(id string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.until[id]
	return ok && now.Before(t)
}

func (b *backoffs) set(id string, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.until == nil {
		b.until = map[string]time.Time{}
	}
	if len(b.until) >= backoffLimit {
		for k, t := range b.until {
			if t.Before(until.Add(-refreshBackoff)) {
				delete(b.until, k)
			}
		}
	}
	b.until[id] = until
}

func (b *backoffs) clear(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.until, id)
}

// flights remembers when each session's refresh flight in this process
// started, so that a request does not wait on one that already outlasted a
// request's patience. Only a flight records and removes its own entry, so
// the map holds exactly the flights running.
type flights struct {
	mu      sync.Mutex
	started map[string]time.Time
}

func (f *flights) begin(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started == nil {
		f.started = map[string]time.Time{}
	}
	f.started[id] = time.Now()
}

// since reports when the session's running flight started.
func (f *flights) since(id string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.started[id]
	return t, ok
}

func (f *flights) done(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.started, id)
}

// pendingTokens holds rotated tokens that the store has not taken yet, per
// session. An entry lives only while its writer runs (at most
// pendingWriteLimit), so the map is bounded by the refreshes of that time.
type pendingTokens struct {
	mu sync.Mutex
	m  map[string]refreshOutcome
}

func (p *pendingTokens) get(id string) (refreshOutcome, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o, ok := p.m[id]
	return o, ok
}

func (p *pendingTokens) put(id string, o refreshOutcome) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]refreshOutcome{}
	}
	p.m[id] = o
}

// drop forgets the entry of id if it is still the one of generation gen.
func (p *pendingTokens) drop(id string, gen uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if o, ok := p.m[id]; ok && o.gen == gen {
		delete(p.m, id)
	}
}

// unreadableSeen remembers the unreadable records already logged, so that
// each is logged once per process, not on every request that names it.
type unreadableSeen struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

// unreadableLogLimit bounds the memory of logged records; past it, the log
// line is written again rather than the map grown.
const unreadableLogLimit = 10000

// first reports whether id is met for the first time.
func (u *unreadableSeen) first(id string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.ids[id]; ok {
		return false
	}
	if u.ids == nil || len(u.ids) >= unreadableLogLimit {
		u.ids = map[string]struct{}{}
	}
	u.ids[id] = struct{}{}
	return true
}
