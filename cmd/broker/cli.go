package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mobile-token-broker/broker/api"
	"github.com/mobile-token-broker/broker/broker"
)

// The operator commands `broker sessions` and `broker audit` are clients of
// the admin API (CONTRACT.md, "Admin API"): they hold no store credentials
// and can run anywhere the admin listener is reachable.

const (
	defaultAdminURL = "http://127.0.0.1:9090"
	// adminTimeout bounds one admin API call.
	adminTimeout = 30 * time.Second
	// maxAdminBody bounds what the CLI reads of one admin API answer.
	maxAdminBody = 16 << 20
	// userAgentWidth is how much of a user agent the tables show.
	userAgentWidth       = 40
	defaultSessionsLimit = 100
	defaultAuditLimit    = 50
	// maxPageLimit is the admin API's bound on limit=, the size of a page.
	maxPageLimit = 1000
	// maxPages and maxItems bound what --all-pages follows.
	maxPages = 1000
	maxItems = 100_000
)

// apiError is a non-2xx answer of the admin API.
type apiError struct {
	Status      int
	Code        string
	Description string
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("admin API: %d", e.Status)
	if e.Code == "" {
		return msg + " " + http.StatusText(e.Status)
	}
	msg += " " + e.Code
	if e.Description != "" {
		msg += ": " + e.Description
	}
	return msg
}

// adminClient calls the admin API with one admin token.
type adminClient struct {
	base  string // scheme://host[/prefix], without a trailing slash
	shown string // base as it may be printed: without any userinfo
	token string
	http  *http.Client
}

// do sends one request and returns the body of a 2xx answer; any other
// answer becomes an *apiError.
func (c *adminClient) do(ctx context.Context, method, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("admin API request %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		// *url.Error repeats the whole URL; name the base instead, once.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, nil, fmt.Errorf("cannot reach the admin API at %s: %w", c.shown, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminBody))
	if err != nil {
		return 0, nil, fmt.Errorf("admin API: %s %s: read the answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		_ = json.Unmarshal(body, &e)
		return resp.StatusCode, nil, &apiError{Status: resp.StatusCode, Code: printable(e.Error), Description: printable(e.Description)}
	}
	return resp.StatusCode, body, nil
}

// getJSON fetches path and decodes its JSON into v; it returns the raw body
// for --json.
func (c *adminClient) getJSON(ctx context.Context, path string, v any) ([]byte, error) {
	_, body, err := c.do(ctx, http.MethodGet, path)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return nil, fmt.Errorf("admin API: GET %s: the answer is not the expected JSON: %w", path, err)
	}
	return body, nil
}

// adminFlags are the flags every operator command takes.
type adminFlags struct {
	url, token, tokenFile string
	json                  bool
}

func (f *adminFlags) register(fs *pflag.FlagSet) {
	// The defaults from the environment are applied after parsing, so that
	// --help never prints a token.
	fs.StringVar(&f.url, "admin-url", "", "base URL of the broker's admin listener (default $BROKER_ADMIN_URL, else "+defaultAdminURL+")")
	fs.StringVar(&f.token, "token", "", "admin token (default $BROKER_ADMIN_TOKEN, or the file $BROKER_ADMIN_TOKEN_FILE names); prefer --token-file or the variables, which stay out of shell history and ps")
	fs.StringVar(&f.tokenFile, "token-file", "", "read the admin token from this file")
	fs.BoolVar(&f.json, "json", false, "print the admin API's JSON instead of a table")
}

// client checks the flags and the environment and returns the client they
// describe.
func (f *adminFlags) client(cmd string, getenv func(string) string, stderr io.Writer) (*adminClient, error) {
	if f.token != "" && f.tokenFile != "" {
		return nil, &usageError{cmd, "give either --token or --token-file, not both"}
	}
	token := f.token
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("admin token: %w", err)
		}
		token = strings.TrimSpace(string(b))
		if token == "" {
			return nil, fmt.Errorf("admin token: %s is empty", f.tokenFile)
		}
	}
	if token == "" {
		env, err := resolveEnv(getenv, "BROKER_ADMIN_TOKEN")
		if err != nil {
			return nil, err
		}
		token = strings.TrimSpace(env("BROKER_ADMIN_TOKEN"))
	}
	if token == "" {
		return nil, &usageError{cmd, "no admin token: set BROKER_ADMIN_TOKEN (or BROKER_ADMIN_TOKEN_FILE) or pass --token-file with one of the broker's BROKER_ADMIN_TOKENS"}
	}
	// A control character would be rejected by net/http with a message of
	// its own; say which input is wrong without showing it.
	if strings.IndexFunc(token, func(r rune) bool { return r < ' ' || r == 0x7f }) >= 0 {
		return nil, errors.New("admin token: contains control characters; expected a single line")
	}

	raw := cmp.Or(f.url, getenv("BROKER_ADMIN_URL"), defaultAdminURL)
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, &usageError{cmd, fmt.Sprintf("admin URL %q: want http://host:port or https://host[/prefix]", redactURL(raw))}
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		fmt.Fprintf(stderr, "warning: sending the admin token to %s over plain http\n", u.Redacted())
	}
	base := strings.TrimSuffix(u.String(), "/")
	return &adminClient{
		base:  base,
		shown: strings.TrimSuffix(u.Redacted(), "/"),
		token: token,
		http:  &http.Client{Timeout: adminTimeout},
	}, nil
}

