package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// fakeAdmin is an admin API that answers as CONTRACT.md says, for the unit
// tests of the CLI; the end-to-end test below runs against a real broker.
type fakeAdmin struct {
	*httptest.Server
	token string

	mu       sync.Mutex
	requests []string // method and escaped request URI
	auths    []string
}

const fakeAdminToken = "fake-admin-token-Zm9vYmFy"

var fakeSessions = []map[string]any{
	{
		"session_id": "s1", "sub": "auth0|123", "client_id": "app",
		"created_at": "2025-03-01T10:00:00.123+01:00", "last_used_at": "2025-03-01T09:30:00Z", "expires_at": "2025-03-31T09:00:00Z",
		"ip": "203.0.113.7", "user_agent": "ExampleApp/4.2 (iPhone; iOS 18.1; Scale/3.00) CFNetwork/1568 Darwin/24.1.0",
	},
	{
		"session_id": "s2", "sub": "auth0|123", "client_id": "app",
		"created_at": "2025-03-02T08:00:00Z", "last_used_at": "0001-01-01T00:00:00Z", "expires_at": "2025-04-01T08:00:00Z",
		"ip": "2001:db8::1", "user_agent": "evil\x1b[2J\tagent",
	},
}

var fakeEvents = []map[string]any{
	{"id": "1740906000000-0", "time": "2025-03-02T09:00:00Z", "actor": "secops", "action": "user.revoke", "session_id": "", "sub": "auth0|123", "outcome": "ok", "detail": "",
		"ip": "198.51.100.4", "user_agent": "curl/8.5.0", "request_id": "req-7"},
	{"id": "1740905940000-0", "time": "2025-03-02T08:59:00Z", "actor": "secops", "action": "session.revoke", "session_id": "s1", "sub": "auth0|123", "outcome": "error", "detail": "idp: revocation endpoint answered 503",
		"ip": "198.51.100.4", "user_agent": "curl/8.5.0", "request_id": "req-6"},
	{"id": "1740905000000-0", "time": "2025-03-02T08:43:20Z", "actor": "unknown", "action": "admin.denied", "session_id": "", "sub": "", "outcome": "error", "detail": "GET /admin/v1/sessions: wrong token",
		"ip": "203.0.113.99", "user_agent": "", "request_id": ""},
}

func newFakeAdmin(t *testing.T) *fakeAdmin {
	t.Helper()
	f := &fakeAdmin{token: fakeAdminToken}
	writeJSON := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	notFound := func(w http.ResponseWriter) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found", "error_description": "no such session"})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/v1/users/{sub}/sessions", func(w http.ResponseWriter, r *http.Request) {
		list := []map[string]any{}
		if r.PathValue("sub") == "auth0|123" {
			list = fakeSessions
		}
		writeJSON(w, http.StatusOK, map[string]any{"sessions": list})
	})
	mux.HandleFunc("DELETE /admin/v1/users/{sub}/sessions", func(w http.ResponseWriter, r *http.Request) {
		n := 0
		if r.PathValue("sub") == "auth0|123" {
			n = 2
		}
		writeJSON(w, http.StatusOK, map[string]any{"revoked": n, "idp_revocation_failures": n / 2})
	})
	mux.HandleFunc("GET /admin/v1/sessions/{id}", func(w http.ResponseWriter, r *http.Request) {
		for _, s := range fakeSessions {
			if s["session_id"] == r.PathValue("id") {
				writeJSON(w, http.StatusOK, s)
				return
			}
		}
		notFound(w)
	})
	mux.HandleFunc("DELETE /admin/v1/sessions/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "s1" {
			notFound(w)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	// The listings page by index: cursor= is the index of the page's first
	// item. A subject "endless" has pages without end.
	page := func(w http.ResponseWriter, r *http.Request, key string, all []map[string]any) {
		limit, err := strconv.Atoi(r.URL.Query().Get("limit"))
		if err != nil || limit < 1 || limit > 1000 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": "limit must be an integer from 1 to 1000"})
			return
		}
		from, _ := strconv.Atoi(r.URL.Query().Get("cursor"))
		if r.URL.Query().Get("sub") == "endless" {
			writeJSON(w, http.StatusOK, map[string]any{key: all[:1], "next_cursor": strconv.Itoa(from + 1)})
			return
		}
		out := map[string]any{key: []map[string]any{}}
		if from < len(all) {
			out[key] = all[from:min(from+limit, len(all))]
		}
		if from+limit < len(all) {
			out["next_cursor"] = strconv.Itoa(from + limit)
		}
		writeJSON(w, http.StatusOK, out)
	}
	mux.HandleFunc("GET /admin/v1/sessions", func(w http.ResponseWriter, r *http.Request) {
		var list []map[string]any
		for _, s := range fakeSessions {
			if q := r.URL.Query(); (q.Get("sub") == "" || q.Get("sub") == s["sub"] || q.Get("sub") == "endless") && (q.Get("session_id") == "" || q.Get("session_id") == s["session_id"]) {
				list = append(list, s)
			}
		}
		page(w, r, "sessions", list)
	})
	mux.HandleFunc("GET /admin/v1/audit", func(w http.ResponseWriter, r *http.Request) {
		page(w, r, "events", fakeEvents)
	})
	mux.HandleFunc("GET /admin/v1/broken", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream exploded", http.StatusBadGateway)
	})
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r.Method+" "+r.URL.RequestURI())
		f.auths = append(f.auths, r.Header.Get("Authorization"))
		f.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+f.token {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token", "error_description": "unknown admin token"})
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeAdmin) seen() (requests, auths []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...), append([]string(nil), f.auths...)
}

