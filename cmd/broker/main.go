// Command broker is the token broker for mobile apps: it redeems the app's
// authorization code, keeps the tokens server-side and proxies API calls with
// an opaque session handle.
//
//	broker serve       run the service (configuration from the environment)
//	broker migrate     apply pending migrations of the session store
//	broker rekey       reseal every session under the first encryption key
//	                   (--remove-unreadable: end those that cannot be read)
//	broker dev         run a self-contained development stack
//	broker dev login   play the mobile app against `broker dev`
//	                   (--dpop: bind the session to a new device key)
//	broker dev proof   sign a DPoP proof with that key
//	broker sessions    list, show and revoke sessions through the admin API
//	broker audit       show the newest audit events through the admin API
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
)

func main() {
	// Libraries that log through the default logger log JSON too.
	slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, nil)))
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

var errUsage = errors.New("usage: broker serve | broker migrate | broker rekey [--remove-unreadable] | broker dev [login|proof] | broker sessions list|show|revoke | broker audit")

// run dispatches a subcommand. It returns instead of exiting so that tests
// can drive the whole program.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	switch args[0] {
	case "serve":
		return serve(ctx, getenv, stdout, stderr, nil)
	case "migrate":
		return migrate(ctx, getenv, stdout)
	case "rekey":
		return rekey(ctx, args[1:], getenv, stdout)
	case "dev":
		return devCommand(ctx, args[1:], getenv, stdout, stderr)
	case "sessions":
		return sessionsCommand(ctx, args[1:], getenv, stdout, stderr)
	case "audit":
		return auditCommand(ctx, args[1:], getenv, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, errUsage.Error())
		return nil
	}
	return fmt.Errorf("unknown command %q: %w", args[0], errUsage)
}
