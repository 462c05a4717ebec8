package broker

import (
	"strings"
	"testing"
)

func TestCheckRedirectURI(t *testing.T) {
	tests := []struct {
		name, uri string
		ok        bool
	}{
		{"private-use scheme, RFC 8252 form", "com.example.app:/oauth2redirect", true},
		{"private-use scheme with an authority", "com.example.app://oauth2redirect", true},
		{"private-use scheme with a query", "com.example.app:/cb?tenant=1", true},
		{"claimed https", "https://app.example.com/oauth2redirect", true},
		{"claimed https with port and query", "https://app.example.com:8443/cb?x=1", true},
		{"claimed https, upper-case scheme", "HTTPS://app.example.com/cb", true},

		{"scheme without a dot", "myapp:/oauth2redirect", false},
		{"javascript", "javascript:alert(1)", false},
		{"data", "data:text/html,hi", false},
		{"file", "file:///etc/passwd", false},
		{"loopback IPv4", "http://127.0.0.1:8080/cb", false},
		{"loopback IPv6", "http://[::1]/cb", false},
		{"localhost", "http://localhost/cb", false},
		{"plain http", "http://app.example.com/cb", false},
		{"https without host", "https:///cb", false},
		{"https with user information", "https://user@app.example.com/cb", false},
		{"https to an IP address", "https://192.0.2.1/cb", false},
		{"https to localhost", "https://localhost/cb", false},
		{"fragment", "com.example.app:/cb#frag", false},
		{"empty fragment", "https://app.example.com/cb#", false},
		{"private-use scheme and nothing else", "org.example.app:", false},
		{"relative", "/oauth2redirect", false},
		{"not a URI", "not a uri", false},
		{"control character", "com.example.app:/cb\r\nx", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckRedirectURI(tt.uri)
			if (err == nil) != tt.ok {
				t.Fatalf("CheckRedirectURI(%q) = %v, want ok %v", tt.uri, err, tt.ok)
			}
			if err != nil && tt.uri != "" && strings.Contains(err.Error(), tt.uri) {
				t.Errorf("CheckRedirectURI(%q) = %q quotes the URI", tt.uri, err)
			}
		})
	}
}
