package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/redis/go-redis/v9"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/mobile-token-broker/broker/handlers"
	"github.com/mobile-token-broker/broker/sessions"
)

// config is every setting of the contract, read from the environment.
type config struct {
	Listen          string       `env:"BROKER_LISTEN" envDefault:":8080"`
	AdminListen     string       `env:"BROKER_ADMIN_LISTEN" envDefault:"127.0.0.1:9090"`
	RedisURL        string       `env:"BROKER_REDIS_URL"`
	Issuer          string       `env:"BROKER_OIDC_ISSUER,required,notEmpty"`
	ClientID        string       `env:"BROKER_OIDC_CLIENT_ID,required,notEmpty"`
	ClientSecret    string       `env:"BROKER_OIDC_CLIENT_SECRET"`
	RedirectURIs    redirectURIs `env:"BROKER_REDIRECT_URIS,required,notEmpty"`
	Routes          routes       `env:"BROKER_ROUTES,required,notEmpty"`
	EncryptionKeys  keyring      `env:"BROKER_ENCRYPTION_KEYS"`
	AdminTokens     adminTokens  `env:"BROKER_ADMIN_TOKENS"`
	IdleTimeout     duration     `env:"BROKER_SESSION_IDLE_TIMEOUT" envDefault:"720h"`
	MaxLifetime     duration     `env:"BROKER_SESSION_MAX_LIFETIME" envDefault:"2160h"`
	RefreshSkew     duration     `env:"BROKER_REFRESH_SKEW" envDefault:"10s"`
	UpstreamTimeout duration     `env:"BROKER_UPSTREAM_TIMEOUT" envDefault:"30s"`
	TrustedProxies  trustedCIDRs `env:"BROKER_TRUSTED_PROXIES"`
	RateExchange    rateLimit    `env:"BROKER_RATE_LIMIT_EXCHANGE" envDefault:"10/s"`
	RateInvalid     rateLimit    `env:"BROKER_RATE_LIMIT_INVALID" envDefault:"20/s"`
	RateBackchannel rateLimit    `env:"BROKER_RATE_LIMIT_BACKCHANNEL" envDefault:"50/s"`
	// ClientIPv6Prefix is how many bits of an IPv6 client address name one
	// client, for the rate limits and the per-client connection cap; unset
	// means handlers.DefaultIPv6Prefix.
	ClientIPv6Prefix prefixLength `env:"BROKER_RATE_LIMIT_IPV6_PREFIX"`
	// MaxConnections and MaxConnectionsPerClient cap the public listener's
	// open connections; unset means handlers.DefaultMaxConnections and
	// handlers.DefaultMaxConnectionsPerClient.
	MaxConnections          count `env:"BROKER_MAX_CONNECTIONS"`
	MaxConnectionsPerClient count `env:"BROKER_MAX_CONNECTIONS_PER_CLIENT"`
	// WebSocketRoutes lists the route prefixes that accept WebSocket
	// upgrades; unset durations take the handlers package's defaults.
	WebSocketRoutes        string   `env:"BROKER_WEBSOCKET_ROUTES"`
	WebSocketMaxLifetime   duration `env:"BROKER_WEBSOCKET_MAX_LIFETIME"`
	WebSocketCheckInterval duration `env:"BROKER_WEBSOCKET_CHECK_INTERVAL"`
	// DPoP and DPoPAlgorithms configure device-bound sessions (RFC 9449).
	DPoP           dpopMode       `env:"BROKER_DPOP" envDefault:"optional"`
	DPoPAlgorithms dpopAlgorithms `env:"BROKER_DPOP_ALGORITHMS" envDefault:"ES256"`
	// SessionCache keeps opened sessions in process, invalidated by Redis
	// (see sessions.Store.Lookup); unset sizes take the sessions package's
	// defaults.
	SessionCache         bool     `env:"BROKER_SESSION_CACHE" envDefault:"true"`
	SessionCacheEntries  count    `env:"BROKER_SESSION_CACHE_ENTRIES"`
	SessionCacheMaxBytes count    `env:"BROKER_SESSION_CACHE_MAX_BYTES"`
	SessionCacheTTL      duration `env:"BROKER_SESSION_CACHE_TTL"`
	// TLSCert and TLSKey, both or neither, serve the public listener over
	// TLS (HTTP/2 by ALPN) from PEM files.
	TLSCert string `env:"BROKER_TLS_CERT"`
	TLSKey  string `env:"BROKER_TLS_KEY"`
	// The standard OpenTelemetry variables the broker reads itself; the
	// exporter and SDK read the others (OTEL_EXPORTER_OTLP_HEADERS,
	// OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_TRACES_SAMPLER,
	// OTEL_RESOURCE_ATTRIBUTES...) from the process environment. Tracing is
	// on only when an endpoint is set.
	OTLPEndpoint       string `env:"OTEL_EXPORTER_OTLP_ENDPOINT"`
	OTLPTracesEndpoint string `env:"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"`
	OTLPProtocol       string `env:"OTEL_EXPORTER_OTLP_PROTOCOL"`
	OTLPTracesProtocol string `env:"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"`
	OTelServiceName    string `env:"OTEL_SERVICE_NAME" envDefault:"token-broker"`
	OTelSDKDisabled    string `env:"OTEL_SDK_DISABLED"`
	OTelTracesExporter string `env:"OTEL_TRACES_EXPORTER"`
}

