//go:build nodev

package main

import "github.com/spf13/cobra"

// A binary built with -tags nodev has no development stack: no `broker dev`,
// no development OpenID Provider, no embedded store.
func addDevCommand(*cobra.Command, *app) {}
