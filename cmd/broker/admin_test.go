package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// adminToken returns the name and token of the stack's BROKER_ADMIN_TOKENS.
func (s *stack) adminToken() (name, token string) {
	name, token, _ = strings.Cut(s.env["BROKER_ADMIN_TOKENS"], ":")
	return name, token
}

// admin calls the admin API of inst with the stack's admin token.
func (s *stack) admin(inst *instance, method, path string) response {
	s.t.Helper()
	_, token := s.adminToken()
	return doURL(s.t, method, inst.admin+path, token, nil, nil)
}

// loginFrom runs the app flow for a user of the dev IdP from a device that
// sends userAgent.
func (s *stack) loginFrom(inst *instance, username, password, userAgent string) created {
	s.t.Helper()
	verifier := oauth2.GenerateVerifier()
	nonce := "n-" + rand.Text()
	code, err := s.idp.Login(context.Background(), devidp.LoginRequest{
		Username:      username,
		Password:      password,
		CodeChallenge: oauth2.S256ChallengeFromVerifier(verifier),
		Nonce:         nonce,
		State:         "st-" + nonce,
	})
	if err != nil {
		s.t.Fatalf("Login(%s): %v", username, err)
	}
	res := doURL(s.t, http.MethodPost, inst.base+"/v1/sessions", "", map[string]string{
		"code": code, "code_verifier": verifier, "redirect_uri": redirectURI,
	}, http.Header{"User-Agent": {userAgent}})
	if res.status != http.StatusCreated {
		s.t.Fatalf("POST /v1/sessions = %d %s, want 201", res.status, res.body)
	}
	var c created
	res.decode(s.t, &c)
	return c
}

