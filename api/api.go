// Package api holds the OpenAPI 3 description of the broker's public and
// admin listeners, embedded so that the binary serves the very document its
// tests validate traffic against, and the Go types of the admin API's JSON,
// shared by the server and the operator commands.
package api

import _ "embed"

// OpenAPI is the OpenAPI 3 description in YAML.
//
//go:embed openapi.yaml
var OpenAPI []byte
