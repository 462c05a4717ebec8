package handlers

import (
	"net/http"
	"net/netip"
)

// DefaultIPv6Prefix is how many leading bits of an IPv6 address stand for
// one client when ClientIPv6Prefix is zero: a /64 is what one host, or one
// home or phone, gets from its provider, so counting per /128 would give one
// host 2^64 budgets.
const DefaultIPv6Prefix = 64

// clientPrefix returns the prefix that stands for the client at a, for the
// rate limits and the per-client connection cap: the address itself for
// IPv4 (an IPv4-mapped IPv6 address is the IPv4 address it maps), its first
// v6bits bits for IPv6. v6bits outside 1-128 counts as 128.
func clientPrefix(a netip.Addr, v6bits int) netip.Prefix {
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	if v6bits <= 0 || v6bits > 128 {
		v6bits = 128
	}
	p, _ := a.Prefix(v6bits)
	return p
}

// clientKey names the client that sent r for the rate limiter: the address
// clientIP finds (the peer, or what trusted proxies say), an IPv4 address as
// it is and an IPv6 one as its /v6bits prefix. A peer that is not an IP
// address (a Unix socket) is named as the server saw it.
func clientKey(r *http.Request, trusted []netip.Prefix, v6bits int) string {
	ip := clientIP(r, trusted)
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	p := clientPrefix(a, v6bits)
	if p.Addr().Is4() {
		return p.Addr().String()
	}
	return p.String()
}
