package main

import (
	"context"
	"hash/fnv"
	"io"
	"slices"
	"strings"
	"testing"
)

func validEnv() map[string]string {
	return map[string]string{
		"BROKER_REDIS_URL":       "redis://127.0.0.1:6379/0",
		"BROKER_OIDC_ISSUER":     "https://idp.example.com",
		"BROKER_OIDC_CLIENT_ID":  "app",
		"BROKER_REDIRECT_URIS":   "com.example.app:/oauth2redirect",
		"BROKER_ROUTES":          "/api=http://api.internal:8080",
		"BROKER_ENCRYPTION_KEYS": "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
	}
}

func TestLoadConfigDefaults(t *testing.T) {
	env := validEnv()
	cfg, err := loadConfig(func(k string) string { return env[k] }, true)
	if err != nil {
		t.Fatalf("loadConfig = %v", err)
	}
	if cfg.Listen != ":8080" || cfg.AdminListen != "127.0.0.1:9090" {
		t.Errorf("listeners = %q, %q, want :8080 and 127.0.0.1:9090", cfg.Listen, cfg.AdminListen)
	}
	if cfg.IdleTimeout.String() != "720h0m0s" || cfg.MaxLifetime.String() != "2160h0m0s" || cfg.RefreshSkew.String() != "10s" || cfg.UpstreamTimeout.String() != "30s" {
		t.Errorf("durations = %v %v %v %v, want 720h 2160h 10s 30s", cfg.IdleTimeout, cfg.MaxLifetime, cfg.RefreshSkew, cfg.UpstreamTimeout)
	}
	if cfg.RateExchange != (rateLimit{N: 10, Per: 1e9}) || cfg.RateInvalid != (rateLimit{N: 20, Per: 1e9}) || cfg.RateBackchannel != (rateLimit{N: 50, Per: 1e9}) {
		t.Errorf("rate limits = %+v %+v %+v, want 10/s, 20/s and 50/s", cfg.RateExchange, cfg.RateInvalid, cfg.RateBackchannel)
	}
	if len(cfg.Routes) != 1 || cfg.Routes[0].Prefix != "/api" {
		t.Errorf("routes = %+v", cfg.Routes)
	}
}

// Every problem is reported at once, one line each, naming the variable
// and never echoing a value.
func TestLoadConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		set  map[string]string
		want []string
	}{
		{"nothing set", map[string]string{"BROKER_REDIS_URL": "", "BROKER_OIDC_ISSUER": "", "BROKER_OIDC_CLIENT_ID": "", "BROKER_REDIRECT_URIS": "", "BROKER_ROUTES": "", "BROKER_ENCRYPTION_KEYS": ""},
			[]string{"BROKER_REDIS_URL", "BROKER_OIDC_ISSUER", "BROKER_OIDC_CLIENT_ID", "BROKER_REDIRECT_URIS", "BROKER_ROUTES", "BROKER_ENCRYPTION_KEYS"}},
		{"bad durations", map[string]string{"BROKER_SESSION_IDLE_TIMEOUT": "soon", "BROKER_REFRESH_SKEW": "-5s", "BROKER_UPSTREAM_TIMEOUT": "0s"},
			[]string{"BROKER_SESSION_IDLE_TIMEOUT", "BROKER_REFRESH_SKEW", "BROKER_UPSTREAM_TIMEOUT"}},
		{"bad key", map[string]string{"BROKER_ENCRYPTION_KEYS": "k1:c2hvcnQ="}, []string{"BROKER_ENCRYPTION_KEYS"}},
		{"bad routes", map[string]string{"BROKER_ROUTES": "api=nohost"}, []string{"BROKER_ROUTES"}},
		{"bad redirect", map[string]string{"BROKER_REDIRECT_URIS": "not a uri"}, []string{"BROKER_REDIRECT_URIS"}},
		{"bad issuer", map[string]string{"BROKER_OIDC_ISSUER": "ftp://x"}, []string{"BROKER_OIDC_ISSUER"}},
		{"bad redis", map[string]string{"BROKER_REDIS_URL": "postgres://x"}, []string{"BROKER_REDIS_URL"}},
		{"bad proxies", map[string]string{"BROKER_TRUSTED_PROXIES": "10.0.0.0/99"}, []string{"BROKER_TRUSTED_PROXIES"}},
		{"bad rate", map[string]string{"BROKER_RATE_LIMIT_EXCHANGE": "10/h", "BROKER_RATE_LIMIT_INVALID": "x", "BROKER_RATE_LIMIT_BACKCHANNEL": "-1/s"}, []string{"BROKER_RATE_LIMIT_EXCHANGE", "BROKER_RATE_LIMIT_INVALID", "BROKER_RATE_LIMIT_BACKCHANNEL"}},
		{"bad IPv6 prefix", map[string]string{"BROKER_RATE_LIMIT_IPV6_PREFIX": "/16"}, []string{"BROKER_RATE_LIMIT_IPV6_PREFIX"}},
		{"bad connection caps", map[string]string{"BROKER_MAX_CONNECTIONS": "0", "BROKER_MAX_CONNECTIONS_PER_CLIENT": "many"}, []string{"BROKER_MAX_CONNECTIONS", "BROKER_MAX_CONNECTIONS_PER_CLIENT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := validEnv()
			for k, v := range tt.set {
				env[k] = v
			}
			_, err := loadConfig(func(k string) string { return env[k] }, true)
			if err == nil {
				t.Fatal("loadConfig = nil, want an error")
			}
			msg := err.Error()
			for _, name := range tt.want {
				if !strings.Contains(msg, name) {
					t.Errorf("error %q does not name %s", msg, name)
				}
			}
			if lines := strings.Count(msg, "\n"); lines != len(tt.want) {
				t.Errorf("error has %d problem lines, want %d:\n%s", lines, len(tt.want), msg)
			}
			for k, v := range tt.set {
				if len(v) >= minEcho && strings.Contains(msg, v) {
					t.Errorf("error echoes the value of %s", k)
				}
			}
		})
	}
}