// cacheOptions are the session cache's settings; nil when it is off.
func (c *config) cacheOptions() *sessions.CacheOptions {
	if !c.SessionCache {
		return nil
	}
	return &sessions.CacheOptions{
		MaxEntries: int(c.SessionCacheEntries),
		MaxBytes:   int64(c.SessionCacheMaxBytes),
		TTL:        time.Duration(c.SessionCacheTTL),
	}
}

// tracesEndpoint returns the URL the OTLP/HTTP exporter posts spans to, or
// "" when tracing is off. OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as
// given; OTEL_EXPORTER_OTLP_ENDPOINT is a base URL that gets /v1/traces
// appended, as the OTLP exporter specification says.
func (c *config) tracesEndpoint() string {
	if strings.EqualFold(c.OTelSDKDisabled, "true") || strings.EqualFold(c.OTelTracesExporter, "none") {
		return ""
	}
	if c.OTLPTracesEndpoint != "" {
		return c.OTLPTracesEndpoint
	}
	if c.OTLPEndpoint != "" {
		return strings.TrimSuffix(c.OTLPEndpoint, "/") + "/v1/traces"
	}
	return ""
}

// checkTelemetry reports the OpenTelemetry settings the broker cannot honour.
func (c *config) checkTelemetry() []string {
	var problems []string
	for _, v := range []struct{ name, value string }{
		{"OTEL_EXPORTER_OTLP_ENDPOINT", c.OTLPEndpoint},
		{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", c.OTLPTracesEndpoint},
	} {
		if v.value == "" {
			continue
		}
		if u, err := url.Parse(v.value); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			problems = append(problems, v.name+" must be an absolute http(s) URL")
		}
	}
	for _, v := range []struct{ name, value string }{
		{"OTEL_EXPORTER_OTLP_PROTOCOL", c.OTLPProtocol},
		{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", c.OTLPTracesProtocol},
	} {
		// Only the HTTP exporter is built in: it keeps gRPC out of the
		// binary, and every collector accepts OTLP over HTTP.
		if v.value != "" && v.value != "http/protobuf" {
			problems = append(problems, v.name+" must be http/protobuf, the only OTLP protocol the broker speaks")
		}
	}
	if e := c.OTelTracesExporter; e != "" && e != "otlp" && e != "none" {
		problems = append(problems, "OTEL_TRACES_EXPORTER must be otlp or none")
	}
	return problems
}

// envNames lists every variable the broker reads, so that run can take a
// getenv function instead of the process environment.
func envNames() []string {
	t := reflect.TypeFor[config]()
	names := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("env"), ",")
		names = append(names, name)
	}
	return names
}

// envName returns the variable of a config field.
func envName(field string) string {
	f, ok := reflect.TypeFor[config]().FieldByName(field)
	if !ok {
		return field
	}
	name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
	return name
}

