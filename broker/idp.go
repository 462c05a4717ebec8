package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// idp is what discovery tells about the identity provider.
type idp struct {
	provider *oidc.Provider
	verifier *oidc.IDTokenVerifier
	// refreshVerifier checks ID tokens returned by a refresh grant, whose
	// expiry may be short of the broker's clock skew tolerance; OIDC Core
	// 12.2 asks that iss, sub and aud match the original ones.
	refreshVerifier *oidc.IDTokenVerifier
	// logoutVerifier checks logout tokens, which need not carry exp.
	logoutVerifier *oidc.IDTokenVerifier
	endpoint       oauth2.Endpoint
	revocationURL  string
	jwksURL        string
	authStyle      oauth2.AuthStyle
}

// discoveryClaims are the discovery fields go-oidc does not expose.
type discoveryClaims struct {
	RevocationEndpoint       string   `json:"revocation_endpoint"`
	TokenEndpointAuthMethods []string `json:"token_endpoint_auth_methods_supported"`
	JWKSURI                  string   `json:"jwks_uri"`
	IDTokenSigningAlgs       []string `json:"id_token_signing_alg_values_supported"`
}

// Discover loads the IdP's discovery document and keys endpoint. It is safe
// to call again; once it has succeeded the result is kept.
func (s *Service) Discover(ctx context.Context) error {
	if s.idp.Load() != nil {
		return nil
	}
	_, err, _ := s.flight.Do("discover", func() (any, error) {
		if s.idp.Load() != nil {
			return nil, nil
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.IdPTimeout)
		defer cancel()
		p, err := oidc.NewProvider(s.clientContext(ctx), s.cfg.Issuer)
		if err != nil {
			return nil, fmt.Errorf("discover %s: %w", s.cfg.Issuer, err)
		}
		var dc discoveryClaims
		if err := p.Claims(&dc); err != nil {
			return nil, fmt.Errorf("decode discovery document: %w", err)
		}
		if dc.JWKSURI == "" {
			return nil, errors.New("the discovery document has no jwks_uri")
		}
		// The verifiers share the broker's key set rather than go-oidc's,
		// which fetches the keys again at every failed signature (see
		// keySet). The issuer is the configured one: go-oidc has checked
		// that discovery states exactly it.
		keys := newKeySet(s.fetchJWKS(dc.JWKSURI), s.cfg.Now)
		conf := &oidc.Config{ClientID: s.cfg.ClientID, Now: s.cfg.Now, SupportedSigningAlgs: idTokenAlgs(dc.IDTokenSigningAlgs)}
		refreshConf := *conf
		refreshConf.SkipExpiryCheck = true
		d := &idp{
			provider:        p,
			verifier:        oidc.NewVerifier(s.cfg.Issuer, keys, conf),
			refreshVerifier: oidc.NewVerifier(s.cfg.Issuer, keys, &refreshConf),
			logoutVerifier:  oidc.NewVerifier(s.cfg.Issuer, keys, &refreshConf),
			endpoint:        p.Endpoint(),
			revocationURL:   dc.RevocationEndpoint,
			jwksURL:         dc.JWKSURI,
			authStyle:       s.authStyle(dc.TokenEndpointAuthMethods),
		}
		d.endpoint.AuthStyle = d.authStyle
		s.idp.Store(d)
		return nil, nil
	})
	return err
}

// Ready reports whether the discovery document is loaded.
func (s *Service) Ready() bool { return s.idp.Load() != nil }

// DiscoveryProblem says why the discovery document is not loaded, in words
// fit for a readiness probe: "" once it is loaded. It names the issuers of a
// mismatch, which are public; any other failure is described only as such,
// its details being in the log.
func (s *Service) DiscoveryProblem() string {
	if s.Ready() {
		return ""
	}
	if p := s.discoveryProblem.Load(); p != nil {
		return *p
	}
	return "not loaded yet"
}