// getenvOf returns a getenv for run from pairs of names and values.
func getenvOf(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

// runCLI runs the broker command with args and returns what it printed.
func runCLI(t *testing.T, getenv func(string) string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err = run(context.Background(), args, getenv, &out, &errOut)
	return out.String(), errOut.String(), err
}

func TestCLIUsageErrors(t *testing.T) {
	f := newFakeAdmin(t)
	getenv := getenvOf("BROKER_ADMIN_URL", f.URL, "BROKER_ADMIN_TOKEN", fakeAdminToken)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(fakeAdminToken), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  func(string) string
		args []string
		want string
	}{
		{"no subcommand", getenv, []string{"sessions"}, "want a subcommand: list, revoke, show"},
		{"unknown subcommand", getenv, []string{"sessions", "kill"}, `unknown subcommand "kill"; want one of list, revoke, show`},
		{"list with empty --sub", getenv, []string{"sessions", "list", "--sub", ""}, "--sub is empty; leave it out"},
		{"list with empty --id", getenv, []string{"sessions", "list", "--id="}, "--id is empty; leave it out"},
		{"list with positional sub", getenv, []string{"sessions", "list", "auth0|123"}, `unexpected argument "auth0|123"`},
		{"list with zero --limit", getenv, []string{"sessions", "list", "--limit", "0"}, "--limit must be from 1 to 1000, got 0"},
		{"list with --limit over the API's bound", getenv, []string{"sessions", "list", "--limit", "1001", "--all-pages"}, "--limit must be from 1 to 1000, got 1001"},
		{"show without --id", getenv, []string{"sessions", "show", "--json"}, "--id is required"},
		{"revoke without --id or --sub", getenv, []string{"sessions", "revoke"}, "give exactly one of --id SESSION_ID (one session) or --sub SUB"},
		{"revoke with --id and --sub", getenv, []string{"sessions", "revoke", "--id", "s1", "--sub", "auth0|123"}, "give exactly one of --id"},
		{"audit with non-numeric --limit", getenv, []string{"audit", "--limit", "ten"}, `invalid argument "ten" for "--limit" flag`},
		{"audit with zero --limit", getenv, []string{"audit", "--limit", "0"}, "--limit must be from 1 to 1000, got 0"},
		{"audit with negative --limit", getenv, []string{"audit", "--limit=-5"}, "--limit must be from 1 to 1000, got -5"},
		{"audit with a --since of no format", getenv, []string{"audit", "--since", "yesterday"}, `--since "yesterday": want an RFC 3339 time`},
		{"audit with a --until of a bad date", getenv, []string{"audit", "--until", "2026-13-01T00:00:00Z"}, `--until "2026-13-01T00:00:00Z": want an RFC 3339 time`},
		{"audit with a negative duration", getenv, []string{"audit", "--since=-1h"}, "a duration ago must be from 0 to 36500d"},
		{"audit with days out of bounds", getenv, []string{"audit", "--since", "99999999d"}, `--since "99999999d": want an RFC 3339 time`},
		{"audit with --since after --until", getenv, []string{"audit", "--since", "1h", "--until", "2h"}, "--since ("},
		{"audit with empty --action", getenv, []string{"audit", "--action", ""}, "--action is empty"},
		{"unknown flag", getenv, []string{"audit", "--from", "1h"}, "unknown flag: --from"},
		{"token and token file", getenv, []string{"audit", "--token", "x", "--token-file", tokenFile}, "either --token or --token-file, not both"},
		{"no token", getenvOf("BROKER_ADMIN_URL", f.URL), []string{"audit"}, "no admin token: set BROKER_ADMIN_TOKEN (or BROKER_ADMIN_TOKEN_FILE) or pass --token-file"},
		{"admin URL without scheme", getenv, []string{"audit", "--admin-url", "127.0.0.1:9090"}, "want http://host:port"},
		{"admin URL with a query", getenv, []string{"audit", "--admin-url", f.URL + "?x=1"}, "want http://host:port"},
		{"admin URL of another scheme", getenv, []string{"audit", "--admin-url", "ftp://broker"}, "want http://host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, _, err := runCLI(t, tt.env, tt.args...)
			if err == nil {
				t.Fatalf("run(%q) = nil, want an error containing %q", tt.args, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run(%q) = %q, want it to contain %q", tt.args, err, tt.want)
			}
			if !errors.Is(err, errUsage) {
				t.Errorf("run(%q) = %q, want a usage error (exit 2)", tt.args, err)
			}
			if !strings.Contains(err.Error(), "see 'broker ") {
				t.Errorf("run(%q) = %q, want it to point at the command's help", tt.args, err)
			}
			if stdout != "" {
				t.Errorf("run(%q) printed %q, want nothing", tt.args, stdout)
			}
		})
	}
	if reqs, _ := f.seen(); len(reqs) != 0 {
		t.Errorf("usage errors sent %q to the admin API, want nothing", reqs)
	}
}

func TestCLIHelp(t *testing.T) {
	getenv := getenvOf("BROKER_ADMIN_TOKEN", fakeAdminToken, "BROKER_ADMIN_URL", "http://admin.internal:9090")
	for _, args := range [][]string{
		{"sessions", "list", "-h"},
		{"sessions", "show", "--help"},
		{"sessions", "revoke", "-h"},
		{"sessions", "help"},
		{"audit", "-h"},
	} {
		stdout, stderr, err := runCLI(t, getenv, args...)
		if err != nil {
			t.Errorf("run(%q) = %v, want nil", args, err)
		}
		if !strings.Contains(stdout, "Usage:\n  broker "+strings.Join(args[:len(args)-1], " ")) {
			t.Errorf("run(%q) printed %q, want a usage text", args, stdout)
		}
		if strings.Contains(stdout+stderr, fakeAdminToken) {
			t.Errorf("run(%q) printed the admin token:\n%s", args, stdout+stderr)
		}
	}
}

