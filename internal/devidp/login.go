package devidp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// DefaultScopes are requested by Login when LoginRequest.Scopes is empty.
var DefaultScopes = []string{"openid", "profile", "email", "offline_access"}

// LoginRequest describes one sign-in through the system browser.
type LoginRequest struct {
	// Username and Password default to DemoUsername and DemoPassword.
	Username, Password string
	// RedirectURI defaults to the first configured redirect URI.
	RedirectURI string
	// CodeChallenge is the S256 PKCE challenge (RFC 7636). Required.
	CodeChallenge string
	// Nonce and State are sent as given; State is checked on the way back.
	Nonce, State string
	// Scopes default to DefaultScopes.
	Scopes []string
}

// ErrLoginFailed is returned by Login when the login page rejects the
// username or password.
var ErrLoginFailed = errors.New("devidp: username or password rejected")

// AuthorizationError is an error response (RFC 6749, section 4.1.2.1)
// delivered to the redirect URI instead of a code.
type AuthorizationError struct {
	Code        string
	Description string
}

func (e *AuthorizationError) Error() string {
	if e.Description == "" {
		return "devidp: authorization error " + e.Code
	}
	return fmt.Sprintf("devidp: authorization error %s: %s", e.Code, e.Description)
}

// Login plays the user in the system browser: it sends the authorization
// request, signs in on the login page and returns the authorization code
// delivered to the redirect URI. The redirect URI itself is never fetched.
func (p *Provider) Login(ctx context.Context, r LoginRequest) (string, error) {
	if r.RedirectURI == "" {
		r.RedirectURI = p.cfg.RedirectURIs[0]
	}
	return Login(ctx, p.issuer, p.cfg.ClientID, r)
}

// Login plays the user against a dev IdP that runs elsewhere (another
// process), reached at issuer, for the client clientID. An empty RedirectURI
// is DefaultRedirectURI.
func Login(ctx context.Context, issuer, clientID string, r LoginRequest) (string, error) {
	if r.CodeChallenge == "" {
		return "", errors.New("devidp: Login: CodeChallenge is required")
	}
	if r.Username == "" && r.Password == "" {
		r.Username, r.Password = DemoUsername, DemoPassword
	}
	if r.RedirectURI == "" {
		r.RedirectURI = DefaultRedirectURI
	}
	if len(r.Scopes) == 0 {
		r.Scopes = DefaultScopes
	}
	redirect, err := url.Parse(r.RedirectURI)
	if err != nil {
		return "", fmt.Errorf("devidp: Login: redirect URI: %w", err)
	}

	browser := &http.Client{
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if isRedirectTo(req.URL, redirect) {
				return http.ErrUseLastResponse
			}
			if len(via) >= 10 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}

	authEndpoint, err := authorizationEndpoint(ctx, browser, issuer)
	if err != nil {
		return "", err
	}
	query := url.Values{
		"response_type":         {"code"},
		"client_id":             {clientID},
		"redirect_uri":          {r.RedirectURI},
		"scope":                 {strings.Join(r.Scopes, " ")},
		"code_challenge":        {r.CodeChallenge},
		"code_challenge_method": {"S256"},
	}
	if r.State != "" {
		query.Set("state", r.State)
	}
	if r.Nonce != "" {
		query.Set("nonce", r.Nonce)
	}
	resp, err := get(ctx, browser, authEndpoint+"?"+query.Encode())
	if err != nil {
		return "", fmt.Errorf("devidp: authorization request: %w", err)
	}
	if loc, ok := redirectedTo(resp, redirect); ok {
		return codeFrom(loc, r.State)
	}
	authRequestID := resp.Request.URL.Query().Get("authRequestID")
	if resp.StatusCode != http.StatusOK || authRequestID == "" {
		return "", unexpected("authorization request", resp)
	}

	form := url.Values{
		"id":       {authRequestID},
		"username": {r.Username},
		"password": {r.Password},
	}
	loginURL := *resp.Request.URL
	loginURL.RawQuery = ""
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, loginURL.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("devidp: login: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err = do(browser, req)
	if err != nil {
		return "", fmt.Errorf("devidp: login: %w", err)
	}
	if loc, ok := redirectedTo(resp, redirect); ok {
		return codeFrom(loc, r.State)
	}
	if resp.StatusCode == http.StatusOK && resp.Request.URL.Path == loginURL.Path {
		return "", ErrLoginFailed
	}
	return "", unexpected("login", resp)
}

func authorizationEndpoint(ctx context.Context, c *http.Client, issuer string) (string, error) {
	resp, err := get(ctx, c, issuer+"/.well-known/openid-configuration")
	if err != nil {
		return "", fmt.Errorf("devidp: discovery: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", unexpected("discovery", resp)
	}
	var doc struct {
		AuthorizationEndpoint string `json:"authorization_endpoint"`
	}
	if err := json.Unmarshal(resp.body, &doc); err != nil || doc.AuthorizationEndpoint == "" {
		return "", fmt.Errorf("devidp: discovery: no authorization_endpoint (%v)", err)
	}
	return doc.AuthorizationEndpoint, nil
}

// response is an HTTP response with its body read and closed.
type response struct {
	*http.Response
	body []byte
}

func get(ctx context.Context, c *http.Client, target string) (*response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	return do(c, req)
}

func do(c *http.Client, req *http.Request) (*response, error) {
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	return &response{Response: resp, body: body}, nil
}

func unexpected(step string, resp *response) error {
	body := strings.TrimSpace(string(resp.body))
	if len(body) > 200 {
		body = body[:200] + "..."
	}
	return fmt.Errorf("devidp: %s: unexpected %s from %s: %q", step, resp.Status, resp.Request.URL.Path, body)
}

// isRedirectTo reports whether u targets the app's redirect URI.
func isRedirectTo(u, redirect *url.URL) bool {
	return strings.EqualFold(u.Scheme, redirect.Scheme) &&
		strings.EqualFold(u.Host, redirect.Host) &&
		u.Path == redirect.Path && u.Opaque == redirect.Opaque
}

// redirectedTo returns the Location of a redirect to the app's redirect URI.
func redirectedTo(resp *response, redirect *url.URL) (*url.URL, bool) {
	if resp.StatusCode < 300 || resp.StatusCode > 399 {
		return nil, false
	}
	loc, err := resp.Location()
	if err != nil || !isRedirectTo(loc, redirect) {
		return nil, false
	}
	return loc, true
}

// codeFrom extracts the authorization code from the redirect back to the
// app (RFC 6749, section 4.1.2), checking state.
func codeFrom(loc *url.URL, state string) (string, error) {
	q := loc.Query()
	if e := q.Get("error"); e != "" {
		return "", &AuthorizationError{Code: e, Description: q.Get("error_description")}
	}
	if got := q.Get("state"); got != state {
		return "", fmt.Errorf("devidp: state mismatch: got %q, want %q", got, state)
	}
	code := q.Get("code")
	if code == "" {
		return "", errors.New("devidp: redirect carries no code")
	}
	return code, nil
}
