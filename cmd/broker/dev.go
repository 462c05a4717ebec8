package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"golang.org/x/oauth2"

	"github.com/mobile-token-broker/broker/internal/devidp"
	"github.com/mobile-token-broker/broker/migrations"
	"github.com/mobile-token-broker/broker/sessions"
)

// Development defaults of `broker dev`.
const (
	devListen      = "127.0.0.1:8080"
	devAdminListen = "127.0.0.1:9090"
	devIdPAddr     = "127.0.0.1:9998"
	// devAccessTokenTTL is short so that refreshes are visible.
	devAccessTokenTTL = time.Minute
)

// devCommand runs `broker dev`, `broker dev login` and `broker dev proof`.
func devCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "login" {
		return devLogin(ctx, args[1:], stdout)
	}
	if len(args) > 0 && args[0] == "proof" {
		return devProof(args[1:], stdout)
	}
	fs := flag.NewFlagSet("broker dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	idpAddr := fs.String("idp", devIdPAddr, "listen address of the development OpenID Provider")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	return runDev(ctx, getenv, *idpAddr, stdout, stderr, nil)
}

// runDev starts a self-contained development stack: a development OpenID
// Provider, a demo upstream, an embedded store unless BROKER_REDIS_URL is
// set, ephemeral keys, and the broker itself.
func runDev(ctx context.Context, getenv func(string) string, idpAddr string, stdout, stderr io.Writer, h *hooks) error {
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	warn := func(msg string) {
		log.Warn(msg)
		fmt.Fprintln(stderr, "WARNING: "+msg)
	}
	warn("`broker dev` is for development only: a demo identity provider with a known password, ephemeral keys and tokens; never expose it")

	idp, err := devidp.Start(devidp.Config{Addr: idpAddr, AccessTokenTTL: devAccessTokenTTL, Logger: log})
	if err != nil {
		return fmt.Errorf("development identity provider: %w", err)
	}
	defer idp.Close()
	demo, demoURL, err := startDemoUpstream(idp.Issuer())
	if err != nil {
		return err
	}
	defer demo.Close()

	redisURL := getenv("BROKER_REDIS_URL")
	if redisURL == "" {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("embedded store: %w", err)
		}
		defer mr.Close()
		redisURL = "redis://" + mr.Addr()
		warn("BROKER_REDIS_URL is not set: using an embedded in-memory store; every session vanishes when this process exits")
	}
	keys, err := sessions.NewEphemeralKeyring()
	if err != nil {
		return err
	}
	adminToken := rand.Text()
	env := map[string]string{
		"BROKER_LISTEN":         devListen,
		"BROKER_ADMIN_LISTEN":   devAdminListen,
		"BROKER_REDIS_URL":      redisURL,
		"BROKER_OIDC_ISSUER":    idp.Issuer(),
		"BROKER_OIDC_CLIENT_ID": idp.ClientID(),
		"BROKER_REDIRECT_URIS":  devidp.DefaultRedirectURI,
		"BROKER_ROUTES":         "/api=" + demoURL,
		"BROKER_ADMIN_TOKENS":   "dev:" + adminToken,
	}
	// The development IdP and demo upstream are this stack's own; anything
	// else may be overridden from the environment.
	owned := map[string]bool{"BROKER_REDIS_URL": true, "BROKER_OIDC_ISSUER": true, "BROKER_OIDC_CLIENT_ID": true,
		"BROKER_OIDC_CLIENT_SECRET": true, "BROKER_REDIRECT_URIS": true, "BROKER_ROUTES": true, "BROKER_ADMIN_TOKENS": true}
	devGetenv := func(k string) string {
		if v := getenv(k); v != "" && !owned[k] {
			return v
		}
		return env[k]
	}
	cfg, err := loadConfig(devGetenv, false)
	if err != nil {
		return err
	}
	if cfg.EncryptionKeys.Keyring != nil {
		keys = cfg.EncryptionKeys.Keyring
	}
	rdb, err := sessions.NewClient(cfg.RedisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if _, err := migrations.Apply(ctx, rdb, migrations.Options{Records: sessions.New(rdb, keys, sessions.Options{})}); err != nil {
		return fmt.Errorf("migrate the development store: %w", err)
	}
	if h == nil {
		h = &hooks{}
	}
	listening := h.listening
	h.listening = func(public, admin string) {
		printWalkthrough(stdout, public, admin, idp.Issuer(), adminToken)
		if listening != nil {
			listening(public, admin)
		}
	}
	return runBroker(ctx, cfg, rdb, keys, log, h)
}

