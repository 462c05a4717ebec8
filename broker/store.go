package broker

import (
	"context"
	"errors"
	"time"
)

// Store keeps sessions. Implementations must hold the tokens encrypted at rest
// and must not keep the handle (only Session.SecretHash). Every field that
// grants access or decides how long a session lives (the secret hash, the
// subject, sid, client id, DPoP key thumbprint, generation, creation, last
// use, absolute expiry, idle timeout and the tokens) is bound by the encryption: a record edited
// in the backend by anyone without the keys fails to open and is reported
// as unreadable, never as a session with the edited values.
//
// Errors: ErrNotFound (wrapped) when the session does not exist, expired or
// was deleted; ErrStoreUnavailable (wrapped) when the backend cannot be
// reached or did not answer in time; an *UnreadableError when the record
// exists but cannot be opened. A caller's own context ending is reported as
// the context's error, never as ErrStoreUnavailable. Anything else is an
// internal error.
//
// Every method may be retried after ErrStoreUnavailable, and the backend
// client may repeat a command whose reply was lost: a repeat of a call that
// already took effect answers as the first call would have.
type Store interface {
	// Create persists a new session at generation 1 that expires at
	// s.ExpiresAt().
	Create(ctx context.Context, s *Session) error
	// Get returns the session with the given id as the backend holds it
	// now. The store's own expiry is a backstop: callers still check
	// Session.Ended.
	Get(ctx context.Context, id string) (*Session, error)
	// Lookup is Get for the request path. It may answer from a copy held in
	// process, which the store drops the moment the record changes or ends
	// anywhere, by any path (a write of any replica, an expiry, an edit by
	// hand), and which it does not use while it cannot learn of such
	// changes. A copy may lag a change made elsewhere by the time the news
	// takes to arrive, never more. Decisions that write (the refresh
	// protocol, ends) read with Get.
	Lookup(ctx context.Context, id string) (*Session, error)
	// UpdateTokens is the fenced write of a refresh. In one atomic step it
	// stores t as generation from+1, only while lease (taken from the
	// Locker of this store for this session) is still held and the record is
	// still at generation from. It never recreates a session that ended.
	//
	// A lease that wraps another has an Unwrap() Lease method naming it.
	//
	// A nil lease is a rescue write, fenced by the generation alone: for a
	// writer that holds tokens the IdP rotated for generation from but lost
	// its lease to another holder. The generation is what keeps a stale
	// writer from overwriting newer tokens; the lease's part is to keep a
	// second IdP call from starting, and the holder it lost to is making a
	// call with the spent token, which the IdP refuses.
	//
	// Errors, with nothing written: ErrNotFound when the session ended;
	// ErrGenerationMoved when the record is no longer at generation from;
	// ErrLeaseLost when the lease is no longer this holder's.
	UpdateTokens(ctx context.Context, id string, lease Lease, from uint64, t Tokens) error
	// Touch records a use of an existing session at the given time and moves
	// its expiry to expiresAt; ErrNotFound if the session ended meanwhile. A
	// touch never moves the last use backwards.
	Touch(ctx context.Context, id string, at, expiresAt time.Time) error
	// End deletes the session and, in the same atomic step, records its
	// Ending: the record as it was and why it ended, kept for EndRetention
	// so that the work the end still owes (revoking the refresh token at the
	// IdP, the audit event) survives a crash of the caller or of the
	// backend, and so that a repeated end can be told it took effect. Of
	// concurrent calls for one id exactly one gets the Ending; the others
	// get ErrNotFound, as does a session that never existed. With
	// why.IfGeneration set, the session is ended only while its tokens are
	// at that generation; ErrGenerationMoved otherwise. An unreadable
	// record is ended all the same (its Ending's Session is Unreadable).
	End(ctx context.Context, id string, why EndReason) (*Ending, error)
	// Ending returns the Ending of a session that ended within
	// EndRetention, done or not; ErrNotFound otherwise.
	Ending(ctx context.Context, id string) (*Ending, error)
	// CompleteEnd records that the work of an Ending is done and forgets
	// the tokens it held; the Ending itself stays for EndRetention.
	CompleteEnd(ctx context.Context, id string) error
	// ClaimEnds returns up to limit Endings whose work is not done, that
	// ended at least olderThan ago and that no caller claimed within the
	// last claimFor, and claims them for claimFor: the outbox a worker
	// drains.
	ClaimEnds(ctx context.Context, olderThan, claimFor time.Duration, limit int) ([]*Ending, error)
	// ListBySubject returns the live sessions of a subject, newest first,
	// pruning its index of sessions that ended. Unreadable records are
	// listed too, flagged Session.Unreadable, so they can be ended.
	ListBySubject(ctx context.Context, sub string) ([]*Session, error)
	// ListBySID returns the live sessions opened with an ID token carrying
	// this sid (the IdP's session), newest first, likewise.
	ListBySID(ctx context.Context, sid string) ([]*Session, error)
	// ListRecent returns up to limit live sessions of every subject in
	// SessionOrder (latest absolute end first), starting after the
	// position after (the zero SessionPosition: from the start), and the
	// position to pass for the next page, zero when there is none. Pages
	// never repeat a session and, taken together, miss none that lived
	// through the whole walk; a session created during the walk is found
	// only if its position comes after the page being read. A page may
	// hold fewer than limit sessions while more follow (sessions met that
	// had ended are skipped); only a zero next position says the walk is
	// done. Unreadable records are listed, flagged Session.Unreadable, at
	// the position their clear absolute expiry gives them. limit is at
	// least 1; the store may cap how much work one call does.
	ListRecent(ctx context.Context, after SessionPosition, limit int) (page []*Session, next SessionPosition, err error)
	// Ping reports whether the store answers.
	Ping(ctx context.Context) error
}