// loadConfig reads and validates the configuration. It reports every
// problem at once, one line each, naming the variable; values are never
// echoed, since some are secrets (see withoutValues).
func loadConfig(getenv func(string) string, requireKeys bool) (*config, error) {
	environ := map[string]string{}
	for _, name := range envNames() {
		if v := getenv(name); v != "" {
			environ[name] = v
		}
	}
	var cfg config
	var problems []string
	invalid := map[string]bool{}
	if err := env.ParseWithOptions(&cfg, env.Options{Environment: environ}); err != nil {
		var agg env.AggregateError
		if !errors.As(err, &agg) {
			return nil, err
		}
		for _, e := range agg.Errors {
			name, problem := describeEnvError(e)
			invalid[name] = true
			problems = append(problems, problem)
		}
	}
	if cfg.RedisURL == "" {
		problems = append(problems, "BROKER_REDIS_URL is required (use `broker dev` for an embedded development store)")
	} else if rdb, err := sessions.NewClient(cfg.RedisURL); err != nil {
		problems = append(problems, errRedisURL)
	} else {
		rdb.Close()
	}
	if requireKeys && cfg.EncryptionKeys.Keyring == nil && environ["BROKER_ENCRYPTION_KEYS"] == "" {
		problems = append(problems, "BROKER_ENCRYPTION_KEYS is required: comma-separated KEYID:BASE64(32 bytes)")
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{
		{"IdleTimeout", time.Duration(cfg.IdleTimeout)},
		{"MaxLifetime", time.Duration(cfg.MaxLifetime)},
		{"RefreshSkew", time.Duration(cfg.RefreshSkew)},
		{"UpstreamTimeout", time.Duration(cfg.UpstreamTimeout)},
		{"WebSocketMaxLifetime", time.Duration(cfg.WebSocketMaxLifetime)},
		{"WebSocketCheckInterval", time.Duration(cfg.WebSocketCheckInterval)},
		{"SessionCacheTTL", time.Duration(cfg.SessionCacheTTL)},
	} {
		if name := envName(d.field); environ[name] != "" && !invalid[name] && d.v <= 0 {
			problems = append(problems, envName(d.field)+" must be a positive duration such as 30s or 720h")
		}
	}
	if cfg.WebSocketRoutes != "" && len(cfg.Routes) > 0 {
		policy := handlers.TunnelPolicy{
			MaxLifetime:   time.Duration(cfg.WebSocketMaxLifetime),
			CheckInterval: time.Duration(cfg.WebSocketCheckInterval),
		}
		routes, err := handlers.AllowWebSocket(cfg.Routes, cfg.WebSocketRoutes, policy)
		if err != nil {
			// AllowWebSocket names entries by position, never by value.
			problems = append(problems, "BROKER_WEBSOCKET_ROUTES is invalid, it lists prefixes of BROKER_ROUTES: "+strings.ReplaceAll(err.Error(), "\n", "; "))
		} else {
			cfg.Routes = routes
		}
	}
	if cfg.Issuer != "" {
		if u, err := url.Parse(cfg.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			problems = append(problems, "BROKER_OIDC_ISSUER must be an absolute http(s) URL")
		}
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		problems = append(problems, "BROKER_TLS_CERT and BROKER_TLS_KEY must be set together (PEM files of the public listener's certificate chain and key) or not at all")
	} else if cfg.TLSCert != "" {
		if _, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey); err != nil {
			// A path error quotes the path: keep only what went wrong.
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = fmt.Errorf("%s: %w", pe.Op, pe.Err)
			}
			problems = append(problems, "BROKER_TLS_CERT and BROKER_TLS_KEY do not hold a usable PEM certificate chain and matching key: "+err.Error())
		}
	}
	problems = append(problems, cfg.checkTelemetry()...)
	if len(problems) > 0 {
		return nil, &configError{problems: withoutValues(problems, slices.Collect(maps.Values(environ)))}
	}
	return &cfg, nil
}

// minEcho is the shortest run of a configured value that withoutValues
// finds in a message. Shorter runs are mostly words any message may hold
// ("redirect" is in the text of a message and in many a redirect URI).
const minEcho = 12

// withoutValues replaces every run of at least minEcho bytes of a problem
// that also occurs in one of the values (ASCII letters compared without
// case) with "[redacted]", the variables' names excepted. The parsers say
// what is wrong without quoting what they were given; this is the backstop
// for those that do not, some of which live in other packages: an entry
// such as "/api:http://u:pw@host", written with ':' for '=', would
// otherwise be quoted with its password.
func withoutValues(problems, values []string) []string {
	out := make([]string, len(problems))
	for i, p := range problems {
		out[i] = withoutValue(p, values)
	}
	return out
}

