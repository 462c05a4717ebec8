package sessions

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Client defaults for a proxy on the request path: fail fast when Redis is
// away rather than hold every request, and keep enough connections for many
// concurrent requests. A URL query parameter (dial_timeout, pool_size, ...)
// overrides each of them.
const (
	defaultDialTimeout  = 2 * time.Second
	defaultReadTimeout  = 2 * time.Second
	defaultWriteTimeout = 2 * time.Second
	defaultMaxRetries   = 1
	// go-redis retries a failed dial 5 times 100 ms apart by default, which
	// makes an outage take half a second per command to report.
	defaultDialerRetries = 2
	// A cluster client learns that a replica replaced a failed master only
	// when it reloads the slot map: a MOVED answer triggers a reload, but a
	// dead master gives none, so without this the failed master's sessions
	// would be unreachable until the next periodic reload (60 s by default).
	// A reload is one CLUSTER SLOTS, asked only while commands are sent.
	defaultClusterStateReloadInterval = 2 * time.Second
)

// Default ports of the host lists, those Redis documents for each role.
const (
	defaultRedisPort    = "6379"
	defaultSentinelPort = "26379"
)

// NewClient returns a Redis client for a URL of one of three forms, each
// with TLS when the scheme starts with rediss:
//
//	redis[s]://[user:password@]host[:port][/db][?option=value]
//	redis[s]+sentinel://[user:password@]host[:port][,host[:port]...][/db]?master=NAME[&sentinel_username=U&sentinel_password=P][&option=value]
//	redis[s]+cluster://[user:password@]host[:port][,host[:port]...][?option=value]
//
// The user and password are those of the Redis ACL on the data nodes in every
// form; Sentinels that require their own credentials get them from
// sentinel_username and sentinel_password. The hosts of a Sentinel URL are
// Sentinels (port 26379 by default), those of a Cluster URL are seed nodes
// (port 6379 by default) from which the client learns the whole cluster. The
// options are go-redis's (dial_timeout, pool_size, ...), plus skip_verify on
// every rediss form and cluster_state_reload_interval on a cluster. With TLS
// each node's certificate is checked against the address dialled, as a
// Sentinel or cluster hands out several.
//
// Errors never quote the URL, since it may hold a password.
func NewClient(rawURL string) (redis.UniversalClient, error) {
	scheme, _, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, errors.New("redis url: want scheme://..., e.g. redis://host:6379/0")
	}
	switch scheme {
	case "redis", "rediss":
		opts, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis url: %w", parseError(err))
		}
		applyDefaults(opts)
		return redis.NewClient(opts), nil
	case "redis+sentinel", "rediss+sentinel":
		opts, err := parseSentinelURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis sentinel url: %w", err)
		}
		return redis.NewFailoverClient(opts), nil
	case "redis+cluster", "rediss+cluster":
		opts, err := parseClusterURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis cluster url: %w", err)
		}
		return redis.NewClusterClient(opts), nil
	default:
		return nil, errors.New("redis url: the scheme is not supported (want redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster)")
	}
}

// parseError keeps what is safe to show of an error of url.Parse, whose
// message quotes the URL, or of its parts, which may be a mistyped password
// (one with an unescaped '/' or '@' makes the rest of it look like a host).
func parseError(err error) error {
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		return errors.New("malformed URL (is every reserved character of the user and password percent-encoded?)")
	}
	return err
}

// multiHostURL is a Sentinel or Cluster URL taken apart. Its hosts are
// listed in the authority, which net/url cannot parse, so they are split off
// first.
type multiHostURL struct {
	tls   bool
	user  *url.Userinfo
	hosts []string // host:port, defaults filled in
	path  string
	query url.Values
}

