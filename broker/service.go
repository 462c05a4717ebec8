// Package broker is the domain of the token broker: sessions and their
// handles, and the use cases that open, use, refresh and end them. It talks
// to the identity provider through x/oauth2 and go-oidc and to storage
// through the small interfaces of store.go; it knows nothing of HTTP routing
// or Redis.
package broker

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/sync/singleflight"
)

// Config configures a Service. Zero durations take the documented defaults.
type Config struct {
	Issuer       string
	ClientID     string
	ClientSecret string // empty for a public client (PKCE only)
	RedirectURIs []string

	IdleTimeout time.Duration // default 720h
	MaxLifetime time.Duration // default 2160h
	RefreshSkew time.Duration // default 10s
	// TouchInterval throttles last-use writes: a session's last use is
	// recorded at most once per interval. Default: min(1m, IdleTimeout/10).
	TouchInterval time.Duration
	// LockTTL is the lease of a refresh across replicas; it is renewed
	// while the IdP call runs. Default 10s.
	LockTTL time.Duration
	// IdPTimeout bounds each call to the IdP but the refresh grant.
	// Default 10s.
	IdPTimeout time.Duration
	// RefreshTimeout bounds the wait for the IdP's answer to a refresh
	// grant. It is long on purpose: the refresh token is not sent again
	// while this call may still be processed, and requests never wait for
	// it longer than a few seconds (see freshTokens). Default 5m.
	RefreshTimeout time.Duration
	// OutboxDelay is how long an ending is left to the request that made
	// it before the outbox worker finishes it. Default 1m.
	OutboxDelay time.Duration

	Store  Store
	Locker Locker
	Audit  AuditLog    // optional
	Replay ReplayGuard // needed for back-channel logout and DPoP
	// DPoP configures device-bound sessions (RFC 9449, see dpop.go).
	DPoP DPoPConfig

	// HTTPClient calls the IdP; default one with IdPTimeout. The refresh
	// grant uses a copy without the client-wide Timeout, bounded by
	// RefreshTimeout instead.
	HTTPClient *http.Client
	Now        func() time.Time // default time.Now
	Logger     *slog.Logger     // default slog.Default()
	Metrics    Metrics          // optional
}

// Metrics receives counts of the broker's decisions. Implementations must be
// safe for concurrent use.
type Metrics interface {
	Exchange(outcome string)
	Refresh(outcome string) // "ok", "failed", "rejected", "coalesced"
	// Revocation counts a session ended, by EndReason.Reason: "logout",
	// "admin", "user_revoke", "backchannel_logout", "refresh_rejected",
	// "expired".
	Revocation(reason string)
	// IdPRequest times one HTTP request to the IdP, to its response's
	// headers, by endpoint and outcome (see IdPEndpoints, IdPOutcomes).
	IdPRequest(endpoint, outcome string, elapsed time.Duration)
}

type noMetrics struct{}

func (noMetrics) Exchange(string)   {}
func (noMetrics) Refresh(string)    {}
func (noMetrics) Revocation(string) {}

// Service runs the broker's use cases. It is safe for concurrent use. It
// runs work of its own in the background (see Close).
type Service struct {
	cfg        Config
	log        *slog.Logger
	idp        atomic.Pointer[idp]
	flight     singleflight.Group
	backoff    backoffs
	flights    flights
	pending    pendingTokens
	unreadable unreadableSeen
	dpop       *dpop
	life       *lifecycle

	// discoveryProblem says why discovery is failing, for the readiness
	// probe; see DiscoveryProblem.
	discoveryProblem atomic.Pointer[string]
	// refreshClient is cfg.HTTPClient without its Timeout.
	refreshClient *http.Client
	// shortTokens is set once an access token that lives shorter than
	// RefreshSkew was seen, so that the warning is logged once.
	shortTokens atomic.Bool
}

