package main

import (
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// app is what every command runs with: the environment and the output.
type app struct {
	getenv         func(string) string
	stdout, stderr io.Writer
}

// Command groups of the top-level help.
const (
	groupService  = "service"
	groupOperator = "operator"
	groupDev      = "dev"
)

// newRootCommand builds the command tree. Building it runs nothing: each
// command acts in its RunE only, which --help never reaches.
func newRootCommand(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "broker",
		Short: "Token broker for mobile apps",
		Long: `The token broker redeems a mobile app's authorization code, keeps the tokens
server-side (encrypted in Redis) and proxies API calls made with an opaque
session handle, injecting a fresh access token.

Configuration comes from the environment (BROKER_*; a secret setting may also
be read from the file named by its *_FILE variable); a command's flags
override the variables they mirror.`,
		Version:       readBuildVersion().String(),
		Args:          unknownCommand,
		RunE:          func(*cobra.Command, []string) error { return &usageError{msg: "want a command"} },
		SilenceErrors: true,
		SilenceUsage:  true,
		// Completion scripts are left out: the commands are few and their
		// flags are listed by --help.
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetVersionTemplate("{{.Version}}")
	root.SetFlagErrorFunc(flagError)
	root.AddGroup(
		&cobra.Group{ID: groupService, Title: "Service commands (need the store's configuration):"},
		&cobra.Group{ID: groupOperator, Title: "Operator commands (clients of a running broker's admin API):"},
		&cobra.Group{ID: groupDev, Title: "Development:"},
	)
	root.SetHelpCommandGroupID(groupService)
	root.AddCommand(serveCommand(a), migrateCommand(a), rekeyCommand(a), versionCommand(a),
		sessionsCommand(a), auditCommand(a))
	addDevCommand(root, a)
	return root
}

// usageError is a mistake on the command line. It matches errUsage, so main
// exits 2 on it, but says what was wrong and which help to read.
type usageError struct{ cmd, msg string }

func (e *usageError) Error() string {
	if e.cmd == "" {
		return fmt.Sprintf("%s (see 'broker --help')", e.msg)
	}
	return fmt.Sprintf("%s: %s (see 'broker %s --help')", e.cmd, e.msg, e.cmd)
}

func (e *usageError) Is(target error) bool { return target == errUsage }

// commandName is a command's path without the program's name, as usage
// errors name it.
func commandName(c *cobra.Command) string {
	_, name, _ := strings.Cut(c.CommandPath(), " ")
	return name
}

// flagError makes a flag the command does not know, or a value its flag
// cannot take, a usage error.
func flagError(c *cobra.Command, err error) error {
	return &usageError{commandName(c), err.Error()}
}

// noArgs is the Args of the commands that take flags only.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return &usageError{commandName(c), fmt.Sprintf("unexpected argument %q; every value goes after a flag", args[0])}
	}
	return nil
}

// unknownCommand is the top level's Args: any argument that is not a
// command is one misspelt.
func unknownCommand(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q", args[0])
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return &usageError{msg: msg}
}

// subcommands returns the Args and RunE of a command that only groups
// subcommands: it wants one of them.
func subcommands(c *cobra.Command) (cobra.PositionalArgs, func(*cobra.Command, []string) error) {
	want := func() string {
		var names []string
		for _, s := range c.Commands() {
			if s.IsAvailableCommand() {
				names = append(names, s.Name())
			}
		}
		return strings.Join(names, ", ")
	}
	args := func(c *cobra.Command, args []string) error {
		switch {
		case len(args) == 0:
			return &usageError{commandName(c), "want a subcommand: " + want()}
		case args[0] == "help":
			return nil
		}
		return &usageError{commandName(c), fmt.Sprintf("unknown subcommand %q; want one of %s", args[0], want())}
	}
	runE := func(c *cobra.Command, _ []string) error { return c.Help() }
	return args, runE
}

func versionCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the module version, VCS revision and date of this binary",
		GroupID: groupService,
		Args:    noArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := io.WriteString(a.stdout, readBuildVersion().String())
			return err
		},
	}
}

// envFlags are flags that mirror environment variables: a flag given on the
// command line overrides its variable; the environment stays the primary
// source.
type envFlags struct {
	fs    *pflag.FlagSet
	names map[string]string // flag name -> variable
}

// flagName is the flag of a variable: BROKER_SESSION_IDLE_TIMEOUT is
// --session-idle-timeout.
func flagName(variable string) string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(variable, "BROKER_"), "_", "-"))
}

// add registers a flag for each variable. Defaults are shown as the
// variables' defaults: the environment's values are never printed, since
// some are secrets.
func (f *envFlags) add(fs *pflag.FlagSet, variables ...string) {
	f.fs = fs
	if f.names == nil {
		f.names = map[string]string{}
	}
	defaults := envDefaults()
	for _, v := range variables {
		usage := "overrides $" + v
		if d := defaults[v]; d != "" {
			usage += " (default " + d + ")"
		}
		fs.String(flagName(v), "", usage)
		f.names[flagName(v)] = v
	}
}

// getenv returns getenv with the variables of the flags given on the command
// line replaced by the flags' values.
func (f *envFlags) getenv(getenv func(string) string) func(string) string {
	set := map[string]string{}
	if f.fs != nil {
		f.fs.Visit(func(fl *pflag.Flag) {
			if v, ok := f.names[fl.Name]; ok {
				set[v] = fl.Value.String()
			}
		})
	}
	if len(set) == 0 {
		return getenv
	}
	return func(k string) string {
		if v, ok := set[k]; ok {
			return v
		}
		return getenv(k)
	}
}

// envDefaults returns the default of each variable that has one.
func envDefaults() map[string]string {
	out := map[string]string{}
	t := reflect.TypeFor[config]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("env"), ",")
		if d, ok := t.Field(i).Tag.Lookup("envDefault"); ok {
			out[name] = d
		}
	}
	return out
}

// serveFlagVariables are the variables `broker serve` takes as flags: every
// BROKER_ setting but the secrets, which belong in the environment or in
// files (*_FILE) rather than in the process's arguments, visible to every
// user of the host. BROKER_REDIS_URL has a flag for a store without a
// password. The OpenTelemetry variables stay variables, as in every other
// program that reads them.
func serveFlagVariables() []string {
	var out []string
	for _, name := range envNames() {
		if strings.HasPrefix(name, "BROKER_") && (name == "BROKER_REDIS_URL" || !slices.Contains(secretVariables, name)) {
			out = append(out, name)
		}
	}
	return out
}
