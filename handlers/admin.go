package handlers

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/mobile-token-broker/broker/api"
	"github.com/mobile-token-broker/broker/broker"
)

// The admin API of the security team (BROKER_ADMIN_LISTEN, /admin/v1/):
// list and end sessions centrally and read the audit trail.

// AdminToken is one entry of BROKER_ADMIN_TOKENS. Only a SHA-256 digest of
// the token is kept, so the process never holds the token itself after
// start and a token cannot end up in a log or a dump of the config.
type AdminToken struct {
	// Name is the actor recorded in the audit trail for calls made with
	// this token.
	Name   string
	digest [sha256.Size]byte
	// position is the entry's place in BROKER_ADMIN_TOKENS, for messages;
	// short marks a token below minAdminTokenLen.
	position int
	short    bool
}

// String never shows the token.
func (t AdminToken) String() string { return t.Name + ":[redacted]" }

// defaultAdminName is the actor of a token configured without a name.
const defaultAdminName = "admin"

// minAdminTokenLen is the shortest token that draws no warning: anything
// shorter is a password, not a bearer token one can keep in a secret store.
const minAdminTokenLen = 16

// maxAdminNameLen bounds a token's name, which appears in every audit event.
const maxAdminNameLen = 64

// ParseAdminTokens parses BROKER_ADMIN_TOKENS: comma-separated entries, each
// TOKEN or NAME:TOKEN. The name is the audit actor ("admin" when none is
// given), up to 64 printable characters. A token may not hold a comma, since
// the comma separates entries; a token holding ":" must be given with a name,
// since the first ":" ends the name; it is printable ASCII without spaces, so
// that it can travel in an Authorization header. Empty entries (a trailing
// comma) are skipped; an entry repeating an earlier token is dropped. Weak
// settings the contract allows (short tokens, a name used twice) are kept
// and reported by AdminTokenWarnings. An empty spec yields no tokens, which
// leaves the admin API closed. Every bad entry is reported by its position;
// no error or warning ever holds a token.
func ParseAdminTokens(spec string) ([]AdminToken, error) {
	var (
		tokens  []AdminToken
		errs    []error
		digests = map[[sha256.Size]byte]bool{}
	)
	for i, entry := range strings.Split(spec, ",") {
		pos := i + 1
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, token, named := strings.Cut(entry, ":")
		if !named {
			name, token = defaultAdminName, entry
		}
		if err := checkAdminName(name); err != nil {
			errs = append(errs, fmt.Errorf("entry %d: %w", pos, err))
			continue
		}
		if err := checkAdminToken(token); err != nil {
			errs = append(errs, fmt.Errorf("entry %d: %w", pos, err))
			continue
		}
		t := AdminToken{Name: name, digest: sha256.Sum256([]byte(token)), position: pos, short: len(token) < minAdminTokenLen}
		if digests[t.digest] {
			continue
		}
		digests[t.digest] = true
		tokens = append(tokens, t)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return tokens, nil
}

// AdminTokenWarnings names what is weak about a token set, for the start-up
// log: tokens short enough to guess, and names shared by several tokens,
// whose holders the audit trail cannot tell apart.
func AdminTokenWarnings(tokens []AdminToken) []string {
	var warnings []string
	seen := map[string]int{}
	for _, t := range tokens {
		if t.short {
			warnings = append(warnings, fmt.Sprintf("BROKER_ADMIN_TOKENS entry %d (%s) is shorter than %d characters: use a long random token", t.position, t.Name, minAdminTokenLen))
		}
		if prev, ok := seen[t.Name]; ok {
			warnings = append(warnings, fmt.Sprintf("BROKER_ADMIN_TOKENS entries %d and %d are both named %q: the audit trail cannot tell their holders apart", prev, t.position, t.Name))
			continue
		}
		seen[t.Name] = t.position
	}
	return warnings
}

func checkAdminName(name string) error {
	if name == "" {
		return errors.New("the name before ':' is empty")
	}
	if len(name) > maxAdminNameLen {
		return fmt.Errorf("the name is longer than %d characters", maxAdminNameLen)
	}
	for _, r := range name {
		if r < ' ' || r == 0x7f {
			return errors.New("the name may hold only printable characters")
		}
	}
	return nil
}

func checkAdminToken(token string) error {
	if token == "" {
		return errors.New("the token is empty")
	}
	for i := range len(token) {
		if token[i] <= ' ' || token[i] >= 0x7f {
			return errors.New("the token may hold only printable ASCII characters without spaces")
		}
	}
	return nil
}

// adminActor returns the name of the configured token that presented
// matches. Every configured token is compared, in constant time and on
// SHA-256 digests of equal length, with no early exit: neither the time
// taken nor the position of a match tells how much of a guess was right.
func adminActor(tokens []AdminToken, presented string) (string, bool) {
	d := sha256.Sum256([]byte(presented))
	match := -1
	for i := range tokens {
		eq := subtle.ConstantTimeCompare(d[:], tokens[i].digest[:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return "", false
	}
	return tokens[match].Name, true
}

// ctxAdminActor is the Echo context key of the name of the admin token a
// request was authenticated with.
const ctxAdminActor = "admin_actor"

// errNoAdminToken answers an admin call without credentials (RFC 6750
// section 3.1: no error attribute in the challenge).
var errNoAdminToken = &missingCredentialsError{challenge: "Bearer", message: "an admin token is required"}

// errWrongAdminToken answers an admin call whose token is not configured.
var errWrongAdminToken = broker.Errorf(broker.CodeInvalidToken, "the admin token is not valid")

// requireAdmin admits a request on /admin/v1/ only with
// "Authorization: Bearer <token>" of one of BROKER_ADMIN_TOKENS, and records
// every refusal in the audit trail. With no token configured, every call is
// refused.
func (s *Server) requireAdmin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		token, present := bearer(r)
		var denied error
		var why string
		name, ok := adminActor(s.cfg.AdminTokens, token)
		switch {
		case !present:
			denied, why = errNoAdminToken, "no credentials"
		case !ok:
			denied, why = errWrongAdminToken, "wrong token"
		}
		if denied != nil {
			// Refusals have a budget of their own at the invalid-handle
			// rate, so that guessing tokens or flooding the capped audit
			// trail with refusals is throttled like guessing handles,
			// without the two spending each other's budget.
			if err := s.limit(c, "admin-denied", s.cfg.InvalidHandleRate); err != nil {
				return err
			}
			s.cfg.Service.AdminDenied(r.Context(), methodLabel(r.Method)+" "+c.Path()+": "+why)
			return denied
		}
		c.Set(ctxAdminActor, name)
		return next(c)
	}
}

// actor returns the admin name requireAdmin left in the context.
func actor(c echo.Context) string {
	name, _ := c.Get(ctxAdminActor).(string)
	return name
}

// pathParam returns a path parameter unescaped. Echo matches routes against
// the escaped path (and so yields escaped parameters) whenever the request's
// escaping differs from Go's default, as with "auth0%7C123" written
// "auth0%7c123", or a "%2F" that must not split the segment; otherwise it
// matches the decoded path, whose parameters must not be decoded twice.
func pathParam(c echo.Context, name string) (string, error) {
	v := c.Param(name)
	if c.Request().URL.RawPath == "" {
		return v, nil
	}
	u, err := url.PathUnescape(v)
	if err != nil {
		return "", broker.Errorf(broker.CodeInvalidRequest, "the %s in the path has an invalid escape", name)
	}
	return u, nil
}

// adminSessionOf is a session as the admin API shows it.
func adminSessionOf(sess *broker.Session) api.AdminSession {
	if sess.Unreadable {
		return api.AdminSession{
			SessionID:  sess.ID,
			Subject:    sess.Subject,
			ClientID:   sess.ClientID,
			CreatedAt:  rfc3339(sess.CreatedAt),
			LastUsedAt: rfc3339(sess.CreatedAt),
			ExpiresAt:  rfc3339(sess.AbsoluteExpiry),
			IP:         sess.IP,
			UserAgent:  sess.UserAgent,
			Unreadable: true,
		}
	}
	return api.AdminSession{
		SessionID:  sess.ID,
		Subject:    sess.Subject,
		ClientID:   sess.ClientID,
		CreatedAt:  rfc3339(sess.CreatedAt),
		LastUsedAt: rfc3339(sess.LastUsedAt),
		ExpiresAt:  rfc3339(sess.ExpiresAt()),
		IP:         sess.IP,
		UserAgent:  sess.UserAgent,
	}
}

// errNoSuchSession is the 404 of an unknown, ended or malformed session id.
var errNoSuchSession = broker.Errorf(broker.CodeNotFound, "no such session")

// notFoundAsNoSuchSession names what was not found.
func notFoundAsNoSuchSession(err error) error {
	if broker.ErrorCode(err) == broker.CodeNotFound {
		return errNoSuchSession
	}
	return err
}

// userSessions lists a user's live sessions, newest first
// (GET /admin/v1/users/:sub/sessions); an unknown user has none.
func (s *Server) userSessions(c echo.Context) error {
	sub, err := pathParam(c, "sub")
	if err != nil {
		return err
	}
	list, err := s.cfg.Service.UserSessions(c.Request().Context(), sub)
	if err != nil {
		return err
	}
	out := api.SessionList{Sessions: make([]api.AdminSession, 0, len(list))}
	for _, sess := range list {
		out.Sessions = append(out.Sessions, adminSessionOf(sess))
	}
	noStore(c)
	return c.JSON(http.StatusOK, out)
}

// adminGetSession shows one session (GET /admin/v1/sessions/:id).
func (s *Server) adminGetSession(c echo.Context) error {
	id, err := pathParam(c, "id")
	if err != nil {
		return err
	}
	sess, err := s.cfg.Service.Session(c.Request().Context(), id)
	if err != nil {
		return notFoundAsNoSuchSession(err)
	}
	setSessionID(c, sess.ID)
	noStore(c)
	return c.JSON(http.StatusOK, adminSessionOf(sess))
}

// adminRevokeSession ends one session and revokes its refresh token at the
// IdP (DELETE /admin/v1/sessions/:id). An IdP failure does not fail the call:
// the session has ended, and the audit trail records the failure.
func (s *Server) adminRevokeSession(c echo.Context) error {
	id, err := pathParam(c, "id")
	if err != nil {
		return err
	}
	if err := s.cfg.Service.RevokeSession(c.Request().Context(), id, actor(c)); err != nil {
		return notFoundAsNoSuchSession(err)
	}
	setSessionID(c, id)
	return c.NoContent(http.StatusNoContent)
}

// adminRevokeUser ends every session of a user
// (DELETE /admin/v1/users/:sub/sessions).
func (s *Server) adminRevokeUser(c echo.Context) error {
	sub, err := pathParam(c, "sub")
	if err != nil {
		return err
	}
	res, err := s.cfg.Service.RevokeUser(c.Request().Context(), sub, actor(c))
	if err != nil {
		return err
	}
	noStore(c)
	return c.JSON(http.StatusOK, api.UserRevocation{Revoked: res.Revoked, IdPRevocationFailures: res.IdPFailures})
}

// Bounds of the admin listings' query parameters.
const (
	// defaultPageLimit and maxPageLimit bound limit= of the audit trail
	// and the session search.
	defaultPageLimit = 100
	maxPageLimit     = 1000
	// maxQueryValueLen bounds every other filter value. A subject is at
	// most 255 characters (OpenID Connect Core 1.0 section 2), a session
	// id or a cursor far less.
	maxQueryValueLen = 1024
)

// pageLimit reads limit= (absent or empty: the default).
func pageLimit(c echo.Context) (int, error) {
	raw := c.QueryParam("limit")
	if raw == "" {
		return defaultPageLimit, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > maxPageLimit {
		return 0, broker.Errorf(broker.CodeInvalidRequest, "limit must be an integer from 1 to %d", maxPageLimit)
	}
	return n, nil
}

// queryValue reads a filter parameter, bounded.
func queryValue(c echo.Context, name string) (string, error) {
	v := c.QueryParam(name)
	if len(v) > maxQueryValueLen {
		return "", broker.Errorf(broker.CodeInvalidRequest, "%s is longer than %d bytes", name, maxQueryValueLen)
	}
	return v, nil
}

// queryTime reads an RFC 3339 time parameter; zero when absent.
func queryTime(c echo.Context, name string) (time.Time, error) {
	raw, err := queryValue(c, name)
	if err != nil || raw == "" {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339Nano, raw)
	if err != nil {
		return time.Time{}, broker.Errorf(broker.CodeInvalidRequest, "%s must be an RFC 3339 time, such as 2026-03-01T12:00:00Z", name)
	}
	return t, nil
}

// queryValues reads the named filter parameters into the pointers given.
func queryValues(c echo.Context, into map[string]*string) error {
	for name, p := range into {
		v, err := queryValue(c, name)
		if err != nil {
			return err
		}
		*p = v
	}
	return nil
}

// badCursor names the parameter of a cursor the broker refused.
func badCursor(err error) error {
	if errors.Is(err, broker.ErrBadCursor) {
		return broker.Errorf(broker.CodeInvalidRequest, "cursor is not one a previous page returned")
	}
	return err
}

// searchSessions searches the live sessions (GET /admin/v1/sessions): by
// subject (sub=), by session id (session_id=), or all of them, in pages
// (limit=, cursor=), the newest first.
func (s *Server) searchSessions(c echo.Context) error {
	var q broker.SessionQuery
	if err := queryValues(c, map[string]*string{"sub": &q.Subject, "session_id": &q.SessionID, "cursor": &q.After}); err != nil {
		return err
	}
	limit, err := pageLimit(c)
	if err != nil {
		return err
	}
	q.Limit = limit
	page, err := s.cfg.Service.SearchSessions(c.Request().Context(), q)
	if err != nil {
		return badCursor(err)
	}
	out := api.SessionList{Sessions: make([]api.AdminSession, 0, len(page.Sessions)), NextCursor: page.Next}
	for _, sess := range page.Sessions {
		out.Sessions = append(out.Sessions, adminSessionOf(sess))
	}
	noStore(c)
	return c.JSON(http.StatusOK, out)
}

// adminAudit lists audit events newest first, filtered and in pages
// (GET /admin/v1/audit).
func (s *Server) adminAudit(c echo.Context) error {
	var q broker.AuditQuery
	err := queryValues(c, map[string]*string{
		"action": &q.Action, "actor": &q.Actor, "sub": &q.Subject, "session_id": &q.SessionID, "cursor": &q.Before,
	})
	if err != nil {
		return err
	}
	if q.Since, err = queryTime(c, "since"); err != nil {
		return err
	}
	if q.Until, err = queryTime(c, "until"); err != nil {
		return err
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		return broker.Errorf(broker.CodeInvalidRequest, "since must be before until")
	}
	if q.Limit, err = pageLimit(c); err != nil {
		return err
	}
	page, err := s.cfg.Service.SearchAudit(c.Request().Context(), q)
	if err != nil {
		return badCursor(err)
	}
	out := api.AuditList{Events: make([]api.AuditEvent, 0, len(page.Events)), NextCursor: page.Next}
	for _, e := range page.Events {
		out.Events = append(out.Events, api.AuditEvent{
			ID:        e.ID,
			Time:      e.Time.UTC(),
			Actor:     e.Actor,
			Action:    e.Action,
			SessionID: e.SessionID,
			Subject:   e.Subject,
			Outcome:   e.Outcome,
			Detail:    e.Detail,
			IP:        e.ClientIP,
			UserAgent: e.UserAgent,
			RequestID: e.RequestID,
		})
	}
	noStore(c)
	return c.JSON(http.StatusOK, out)
}
