package api

import "time"

// The JSON bodies of the admin API (/admin/v1/): the broker's handlers write
// them and its operator commands (`broker sessions`, `broker audit`) read
// them. Times are RFC 3339 in UTC.

// AdminSession is a session as the admin API shows it: never its tokens,
// handle or claims.
type AdminSession struct {
	SessionID  string    `json:"session_id"`
	Subject    string    `json:"sub"`
	ClientID   string    `json:"client_id"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	IP         string    `json:"ip"`
	UserAgent  string    `json:"user_agent"`
	// Unreadable flags a record that cannot be opened (a key missing from
	// the keyring, damage, an edit): it works for nobody, and can be
	// revoked. Its times are the record's clear-text ones, unauthenticated.
	Unreadable bool `json:"unreadable,omitempty"`
}

// SessionList answers GET /admin/v1/users/{sub}/sessions and, a page at a
// time, GET /admin/v1/sessions.
type SessionList struct {
	Sessions []AdminSession `json:"sessions"`
	// NextCursor is set by the search while more may follow: the cursor=
	// of the next page, with the same filters.
	NextCursor string `json:"next_cursor,omitempty"`
}

// UserRevocation answers DELETE /admin/v1/users/{sub}/sessions.
type UserRevocation struct {
	Revoked               int `json:"revoked"`
	IdPRevocationFailures int `json:"idp_revocation_failures"`
}

// AuditEvent is one event of the audit trail.
type AuditEvent struct {
	ID        string    `json:"id"`
	Time      time.Time `json:"time"`
	Actor     string    `json:"actor"`
	Action    string    `json:"action"`
	SessionID string    `json:"session_id"`
	Subject   string    `json:"sub"`
	Outcome   string    `json:"outcome"`
	Detail    string    `json:"detail"`
	IP        string    `json:"ip"`
	UserAgent string    `json:"user_agent"`
	RequestID string    `json:"request_id"`
}

// AuditList answers GET /admin/v1/audit, a page at a time.
type AuditList struct {
	Events     []AuditEvent `json:"events"`
	NextCursor string       `json:"next_cursor,omitempty"`
}
