package broker_test

import (
	"log/slog"
	"os"
	"testing"
)

// TestMain quiets the example OP, which logs every request it serves through
// the process-wide slog default.
func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.DiscardHandler))
	os.Exit(m.Run())
}