// secretish stands for a secret in the values below: no configuration
// error may hold it, whatever the value around it.
const secretish = "Zx9Qv7Kp2Lw4Rt8M"

// Each variable's error path, given a value that holds a secret, names the
// variable and never the secret.
func TestLoadConfigNeverEchoesValues(t *testing.T) {
	key := "k1:" + randomKey(t)
	keyMaterial := strings.TrimPrefix(key, "k1:")
	certFile, _, _ := selfSigned(t)
	tests := []struct {
		name, variable, value, secret string
	}{
		{"keys written KEY:ID", "BROKER_ENCRYPTION_KEYS", keyMaterial + ":k1", keyMaterial},
		{"second key written KEY:ID", "BROKER_ENCRYPTION_KEYS", key + "," + keyMaterial + ":k2", keyMaterial},
		{"a short key", "BROKER_ENCRYPTION_KEYS", secretish + ":c2hvcnQ=", secretish},
		{"a key id twice", "BROKER_ENCRYPTION_KEYS", secretish + ":" + keyMaterial + "," + secretish + ":" + keyMaterial, secretish},
		{"route with ':' for '='", "BROKER_ROUTES", "/api:http://svc:" + secretish + "@orders:8080", secretish},
		{"second route with ':' for '='", "BROKER_ROUTES", "/a=http://a,/api:http://svc:" + secretish + "@orders:8080", secretish},
		{"route with user info", "BROKER_ROUTES", "/api=http://svc:" + secretish + "@orders:8080", secretish},
		{"route with a password holding '='", "BROKER_ROUTES", "/api:http://svc:" + secretish + "=x@orders:8080", secretish},
		{"route prefix", "BROKER_ROUTES", "/" + secretish + "%=http://orders", secretish},
		{"route twice", "BROKER_ROUTES", "/" + secretish + "=http://a,/" + secretish + "=http://b", secretish},
		{"redis URL", "BROKER_REDIS_URL", "redis://svc:" + secretish + "@redis:port/0", secretish},
		{"redis scheme", "BROKER_REDIS_URL", "redis-sentinel://svc:" + secretish + "@redis:6379", secretish},
		{"admin token with a space", "BROKER_ADMIN_TOKENS", "ci:" + secretish + " x", secretish},
		{"admin name empty", "BROKER_ADMIN_TOKENS", ":" + secretish, ""},
		{"redirect URI", "BROKER_REDIRECT_URIS", "com.example.app:/cb," + secretish, secretish},
		{"trusted proxy", "BROKER_TRUSTED_PROXIES", "10.0.0.0/8," + secretish, secretish},
		{"issuer", "BROKER_OIDC_ISSUER", "ftp://" + secretish, secretish},
		{"duration", "BROKER_SESSION_IDLE_TIMEOUT", secretish, secretish},
		{"rate", "BROKER_RATE_LIMIT_EXCHANGE", "10/" + secretish, secretish},
		{"IPv6 prefix", "BROKER_RATE_LIMIT_IPV6_PREFIX", "/" + secretish, secretish},
		{"connection cap", "BROKER_MAX_CONNECTIONS", "1" + secretish, secretish},
		{"connection cap per client", "BROKER_MAX_CONNECTIONS_PER_CLIENT", secretish, secretish},
		{"TLS key path", "BROKER_TLS_KEY", "/nonexistent/" + secretish + ".pem", secretish},
		{"OTLP endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", secretish + ":4318", secretish},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := validEnv()
			env[tt.variable] = tt.value
			if tt.variable == "BROKER_TLS_KEY" {
				env["BROKER_TLS_CERT"] = certFile
			}
			_, err := loadConfig(func(k string) string { return env[k] }, true)
			if err == nil {
				t.Fatal("loadConfig = nil, want an error")
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.variable) {
				t.Errorf("error %q does not name %s", msg, tt.variable)
			}
			if tt.secret != "" && strings.Contains(strings.ToLower(msg), strings.ToLower(tt.secret)) {
				t.Errorf("error holds the secret of the value: %q", msg)
			}
			if strings.Contains(msg, tt.value) {
				t.Errorf("error holds the value: %q", msg)
			}
		})
	}
	// The commands that read only the keys say the same.
	for _, raw := range []string{keyMaterial + ":k1", key + "," + keyMaterial + ":k2"} {
		_, problem := keyringFromEnv(func(string) string { return raw }, "test")
		if problem == "" || strings.Contains(problem, keyMaterial) {
			t.Errorf("keyringFromEnv(KEY:ID) = %q, want a problem without the key", problem)
		}
	}
}

