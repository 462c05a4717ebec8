package console

import (
	"crypto/subtle"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/mobile-token-broker/broker/broker"
)

// signInPage shows the sign-in form, with a fresh double-submitted CSRF
// token.
func (con *Console) signInPage(c echo.Context) error {
	if ck, err := c.Cookie(sessionCookie); err == nil && con.signIns.find(ck.Value, con.cfg.Now()) != nil {
		return c.Redirect(http.StatusSeeOther, Prefix+"/")
	}
	return con.showSignIn(c, http.StatusOK, "")
}

func (con *Console) showSignIn(c echo.Context, status int, problem string) error {
	token := randomToken()
	setCookie(c, preCookie, token, int((10 * time.Minute).Seconds()))
	return con.render(c, status, "signin", page{Title: "Sign in", Problem: problem, Data: token})
}

// signIn exchanges an admin token for a console sign-in. A wrong token is
// refused as the admin API refuses one: an admin.denied event, within the
// refusals' rate limit.
func (con *Console) signIn(adm Admission) echo.HandlerFunc {
	return func(c echo.Context) error {
		form := c.Request().PostForm
		pre, err := c.Cookie(preCookie)
		if err != nil || subtle.ConstantTimeCompare([]byte(pre.Value), []byte(form.Get("csrf"))) != 1 {
			return con.showSignIn(c, http.StatusForbidden, "The sign-in form was out of date. Try again.")
		}
		token := form.Get("token")
		actor, ok := "", false
		if len(token) <= maxTokenLen {
			actor, ok = adm.Authenticate(token)
		}
		if !ok {
			why := "wrong token"
			if token == "" {
				why = "no credentials"
			}
			if !adm.Refused(c, "POST "+Prefix+"/signin: "+why) {
				return con.showSignIn(c, http.StatusTooManyRequests, "Too many refused sign-ins from this address. Wait a minute and try again.")
			}
			return con.showSignIn(c, http.StatusUnauthorized, "That admin token is not valid.")
		}
		cookie, _ := con.signIns.open(actor, con.cfg.Now())
		setCookie(c, preCookie, "", -1)
		setCookie(c, sessionCookie, cookie, int(con.cfg.MaxLifetime.Seconds()))
		con.log.InfoContext(c.Request().Context(), "console sign-in", "actor", actor)
		return c.Redirect(http.StatusSeeOther, Prefix+"/")
	}
}

// signOut ends the sign-in.
func (con *Console) signOut(c echo.Context) error {
	if ck, err := c.Cookie(sessionCookie); err == nil {
		con.signIns.close(ck.Value)
	}
	setCookie(c, sessionCookie, "", -1)
	return c.Redirect(http.StatusSeeOther, Prefix+"/signin")
}

// value reads a bounded query or form value.
func value(c echo.Context, name string) (string, bool) {
	v := c.QueryParam(name)
	if c.Request().Method == http.MethodPost {
		v = c.Request().PostForm.Get(name)
	}
	return v, len(v) <= maxValueLen
}

// sessionRow is a session as the console lists it.
type sessionRow struct {
	ID, Subject, ClientID, IP, UserAgent string
	Created, LastUsed, Expires           time.Time
	Unreadable                           bool
	// DPoP reports a session bound to its device's key.
	DPoP bool
}

func rowOf(s *broker.Session) sessionRow {
	r := sessionRow{ID: s.ID, Subject: s.Subject, ClientID: s.ClientID, IP: s.IP, UserAgent: s.UserAgent,
		Created: s.CreatedAt, LastUsed: s.LastUsedAt, Expires: s.ExpiresAt(), Unreadable: s.Unreadable, DPoP: s.JKT != ""}
	if s.Unreadable {
		// Only the record's clear-text times are known.
		r.LastUsed, r.Expires = time.Time{}, s.AbsoluteExpiry
	}
	return r
}

func rowsOf(list []*broker.Session) []sessionRow {
	out := make([]sessionRow, 0, len(list))
	for _, s := range list {
		out = append(out, rowOf(s))
	}
	return out
}

// searchKinds are what the sessions page searches by.
var searchKinds = map[string]string{"sub": "Subject", "session_id": "Session id", "ip": "Client address"}

type sessionsData struct {
	By, Q    string
	Searched bool
	Sessions []sessionRow
	Next     string
}

