package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readiness is a /readyz answer.
type readiness struct {
	status int
	Ready  bool              `json:"ready"`
	Checks map[string]string `json:"checks"`
}

func readyz(t *testing.T, inst *instance) readiness {
	t.Helper()
	res := doURL(t, http.MethodGet, inst.admin+"/readyz", "", nil, nil)
	r := readiness{status: res.status}
	res.decode(t, &r)
	return r
}

// awaitReadyz polls /readyz until cond holds, up to limit, and returns the
// last answer and how long it took.
func awaitReadyz(t *testing.T, inst *instance, limit time.Duration, cond func(readiness) bool) (readiness, time.Duration, bool) {
	t.Helper()
	start := time.Now()
	for {
		r := readyz(t, inst)
		if cond(r) {
			return r, time.Since(start), true
		}
		if time.Since(start) > limit {
			return r, time.Since(start), false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// allJSON reports the first line of logs that is not a JSON object.
func allJSON(logs string) (string, bool) {
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		var v map[string]any
		if json.Unmarshal([]byte(l), &v) != nil {
			return l, false
		}
	}
	return "", true
}

// With Redis down at start, the listeners and probes come up at once,
// /readyz says the store is missing, and the broker is ready within about a
// second of Redis starting; a Redis that stops again makes it unready, and
// back. Every log line meanwhile is JSON.
func TestStartWithStoreDown(t *testing.T) {
	s := newStack(t, stackOptions{})
	s.redis.Stop(t)
	start := time.Now()
	b, err := s.tryStart(nil)
	if err != nil {
		t.Fatalf("serve with Redis down = %v, want it listening", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("listening took %v with Redis down, want at once", d)
	}
	if res := doURL(t, http.MethodGet, b.admin+"/healthz", "", nil, nil); res.status != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", res.status)
	}
	// Discovery comes; the store does not.
	r, _, ok := awaitReadyz(t, b, 10*time.Second, func(r readiness) bool { return r.Checks["idp_discovery"] == "ok" })
	if !ok || r.status != http.StatusServiceUnavailable || r.Ready || r.Checks["store"] != "unavailable" {
		t.Fatalf("/readyz with Redis down = %d %+v, want 503 with the store unavailable, discovery ok", r.status, r)
	}
	s.redis.Restart(t)
	r, took, ok := awaitReadyz(t, b, 10*time.Second, func(r readiness) bool { return r.status == http.StatusOK })
	if !ok {
		t.Fatalf("/readyz after Redis started = %d %+v, want 200", r.status, r)
	}
	t.Logf("ready %v after Redis started", took)
	if took > 2*time.Second {
		t.Errorf("ready %v after Redis started, want within about a second", took)
	}
	s.login(b)

	s.redis.Stop(t)
	if r, _, ok := awaitReadyz(t, b, 10*time.Second, func(r readiness) bool { return r.status == http.StatusServiceUnavailable }); !ok || r.Checks["store"] != "unavailable" {
		t.Errorf("/readyz after Redis stopped = %d %+v, want 503 with the store unavailable", r.status, r)
	}
	s.redis.Restart(t)
	if _, _, ok := awaitReadyz(t, b, 10*time.Second, func(r readiness) bool { return r.status == http.StatusOK }); !ok {
		t.Errorf("/readyz after Redis restarted is not 200")
	}
	if err := b.stop(); err != nil {
		t.Errorf("serve stopped with %v", err)
	}
	if line, ok := allJSON(b.logs.String()); !ok {
		t.Errorf("a log line is not JSON: %q", line)
	}
	if !strings.Contains(b.logs.String(), "session store not reachable yet") {
		t.Errorf("the log does not say the store was not reachable:\n%s", b.logs.String())
	}
}

// An issuer that discovery states differently (here with a trailing slash)
// is reported: an error log naming both, and /readyz saying so.
func TestIssuerMismatch(t *testing.T) {
	s := newStack(t, stackOptions{})
	configured := s.idp.Issuer() + "/"
	b, err := s.tryStart(map[string]string{"BROKER_OIDC_ISSUER": configured})
	if err != nil {
		t.Fatal(err)
	}
	r, _, ok := awaitReadyz(t, b, 10*time.Second, func(r readiness) bool { return strings.Contains(r.Checks["idp_discovery"], "mismatch") })
	if !ok || r.status != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d %+v, want 503 naming an issuer mismatch", r.status, r)
	}
	for _, want := range []string{`configured "` + configured + `"`, `states "` + s.idp.Issuer() + `"`} {
		if !strings.Contains(r.Checks["idp_discovery"], want) {
			t.Errorf("/readyz idp_discovery = %q, want %q in it", r.Checks["idp_discovery"], want)
		}
	}
	found := false
	for _, l := range strings.Split(b.logs.String(), "\n") {
		var e struct {
			Level      string `json:"level"`
			Configured string `json:"configured_issuer"`
			Discovered string `json:"discovered_issuer"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.Level == "ERROR" && e.Configured == configured && e.Discovered == s.idp.Issuer() {
			found = true
		}
	}
	if !found {
		t.Errorf("no error log names both issuers:\n%s", b.logs.String())
	}
}

// Every secret setting may come from the file its *_FILE variable names;
// setting both is a configuration error naming both; no message holds a
// secret.
func TestSecretFiles(t *testing.T) {
	s := newStack(t, stackOptions{clientSecret: "client-secret-from-a-file"})
	dir := t.TempDir()
	files := map[string]string{}
	secrets := map[string]string{}
	for _, name := range []string{"BROKER_OIDC_CLIENT_SECRET", "BROKER_ENCRYPTION_KEYS", "BROKER_ADMIN_TOKENS", "BROKER_REDIS_URL"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s.env[name]+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		files[name+"_FILE"] = p
		secrets[name] = s.env[name]
		delete(s.env, name)
	}
	extra := map[string]string{}
	for k, v := range files {
		extra[k] = v
	}
	b, err := s.tryStart(extra)
	if err != nil {
		t.Fatalf("serve with every secret from a file = %v", err)
	}
	s.login(b) // the client secret, the keys and the store are in use
	_, token, _ := strings.Cut(secrets["BROKER_ADMIN_TOKENS"], ":")
	tokenFile := filepath.Join(dir, "admin-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCLI(t, getenvOf("BROKER_ADMIN_URL", b.admin, "BROKER_ADMIN_TOKEN_FILE", tokenFile), "audit"); err != nil {
		t.Errorf("audit with BROKER_ADMIN_TOKEN_FILE = %v", err)
	}
	migrateEnv := getenvOf("BROKER_REDIS_URL_FILE", files["BROKER_REDIS_URL_FILE"])
	if out, _, err := runCLI(t, migrateEnv, "migrate"); err != nil || !strings.Contains(out, "nothing to do") {
		t.Errorf("migrate with BROKER_REDIS_URL_FILE = %q, %v", out, err)
	}

	for name := range secrets {
		both := map[string]string{name: secrets[name]}
		for k, v := range files {
			both[k] = v
		}
		_, err := s.tryStart(both)
		var ce *configError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), name+" and "+name+"_FILE are both set") {
			t.Errorf("serve with %s and %s_FILE = %v, want a configuration error naming both", name, name, err)
		}
		for _, secret := range secrets {
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("the error holds a secret: %v", err)
			}
		}
	}
	missing := map[string]string{"BROKER_ENCRYPTION_KEYS_FILE": filepath.Join(dir, "missing")}
	for k, v := range files {
		if k != "BROKER_ENCRYPTION_KEYS_FILE" {
			missing[k] = v
		}
	}
	if _, err := s.tryStart(missing); err == nil || !strings.Contains(err.Error(), "BROKER_ENCRYPTION_KEYS_FILE: ") {
		t.Errorf("serve with a missing key file = %v, want a configuration error naming BROKER_ENCRYPTION_KEYS_FILE", err)
	}
}

// Unknown BROKER_ variables and inconsistent settings draw a warning naming
// them, never their values.
func TestSettingWarnings(t *testing.T) {
	const secretish = "s3cr3t-value-never-logged"
	t.Setenv("BROKER_SESION_IDLE_TIMEOUT", secretish)
	t.Setenv("BROKER_ENCRYPTION_KEY", secretish)
	t.Setenv("BROKER_WHATEVER_ELSE", secretish)
	s := newStack(t, stackOptions{})
	b, err := s.tryStart(map[string]string{
		"BROKER_SESION_IDLE_TIMEOUT":  secretish,
		"BROKER_ENCRYPTION_KEY":       secretish,
		"BROKER_WHATEVER_ELSE":        secretish,
		"BROKER_SESSION_IDLE_TIMEOUT": "3000h",
		"BROKER_REFRESH_SKEW":         "10m",
	})
	if err != nil {
		t.Fatal(err)
	}
	var warnings []string
	for _, l := range strings.Split(b.logs.String(), "\n") {
		var e struct{ Level, Msg string }
		if json.Unmarshal([]byte(l), &e) == nil && e.Level == "WARN" {
			warnings = append(warnings, e.Msg)
		}
	}
	all := strings.Join(warnings, "\n")
	for _, want := range []string{
		"BROKER_SESION_IDLE_TIMEOUT is not a setting of the broker and is ignored; did you mean BROKER_SESSION_IDLE_TIMEOUT?",
		"BROKER_ENCRYPTION_KEY is not a setting of the broker and is ignored; did you mean BROKER_ENCRYPTION_KEYS?",
		"BROKER_WHATEVER_ELSE is not a setting of the broker and is ignored\n",
		"BROKER_SESSION_IDLE_TIMEOUT (3000h0m0s) is longer than BROKER_SESSION_MAX_LIFETIME (2160h0m0s)",
		"BROKER_REFRESH_SKEW (10m0s) is as long as many access tokens live",
	} {
		if !strings.Contains(all+"\n", want) {
			t.Errorf("warnings\n%s\nwant %q among them", all, want)
		}
	}
	if strings.Contains(b.logs.String(), secretish) {
		t.Errorf("the log holds the value of an unknown variable")
	}
	// A consistent configuration draws none of these.
	if w := inconsistentSettings(mustLoad(t, validEnv())); len(w) != 0 {
		t.Errorf("the defaults draw warnings: %q", w)
	}
	env := validEnv()
	env["BROKER_WEBSOCKET_MAX_LIFETIME"] = "1h"
	env["BROKER_MAX_CONNECTIONS"] = "10"
	w := strings.Join(inconsistentSettings(mustLoad(t, env)), "\n")
	for _, want := range []string{"BROKER_WEBSOCKET_MAX_LIFETIME is set but BROKER_WEBSOCKET_ROUTES is not", "BROKER_MAX_CONNECTIONS_PER_CLIENT (256) is above BROKER_MAX_CONNECTIONS (10)"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings %q, want %q", w, want)
		}
	}
}

func mustLoad(t *testing.T, env map[string]string) *config {
	t.Helper()
	cfg, err := loadConfig(func(k string) string { return env[k] }, true)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
