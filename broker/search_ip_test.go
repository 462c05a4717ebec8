package broker

import "testing"

func TestClientIPMatcher(t *testing.T) {
	tests := []struct {
		name, query, ip string
		match           bool
	}{
		{"same address", "203.0.113.7", "203.0.113.7", true},
		{"another address", "203.0.113.7", "203.0.113.8", false},
		{"in the prefix", "203.0.113.0/24", "203.0.113.200", true},
		{"out of the prefix", "203.0.113.0/24", "203.0.114.1", false},
		{"prefix with host bits", "203.0.113.9/24", "203.0.113.1", true},
		{"IPv4-mapped session address", "203.0.113.7", "::ffff:203.0.113.7", true},
		{"IPv6 prefix", "2001:db8::/32", "2001:db8:1::5", true},
		{"IPv6 spelled otherwise", "2001:DB8::1", "2001:db8:0::1", true},
		{"a session without an address", "203.0.113.7", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keep := clientIPMatcher(tt.query)
			if keep == nil {
				t.Fatalf("clientIPMatcher(%q) = nil, want a matcher", tt.query)
			}
			if got := keep(&Session{IP: tt.ip}); got != tt.match {
				t.Errorf("clientIPMatcher(%q)(%q) = %v, want %v", tt.query, tt.ip, got, tt.match)
			}
		})
	}
	for _, bad := range []string{"not-an-address", "203.0.113.0/33", "203.0.113"} {
		if clientIPMatcher(bad) != nil {
			t.Errorf("clientIPMatcher(%q) is a matcher, want nil", bad)
		}
	}
}
