package sessions

import (
	"cmp"
	"crypto/tls"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestNewClientOptions(t *testing.T) {
	tests := []struct {
		name     string
		url      string
		addr     string
		user     string
		password string
		db       int
		tls      bool
		timeout  time.Duration
	}{
		{"plain", "redis://localhost:6379", "localhost:6379", "", "", 0, false, 2 * time.Second},
		{"acl user and db", "redis://broker:s3cret@redis.internal:6380/2", "redis.internal:6380", "broker", "s3cret", 2, false, 2 * time.Second},
		{"tls", "rediss://:s3cret@redis.example.com/1", "redis.example.com:6379", "", "s3cret", 1, true, 2 * time.Second},
		{"timeouts from the url", "redis://localhost?read_timeout=5s&dial_timeout=1s", "localhost:6379", "", "", 0, false, 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.url)
			if err != nil {
				t.Fatalf("NewClient = %v", err)
			}
			defer c.Close()
			o := c.(*redis.Client).Options()
			if o.Addr != tt.addr || o.Username != tt.user || o.Password != tt.password || o.DB != tt.db {
				t.Errorf("addr, user, password, db = %q, %q, %q, %d; want %q, %q, %q, %d", o.Addr, o.Username, o.Password, o.DB, tt.addr, tt.user, tt.password, tt.db)
			}
			if (o.TLSConfig != nil) != tt.tls {
				t.Errorf("TLS = %v, want %v", o.TLSConfig != nil, tt.tls)
			}
			if o.ReadTimeout != tt.timeout || o.WriteTimeout != defaultWriteTimeout {
				t.Errorf("read, write timeout = %v, %v; want %v, %v", o.ReadTimeout, o.WriteTimeout, tt.timeout, defaultWriteTimeout)
			}
			if o.MaxRetries != defaultMaxRetries || o.PoolSize != 10*runtime.GOMAXPROCS(0) {
				t.Errorf("max retries, pool size = %d, %d; want %d, %d", o.MaxRetries, o.PoolSize, defaultMaxRetries, 10*runtime.GOMAXPROCS(0))
			}
		})
	}
}

// TestNewClientRejects covers malformed URLs of every form; no error may
// quote the password.
func TestNewClientRejects(t *testing.T) {
	const password = "hunter2-very-secret"
	tests := []struct {
		name string
		url  string
	}{
		{"http scheme", "http://user:" + password + "@localhost:6379"},
		{"unix socket", "unix:///tmp/redis.sock"},
		{"no scheme", "localhost:6379"},
		{"bad port", "redis://user:" + password + "@localhost:port"},
		{"bad db", "redis://user:" + password + "@localhost:6379/zero"},
		{"unknown option", "redis://user:" + password + "@localhost:6379?colour=blue"},
		{"sentinel without master", "redis+sentinel://u:" + password + "@s1,s2"},
		{"sentinel empty host list", "redis+sentinel://u:" + password + "@/0?master=m"},
		{"sentinel empty host in list", "redis+sentinel://u:" + password + "@s1,,s2?master=m"},
		{"sentinel bad port", "redis+sentinel://u:" + password + "@s1:x?master=m"},
		{"sentinel port out of range", "redis+sentinel://u:" + password + "@s1:70000?master=m"},
		{"sentinel bad db", "redis+sentinel://u:" + password + "@s1/zero?master=m"},
		{"sentinel addr option", "redis+sentinel://u:" + password + "@s1?master=m&addr=s2:26379"},
		{"sentinel master_name option", "redis+sentinel://u:" + password + "@s1?master_name=m"},
		{"sentinel password option", "redis+sentinel://s1?master=m&password=" + password},
		{"sentinel unknown option", "redis+sentinel://u:" + password + "@s1?master=m&colour=blue"},
		{"sentinel bad duration", "redis+sentinel://u:" + password + "@s1?master=m&dial_timeout=soon"},
		{"sentinel skip_verify without tls", "redis+sentinel://u:" + password + "@s1?master=m&skip_verify=true"},
		{"sentinel unescaped slash in password", "redis+sentinel://u:" + password + "/x@s1?master=m"},
		{"cluster db 1", "redis+cluster://u:" + password + "@n1:7000/1"},
		{"cluster addr option", "redis+cluster://u:" + password + "@n1:7000?addr=n2:7000"},
		{"cluster master option", "redis+cluster://u:" + password + "@n1:7000?master=m"},
		{"cluster unknown option", "redis+cluster://u:" + password + "@n1:7000?colour=blue"},
		{"cluster reads from replicas", "redis+cluster://u:" + password + "@n1:7000?read_only=true"},
		{"cluster reads routed by latency", "redis+cluster://u:" + password + "@n1:7000?route_by_latency=true"},
		{"cluster reads routed randomly", "redis+cluster://u:" + password + "@n1:7000?route_randomly=true"},
		{"sentinel replica only", "redis+sentinel://u:" + password + "@s1?master=m&replica_only=true"},
		{"cluster skip_verify without tls", "redis+cluster://u:" + password + "@n1:7000?skip_verify=true"},
		{"cluster bad reload interval", "redis+cluster://u:" + password + "@n1:7000?cluster_state_reload_interval=0"},
		{"cluster bad port", "redis+cluster://u:" + password + "@n1:7000,n2:port"},
		{"cluster fragment", "redis+cluster://u:" + password + "@n1:7000#" + password},
		{"cluster unescaped slash in password", "redis+cluster://u:" + password + "/x@n1:7000,n2:7000"},
		{"cluster unescaped at in password", "redis+cluster://u:hunter2@" + password + "@n1:7000,n2:700x"},
		{"unknown plus scheme", "redis+socket://u:" + password + "@n1:7000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.url)
			if err == nil {
				c.Close()
				t.Fatalf("NewClient(%s) = nil error, want one", tt.name)
			}
			if strings.Contains(err.Error(), password) {
				t.Errorf("NewClient(%s) = %q, which quotes the password", tt.name, err)
			}
		})
	}
}