func parseMultiHostURL(rawURL, defaultPort string) (*multiHostURL, error) {
	scheme, rest, _ := strings.Cut(rawURL, "://")
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	hostList := authority
	placeholder := "//placeholder"
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		hostList = authority[i+1:]
		placeholder = "//" + authority[:i] + "@placeholder"
	}
	// The rest, hosts aside, is an ordinary URL.
	u, err := url.Parse(placeholder + tail)
	if err != nil {
		return nil, parseError(err)
	}
	if u.Fragment != "" {
		return nil, errors.New("a fragment (#...) is not allowed")
	}
	m := &multiHostURL{
		tls:  strings.HasPrefix(scheme, "rediss+"),
		user: u.User,
		path: u.Path,
	}
	if m.query, err = url.ParseQuery(u.RawQuery); err != nil {
		return nil, errors.New("malformed query")
	}
	if hostList == "" {
		return nil, errors.New("no host")
	}
	entries := strings.Split(hostList, ",")
	for i, entry := range entries {
		// Hosts are not secret, but a mistyped password can end up here,
		// so an error names the entry by its position only.
		hu, err := url.Parse("//" + entry)
		if err != nil || hu.Hostname() == "" || hu.User != nil || hu.Path != "" {
			return nil, fmt.Errorf("host %d of %d is not host[:port]", i+1, len(entries))
		}
		port := hu.Port()
		if port == "" {
			port = defaultPort
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("host %d of %d has an invalid port", i+1, len(entries))
		}
		m.hosts = append(m.hosts, net.JoinHostPort(hu.Hostname(), port))
	}
	return m, nil
}

