package handlers

import (
	"log/slog"
	"strings"
)

// minSecretRun is the length of a handle's secret in base64url: 256 bits.
const minSecretRun = 43

// redactedSecret stands in a log line for what redactHandles removed.
const redactedSecret = "[redacted]"

// redactHandles returns s with the secret of every handle-shaped part taken
// out. A handle is "<session id>.<secret>", 22 and 43 base64url characters;
// any '.' followed by 43 or more base64url characters is taken for one, so
// that a handle pasted where something else was expected (a session id in an
// admin path, a subject) never reaches a log line in full. The '.' and what
// comes before it stay: the session id names a session without granting
// anything. JWTs lose their payload and signature the same way.
func redactHandles(s string) string {
	if !hasSecretRun(s) {
		return s
	}
	var b strings.Builder
	for {
		i, j := nextSecretRun(s)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		b.WriteString(redactedSecret)
		s = s[j:]
	}
}

// hasSecretRun reports whether s holds a '.' followed by a secret-long run.
func hasSecretRun(s string) bool {
	i, _ := nextSecretRun(s)
	return i >= 0
}

// nextSecretRun returns the bounds of the first run of at least
// minSecretRun base64url characters that follows a '.', or -1.
func nextSecretRun(s string) (start, end int) {
	for off := 0; ; {
		dot := strings.IndexByte(s[off:], '.')
		if dot < 0 || len(s)-(off+dot+1) < minSecretRun {
			return -1, -1
		}
		start = off + dot + 1
		end = start
		for end < len(s) && isBase64URL(s[end]) {
			end++
		}
		if end-start >= minSecretRun {
			return start, end
		}
		off = start
	}
}

func isBase64URL(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// redactRecord returns r with redactHandles applied to its message and
// every string it carries, and every duration written as seconds (a
// time.Duration would be written as integer nanoseconds), or r itself when
// there is nothing to change.
func redactRecord(r slog.Record) slog.Record {
	dirty := hasSecretRun(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		dirty = dirty || attrHasSecretRun(a)
		return !dirty
	})
	if !dirty {
		return r
	}
	out := slog.NewRecord(r.Time, r.Level, redactHandles(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redactAttr(a))
		return true
	})
	return out
}

// attrHasSecretRun reports whether redactAttr would change a.
func attrHasSecretRun(a slog.Attr) bool {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindDuration:
		return true
	case slog.KindString:
		return hasSecretRun(v.String())
	case slog.KindGroup:
		for _, g := range v.Group() {
			if attrHasSecretRun(g) {
				return true
			}
		}
	case slog.KindAny:
		if err, ok := v.Any().(error); ok && err != nil {
			return hasSecretRun(err.Error())
		}
	}
	return false
}

func redactAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindDuration:
		return slog.Float64(a.Key, v.Duration().Seconds())
	case slog.KindString:
		return slog.String(a.Key, redactHandles(v.String()))
	case slog.KindGroup:
		group := v.Group()
		attrs := make([]slog.Attr, len(group))
		for i, g := range group {
			attrs[i] = redactAttr(g)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(attrs...)}
	case slog.KindAny:
		// An error is logged as its text, which may quote what a client
		// sent.
		if err, ok := v.Any().(error); ok && err != nil && hasSecretRun(err.Error()) {
			return slog.String(a.Key, redactHandles(err.Error()))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}

func redactAttrs(attrs []slog.Attr) []slog.Attr {
	out := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		out[i] = redactAttr(a)
	}
	return out
}
