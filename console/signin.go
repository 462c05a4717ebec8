package console

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"sync"
	"time"
)

// Console sign-ins are kept in the process: a restart signs everybody out,
// and each replica knows only the sign-ins made on it (reach the console of
// one replica, as a port-forward does, or make the balancer sticky).
//
// The cookie holds a random 256-bit id; the process keeps only its SHA-256,
// so neither a dump of the process nor a log line can be replayed as a
// cookie, and the admin token itself is never kept after sign-in.

// Bounds of console sign-ins.
const (
	// DefaultIdleTimeout ends a sign-in not used for this long.
	DefaultIdleTimeout = 15 * time.Minute
	// DefaultMaxLifetime ends a sign-in this long after it began, used or
	// not.
	DefaultMaxLifetime = 2 * time.Hour
	// maxSignIns bounds the sign-ins a process keeps; past it the oldest
	// is ended to make room.
	maxSignIns = 256
)

// signIn is one admin signed in to the console.
type signIn struct {
	actor string
	// csrf is the token every state-changing form of this sign-in
	// carries.
	csrf     string
	started  time.Time
	lastUsed time.Time
}

// signIns holds the console's sign-ins by the digest of their cookie.
type signIns struct {
	mu      sync.Mutex
	byHash  map[[sha256.Size]byte]*signIn
	idle    time.Duration
	maxLife time.Duration
}

func newSignIns(idle, maxLife time.Duration) *signIns {
	return &signIns{byHash: map[[sha256.Size]byte]*signIn{}, idle: idle, maxLife: maxLife}
}

// randomToken returns 256 random bits, base64url.
func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// open starts a sign-in for actor and returns its cookie value.
func (s *signIns) open(actor string, now time.Time) (cookie string, in *signIn) {
	cookie = randomToken()
	in = &signIn{actor: actor, csrf: randomToken(), started: now, lastUsed: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(now)
	if len(s.byHash) >= maxSignIns {
		var oldest [sha256.Size]byte
		var at time.Time
		for k, v := range s.byHash {
			if at.IsZero() || v.started.Before(at) {
				oldest, at = k, v.started
			}
		}
		delete(s.byHash, oldest)
	}
	s.byHash[sha256.Sum256([]byte(cookie))] = in
	return cookie, in
}

// find returns the live sign-in of a cookie and records its use; nil when
// there is none.
func (s *signIns) find(cookie string, now time.Time) *signIn {
	if cookie == "" || len(cookie) > 64 {
		return nil
	}
	k := sha256.Sum256([]byte(cookie))
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.byHash[k]
	if in == nil {
		return nil
	}
	if s.endedLocked(in, now) {
		delete(s.byHash, k)
		return nil
	}
	in.lastUsed = now
	// A copy, so that callers read it without the lock.
	cp := *in
	return &cp
}

// close ends the sign-in of a cookie.
func (s *signIns) close(cookie string) {
	k := sha256.Sum256([]byte(cookie))
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byHash, k)
}

func (s *signIns) endedLocked(in *signIn, now time.Time) bool {
	return !now.Before(in.lastUsed.Add(s.idle)) || !now.Before(in.started.Add(s.maxLife))
}

func (s *signIns) pruneLocked(now time.Time) {
	for k, v := range s.byHash {
		if s.endedLocked(v, now) {
			delete(s.byHash, k)
		}
	}
}