// New validates cfg, fills in defaults and returns a Service whose outbox
// worker runs until Close. Discovery is not done here: call Discover or
// DiscoverUntilReady.
func New(cfg Config) (*Service, error) {
	var errs []error
	if cfg.Issuer == "" {
		errs = append(errs, errors.New("issuer is required"))
	}
	if cfg.ClientID == "" {
		errs = append(errs, errors.New("client id is required"))
	}
	if len(cfg.RedirectURIs) == 0 {
		errs = append(errs, errors.New("at least one redirect URI is required"))
	}
	for i, uri := range cfg.RedirectURIs {
		if err := CheckRedirectURI(uri); err != nil {
			errs = append(errs, fmt.Errorf("redirect URI %d: %w", i+1, err))
		}
	}
	if cfg.Store == nil || cfg.Locker == nil {
		errs = append(errs, errors.New("a store and a locker are required"))
	}
	dp, err := newDPoP(cfg.DPoP, cfg.Metrics)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 720 * time.Hour
	}
	if cfg.MaxLifetime <= 0 {
		cfg.MaxLifetime = 2160 * time.Hour
	}
	if cfg.RefreshSkew <= 0 {
		cfg.RefreshSkew = 10 * time.Second
	}
	if cfg.TouchInterval <= 0 {
		cfg.TouchInterval = min(time.Minute, cfg.IdleTimeout/10)
	}
	if cfg.LockTTL <= 0 {
		cfg.LockTTL = 10 * time.Second
	}
	if cfg.IdPTimeout <= 0 {
		cfg.IdPTimeout = 10 * time.Second
	}
	if cfg.RefreshTimeout <= 0 {
		cfg.RefreshTimeout = 5 * time.Minute
	}
	if cfg.OutboxDelay <= 0 {
		cfg.OutboxDelay = time.Minute
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: cfg.IdPTimeout}
	}
	refreshClient := *cfg.HTTPClient
	refreshClient.Timeout = 0
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = noMetrics{}
	}
	s := &Service{cfg: cfg, log: cfg.Logger, life: newLifecycle(), refreshClient: &refreshClient, dpop: dp}
	s.instrumentIdP()
	s.startWorker()
	return s, nil
}

// ExchangeRequest is what an app hands over after the browser step.
type ExchangeRequest struct {
	Code         string
	CodeVerifier string
	RedirectURI  string
	Nonce        string // optional; checked against the ID token when set
	IP           string
	UserAgent    string
	// DPoP is the sign-in's proof, if any (RFC 9449 section 5): the
	// session is then bound to its key.
	DPoP ProofRequest
}

// NewSession is the result of a successful exchange. Handle is the only
// copy of the credential: it is given to the app and never stored.
type NewSession struct {
	Handle  string
	Session *Session
	IDToken string
}

// verifierPattern is the code_verifier syntax of RFC 7636 section 4.1.
var verifierPattern = regexp.MustCompile(`^[A-Za-z0-9\-._~]{43,128}$`)

// Exchange redeems an authorization code with its PKCE verifier at the IdP,
// verifies the ID token and opens a session.
func (s *Service) Exchange(ctx context.Context, req ExchangeRequest) (*NewSession, error) {
	switch {
	case req.Code == "":
		return nil, Errorf(CodeInvalidRequest, "code is required")
	case req.CodeVerifier == "":
		return nil, Errorf(CodeInvalidRequest, "code_verifier is required")
	case !verifierPattern.MatchString(req.CodeVerifier):
		return nil, Errorf(CodeInvalidRequest, "code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~] (RFC 7636 section 4.1)")
	case req.RedirectURI == "":
		return nil, Errorf(CodeInvalidRequest, "redirect_uri is required")
	case !slices.Contains(s.cfg.RedirectURIs, req.RedirectURI):
		return nil, Errorf(CodeInvalidRequest, "redirect_uri is not allowed")
	}
	// The proof is checked before the code is spent.
	jkt, err := s.signInProof(ctx, req.DPoP)
	if err != nil {
		s.cfg.Metrics.Exchange("rejected")
		return nil, err
	}
	// A code can be redeemed once: make sure the session can be stored
	// before spending it, so that a store outage loses nothing.
	if err := s.cfg.Store.Ping(ctx); err != nil {
		s.cfg.Metrics.Exchange("store_unavailable")
		return nil, fmt.Errorf("check store before redeeming the code: %w", err)
	}
	d, err := s.provider(ctx)
	if err != nil {
		s.cfg.Metrics.Exchange("idp_unavailable")
		return nil, err
	}
	callCtx, cancel := context.WithTimeout(ctx, s.cfg.IdPTimeout)
	defer cancel()
	tok, err := s.oauthConfig(d, req.RedirectURI).Exchange(s.clientContext(callCtx), req.Code, oauth2.VerifierOption(req.CodeVerifier))
	if err != nil {
		if classifyTokenError(err).rejected {
			s.cfg.Metrics.Exchange("rejected")
			return nil, wrap(CodeInvalidGrant, idpCause(err), "the identity provider rejected the code, code_verifier or redirect_uri")
		}
		s.cfg.Metrics.Exchange("idp_unavailable")
		return nil, wrap(CodeIdPUnavailable, idpCause(err), "the identity provider is unavailable, retry later")
	}
	sess, rawID, err := s.verifyExchange(callCtx, d, tok, req.Nonce)
	if err != nil {
		s.cfg.Metrics.Exchange("rejected")
		// The IdP issued tokens that the broker will not use: revoke them
		// rather than leave a live refresh token behind.
		s.revokeDetached(ctx, tok.RefreshToken, "")
		return nil, err
	}
	id, handle, hash, err := newHandle()
	if err != nil {
		return nil, fmt.Errorf("new handle: %w", err)
	}
	now := s.cfg.Now()
	sess.ID = id
	sess.SecretHash = hash
	sess.ClientID = s.cfg.ClientID
	sess.CreatedAt = now
	sess.LastUsedAt = now
	sess.IdleTimeout = s.cfg.IdleTimeout
	sess.AbsoluteExpiry = now.Add(s.cfg.MaxLifetime)
	if sess.Tokens.RefreshToken == "" && !sess.Tokens.Expiry.IsZero() && sess.Tokens.Expiry.Before(sess.AbsoluteExpiry) {
		// Without a refresh token the session cannot outlive its access
		// token.
		sess.AbsoluteExpiry = sess.Tokens.Expiry
	}
	sess.Generation = 1
	sess.IP = truncate(req.IP, MaxIPLen)
	sess.UserAgent = truncate(req.UserAgent, MaxUserAgentLen)
	sess.JKT = jkt
	if err := s.cfg.Store.Create(ctx, sess); err != nil {
		s.cfg.Metrics.Exchange("store_unavailable")
		s.revokeDetached(ctx, tok.RefreshToken, id)
		return nil, fmt.Errorf("create session: %w", err)
	}
	s.cfg.Metrics.Exchange("ok")
	if jkt != "" {
		s.dpop.count("bound")
	}
	s.log.InfoContext(ctx, "session opened", "session_id", id, "sub", sess.Subject, "refreshable", sess.Tokens.RefreshToken != "")
	return &NewSession{Handle: handle, Session: sess, IDToken: rawID}, nil
}

