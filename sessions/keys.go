package sessions

import (
	"crypto/sha256"
	"encoding/base64"
)

// Key layout. Every key that one atomic operation touches shares a hash tag
// ({...}), so that the layout works unchanged on Redis Cluster: a session and
// its refresh lease live in the session id's slot; each index has a slot of
// its own and is only ever changed on its own. Subjects and sids are
// base64url-encoded inside their tags so that a '}' in them cannot end the tag.
const (
	keyPrefix = "broker:"
	auditKey  = keyPrefix + "audit"
)

func sessionKey(id string) string { return keyPrefix + "session:{" + id + "}" }

func lockKey(id string) string { return keyPrefix + "session:{" + id + "}:lock" }

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
