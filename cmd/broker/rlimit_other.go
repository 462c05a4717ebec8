//go:build !unix

package main

import "log/slog"

// warnFileLimit has no limit to read on this system.
func warnFileLimit(*slog.Logger, int) {}
