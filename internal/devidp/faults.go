package devidp

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
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

// serveWithAccessToken serves r with next and, if next answers 200,
// replaces the access_token of its JSON response with token.
func (p *Provider) serveWithAccessToken(w http.ResponseWriter, r *http.Request, next http.Handler, token string) {
	buf := &bufferedResponse{header: make(http.Header), status: http.StatusOK}
	next.ServeHTTP(buf, r)
	body := buf.body.Bytes()
	if buf.status == http.StatusOK {
		rewritten, err := withAccessToken(body, token)
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

// withAccessToken returns the JSON object body with its access_token set to
// token.
func withAccessToken(body []byte, token string) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, err
	}
	value, err := json.Marshal(token)
	if err != nil {
		return nil, err
	}
	fields["access_token"] = value
	return json.Marshal(fields)
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
