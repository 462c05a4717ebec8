package main

import (
	"context"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/mobile-token-broker/broker/internal/redistest"
)

// commandPaths returns the arguments naming every command of the tree.
func commandPaths() [][]string {
	var out [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		out = append(out, path)
		for _, s := range c.Commands() {
			walk(s, append(append([]string(nil), path...), s.Name()))
		}
	}
	root := newRootCommand(&app{getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard})
	root.InitDefaultHelpCmd()
	walk(root, nil)
	return out
}

// --help and -h of every command print its help and run nothing: the
// store, configured and reachable, sees no connection at all, and each
// returns at once (serve and dev would block).
func TestHelpRunsNothing(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	ctx := context.Background()
	connections := func() string {
		t.Helper()
		info, err := rdb.Info(ctx, "stats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(l, "total_connections_received:"); ok {
				return v
			}
		}
		t.Fatal("INFO stats has no total_connections_received")
		return ""
	}
	env := validEnv()
	env["BROKER_REDIS_URL"] = rs.URL()
	env["BROKER_LISTEN"] = "127.0.0.1:0"
	env["BROKER_ADMIN_LISTEN"] = "127.0.0.1:0"
	env["BROKER_ADMIN_TOKEN"] = fakeAdminToken
	getenv := func(k string) string { return env[k] }
	before, keys := connections(), rdb.DBSize(ctx).Val()

	paths := commandPaths()
	for _, want := range []string{"serve", "migrate", "rekey", "version", "sessions list", "sessions show", "sessions revoke", "audit", "dev", "dev login"} {
		found := false
		for _, p := range paths {
			found = found || strings.Join(p, " ") == want
		}
		if !found {
			t.Errorf("the command tree has no %q", want)
		}
	}
	for _, path := range paths {
		for _, flag := range []string{"--help", "-h"} {
			args := append(append([]string(nil), path...), flag)
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			stdout, stderr, err := runCLIContext(cctx, getenv, args...)
			cancel()
			if err != nil {
				t.Errorf("broker %s = %v", strings.Join(args, " "), err)
			}
			if want := "Usage:\n  broker"; !strings.Contains(stdout, want) {
				t.Errorf("broker %s printed %q, want a usage text", strings.Join(args, " "), stdout)
			}
			if strings.Contains(stdout+stderr, fakeAdminToken) || strings.Contains(stdout+stderr, env["BROKER_ENCRYPTION_KEYS"]) {
				t.Errorf("broker %s printed a secret of the environment", strings.Join(args, " "))
			}
		}
	}
	if after := connections(); after != before {
		t.Errorf("--help opened %s connections to the store, want none (total %s before, %s after)", after, before, after)
	}
	if n := rdb.DBSize(ctx).Val(); n != keys {
		t.Errorf("--help changed the store: %d keys before, %d after", keys, n)
	}
}

func runCLIContext(ctx context.Context, getenv func(string) string, args ...string) (stdout, stderr string, err error) {
	var out, errOut syncBuffer
	err = run(ctx, args, getenv, &out, &errOut)
	return out.String(), errOut.String(), err
}

// The top-level help lists every command, by group.
func TestTopLevelHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"help"}, {"-h"}} {
		stdout, _, err := runCLI(t, getenvOf(), args...)
		if err != nil {
			t.Fatalf("broker %s = %v", args, err)
		}
		for _, want := range []string{"Service commands", "Operator commands", "Development:", "  serve ", "  migrate ", "  rekey ", "  version ", "  sessions ", "  audit ", "  dev "} {
			if !strings.Contains(stdout, want) {
				t.Errorf("broker %s printed\n%s\nwant %q in it", args, stdout, want)
			}
		}
	}
	// Without a command, or with an unknown one: a usage error (exit 2)
	// that points at the help, with a suggestion when one is near.
	_, _, err := runCLI(t, getenvOf())
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "see 'broker --help'") {
		t.Errorf("broker = %v, want a usage error pointing at --help", err)
	}
	_, _, err = runCLI(t, getenvOf(), "serv")
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), `did you mean "serve"?`) {
		t.Errorf("broker serv = %v, want a usage error suggesting serve", err)
	}
	_, _, err = runCLI(t, getenvOf(), "serve", "--listn", ":1")
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "unknown flag: --listn") {
		t.Errorf("broker serve --listn = %v, want a usage error naming the flag", err)
	}
}

