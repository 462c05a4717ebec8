package broker

import "testing"

// htu is compared without query and fragment, after the normalization of
// RFC 3986 section 6.2.2 and 6.2.3 (RFC 9449 section 4.3 point 9).
func TestSameHTU(t *testing.T) {
	const req = "https://api.example.com/v1/orders/a%2Fb"
	for _, c := range []struct {
		htu  string
		want bool
	}{
		{"https://api.example.com/v1/orders/a%2Fb", true},
		{"HTTPS://API.Example.COM/v1/orders/a%2fb", true},
		{"https://api.example.com:443/v1/orders/a%2Fb", true},
		{"https://api.example.com/v1/%6Frders/a%2Fb", true},
		{"https://api.example.com/v1/orders/a%2Fb?x=1#f", true},
		{"https://api.example.com/v1/orders/a/b", false},
		{"https://api.example.com/V1/orders/a%2Fb", false},
		{"http://api.example.com/v1/orders/a%2Fb", false},
		{"https://api.example.com:8443/v1/orders/a%2Fb", false},
		{"https://other.example.com/v1/orders/a%2Fb", false},
		{"https://user@api.example.com/v1/orders/a%2Fb", false},
		{"/v1/orders/a%2Fb", false},
		{"ftp://api.example.com/v1/orders/a%2Fb", false},
		{"", false},
	} {
		if got := sameHTU(c.htu, req); got != c.want {
			t.Errorf("sameHTU(%q, %q) = %v, want %v", c.htu, req, got, c.want)
		}
	}
	if !sameHTU("http://[::1]:8080", "http://[::1]:8080/") || sameHTU("http://[::1]:8080/", "http://[::1]:8081/") {
		t.Error("sameHTU of IPv6 hosts: empty path is /, ports differ")
	}
}