func TestCLIOutput(t *testing.T) {
	f := newFakeAdmin(t)
	getenv := getenvOf("BROKER_ADMIN_URL", f.URL+"/", "BROKER_ADMIN_TOKEN", fakeAdminToken)

	t.Run("sessions list", func(t *testing.T) {
		stdout, stderr, err := runCLI(t, getenv, "sessions", "list", "--sub", "auth0|123")
		if err != nil || stderr != "" {
			t.Fatalf("sessions list = %v, stderr %q", err, stderr)
		}
		lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
		if len(lines) != 3 {
			t.Fatalf("sessions list printed %d lines, want a header and 2 rows:\n%s", len(lines), stdout)
		}
		if got := strings.Fields(lines[0]); strings.Join(got, " ") != "SESSION ID SUB CREATED LAST USED EXPIRES IP USER AGENT" {
			t.Errorf("header = %q", lines[0])
		}
		for _, want := range []string{"s1", "auth0|123", "2025-03-01T09:00:00Z", "2025-03-01T09:30:00Z", "2025-03-31T09:00:00Z", "203.0.113.7", "ExampleApp/4.2 (iPhone; iOS 18.1; Scale…"} {
			if !strings.Contains(lines[1], want) {
				t.Errorf("row 1 = %q, want it to contain %q", lines[1], want)
			}
		}
		if strings.Contains(lines[1], "CFNetwork") {
			t.Errorf("row 1 = %q, want the user agent truncated", lines[1])
		}
		if got := strings.Fields(lines[2]); len(got) != 7 || got[3] != "-" || got[6] != "evil?[2J?agent" {
			t.Errorf("row 2 = %q, want 7 columns, no last use as -, control characters replaced", lines[2])
		}
		if strings.ContainsAny(stdout, "\x1b\t") {
			t.Errorf("sessions list printed control characters: %q", stdout)
		}
	})
	t.Run("sessions list of an unknown user", func(t *testing.T) {
		stdout, _, err := runCLI(t, getenv, "sessions", "list", "--sub", "nobody")
		if err != nil || stdout != "no sessions of user nobody\n" {
			t.Errorf("sessions list = %q, %v; want the user has none", stdout, err)
		}
	})
	t.Run("sessions list --json", func(t *testing.T) {
		stdout, _, err := runCLI(t, getenv, "sessions", "list", "--sub", "auth0|123", "--json")
		if err != nil {
			t.Fatalf("sessions list --json = %v", err)
		}
		var got struct {
			Sessions []adminSession `json:"sessions"`
		}
		if err := json.Unmarshal([]byte(stdout), &got); err != nil || len(got.Sessions) != 2 || got.Sessions[1].UserAgent != "evil\x1b[2J\tagent" {
			t.Errorf("sessions list --json = %q (%v), want the API's 2 sessions as sent", stdout, err)
		}
		if !strings.HasPrefix(stdout, "{\n  \"sessions\": [\n") {
			t.Errorf("sessions list --json = %q, want it indented", stdout)
		}
	})
	t.Run("sessions show", func(t *testing.T) {
		stdout, _, err := runCLI(t, getenv, "sessions", "show", "--id", "s1")
		if err != nil {
			t.Fatalf("sessions show = %v", err)
		}
		for _, want := range []string{"SESSION ID  s1\n", "SUB         auth0|123\n", "CLIENT ID   app\n", "CREATED     2025-03-01T09:00:00Z\n", "USER AGENT  ExampleApp/4.2 (iPhone; iOS 18.1; Scale/3.00) CFNetwork/1568 Darwin/24.1.0\n"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("sessions show printed\n%s\nwant a line %q", stdout, want)
			}
		}
	})
	t.Run("sessions show --json", func(t *testing.T) {
		stdout, _, err := runCLI(t, getenv, "sessions", "show", "--id", "s1", "--json")
		var got adminSession
		if err != nil || json.Unmarshal([]byte(stdout), &got) != nil || got.SessionID != "s1" || got.ClientID != "app" {
			t.Errorf("sessions show --json = %q, %v; want session s1", stdout, err)
		}
	})
	t.Run("sessions show of an unknown session", func(t *testing.T) {
		_, _, err := runCLI(t, getenv, "sessions", "show", "--id", "gone")
		if err == nil || err.Error() != "admin API: 404 not_found: no such session" {
			t.Errorf("sessions show = %v, want admin API: 404 not_found: no such session", err)
		}
		if errors.Is(err, errUsage) {
			t.Errorf("sessions show = %v, want no usage error", err)
		}
	})
	t.Run("sessions revoke --id", func(t *testing.T) {
		stdout, _, err := runCLI(t, getenv, "sessions", "revoke", "--id", "s1")
		if err != nil || stdout != "revoked session s1\n" {
			t.Errorf("sessions revoke --id = %q, %v; want revoked session s1", stdout, err)
		}
		stdout, _, err = runCLI(t, getenv, "sessions", "revoke", "--id", "s1", "--json")
		if err != nil || stdout != "{\n  \"revoked\": 1,\n  \"session_id\": \"s1\"\n}\n" {
			t.Errorf("sessions revoke --id --json = %q, %v", stdout, err)
		}
	})
	t.Run("sessions revoke --sub", func(t *testing.T) {
		stdout, stderr, err := runCLI(t, getenv, "sessions", "revoke", "--sub", "auth0|123")
		if err != nil || stdout != "revoked 2 sessions of user auth0|123\n" {
			t.Errorf("sessions revoke --sub = %q, %v; want revoked 2 sessions of user auth0|123", stdout, err)
		}
		if !strings.Contains(stderr, "warning: the identity provider did not confirm the revocation of 1 refresh token;") {
			t.Errorf("sessions revoke --sub warned %q, want the IdP failure reported", stderr)
		}
		stdout, stderr, err = runCLI(t, getenv, "sessions", "revoke", "--sub", "nobody", "--json")
		if err != nil || stdout != "{\n  \"idp_revocation_failures\": 0,\n  \"revoked\": 0\n}\n" || stderr != "" {
			t.Errorf("sessions revoke --sub --json = %q, %q, %v; want the API's JSON", stdout, stderr, err)
		}
	})
	t.Run("audit", func(t *testing.T) {
		stdout, _, err := runCLI(t, getenv, "audit")
		if err != nil {
			t.Fatalf("audit = %v", err)
		}
		lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
		if len(lines) != 4 {
			t.Fatalf("audit printed %d lines, want a header and 3 rows:\n%s", len(lines), stdout)
		}
		want := [][]string{
			{"TIME", "ACTOR", "ACTION", "SESSION", "SUB", "OUTCOME", "IP", "USER", "AGENT", "REQUEST", "ID", "DETAIL"},
			{"2025-03-02T09:00:00Z", "secops", "user.revoke", "-", "auth0|123", "ok", "198.51.100.4", "curl/8.5.0", "req-7", "-"},
			{"2025-03-02T08:59:00Z", "secops", "session.revoke", "s1", "auth0|123", "error", "198.51.100.4", "curl/8.5.0", "req-6", "idp:", "revocation", "endpoint", "answered", "503"},
			{"2025-03-02T08:43:20Z", "unknown", "admin.denied", "-", "-", "error", "203.0.113.99", "-", "-", "GET", "/admin/v1/sessions:", "wrong", "token"},
		}
		for i, l := range lines {
			if got := strings.Join(strings.Fields(l), " "); got != strings.Join(want[i], " ") {
				t.Errorf("audit line %d = %q, want %q", i, got, want[i])
			}
		}
		// The columns line up.
		if strings.Index(lines[0], "OUTCOME") != strings.Index(lines[1], " ok ")+1 {
			t.Errorf("audit columns do not line up:\n%s", stdout)
		}
	})
	t.Run("audit --json", func(t *testing.T) {
		stdout, _, err := runCLI(t, getenv, "audit", "--limit", "5", "--json")
		var got struct {
			Events []auditEvent `json:"events"`
		}
		if err != nil || json.Unmarshal([]byte(stdout), &got) != nil || len(got.Events) != 3 {
			t.Fatalf("audit --json = %q, %v; want the API's 3 events", stdout, err)
		}
		if e := got.Events[0]; e.ID != "1740906000000-0" || e.IP != "198.51.100.4" || e.UserAgent != "curl/8.5.0" || e.RequestID != "req-7" {
			t.Errorf("audit --json event = %+v, want its id, ip, user_agent and request_id", e)
		}
	})

	reqs, _ := f.seen()
	for _, want := range []string{
		"GET /admin/v1/sessions?limit=100&sub=auth0%7C123",
		"GET /admin/v1/sessions/s1",
		"DELETE /admin/v1/sessions/s1",
		"DELETE /admin/v1/users/auth0%7C123/sessions",
		"GET /admin/v1/audit?limit=50",
		"GET /admin/v1/audit?limit=5",
	} {
		if !slices.Contains(reqs, want) {
			t.Errorf("the admin API saw %q, want %q among them", reqs, want)
		}
	}
}

