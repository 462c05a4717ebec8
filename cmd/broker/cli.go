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
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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
	// userAgentWidth is how much of a user agent the session table shows.
	userAgentWidth    = 40
	defaultAuditLimit = 50
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

// session is one session as the admin API describes it. Times are kept as
// sent, so that an unexpected format is shown rather than rejected.
type session struct {
	SessionID  string `json:"session_id"`
	Sub        string `json:"sub"`
	ClientID   string `json:"client_id"`
	CreatedAt  string `json:"created_at"`
	LastUsedAt string `json:"last_used_at"`
	ExpiresAt  string `json:"expires_at"`
	IP         string `json:"ip"`
	UserAgent  string `json:"user_agent"`
}

type auditEvent struct {
	Time      string `json:"time"`
	Actor     string `json:"actor"`
	Action    string `json:"action"`
	SessionID string `json:"session_id"`
	Sub       string `json:"sub"`
	Outcome   string `json:"outcome"`
	Detail    string `json:"detail"`
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
	admin adminFlags
	sub   string
}

func sessionsListCommand(a *app) *cobra.Command {
	var o sessionsListOptions
	cmd := &cobra.Command{
		Use:   "list --sub SUB",
		Short: "List a user's sessions",
		Args:  noArgs,
		RunE:  func(c *cobra.Command, _ []string) error { return sessionsList(c.Context(), a, &o) },
	}
	o.admin.register(cmd.Flags())
	cmd.Flags().StringVar(&o.sub, "sub", "", "the user's subject (the ID token's sub claim), as in 'auth0|123'")
	return cmd
}

func sessionsList(ctx context.Context, a *app, o *sessionsListOptions) error {
	const cmd = "sessions list"
	if err := checkSub(cmd, o.sub); err != nil {
		return err
	}
	c, err := o.admin.client(cmd, a.getenv, a.stderr)
	if err != nil {
		return err
	}
	var out struct {
		Sessions []session `json:"sessions"`
	}
	body, err := c.getJSON(ctx, "/admin/v1/users/"+url.PathEscape(o.sub)+"/sessions", &out)
	if err != nil {
		return err
	}
	if o.admin.json {
		return writeJSON(a.stdout, body)
	}
	if len(out.Sessions) == 0 {
		fmt.Fprintf(a.stdout, "no sessions of user %s\n", printable(o.sub))
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION ID\tCREATED\tLAST USED\tEXPIRES\tIP\tUSER AGENT")
	for _, s := range out.Sessions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", cell(s.SessionID), when(s.CreatedAt), when(s.LastUsedAt),
			when(s.ExpiresAt), cell(s.IP), cell(truncate(s.UserAgent, userAgentWidth)))
	}
	return tw.Flush()
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
	var s session
	body, err := c.getJSON(ctx, "/admin/v1/sessions/"+url.PathEscape(o.id), &s)
	if err != nil {
		return err
	}
	if o.admin.json {
		return writeJSON(a.stdout, body)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	for _, row := range [][2]string{
		{"SESSION ID", cell(s.SessionID)},
		{"SUB", cell(s.Sub)},
		{"CLIENT ID", cell(s.ClientID)},
		{"CREATED", when(s.CreatedAt)},
		{"LAST USED", when(s.LastUsedAt)},
		{"EXPIRES", when(s.ExpiresAt)},
		{"IP", cell(s.IP)},
		{"USER AGENT", cell(s.UserAgent)},
	} {
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
	var out struct {
		Revoked               int `json:"revoked"`
		IdPRevocationFailures int `json:"idp_revocation_failures"`
	}
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
	admin adminFlags
	limit int
}

func auditCommand(a *app) *cobra.Command {
	var o auditOptions
	cmd := &cobra.Command{
		Use:     "audit",
		Short:   "Show the newest audit events through the admin API",
		GroupID: groupOperator,
		Args:    noArgs,
		RunE:    func(c *cobra.Command, _ []string) error { return audit(c.Context(), a, &o) },
	}
	o.admin.register(cmd.Flags())
	cmd.Flags().IntVar(&o.limit, "limit", defaultAuditLimit, "how many events to show, newest first")
	return cmd
}

func audit(ctx context.Context, a *app, o *auditOptions) error {
	const cmd = "audit"
	if o.limit < 1 {
		return &usageError{cmd, fmt.Sprintf("--limit must be at least 1, got %d", o.limit)}
	}
	c, err := o.admin.client(cmd, a.getenv, a.stderr)
	if err != nil {
		return err
	}
	var out struct {
		Events []auditEvent `json:"events"`
	}
	body, err := c.getJSON(ctx, "/admin/v1/audit?limit="+fmt.Sprint(o.limit), &out)
	if err != nil {
		return err
	}
	if o.admin.json {
		return writeJSON(a.stdout, body)
	}
	if len(out.Events) == 0 {
		fmt.Fprintln(a.stdout, "no audit events")
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tACTOR\tACTION\tSESSION\tSUB\tOUTCOME\tDETAIL")
	for _, e := range out.Events {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", when(e.Time), cell(e.Actor), cell(e.Action),
			cell(e.SessionID), cell(e.Sub), cell(e.Outcome), cell(e.Detail))
	}
	return tw.Flush()
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

// when formats an RFC 3339 time in UTC to the second; anything else is
// shown as sent.
func when(s string) string {
	if s == "" {
		return "-"
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	switch {
	case err != nil:
		return cell(s)
	case t.IsZero():
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