// verifyExchange checks the ID token of a code grant (OIDC Core 3.1.3.7)
// and builds the session's identity and tokens from it.
func (s *Service) verifyExchange(ctx context.Context, d *idp, tok *oauth2.Token, nonce string) (*Session, string, error) {
	rawID, _ := tok.Extra("id_token").(string)
	if rawID == "" {
		return nil, "", Errorf(CodeInvalidGrant, "the identity provider returned no ID token")
	}
	idt, err := d.verifier.Verify(s.clientContext(ctx), rawID)
	if err == nil {
		err = s.checkIDToken(idt)
	}
	if err != nil {
		return nil, "", wrap(CodeInvalidGrant, err, "the ID token failed verification")
	}
	// OIDC Core 3.1.3.7 step 11: the nonce must equal the one sent in the
	// authentication request.
	if nonce != "" && subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(nonce)) != 1 {
		return nil, "", Errorf(CodeInvalidGrant, "the ID token's nonce does not match")
	}
	// OIDC Core 3.2.2.9: at_hash, when present, binds the access token.
	if idt.AccessTokenHash != "" {
		if err := idt.VerifyAccessToken(tok.AccessToken); err != nil {
			return nil, "", wrap(CodeInvalidGrant, err, "the ID token's at_hash does not match the access token")
		}
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return nil, "", wrap(CodeInvalidGrant, err, "the ID token's claims cannot be read")
	}
	sid, _ := claims["sid"].(string)
	return &Session{
		Subject: idt.Subject,
		SID:     sid,
		Claims:  claims,
		Tokens:  s.tokensFrom(tok, rawID),
	}, rawID, nil
}

// tokensFrom takes the tokens of a token response. The access token's
// expiry is counted from expires_in on the broker's clock, which decides
// every expiry, rather than on the wall clock x/oauth2 uses.
func (s *Service) tokensFrom(tok *oauth2.Token, rawID string) Tokens {
	now := s.cfg.Now()
	expiry := tok.Expiry
	if tok.ExpiresIn > 0 {
		expiry = now.Add(time.Duration(tok.ExpiresIn) * time.Second)
	}
	if life := expiry.Sub(now); !expiry.IsZero() && life < s.cfg.RefreshSkew && s.shortTokens.CompareAndSwap(false, true) {
		s.log.Warn("the identity provider issues access tokens that live shorter than the refresh skew: "+
			"such a session is refreshed at most once per half lifetime (at least 1 s), not before every request; "+
			"lower BROKER_REFRESH_SKEW below the tokens' lifetime or raise the lifetime at the identity provider",
			"lifetime", life.Round(time.Millisecond), "refresh_skew", s.cfg.RefreshSkew)
	}
	return Tokens{
		AccessToken:  tok.AccessToken,
		TokenType:    tok.Type(),
		RefreshToken: tok.RefreshToken,
		IDToken:      rawID,
		Expiry:       expiry,
		IssuedAt:     now,
	}
}