// SessionPosition is a place in SessionOrder: the absolute expiry (to the
// millisecond) and id of a session. The zero value is the start.
type SessionPosition struct {
	AbsoluteExpiry time.Time
	ID             string
}

// IsZero reports whether p is the start (or, as a next position, the end).
func (p SessionPosition) IsZero() bool { return p.ID == "" && p.AbsoluteExpiry.IsZero() }

// SessionOrder compares two sessions' positions in the order of listings
// that span subjects: the latest absolute expiry first, then the greatest
// id (byte-wise) first. Since the absolute expiry is the creation time plus
// BROKER_SESSION_MAX_LIFETIME, this is newest first as long as that setting
// does not change.
func SessionOrder(a, b SessionPosition) int {
	am, bm := a.AbsoluteExpiry.UnixMilli(), b.AbsoluteExpiry.UnixMilli()
	switch {
	case am > bm:
		return -1
	case am < bm:
		return 1
	case a.ID > b.ID:
		return -1
	case a.ID < b.ID:
		return 1
	}
	return 0
}

// PositionOf returns the position of s in SessionOrder.
func PositionOf(s *Session) SessionPosition {
	return SessionPosition{AbsoluteExpiry: time.UnixMilli(s.AbsoluteExpiry.UnixMilli()).UTC(), ID: s.ID}
}

// EndRetention is how long a Store keeps an Ending.
const EndRetention = 24 * time.Hour

// EndReason says who ends a session, why, and what the end still owes.
type EndReason struct {
	Actor  string // admin token name, "user", "idp" or "broker"
	Action string // the audit action, one of the Action* constants
	Reason string // the metric label: "logout", "admin", "user_revoke", "expired", ... (see Metrics.Revocation)
	Detail string // for the audit event
	// RevokeAtIdP asks for the refresh token to be revoked (RFC 7009); not
	// after the IdP's own back-channel logout or refusal of the token.
	RevokeAtIdP bool
	// IfGeneration, when not zero, makes the end conditional on the
	// session's tokens still being at this generation.
	IfGeneration uint64
}

// Ending is a session that ended and what its end still owes.
type Ending struct {
	// Session is the record as it was when it ended; Unreadable when it
	// could not be opened, and then its tokens are unknown.
	Session *Session
	Why     EndReason
	At      time.Time
	// Done reports that the IdP revocation and the audit event were
	// handled; the tokens are then forgotten.
	Done bool
}