func withoutValue(msg string, values []string) string {
	lowerMsg := asciiLower(msg)
	var cut []bool
	for _, v := range values {
		if len(v) < minEcho {
			continue
		}
		lv := asciiLower(v)
		for i := 0; i+minEcho <= len(lowerMsg); i++ {
			if strings.Contains(lv, lowerMsg[i:i+minEcho]) {
				if cut == nil {
					cut = make([]bool, len(msg))
				}
				for j := i; j < i+minEcho; j++ {
					cut[j] = true
				}
			}
		}
	}
	if cut == nil {
		return msg
	}
	// The names of the variables stay, whatever the values hold.
	for _, name := range envNames() {
		for off := 0; ; {
			i := strings.Index(msg[off:], name)
			if i < 0 {
				break
			}
			for j := off + i; j < off+i+len(name); j++ {
				cut[j] = false
			}
			off += i + len(name)
		}
	}
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		if !cut[i] {
			b.WriteByte(msg[i])
			continue
		}
		if i == 0 || !cut[i-1] {
			b.WriteString("[redacted]")
		}
	}
	return b.String()
}

// asciiLower lowers ASCII letters only, so that byte offsets stay those of s.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// errRedisURL says what BROKER_REDIS_URL may be; the URL itself is never
// echoed, since it may hold a password.
const errRedisURL = "BROKER_REDIS_URL is not a valid redis://, rediss://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster:// URL"

// redisFromEnv connects to BROKER_REDIS_URL for the commands that need only
// the store (migrate, rekey); problem is "" when the URL is fine.
func redisFromEnv(getenv func(string) string) (rdb redis.UniversalClient, problem string) {
	raw := getenv("BROKER_REDIS_URL")
	if raw == "" {
		return nil, "BROKER_REDIS_URL is required"
	}
	rdb, err := sessions.NewClient(raw)
	if err != nil {
		return nil, errRedisURL
	}
	return rdb, ""
}

// keyringFromEnv parses BROKER_ENCRYPTION_KEYS for the commands that need
// only the store; why says what needs it. problem is "" when the keys are
// fine.
func keyringFromEnv(getenv func(string) string, why string) (keys *sessions.Keyring, problem string) {
	raw := getenv("BROKER_ENCRYPTION_KEYS")
	if raw == "" {
		return nil, "BROKER_ENCRYPTION_KEYS is required (" + why + "): comma-separated KEYID:BASE64(32 bytes)"
	}
	keys, err := sessions.ParseKeyring(raw)
	if err != nil {
		// ParseKeyring never quotes an entry; withoutValue is the backstop.
		return nil, withoutValue("BROKER_ENCRYPTION_KEYS: "+err.Error(), []string{raw})
	}
	return keys, ""
}

// configError lists every configuration problem, one per line.
type configError struct {
	problems []string
}

func (e *configError) Error() string {
	return "invalid configuration:\n  " + strings.Join(e.problems, "\n  ")
}

// describeEnvError names the variable of a parse error and says what is
// wrong with it on one line.
func describeEnvError(err error) (name, problem string) {
	var notSet env.VarIsNotSetError
	var empty env.EmptyVarError
	var parse env.ParseError
	switch {
	case errors.As(err, &notSet):
		return notSet.Key, notSet.Key + " is required"
	case errors.As(err, &empty):
		return empty.Key, empty.Key + " is required and must not be empty"
	case errors.As(err, &parse):
		name = envName(parse.Name)
		return name, name + " is invalid: " + strings.ReplaceAll(parse.Err.Error(), "\n", "; ")
	}
	return "", err.Error()
}

// The types below parse one variable each; their errors never include the
// value, which may be a secret.

type duration time.Duration

func (d duration) String() string { return time.Duration(d).String() }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return errors.New("not a duration such as 30s, 15m or 720h")
	}
	*d = duration(v)
	return nil
}

type redirectURIs []string

// UnmarshalText takes private-use URI schemes and claimed https URIs (see
// broker.CheckRedirectURI); a problem names the entry by its position.
func (r *redirectURIs) UnmarshalText(b []byte) error {
	var out []string
	var problems []error
	for i, raw := range strings.Split(string(b), ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		if err := broker.CheckRedirectURI(raw); err != nil {
			problems = append(problems, fmt.Errorf("entry %d: %w", i+1, err))
		}
		out = append(out, raw)
	}
	if err := errors.Join(problems...); err != nil {
		return err
	}
	if len(out) == 0 {
		return errors.New("no redirect URI given")
	}
	*r = out
	return nil
}