func TestCLIPaging(t *testing.T) {
	f := newFakeAdmin(t)
	getenv := getenvOf("BROKER_ADMIN_URL", f.URL, "BROKER_ADMIN_TOKEN", fakeAdminToken)
	sent := func(before []string) []string {
		reqs, _ := f.seen()
		return reqs[len(before):]
	}

	t.Run("one page says how to go on", func(t *testing.T) {
		stdout, stderr, err := runCLI(t, getenv, "audit", "--limit", "2")
		if err != nil || strings.Count(stdout, "\n") != 3 {
			t.Fatalf("audit --limit 2 = %v, printed\n%s\nwant a header and 2 rows", err, stdout)
		}
		if stderr != "more events follow: add --cursor 2 for the next page, or --all-pages\n" {
			t.Errorf("audit --limit 2 wrote %q on stderr, want the cursor of the next page", stderr)
		}
		stdout, stderr, err = runCLI(t, getenv, "audit", "--limit", "2", "--cursor", "2")
		if err != nil || stderr != "" || !strings.Contains(stdout, "admin.denied") || strings.Count(stdout, "\n") != 2 {
			t.Errorf("audit --cursor 2 = %v, stderr %q, printed\n%s\nwant the last event and no hint", err, stderr, stdout)
		}
	})
	t.Run("all pages", func(t *testing.T) {
		before, _ := f.seen()
		stdout, stderr, err := runCLI(t, getenv, "audit", "--limit", "1", "--all-pages")
		if err != nil || stderr != "" || strings.Count(stdout, "\n") != 4 {
			t.Errorf("audit --limit 1 --all-pages = %v, stderr %q, printed\n%s\nwant a header and 3 rows", err, stderr, stdout)
		}
		want := []string{"GET /admin/v1/audit?limit=1", "GET /admin/v1/audit?cursor=1&limit=1", "GET /admin/v1/audit?cursor=2&limit=1"}
		if got := sent(before); !slices.Equal(got, want) {
			t.Errorf("audit --all-pages sent %q, want %q", got, want)
		}
	})
	t.Run("all pages, pages of the API's largest by default", func(t *testing.T) {
		before, _ := f.seen()
		if _, _, err := runCLI(t, getenv, "sessions", "list", "--all-pages"); err != nil {
			t.Fatal(err)
		}
		if got := sent(before); !slices.Equal(got, []string{"GET /admin/v1/sessions?limit=1000"}) {
			t.Errorf("sessions list --all-pages sent %q, want one page of 1000", got)
		}
	})
	t.Run("all pages as one JSON answer", func(t *testing.T) {
		stdout, _, err := runCLI(t, getenv, "sessions", "list", "--limit", "1", "--all-pages", "--json")
		var got struct {
			Sessions   []adminSession `json:"sessions"`
			NextCursor *string        `json:"next_cursor"`
		}
		if err != nil || json.Unmarshal([]byte(stdout), &got) != nil || len(got.Sessions) != 2 || got.Sessions[0].SessionID != "s1" || got.Sessions[1].SessionID != "s2" {
			t.Fatalf("sessions list --all-pages --json = %v\n%s\nwant both sessions in one answer", err, stdout)
		}
		if got.NextCursor != nil || got.Sessions[1].UserAgent != "evil\x1b[2J\tagent" {
			t.Errorf("sessions list --all-pages --json = %s, want no next_cursor and the values as sent", stdout)
		}
	})
	t.Run("all pages stop at their bound", func(t *testing.T) {
		before, _ := f.seen()
		stdout, _, err := runCLI(t, getenv, "sessions", "list", "--sub", "endless", "--limit", "1", "--all-pages")
		want := fmt.Sprintf("--all-pages stopped after %d pages (%d sessions), its bound; more follow: go on with --cursor %d", maxPages, maxPages, maxPages)
		if err == nil || err.Error() != want || errors.Is(err, errUsage) {
			t.Errorf("sessions list --all-pages of endless pages = %v, want %s", err, want)
		}
		if n := len(sent(before)); n != maxPages {
			t.Errorf("sessions list --all-pages sent %d requests, want %d", n, maxPages)
		}
		if got := strings.Count(stdout, "\n"); got != maxPages+1 {
			t.Errorf("sessions list --all-pages printed %d lines, want what it read: a header and %d rows", got, maxPages)
		}
	})
}