func TestNewClientSentinel(t *testing.T) {
	tests := []struct {
		name                         string
		url                          string
		sentinels                    []string
		master                       string
		user, password               string
		sentinelUser, sentinelPasswd string
		db                           int
		tls                          bool
		readTimeout                  time.Duration
	}{
		{
			name:      "one sentinel, default port",
			url:       "redis+sentinel://sentinel.internal?master=mymaster",
			sentinels: []string{"sentinel.internal:26379"},
			master:    "mymaster",
		},
		{
			name:      "three sentinels, acl user, db",
			url:       "redis+sentinel://broker:s3cret@10.0.0.1:26379,10.0.0.2:26380,[::1]/3?master=cache",
			sentinels: []string{"10.0.0.1:26379", "10.0.0.2:26380", "[::1]:26379"},
			master:    "cache",
			user:      "broker", password: "s3cret", db: 3,
		},
		{
			name:      "sentinel credentials and tls",
			url:       "rediss+sentinel://:p%40ss@s1:26379,s2:26379/0?master=m&sentinel_username=sen&sentinel_password=sen%2Fpw&read_timeout=5s",
			sentinels: []string{"s1:26379", "s2:26379"},
			master:    "m",
			password:  "p@ss", sentinelUser: "sen", sentinelPasswd: "sen/pw",
			tls: true, readTimeout: 5 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseSentinelURL(tt.url)
			if err != nil {
				t.Fatalf("parseSentinelURL = %v", err)
			}
			if !reflect.DeepEqual(o.SentinelAddrs, tt.sentinels) || o.MasterName != tt.master || o.DB != tt.db {
				t.Errorf("sentinels, master, db = %q, %q, %d; want %q, %q, %d", o.SentinelAddrs, o.MasterName, o.DB, tt.sentinels, tt.master, tt.db)
			}
			if o.Username != tt.user || o.Password != tt.password || o.SentinelUsername != tt.sentinelUser || o.SentinelPassword != tt.sentinelPasswd {
				t.Errorf("user, password, sentinel user, sentinel password = %q, %q, %q, %q; want %q, %q, %q, %q",
					o.Username, o.Password, o.SentinelUsername, o.SentinelPassword, tt.user, tt.password, tt.sentinelUser, tt.sentinelPasswd)
			}
			checkTLS(t, o.TLSConfig, tt.tls)
			want := cmp.Or(tt.readTimeout, defaultReadTimeout)
			checkTunables(t, o.ReadTimeout, want, o.WriteTimeout, o.MaxRetries, o.PoolSize, o.DialerRetries, o.ContextTimeoutEnabled)

			c, err := NewClient(tt.url)
			if err != nil {
				t.Fatalf("NewClient = %v", err)
			}
			c.Close()
		})
	}
}