type routes []handlers.Route

func (r *routes) UnmarshalText(b []byte) error {
	v, err := handlers.ParseRoutes(string(b))
	if err != nil {
		return byEntry(string(b), err, func(entry string) error {
			_, err := handlers.ParseRoutes(entry)
			return err
		})
	}
	*r = v
	return nil
}

// byEntry names the bad entries of a comma-separated spec by position, as
// parse finds each on its own, for parsers of other packages whose messages
// quote the entry; err, the error of the whole spec, stands when no entry is
// bad alone (a repeat). Quoted parts of the spec are taken out of the
// messages.
func byEntry(spec string, err error, parse func(entry string) error) error {
	var errs []error
	for i, entry := range strings.Split(spec, ",") {
		if strings.TrimSpace(entry) == "" {
			continue
		}
		if eerr := parse(entry); eerr != nil {
			errs = append(errs, fmt.Errorf("entry %d: %s", i+1, withoutQuoted(eerr.Error(), entry)))
		}
	}
	if len(errs) == 0 {
		return errors.New(withoutQuoted(err.Error(), spec))
	}
	return errors.Join(errs...)
}

// withoutQuoted replaces each Go-quoted string of msg that quotes a part of
// value longer than one byte with [redacted].
func withoutQuoted(msg, value string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(msg, '"')
		if i < 0 {
			b.WriteString(msg)
			return b.String()
		}
		b.WriteString(msg[:i])
		q, err := strconv.QuotedPrefix(msg[i:])
		if err != nil {
			b.WriteString(msg[i:])
			return b.String()
		}
		if u, _ := strconv.Unquote(q); len(u) > 1 && strings.Contains(value, u) {
			b.WriteString("[redacted]")
		} else {
			b.WriteString(q)
		}
		msg = msg[i+len(q):]
	}
}

type trustedCIDRs []netip.Prefix

func (t *trustedCIDRs) UnmarshalText(b []byte) error {
	v, err := handlers.ParseTrustedProxies(string(b))
	if err != nil {
		return byEntry(string(b), err, func(entry string) error {
			_, err := handlers.ParseTrustedProxies(entry)
			return err
		})
	}
	*t = v
	return nil
}

type adminTokens []handlers.AdminToken

func (a *adminTokens) UnmarshalText(b []byte) error {
	v, err := handlers.ParseAdminTokens(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

type keyring struct{ *sessions.Keyring }

func (k *keyring) UnmarshalText(b []byte) error {
	v, err := sessions.ParseKeyring(string(b))
	if err != nil {
		return err
	}
	k.Keyring = v
	return nil
}

// rateLimit is "N/s" or "N/m"; 0 turns the limit off.
type rateLimit struct {
	N   int
	Per time.Duration
}

func (r *rateLimit) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "0" {
		*r = rateLimit{}
		return nil
	}
	n, unit, ok := strings.Cut(s, "/")
	v, err := strconv.Atoi(n)
	if !ok || err != nil || v <= 0 {
		return errors.New(`must be N/s, N/m or 0, for example "10/s"`)
	}
	switch unit {
	case "s":
		*r = rateLimit{N: v, Per: time.Second}
	case "m":
		*r = rateLimit{N: v, Per: time.Minute}
	default:
		return errors.New(`must be N/s, N/m or 0, for example "10/s"`)
	}
	return nil
}

// count is a whole number of at least 1.
type count int

func (c *count) UnmarshalText(b []byte) error {
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || v < 1 {
		return errors.New("must be a whole number of at least 1")
	}
	*c = count(v)
	return nil
}

// prefixLength is the length of an IPv6 prefix, from 32 to 128 bits, with
// or without a leading "/".
type prefixLength int

func (p *prefixLength) UnmarshalText(b []byte) error {
	v, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(string(b)), "/"))
	if err != nil || v < 32 || v > 128 {
		return errors.New("must be a prefix length from 32 to 128 bits, such as 64 or /56")
	}
	*p = prefixLength(v)
	return nil
}