func TestCLIAuditFilters(t *testing.T) {
	f := newFakeAdmin(t)
	getenv := getenvOf("BROKER_ADMIN_URL", f.URL, "BROKER_ADMIN_TOKEN", fakeAdminToken)
	query := func(args ...string) (url.Values, string) {
		t.Helper()
		before, _ := f.seen()
		_, stderr, err := runCLI(t, getenv, append([]string{"audit"}, args...)...)
		if err != nil {
			t.Fatalf("audit %q = %v", args, err)
		}
		reqs, _ := f.seen()
		_, raw, _ := strings.Cut(reqs[len(before)], "?")
		q, err := url.ParseQuery(raw)
		if err != nil {
			t.Fatal(err)
		}
		return q, stderr
	}
	t.Run("relative times", func(t *testing.T) {
		before := time.Now()
		q, _ := query("--since", "24h", "--until", "90m")
		after := time.Now()
		for _, tc := range []struct {
			param string
			ago   time.Duration
		}{{"since", 24 * time.Hour}, {"until", 90 * time.Minute}} {
			got, err := time.Parse(time.RFC3339Nano, q.Get(tc.param))
			if err != nil || got.Before(before.Add(-tc.ago)) || got.After(after.Add(-tc.ago)) {
				t.Errorf("%s = %q, want an RFC 3339 time %s before the call", tc.param, q.Get(tc.param), tc.ago)
			}
		}
		q, _ = query("--since", "7d")
		if got, err := time.Parse(time.RFC3339Nano, q.Get("since")); err != nil || time.Since(got) < 7*24*time.Hour || time.Since(got) > 7*24*time.Hour+time.Minute {
			t.Errorf("since of --since 7d = %q, want 7 days ago", q.Get("since"))
		}
	})
	t.Run("an action the broker does not write", func(t *testing.T) {
		q, stderr := query("--action", "revoke")
		if q.Get("action") != "revoke" || !strings.HasPrefix(stderr, `warning: --action "revoke" is none of the actions the broker writes (session.revoke, `) {
			t.Errorf("audit --action revoke sent %v and warned %q, want the query sent and a warning", q, stderr)
		}
		if _, stderr := query("--action", "expired"); stderr != "" {
			t.Errorf("audit --action expired warned %q, want nothing", stderr)
		}
	})
}

func TestCLIPathEscaping(t *testing.T) {
	f := newFakeAdmin(t)
	getenv := getenvOf("BROKER_ADMIN_URL", f.URL, "BROKER_ADMIN_TOKEN", fakeAdminToken)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"sessions", "list", "--sub", "auth0|123"}, "GET /admin/v1/sessions?limit=100&sub=auth0%7C123"},
		{[]string{"sessions", "list", "--sub", "CN=a/b c?x#y&limit=1"}, "GET /admin/v1/sessions?limit=100&sub=CN%3Da%2Fb+c%3Fx%23y%26limit%3D1"},
		{[]string{"sessions", "list", "--id", "../audit", "--cursor", "a b"}, "GET /admin/v1/sessions?cursor=a+b&limit=100&session_id=..%2Faudit"},
		{[]string{"audit", "--action", "admin.denied", "--actor", "sec ops", "--sub", "a|b", "--session-id", "s1", "--since", "2026-03-01T13:00:00+01:00", "--until", "2026-03-02T00:00:00Z", "--limit", "7"},
			"GET /admin/v1/audit?action=admin.denied&actor=sec+ops&limit=7&session_id=s1&since=2026-03-01T12%3A00%3A00Z&sub=a%7Cb&until=2026-03-02T00%3A00%3A00Z"},
		{[]string{"sessions", "revoke", "--sub", "google-oauth2|1%2F"}, "DELETE /admin/v1/users/google-oauth2%7C1%252F/sessions"},
		{[]string{"sessions", "show", "--id", "../audit"}, "GET /admin/v1/sessions/..%2Faudit"},
		{[]string{"sessions", "revoke", "--id", "a b"}, "DELETE /admin/v1/sessions/a%20b"},
	}
	for _, tt := range tests {
		before, _ := f.seen()
		_, _, _ = runCLI(t, getenv, tt.args...)
		reqs, _ := f.seen()
		if got := reqs[len(before):]; len(got) != 1 || got[0] != tt.want {
			t.Errorf("run(%q) sent %q, want %q", tt.args, got, tt.want)
		}
	}
}

