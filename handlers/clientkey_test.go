package handlers

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

func TestClientKey(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48")}
	tests := []struct {
		name, remote, xff string
		bits              int
		want              string
	}{
		{"IPv4", "198.51.100.7:4242", "", 64, "198.51.100.7"},
		{"IPv4-mapped IPv6 is IPv4", "[::ffff:198.51.100.7]:4242", "", 64, "198.51.100.7"},
		{"IPv6 by /64", "[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:4242", "", 64, "2001:db8:1:2::/64"},
		{"IPv6 by /56", "[2001:db8:1:2ff:aaaa::1]:4242", "", 56, "2001:db8:1:200::/56"},
		{"IPv6 by /128", "[2001:db8::1]:4242", "", 128, "2001:db8::1/128"},
		{"IPv6 with a zone", "[fe80::1%eth0]:4242", "", 64, "fe80::/64"},
		{"an untrusted peer's header is ignored", "[2001:db8:1:2::1]:4242", "198.51.100.9", 64, "2001:db8:1:2::/64"},
		{"a trusted proxy's header is believed", "10.1.2.3:4242", "2001:db8:9:9:1::1", 64, "2001:db8:9:9::/64"},
		{"a trusted IPv6 proxy's header is believed", "[2001:db8:ffff::1]:4242", "203.0.113.5", 64, "203.0.113.5"},
		{"a header that is no address stops at the proxy", "10.1.2.3:4242", "nonsense", 64, "10.1.2.3"},
		{"a Unix socket peer", "@", "", 64, "@"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.RemoteAddr = tt.remote
			if tt.xff != "" {
				r.Header.Set("X-Forwarded-For", tt.xff)
			}
			if got := clientKey(r, trusted, tt.bits); got != tt.want {
				t.Errorf("clientKey(%s, XFF %q, /%d) = %q, want %q", tt.remote, tt.xff, tt.bits, got, tt.want)
			}
		})
	}
}

// Two addresses of one /64 are one client; addresses of different /64s are
// not.
func TestClientPrefixShares(t *testing.T) {
	same := func(a, b string, bits int) bool {
		return clientPrefix(netip.MustParseAddr(a), bits) == clientPrefix(netip.MustParseAddr(b), bits)
	}
	for _, tt := range []struct {
		a, b  string
		bits  int
		share bool
	}{
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", 64, true},
		{"2001:db8:1:2::1", "2001:db8:1:3::1", 64, false},
		{"2001:db8:1:2::1", "2001:db8:1:3::1", 48, true},
		{"198.51.100.1", "::ffff:198.51.100.1", 64, true},
		{"198.51.100.1", "198.51.100.2", 64, false},
		{"::ffff:198.51.100.1", "::ffff:198.51.100.2", 64, false},
	} {
		if got := same(tt.a, tt.b, tt.bits); got != tt.share {
			t.Errorf("%s and %s one client at /%d = %v, want %v", tt.a, tt.b, tt.bits, got, tt.share)
		}
	}
}

// FuzzClientKey checks the rate limiter's client key for any peer and any
// X-Forwarded-For: it is a prefix of the configured length that holds the
// client's address, it is never taken from a header an untrusted peer sent,
// and from a trusted peer it holds the peer or an address the header names.
func FuzzClientKey(f *testing.F) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48")}
	f.Fuzz(func(t *testing.T, remote, xff string, bits uint8) {
		v6bits := 1 + int(bits)%128
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = remote
		r.Header["X-Forwarded-For"] = strings.Split(xff, "\n")
		key := clientKey(r, trusted, v6bits)

		bare := r.Clone(r.Context())
		bare.Header.Del("X-Forwarded-For")
		peer, peerOK := peerAddr(r)
		if !peerOK || !isTrusted(peer, trusted) {
			if want := clientKey(bare, trusted, v6bits); key != want {
				t.Fatalf("peer %q, XFF %q: key %q, want the peer's own %q: an untrusted peer chose its key", remote, xff, key, want)
			}
		}
		if !peerOK {
			if key != remoteHost(r) {
				t.Fatalf("peer %q: key %q, want the peer as the server saw it", remote, key)
			}
			return
		}

		p, err := netip.ParsePrefix(key)
		if err != nil {
			a, aerr := netip.ParseAddr(key)
			if aerr != nil || !a.Is4() {
				t.Fatalf("peer %q, XFF %q: key %q is neither an IPv4 address nor a prefix", remote, xff, key)
			}
			p = netip.PrefixFrom(a, 32)
		} else if p.Addr().Is4() || p.Bits() != v6bits || p != p.Masked() {
			t.Fatalf("peer %q, XFF %q: key %q, want an IPv6 prefix of %d bits, masked", remote, xff, key, v6bits)
		}
		client := netip.MustParseAddr(clientIP(r, trusted))
		if !p.Contains(client) {
			t.Fatalf("peer %q, XFF %q: key %q does not hold the client %s", remote, xff, key, client)
		}
		if isTrusted(peer, trusted) && !p.Contains(peer) {
			named := false
			for _, hop := range forwardedFor(r.Header) {
				a, ok := parseHop(hop)
				named = named || ok && p.Contains(a)
			}
			if !named {
				t.Fatalf("peer %q, XFF %q: key %q holds neither the peer nor an address of the header", remote, xff, key)
			}
		}
	})
}
