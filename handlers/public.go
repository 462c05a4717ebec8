package handlers

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/mobile-token-broker/broker/broker"
)

// limitBody enforces the 64 KiB cap on /v1/* bodies: a declared length over
// it is refused before reading, and a chunked body stops at the cap.
func limitBody(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if r.ContentLength > maxBodyBytes {
			return errBodyTooLarge
		}
		r.Body = http.MaxBytesReader(c.Response(), r.Body, maxBodyBytes)
		return next(c)
	}
}

var errBodyTooLarge = broker.Errorf(broker.CodeInvalidRequest, "the request body is over 64 KiB")

// decodeJSON reads a JSON object body into v.
func decodeJSON(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return broker.Errorf(broker.CodeInvalidRequest, "the body must be application/json")
		}
	}
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errBodyTooLarge
		}
		if isBodyTimeout(err) {
			return errBodyTimeout
		}
		if errors.Is(err, io.EOF) {
			return broker.Errorf(broker.CodeInvalidRequest, "the body is empty")
		}
		return broker.Errorf(broker.CodeInvalidRequest, "the body is not a valid JSON object of the expected fields")
	}
	if dec.More() {
		return broker.Errorf(broker.CodeInvalidRequest, "the body holds more than one JSON value")
	}
	return nil
}

type createSessionRequest struct {
	Code         string `json:"code"`
	CodeVerifier string `json:"code_verifier"`
	RedirectURI  string `json:"redirect_uri"`
	Nonce        string `json:"nonce"`
}

type createSessionResponse struct {
	Session   string         `json:"session"`
	TokenType string         `json:"token_type"`
	SessionID string         `json:"session_id"`
	ExpiresAt time.Time      `json:"expires_at"`
	User      map[string]any `json:"user"`
	IDToken   string         `json:"id_token"`
}

type sessionResponse struct {
	SessionID string         `json:"session_id"`
	User      map[string]any `json:"user"`
	CreatedAt time.Time      `json:"created_at"`
	ExpiresAt time.Time      `json:"expires_at"`
}

// createSession redeems a code and opens a session (POST /v1/sessions).
func (s *Server) createSession(c echo.Context) error {
	var req createSessionRequest
	if err := decodeJSON(c.Request(), &req); err != nil {
		return err
	}
	r := c.Request()
	ns, err := s.cfg.Service.Exchange(r.Context(), broker.ExchangeRequest{
		Code:         req.Code,
		CodeVerifier: req.CodeVerifier,
		RedirectURI:  req.RedirectURI,
		Nonce:        req.Nonce,
		IP:           clientIP(r, s.cfg.TrustedProxies),
		UserAgent:    r.UserAgent(),
		DPoP:         proofRequest(r, s.cfg.TrustedProxies),
	})
	if err != nil {
		return err
	}
	setSessionID(c, ns.Session.ID)
	noStore(c)
	tokenType := "Bearer"
	if ns.Session.JKT != "" {
		// RFC 9449 section 5: the credential is bound to the proof's key.
		tokenType = "DPoP"
	}
	return c.JSON(http.StatusCreated, createSessionResponse{
		Session:   ns.Handle,
		TokenType: tokenType,
		SessionID: ns.Session.ID,
		ExpiresAt: rfc3339(ns.Session.ExpiresAt()),
		User:      ns.Session.Claims,
		IDToken:   ns.IDToken,
	})
}

// getSession describes the caller's session (GET /v1/session).
func (s *Server) getSession(c echo.Context) error {
	sess, err := s.authenticate(c)
	if err != nil {
		return err
	}
	noStore(c)
	return c.JSON(http.StatusOK, sessionResponse{
		SessionID: sess.ID,
		User:      sess.Claims,
		CreatedAt: rfc3339(sess.CreatedAt),
		ExpiresAt: rfc3339(sess.ExpiresAt()),
	})
}

// userInfo relays the IdP's userinfo response (GET /v1/userinfo).
func (s *Server) userInfo(c echo.Context) error {
	cred, err := s.requireCredential(c)
	if err != nil {
		return err
	}
	info, err := s.cfg.Service.UserInfo(c.Request().Context(), cred)
	if err != nil {
		return err
	}
	noStore(c)
	return c.JSONBlob(http.StatusOK, info)
}

// deleteSession logs out (DELETE /v1/session): 204 whether or not the handle
// was live, 401 only when none was sent.
func (s *Server) deleteSession(c echo.Context) error {
	cred, err := s.requireCredential(c)
	if err != nil {
		return err
	}
	if err := s.cfg.Service.Logout(c.Request().Context(), cred); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// authenticate resolves the request's handle to its session.
func (s *Server) authenticate(c echo.Context) (*broker.Session, error) {
	cred, err := s.requireCredential(c)
	if err != nil {
		return nil, err
	}
	sess, err := s.cfg.Service.Authenticate(c.Request().Context(), cred)
	if err != nil {
		return nil, err
	}
	setSessionID(c, sess.ID)
	return sess, nil
}

// noStore marks a response as holding credentials or personal data
// (RFC 6749 section 5.1).
func noStore(c echo.Context) {
	c.Response().Header().Set("Cache-Control", "no-store")
	c.Response().Header().Set("Pragma", "no-cache")
}

// rfc3339 renders times in UTC at second precision.
func rfc3339(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }
