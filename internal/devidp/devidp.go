// Package devidp runs a real OpenID Provider in-process, over real HTTP on a
// loopback port, for integration tests and local development.
//
// It is the zitadel/oidc example OP (package op with the example login UI and
// in-memory storage) configured for one client, with hooks tests need: token
// endpoint and key set counters, recorded RFC 7009 revocations and presented
// refresh tokens, injectable outages (SetFailure, SetLatency, Pause, Stop,
// Restart), the refresh faults of real IdPs (FailRefresh,
// SetStaticAccessToken), ID tokens with chosen claims (RewriteIDTokens), and
// access to the ID token signing key and its rotation (SigningKey,
// RotateSigningKey).
//
// The example OP logs every request through the process-wide slog default
// logger; Config.Logger only receives the Provider's own messages.
package devidp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// Config configures a Provider. The zero value is usable.
type Config struct {
	// Addr is the listen address. Default "127.0.0.1:0" (a free port).
	Addr string
	// ClientID is the one registered client. Default "mobile-app".
	ClientID string
	// ClientSecret, when empty, makes the client a native public client that
	// must use PKCE. When set, the client is confidential and authenticates
	// with client_secret_basic (or client_secret_post); PKCE is then checked
	// whenever the authorization request carried a code_challenge.
	ClientSecret string
	// RedirectURIs the client may use. Default ["com.example.app:/oauth2redirect"].
	RedirectURIs []string
	// AccessTokenTTL is the lifetime of access tokens, reported as expires_in
	// on code and refresh grants and enforced by the userinfo endpoint.
	// Default 5m.
	AccessTokenTTL time.Duration
	// Logger receives the Provider's own messages. Default: discarded.
	Logger *slog.Logger
}

// Defaults applied by Start.
const (
	DefaultAddr           = "127.0.0.1:0"
	DefaultClientID       = "mobile-app"
	DefaultRedirectURI    = "com.example.app:/oauth2redirect"
	DefaultAccessTokenTTL = 5 * time.Minute
)

// Grant types accepted by Count.
const (
	GrantAuthorizationCode = "authorization_code"
	GrantRefreshToken      = "refresh_token"
)

// maxFormBytes bounds the token and revocation request bodies the
// middleware reads to classify a request.
const maxFormBytes = 1 << 20

// stopPause follows closing the server's connections in Stop and Restart.
const stopPause = 50 * time.Millisecond

// Provider is a running OpenID Provider. Its methods are safe for
// concurrent use.
type Provider struct {
	cfg        Config
	issuer     string
	listenAddr string
	handler    http.Handler
	store      *store
	logger     *slog.Logger

	tokenPath      string
	revocationPath string
	keysPath       string

	mu           sync.Mutex
	server       *http.Server
	served       chan struct{}
	failure      int
	latency      time.Duration
	pause        *pause
	refreshFault refreshFault
	staticAccess string
	rewriteID    func(claims map[string]any)
	counts       map[string]int
	keyFetches   int
	refreshesOK  int
	revoked      []string
	refreshSeen  []string
}

// Start listens on cfg.Addr and serves the OP until Close. The issuer is
// "http://HOST:PORT" with the bound port, without a trailing slash.
func Start(cfg Config) (*Provider, error) {
	cfg, err := withDefaults(cfg)
	if err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("devidp: listen on %s: %w", cfg.Addr, err)
	}
	bound := ln.Addr().(*net.TCPAddr)
	listenHost, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("devidp: Addr %q: %w", cfg.Addr, err)
	}
	issuerHost := "127.0.0.1"
	if !bound.IP.IsUnspecified() {
		issuerHost = bound.IP.String()
	}
	port := strconv.Itoa(bound.Port)

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("devidp: generate signing key: %w", err)
	}
	kid, err := randomID()
	if err != nil {
		ln.Close()
		return nil, err
	}

	p := &Provider{
		cfg:            cfg,
		issuer:         "http://" + net.JoinHostPort(issuerHost, port),
		listenAddr:     net.JoinHostPort(listenHost, port),
		store:          newStore(clientsFor(cfg), &signingKey{id: kid, key: key}, cfg.AccessTokenTTL),
		logger:         cfg.Logger,
		tokenPath:      op.DefaultEndpoints.Token.Relative(),
		revocationPath: op.DefaultEndpoints.Revocation.Relative(),
		keysPath:       op.DefaultEndpoints.JwksURI.Relative(),
		counts:         make(map[string]int),
	}
	// A nil logger keeps SetupServer from replacing the process-wide default.
	router := exampleop.SetupServer(p.issuer, p.store, nil, false)
	p.handler = p.observe(p.hold(p.inject(router)))

	p.mu.Lock()
	defer p.mu.Unlock()
	p.serve(ln)
	p.logger.Info("dev OpenID Provider started", "issuer", p.issuer, "client_id", cfg.ClientID)
	return p, nil
}