// Authenticate resolves a credential to its live session and records the
// use. Any handle that is malformed, unknown, ended, unreadable or whose
// secret does not match gets ErrInvalidToken, so a caller cannot tell these
// apart; a DPoP-bound session also needs a proof of its key (a *DPoPError
// otherwise).
func (s *Service) Authenticate(ctx context.Context, cred Credential) (*Session, error) {
	id, hash, ok := parseHandle(cred.Handle)
	if !ok {
		return nil, ErrInvalidToken
	}
	sess, err := s.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if !sess.matches(hash) {
		return nil, ErrInvalidToken
	}
	if err := s.checkCredential(ctx, sess, cred); err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	if sess.Ended(now) {
		// The store's TTL is a backstop; a clock check ends it exactly.
		_, err := s.end(ctx, id, EndReason{Actor: ActorBroker, Action: ActionExpired, Reason: "expired", RevokeAtIdP: true,
			Detail: "idle timeout or maximum lifetime reached"})
		if err != nil && !errors.Is(err, ErrNotFound) {
			s.log.WarnContext(ctx, "ending an expired session failed", "session_id", id, "error", err)
		}
		return nil, ErrInvalidToken
	}
	if now.Sub(sess.LastUsedAt) >= s.cfg.TouchInterval {
		sess.LastUsedAt = now
		if err := s.cfg.Store.Touch(ctx, id, now, sess.ExpiresAt()); err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil, ErrInvalidToken
			}
			// A missed touch costs at most one interval of idle time.
			s.log.WarnContext(ctx, "recording session use failed", "session_id", id, "error", err)
		}
	}
	return sess, nil
}

// get reads a session for its user: unknown and unreadable sessions are
// invalid handles. An unreadable record is logged once per process with its
// session id, never with what it holds.
func (s *Service) get(ctx context.Context, id string) (*Session, error) {
	sess, err := s.cfg.Store.Lookup(ctx, id)
	switch {
	case err == nil:
		return sess, nil
	case errors.Is(err, ErrNotFound):
		return nil, ErrInvalidToken
	case errors.Is(err, ErrUnreadable):
		if s.unreadable.first(id) {
			s.log.WarnContext(ctx, "session record cannot be read; treating the session as ended (see broker rekey)", "session_id", id, "error", err)
		}
		return nil, ErrInvalidToken
	}
	return nil, fmt.Errorf("get session: %w", err)
}

// AccessToken returns a fresh access token for the session of a credential,
// refreshing it first when it has less than RefreshSkew left.
func (s *Service) AccessToken(ctx context.Context, cred Credential) (sessionID, accessToken string, err error) {
	sess, err := s.Authenticate(ctx, cred)
	if err != nil {
		return "", "", err
	}
	tok, err := s.freshTokens(ctx, sess)
	if err != nil {
		return sess.ID, "", err
	}
	return sess.ID, tok.AccessToken, nil
}

// Logout ends the session of a credential and revokes its refresh token at
// the IdP. An unknown, ended or unreadable handle is not an error: the
// outcome is the same. A DPoP-bound session ends only with a proof of its
// key.
func (s *Service) Logout(ctx context.Context, cred Credential) error {
	id, hash, ok := parseHandle(cred.Handle)
	if !ok {
		return nil
	}
	sess, err := s.get(ctx, id)
	switch {
	case errors.Is(err, ErrInvalidToken):
		return nil
	case err != nil:
		return err
	case !sess.matches(hash):
		return nil
	}
	if err := s.checkCredential(ctx, sess, cred); err != nil {
		return err
	}
	_, err = s.end(ctx, id, EndReason{Actor: ActorUser, Action: ActionLogout, Reason: "logout", RevokeAtIdP: true})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// UserInfo fetches the IdP's userinfo response for the session of a
// credential with a fresh access token, as the raw JSON object the IdP
// returned.
func (s *Service) UserInfo(ctx context.Context, cred Credential) ([]byte, error) {
	sess, err := s.Authenticate(ctx, cred)
	if err != nil {
		return nil, err
	}
	tok, err := s.freshTokens(ctx, sess)
	if err != nil {
		return nil, err
	}
	d, err := s.provider(ctx)
	if err != nil {
		return nil, err
	}
	ts := oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok.AccessToken, TokenType: "Bearer"})
	ctx, cancel := context.WithTimeout(ctx, s.cfg.IdPTimeout)
	defer cancel()
	info, err := d.provider.UserInfo(s.clientContext(ctx), ts)
	if err != nil {
		return nil, wrap(CodeIdPUnavailable, redactURLError(err), "the identity provider's userinfo endpoint failed")
	}
	var raw rawJSON
	if err := info.Claims(&raw); err != nil {
		return nil, wrap(CodeIdPUnavailable, err, "the identity provider's userinfo response cannot be read")
	}
	return raw, nil
}

// rawJSON keeps a JSON value as it came.
type rawJSON []byte

func (r *rawJSON) UnmarshalJSON(b []byte) error {
	*r = append((*r)[:0], b...)
	return nil
}
