package main

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// searchPage is a page of GET /admin/v1/sessions.
type searchPage struct {
	Sessions []struct {
		adminSession
		Unreadable bool `json:"unreadable"`
	} `json:"sessions"`
	NextCursor string `json:"next_cursor"`
}

// auditPage is a page of GET /admin/v1/audit.
type auditPage struct {
	Events []struct {
		ID        string `json:"id"`
		Time      string `json:"time"`
		Actor     string `json:"actor"`
		Action    string `json:"action"`
		SessionID string `json:"session_id"`
		Sub       string `json:"sub"`
		Outcome   string `json:"outcome"`
		IP        string `json:"ip"`
		UserAgent string `json:"user_agent"`
		RequestID string `json:"request_id"`
	} `json:"events"`
	NextCursor string `json:"next_cursor"`
}

// walk follows the pages of an admin listing from query, collecting what
// each page yields, and fails on a page over limit or a walk that does not
// end.
func walk[P any](s *stack, inst *instance, path string, query url.Values, limit int, items func(P) ([]string, string)) []string {
	s.t.Helper()
	query.Set("limit", strintn(limit))
	var got []string
	for pages := 0; ; pages++ {
		if pages > 50 {
			s.t.Fatalf("GET %s?%s: the pages do not end", path, query.Encode())
		}
		res := s.admin(inst, http.MethodGet, path+"?"+query.Encode())
		if res.status != http.StatusOK {
			s.t.Fatalf("GET %s?%s = %d %s, want 200", path, query.Encode(), res.status, res.body)
		}
		var p P
		res.decode(s.t, &p)
		page, next := items(p)
		if len(page) > limit {
			s.t.Fatalf("GET %s?%s gave %d items, over its limit", path, query.Encode(), len(page))
		}
		got = append(got, page...)
		if next == "" {
			return got
		}
		query.Set("cursor", next)
	}
}

func strintn(n int) string { return strconv.Itoa(n) }

func sessionIDsOf(p searchPage) ([]string, string) {
	var ids []string
	for _, s := range p.Sessions {
		ids = append(ids, s.SessionID)
	}
	return ids, p.NextCursor
}