func withDefaults(cfg Config) (Config, error) {
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.ClientID == "" {
		cfg.ClientID = DefaultClientID
	}
	if len(cfg.RedirectURIs) == 0 {
		cfg.RedirectURIs = []string{DefaultRedirectURI}
	}
	cfg.RedirectURIs = append([]string(nil), cfg.RedirectURIs...)
	if cfg.AccessTokenTTL == 0 {
		cfg.AccessTokenTTL = DefaultAccessTokenTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}

	var problems []error
	if cfg.AccessTokenTTL < time.Second {
		problems = append(problems, fmt.Errorf("AccessTokenTTL %v: want at least 1s", cfg.AccessTokenTTL))
	}
	for _, uri := range cfg.RedirectURIs {
		if u, err := url.Parse(uri); err != nil || u.Scheme == "" {
			problems = append(problems, fmt.Errorf("RedirectURIs: %q is not an absolute URI", uri))
		}
	}
	if err := errors.Join(problems...); err != nil {
		return Config{}, fmt.Errorf("devidp: invalid config: %w", err)
	}
	return cfg, nil
}

func clientsFor(cfg Config) map[string]client {
	if cfg.ClientSecret == "" {
		c := storage.NativeClient(cfg.ClientID, cfg.RedirectURIs...)
		return map[string]client{cfg.ClientID: {Client: c, appType: op.ApplicationTypeNative}}
	}
	c := storage.WebClient(cfg.ClientID, cfg.ClientSecret, cfg.RedirectURIs...)
	// The OP accepts custom-scheme redirect URIs only for native
	// applications; a confidential broker serving a mobile app needs them.
	appType := op.ApplicationTypeWeb
	for _, uri := range cfg.RedirectURIs {
		if !strings.HasPrefix(uri, "http://") && !strings.HasPrefix(uri, "https://") {
			appType = op.ApplicationTypeNative
		}
	}
	return map[string]client{cfg.ClientID: {Client: c, appType: appType}}
}

// serve starts serving on ln. p.mu must be held.
func (p *Provider) serve(ln net.Listener) {
	srv := &http.Server{
		Handler:           p.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(p.logger.Handler(), slog.LevelWarn),
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.logger.Error("dev OpenID Provider stopped serving", "error", err)
		}
	}()
	p.server, p.served = srv, served
}

// stop closes the listener and every open connection, and drops the
// requests a pause holds. p.mu must be held.
func (p *Provider) stop() error {
	if p.server == nil {
		p.dropHeld()
		return nil
	}
	err := p.server.Close()
	<-p.served
	p.server, p.served = nil, nil
	p.dropHeld()
	// Give clients a moment to notice their keep-alive connections were
	// closed, so their next request dials afresh (and is refused, or reaches
	// the restarted server) instead of failing with EOF on a dead connection.
	time.Sleep(stopPause)
	return err
}

// Issuer returns the issuer URL, e.g. "http://127.0.0.1:43123".
func (p *Provider) Issuer() string { return p.issuer }

// ClientID returns the registered client's id.
func (p *Provider) ClientID() string { return p.cfg.ClientID }

// Stop stops listening and drops open connections, so clients get
// "connection refused", but keeps keys, users, sessions and tokens for
// Restart. It pauses briefly so clients see their pooled connections close.
// Stop ends a Pause as a kill ends a stopped process: the held requests are
// dropped without reaching the OP, and a Restart serves unpaused.
func (p *Provider) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stop()
}

// Close stops the Provider. It is Stop under the name io.Closer callers
// expect: Restart may still bring the Provider back. Requests held by Pause
// are dropped, so a test that ends paused does not hang.
func (p *Provider) Close() error { return p.Stop() }

// Restart stops the Provider if it is running and listens again on the same
// address and port, with the same issuer, keys and tokens. Restarting a
// running Provider drops its open connections first.
func (p *Provider) Restart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.stop(); err != nil {
		return fmt.Errorf("devidp: stop: %w", err)
	}
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", p.listenAddr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("devidp: listen again on %s: %w", p.listenAddr, err)
	}
	p.serve(ln)
	return nil
}

// SetFailure makes every request fail with the given HTTP status (e.g. 503)
// and a short plain-text body, as a sick IdP would. 0 heals the Provider.
func (p *Provider) SetFailure(status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failure = status
}

// Count returns the number of POST requests to the token endpoint with the
// given grant_type, whatever their outcome (including injected failures),
// counted when they arrive (a request held by Pause is counted at once).
func (p *Provider) Count(grantType string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[grantType]
}

// SuccessfulRefreshes returns the number of refresh_token grants the OP
// answered with 200. Grants answered by SetFailure or FailRefresh never
// reached the OP and are not counted.
func (p *Provider) SuccessfulRefreshes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refreshesOK
}

