package main

import (
	"cmp"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/agnivade/levenshtein"

	"github.com/mobile-token-broker/broker/handlers"
)

// secretVariables are the settings that may hold a secret. Each may instead
// be read from the file that its *_FILE variable names, as container
// secrets are mounted; setting both is a configuration error.
var secretVariables = []string{
	"BROKER_OIDC_CLIENT_SECRET",
	"BROKER_ENCRYPTION_KEYS",
	"BROKER_ADMIN_TOKENS",
	"BROKER_REDIS_URL", // may hold a password
	"BROKER_ADMIN_TOKEN",
}

// maxSecretFile bounds what is read of a *_FILE secret.
const maxSecretFile = 64 << 10

// cliVariables are the variables of the operator commands, besides those
// of the configuration.
var cliVariables = []string{"BROKER_ADMIN_URL", "BROKER_ADMIN_TOKEN"}

// resolveEnv returns getenv with each secret setting of names (by default
// those of the service's configuration) whose *_FILE variable is set read
// from that file, surrounding whitespace (a trailing newline) trimmed. Every
// problem is reported at once, naming the variables; a file's content never
// appears in a message.
func resolveEnv(getenv func(string) string, names ...string) (func(string) string, error) {
	if len(names) == 0 {
		names = slices.DeleteFunc(slices.Clone(secretVariables), func(n string) bool { return slices.Contains(cliVariables, n) })
	}
	values := map[string]string{}
	var problems []string
	for _, name := range names {
		path := getenv(name + "_FILE")
		if path == "" {
			continue
		}
		if getenv(name) != "" {
			problems = append(problems, fmt.Sprintf("%s and %s_FILE are both set: set only one", name, name))
			continue
		}
		v, err := readSecretFile(path)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s_FILE: %v", name, err))
			continue
		}
		values[name] = v
	}
	if len(problems) > 0 {
		return nil, &configError{problems: problems}
	}
	if len(values) == 0 {
		return getenv, nil
	}
	return func(k string) string {
		if v, ok := values[k]; ok {
			return v
		}
		return getenv(k)
	}, nil
}

// readSecretFile reads one secret. Its errors name the path, never the
// content.
func readSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxSecretFile {
		return "", fmt.Errorf("%s is larger than %d KiB", path, maxSecretFile>>10)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return v, nil
}

// knownVariables lists every BROKER_ variable the program reads.
func knownVariables() []string {
	known := slices.Clone(envNames())
	known = append(known, cliVariables...)
	for _, s := range secretVariables {
		known = append(known, s+"_FILE")
	}
	return known
}

// unknownVariables returns a warning for each BROKER_ variable of the
// process environment that the broker does not read, with the known one it
// is closest to. Only the variables getenv also sees count, so that run
// with another environment than the process's (the tests') sees none of
// the process's. The test suite's own BROKER_TEST_ variables are not the
// broker's and are left alone.
func unknownVariables(getenv func(string) string) []string {
	known := knownVariables()
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "BROKER_") || strings.HasPrefix(name, "BROKER_TEST_") || slices.Contains(known, name) || getenv(name) == "" {
			continue
		}
		msg := name + " is not a setting of the broker and is ignored"
		if s := closest(name, known); s != "" {
			msg += "; did you mean " + s + "?"
		}
		out = append(out, msg)
	}
	slices.Sort(out)
	return out
}

// closest returns the name of names nearest to name in edit distance, if it
// is near enough to be a misspelling of it: at most a third of its length.
func closest(name string, names []string) string {
	best, bestDist := "", len(name)/3+1
	for _, n := range names {
		if d := levenshtein.ComputeDistance(name, n); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

// maxPlausibleSkew is how long a refresh skew may be before it reaches the
// life of common access tokens (several IdPs issue 5-minute ones): a token
// that lives no longer than the skew is refreshed at every use.
const maxPlausibleSkew = 5 * time.Minute

// inconsistentSettings returns a warning for each combination of settings
// that is valid alone but does not do what it seems to. Only durations and
// counts are named, never a value that may be a secret.
func inconsistentSettings(cfg *config) []string {
	var out []string
	idle, life := time.Duration(cfg.IdleTimeout), time.Duration(cfg.MaxLifetime)
	if idle > life {
		out = append(out, fmt.Sprintf("BROKER_SESSION_IDLE_TIMEOUT (%s) is longer than BROKER_SESSION_MAX_LIFETIME (%s): every session ends at its lifetime before it can idle out", idle, life))
	}
	if skew := time.Duration(cfg.RefreshSkew); skew >= maxPlausibleSkew {
		out = append(out, fmt.Sprintf("BROKER_REFRESH_SKEW (%s) is as long as many access tokens live: a token that lives no longer than it is refreshed at every use", skew))
	}
	if cfg.WebSocketRoutes == "" {
		for _, d := range []struct {
			name string
			v    duration
		}{
			{"BROKER_WEBSOCKET_MAX_LIFETIME", cfg.WebSocketMaxLifetime},
			{"BROKER_WEBSOCKET_CHECK_INTERVAL", cfg.WebSocketCheckInterval},
		} {
			if d.v != 0 {
				out = append(out, d.name+" is set but BROKER_WEBSOCKET_ROUTES is not: no route tunnels, and the setting has no effect")
			}
		}
	} else {
		lifetime := cmp.Or(time.Duration(cfg.WebSocketMaxLifetime), handlers.DefaultTunnelMaxLifetime)
		interval := cmp.Or(time.Duration(cfg.WebSocketCheckInterval), handlers.DefaultTunnelCheckInterval)
		if interval >= lifetime {
			out = append(out, fmt.Sprintf("BROKER_WEBSOCKET_CHECK_INTERVAL (%s) is not shorter than BROKER_WEBSOCKET_MAX_LIFETIME (%s): a tunnel closes before it re-checks its session", interval, lifetime))
		}
	}
	maxConns := cmp.Or(int(cfg.MaxConnections), handlers.DefaultMaxConnections)
	perClient := cmp.Or(int(cfg.MaxConnectionsPerClient), handlers.DefaultMaxConnectionsPerClient)
	if perClient > maxConns {
		out = append(out, fmt.Sprintf("BROKER_MAX_CONNECTIONS_PER_CLIENT (%d) is above BROKER_MAX_CONNECTIONS (%d): one client may take every connection", perClient, maxConns))
	}
	return out
}

// warnUnknownVariables prints a warning line for each unknown variable, for
// the one-shot commands (migrate, rekey) that print text rather than a log.
func warnUnknownVariables(w io.Writer, getenv func(string) string) {
	for _, msg := range unknownVariables(getenv) {
		fmt.Fprintln(w, "warning: "+msg)
	}
}

// warnSettings logs the unknown variables and the inconsistent settings.
func warnSettings(log *slog.Logger, cfg *config, getenv func(string) string) {
	for _, w := range unknownVariables(getenv) {
		log.Warn(w)
	}
	for _, w := range inconsistentSettings(cfg) {
		log.Warn(w)
	}
}
