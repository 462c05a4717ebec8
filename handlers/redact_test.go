package handlers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

const (
	handleID     = "AAECAwQFBgcICQoLDA0ODw"                      // 22 base64url characters
	handleSecret = "EBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8" // 43
	handleShaped = handleID + "." + handleSecret
)

func TestRedactHandles(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"nothing", "/admin/v1/sessions/" + handleID, "/admin/v1/sessions/" + handleID},
		{"handle as a session id", "/admin/v1/sessions/" + handleShaped, "/admin/v1/sessions/" + handleID + ".[redacted]"},
		{"handle with a tail", "/api/" + handleShaped + "/x", "/api/" + handleID + ".[redacted]/x"},
		{"handle with more characters", "x" + handleShaped + "-_zz", "x" + handleID + ".[redacted]"},
		{"two handles", handleShaped + " " + handleShaped, handleID + ".[redacted] " + handleID + ".[redacted]"},
		{"a secret after any dot", "sub=a." + handleSecret, "sub=a.[redacted]"},
		{"a JWT", "eyJhbGciOiJSUzI1NiJ9." + handleSecret + handleSecret + "." + handleSecret, "eyJhbGciOiJSUzI1NiJ9.[redacted].[redacted]"},
		{"one character short", handleID + "." + handleSecret[1:], handleID + "." + handleSecret[1:]},
		{"dots only", strings.Repeat(".", 100), strings.Repeat(".", 100)},
		{"file names", "/api/files/report.final-version.pdf", "/api/files/report.final-version.pdf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := redactHandles(tt.in); got != tt.want {
				t.Errorf("redactHandles(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

type testError struct{ s string }

func (e testError) Error() string { return e.s }

// Whoever logs a handle, and however, the log line keeps the session id and
// loses the secret.
func TestLogHandlerRedactsHandles(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewLogHandler(slog.NewJSONHandler(&buf, nil)))
	ctx := ContextWithRequestID(context.Background(), handleShaped)
	log.InfoContext(ctx, "user sessions ended", "sub", handleShaped)
	log.With("sub", handleShaped).Info("with")
	log.Warn("message " + handleShaped)
	log.Error("error", "error", fmt.Errorf("lookup %s: %w", handleShaped, errors.New("not found")))
	log.Error("typed error", "error", testError{"bad " + handleShaped})
	log.Info("group", slog.Group("g", "sub", handleShaped, "n", 1))
	log.Info("clean", "session_id", handleID)
	out := buf.String()
	if strings.Contains(out, handleSecret) {
		t.Errorf("log lines hold a handle's secret:\n%s", out)
	}
	if got := strings.Count(out, handleID+".[redacted]"); got != 7 {
		t.Errorf("%d redacted handles logged, want 7:\n%s", got, out)
	}
	if !strings.Contains(out, `"session_id":"`+handleID+`"`) {
		t.Errorf("the clean line lost its session id:\n%s", out)
	}
}
