package handlers

import (
	"errors"
	"mime"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/mobile-token-broker/broker/broker"
)

// backchannelLogout receives the IdP's logout token
// (POST /v1/backchannel-logout, OpenID Connect Back-Channel Logout 1.0).
//
// Section 2.5: "The OP sends an HTTP POST request to the RP's back-channel
// logout URI [...] using the application/x-www-form-urlencoded format" with
// the token in the logout_token parameter. Section 2.8: "If the logout
// succeeded, the RP MUST respond with HTTP 200 OK. [...] If the request
// failed, the RP MUST respond with HTTP 400 Bad Request", and the response
// SHOULD carry "Cache-Control: no-store".
func (s *Server) backchannelLogout(c echo.Context) error {
	r := c.Request()
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return broker.Errorf(broker.CodeInvalidRequest, "the body must be application/x-www-form-urlencoded")
	}
	if err := r.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errBodyTooLarge
		}
		if isBodyTimeout(err) {
			return errBodyTimeout
		}
		return broker.Errorf(broker.CodeInvalidRequest, "the body is not a valid form")
	}
	// Only the body counts: a token in the query would have passed through
	// access logs on the way.
	if _, err := s.cfg.Service.BackchannelLogout(r.Context(), r.PostForm.Get("logout_token")); err != nil {
		return err
	}
	noStore(c)
	return c.NoContent(http.StatusOK)
}