// sessions searches the live sessions by subject, session id or client
// address (an address or a prefix), or lists the most recent, in pages.
func (con *Console) sessions(c echo.Context) error {
	by, ok1 := value(c, "by")
	q, ok2 := value(c, "q")
	cursor, ok3 := value(c, "cursor")
	if !ok1 || !ok2 || !ok3 {
		return con.fail(c, http.StatusBadRequest, "A search value is too long.")
	}
	if _, known := searchKinds[by]; !known {
		by = "sub"
	}
	query := broker.SessionQuery{After: cursor, Limit: pageSize}
	if q != "" {
		switch by {
		case "sub":
			query.Subject = q
		case "session_id":
			query.SessionID = q
		case "ip":
			query.ClientIP = q
		}
	}
	res, err := con.cfg.Service.SearchSessions(c.Request().Context(), query)
	if err != nil {
		return con.failErr(c, err)
	}
	d := sessionsData{By: by, Q: q, Searched: q != "", Sessions: rowsOf(res.Sessions)}
	if res.Next != "" {
		d.Next = Prefix + "/sessions?" + url.Values{"by": {by}, "q": {q}, "cursor": {res.Next}}.Encode()
	}
	title := "Recent sessions"
	if d.Searched {
		title = "Sessions by " + searchKinds[by]
	}
	return con.render(c, http.StatusOK, "sessions", page{Title: title, Nav: "sessions", Data: d})
}

type userData struct {
	Subject  string
	Sessions []sessionRow
}

// notices are the messages a page shows after a form's redirect.
var notices = map[string]string{
	"ended":       "The session has ended; its refresh token is revoked at the identity provider.",
	"gone":        "That session had already ended.",
	"ended-all":   "Every session of this user has ended; their refresh tokens are revoked at the identity provider.",
	"idp-pending": "Every session of this user has ended. The identity provider did not revoke every refresh token yet; the broker keeps trying.",
}

// subjectSessions reads the subject a page names and its live sessions;
// done is false when the page was answered with an error instead.
func (con *Console) subjectSessions(c echo.Context) (sub string, list []*broker.Session, done bool, err error) {
	sub, ok := value(c, "sub")
	if !ok || sub == "" {
		return "", nil, false, con.fail(c, http.StatusBadRequest, "Name a subject.")
	}
	list, err = con.cfg.Service.UserSessions(c.Request().Context(), sub)
	if err != nil {
		return "", nil, false, con.failErr(c, err)
	}
	return sub, list, true, nil
}

// user lists every live session of a subject.
func (con *Console) user(c echo.Context) error {
	sub, list, ok, err := con.subjectSessions(c)
	if !ok {
		return err
	}
	p := page{Title: "User " + sub, Nav: "sessions", Data: userData{Subject: sub, Sessions: rowsOf(list)}}
	p.Notice = notices[c.QueryParam("done")]
	return con.render(c, http.StatusOK, "user", p)
}

type endAllData struct {
	Subject string
	Count   int
}

// confirmEndAll asks before ending every session of a subject, naming how
// many there are.
func (con *Console) confirmEndAll(c echo.Context) error {
	sub, list, ok, err := con.subjectSessions(c)
	if !ok {
		return err
	}
	return con.render(c, http.StatusOK, "confirm", page{Title: "End every session of " + sub, Nav: "sessions",
		Data: endAllData{Subject: sub, Count: len(list)}})
}

// userURL is the user's page, with a notice.
func userURL(sub, done string) string {
	v := url.Values{"sub": {sub}}
	if done != "" {
		v.Set("done", done)
	}
	return Prefix + "/user?" + v.Encode()
}

// endAll ends every session of a subject, as DELETE
// /admin/v1/users/{sub}/sessions does.
func (con *Console) endAll(c echo.Context) error {
	sub, ok := value(c, "sub")
	if !ok || sub == "" {
		return con.fail(c, http.StatusBadRequest, "Name a subject.")
	}
	res, err := con.cfg.Service.RevokeUser(c.Request().Context(), sub, signedIn(c).actor)
	if err != nil {
		return con.failErr(c, err)
	}
	done := "ended-all"
	if res.IdPFailures > 0 {
		done = "idp-pending"
	}
	return c.Redirect(http.StatusSeeOther, userURL(sub, done))
}