// A flag overrides the variable it mirrors; the environment is the default.
func TestFlagsOverrideEnvironment(t *testing.T) {
	var ef envFlags
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	ef.add(cmd.Flags(), "BROKER_LISTEN", "BROKER_SESSION_IDLE_TIMEOUT")
	cmd.SetArgs([]string{"--session-idle-timeout", "1h"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	getenv := ef.getenv(getenvOf("BROKER_LISTEN", ":9000", "BROKER_SESSION_IDLE_TIMEOUT", "5h"))
	if got := getenv("BROKER_SESSION_IDLE_TIMEOUT"); got != "1h" {
		t.Errorf("BROKER_SESSION_IDLE_TIMEOUT = %q, want the flag's 1h", got)
	}
	if got := getenv("BROKER_LISTEN"); got != ":9000" {
		t.Errorf("BROKER_LISTEN = %q, want the environment's :9000", got)
	}
	// serve has a flag for every non-secret BROKER_ setting, and none for
	// the secrets.
	flags := serveCommand(&app{}).Flags()
	for _, name := range envNames() {
		f := flags.Lookup(flagName(name))
		switch {
		case !strings.HasPrefix(name, "BROKER_"):
		case name == "BROKER_REDIS_URL" && f == nil:
			t.Errorf("serve has no --redis-url")
		case name != "BROKER_REDIS_URL" && strings.Contains(strings.Join(secretVariables, " "), name) && f != nil:
			t.Errorf("serve has a flag --%s for the secret %s", flagName(name), name)
		case !strings.Contains(strings.Join(secretVariables, " "), name) && f == nil:
			t.Errorf("serve has no flag for %s", name)
		}
	}
}

// broker version and broker --version print the module version, the VCS
// revision and its date, from the build information.
func TestVersion(t *testing.T) {
	out, _, err := runCLI(t, getenvOf(), "version")
	if err != nil {
		t.Fatal(err)
	}
	alt, _, err := runCLI(t, getenvOf(), "--version")
	if err != nil || alt != out {
		t.Errorf("broker --version = %q, %v; want the same as broker version, %q", alt, err, out)
	}
	for _, want := range []string{"broker ", "\n  module:   ", "\n  revision: ", "\n  date:     ", "\n  go:       " + runtime.Version() + "\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("broker version printed\n%s\nwant %q in it", out, want)
		}
	}

	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/mobile-token-broker/broker", Version: "v1.4.0"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "3e21da6c0ffee"},
			{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	want := "broker v1.4.0\n" +
		"  module:   github.com/mobile-token-broker/broker\n" +
		"  revision: 3e21da6c0ffee (with local modifications)\n" +
		"  date:     2026-01-02T03:04:05Z\n" +
		"  go:       go1.26.8\n"
	if got := versionOf(bi, linked{}).String(); got != want {
		t.Errorf("version of a stamped build =\n%s\nwant\n%s", got, want)
	}
	bi.Settings = nil
	if got := versionOf(bi, linked{}).String(); !strings.Contains(got, "revision: unknown (built without VCS information)\n") || !strings.Contains(got, "date:     unknown\n") {
		t.Errorf("version of a build without VCS information =\n%s", got)
	}
}

// The values set with -ldflags -X win over the build information's, as in
// the image, built without .git.
func TestVersionPrefersLinkedValues(t *testing.T) {
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/mobile-token-broker/broker", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "3e21da6c0ffee"},
			{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	unstamped := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/mobile-token-broker/broker", Version: "(devel)"}}
	release := linked{version: "0.1.0", revision: "a1b2c3d4", date: "2026-03-01T12:00:00Z"}
	tests := []struct {
		name string
		bi   *debug.BuildInfo
		l    linked
		want buildVersion
	}{
		{"image: linked values only", unstamped, release,
			buildVersion{Module: "github.com/mobile-token-broker/broker", Version: "0.1.0", Revision: "a1b2c3d4", Date: "2026-03-01T12:00:00Z", Go: "go1.26.8"}},
		{"linked values over VCS stamping", stamped, release,
			buildVersion{Module: "github.com/mobile-token-broker/broker", Version: "0.1.0", Revision: "a1b2c3d4", Date: "2026-03-01T12:00:00Z", Go: "go1.26.8"}},
		{"linked revision equal to the stamped one keeps its local changes", stamped, linked{revision: "3e21da6c0ffee"},
			buildVersion{Module: "github.com/mobile-token-broker/broker", Version: "(devel)", Revision: "3e21da6c0ffee", Date: "2026-01-02T03:04:05Z", Go: "go1.26.8", Modified: true}},
		{"empty linked values leave the build information", stamped, linked{},
			buildVersion{Module: "github.com/mobile-token-broker/broker", Version: "(devel)", Revision: "3e21da6c0ffee", Date: "2026-01-02T03:04:05Z", Go: "go1.26.8", Modified: true}},
		{"only a version", unstamped, linked{version: "dev"},
			buildVersion{Module: "github.com/mobile-token-broker/broker", Version: "dev", Go: "go1.26.8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := versionOf(tt.bi, tt.l); got != tt.want {
				t.Errorf("versionOf = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// The variable names the Dockerfile's -ldflags set are those version.go
// reads: the linker ignores -X of a name that does not exist.
func TestVersionLinkerFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the broker")
	}
	bin := filepath.Join(t.TempDir(), "broker")
	ldflags := "-X main.version=9.8.7 -X main.revision=0123456789abcdef -X main.buildDate=2026-03-01T12:00:00Z"
	if out, err := exec.Command("go", "build", "-tags", "nodev", "-buildvcs=false", "-ldflags", ldflags, "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -ldflags %q: %v\n%s", ldflags, err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("broker version: %v\n%s", err, out)
	}
	for _, want := range []string{"broker 9.8.7\n", "  revision: 0123456789abcdef\n", "  date:     2026-03-01T12:00:00Z\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("broker version of a build with -ldflags %q printed\n%s\nwant %q in it", ldflags, out, want)
		}
	}
}

// A build with -tags nodev holds neither the development OpenID Provider nor
// the embedded store; the default build keeps `broker dev`.
func TestNodevBuild(t *testing.T) {
	deps := func(tags ...string) string {
		t.Helper()
		args := append([]string{"list", "-deps"}, tags...)
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	const devidp, miniredis = "github.com/mobile-token-broker/broker/internal/devidp\n", "github.com/alicebob/miniredis/v2\n"
	if out := deps("-tags", "nodev"); strings.Contains(out, devidp) || strings.Contains(out, miniredis) {
		t.Errorf("go list -deps -tags nodev ./cmd/broker holds internal/devidp or miniredis")
	}
	if out := deps(); !strings.Contains(out, devidp) || !strings.Contains(out, miniredis) {
		t.Errorf("go list -deps ./cmd/broker lacks internal/devidp or miniredis: the check above would be vacuous")
	}
}