func TestAdminSessionSearch(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()

	// Newest first: the sessions open a second apart.
	var all, demo, other []string
	for i := range 5 {
		var c created
		if i%2 == 0 {
			c = s.loginFrom(b, devidp.DemoUsername, devidp.DemoPassword, "DemoApp/1.0")
			demo = append([]string{c.SessionID}, demo...)
		} else {
			c = s.loginFrom(b, devidp.OtherUsername, devidp.OtherPassword, "OtherApp/1.0")
			other = append([]string{c.SessionID}, other...)
		}
		all = append([]string{c.SessionID}, all...)
		s.clock.Advance(time.Second)
	}
	ended := s.login(b)
	if res := s.admin(b, http.MethodDelete, "/admin/v1/sessions/"+ended.SessionID); res.status != http.StatusNoContent {
		t.Fatalf("admin revoke = %d %s", res.status, res.body)
	}
	otherSub := s.subjectOf(b, other[0])

	for _, tc := range []struct {
		name  string
		query url.Values
		want  []string
	}{
		{"every session", url.Values{}, all},
		{"by subject", url.Values{"sub": {devidp.DemoSubject}}, demo},
		{"by another subject", url.Values{"sub": {otherSub}}, other},
		{"unknown subject", url.Values{"sub": {"auth0|nobody"}}, nil},
		{"by session id", url.Values{"session_id": {demo[1]}}, demo[1:2]},
		{"by session id and its subject", url.Values{"session_id": {demo[1]}, "sub": {devidp.DemoSubject}}, demo[1:2]},
		{"by session id and another subject", url.Values{"session_id": {demo[1]}, "sub": {otherSub}}, nil},
		{"an ended session", url.Values{"session_id": {ended.SessionID}}, nil},
		{"a malformed session id", url.Values{"session_id": {"not a session id"}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, limit := range []int{1, 2, 100} {
				got := walk(s, b, "/admin/v1/sessions", cloneValues(tc.query), limit, sessionIDsOf)
				if !slices.Equal(got, tc.want) {
					t.Errorf("limit %d: pages = %v, want %v", limit, got, tc.want)
				}
			}
		})
	}

	t.Run("the session objects", func(t *testing.T) {
		res := s.admin(b, http.MethodGet, "/admin/v1/sessions?limit=1")
		var p searchPage
		res.decode(t, &p)
		if len(p.Sessions) != 1 || p.NextCursor == "" {
			t.Fatalf("first page of 1 = %s, want one session and a next_cursor", res.body)
		}
		got := p.Sessions[0]
		if got.SessionID != all[0] || got.UserAgent != "DemoApp/1.0" || got.IP == "" || got.Sub != devidp.DemoSubject || got.Unreadable {
			t.Errorf("newest session = %+v, want %s of %s opened by DemoApp/1.0", got, all[0], devidp.DemoSubject)
		}
		if res.header.Get("Cache-Control") != "no-store" {
			t.Errorf("Cache-Control = %q, want no-store", res.header.Get("Cache-Control"))
		}
	})

	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "cursor=garbage", "cursor=1.short", "sub=" + strings.Repeat("x", 1025)} {
		t.Run(q[:min(len(q), 20)], func(t *testing.T) {
			res := s.admin(b, http.MethodGet, "/admin/v1/sessions?"+q)
			if res.status != http.StatusBadRequest || res.errorCode(t) != "invalid_request" {
				t.Errorf("GET /admin/v1/sessions?%.30s = %d %s, want 400 invalid_request", q, res.status, res.body)
			}
		})
	}
	if res := doURL(t, http.MethodGet, b.admin+"/admin/v1/sessions", "", nil, nil); res.status != http.StatusUnauthorized {
		t.Errorf("GET /admin/v1/sessions without a token = %d, want 401", res.status)
	}
}

// subjectOf reads a session's subject through the admin API.
func (s *stack) subjectOf(inst *instance, sessionID string) string {
	s.t.Helper()
	res := s.admin(inst, http.MethodGet, "/admin/v1/sessions/"+sessionID)
	var a adminSession
	res.decode(s.t, &a)
	return a.Sub
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = slices.Clone(vs)
	}
	return out
}

