//go:build unix

package main

import (
	"log/slog"
	"syscall"
)

// warnFileLimit warns when the process may open fewer files than need, the
// connections the listeners' caps allow and what the broker holds besides:
// the caps would then not keep the process from running out of
// descriptors, and the admin listener's probes with it.
func warnFileLimit(log *slog.Logger, need int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	// Unlimited reads as the largest value (or -1 where the field is
	// signed, which converts to it).
	if cur := uint64(lim.Cur); cur < uint64(need) {
		log.Warn("the open-file limit is below what the connection caps allow: raise it (ulimit -n, or the container's nofile limit) or lower BROKER_MAX_CONNECTIONS",
			"open_file_limit", cur, "needed", need)
	}
}
