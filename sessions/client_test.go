package sessions

import (
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
