package main

import (
	"context"
	"io"
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
	if cfg.RateExchange != (rateLimit{N: 10, Per: 1e9}) || cfg.RateInvalid != (rateLimit{N: 20, Per: 1e9}) {
		t.Errorf("rate limits = %+v %+v, want 10/s and 20/s", cfg.RateExchange, cfg.RateInvalid)
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
		{"bad rate", map[string]string{"BROKER_RATE_LIMIT_EXCHANGE": "10/h", "BROKER_RATE_LIMIT_INVALID": "x"}, []string{"BROKER_RATE_LIMIT_EXCHANGE", "BROKER_RATE_LIMIT_INVALID"}},
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
				if len(v) > 3 && strings.Contains(msg, v) && k == "BROKER_ENCRYPTION_KEYS" {
					t.Errorf("error echoes the value of %s", k)
				}
			}
		})
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