// serve stops at start with the configuration error, before touching Redis.
func TestServeRejectsBadConfig(t *testing.T) {
	err := run(context.Background(), []string{"serve"}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "BROKER_OIDC_ISSUER") {
		t.Fatalf("serve with no configuration = %v, want a configuration error naming BROKER_OIDC_ISSUER", err)
	}
}

func TestRunUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"nope"}} {
		if err := run(context.Background(), args, func(string) string { return "" }, io.Discard, io.Discard); err == nil {
			t.Errorf("run(%q) = nil, want a usage error", args)
		}
	}
}

// BROKER_REDIRECT_URIS takes private-use URI schemes and claimed https
// URIs, and refuses what RFC 8252 does not let a mobile app use; a refusal
// names each bad entry by its position, never by its value.
func TestLoadConfigRedirectURIs(t *testing.T) {
	load := func(uris string) error {
		env := validEnv()
		env["BROKER_REDIRECT_URIS"] = uris
		_, err := loadConfig(func(k string) string { return env[k] }, true)
		return err
	}
	if err := load("com.example.app:/oauth2redirect, https://app.example.com/oauth2redirect"); err != nil {
		t.Fatalf("a private-use scheme and a claimed https URI: %v", err)
	}
	refused := []string{
		"myapp:/oauth2redirect",
		"http://127.0.0.1:8080/oauth2redirect",
		"http://app.example.com/oauth2redirect",
		"https://192.0.2.1/oauth2redirect",
		"javascript:alert(1)",
		"com.example.app:/oauth2redirect#f",
	}
	for _, uri := range refused {
		err := load("com.example.app:/ok," + uri)
		if err == nil {
			t.Errorf("BROKER_REDIRECT_URIS with %q loaded, want it refused", uri)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "BROKER_REDIRECT_URIS") || !strings.Contains(msg, "entry 2") {
			t.Errorf("error %q does not name BROKER_REDIRECT_URIS and entry 2", msg)
		}
		if strings.Contains(msg, uri) {
			t.Errorf("error %q echoes the URI", msg)
		}
	}
	// Every bad entry is reported, on the variable's one line.
	err := load("myapp:/a,com.example.app:/ok,http://x.example/cb")
	if err == nil || !strings.Contains(err.Error(), "entry 1") || !strings.Contains(err.Error(), "entry 3") || strings.Count(err.Error(), "\n") != 1 {
		t.Errorf("two bad entries: error %v, want one line naming entries 1 and 3", err)
	}
}

// FuzzConfigErrors sets one variable to a value that holds a secret
// anywhere, and checks that no configuration error holds the secret. The
// variable is the one named, or one picked by the name's hash; the TLS
// files are left out, since loadConfig reads them from disk.
func FuzzConfigErrors(f *testing.F) {
	var names []string
	for _, n := range envNames() {
		if n != "BROKER_TLS_CERT" && n != "BROKER_TLS_KEY" {
			names = append(names, n)
		}
	}
	f.Fuzz(func(t *testing.T, variable, before, after string) {
		name := variable
		if !slices.Contains(names, name) {
			h := fnv.New32a()
			h.Write([]byte(variable))
			name = names[h.Sum32()%uint32(len(names))]
		}
		env := validEnv()
		env[name] = before + secretish + after
		_, err := loadConfig(func(k string) string { return env[k] }, true)
		if err == nil {
			return
		}
		if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(secretish)) {
			t.Fatalf("%s=%q: the error holds the secret: %v", name, env[name], err)
		}
	})
}