func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	return raw
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// pageFlags are the paging flags of the admin listings.
type pageFlags struct {
	limit    int
	limitSet bool // --limit was given
	cursor   string
	all      bool
}

func (p *pageFlags) register(fs *pflag.FlagSet, what string, def int) {
	fs.IntVar(&p.limit, "limit", def, fmt.Sprintf("how many %s a page holds, 1 to %d (with --all-pages: %d unless given)", what, maxPageLimit, maxPageLimit))
	fs.StringVar(&p.cursor, "cursor", "", "start at this page: the next_cursor a previous page gave, with the same filters")
	fs.BoolVar(&p.all, "all-pages", false, fmt.Sprintf("follow next_cursor to the last page, at most %d pages or %d %s", maxPages, maxItems, what))
}

// check validates the flags and sets limit= and cursor= in q.
func (p *pageFlags) check(cmd string, q url.Values) error {
	if p.all && !p.limitSet {
		p.limit = maxPageLimit
	}
	if p.limit < 1 || p.limit > maxPageLimit {
		return &usageError{cmd, fmt.Sprintf("--limit must be from 1 to %d, got %d", maxPageLimit, p.limit)}
	}
	q.Set("limit", strconv.Itoa(p.limit))
	if p.cursor != "" {
		q.Set("cursor", p.cursor)
	}
	return nil
}

// listing is what listPages read.
type listing[T any] struct {
	items []T
	next  string // the cursor of the page after the last one read; "" at the end
	pages int
	first []byte // the body of the first page
}

// listPages reads path?q and, with all, the pages after it, up to maxPages
// pages or maxItems items. decode reads one page's items and next cursor.
func listPages[T any](ctx context.Context, c *adminClient, path string, q url.Values, all bool, decode func([]byte) ([]T, string, error)) (listing[T], error) {
	var l listing[T]
	for {
		_, body, err := c.do(ctx, http.MethodGet, path+"?"+q.Encode())
		if err != nil {
			return l, err
		}
		items, next, err := decode(body)
		if err != nil {
			return l, fmt.Errorf("admin API: GET %s: the answer is not the expected JSON: %w", path, err)
		}
		if l.first == nil {
			l.first = body
		}
		l.items, l.next = append(l.items, items...), next
		l.pages++
		if !all || next == "" || l.pages >= maxPages || len(l.items) >= maxItems {
			return l, nil
		}
		q.Set("cursor", next)
	}
}