func TestCLIToken(t *testing.T) {
	f := newFakeAdmin(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", fakeAdminToken+"\n")
	empty := write("empty", " \n")

	t.Run("from file, over the environment", func(t *testing.T) {
		_, _, err := runCLI(t, getenvOf("BROKER_ADMIN_URL", f.URL, "BROKER_ADMIN_TOKEN", "stale"), "audit", "--token-file", good)
		if err != nil {
			t.Fatalf("audit --token-file = %v", err)
		}
		if _, auths := f.seen(); auths[len(auths)-1] != "Bearer "+fakeAdminToken {
			t.Errorf("Authorization = %q, want the file's token without its newline", auths[len(auths)-1])
		}
	})
	t.Run("from flag, over the environment", func(t *testing.T) {
		_, _, err := runCLI(t, getenvOf("BROKER_ADMIN_URL", f.URL, "BROKER_ADMIN_TOKEN", "stale"), "audit", "--token", fakeAdminToken)
		if err != nil {
			t.Fatalf("audit --token = %v", err)
		}
	})
	t.Run("empty file", func(t *testing.T) {
		_, _, err := runCLI(t, getenvOf("BROKER_ADMIN_URL", f.URL), "audit", "--token-file", empty)
		if err == nil || !strings.Contains(err.Error(), empty+" is empty") {
			t.Errorf("audit --token-file %s = %v, want it named as empty", empty, err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		missing := filepath.Join(dir, "missing")
		_, _, err := runCLI(t, getenvOf("BROKER_ADMIN_URL", f.URL), "audit", "--token-file", missing)
		if err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("audit --token-file %s = %v, want the file named", missing, err)
		}
	})
}

// The admin token appears in no output and no error, whatever goes wrong.
func TestCLITokenNeverPrinted(t *testing.T) {
	f := newFakeAdmin(t)
	closed := closedURL(t)
	const secret = "s3cr3t-admin-token-do-not-print"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		env  func(string) string
		args []string
	}{
		{"rejected token", getenvOf("BROKER_ADMIN_URL", f.URL, "BROKER_ADMIN_TOKEN", secret), []string{"sessions", "list", "--sub", "u"}},
		{"rejected token from flag", getenvOf("BROKER_ADMIN_URL", f.URL), []string{"audit", "--token", secret, "--json"}},
		{"rejected token from file", getenvOf("BROKER_ADMIN_URL", f.URL), []string{"sessions", "revoke", "--id", "s1", "--token-file", tokenFile}},
		{"unreachable", getenvOf("BROKER_ADMIN_URL", closed, "BROKER_ADMIN_TOKEN", secret), []string{"sessions", "show", "--id", "s1"}},
		{"usage error", getenvOf("BROKER_ADMIN_URL", f.URL), []string{"sessions", "revoke", "--token", secret}},
		{"token with a newline", getenvOf("BROKER_ADMIN_URL", f.URL), []string{"audit", "--token", secret + "\nX-Evil: 1"}},
		{"help", getenvOf("BROKER_ADMIN_TOKEN", secret), []string{"audit", "-h"}},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runCLI(t, tt.env, tt.args...)
			all := stdout + stderr
			if err != nil {
				all += err.Error()
			}
			if strings.Contains(all, secret) {
				t.Errorf("run printed the token: %q", all)
			}
		})
	}
}

func TestCLIErrors(t *testing.T) {
	f := newFakeAdmin(t)
	t.Run("API error", func(t *testing.T) {
		_, _, err := runCLI(t, getenvOf("BROKER_ADMIN_URL", f.URL, "BROKER_ADMIN_TOKEN", "wrong"), "audit")
		if err == nil || err.Error() != "admin API: 401 invalid_token: unknown admin token" {
			t.Errorf("audit = %v, want admin API: 401 invalid_token: unknown admin token", err)
		}
	})
	t.Run("answer without a contract error", func(t *testing.T) {
		// As from a proxy in front of the admin listener.
		c := &adminClient{base: f.URL, shown: f.URL, token: fakeAdminToken, http: http.DefaultClient}
		_, _, err := c.do(context.Background(), http.MethodGet, "/admin/v1/broken")
		if err == nil || err.Error() != "admin API: 502 Bad Gateway" {
			t.Errorf("GET /admin/v1/broken = %v, want admin API: 502 Bad Gateway", err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		closed := closedURL(t)
		_, _, err := runCLI(t, getenvOf("BROKER_ADMIN_URL", closed, "BROKER_ADMIN_TOKEN", fakeAdminToken), "sessions", "list", "--sub", "u")
		if err == nil || !strings.HasPrefix(err.Error(), "cannot reach the admin API at "+closed+": ") {
			t.Errorf("sessions list = %v, want cannot reach the admin API at %s", err, closed)
		}
	})
	t.Run("unreachable, credentials in the URL", func(t *testing.T) {
		closed := strings.Replace(closedURL(t), "http://", "http://ops:hunter2@", 1)
		_, _, err := runCLI(t, getenvOf("BROKER_ADMIN_URL", closed, "BROKER_ADMIN_TOKEN", fakeAdminToken), "audit")
		if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "http://ops:xxxxx@127.0.0.1:") {
			t.Errorf("audit = %v, want the URL named without its password", err)
		}
	})
}

// closedURL returns the URL of a port nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return "http://" + addr
}

