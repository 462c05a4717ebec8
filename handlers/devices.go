package handlers

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/mobile-token-broker/broker/broker"
)

// ownSession is a session as its user sees it in "my devices": never its
// tokens, handle or claims.
type ownSession struct {
	SessionID  string    `json:"session_id"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	IP         string    `json:"ip"`
	UserAgent  string    `json:"user_agent"`
	DPoPBound  bool      `json:"dpop_bound"`
	Current    bool      `json:"current"`
}

type ownSessionList struct {
	Sessions []ownSession `json:"sessions"`
}

type revokedCount struct {
	Revoked int `json:"revoked"`
}

// listOwnSessions lists the caller's user's sessions (GET /v1/sessions).
func (s *Server) listOwnSessions(c echo.Context) error {
	cred, err := s.requireCredential(c)
	if err != nil {
		return err
	}
	current, all, err := s.cfg.Service.OwnSessions(c.Request().Context(), cred)
	if err != nil {
		return err
	}
	setSessionID(c, current.ID)
	out := ownSessionList{Sessions: make([]ownSession, 0, len(all))}
	for _, sess := range all {
		out.Sessions = append(out.Sessions, ownSession{
			SessionID:  sess.ID,
			CreatedAt:  rfc3339(sess.CreatedAt),
			LastUsedAt: rfc3339(sess.LastUsedAt),
			ExpiresAt:  rfc3339(sess.ExpiresAt()),
			IP:         sess.IP,
			UserAgent:  sess.UserAgent,
			DPoPBound:  sess.JKT != "",
			Current:    sess.ID == current.ID,
		})
	}
	noStore(c)
	return c.JSON(http.StatusOK, out)
}

// endOwnSession signs out one of the user's devices
// (DELETE /v1/sessions/{session_id}).
func (s *Server) endOwnSession(c echo.Context) error {
	cred, err := s.requireCredential(c)
	if err != nil {
		return err
	}
	if err := s.cfg.Service.EndOwnSession(c.Request().Context(), cred, c.Param("id")); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// endOtherSessions signs out every other device of the user
// (DELETE /v1/sessions?except=current).
func (s *Server) endOtherSessions(c echo.Context) error {
	cred, err := s.requireCredential(c)
	if err != nil {
		return err
	}
	if q := c.Request().URL.Query(); len(q) != 1 || q.Get("except") != "current" || len(q["except"]) != 1 {
		// Ending every session, the caller's included, is not offered
		// here: DELETE /v1/session ends the caller's own.
		return broker.Errorf(broker.CodeInvalidRequest, "except=current is required")
	}
	n, err := s.cfg.Service.EndOtherSessions(c.Request().Context(), cred)
	if err != nil {
		return err
	}
	noStore(c)
	return c.JSON(http.StatusOK, revokedCount{Revoked: n})
}
