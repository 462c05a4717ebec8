package handlers

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/mobile-token-broker/broker/api"
)

// specPath is where both listeners serve the OpenAPI description. It is
// reserved: no route prefix may take it.
const specPath = "/openapi.yaml"

// openAPI serves the OpenAPI 3 description of both listeners. It needs no
// credentials: it describes the interface only, which app developers need
// before they hold a handle, and holds nothing of the configuration (no
// route, upstream, issuer or secret).
func openAPI(c echo.Context) error {
	// application/yaml is the media type of RFC 9512.
	return c.Blob(http.StatusOK, "application/yaml", api.OpenAPI)
}