func TestAdminAuditSearch(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	name, _ := s.adminToken()

	start := s.clock.Now()
	// Events a second apart: a logout, two admin revocations, a refused
	// admin call with a request id of its own.
	first := s.loginFrom(b, devidp.DemoUsername, devidp.DemoPassword, "DemoApp/1.0")
	res := doURL(t, http.MethodDelete, b.base+"/v1/session", first.Session, nil, http.Header{"User-Agent": {"DemoApp/1.0"}, "X-Request-Id": {"logout-1"}})
	if res.status != http.StatusNoContent {
		t.Fatalf("logout = %d %s", res.status, res.body)
	}
	s.clock.Advance(time.Second)
	var revoked []string
	for range 2 {
		c := s.login(b)
		revoked = append(revoked, c.SessionID)
		if res := s.admin(b, http.MethodDelete, "/admin/v1/sessions/"+c.SessionID); res.status != http.StatusNoContent {
			t.Fatalf("admin revoke = %d %s", res.status, res.body)
		}
		s.clock.Advance(time.Second)
	}
	probe := doURL(t, http.MethodGet, b.admin+"/admin/v1/sessions", "not-the-token", nil,
		http.Header{"User-Agent": {"Prober/0.1 " + strings.Repeat("x", 400)}, "X-Request-Id": {"probe-42"}})
	if probe.status != http.StatusUnauthorized {
		t.Fatalf("a wrong admin token = %d, want 401", probe.status)
	}

	actions := func(p auditPage) ([]string, string) {
		var out []string
		for _, e := range p.Events {
			out = append(out, e.Action+":"+e.SessionID)
		}
		return out, p.NextCursor
	}
	denied := "admin.denied:"
	logout := "logout:" + first.SessionID
	rev0, rev1 := "session.revoke:"+revoked[0], "session.revoke:"+revoked[1]
	rfc := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	for _, tc := range []struct {
		name  string
		query url.Values
		want  []string
	}{
		{"everything", url.Values{}, []string{denied, rev1, rev0, logout}},
		{"action", url.Values{"action": {"session.revoke"}}, []string{rev1, rev0}},
		{"actor", url.Values{"actor": {name}}, []string{rev1, rev0}},
		{"actor user", url.Values{"actor": {"user"}}, []string{logout}},
		{"subject", url.Values{"sub": {devidp.DemoSubject}}, []string{rev1, rev0, logout}},
		{"session", url.Values{"session_id": {revoked[0]}}, []string{rev0}},
		{"since", url.Values{"since": {rfc(start.Add(time.Second))}}, []string{denied, rev1, rev0}},
		{"until", url.Values{"until": {rfc(start.Add(time.Second))}}, []string{logout}},
		{"since and until", url.Values{"since": {rfc(start.Add(time.Second))}, "until": {rfc(start.Add(2 * time.Second))}}, []string{rev0}},
		{"no match", url.Values{"action": {"expired"}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, limit := range []int{1, 2, 100} {
				got := walk(s, b, "/admin/v1/audit", cloneValues(tc.query), limit, actions)
				if !slices.Equal(got, tc.want) {
					t.Errorf("limit %d: pages = %v, want %v", limit, got, tc.want)
				}
			}
		})
	}

	t.Run("where a refused call came from", func(t *testing.T) {
		res := s.admin(b, http.MethodGet, "/admin/v1/audit?action=admin.denied")
		var p auditPage
		res.decode(t, &p)
		if len(p.Events) != 1 {
			t.Fatalf("admin.denied events = %s, want one", res.body)
		}
		e := p.Events[0]
		if e.IP != "127.0.0.1" || e.RequestID != "probe-42" || !strings.HasPrefix(e.UserAgent, "Prober/0.1 ") || len(e.UserAgent) > 256 || e.ID == "" {
			t.Errorf("admin.denied = %+v, want ip 127.0.0.1, request id probe-42, the user agent cut to 256 bytes and an id", e)
		}
		if strings.Contains(string(res.body), "not-the-token") {
			t.Errorf("the audit trail holds the presented token: %s", res.body)
		}
	})
	t.Run("the logout's client", func(t *testing.T) {
		res := s.admin(b, http.MethodGet, "/admin/v1/audit?action=logout")
		var p auditPage
		res.decode(t, &p)
		if len(p.Events) != 1 || p.Events[0].UserAgent != "DemoApp/1.0" || p.Events[0].RequestID != "logout-1" || p.Events[0].IP != "127.0.0.1" {
			t.Errorf("logout events = %s, want DemoApp/1.0, logout-1 and 127.0.0.1", res.body)
		}
	})

	for _, q := range []string{"since=yesterday", "until=2026-13-01T00:00:00Z", "since=2026-03-02T00:00:00Z&until=2026-03-01T00:00:00Z",
		"cursor=garbage", "cursor=1-2-3", "limit=0", "action=" + strings.Repeat("x", 1025)} {
		t.Run(q[:min(len(q), 20)], func(t *testing.T) {
			res := s.admin(b, http.MethodGet, "/admin/v1/audit?"+q)
			if res.status != http.StatusBadRequest || res.errorCode(t) != "invalid_request" {
				t.Errorf("GET /admin/v1/audit?%.40s = %d %s, want 400 invalid_request", q, res.status, res.body)
			}
		})
	}
}