// adminSession is the session object of the admin API.
type adminSession struct {
	SessionID  string    `json:"session_id"`
	Sub        string    `json:"sub"`
	ClientID   string    `json:"client_id"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	IP         string    `json:"ip"`
	UserAgent  string    `json:"user_agent"`
}

// auditEvent is an event of the admin API's audit trail, its time as sent.
type auditEvent struct {
	ID        string `json:"id"`
	Time      string `json:"time"`
	Actor     string `json:"actor"`
	Action    string `json:"action"`
	SessionID string `json:"session_id"`
	Sub       string `json:"sub"`
	Outcome   string `json:"outcome"`
	Detail    string `json:"detail"`
	IP        string `json:"ip"`
	UserAgent string `json:"user_agent"`
	RequestID string `json:"request_id"`
}

// audit reads the newest audit events through the admin API of inst.
func (s *stack) audit(inst *instance, limit string) ([]auditEvent, response) {
	s.t.Helper()
	res := s.admin(inst, http.MethodGet, "/admin/v1/audit?limit="+limit)
	if res.status != http.StatusOK {
		s.t.Fatalf("GET /admin/v1/audit = %d %s, want 200", res.status, res.body)
	}
	var out struct {
		Events []auditEvent `json:"events"`
	}
	res.decode(s.t, &out)
	return out.Events, res
}

// wantStatus checks the status of GET path with handle on every broker.
func wantStatus(t *testing.T, brokers []*instance, path, handle string, want int) {
	t.Helper()
	for i, b := range brokers {
		if res := do(t, b, http.MethodGet, path, handle, nil); res.status != want {
			t.Errorf("broker %d: GET %s = %d %s, want %d", i+1, path, res.status, res.body, want)
		}
	}
}

func TestAdminRevokeSessionEndsItEverywhere(t *testing.T) {
	s := newStack(t, stackOptions{})
	b1, b2, b3 := s.start(), s.start(), s.start()
	all := []*instance{b1, b2, b3}
	c := s.login(b1)
	other := s.login(b2)
	wantStatus(t, all, "/api/x", c.Session, http.StatusOK)

	revokedBefore := len(s.idp.Revoked())
	if res := s.admin(b1, http.MethodDelete, "/admin/v1/sessions/"+c.SessionID); res.status != http.StatusNoContent {
		t.Fatalf("DELETE /admin/v1/sessions/{id} = %d %s, want 204", res.status, res.body)
	}
	wantStatus(t, []*instance{b2, b3}, "/v1/session", c.Session, http.StatusUnauthorized)
	wantStatus(t, all, "/api/x", c.Session, http.StatusUnauthorized)
	if got := len(s.idp.Revoked()) - revokedBefore; got != 1 {
		t.Errorf("the IdP saw %d revocations, want 1 (RFC 7009)", got)
	}
	wantStatus(t, all, "/v1/session", other.Session, http.StatusOK)

	// A repeated revoke (an admin whose first answer was lost) is told the
	// session is ended, on any replica; the revocation at the IdP is not
	// repeated.
	if res := s.admin(b2, http.MethodDelete, "/admin/v1/sessions/"+c.SessionID); res.status != http.StatusNoContent {
		t.Errorf("DELETE the revoked session again = %d %s, want 204", res.status, res.body)
	}
	if got := len(s.idp.Revoked()) - revokedBefore; got != 1 {
		t.Errorf("the IdP saw %d revocations after a repeated revoke, want 1", got)
	}

	for _, tt := range []struct{ name, method, path string }{
		{"GET the revoked session", http.MethodGet, "/admin/v1/sessions/" + c.SessionID},
		{"DELETE an unknown session", http.MethodDelete, "/admin/v1/sessions/unknown"},
		{"GET a malformed session id", http.MethodGet, "/admin/v1/sessions/%2E%2E"},
		{"unknown admin path", http.MethodGet, "/admin/v1/nothing/here"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := s.admin(b2, tt.method, tt.path)
			if res.status != http.StatusNotFound {
				t.Fatalf("= %d %s, want 404", res.status, res.body)
			}
			if got := res.errorCode(t); got != "not_found" {
				t.Errorf("error = %q, want not_found", got)
			}
		})
	}
}

func TestAdminSessionObjectsAndRevokeAll(t *testing.T) {
	s := newStack(t, stackOptions{})
	brokers := []*instance{s.start(), s.start(), s.start()}
	devices := []string{"OrdersApp/3.1 (iPhone; iOS 19.2)", "OrdersApp/3.1 (Pixel 9; Android 16)", "OrdersApp/3.0 (iPad; iPadOS 19.1)"}
	var mine []created
	for i, b := range brokers {
		mine = append(mine, s.loginFrom(b, devidp.DemoUsername, devidp.DemoPassword, devices[i]))
		// Sessions are listed newest first by creation time.
		s.clock.Advance(time.Second)
	}
	theirs := s.loginFrom(brokers[0], devidp.OtherUsername, devidp.OtherPassword, "OtherApp/1.0")

	t.Run("GET one session", func(t *testing.T) {
		res := s.admin(brokers[2], http.MethodGet, "/admin/v1/sessions/"+mine[0].SessionID)
		if res.status != http.StatusOK {
			t.Fatalf("= %d %s, want 200", res.status, res.body)
		}
		if cc := res.header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control = %q, want no-store", cc)
		}
		var fields map[string]any
		res.decode(t, &fields)
		keys := slices.Sorted(maps.Keys(fields))
		if want := []string{"client_id", "created_at", "expires_at", "ip", "last_used_at", "session_id", "sub", "user_agent"}; !slices.Equal(keys, want) {
			t.Errorf("fields = %v, want exactly %v", keys, want)
		}
		var got adminSession
		res.decode(t, &got)
		want := adminSession{
			SessionID: mine[0].SessionID,
			Sub:       devidp.DemoSubject,
			ClientID:  s.idp.ClientID(),
			IP:        "127.0.0.1",
			UserAgent: devices[0],
		}
		if got.SessionID != want.SessionID || got.Sub != want.Sub || got.ClientID != want.ClientID || got.IP != want.IP || got.UserAgent != want.UserAgent {
			t.Errorf("session = %+v, want %+v", got, want)
		}
		if got.CreatedAt.IsZero() || got.LastUsedAt.Before(got.CreatedAt) || !got.ExpiresAt.After(got.CreatedAt) {
			t.Errorf("created_at %v, last_used_at %v, expires_at %v: want created <= last used < expires", got.CreatedAt, got.LastUsedAt, got.ExpiresAt)
		}
		if got.CreatedAt.Location() != time.UTC {
			t.Errorf("created_at %v is not in UTC", got.CreatedAt)
		}
		if strings.Contains(string(res.body), mine[0].Session) {
			t.Error("the session object holds the handle")
		}
	})

	list := func(t *testing.T, escapedSub string) (response, []adminSession) {
		t.Helper()
		res := s.admin(brokers[1], http.MethodGet, "/admin/v1/users/"+escapedSub+"/sessions")
		if res.status != http.StatusOK {
			t.Fatalf("GET /admin/v1/users/%s/sessions = %d %s, want 200", escapedSub, res.status, res.body)
		}
		var out struct {
			Sessions []adminSession `json:"sessions"`
		}
		res.decode(t, &out)
		return res, out.Sessions
	}
	// "demo%2Duser" is escaped where Go would not escape: Echo then
	// matches the raw path, and the handler must unescape the subject.
	for _, escaped := range []string{devidp.DemoSubject, "demo%2Duser"} {
		t.Run("list "+escaped, func(t *testing.T) {
			_, got := list(t, escaped)
			var ids, agents []string
			for _, g := range got {
				ids, agents = append(ids, g.SessionID), append(agents, g.UserAgent)
			}
			want := []string{mine[2].SessionID, mine[1].SessionID, mine[0].SessionID}
			if !slices.Equal(ids, want) {
				t.Errorf("sessions = %v, want newest first %v", ids, want)
			}
			if wantAgents := []string{devices[2], devices[1], devices[0]}; !slices.Equal(agents, wantAgents) {
				t.Errorf("user agents = %q, want %q", agents, wantAgents)
			}
		})
	}
	t.Run("list of an unknown user with | in the sub", func(t *testing.T) {
		res, got := list(t, "auth0%7C123")
		if len(got) != 0 || !strings.Contains(string(res.body), `"sessions":[]`) {
			t.Errorf("= %s, want {\"sessions\": []}", res.body)
		}
	})

	t.Run("revoke all", func(t *testing.T) {
		revokedBefore := len(s.idp.Revoked())
		res := s.admin(brokers[0], http.MethodDelete, "/admin/v1/users/"+devidp.DemoSubject+"/sessions")
		if res.status != http.StatusOK {
			t.Fatalf("DELETE /admin/v1/users/{sub}/sessions = %d %s, want 200", res.status, res.body)
		}
		var got struct {
			Revoked  *int `json:"revoked"`
			Failures *int `json:"idp_revocation_failures"`
		}
		res.decode(t, &got)
		if got.Revoked == nil || *got.Revoked != 3 || got.Failures == nil || *got.Failures != 0 {
			t.Errorf("= %s, want {\"revoked\": 3, \"idp_revocation_failures\": 0}", res.body)
		}
		if n := len(s.idp.Revoked()) - revokedBefore; n != 3 {
			t.Errorf("the IdP saw %d revocations, want 3", n)
		}
		for _, c := range mine {
			wantStatus(t, brokers, "/api/x", c.Session, http.StatusUnauthorized)
		}
		wantStatus(t, brokers, "/v1/session", theirs.Session, http.StatusOK)
		if _, left := list(t, devidp.DemoSubject); len(left) != 0 {
			t.Errorf("after revoking all, %d sessions are listed", len(left))
		}
		res = s.admin(brokers[0], http.MethodDelete, "/admin/v1/users/"+devidp.DemoSubject+"/sessions")
		if res.status != http.StatusOK || !strings.Contains(string(res.body), `"revoked":0`) {
			t.Errorf("second revoke all = %d %s, want 200 with revoked 0", res.status, res.body)
		}
	})
}

func TestAdminAuthentication(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	c := s.login(b)
	_, token := s.adminToken()
	wrong := "Z" + token[1:]
	if token[0] == 'Z' {
		wrong = "Y" + token[1:]
	}

	paths := []struct{ method, path string }{
		{http.MethodGet, "/admin/v1/users/" + devidp.DemoSubject + "/sessions"},
		{http.MethodGet, "/admin/v1/sessions/" + c.SessionID},
		{http.MethodDelete, "/admin/v1/sessions/" + c.SessionID},
		{http.MethodDelete, "/admin/v1/users/" + devidp.DemoSubject + "/sessions"},
		{http.MethodGet, "/admin/v1/audit"},
		{http.MethodGet, "/admin/v1/unknown"},
	}
	creds := []struct {
		name, auth, challenge string
	}{
		{"no credentials", "", "Bearer"},
		{"wrong token", "Bearer " + wrong, `Bearer error="invalid_token"`},
		{"empty bearer", "Bearer ", `Bearer error="invalid_token"`},
		{"name and token", "Bearer secops:" + token, `Bearer error="invalid_token"`},
		{"basic", "Basic c2Vjb3BzOnNlY3JldA==", `Bearer error="invalid_token"`},
	}
	for _, cr := range creds {
		for _, p := range paths {
			t.Run(cr.name+" "+p.method+" "+p.path, func(t *testing.T) {
				h := http.Header{}
				if cr.auth != "" {
					h.Set("Authorization", cr.auth)
				}
				res := doURL(t, p.method, b.admin+p.path, "", nil, h)
				if res.status != http.StatusUnauthorized {
					t.Fatalf("= %d %s, want 401", res.status, res.body)
				}
				if got := res.errorCode(t); got != "invalid_token" {
					t.Errorf("error = %q, want invalid_token", got)
				}
				if got := res.header.Get("WWW-Authenticate"); got != cr.challenge {
					t.Errorf("WWW-Authenticate = %q, want %q", got, cr.challenge)
				}
			})
		}
	}
	wantStatus(t, []*instance{b}, "/v1/session", c.Session, http.StatusOK)

	t.Run("refusals are audited without the token", func(t *testing.T) {
		events, res := s.audit(b, "1000")
		details := map[string]int{}
		for _, e := range events {
			if e.Action != "admin.denied" {
				continue
			}
			if e.Outcome != "error" {
				t.Errorf("admin.denied outcome = %q, want error", e.Outcome)
			}
			details[e.Detail]++
		}
		if n := details["GET /admin/v1/audit: no credentials"]; n != 1 {
			t.Errorf("%d admin.denied events for a call without credentials, want 1; have %v", n, details)
		}
		if n := details["GET /admin/v1/audit: wrong token"]; n != 4 {
			t.Errorf("%d admin.denied events for calls with a wrong token, want 4; have %v", n, details)
		}
		if n := details["DELETE /admin/v1/sessions/:id: wrong token"]; n != 4 {
			t.Errorf("%d admin.denied events for DELETE with a wrong token, want 4; have %v", n, details)
		}
		if strings.Contains(string(res.body), wrong) || strings.Contains(string(res.body), token) {
			t.Error("the audit trail holds an admin token")
		}
	})

	t.Run("BROKER_ADMIN_TOKENS unset", func(t *testing.T) {
		closed, err := s.tryStart(map[string]string{"BROKER_ADMIN_TOKENS": ""})
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
		for _, p := range paths {
			if res := doURL(t, p.method, closed.admin+p.path, token, nil, nil); res.status != http.StatusUnauthorized {
				t.Errorf("%s %s = %d, want 401", p.method, p.path, res.status)
			}
		}
		if !strings.Contains(closed.logs.String(), "BROKER_ADMIN_TOKENS is not set") {
			t.Error("no warning at start that the admin API is closed")
		}
		wantStatus(t, []*instance{closed}, "/v1/session", c.Session, http.StatusOK)
	})

	t.Run("invalid BROKER_ADMIN_TOKENS", func(t *testing.T) {
		_, err := s.tryStart(map[string]string{"BROKER_ADMIN_TOKENS": "secops:" + token + ",ci:"})
		if err == nil {
			t.Fatal("serve started with an empty admin token")
		}
		msg := err.Error()
		if !strings.Contains(msg, "BROKER_ADMIN_TOKENS") || !strings.Contains(msg, "entry 2") {
			t.Errorf("error %q does not name the variable and the entry", msg)
		}
		if strings.Contains(msg, token) {
			t.Errorf("error %q shows a token", msg)
		}
	})

	t.Run("weak BROKER_ADMIN_TOKENS start with a warning", func(t *testing.T) {
		short := "short-secret"
		weak, err := s.tryStart(map[string]string{"BROKER_ADMIN_TOKENS": "ci:" + short})
		if err != nil {
			t.Fatalf("serve with a short admin token: %v", err)
		}
		logs := weak.logs.String()
		if !strings.Contains(logs, "entry 1 (ci) is shorter than 16 characters") {
			t.Errorf("no warning about the short token in the logs")
		}
		if strings.Contains(logs, short) {
			t.Errorf("the logs show the short token")
		}
		if res := doURL(t, http.MethodGet, weak.admin+"/admin/v1/audit", short, nil, nil); res.status != http.StatusOK {
			t.Errorf("GET /admin/v1/audit with the short token = %d, want 200", res.status)
		}
	})

	t.Run("several tokens, each its own actor", func(t *testing.T) {
		second := randomKey(t)
		multi, err := s.tryStart(map[string]string{"BROKER_ADMIN_TOKENS": "secops:" + token + ", " + second})
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
		victim := s.login(multi)
		if res := doURL(t, http.MethodDelete, multi.admin+"/admin/v1/sessions/"+victim.SessionID, second, nil, nil); res.status != http.StatusNoContent {
			t.Fatalf("DELETE with the unnamed token = %d %s, want 204", res.status, res.body)
		}
		events, _ := s.audit(multi, "1")
		if len(events) != 1 || events[0].Action != "session.revoke" || events[0].Actor != "admin" || events[0].SessionID != victim.SessionID {
			t.Errorf("newest event = %+v, want session.revoke of %s by admin", events, victim.SessionID)
		}
	})
}

func TestAdminAuditTrail(t *testing.T) {
	s := newStack(t, stackOptions{})
	b1, b2 := s.start(), s.start()
	name, token := s.adminToken()
	var handles []created

	// session.revoke by the admin token's name.
	revoked := s.login(b1)
	handles = append(handles, revoked)
	if res := s.admin(b2, http.MethodDelete, "/admin/v1/sessions/"+revoked.SessionID); res.status != http.StatusNoContent {
		t.Fatalf("admin revoke = %d %s", res.status, res.body)
	}
	// logout by the user.
	loggedOut := s.login(b2)
	handles = append(handles, loggedOut)
	if res := do(t, b1, http.MethodDelete, "/v1/session", loggedOut.Session, nil); res.status != http.StatusNoContent {
		t.Fatalf("logout = %d %s", res.status, res.body)
	}
	// refresh_rejected by the broker: the IdP ended the grant, and the
	// access token has expired.
	rejected := s.login(b1)
	handles = append(handles, rejected)
	s.idp.TerminateSessions(devidp.DemoSubject)
	s.clock.Advance(devidp.DefaultAccessTokenTTL + time.Minute)
	if res := do(t, b2, http.MethodGet, "/api/x", rejected.Session, nil); res.status != http.StatusUnauthorized {
		t.Fatalf("request after the IdP ended the grant = %d %s, want 401", res.status, res.body)
	}
	// user.revoke by the admin token's name.
	for range 2 {
		handles = append(handles, s.login(b2))
	}
	if res := s.admin(b1, http.MethodDelete, "/admin/v1/users/"+devidp.DemoSubject+"/sessions"); res.status != http.StatusOK || !strings.Contains(string(res.body), `"revoked":2`) {
		t.Fatalf("admin revoke all = %d %s, want 200 with revoked 2", res.status, res.body)
	}
	// admin.denied for an unknown caller.
	if res := doURL(t, http.MethodGet, b1.admin+"/admin/v1/audit", "not-the-token", nil, nil); res.status != http.StatusUnauthorized {
		t.Fatalf("audit with a wrong token = %d, want 401", res.status)
	}

	events, res := s.audit(b2, "")
	type summary struct{ actor, action, sessionID, sub, outcome string }
	var got []summary
	for _, e := range events {
		got = append(got, summary{e.Actor, e.Action, e.SessionID, e.Sub, e.Outcome})
	}
	want := []summary{
		{"unknown", "admin.denied", "", "", "error"},
		{name, "user.revoke", "", devidp.DemoSubject, "ok"},
		{"broker", "refresh_rejected", rejected.SessionID, devidp.DemoSubject, "ok"},
		{"user", "logout", loggedOut.SessionID, devidp.DemoSubject, "ok"},
		{name, "session.revoke", revoked.SessionID, devidp.DemoSubject, "ok"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit trail, newest first:\n got %v\nwant %v", got, want)
	}
	var prev time.Time
	for i, e := range events {
		tm, err := time.Parse(time.RFC3339, e.Time)
		if err != nil {
			t.Errorf("event %d: time %q is not RFC 3339", i, e.Time)
			continue
		}
		if i > 0 && tm.After(prev) {
			t.Errorf("event %d at %v is newer than event %d at %v", i, tm, i-1, prev)
		}
		prev = tm
	}
	if len(events) > 1 && !strings.Contains(events[1].Detail, "2 sessions ended") {
		t.Errorf("user.revoke detail = %q, want the count", events[1].Detail)
	}
	var raw map[string][]map[string]any
	res.decode(t, &raw)
	for _, k := range []string{"time", "actor", "action", "session_id", "sub", "outcome", "detail"} {
		if _, ok := raw["events"][0][k]; !ok {
			t.Errorf("event has no %q field: %v", k, raw["events"][0])
		}
	}

	secrets := []string{token, "not-the-token"}
	for _, c := range handles {
		secrets = append(secrets, c.Session, c.IDToken)
	}
	secrets = append(secrets, s.idp.IssuedRefreshTokens()...)
	for _, secret := range secrets {
		if strings.Contains(string(res.body), secret) {
			t.Errorf("the audit trail holds a handle or token")
		}
	}

	t.Run("limit", func(t *testing.T) {
		events, _ := s.audit(b1, "2")
		if len(events) != 2 || events[0].Action != "admin.denied" || events[1].Action != "user.revoke" {
			t.Errorf("limit=2 gave %+v, want the 2 newest events", events)
		}
	})
	for _, limit := range []string{"0", "-1", "1001", "ten", "1e2"} {
		t.Run("limit="+limit, func(t *testing.T) {
			res := s.admin(b1, http.MethodGet, "/admin/v1/audit?limit="+limit)
			if res.status != http.StatusBadRequest {
				t.Fatalf("= %d %s, want 400", res.status, res.body)
			}
			if got := res.errorCode(t); got != "invalid_request" {
				t.Errorf("error = %q, want invalid_request", got)
			}
		})
	}
	t.Run("limit=1000", func(t *testing.T) {
		if events, _ := s.audit(b1, "1000"); len(events) != len(want) {
			t.Errorf("%d events, want %d", len(events), len(want))
		}
	})
}

// Revocation at the IdP is best effort: the session ends in the broker
// whatever the IdP answers, and the audit trail says what failed.
func TestAdminRevokeWhileTheIdPFails(t *testing.T) {
	s := newStack(t, stackOptions{})
	b1, b2 := s.start(), s.start()
	one := s.login(b1)
	rest := []created{s.login(b2), s.login(b1)}
	revokedBefore := len(s.idp.Revoked())

	s.idp.SetFailure(http.StatusServiceUnavailable)
	res := s.admin(b1, http.MethodDelete, "/admin/v1/sessions/"+one.SessionID)
	if res.status != http.StatusNoContent {
		t.Fatalf("DELETE session while the IdP fails = %d %s, want 204", res.status, res.body)
	}
	all := s.admin(b2, http.MethodDelete, "/admin/v1/users/"+devidp.DemoSubject+"/sessions")
	s.idp.SetFailure(0)
	var got struct {
		Revoked  int `json:"revoked"`
		Failures int `json:"idp_revocation_failures"`
	}
	all.decode(t, &got)
	if all.status != http.StatusOK || got.Revoked != 2 || got.Failures != 2 {
		t.Errorf("revoke all while the IdP fails = %d %s, want 200 with revoked 2, idp_revocation_failures 2", all.status, all.body)
	}

	for _, c := range append(rest, one) {
		wantStatus(t, []*instance{b1, b2}, "/v1/session", c.Session, http.StatusUnauthorized)
	}
	if n := len(s.idp.Revoked()) - revokedBefore; n != 0 {
		t.Errorf("the failing IdP recorded %d revocations", n)
	}
	events, _ := s.audit(b1, "2")
	if len(events) != 2 {
		t.Fatalf("%d events, want 2", len(events))
	}
	if e := events[1]; e.Action != "session.revoke" || e.SessionID != one.SessionID || e.Outcome != "error" || !strings.Contains(e.Detail, "identity provider") {
		t.Errorf("session.revoke event = %+v, want outcome error with the IdP failure in detail", e)
	}
	if e := events[0]; e.Action != "user.revoke" || e.Outcome != "error" || !strings.Contains(e.Detail, "failed to revoke 2") {
		t.Errorf("user.revoke event = %+v, want outcome error naming 2 failures", e)
	}
	if b, _ := json.Marshal(events); strings.Contains(string(b), one.Session) {
		t.Error("the audit trail holds a handle")
	}
}