func printWalkthrough(w io.Writer, public, admin, issuer, adminToken string) {
	fmt.Fprintf(w, `
Token broker development stack
==============================
  broker (apps)        http://%[1]s
  broker (admin)       http://%[2]s   admin token: %[5]s
  identity provider    %[3]s   user %[4]q, password %[6]q
  demo upstream        http://%[1]s/api/whoami  (through the broker)

Play the mobile app (PKCE, browser login, code handed to the broker):
  HANDLE=$(go run ./cmd/broker dev login)
  curl -H "Authorization: Bearer $HANDLE" http://%[1]s/api/whoami
  curl -H "Authorization: Bearer $HANDLE" http://%[1]s/v1/session
  curl -X DELETE -H "Authorization: Bearer $HANDLE" http://%[1]s/v1/session

The same with a session bound to a device key (DPoP), one proof per request:
  HANDLE=$(go run ./cmd/broker dev login -dpop -dpop-key /tmp/dpop-key.json)
  PROOF=$(go run ./cmd/broker dev proof -key /tmp/dpop-key.json -handle "$HANDLE" GET http://%[1]s/api/whoami)
  curl -H "Authorization: DPoP $HANDLE" -H "DPoP: $PROOF" http://%[1]s/api/whoami
  PROOF=$(go run ./cmd/broker dev proof -key /tmp/dpop-key.json -handle "$HANDLE" GET http://%[1]s/v1/sessions)
  curl -H "Authorization: DPoP $HANDLE" -H "DPoP: $PROOF" http://%[1]s/v1/sessions

Access tokens live %[7]s here, so the broker refreshes them as you go.
`, public, admin, issuer, devidp.DemoUsername, adminToken, devidp.DemoPassword, devAccessTokenTTL)
}

// startDemoUpstream serves /whoami: it shows what the broker forwarded, by
// asking the IdP's userinfo endpoint who the access token belongs to. It
// never echoes the token itself.
func startDemoUpstream(issuer string) (*http.Server, string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", fmt.Errorf("demo upstream: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "no access token"})
			return
		}
		sum := sha256.Sum256([]byte(tok))
		out := map[string]any{
			"access_token_sha256": hex.EncodeToString(sum[:8]),
			"x_forwarded_for":     r.Header.Get("X-Forwarded-For"),
		}
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, issuer+"/userinfo", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			var claims map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&claims)
			resp.Body.Close()
			out["token_claims_from_userinfo"] = claims
		}
		_ = json.NewEncoder(w).Encode(out)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return srv, "http://" + l.Addr().String(), nil
}

// devLogin plays the mobile app against a running `broker dev`: it makes a
// PKCE pair, signs the demo user in at the development IdP the way the
// system browser would, hands code and verifier to the broker and prints the
// session handle.
func devLogin(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("broker dev login", flag.ContinueOnError)
	brokerURL := fs.String("broker", "http://"+devListen, "the broker's public URL")
	issuer := fs.String("idp", "http://"+devIdPAddr, "the development IdP's issuer URL")
	user := fs.String("user", devidp.DemoUsername, "username at the development IdP")
	password := fs.String("password", devidp.DemoPassword, "password at the development IdP")
	verbose := fs.Bool("v", false, "print the whole session response, not only the handle")
	bind := fs.Bool("dpop", false, "bind the session to a new P-256 key (DPoP, RFC 9449), saved to -dpop-key for `broker dev proof`")
	keyFile := fs.String("dpop-key", "dpop-key.json", "where -dpop saves the private key (a JWK, mode 0600)")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	verifier := oauth2.GenerateVerifier()
	nonce := rand.Text()
	code, err := devidp.Login(ctx, *issuer, devidp.DefaultClientID, devidp.LoginRequest{
		Username:      *user,
		Password:      *password,
		CodeChallenge: oauth2.S256ChallengeFromVerifier(verifier),
		Nonce:         nonce,
		State:         rand.Text(),
	})
	if err != nil {
		return fmt.Errorf("sign in at the development IdP: %w", err)
	}
	body, _ := json.Marshal(map[string]string{
		"code": code, "code_verifier": verifier, "redirect_uri": devidp.DefaultRedirectURI, "nonce": nonce,
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, *brokerURL+"/v1/sessions", strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	var key *dpopKey
	if *bind {
		if key, err = newDPoPKey(); err != nil {
			return err
		}
		proof, err := key.proof(http.MethodPost, req.URL.String(), "", "", time.Now())
		if err != nil {
			return err
		}
		req.Header.Set("DPoP", proof)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("POST /v1/sessions: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("POST /v1/sessions = %s: %s", resp.Status, raw)
	}
	if key != nil {
		if err := key.save(*keyFile); err != nil {
			return fmt.Errorf("save the DPoP key: %w", err)
		}
	}
	if *verbose {
		_, err := stdout.Write(append(raw, '\n'))
		return err
	}
	var created struct {
		Session string `json:"session"`
	}
	if err := json.Unmarshal(raw, &created); err != nil || created.Session == "" {
		return errors.New("POST /v1/sessions answered without a session handle")
	}
	fmt.Fprintln(stdout, created.Session)
	return nil
}

// redisLogger routes go-redis's own messages (reconnects, pool problems) to
// the broker's log.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}
