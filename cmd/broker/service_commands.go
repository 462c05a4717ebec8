package main

import (
	"github.com/spf13/cobra"
)

// The service commands: they read the store's configuration from the
// environment (and the flags that mirror it).

func serveCommand(a *app) *cobra.Command {
	var ef envFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the service",
		Long: `Run the service: the public listener (apps) and the admin listener (probes,
metrics, the admin API). Every setting comes from the environment; each flag
below overrides the variable it names. The secrets (BROKER_OIDC_CLIENT_SECRET,
BROKER_ENCRYPTION_KEYS, BROKER_ADMIN_TOKENS) have no flag: set them, or their
*_FILE variables, in the environment.

The listeners come up at once; /readyz answers 503 until the store and the
identity provider's discovery document are there, and the broker keeps
retrying both until they are.`,
		GroupID: groupService,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return serve(c.Context(), ef.getenv(a.getenv), a.stdout, a.stderr, nil)
		},
	}
	ef.add(cmd.Flags(), serveFlagVariables()...)
	return cmd
}

func migrateCommand(a *app) *cobra.Command {
	var ef envFlags
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the pending migrations of the session store",
		Long: `Apply the pending migrations of the session store and record the schema
version. Needs BROKER_REDIS_URL, and BROKER_ENCRYPTION_KEYS when a pending
step converts sealed session records.`,
		GroupID: groupService,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return migrate(c.Context(), ef.getenv(a.getenv), a.stdout, a.stderr)
		},
	}
	ef.add(cmd.Flags(), "BROKER_REDIS_URL")
	return cmd
}

func rekeyCommand(a *app) *cobra.Command {
	var ef envFlags
	var removeUnreadable bool
	cmd := &cobra.Command{
		Use:   "rekey",
		Short: "Reseal every session under the first encryption key",
		Long: `Reseal every stored session under the first key of BROKER_ENCRYPTION_KEYS, so
that the keys after it can be removed without ending anyone's session. Needs
BROKER_REDIS_URL and BROKER_ENCRYPTION_KEYS; runs beside serving brokers.`,
		GroupID: groupService,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return rekey(c.Context(), removeUnreadable, ef.getenv(a.getenv), a.stdout, a.stderr)
		},
	}
	cmd.Flags().BoolVar(&removeUnreadable, "remove-unreadable", false,
		"end the sessions that cannot be read with BROKER_ENCRYPTION_KEYS (sealed under a key missing from it, or damaged); use the keys the brokers serve with")
	ef.add(cmd.Flags(), "BROKER_REDIS_URL")
	return cmd
}
