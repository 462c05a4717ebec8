package devidp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	jose "github.com/go-jose/go-jose/v4"
)

// tokenRequest is what observe tells the handlers it wraps about a request
// to the token endpoint, and what they tell it back.
type tokenRequest struct {
	grant string
	// injected is set when a fault answered the request in place of the
	// OP.
	injected bool
}

type tokenRequestKey struct{}

// tokenRequestOf returns the token request r carries, or nil if r is not a
// POST to the token endpoint.
func tokenRequestOf(r *http.Request) *tokenRequest {
	tr, _ := r.Context().Value(tokenRequestKey{}).(*tokenRequest)
	return tr
}

func (tr *tokenRequest) markInjected() {
	if tr != nil {
		tr.injected = true
	}
}

// refreshFault is the error FailRefresh answers refresh grants with.
type refreshFault struct {
	status            int
	code, description string
	// remaining counts the grants still to fail; negative means every one.
	remaining int
}

// FailRefresh answers the next times refresh_token grants (every one while
// times is negative, until FailRefresh(0, "", "", 0) heals the Provider)
// with status and an RFC 6749 section 5.2 error body
// {"error": code, "error_description": description} without reaching the
// OP, so the presented refresh token stays valid. Status 0 means 400.
// Failed grants count in Count, never in SuccessfulRefreshes. SetFailure,
// when set, answers first.
//
// It models what real IdPs answer: Dex 400 invalid_request for a refresh
// token it no longer knows and 500 invalid_request when a connector fails;
// Hydra 400 invalid_request "Please retry the request" when concurrent
// refreshes collide.
func (p *Provider) FailRefresh(status int, code, description string, times int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if times == 0 {
		p.refreshFault = refreshFault{}
		return
	}
	if status == 0 {
		status = http.StatusBadRequest
	}
	p.refreshFault = refreshFault{status: status, code: code, description: description, remaining: times}
}

// takeRefreshFault returns the fault the next refresh grant is answered
// with, if any, and uses up one of its times.
func (p *Provider) takeRefreshFault() (refreshFault, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.refreshFault
	if f.remaining == 0 {
		return refreshFault{}, false
	}
	if f.remaining > 0 {
		p.refreshFault.remaining--
	}
	return f, true
}

// writeTokenError writes an error response of the token endpoint (RFC 6749,
// section 5.2).
func writeTokenError(w http.ResponseWriter, f refreshFault) {
	body, _ := json.Marshal(struct {
		Error       string `json:"error"`
		Description string `json:"error_description,omitempty"`
	}{f.code, f.description})
	h := w.Header()
	h.Set("Content-Type", "application/json;charset=UTF-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	// Section 5.1 applies the same headers to every token response.
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(f.status)
	w.Write(body)
}

// SetStaticAccessToken makes every successful refresh_token grant answer
// with token as its access_token in place of the one the OP issued, every
// other field kept, as an IdP that hands out the same access token twice.
// The OP does not know token: its userinfo endpoint refuses it. "" heals
// the Provider.
func (p *Provider) SetStaticAccessToken(token string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.staticAccess = token
}

// tokenResponseRewrite returns how a successful answer to a token request
// of grant is changed (SetStaticAccessToken on refresh grants,
// RewriteIDTokens on every grant), or nil when it is served as is.
func (p *Provider) tokenResponseRewrite(grant string) func(fields map[string]json.RawMessage) error {
	p.mu.Lock()
	static, rewriteID := p.staticAccess, p.rewriteID
	p.mu.Unlock()
	if grant != GrantRefreshToken {
		static = ""
	}
	if static == "" && rewriteID == nil {
		return nil
	}
	return func(fields map[string]json.RawMessage) error {
		if static != "" {
			value, err := json.Marshal(static)
			if err != nil {
				return err
			}
			fields["access_token"] = value
		}
		if raw, ok := fields["id_token"]; ok && rewriteID != nil {
			var idToken string
			if err := json.Unmarshal(raw, &idToken); err != nil {
				return fmt.Errorf("id_token: %w", err)
			}
			resigned, err := p.resignIDToken(idToken, rewriteID)
			if err != nil {
				return err
			}
			if fields["id_token"], err = json.Marshal(resigned); err != nil {
				return err
			}
		}
		return nil
	}
}

// serveRewritten serves r with next and, if next answers 200, changes its
// JSON object with rewrite.
func (p *Provider) serveRewritten(w http.ResponseWriter, r *http.Request, next http.Handler, rewrite func(map[string]json.RawMessage) error) {
	buf := &bufferedResponse{header: make(http.Header), status: http.StatusOK}
	next.ServeHTTP(buf, r)
	body := buf.body.Bytes()
	if buf.status == http.StatusOK {
		rewritten, err := rewriteObject(body, rewrite)
		if err != nil {
			p.logger.Warn("dev OpenID Provider: token response left as is", "error", err)
		} else {
			body = rewritten
		}
	}
	h := w.Header()
	for k, v := range buf.header {
		h[k] = v
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(buf.status)
	w.Write(body)
}

// rewriteObject returns the JSON object body as rewrite changed it.
func rewriteObject(body []byte, rewrite func(map[string]json.RawMessage) error) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, err
	}
	if err := rewrite(fields); err != nil {
		return nil, err
	}
	return json.Marshal(fields)
}

// RewriteIDTokens makes the token endpoint change the claims of every ID
// token it returns, on code and refresh grants: rewrite gets the claims as
// the OP issued them (numbers as json.Number) and changes them in place;
// the ID token is then signed again with the OP's current key, so it
// verifies against the OP's JWKS. It models an IdP that issues ID tokens a
// relying party must refuse (no sub, a foreign azp, iat in the future...).
// nil heals the Provider.
func (p *Provider) RewriteIDTokens(rewrite func(claims map[string]any)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rewriteID = rewrite
}

// resignIDToken returns the ID token raw with its claims changed by
// rewrite, signed with the current key.
func (p *Provider) resignIDToken(raw string, rewrite func(map[string]any)) (string, error) {
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return "", fmt.Errorf("id_token: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(jws.UnsafePayloadWithoutVerification()))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil {
		return "", fmt.Errorf("id_token claims: %w", err)
	}
	rewrite(claims)
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	return p.sign(payload, "JWT")
}

// bufferedResponse collects a response so it can be changed before it is
// sent.
type bufferedResponse struct {
	header      http.Header
	status      int
	wroteHeader bool
	body        bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(status int) {
	if !b.wroteHeader {
		b.status, b.wroteHeader = status, true
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.wroteHeader = true
	return b.body.Write(p)
}

// RefreshTokensSeen returns every refresh token presented on a
// refresh_token grant, in arrival order, whatever the answer: a token
// listed twice was sent twice.
func (p *Provider) RefreshTokensSeen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.refreshSeen)
}