// take removes a parameter this package interprets from the query and
// returns its last value, as go-redis does for its own.
func (m *multiHostURL) take(name string) string {
	vs := m.query[name]
	delete(m.query, name)
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// refuse reports query parameters that go-redis would accept but that this
// URL form expresses otherwise, so that each setting has one spelling.
func (m *multiHostURL) refuse(names map[string]string) error {
	for name, instead := range names {
		if m.query.Has(name) {
			return fmt.Errorf("option %s is not allowed: %s", name, instead)
		}
	}
	return nil
}

// goRedisURL builds the single-host URL go-redis parses for the options:
// the first host, the others as addr parameters, no credentials (they are
// set on the options afterwards, so that no go-redis error can quote them).
func (m *multiHostURL) goRedisURL(path string) string {
	q := url.Values{}
	for k, vs := range m.query {
		q[k] = vs
	}
	q["addr"] = m.hosts[1:]
	scheme := "redis"
	if m.tls {
		scheme = "rediss"
	}
	return (&url.URL{Scheme: scheme, Host: m.hosts[0], Path: path, RawQuery: q.Encode()}).String()
}

// tlsConfig is the TLS of a form with several hosts. The server name is left
// empty so that each connection checks the certificate against the address
// it dials (crypto/tls takes the name from the address), rather than every
// node against the first host of the URL.
func (m *multiHostURL) tlsConfig(parsed *tls.Config) *tls.Config {
	if !m.tls {
		return nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if parsed != nil {
		c.InsecureSkipVerify = parsed.InsecureSkipVerify
	}
	return c
}

func parseSentinelURL(rawURL string) (*redis.FailoverOptions, error) {
	m, err := parseMultiHostURL(rawURL, defaultSentinelPort)
	if err != nil {
		return nil, err
	}
	if err := m.refuse(map[string]string{
		"addr":        "list the Sentinels in the host part, separated by commas",
		"master_name": "use master",
		"username":    "put the user in the URL's user part",
		"password":    "put the password in the URL's user part",
		"db":          "put the database number in the path",
		// Reads from replicas would see a session after its end or refresh
		// reached the master, and writes to them fail.
		"replica_only":              "the broker reads and writes the master",
		"use_disconnected_replicas": "the broker reads and writes the master",
	}); err != nil {
		return nil, err
	}
	master := m.take("master")
	if master == "" {
		return nil, errors.New("option master (the name the Sentinels monitor) is required")
	}
	sentinelUser, sentinelPassword := m.take("sentinel_username"), m.take("sentinel_password")
	m.query.Set("master_name", master)
	opts, err := redis.ParseFailoverURL(m.goRedisURL(m.path))
	if err != nil {
		return nil, parseError(err)
	}
	opts.Username, opts.Password = credentials(m.user)
	opts.SentinelUsername, opts.SentinelPassword = sentinelUser, sentinelPassword
	opts.TLSConfig = m.tlsConfig(opts.TLSConfig)
	clientTunables{
		dialTimeout: &opts.DialTimeout, readTimeout: &opts.ReadTimeout, writeTimeout: &opts.WriteTimeout,
		maxRetries: &opts.MaxRetries, poolSize: &opts.PoolSize, dialerRetries: &opts.DialerRetries,
		contextTimeoutEnabled: &opts.ContextTimeoutEnabled,
	}.applyDefaults()
	return opts, nil
}

func parseClusterURL(rawURL string) (*redis.ClusterOptions, error) {
	m, err := parseMultiHostURL(rawURL, defaultRedisPort)
	if err != nil {
		return nil, err
	}
	if m.path != "" && m.path != "/" && m.path != "/0" {
		return nil, errors.New("a cluster has database 0 only; leave the path empty or /0")
	}
	if err := m.refuse(map[string]string{
		"addr": "list the seed nodes in the host part, separated by commas",
		// A read from a replica may come before the replica applied an
		// end or a refresh that the master already announced: the
		// session cache would keep the old record, and a refresh would
		// adopt old tokens.
		"read_only":        "the broker reads the masters only",
		"route_by_latency": "the broker reads the masters only",
		"route_randomly":   "the broker reads the masters only",
	}); err != nil {
		return nil, err
	}
	// ParseClusterURL has no skip_verify, nor the reload interval; they are
	// taken here so that the rediss forms accept the same options and each
	// default can be overridden.
	skipVerify := false
	if m.query.Has("skip_verify") {
		v := m.take("skip_verify")
		if skipVerify, err = strconv.ParseBool(v); err != nil || !m.tls {
			return nil, errors.New("option skip_verify wants true or false, with rediss+cluster")
		}
	}
	reload := defaultClusterStateReloadInterval
	if m.query.Has("cluster_state_reload_interval") {
		if reload, err = time.ParseDuration(m.take("cluster_state_reload_interval")); err != nil || reload <= 0 {
			return nil, errors.New("option cluster_state_reload_interval wants a positive duration, e.g. 2s")
		}
	}
	opts, err := redis.ParseClusterURL(m.goRedisURL(""))
	if err != nil {
		return nil, parseError(err)
	}
	opts.ClusterStateReloadInterval = reload
	opts.Username, opts.Password = credentials(m.user)
	opts.TLSConfig = m.tlsConfig(&tls.Config{InsecureSkipVerify: skipVerify})
	clientTunables{
		dialTimeout: &opts.DialTimeout, readTimeout: &opts.ReadTimeout, writeTimeout: &opts.WriteTimeout,
		maxRetries: &opts.MaxRetries, poolSize: &opts.PoolSize, dialerRetries: &opts.DialerRetries,
		contextTimeoutEnabled: &opts.ContextTimeoutEnabled,
	}.applyDefaults()
	return opts, nil
}

func credentials(u *url.Userinfo) (user, password string) {
	if u == nil {
		return "", ""
	}
	password, _ = u.Password()
	return u.Username(), password
}

// applyDefaults fills in what the URL left unset.
func applyDefaults(o *redis.Options) {
	clientTunables{
		dialTimeout: &o.DialTimeout, readTimeout: &o.ReadTimeout, writeTimeout: &o.WriteTimeout,
		maxRetries: &o.MaxRetries, poolSize: &o.PoolSize, dialerRetries: &o.DialerRetries,
		contextTimeoutEnabled: &o.ContextTimeoutEnabled,
	}.applyDefaults()
}

// clientTunables points at the fields that go-redis's option structs for a
// server, a Sentinel-managed master and a cluster have in common, so that
// the three get the same defaults.
type clientTunables struct {
	dialTimeout, readTimeout, writeTimeout *time.Duration
	maxRetries, poolSize, dialerRetries    *int
	contextTimeoutEnabled                  *bool
}

func (c clientTunables) applyDefaults() {
	if *c.dialTimeout == 0 {
		*c.dialTimeout = defaultDialTimeout
	}
	if *c.readTimeout == 0 {
		*c.readTimeout = defaultReadTimeout
	}
	if *c.writeTimeout == 0 {
		*c.writeTimeout = defaultWriteTimeout
	}
	if *c.maxRetries == 0 {
		*c.maxRetries = defaultMaxRetries
	}
	// Per node on a cluster, like go-redis's own default.
	if *c.poolSize == 0 {
		*c.poolSize = 10 * runtime.GOMAXPROCS(0)
	}
	if *c.dialerRetries == 0 {
		*c.dialerRetries = defaultDialerRetries
	}
	// A request's deadline bounds its Redis calls too.
	*c.contextTimeoutEnabled = true
}