// DiscoverUntilReady retries discovery with capped exponential backoff until
// it succeeds or ctx ends, so the broker can start while the IdP is down. An
// issuer that the discovery document states differently (a trailing slash,
// another host name) is logged as an error naming both, at every attempt:
// it is a configuration mistake that waiting does not cure, unless the IdP's
// configuration changes.
func (s *Service) DiscoverUntilReady(ctx context.Context) {
	backoff := 500 * time.Millisecond
	for {
		err := s.Discover(ctx)
		if err == nil {
			s.log.Info("identity provider discovered", "issuer", s.cfg.Issuer)
			return
		}
		var mismatch *oidc.IssuerMismatchError
		if errors.As(err, &mismatch) {
			problem := fmt.Sprintf("issuer mismatch: configured %q, the discovery document states %q", mismatch.Provided, mismatch.Discovered)
			s.discoveryProblem.Store(&problem)
			s.log.Error("the configured issuer is not the one the identity provider's discovery document states: set BROKER_OIDC_ISSUER to exactly the discovered issuer",
				"configured_issuer", mismatch.Provided, "discovered_issuer", mismatch.Discovered, "retry_in", backoff)
		} else {
			problem := "discovery failing (see the log), retrying"
			s.discoveryProblem.Store(&problem)
			s.log.Warn("identity provider discovery failed, retrying", "issuer", s.cfg.Issuer, "error", err, "retry_in", backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// provider returns the discovered IdP, trying discovery once if it has not
// succeeded yet.
func (s *Service) provider(ctx context.Context) (*idp, error) {
	if d := s.idp.Load(); d != nil {
		return d, nil
	}
	if err := s.Discover(ctx); err != nil {
		return nil, wrap(CodeIdPUnavailable, err, "the identity provider is unavailable, retry later")
	}
	return s.idp.Load(), nil
}

// authStyle picks how the broker authenticates at the token endpoint: a
// public client sends its client_id in the form (RFC 6749 section 2.3 does
// not apply to it); a confidential one prefers client_secret_basic, the
// default of OpenID Connect Discovery 1.0 section 3 when the IdP lists
// nothing, and uses client_secret_post only when basic is not offered.
func (s *Service) authStyle(methods []string) oauth2.AuthStyle {
	if s.cfg.ClientSecret == "" {
		return oauth2.AuthStyleInParams
	}
	if len(methods) == 0 || slices.Contains(methods, "client_secret_basic") {
		return oauth2.AuthStyleInHeader
	}
	if slices.Contains(methods, "client_secret_post") {
		return oauth2.AuthStyleInParams
	}
	return oauth2.AuthStyleInHeader
}

// oauthConfig is the x/oauth2 client for one redirect URI.
func (s *Service) oauthConfig(d *idp, redirectURI string) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     s.cfg.ClientID,
		ClientSecret: s.cfg.ClientSecret,
		Endpoint:     d.endpoint,
		RedirectURL:  redirectURI,
	}
}

// clientContext makes x/oauth2 and go-oidc use the broker's IdP client.
func (s *Service) clientContext(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, s.cfg.HTTPClient)
}

// tokenError classifies an error of the token endpoint.
type tokenError struct {
	// rejected: the IdP answered with an OAuth error for the grant itself
	// (RFC 6749 section 5.2), as opposed to an outage or misconfiguration.
	rejected bool
	// status is the HTTP status of the answer; 0 when there was none.
	status int
	// oauthCode and description are the "error" and "error_description"
	// the IdP returned, if any.
	oauthCode, description string
}

func classifyTokenError(err error) tokenError {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		return tokenError{}
	}
	te := tokenError{oauthCode: re.ErrorCode, description: re.ErrorDescription}
	if re.Response == nil {
		return te
	}
	te.status = re.Response.StatusCode
	switch sc := te.status; {
	case sc >= 500, sc == http.StatusTooManyRequests:
		return te
	case sc == http.StatusUnauthorized && re.ErrorCode == "invalid_client":
		// The broker's own client credentials are wrong: an operator
		// problem, not the app's.
		return te
	case sc >= 400:
		te.rejected = re.ErrorCode != "" || sc == http.StatusBadRequest
	}
	return te
}

// dead reports whether a refusal of a refresh grant means that the refresh
// token cannot be used any more: invalid_grant (RFC 6749 section 5.2), or a
// 400 invalid_request, Dex's answer for a dead token, once it was repeated.
// Other refusals (invalid_client, unauthorized_client, invalid_scope, ...)
// are the broker's configuration, not the session's end.
func (te tokenError) dead() bool {
	return te.status >= 400 && te.status < 500 && te.oauthCode == "invalid_grant" ||
		te.status == http.StatusBadRequest && te.oauthCode == "invalid_request"
}

// summary describes the refusal for logs and the audit trail: the status
// and the IdP's error code, never its description, which an IdP may fill
// with anything.
func (te tokenError) summary() string {
	return fmt.Sprintf("the identity provider answered %d %s", te.status, te.oauthCode)
}

// revoke revokes a refresh token at the IdP (RFC 7009). It reports whether a
// revocation endpoint exists.
func (s *Service) revoke(ctx context.Context, d *idp, token string) (bool, error) {
	if d == nil || d.revocationURL == "" || token == "" {
		return false, nil
	}
	form := url.Values{"token": {token}, "token_type_hint": {"refresh_token"}}
	if s.cfg.ClientSecret == "" || d.authStyle == oauth2.AuthStyleInParams {
		form.Set("client_id", s.cfg.ClientID)
		if s.cfg.ClientSecret != "" {
			form.Set("client_secret", s.cfg.ClientSecret)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.IdPTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.revocationURL, strings.NewReader(form.Encode()))
	if err != nil {
		return true, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if s.cfg.ClientSecret != "" && d.authStyle == oauth2.AuthStyleInHeader {
		// RFC 6749 section 2.3.1: form-encode before basic auth.
		req.SetBasicAuth(url.QueryEscape(s.cfg.ClientID), url.QueryEscape(s.cfg.ClientSecret))
	}
	resp, err := s.cfg.HTTPClient.Do(req)
	if err != nil {
		return true, fmt.Errorf("revocation request: %w", redactURLError(err))
	}
	defer resp.Body.Close()
	// RFC 7009 section 2.2: 200 whether or not the token was valid.
	if resp.StatusCode != http.StatusOK {
		return true, fmt.Errorf("revocation endpoint answered %s", resp.Status)
	}
	return true, nil
}

// idpCause is what logs and wrapped errors keep of an error of the token
// endpoint: its status and OAuth error code, not the body x/oauth2 quotes
// when the answer has no error code (up to 1 MB of whatever the IdP sent).
func idpCause(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		te := classifyTokenError(err)
		if te.oauthCode == "" {
			return fmt.Errorf("the token endpoint answered %d", te.status)
		}
		return errors.New(te.summary())
	}
	return redactURLError(err)
}

// redactURLError drops the URL from a *url.Error: request URLs of the IdP do
// not carry secrets today, but an error that reaches logs should not depend on
// that.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}