// endOne ends one session, as DELETE /admin/v1/sessions/{id} does.
func (con *Console) endOne(c echo.Context) error {
	id, ok1 := value(c, "session_id")
	sub, ok2 := value(c, "sub")
	if !ok1 || !ok2 {
		return con.fail(c, http.StatusBadRequest, "A value is too long.")
	}
	done := "ended"
	err := con.cfg.Service.RevokeSession(c.Request().Context(), id, signedIn(c).actor)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		done = "gone"
	case err != nil:
		return con.failErr(c, err)
	}
	if sub == "" {
		return c.Redirect(http.StatusSeeOther, Prefix+"/sessions")
	}
	return c.Redirect(http.StatusSeeOther, userURL(sub, done))
}

// auditActions are the actions the audit filter offers.
var auditActions = []string{
	broker.ActionSessionRevoke, broker.ActionUserRevoke, broker.ActionLogout, broker.ActionBackchannelLogout,
	broker.ActionRefreshRejected, broker.ActionAdminDenied, broker.ActionExpired,
}

// timeInput is the layout of a datetime-local input, read as UTC.
const timeInput = "2006-01-02T15:04"

type auditData struct {
	Action, Actor, Subject, SessionID, Since, Until string
	Actions                                         []string
	Events                                          []broker.AuditEvent
	Next                                            string
}

// audit shows the audit trail, filtered, newest first, in pages.
func (con *Console) audit(c echo.Context) error {
	var d auditData
	fields := map[string]*string{"action": &d.Action, "actor": &d.Actor, "sub": &d.Subject,
		"session_id": &d.SessionID, "since": &d.Since, "until": &d.Until}
	for name, p := range fields {
		v, ok := value(c, name)
		if !ok {
			return con.fail(c, http.StatusBadRequest, "A filter value is too long.")
		}
		*p = v
	}
	cursor, ok := value(c, "cursor")
	if !ok {
		return con.fail(c, http.StatusBadRequest, "A filter value is too long.")
	}
	q := broker.AuditQuery{Action: d.Action, Actor: d.Actor, Subject: d.Subject, SessionID: d.SessionID, Before: cursor, Limit: pageSize}
	var err error
	if q.Since, err = parseTimeInput(d.Since); err != nil {
		return con.fail(c, http.StatusBadRequest, "From must be a date and time, such as 2026-03-01T12:00.")
	}
	if q.Until, err = parseTimeInput(d.Until); err != nil {
		return con.fail(c, http.StatusBadRequest, "To must be a date and time, such as 2026-03-01T12:00.")
	}
	res, err := con.cfg.Service.SearchAudit(c.Request().Context(), q)
	if err != nil {
		return con.failErr(c, err)
	}
	d.Actions, d.Events = auditActions, res.Events
	if res.Next != "" {
		v := url.Values{"cursor": {res.Next}}
		for name, p := range fields {
			if *p != "" {
				v.Set(name, *p)
			}
		}
		d.Next = Prefix + "/audit?" + v.Encode()
	}
	return con.render(c, http.StatusOK, "audit", page{Title: "Audit trail", Nav: "audit", Data: d})
}

// parseTimeInput reads a datetime-local value (or RFC 3339) as UTC; zero
// when empty.
func parseTimeInput(v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	return time.ParseInLocation(timeInput, v, time.UTC)
}

type overviewData struct {
	Active       int64
	ActiveErr    bool
	Opened       int
	Ended        int
	Refresh      []outcomeCount
	IdPReady     bool
	StoreUp      bool
	SessionChart chart
	RefreshChart chart
}

type outcomeCount struct {
	Outcome string
	Count   int
}

// overview shows the broker's figures: live sessions, the last hour's
// activity, and the health of the IdP and the store.
func (con *Console) overview(c echo.Context) error {
	ctx := c.Request().Context()
	var d overviewData
	n, err := con.cfg.ActiveSessions(ctx)
	d.Active, d.ActiveErr = n, err != nil
	d.StoreUp = con.cfg.Ping(ctx) == nil
	d.IdPReady = con.cfg.Service.Ready()
	hour := con.cfg.Activity.LastHour()
	var refresh [4]int
	for _, m := range hour {
		d.Opened += m.Opened
		d.Ended += m.Ended
		for i, v := range m.RefreshOutcome {
			refresh[i] += v
		}
	}
	for i, o := range RefreshOutcomes {
		d.Refresh = append(d.Refresh, outcomeCount{Outcome: o, Count: refresh[i]})
	}
	d.SessionChart = sessionChart(hour)
	d.RefreshChart = outcomeChart(d.Refresh)
	return con.render(c, http.StatusOK, "overview", page{Title: "Overview", Nav: "overview", Data: d})
}
