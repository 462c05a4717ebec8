package sessions

import (
	"crypto/sha256"
	"encoding/base64"
)

// Key layout. Every key that one atomic operation touches shares a hash tag
// ({...}), so that the layout works unchanged on Redis Cluster: a session,
// its refresh lease and its ending live in the session id's slot; each index,
// the audit stream and the outbox of endings have a slot of their own and are
// only ever changed on their own. Subjects and sids are base64url-encoded
// inside their tags so that a '}' in them cannot end the tag.
const (
	keyPrefix = "broker:"
	auditKey  = keyPrefix + "audit"
	// endsKey is the outbox of endings: session ids scored by the time
	// (Unix ms) their end was asked for. An entry is written before the
	// session is ended and removed once the end's work is done, so that a
	// crash in between leaves the work findable.
	endsKey = keyPrefix + "ends"
)

func sessionKey(id string) string { return keyPrefix + "session:{" + id + "}" }

func lockKey(id string) string { return keyPrefix + "session:{" + id + "}:lock" }

// endedKey names the tombstone of an ended session: its record as it was
// and why it ended, kept for broker.EndRetention.
func endedKey(id string) string { return keyPrefix + "session:{" + id + "}:ended" }

func subjectKey(sub string) string {
	return keyPrefix + "user:{" + base64.RawURLEncoding.EncodeToString([]byte(sub)) + "}"
}

func sidKey(sid string) string {
	return keyPrefix + "sid:{" + base64.RawURLEncoding.EncodeToString([]byte(sid)) + "}"
}

// replayKey names the marker of a used one-time token. The id is hashed: it
// comes from outside and may be long or hold any byte.
func replayKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "broker:used:{" + base64.RawURLEncoding.EncodeToString(sum[:]) + "}"
}