// The CLI against a real broker, Redis and OpenID Provider: an operator
// finds a user's sessions, ends one, then all, and reads the audit log.
func TestCLIAgainstBroker(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	first, second := s.login(b), s.login(b)
	sub, _ := first.User["sub"].(string)
	if sub == "" || second.User["sub"] != sub {
		t.Fatalf("logins of users %v and %v, want one user with a sub", first.User["sub"], second.User["sub"])
	}
	_, token, _ := strings.Cut(s.env["BROKER_ADMIN_TOKENS"], ":")
	getenv := getenvOf("BROKER_ADMIN_URL", b.admin, "BROKER_ADMIN_TOKEN", token)
	cli := func(args ...string) string {
		t.Helper()
		stdout, stderr, err := runCLI(t, getenv, args...)
		if err != nil {
			t.Fatalf("broker %s = %v\n%s", strings.Join(args, " "), err, stderr)
		}
		if strings.Contains(stdout+stderr, token) {
			t.Errorf("broker %s printed the admin token", strings.Join(args, " "))
		}
		return stdout
	}
	status := func(c created) int {
		t.Helper()
		return do(t, b, http.MethodGet, "/v1/session", c.Session, nil).status
	}

	out := cli("sessions", "list", "--sub", sub)
	if !strings.HasPrefix(out, "SESSION ID") || !strings.Contains(out, first.SessionID) || !strings.Contains(out, second.SessionID) {
		t.Errorf("sessions list --sub %s printed\n%s\nwant a table with %s and %s", sub, out, first.SessionID, second.SessionID)
	}
	var list struct {
		Sessions []adminSession `json:"sessions"`
	}
	if err := json.Unmarshal([]byte(cli("sessions", "list", "--sub", sub, "--json")), &list); err != nil || len(list.Sessions) != 2 {
		t.Errorf("sessions list --json = %+v (%v), want 2 sessions", list, err)
	}
	for _, ses := range list.Sessions {
		if ses.Sub != sub || ses.CreatedAt.IsZero() || ses.ExpiresAt.IsZero() || ses.IP == "" {
			t.Errorf("session %+v, want sub %s, created_at, expires_at and ip", ses, sub)
		}
	}

	out = cli("sessions", "show", "--id", first.SessionID)
	if !strings.Contains(out, "SESSION ID  "+first.SessionID+"\n") || !strings.Contains(out, "SUB         "+sub+"\n") {
		t.Errorf("sessions show --id %s printed\n%s", first.SessionID, out)
	}
	if strings.Contains(out, first.Session) {
		t.Errorf("sessions show printed the session handle")
	}

	if out := cli("sessions", "revoke", "--id", first.SessionID); out != "revoked session "+first.SessionID+"\n" {
		t.Errorf("sessions revoke --id = %q, want revoked session %s", out, first.SessionID)
	}
	if got := status(first); got != http.StatusUnauthorized {
		t.Errorf("GET /v1/session with the revoked handle = %d, want 401", got)
	}
	if got := status(second); got != http.StatusOK {
		t.Errorf("GET /v1/session with the other handle = %d, want 200", got)
	}
	if _, _, err := runCLI(t, getenv, "sessions", "show", "--id", first.SessionID); err == nil || !strings.HasPrefix(err.Error(), "admin API: 404 ") {
		t.Errorf("sessions show of the revoked session = %v, want admin API: 404", err)
	}

	if out := cli("sessions", "revoke", "--sub", sub); out != "revoked 1 session of user "+sub+"\n" {
		t.Errorf("sessions revoke --sub = %q, want revoked 1 session of user %s", out, sub)
	}
	if got := status(second); got != http.StatusUnauthorized {
		t.Errorf("GET /v1/session after revoking the user = %d, want 401", got)
	}
	if out := cli("sessions", "list", "--sub", sub); out != "no sessions of user "+sub+"\n" {
		t.Errorf("sessions list after revoking the user = %q", out)
	}

	var audit struct {
		Events []auditEvent `json:"events"`
	}
	if err := json.Unmarshal([]byte(cli("audit", "--limit", "5", "--json")), &audit); err != nil {
		t.Fatalf("audit --json: %v", err)
	}
	if len(audit.Events) == 0 || len(audit.Events) > 5 {
		t.Fatalf("audit --limit 5 = %d events, want 1 to 5", len(audit.Events))
	}
	var sawSession, sawUser bool
	for _, e := range audit.Events {
		switch {
		case e.Action == "session.revoke" && e.SessionID == first.SessionID:
			sawSession = e.Actor == "secops" && e.Outcome == "ok"
		case e.Action == "user.revoke" && e.Sub == sub:
			sawUser = e.Actor == "secops" && e.Outcome == "ok"
		}
	}
	if !sawSession || !sawUser {
		t.Errorf("audit = %+v, want session.revoke of %s and user.revoke of %s by secops, ok", audit.Events, first.SessionID, sub)
	}
	if out := cli("audit", "--limit", "5"); !strings.HasPrefix(out, "TIME") || !strings.Contains(out, "session.revoke") {
		t.Errorf("audit printed\n%s\nwant a table with the revocations", out)
	}

	_, _, err := runCLI(t, getenvOf("BROKER_ADMIN_URL", b.admin, "BROKER_ADMIN_TOKEN", "not-"+token), "audit")
	if err == nil || !strings.HasPrefix(err.Error(), "admin API: 401 ") || strings.Contains(err.Error(), token) {
		t.Errorf("audit with a wrong token = %v, want admin API: 401 without the token", err)
	}
}

