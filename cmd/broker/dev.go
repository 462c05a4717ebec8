//go:build !nodev

package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
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

// addDevCommand adds `broker dev`, `broker dev login` and `broker dev
// proof`; a build with
// -tags nodev leaves them out, and with them the development OpenID
// Provider and the embedded store (nodev.go).
func addDevCommand(root *cobra.Command, a *app) {
	var ef envFlags
	var idpAddr string
	dev := &cobra.Command{
		Use:   "dev",
		Short: "Run a self-contained development stack",
		Long: `Run a self-contained development stack: a development OpenID Provider with a
demo user, a demo upstream, an embedded store unless BROKER_REDIS_URL is set,
and the broker itself. For development only: never expose it.`,
		GroupID: groupDev,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return runDev(c.Context(), ef.getenv(a.getenv), idpAddr, a.stdout, a.stderr, nil)
		},
	}
	dev.Flags().StringVar(&idpAddr, "idp", devIdPAddr, "listen address of the development OpenID Provider")
	ef.add(dev.Flags(), "BROKER_LISTEN", "BROKER_ADMIN_LISTEN", "BROKER_REDIS_URL")
	dev.Flag("listen").Usage = "overrides $BROKER_LISTEN (default " + devListen + ")"
	dev.Flag("admin-listen").Usage = "overrides $BROKER_ADMIN_LISTEN (default " + devAdminListen + ")"
	dev.Flag("redis-url").Usage = "overrides $BROKER_REDIS_URL (default: an embedded in-memory store)"

	var lo devLoginOptions
	login := &cobra.Command{
		Use:   "login",
		Short: "Play the mobile app against `broker dev` and print the session handle",
		Args:  noArgs,
		RunE:  func(c *cobra.Command, _ []string) error { return devLogin(c.Context(), &lo, a.stdout) },
	}
	login.Flags().StringVar(&lo.broker, "broker", "http://"+devListen, "the broker's public URL")
	login.Flags().StringVar(&lo.issuer, "idp", "http://"+devIdPAddr, "the development IdP's issuer URL")
	login.Flags().StringVar(&lo.user, "user", devidp.DemoUsername, "username at the development IdP")
	login.Flags().StringVar(&lo.password, "password", devidp.DemoPassword, "password at the development IdP")
	login.Flags().BoolVarP(&lo.verbose, "verbose", "v", false, "print the whole session response, not only the handle")
	login.Flags().BoolVar(&lo.dpop, "dpop", false, "bind the session to a new P-256 key (DPoP, RFC 9449), saved to --dpop-key for `broker dev proof`")
	login.Flags().StringVar(&lo.dpopKey, "dpop-key", "dpop-key.json", "where --dpop saves the private key (a JWK, mode 0600)")
	dev.AddCommand(login)
	dev.AddCommand(newDevProofCommand(a))
	root.AddCommand(dev)
}

// runDev starts a self-contained development stack: a development OpenID
// Provider, a demo upstream, an embedded store unless BROKER_REDIS_URL is
// set, ephemeral keys, and the broker itself.
func runDev(ctx context.Context, getenv func(string) string, idpAddr string, stdout, stderr io.Writer, h *hooks) error {
	getenv, err := resolveEnv(getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	redis.SetLogger(redisLogger{log})
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
	var keys *sessions.Keyring
	if getenv("BROKER_REDIS_URL") == "" {
		// The embedded store dies with the process, and its sessions with
		// it: an ephemeral key loses nothing more.
		if keys, err = sessions.NewEphemeralKeyring(); err != nil {
			return err
		}
	} else if getenv("BROKER_ENCRYPTION_KEYS") == "" {
		var path string
		keys, path, err = devKeyring()
		if err != nil {
			warn("BROKER_REDIS_URL is set but the development key could not be kept (" + err.Error() + "): sessions are sealed under a key that dies with this process, and every saved handle fails after a restart; set BROKER_ENCRYPTION_KEYS to keep them")
			if keys, err = sessions.NewEphemeralKeyring(); err != nil {
				return err
			}
		} else {
			warn("BROKER_REDIS_URL is set: sessions are sealed under the development key kept in " + path + ", so they survive a restart; whoever reads that file can open them. Set BROKER_ENCRYPTION_KEYS to use a key of your own")
		}
	}
	adminToken := rand.Text()
	// The embedded store has no client tracking: without invalidations the
	// session cache would stay off anyway, its channel retried for ever.
	cacheSetting := ""
	if getenv("BROKER_REDIS_URL") == "" {
		cacheSetting = "false"
	}
	env := map[string]string{
		"BROKER_SESSION_CACHE":  cacheSetting,
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
	warnSettings(log, cfg, getenv)
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

// devKeyFile is where `broker dev` keeps its encryption key for a store of
// its user's (BROKER_REDIS_URL), under the user's cache directory.
const devKeyFile = "mobile-token-broker/dev-encryption-key"

// devKeyring returns the development key kept in the user's cache
// directory, making it on first use: sessions that `broker dev` stores in a
// Redis of the user's then survive a restart. The file is the user's only
// (0600) and holds a BROKER_ENCRYPTION_KEYS value.
func devKeyring() (*sessions.Keyring, string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return nil, "", err
	}
	path := filepath.Join(dir, devKeyFile)
	if raw, err := readSecretFile(path); err == nil {
		keys, err := sessions.ParseKeyring(raw)
		if err != nil {
			return nil, "", fmt.Errorf("%s does not hold a key: %w", path, err)
		}
		return keys, path, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, "", err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, "", err
	}
	raw := "dev:" + base64.StdEncoding.EncodeToString(key)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, "", err
	}
	// O_EXCL: of two `broker dev` starting at once, one writes the key and
	// the other reads it.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return devKeyring()
	}
	if err != nil {
		return nil, "", err
	}
	if _, err := f.WriteString(raw + "\n"); err != nil {
		f.Close()
		return nil, "", err
	}
	if err := f.Close(); err != nil {
		return nil, "", err
	}
	keys, err := sessions.ParseKeyring(raw)
	return keys, path, err
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
  HANDLE=$(go run ./cmd/broker dev login --dpop --dpop-key /tmp/dpop-key.json)
  PROOF=$(go run ./cmd/broker dev proof --key /tmp/dpop-key.json --handle "$HANDLE" GET http://%[1]s/api/whoami)
  curl -H "Authorization: DPoP $HANDLE" -H "DPoP: $PROOF" http://%[1]s/api/whoami
  PROOF=$(go run ./cmd/broker dev proof --key /tmp/dpop-key.json --handle "$HANDLE" GET http://%[1]s/v1/sessions)
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
type devLoginOptions struct {
	broker, issuer, user, password string
	verbose                        bool
	// dpop binds the session to a new key saved to dpopKey.
	dpop    bool
	dpopKey string
}

func devLogin(ctx context.Context, o *devLoginOptions, stdout io.Writer) error {
	brokerURL, issuer, user, password, verbose := &o.broker, &o.issuer, &o.user, &o.password, &o.verbose
	bind, keyFile := &o.dpop, &o.dpopKey
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
