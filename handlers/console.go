package handlers

import (
	"github.com/labstack/echo/v4"

	"github.com/mobile-token-broker/broker/console"
)

// consoleAdmission admits the security console's sign-ins as requireAdmin
// admits admin calls: the same tokens, compared the same way, and refusals
// recorded as admin.denied within the same budget.
func (s *Server) consoleAdmission() console.Admission {
	return console.Admission{
		Authenticate: func(token string) (string, bool) { return adminActor(s.cfg.AdminTokens, token) },
		Refused: func(c echo.Context, why string) bool {
			if err := s.limit(c, "admin-denied", s.cfg.InvalidHandleRate); err != nil {
				return false
			}
			s.cfg.Service.AdminDenied(c.Request().Context(), why)
			return true
		},
	}
}

// mountConsole serves the console under /console/ on the admin listener.
func (s *Server) mountConsole(adm *echo.Echo) {
	if s.cfg.Console == nil {
		return
	}
	s.cfg.Console.Register(adm.Group(console.Prefix), s.consoleAdmission())
}