// finish prints a listing's JSON (--json) or hands it to table, then says
// how to go on when pages follow: a hint on stderr after one page, an
// error when --all-pages reached its bound.
func finish[T any](a *app, o *adminFlags, p *pageFlags, l listing[T], what string, whole func([]T, string) any, table func([]T) error) error {
	var err error
	switch {
	case !o.json:
		err = table(l.items)
	case l.pages == 1:
		err = writeJSON(a.stdout, l.first)
	default:
		// The pages merged into one answer of the API's shape.
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err = enc.Encode(whole(l.items, l.next)); err == nil {
			err = writeJSON(a.stdout, b.Bytes())
		}
	}
	if err != nil || l.next == "" {
		return err
	}
	if p.all {
		return fmt.Errorf("--all-pages stopped after %d pages (%d %s), its bound; more follow: go on with --cursor %s", l.pages, len(l.items), what, l.next)
	}
	if !o.json {
		fmt.Fprintf(a.stderr, "more %s follow: add --cursor %s for the next page, or --all-pages\n", what, l.next)
	}
	return nil
}

// sessionsCommand groups `broker sessions list|show|revoke`. Each leaf
// keeps its flags in an options struct, so a flag is one line in its
// constructor and one field.
func sessionsCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sessions",
		Short: "List, show and revoke sessions through the admin API",
		Long: `List, show and revoke sessions through a running broker's admin API. The
commands hold no store credentials: they need the admin listener's URL and
one of the broker's admin tokens.`,
		GroupID: groupOperator,
	}
	cmd.Args, cmd.RunE = subcommands(cmd)
	cmd.AddCommand(sessionsListCommand(a), sessionsShowCommand(a), sessionsRevokeCommand(a))
	return cmd
}

type sessionsListOptions struct {
	admin   adminFlags
	page    pageFlags
	sub, id string
}

func sessionsListCommand(a *app) *cobra.Command {
	var o sessionsListOptions
	cmd := &cobra.Command{
		Use:   "list [--sub SUB] [--id SESSION_ID]",
		Short: "List live sessions, the newest first: every session, a user's, or one",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			o.page.limitSet = c.Flags().Changed("limit")
			if err := emptyFlags(c, "sub", "id"); err != nil {
				return err
			}
			return sessionsList(c.Context(), a, &o)
		},
	}
	o.admin.register(cmd.Flags())
	o.page.register(cmd.Flags(), "sessions", defaultSessionsLimit)
	cmd.Flags().StringVar(&o.sub, "sub", "", "only the sessions of this user: the subject (the ID token's sub claim), as in 'auth0|123'; without it, every user's")
	cmd.Flags().StringVar(&o.id, "id", "", "only this session (its session_id, not the handle)")
	return cmd
}