func TestNewClientCluster(t *testing.T) {
	tests := []struct {
		name           string
		url            string
		addrs          []string
		user, password string
		tls            bool
		skipVerify     bool
		readTimeout    time.Duration
		reload         time.Duration
	}{
		{
			name:  "one seed, default port",
			url:   "redis+cluster://redis.internal",
			addrs: []string{"redis.internal:6379"},
		},
		{
			name:  "three seeds, acl user, db 0",
			url:   "redis+cluster://broker:s3cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0",
			addrs: []string{"10.0.0.1:7000", "10.0.0.2:7001", "[::1]:7002"},
			user:  "broker", password: "s3cret",
		},
		{
			name:     "tls with options",
			url:      "rediss+cluster://:s3cret@n1:7000,n2:7000/?read_timeout=3s&skip_verify=true&max_redirects=5",
			addrs:    []string{"n1:7000", "n2:7000"},
			password: "s3cret", tls: true, skipVerify: true, readTimeout: 3 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseClusterURL(tt.url)
			if err != nil {
				t.Fatalf("parseClusterURL = %v", err)
			}
			if !reflect.DeepEqual(o.Addrs, tt.addrs) || o.Username != tt.user || o.Password != tt.password {
				t.Errorf("addrs, user, password = %q, %q, %q; want %q, %q, %q", o.Addrs, o.Username, o.Password, tt.addrs, tt.user, tt.password)
			}
			checkTLS(t, o.TLSConfig, tt.tls)
			if o.TLSConfig != nil && o.TLSConfig.InsecureSkipVerify != tt.skipVerify {
				t.Errorf("InsecureSkipVerify = %v, want %v", o.TLSConfig.InsecureSkipVerify, tt.skipVerify)
			}
			want := cmp.Or(tt.readTimeout, defaultReadTimeout)
			checkTunables(t, o.ReadTimeout, want, o.WriteTimeout, o.MaxRetries, o.PoolSize, o.DialerRetries, o.ContextTimeoutEnabled)
			if want := cmp.Or(tt.reload, defaultClusterStateReloadInterval); o.ClusterStateReloadInterval != want {
				t.Errorf("ClusterStateReloadInterval = %v, want %v", o.ClusterStateReloadInterval, want)
			}

			c, err := NewClient(tt.url)
			if err != nil {
				t.Fatalf("NewClient = %v", err)
			}
			c.Close()
		})
	}
}

func checkTLS(t *testing.T, c *tls.Config, want bool) {
	t.Helper()
	if (c != nil) != want {
		t.Fatalf("TLS = %v, want %v", c != nil, want)
	}
	// Each node's certificate is checked against the address dialled.
	if c != nil && c.ServerName != "" {
		t.Errorf("TLS ServerName = %q, want empty", c.ServerName)
	}
}

func checkTunables(t *testing.T, read, wantRead, write time.Duration, retries, pool, dialerRetries int, ctxTimeout bool) {
	t.Helper()
	if read != wantRead || write != defaultWriteTimeout {
		t.Errorf("read, write timeout = %v, %v; want %v, %v", read, write, wantRead, defaultWriteTimeout)
	}
	if retries != defaultMaxRetries || pool != 10*runtime.GOMAXPROCS(0) || dialerRetries != defaultDialerRetries || !ctxTimeout {
		t.Errorf("max retries, pool size, dialer retries, context timeout = %d, %d, %d, %v; want %d, %d, %d, true",
			retries, pool, dialerRetries, ctxTimeout, defaultMaxRetries, 10*runtime.GOMAXPROCS(0), defaultDialerRetries)
	}
}
