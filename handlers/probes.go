package handlers

import (
	"context"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// healthz: the process is alive.
func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// readyz: Redis answers and the IdP's discovery document is loaded. An IdP
// outage after start does not make the broker unready, since sessions with
// valid tokens keep working. Each check that fails says what is missing.
func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	checks := map[string]string{"store": "ok", "idp_discovery": "ok"}
	ready := true
	if err := s.cfg.Ping(ctx); err != nil {
		checks["store"], ready = "unavailable", false
	}
	if !s.cfg.Service.Ready() {
		checks["idp_discovery"], ready = "not loaded: "+s.cfg.Service.DiscoveryProblem(), false
	}
	code := http.StatusOK
	if !ready {
		code = http.StatusServiceUnavailable
	}
	return c.JSON(code, map[string]any{"ready": ready, "checks": checks})
}