func sessionsList(ctx context.Context, a *app, o *sessionsListOptions) error {
	const cmd = "sessions list"
	q := url.Values{}
	if err := o.page.check(cmd, q); err != nil {
		return err
	}
	if o.sub != "" {
		q.Set("sub", o.sub)
	}
	if o.id != "" {
		q.Set("session_id", o.id)
	}
	c, err := o.admin.client(cmd, a.getenv, a.stderr)
	if err != nil {
		return err
	}
	l, err := listPages(ctx, c, "/admin/v1/sessions", q, o.page.all, func(body []byte) ([]api.AdminSession, string, error) {
		var p api.SessionList
		err := json.Unmarshal(body, &p)
		return p.Sessions, p.NextCursor, err
	})
	if err != nil {
		return err
	}
	whole := func(items []api.AdminSession, next string) any {
		return api.SessionList{Sessions: items, NextCursor: next}
	}
	return finish(a, &o.admin, &o.page, l, "sessions", whole, func(list []api.AdminSession) error {
		if len(list) == 0 && l.next == "" {
			fmt.Fprintln(a.stdout, noSessions(o.sub, o.id))
			return nil
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SESSION ID\tSUB\tCREATED\tLAST USED\tEXPIRES\tIP\tUSER AGENT")
		for _, s := range list {
			id := cell(s.SessionID)
			if s.Unreadable {
				id += " (unreadable)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, cell(s.Subject), when(s.CreatedAt), when(s.LastUsedAt),
				when(s.ExpiresAt), cell(s.IP), cell(truncate(s.UserAgent, userAgentWidth)))
		}
		return tw.Flush()
	})
}

// noSessions says what an empty listing found nothing of.
func noSessions(sub, id string) string {
	switch {
	case sub != "" && id != "":
		return fmt.Sprintf("no live session %s of user %s", printable(id), printable(sub))
	case sub != "":
		return fmt.Sprintf("no sessions of user %s", printable(sub))
	case id != "":
		return fmt.Sprintf("no live session %s", printable(id))
	}
	return "no sessions"
}

// emptyFlags refuses an optional filter given an empty value, which would
// silently widen the filter to everything.
func emptyFlags(c *cobra.Command, names ...string) error {
	for _, name := range names {
		if f := c.Flags().Lookup(name); f != nil && f.Changed && f.Value.String() == "" {
			return &usageError{commandName(c), fmt.Sprintf("--%s is empty; leave it out to match every value", name)}
		}
	}
	return nil
}

type sessionsShowOptions struct {
	admin adminFlags
	id    string
}

func sessionsShowCommand(a *app) *cobra.Command {
	var o sessionsShowOptions
	cmd := &cobra.Command{
		Use:   "show --id SESSION_ID",
		Short: "Show one session",
		Args:  noArgs,
		RunE:  func(c *cobra.Command, _ []string) error { return sessionsShow(c.Context(), a, &o) },
	}
	o.admin.register(cmd.Flags())
	cmd.Flags().StringVar(&o.id, "id", "", "the session's ID (session_id, as in the audit log; not the handle)")
	return cmd
}

func sessionsShow(ctx context.Context, a *app, o *sessionsShowOptions) error {
	const cmd = "sessions show"
	if err := checkID(cmd, o.id); err != nil {
		return err
	}
	c, err := o.admin.client(cmd, a.getenv, a.stderr)
	if err != nil {
		return err
	}
	var s api.AdminSession
	body, err := c.getJSON(ctx, "/admin/v1/sessions/"+url.PathEscape(o.id), &s)
	if err != nil {
		return err
	}
	if o.admin.json {
		return writeJSON(a.stdout, body)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	rows := [][2]string{
		{"SESSION ID", cell(s.SessionID)},
		{"SUB", cell(s.Subject)},
		{"CLIENT ID", cell(s.ClientID)},
		{"CREATED", when(s.CreatedAt)},
		{"LAST USED", when(s.LastUsedAt)},
		{"EXPIRES", when(s.ExpiresAt)},
		{"IP", cell(s.IP)},
		{"USER AGENT", cell(s.UserAgent)},
	}
	if s.Unreadable {
		rows = append(rows, [2]string{"UNREADABLE", "yes: no key opens the record; it works for nobody and can be revoked"})
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

type sessionsRevokeOptions struct {
	admin   adminFlags
	id, sub string
}

func sessionsRevokeCommand(a *app) *cobra.Command {
	var o sessionsRevokeOptions
	cmd := &cobra.Command{
		Use:   "revoke (--id SESSION_ID | --sub SUB)",
		Short: "End one session, or every session of a user",
		Args:  noArgs,
		RunE:  func(c *cobra.Command, _ []string) error { return sessionsRevoke(c.Context(), a, &o) },
	}
	o.admin.register(cmd.Flags())
	cmd.Flags().StringVar(&o.id, "id", "", "end this one session")
	cmd.Flags().StringVar(&o.sub, "sub", "", "end every session of this user")
	return cmd
}

func sessionsRevoke(ctx context.Context, a *app, o *sessionsRevokeOptions) error {
	const cmd = "sessions revoke"
	if (o.id == "") == (o.sub == "") {
		return &usageError{cmd, "give exactly one of --id SESSION_ID (one session) or --sub SUB (every session of a user)"}
	}
	if o.id != "" {
		if err := checkID(cmd, o.id); err != nil {
			return err
		}
	} else if err := checkSub(cmd, o.sub); err != nil {
		return err
	}
	c, err := o.admin.client(cmd, a.getenv, a.stderr)
	if err != nil {
		return err
	}

	if o.id != "" {
		if _, _, err := c.do(ctx, http.MethodDelete, "/admin/v1/sessions/"+url.PathEscape(o.id)); err != nil {
			return err
		}
		if o.admin.json {
			// The API answers 204 without a body; give scripts the same
			// shape as a user's revocation.
			b, _ := json.Marshal(map[string]any{"revoked": 1, "session_id": o.id})
			return writeJSON(a.stdout, b)
		}
		fmt.Fprintf(a.stdout, "revoked session %s\n", printable(o.id))
		return nil
	}

	path := "/admin/v1/users/" + url.PathEscape(o.sub) + "/sessions"
	_, body, err := c.do(ctx, http.MethodDelete, path)
	if err != nil {
		return err
	}
	var out api.UserRevocation
	if err := json.Unmarshal(body, &out); err != nil {
		return fmt.Errorf("admin API: DELETE %s: the answer is not the expected JSON: %w", path, err)
	}
	if o.admin.json {
		if err := writeJSON(a.stdout, body); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(a.stdout, "revoked %d %s of user %s\n", out.Revoked, plural(out.Revoked, "session", "sessions"), printable(o.sub))
	}
	// The sessions are over at the broker either way; a refresh token the IdP
	// did not revoke stays valid there until it expires.
	if out.IdPRevocationFailures > 0 {
		fmt.Fprintf(a.stderr, "warning: the identity provider did not confirm the revocation of %d refresh %s; see 'broker audit'\n",
			out.IdPRevocationFailures, plural(out.IdPRevocationFailures, "token", "tokens"))
	}
	return nil
}

type auditOptions struct {
	admin                                       adminFlags
	page                                        pageFlags
	action, actor, sub, sessionID, since, until string
}

func auditCommand(a *app) *cobra.Command {
	var o auditOptions
	cmd := &cobra.Command{
		Use:   "audit [filters]",
		Short: "Show audit events through the admin API, the newest first",
		Long: `Show the audit events matching every filter given, the newest first, a page
at a time. --since and --until take an RFC 3339 time (2026-03-01T12:00:00Z)
or a duration meaning that long ago (90m, 24h, 7d); --since is inclusive,
--until exclusive.`,
		GroupID: groupOperator,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			o.page.limitSet = c.Flags().Changed("limit")
			if err := emptyFlags(c, "action", "actor", "sub", "session-id", "since", "until"); err != nil {
				return err
			}
			return audit(c.Context(), a, &o)
		},
	}
	o.admin.register(cmd.Flags())
	o.page.register(cmd.Flags(), "events", defaultAuditLimit)
	fs := cmd.Flags()
	fs.StringVar(&o.action, "action", "", "only events of this action: "+strings.Join(auditActions, ", "))
	fs.StringVar(&o.actor, "actor", "", "only events of this actor: an admin token's name, user, idp, broker or unknown")
	fs.StringVar(&o.sub, "sub", "", "only events of this user's sessions (the subject)")
	fs.StringVar(&o.sessionID, "session-id", "", "only events of this session")
	fs.StringVar(&o.since, "since", "", "only events at or after this time: RFC 3339, or a duration ago (24h, 7d)")
	fs.StringVar(&o.until, "until", "", "only events before this time: RFC 3339, or a duration ago")
	return cmd
}

// auditActions are the actions the broker writes (CONTRACT.md).
var auditActions = []string{
	broker.ActionSessionRevoke, broker.ActionUserRevoke, broker.ActionLogout, broker.ActionBackchannelLogout,
	broker.ActionRefreshRejected, broker.ActionExpired, broker.ActionAdminDenied,
}

func audit(ctx context.Context, a *app, o *auditOptions) error {
	const cmd = "audit"
	q := url.Values{}
	if err := o.page.check(cmd, q); err != nil {
		return err
	}
	for name, v := range map[string]string{"action": o.action, "actor": o.actor, "sub": o.sub, "session_id": o.sessionID} {
		if v != "" {
			q.Set(name, v)
		}
	}
	now := time.Now()
	var since, until time.Time
	for _, f := range []struct {
		flag, value, param string
		into               *time.Time
	}{
		{"--since", o.since, "since", &since},
		{"--until", o.until, "until", &until},
	} {
		if f.value == "" {
			continue
		}
		t, err := parseWhen(f.value, now)
		if err != nil {
			return &usageError{cmd, fmt.Sprintf("%s %q: %v", f.flag, f.value, err)}
		}
		*f.into = t
		q.Set(f.param, t.UTC().Format(time.RFC3339Nano))
	}
	if !since.IsZero() && !until.IsZero() && !since.Before(until) {
		return &usageError{cmd, fmt.Sprintf("--since (%s) must be before --until (%s)", since.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339))}
	}
	c, err := o.admin.client(cmd, a.getenv, a.stderr)
	if err != nil {
		return err
	}
	// An action the broker does not write matches nothing; say so rather
	// than let a typo pass for a quiet trail. A newer broker may write
	// more, so the query still goes.
	if o.action != "" && !slices.Contains(auditActions, o.action) {
		fmt.Fprintf(a.stderr, "warning: --action %q is none of the actions the broker writes (%s)\n", printable(o.action), strings.Join(auditActions, ", "))
	}
	l, err := listPages(ctx, c, "/admin/v1/audit", q, o.page.all, func(body []byte) ([]api.AuditEvent, string, error) {
		var p api.AuditList
		err := json.Unmarshal(body, &p)
		return p.Events, p.NextCursor, err
	})
	if err != nil {
		return err
	}
	whole := func(items []api.AuditEvent, next string) any {
		return api.AuditList{Events: items, NextCursor: next}
	}
	return finish(a, &o.admin, &o.page, l, "events", whole, func(events []api.AuditEvent) error {
		if len(events) == 0 && l.next == "" {
			fmt.Fprintln(a.stdout, "no audit events")
			return nil
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tACTOR\tACTION\tSESSION\tSUB\tOUTCOME\tIP\tUSER AGENT\tREQUEST ID\tDETAIL")
		for _, e := range events {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", when(e.Time), cell(e.Actor), cell(e.Action),
				cell(e.SessionID), cell(e.Subject), cell(e.Outcome), cell(e.IP), cell(truncate(e.UserAgent, userAgentWidth)),
				cell(e.RequestID), cell(e.Detail))
		}
		return tw.Flush()
	})
}

// maxAgo bounds a relative --since or --until: beyond it, time.Duration
// overflows and no audit event is that old anyway.
const maxAgo = 100 * 365 * 24 * time.Hour

// parseWhen reads a --since or --until value: an RFC 3339 time, or a
// duration before now in Go's syntax (90m, 24h, 1h30m) or in whole days
// (7d).
func parseWhen(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	var ago time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > int(maxAgo/(24*time.Hour)) {
			return time.Time{}, errors.New("want an RFC 3339 time (2026-03-01T12:00:00Z) or a duration ago (90m, 24h, 7d)")
		}
		ago = time.Duration(n) * 24 * time.Hour
	} else {
		d, err := time.ParseDuration(s)
		if err != nil {
			return time.Time{}, errors.New("want an RFC 3339 time (2026-03-01T12:00:00Z) or a duration ago (90m, 24h, 7d)")
		}
		ago = d
	}
	if ago < 0 || ago > maxAgo {
		return time.Time{}, fmt.Errorf("a duration ago must be from 0 to %dd", int(maxAgo/(24*time.Hour)))
	}
	return now.Add(-ago), nil
}

// checkSub rejects a subject that cannot name a user in a URL path: path
// escaping leaves "." and ".." as they are, and a server would resolve them.
func checkSub(cmd, sub string) error {
	switch sub {
	case "":
		return &usageError{cmd, "--sub is required: the user's subject (the ID token's sub claim), as in --sub 'auth0|123'"}
	case ".", "..":
		return &usageError{cmd, fmt.Sprintf("--sub %q is not a subject", sub)}
	}
	return nil
}

func checkID(cmd, id string) error {
	switch id {
	case "":
		return &usageError{cmd, "--id is required: the session's ID, as shown by 'broker sessions list --sub SUB'"}
	case ".", "..":
		return &usageError{cmd, fmt.Sprintf("--id %q is not a session ID", id)}
	}
	return nil
}

// writeJSON prints an admin API answer indented.
func writeJSON(w io.Writer, body []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(body), "", "  "); err != nil {
		return fmt.Errorf("admin API: the answer is not JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// when formats a time in UTC to the second; "-" for none.
func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// cell makes a value safe for one table cell: "-" when empty, see printable.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return printable(s)
}

// printable replaces control and other unprintable characters, tabs
// included, with '?': user agents, subjects and error descriptions come from
// outside and must not steer the operator's terminal or the table.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