// Errors of the store's conditional writes, for errors.Is.
var (
	// ErrGenerationMoved: the session's tokens are no longer at the
	// generation the caller read; another writer stored newer ones.
	ErrGenerationMoved = errors.New("the session's tokens moved to a newer generation")
	// ErrLeaseLost: the caller's lease expired or was taken by another
	// holder.
	ErrLeaseLost = errors.New("the refresh lease was lost")
	// ErrUnreadable matches every *UnreadableError.
	ErrUnreadable = errors.New("the session record cannot be read")
)

// UnreadableError reports a stored record that exists but cannot be opened:
// sealed under a key the keyring lacks, damaged, or edited. Session holds
// what the record says in the clear (id, subject, sid, times, client
// address); none of it is authenticated, so it identifies the record for
// listing and removal only.
type UnreadableError struct {
	Session *Session
	Err     error // why, for the logs; never holds a value of the record
}

func (e *UnreadableError) Error() string {
	return "session " + e.Session.ID + " cannot be read: " + e.Err.Error()
}

func (e *UnreadableError) Unwrap() []error { return []error{ErrUnreadable, e.Err} }

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
	// Extend renews the lease for its ttl. It returns ErrLeaseLost
	// (wrapped) if the lease is no longer this holder's, and
	// ErrStoreUnavailable if the store could not say: the lease may still
	// be held, until its ttl runs out.
	Extend(ctx context.Context) error
	// Release frees the lease if this owner still holds it.
	Release(ctx context.Context) error
}

// ReplayGuard remembers one-time token ids across every replica.
type ReplayGuard interface {
	// Used reports whether id was recorded and its record still lasts.
	Used(ctx context.Context, id string) (bool, error)
	// FirstUse records id as used for ttl. It reports true for the first use
	// and false for every later one while the record lasts.
	FirstUse(ctx context.Context, id string, ttl time.Duration) (bool, error)
}

// AuditEvent is one entry of the audit trail. It never holds a handle or a
// token.
type AuditEvent struct {
	// ID is the event's position in the trail, set by the AuditLog when
	// it lists events; ignored by Append.
	ID        string
	Time      time.Time
	Actor     string // admin token name, "user", "idp" or "broker"
	Action    string // one of the Action* constants
	SessionID string
	Subject   string
	Outcome   string // OutcomeOK or OutcomeError
	Detail    string
	// The request that caused the event, when a request did: its client
	// address (at most MaxIPLen bytes), User-Agent (MaxUserAgentLen) and
	// request id (MaxRequestIDLen). Empty for the broker's own work, such
	// as the outbox finishing an end after a crash.
	ClientIP  string
	UserAgent string
	RequestID string
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
	// A repeat of a call whose reply was lost does not add it twice.
	Append(ctx context.Context, e AuditEvent) error
	// List returns up to limit events, newest first.
	List(ctx context.Context, limit int) ([]AuditEvent, error)
	// Search returns up to q.Limit events that match q, newest first (in
	// the order they were appended), each with its ID, and the ID to pass
	// as q.Before for the next page, "" when the trail has no more. It
	// examines a bounded number of events per call: a page may hold fewer
	// than q.Limit events, even none, while its next ID says that older
	// events remain to be examined. A q.Before that is not an ID the trail
	// hands out is ErrBadCursor (wrapped).
	Search(ctx context.Context, q AuditQuery) (events []AuditEvent, next string, err error)
}

// AuditQuery selects audit events. Empty fields match every event.
type AuditQuery struct {
	Action, Actor, Subject, SessionID string
	// Since (inclusive) and Until (exclusive) bound the events' Time.
	Since, Until time.Time
	// Before is the ID of the last event of the previous page; "" starts
	// at the newest.
	Before string
	// Limit is at least 1.
	Limit int
}

// Match reports whether e is one of the events q selects; q.Before and
// q.Limit aside.
func (q AuditQuery) Match(e AuditEvent) bool {
	switch {
	case q.Action != "" && e.Action != q.Action,
		q.Actor != "" && e.Actor != q.Actor,
		q.Subject != "" && e.Subject != q.Subject,
		q.SessionID != "" && e.SessionID != q.SessionID,
		!q.Since.IsZero() && e.Time.Before(q.Since),
		!q.Until.IsZero() && !e.Time.Before(q.Until):
		return false
	}
	return true
}

// ErrBadCursor: a paging cursor that no listing handed out.
var ErrBadCursor = &Error{Code: CodeInvalidRequest, Message: "the cursor is not valid"}
