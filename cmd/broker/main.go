// Command broker is the token broker for mobile apps: it redeems the app's
// authorization code, keeps the tokens server-side and proxies API calls with
// an opaque session handle. `broker --help` lists its commands; commands.go
// builds the command tree.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"
)

func main() {
	// Libraries that log through the default logger log JSON too, and so
	// does go-redis, from the first connection on.
	slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	redis.SetLogger(redisLogger{slog.Default()})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		var ce *configError
		if !errors.As(err, &ce) {
			err = fmt.Errorf("broker: %w", err)
		}
		fmt.Fprintln(os.Stderr, err)
		if errors.Is(err, errUsage) || ce != nil {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// errUsage is what every mistake on the command line matches (see
// usageError); main exits 2 on it.
var errUsage = errors.New("usage error (see 'broker --help')")

// run runs the command args name. It returns instead of exiting so that
// tests can drive the whole program.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	root := newRootCommand(&app{getenv: getenv, stdout: stdout, stderr: stderr})
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

// redisLogger routes go-redis's own messages (reconnects, pool problems) to
// a JSON log.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}