// Revoked returns, in order, the tokens whose RFC 7009 revocation the OP
// answered with 200. Requests refused by client authentication or failed by
// SetFailure are not included.
func (p *Provider) Revoked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.revoked...)
}

// SigningKey returns the private key the OP signs ID tokens with and its key
// id (the JWT "kid" header), e.g. to sign back-channel logout tokens.
func (p *Provider) SigningKey() (*rsa.PrivateKey, string) {
	k := p.store.currentKey()
	return k.key, k.id
}

// SetLatency makes every request wait d before it is served (0 heals): an
// IdP that hangs rather than refusing, as one behind a stalled load
// balancer does. A request whose client gives up stops waiting.
func (p *Provider) SetLatency(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency = d
}

// inject delays requests while a latency is set, fails every request while
// a failure status is set, applies the refresh faults (FailRefresh,
// SetStaticAccessToken) to refresh_token grants and RewriteIDTokens to
// every token response.
func (p *Provider) inject(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		status, latency := p.failure, p.latency
		p.mu.Unlock()
		if latency > 0 {
			select {
			case <-time.After(latency):
			case <-r.Context().Done():
				return
			}
		}
		tr := tokenRequestOf(r)
		if status != 0 {
			tr.markInjected()
			http.Error(w, "devidp: injected failure: "+http.StatusText(status), status)
			return
		}
		if tr == nil {
			next.ServeHTTP(w, r)
			return
		}
		if tr.grant == GrantRefreshToken {
			if fault, ok := p.takeRefreshFault(); ok {
				tr.markInjected()
				writeTokenError(w, fault)
				return
			}
		}
		rewrite := p.tokenResponseRewrite(tr.grant)
		if rewrite == nil {
			next.ServeHTTP(w, r)
			return
		}
		p.serveRewritten(w, r, next, rewrite)
	})
}

// observe counts token requests and key set fetches, records presented
// refresh tokens and accepted revocations, and tells the handlers it wraps
// which grant a token request is for.
func (p *Provider) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == p.keysPath {
			p.mu.Lock()
			p.keyFetches++
			p.mu.Unlock()
		}
		if r.Method != http.MethodPost || (r.URL.Path != p.tokenPath && r.URL.Path != p.revocationPath) {
			next.ServeHTTP(w, r)
			return
		}
		form, err := peekForm(r)
		if err != nil {
			http.Error(w, "devidp: unreadable request body", http.StatusBadRequest)
			return
		}
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		if r.URL.Path == p.tokenPath {
			grant := form.Get("grant_type")
			p.mu.Lock()
			p.counts[grant]++
			if token := form.Get("refresh_token"); grant == GrantRefreshToken && token != "" {
				p.refreshSeen = append(p.refreshSeen, token)
			}
			p.mu.Unlock()
			tr := &tokenRequest{grant: grant}
			next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), tokenRequestKey{}, tr)))
			if grant == GrantRefreshToken && rec.status == http.StatusOK && !tr.injected {
				p.mu.Lock()
				p.refreshesOK++
				p.mu.Unlock()
			}
			return
		}
		next.ServeHTTP(rec, r)
		if token := form.Get("token"); token != "" && rec.status == http.StatusOK {
			p.mu.Lock()
			p.revoked = append(p.revoked, token)
			p.mu.Unlock()
		}
	})
}

// peekForm parses a urlencoded body and puts the body back for the OP.
func peekForm(r *http.Request) (url.Values, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxFormBytes+1))
	r.Body.Close()
	if err != nil {
		return nil, err
	}
	if len(body) > maxFormBytes {
		return nil, errors.New("request body too large")
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	// A malformed body is the OP's to reject; keep whatever parsed.
	form, _ := url.ParseQuery(string(body))
	return form, nil
}

type statusRecorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (r *statusRecorder) WriteHeader(status int) {
	if !r.wroteHeader {
		r.status, r.wroteHeader = status, true
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func randomID() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("devidp: random id: %w", err)
	}
	return fmt.Sprintf("%x", b), nil
}

// SetAccessTokenTTL changes the lifetime of access tokens issued from now on
// (at least one second, since expires_in counts whole seconds).
func (p *Provider) SetAccessTokenTTL(d time.Duration) {
	p.store.setTTL(max(d, time.Second))
}

// TerminateSessions ends every grant of the subject at the IdP, as an
// administrator signing the user out there would: its refresh and access
// tokens stop working.
func (p *Provider) TerminateSessions(subject string) {
	_ = p.store.TerminateSession(context.Background(), subject, p.cfg.ClientID)
}

// IssuedRefreshTokens returns every refresh token the OP issued, in order.
func (p *Provider) IssuedRefreshTokens() []string {
	return p.store.issuedRefreshTokens()
}
