package broker

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

func TestHandles(t *testing.T) {
	id, handle, hash, err := newHandle()
	if err != nil {
		t.Fatal(err)
	}
	gotID, gotHash, ok := parseHandle(handle)
	if !ok || gotID != id || string(gotHash) != string(hash) {
		t.Fatalf("parseHandle(newHandle()) = %q, %x, %v; want %q, %x, true", gotID, gotHash, ok, id, hash)
	}
	if !ValidSessionID(id) {
		t.Errorf("ValidSessionID(%q) = false", id)
	}
	_, secret, _ := strings.Cut(handle, ".")
	if len(secret) < 43 {
		t.Errorf("secret has %d base64url characters, want at least 43 (256 bits)", len(secret))
	}
	_, other, _, _ := newHandle()
	if other == handle {
		t.Error("two handles are equal")
	}

	bad := map[string]string{
		"empty":              "",
		"no dot":             id + secret,
		"id only":            id,
		"id with dot":        id + ".",
		"short secret":       id + "." + secret[:42],
		"long secret":        id + "." + secret + "A",
		"short id":           id[:21] + "." + secret,
		"two dots":           id + "." + secret[:20] + "." + secret[21:],
		"non-base64 secret":  id + "." + strings.Repeat("!", 43),
		"non-base64 id":      strings.Repeat("*", 22) + "." + secret,
		"padded":             id + "." + secret + "=",
		"session id alone":   id,
		"whitespace padding": " " + handle,
	}
	for name, h := range bad {
		if _, _, ok := parseHandle(h); ok {
			t.Errorf("parseHandle(%s) = ok, want rejected", name)
		}
	}
	sess := &Session{SecretHash: hash}
	_, wrong, _ := parseHandle(id + "." + strings.Repeat("A", 43))
	if sess.matches(wrong) {
		t.Error("matches accepts another secret")
	}
	if !sess.matches(hash) {
		t.Error("matches rejects the right secret")
	}
}

// Ids and handles are accepted in one spelling only: Go's base64 decoder
// skips CR and LF and ignores the unused bits of the last character, so
// each of these decodes to bytes of a valid id or secret.
func TestCanonicalIDs(t *testing.T) {
	id, handle, _, err := newHandle()
	if err != nil {
		t.Fatal(err)
	}
	_, secret, _ := strings.Cut(handle, ".")
	ids := []struct {
		name, id string
	}{
		{"CR LF inside", id[:10] + "\r\n" + id[10:20]},
		{"CR LF at the end", id[:20] + "\r\n"},
		{"LF only", id[:18] + "\n\n\n\n"},
		{"CR at the start", "\r\r\r\r" + id[:18]},
		{"non-zero padding bits", withPaddingBits(id)},
		{"standard alphabet", id[:21] + "+"},
		{"padding character", id[:20] + "=="},
		{"space", id[:21] + " "},
		{"NUL", id[:21] + "\x00"},
		{"non-ASCII", id[:19] + "\u00e9A"},
	}
	for _, tt := range ids {
		t.Run("id "+tt.name, func(t *testing.T) {
			if ValidSessionID(tt.id) {
				t.Errorf("ValidSessionID(%q) = true, want false", tt.id)
			}
			if _, _, ok := parseHandle(tt.id + "." + secret); ok {
				t.Errorf("parseHandle(%q + secret) = ok, want rejected", tt.id)
			}
		})
	}
	secrets := []struct {
		name, secret string
	}{
		{"CR LF inside", secret[:20] + "\r\n\r" + secret[20:40]},
		{"CR LF CR at the end", secret[:40] + "\r\n\r"},
		{"non-zero padding bits", withPaddingBits(secret)},
		{"standard alphabet", secret[:42] + "/"},
	}
	for _, tt := range secrets {
		t.Run("secret "+tt.name, func(t *testing.T) {
			if _, _, ok := parseHandle(id + "." + tt.secret); ok {
				t.Errorf("parseHandle(id + %q) = ok, want rejected", tt.secret)
			}
		})
	}
	if !ValidSessionID(id) {
		t.Errorf("ValidSessionID(%q) = false for a new id", id)
	}
}

// withPaddingBits sets the lowest unused bit of the last character of a
// canonical unpadded base64url string whose length is not a multiple of 4,
// so that it decodes to the same bytes in another spelling.
func withPaddingBits(s string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, s[len(s)-1])
	return s[:len(s)-1] + string(alphabet[last^1])
}