// The search and audit flags against a real broker: every session newest
// first in pages, by subject and by id; audit events filtered, in pages,
// with where each call came from.
func TestCLISearchAgainstBroker(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	_, token := s.adminToken()
	getenv := getenvOf("BROKER_ADMIN_URL", b.admin, "BROKER_ADMIN_TOKEN", token)
	cli := func(args ...string) (string, string) {
		t.Helper()
		stdout, stderr, err := runCLI(t, getenv, args...)
		if err != nil {
			t.Fatalf("broker %s = %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return stdout, stderr
	}
	ids := func(stdout string) []string {
		t.Helper()
		var l struct {
			Sessions []adminSession `json:"sessions"`
		}
		if err := json.Unmarshal([]byte(stdout), &l); err != nil {
			t.Fatalf("not a session list: %v\n%s", err, stdout)
		}
		var out []string
		for _, ses := range l.Sessions {
			out = append(out, ses.SessionID)
		}
		return out
	}

	start := s.clock.Now()
	var all, demo []string // newest first
	for i := range 3 {
		var c created
		if i == 1 {
			c = s.loginFrom(b, devidp.OtherUsername, devidp.OtherPassword, "OtherApp/1.0")
		} else {
			c = s.loginFrom(b, devidp.DemoUsername, devidp.DemoPassword, "DemoApp/1.0")
			demo = append([]string{c.SessionID}, demo...)
		}
		all = append([]string{c.SessionID}, all...)
		s.clock.Advance(time.Second)
	}

	if got := ids(first(cli("sessions", "list", "--limit", "1", "--all-pages", "--json"))); !slices.Equal(got, all) {
		t.Errorf("sessions list --limit 1 --all-pages = %v, want %v", got, all)
	}
	if got := ids(first(cli("sessions", "list", "--sub", devidp.DemoSubject, "--json"))); !slices.Equal(got, demo) {
		t.Errorf("sessions list --sub %s = %v, want %v", devidp.DemoSubject, got, demo)
	}
	if got := ids(first(cli("sessions", "list", "--id", all[1], "--json"))); !slices.Equal(got, all[1:2]) {
		t.Errorf("sessions list --id %s = %v, want it alone", all[1], got)
	}
	out, hint := cli("sessions", "list", "--limit", "2")
	if !strings.HasPrefix(out, "SESSION ID") || !strings.Contains(out, all[0]) || !strings.Contains(out, "OtherApp/1.0") || strings.Contains(out, all[2]) {
		t.Errorf("sessions list --limit 2 printed\n%s\nwant the 2 newest sessions", out)
	}
	cursor, ok := strings.CutPrefix(strings.TrimSuffix(hint, " for the next page, or --all-pages\n"), "more sessions follow: add --cursor ")
	if !ok {
		t.Fatalf("sessions list --limit 2 wrote %q on stderr, want the next cursor", hint)
	}
	if got := ids(first(cli("sessions", "list", "--limit", "2", "--cursor", cursor, "--json"))); !slices.Equal(got, all[2:]) {
		t.Errorf("sessions list --cursor %s = %v, want %v", cursor, got, all[2:])
	}

	// A logout with a request id, then an admin revocation and a refused
	// admin call, a second apart.
	logout := s.loginFrom(b, devidp.DemoUsername, devidp.DemoPassword, "DemoApp/1.0")
	if res := doURL(t, http.MethodDelete, b.base+"/v1/session", logout.Session, nil, http.Header{"User-Agent": {"DemoApp/1.0"}, "X-Request-Id": {"logout-7"}}); res.status != http.StatusNoContent {
		t.Fatalf("logout = %d %s", res.status, res.body)
	}
	s.clock.Advance(time.Second)
	cli("sessions", "revoke", "--id", all[0])
	s.clock.Advance(time.Second)
	if res := doURL(t, http.MethodGet, b.admin+"/admin/v1/audit", "not-the-token", nil, http.Header{"User-Agent": {"Prober/0.1"}, "X-Request-Id": {"probe-9"}}); res.status != http.StatusUnauthorized {
		t.Fatalf("a wrong admin token = %d, want 401", res.status)
	}

	actions := func(stdout string) []string {
		t.Helper()
		var l struct {
			Events []auditEvent `json:"events"`
		}
		if err := json.Unmarshal([]byte(stdout), &l); err != nil {
			t.Fatalf("not an audit list: %v\n%s", err, stdout)
		}
		var out []string
		for _, e := range l.Events {
			out = append(out, e.Action+":"+e.SessionID)
		}
		return out
	}
	rfc := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	logoutAt := start.Add(3 * time.Second)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--limit", "1", "--all-pages"}, []string{"admin.denied:", "session.revoke:" + all[0], "logout:" + logout.SessionID}},
		{[]string{"--action", "session.revoke"}, []string{"session.revoke:" + all[0]}},
		{[]string{"--actor", "user"}, []string{"logout:" + logout.SessionID}},
		{[]string{"--sub", devidp.DemoSubject}, []string{"session.revoke:" + all[0], "logout:" + logout.SessionID}},
		{[]string{"--session-id", logout.SessionID}, []string{"logout:" + logout.SessionID}},
		{[]string{"--since", rfc(logoutAt.Add(time.Second))}, []string{"admin.denied:", "session.revoke:" + all[0]}},
		{[]string{"--since", rfc(logoutAt), "--until", rfc(logoutAt.Add(time.Second))}, []string{"logout:" + logout.SessionID}},
		{[]string{"--action", "expired"}, nil},
	} {
		if got := actions(first(cli(append([]string{"audit", "--json"}, tc.args...)...))); !slices.Equal(got, tc.want) {
			t.Errorf("audit %s = %v, want %v", strings.Join(tc.args, " "), got, tc.want)
		}
	}

	out, _ = cli("audit", "--action", "admin.denied")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "IP") || !strings.Contains(lines[0], "USER AGENT") || !strings.Contains(lines[0], "REQUEST ID") {
		t.Fatalf("audit --action admin.denied printed\n%s\nwant a header and one row", out)
	}
	for _, want := range []string{"127.0.0.1", "Prober/0.1", "probe-9"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("admin.denied row %q, want %q in it", lines[1], want)
		}
	}
	if out, _ := cli("audit", "--action", "logout"); !strings.Contains(out, "logout-7") || !strings.Contains(out, "DemoApp/1.0") {
		t.Errorf("audit --action logout printed\n%s\nwant its request id and user agent", out)
	}
}

// first returns the first of two values.
func first[A, B any](a A, _ B) A { return a }
