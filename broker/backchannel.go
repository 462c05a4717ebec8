package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// OpenID Connect Back-Channel Logout 1.0.

// backchannelEvent is the member of the events claim that marks a logout
// token (section 2.4).
const backchannelEvent = "http://schemas.openid.net/event/backchannel-logout"

// Logout tokens older than this are refused, and their jti is remembered at
// least this long, so a replay is caught on every replica.
const (
	logoutTokenMaxAge = 10 * time.Minute
	logoutTokenSkew   = time.Minute
)

// logoutClaims are the claims of a logout token that go-oidc does not check.
type logoutClaims struct {
	Subject  string                     `json:"sub"`
	SID      string                     `json:"sid"`
	JTI      string                     `json:"jti"`
	IssuedAt *int64                     `json:"iat"`
	Expiry   *int64                     `json:"exp"`
	Events   map[string]json.RawMessage `json:"events"`
	Nonce    json.RawMessage            `json:"nonce"`
}

// errLogoutToken is the 400 of section 2.8 for a token that fails
// validation; the reason stays in the logs.
func errLogoutToken(reason string) error {
	return Errorf(CodeInvalidRequest, "the logout token is invalid: %s", reason)
}

// BackchannelLogout validates a logout token from the IdP (section 2.6) and
// ends every session of its sid, or of its sub when it has no sid. It returns
// how many sessions ended; none is not an error.
func (s *Service) BackchannelLogout(ctx context.Context, rawToken string) (int, error) {
	if rawToken == "" {
		return 0, Errorf(CodeInvalidRequest, "logout_token is required")
	}
	if s.cfg.Replay == nil {
		return 0, errors.New("back-channel logout needs a replay guard")
	}
	d, err := s.provider(ctx)
	if err != nil {
		return 0, err
	}
	c, err := s.validateLogoutToken(ctx, d, rawToken)
	if err != nil {
		return 0, err
	}
	// Section 2.6 step 8 (optional, done here): refuse a jti seen before on
	// any replica. The jti is recorded only after the sessions have ended,
	// so a delivery that failed part way can be delivered again (the IdP
	// retries) and then succeeds; concurrent deliveries of one token both
	// end what they find, which is idempotent.
	jti := "logout-jti\x00" + s.cfg.Issuer + "\x00" + c.JTI
	used, err := s.cfg.Replay.Used(ctx, jti)
	if err != nil {
		return 0, fmt.Errorf("look up logout token: %w", err)
	}
	if used {
		return 0, errLogoutToken("jti already used")
	}

	var list []*Session
	if c.SID != "" {
		list, err = s.cfg.Store.ListBySID(ctx, c.SID)
	} else {
		list, err = s.cfg.Store.ListBySubject(ctx, c.Subject)
	}
	if err != nil {
		return 0, fmt.Errorf("find sessions to log out: %w", err)
	}
	ended := 0
	for _, sess := range list {
		if c.Subject != "" && sess.Subject != c.Subject {
			continue
		}
		_, err := s.end(ctx, sess.ID, EndReason{Actor: ActorIdP, Action: ActionBackchannelLogout, Reason: "backchannel_logout"})
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return ended, err
		default:
			ended++
		}
	}
	if _, err := s.cfg.Replay.FirstUse(ctx, jti, logoutTokenMaxAge+2*logoutTokenSkew); err != nil {
		// The sessions are ended. A replay within the token's age limit
		// would be accepted: it ends the same sessions again, and, for a
		// token with only sub, also any the user opened since.
		s.log.WarnContext(ctx, "recording a used logout token failed", "error", err)
	}
	s.log.InfoContext(ctx, "back-channel logout", "sid_given", c.SID != "", "sub", c.Subject, "sessions_ended", ended)
	return ended, nil
}

// validateLogoutToken checks a logout token as section 2.6 steps 1-7 ask,
// all but the replay check of step 8, and returns its claims. It refuses
// with a CodeInvalidRequest error.
func (s *Service) validateLogoutToken(ctx context.Context, d *idp, rawToken string) (logoutClaims, error) {
	// Section 2.6 steps 1-3: signature against the IdP's keys, iss and aud,
	// as for an ID token. A logout token need not carry exp.
	tok, err := d.logoutVerifier.Verify(s.clientContext(ctx), rawToken)
	if err != nil {
		s.log.WarnContext(ctx, "logout token rejected", "reason", err)
		return logoutClaims{}, errLogoutToken("signature, issuer or audience")
	}
	var c logoutClaims
	if err := tok.Claims(&c); err != nil {
		return logoutClaims{}, errLogoutToken("claims cannot be read")
	}
	now := s.cfg.Now()
	switch {
	case c.IssuedAt == nil:
		return logoutClaims{}, errLogoutToken("no iat")
	case now.Sub(time.Unix(*c.IssuedAt, 0)) > logoutTokenMaxAge:
		return logoutClaims{}, errLogoutToken("iat is too old")
	case time.Unix(*c.IssuedAt, 0).Sub(now) > logoutTokenSkew:
		return logoutClaims{}, errLogoutToken("iat is in the future")
	case c.Expiry != nil && !now.Before(time.Unix(*c.Expiry, 0).Add(logoutTokenSkew)):
		return logoutClaims{}, errLogoutToken("expired")
	case !isJSONObject(c.Events[backchannelEvent]):
		// Section 2.6 step 4: events must hold the back-channel logout
		// member, whose value is a JSON object.
		return logoutClaims{}, errLogoutToken("no back-channel logout event")
	case c.Nonce != nil:
		// Section 2.6 step 7: a nonce must not be present, so that an ID
		// token cannot pass for a logout token.
		return logoutClaims{}, errLogoutToken("a nonce is present")
	case c.SID == "" && c.Subject == "":
		// Section 2.6 step 5.
		return logoutClaims{}, errLogoutToken("neither sid nor sub")
	case c.JTI == "":
		return logoutClaims{}, errLogoutToken("no jti")
	}
	return c, nil
}

func isJSONObject(raw json.RawMessage) bool {
	var v map[string]any
	return len(raw) > 0 && json.Unmarshal(raw, &v) == nil && v != nil
}