func TestSessionExpiry(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		lastUsed time.Duration // after creation
		want     time.Duration // ExpiresAt after creation
	}{
		{"idle end first", 0, time.Hour},
		{"used later, idle end moves", 90 * time.Minute, 150 * time.Minute},
		{"absolute end caps the idle end", 170 * time.Minute, 3 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Session{CreatedAt: t0, LastUsedAt: t0.Add(tt.lastUsed), AbsoluteExpiry: t0.Add(3 * time.Hour), IdleTimeout: time.Hour}
			if got := s.ExpiresAt(); !got.Equal(t0.Add(tt.want)) {
				t.Errorf("ExpiresAt() = %v, want %v", got, t0.Add(tt.want))
			}
			if s.Ended(t0.Add(tt.want).Add(-time.Nanosecond)) {
				t.Error("Ended just before ExpiresAt")
			}
			if !s.Ended(t0.Add(tt.want)) {
				t.Error("not Ended at ExpiresAt")
			}
		})
	}
}

func TestErrors(t *testing.T) {
	wrapped := fmt.Errorf("get session: %w: %w", ErrStoreUnavailable, errors.New("dial tcp 127.0.0.1:6379: connection refused"))
	tests := []struct {
		name     string
		err      error
		wantCode Code
		wantMsg  string
	}{
		{"store sentinel wrapped", wrapped, CodeStoreUnavailable, "the session store is unavailable; nothing was lost, retry later"},
		{"coded with message", Errorf(CodeInvalidRequest, "code is required"), CodeInvalidRequest, "code is required"},
		{"internal detail hidden", errors.New("redis: secret detail"), CodeInternal, "internal error"},
		{"invalid token", fmt.Errorf("x: %w", ErrInvalidToken), CodeInvalidToken, "session is expired or revoked"},
		{"wrapped cause keeps message", wrap(CodeIdPUnavailable, errors.New("dial"), "the identity provider is unavailable"), CodeIdPUnavailable, "the identity provider is unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ErrorCode(tt.err); got != tt.wantCode {
				t.Errorf("ErrorCode = %q, want %q", got, tt.wantCode)
			}
			if got := ErrorMessage(tt.err); got != tt.wantMsg {
				t.Errorf("ErrorMessage = %q, want %q", got, tt.wantMsg)
			}
		})
	}
	if !errors.Is(wrapped, ErrStoreUnavailable) || errors.Is(wrapped, ErrNotFound) {
		t.Error("errors.Is does not compare by code")
	}
	if got := ErrStoreUnavailable.Error(); got != "store_unavailable" {
		t.Errorf("Error() of a bare sentinel = %q", got)
	}
}

func TestClassifyTokenError(t *testing.T) {
	retrieve := func(status int, code string) error {
		return &oauth2.RetrieveError{Response: &http.Response{StatusCode: status}, ErrorCode: code}
	}
	tests := []struct {
		name      string
		err       error
		rejected  bool
		oauthCode string
	}{
		{"invalid_grant", retrieve(400, "invalid_grant"), true, "invalid_grant"},
		{"invalid_request", retrieve(400, "invalid_request"), true, "invalid_request"},
		{"bare 400", retrieve(400, ""), true, ""},
		{"invalid_client is the broker's problem", retrieve(401, "invalid_client"), false, "invalid_client"},
		{"5xx", retrieve(503, ""), false, ""},
		{"5xx with a code", retrieve(500, "server_error"), false, "server_error"},
		{"429", retrieve(429, ""), false, ""},
		{"network", errors.New("dial tcp: connection refused"), false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := classifyTokenError(tt.err)
			if got.rejected != tt.rejected || got.oauthCode != tt.oauthCode {
				t.Errorf("classifyTokenError = %+v, want rejected=%v code=%q", got, tt.rejected, tt.oauthCode)
			}
		})
	}
}

func TestAuthStyle(t *testing.T) {
	tests := []struct {
		name    string
		secret  string
		methods []string
		want    oauth2.AuthStyle
	}{
		{"public client", "", []string{"client_secret_basic"}, oauth2.AuthStyleInParams},
		{"basic offered", "s", []string{"client_secret_post", "client_secret_basic"}, oauth2.AuthStyleInHeader},
		{"nothing listed: the OIDC default", "s", nil, oauth2.AuthStyleInHeader},
		{"only post", "s", []string{"client_secret_post", "private_key_jwt"}, oauth2.AuthStyleInParams},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Service{cfg: Config{ClientSecret: tt.secret}}
			if got := s.authStyle(tt.methods); got != tt.want {
				t.Errorf("authStyle(%v) = %v, want %v", tt.methods, got, tt.want)
			}
		})
	}
}

func TestVerifierSyntax(t *testing.T) {
	tests := map[string]bool{
		strings.Repeat("a", 43):            true,
		strings.Repeat("a", 128):           true,
		oauth2.GenerateVerifier():          true,
		"A-._~" + strings.Repeat("0", 38):  true,
		strings.Repeat("a", 42):            false,
		strings.Repeat("a", 129):           false,
		strings.Repeat("a", 42) + "+":      false,
		strings.Repeat("a", 42) + " ":      false,
		strings.Repeat("a", 42) + "\u00e9": false,
	}
	for v, want := range tests {
		if got := verifierPattern.MatchString(v); got != want {
			t.Errorf("verifier %q: match = %v, want %v", v, got, want)
		}
	}
}

func TestNewValidates(t *testing.T) {
	_, err := New(Config{})
	if err == nil {
		t.Fatal("New(Config{}) = nil error")
	}
	for _, want := range []string{"issuer", "client id", "redirect URI", "store"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New error %q does not mention %s", err, want)
		}
	}
}

func TestRefreshBackoffs(t *testing.T) {
	var b backoffs
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if b.active("s1", t0) {
		t.Fatal("active before any failure")
	}
	b.set("s1", t0.Add(refreshBackoff))
	if !b.active("s1", t0.Add(refreshBackoff-time.Nanosecond)) {
		t.Error("not active within the backoff")
	}
	if b.active("s1", t0.Add(refreshBackoff)) {
		t.Error("still active when the backoff ran out")
	}
	if b.active("s2", t0) {
		t.Error("another session backs off too")
	}
	b.clear("s1")
	if b.active("s1", t0) {
		t.Error("active after a successful refresh cleared it")
	}
	// Past the limit, entries that ran out make room.
	for i := range backoffLimit {
		b.set(fmt.Sprint("old", i), t0)
	}
	b.set("new", t0.Add(time.Hour))
	if n := len(b.until); n > backoffLimit/2 {
		t.Errorf("%d entries kept after pruning, want the expired ones dropped", n)
	}
	if !b.active("new", t0.Add(time.Minute)) {
		t.Error("the new entry was dropped")
	}
}

func TestFresh(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := &Service{cfg: Config{RefreshSkew: 10 * time.Second}}
	tests := []struct {
		name     string
		lifetime time.Duration // zero: no expiry
		age      time.Duration // since the tokens were received
		unknown  bool          // a record without IssuedAt
		want     bool
	}{
		{"no expiry", 0, time.Hour, false, true},
		{"more than the skew left", time.Hour, 50 * time.Minute, false, true},
		{"less than the skew left", time.Hour, time.Hour - 9*time.Second, false, false},
		{"short-lived, young", 4 * time.Second, 1900 * time.Millisecond, false, true},
		{"short-lived, half its lifetime old", 4 * time.Second, 2 * time.Second, false, false},
		{"very short-lived, younger than a second", 600 * time.Millisecond, 500 * time.Millisecond, false, true},
		{"very short-lived, expired", 600 * time.Millisecond, 700 * time.Millisecond, false, false},
		{"short-lived, issue time unknown", 4 * time.Second, time.Second, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := Tokens{IssuedAt: t0}
			if tt.lifetime > 0 {
				tok.Expiry = t0.Add(tt.lifetime)
			}
			if tt.unknown {
				tok.IssuedAt = time.Time{}
			}
			if got := s.fresh(tok, t0.Add(tt.age)); got != tt.want {
				t.Errorf("fresh(lifetime %v, age %v) = %v, want %v", tt.lifetime, tt.age, got, tt.want)
			}
		})
	}
}

// An operator who pastes a handle where a subject belongs (revoke-all by
// user) must not put its secret into the audit trail.
func TestAuditKeepsNoHandleSecret(t *testing.T) {
	id, handle, _, err := newHandle()
	if err != nil {
		t.Fatal(err)
	}
	if got := withoutSecret(handle); got != id+".[redacted]" {
		t.Errorf("withoutSecret(handle) = %q, want the session id only", got)
	}
	for _, sub := range []string{"auth0|123", "", id, "a.b"} {
		if got := withoutSecret(sub); got != sub {
			t.Errorf("withoutSecret(%q) = %q, want it unchanged", sub, got)
		}
	}
}

// truncate never leaves a partial UTF-8 sequence behind.
func TestTruncate(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"},   // é is 2 bytes: cut in its middle
		{"a€b", 3, "a"},  // € is 3 bytes
		{"a€b", 4, "a€"}, // exactly after it
		{"", 0, ""},
	}
	for _, tt := range tests {
		if got := truncate(tt.in, tt.n); got != tt.want || len(got) > tt.n {
			t.Errorf("truncate(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
