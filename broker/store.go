package broker

import (
	"context"
	"time"
)

// Store keeps sessions. Implementations must hold the tokens encrypted at rest
// and must not keep the handle (only Session.SecretHash).
//
// Errors: ErrNotFound (wrapped) when the session does not exist, expired or
// was deleted; ErrStoreUnavailable (wrapped) when the backend cannot be
// reached or did not answer in time. Anything else is an internal error.
type Store interface {
	// Create persists a new session that expires at s.ExpiresAt().
	Create(ctx context.Context, s *Session) error
	// Get returns the session with the given id. The store's own expiry is a
	// backstop: callers still check Session.Ended.
	Get(ctx context.Context, id string) (*Session, error)
	// UpdateTokens atomically replaces the tokens of an existing session. It
	// never recreates a session that ended meanwhile: it returns ErrNotFound.
	UpdateTokens(ctx context.Context, id string, t Tokens) error
	// Touch records a use of an existing session at the given time and moves
	// its expiry to expiresAt; ErrNotFound if the session ended meanwhile.
	Touch(ctx context.Context, id string, at, expiresAt time.Time) error
	// Delete ends the session and returns it as it was. Of concurrent calls
	// for one id exactly one gets the session; the others get ErrNotFound.
	Delete(ctx context.Context, id string) (*Session, error)
	// ListBySubject returns the live sessions of a subject, newest first,
	// pruning its index of sessions that ended.
	ListBySubject(ctx context.Context, sub string) ([]*Session, error)
	// ListBySID returns the live sessions opened with an ID token carrying
	// this sid (the IdP's session), newest first, pruning likewise.
	ListBySID(ctx context.Context, sid string) ([]*Session, error)
	// Ping reports whether the store answers.
	Ping(ctx context.Context) error
}

// Locker hands out leases that exclude other holders across every replica
// sharing the store.
type Locker interface {
	// TryLock takes the refresh lease of a session for ttl if nobody holds
	// it. It reports false, without error, when another holder has it.
	TryLock(ctx context.Context, sessionID string, ttl time.Duration) (Lease, bool, error)
}

// Lease is a held lock. Only its owner can extend or release it: a lease
// that expired and was taken by another holder is left alone.
type Lease interface {
	// Extend renews the lease for its ttl; it returns an error if the lease
	// was lost.
	Extend(ctx context.Context) error
	// Release frees the lease if this owner still holds it.
	Release(ctx context.Context) error
}

// ReplayGuard remembers one-time token ids across every replica.
type ReplayGuard interface {
	// FirstUse records id as used for ttl. It reports true for the first use
	// and false for every later one while the record lasts.
	FirstUse(ctx context.Context, id string, ttl time.Duration) (bool, error)
}

// AuditEvent is one entry of the audit trail. It never holds a handle or a
// token.
type AuditEvent struct {
	Time      time.Time
	Actor     string // admin token name, "user", "idp" or "broker"
	Action    string // one of the Action* constants
	SessionID string
	Subject   string
	Outcome   string // OutcomeOK or OutcomeError
	Detail    string
}

// Audit actions and outcomes of the contract.
const (
	ActionSessionRevoke     = "session.revoke"
	ActionUserRevoke        = "user.revoke"
	ActionLogout            = "logout"
	ActionBackchannelLogout = "backchannel_logout"
	ActionRefreshRejected   = "refresh_rejected"
	ActionAdminDenied       = "admin.denied"
	ActionExpired           = "expired"

	OutcomeOK    = "ok"
	OutcomeError = "error"

	ActorUser   = "user"
	ActorIdP    = "idp"
	ActorBroker = "broker"
)

// AuditLog is an append-only, capped trail of security-relevant events.
type AuditLog interface {
	// Append adds an event; the trail keeps a bounded number of the newest.
	Append(ctx context.Context, e AuditEvent) error
	// List returns up to limit events, newest first.
	List(ctx context.Context, limit int) ([]AuditEvent, error)
}
