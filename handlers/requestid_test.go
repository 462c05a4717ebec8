package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestSaneRequestID(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want bool
	}{
		{"abc-123_X.y", true},
		{strings.Repeat("a", 128), true},
		{"", false},
		{strings.Repeat("a", 129), false},
		{"two words", false},
		{"line\nbreak", false},
		{`quote"`, false},
		{"caf\u00e9", false},
	} {
		if got := saneRequestID(tc.id); got != tc.want {
			t.Errorf("saneRequestID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

func TestLogHandlerAddsRequestID(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewLogHandler(slog.NewJSONHandler(&buf, nil))).With("component", "test")
	log.InfoContext(ContextWithRequestID(context.Background(), "rid-1"), "with id")
	log.InfoContext(context.Background(), "without id")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d log lines, want 2: %s", len(lines), buf.String())
	}
	for i, want := range []any{"rid-1", nil} {
		var m map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &m); err != nil {
			t.Fatal(err)
		}
		if m["request_id"] != want || m["component"] != "test" {
			t.Errorf("line %d = %s, want request_id %v and the logger's attributes", i, lines[i], want)
		}
	}
	// Wrapping twice must not add the attribute twice.
	if inner := NewLogHandler(slog.NewJSONHandler(&buf, nil)); NewLogHandler(inner) != inner {
		t.Error("NewLogHandler wrapped its own handler again")
	}
}

// A time.Duration would be written as integer nanoseconds: every duration
// a log line carries, in a group or on the logger too, is written as
// seconds.
func TestLogHandlerWritesDurationsInSeconds(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewLogHandler(slog.NewJSONHandler(&buf, nil))).With("grace", 30*time.Second)
	log.Info("durations", "expires_in", 1500*time.Millisecond, slog.Group("retry", "in", 2*time.Minute), "count", 3)
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	retry, _ := m["retry"].(map[string]any)
	if m["grace"] != 30.0 || m["expires_in"] != 1.5 || retry["in"] != 120.0 || m["count"] != 3.0 {
		t.Errorf("log line = %s, want grace 30, expires_in 1.5, retry.in 120 (seconds) and count 3", buf.String())
	}
}
