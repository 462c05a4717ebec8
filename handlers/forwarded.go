package handlers

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"strings"
)

// ParseTrustedProxies parses BROKER_TRUSTED_PROXIES: comma-separated CIDRs,
// where a bare address stands for itself (a /32 or /128). Blank entries are
// skipped, so an empty spec trusts no one. Every bad entry is reported, each
// by name.
func ParseTrustedProxies(spec string) ([]netip.Prefix, error) {
	var (
		prefixes []netip.Prefix
		errs     []error
	)
	for entry := range strings.SplitSeq(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		p, err := parseTrustedProxy(entry)
		if err != nil {
			errs = append(errs, fmt.Errorf("trusted proxy %q: %w", entry, err))
			continue
		}
		prefixes = append(prefixes, p)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return prefixes, nil
}

func parseTrustedProxy(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, errors.New("not a CIDR")
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, errors.New("not an IP address or CIDR")
		}
		if a.Zone() != "" {
			return netip.Prefix{}, errors.New("an IPv6 zone cannot be trusted")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	// Peer addresses are unmapped before they are matched (see parseHop), so
	// an IPv4-mapped IPv6 prefix is turned into the IPv4 prefix it denotes;
	// left as it is, it would never match anything.
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// clientIP returns the address of the client that sent r. It is the peer's
// address unless the peer is a trusted proxy; then X-Forwarded-For is read
// from the right, each trusted hop skipped, and the first untrusted address
// is the client. Only entries appended by trusted proxies can be believed:
// anything further left was written by the client itself and may be forged.
// An entry that is not an address ends the walk at the trusted hop that
// passed it on, and a chain of trusted hops only yields its leftmost entry.
func clientIP(r *http.Request, trusted []netip.Prefix) string {
	peer, ok := peerAddr(r)
	if !ok {
		return remoteHost(r)
	}
	client := peer
	if !isTrusted(client, trusted) {
		return client.String()
	}
	hops := forwardedFor(r.Header)
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := parseHop(hops[i])
		if !ok {
			break
		}
		client = a
		if !isTrusted(a, trusted) {
			break
		}
	}
	return client.String()
}

// setForwarded sets the X-Forwarded-For, X-Forwarded-Proto and
// X-Forwarded-Host headers of the outbound request out from the inbound
// request in. Client-sent values are kept only when the peer is a trusted
// proxy: from anyone else they are forgeries waiting to be believed by the
// upstream, so they are replaced by what the broker saw itself.
func setForwarded(out, in *http.Request, trusted []netip.Prefix) {
	peer := remoteHost(in)
	addr, ok := peerAddr(in)
	if ok {
		peer = addr.String()
	}
	fromTrusted := ok && isTrusted(addr, trusted)
	dropForwarding(out.Header, fromTrusted)

	xff := peer
	if prior := strings.Join(in.Header.Values("X-Forwarded-For"), ", "); fromTrusted && prior != "" {
		xff = prior + ", " + peer
	}
	if xff != "" {
		out.Header.Set("X-Forwarded-For", xff)
	} else {
		out.Header.Del("X-Forwarded-For")
	}

	proto := "http"
	if in.TLS != nil {
		proto = "https"
	}
	if v := in.Header.Get("X-Forwarded-Proto"); fromTrusted && v != "" {
		proto = v
	}
	out.Header.Set("X-Forwarded-Proto", proto)

	host := in.Host
	if v := in.Header.Get("X-Forwarded-Host"); fromTrusted && v != "" {
		host = v
	}
	out.Header.Set("X-Forwarded-Host", host)
}

// clientHeaders are the headers by which proxies, CDNs and load balancers
// tell the next hop about the client, besides the X-Forwarded-For,
// X-Forwarded-Proto and X-Forwarded-Host the broker sets itself: its
// address, port, scheme, TLS and the host it asked for. Frameworks upstream
// believe them (for a client's address in logs, rate limits and allow-lists,
// for the scheme of redirects and cookies), so from a peer that is not a
// trusted proxy each is a forgery and is removed; so is every other
// X-Forwarded-* header. From a trusted proxy they are kept: it wrote them.
var clientHeaders = canonicalSet(
	"X-Real-IP", "X-Client-IP", "X-Cluster-Client-IP", "X-Original-Forwarded-For",
	"X-Originating-IP", "X-Remote-IP", "X-Remote-Addr", "X-ProxyUser-Ip", "Client-IP",
	"True-Client-IP", "CF-Connecting-IP", "CF-Connecting-IPv6", "CF-Visitor",
	"Fastly-Client-IP", "Fastly-SSL", "X-Appengine-User-IP", "X-Azure-ClientIP",
	"X-Azure-SocketIP", "X-ARR-ClientIP", "X-ARR-SSL", "X-Envoy-External-Address",
	"X-Envoy-Internal", "X-Forwarded", "Forwarded-For", "X-Host", "X-Original-Host",
	"X-Url-Scheme", "X-Scheme", "Front-End-Https", "X-Real-Port",
)

// pathHeaders carry a request's path or URL in place of the request line
// (IIS URL Rewrite and Symfony read X-Original-URL and X-Rewrite-URL, auth
// gateways X-Forwarded-Uri). The broker routes and checks the path of the
// request line and rewrites it for the upstream, so a path in a header is
// never the one the upstream is sent; believed, it would bypass the route
// checks. They are removed whoever sent them, and so is Forwarded (RFC
// 7239), which the broker does not write.
var pathHeaders = canonicalSet(
	"X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-Original-Path",
	"X-Forwarded-Uri", "X-Forwarded-Path", "X-Envoy-Original-Path", "Forwarded",
)

func canonicalSet(names ...string) map[string]bool {
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[textproto.CanonicalMIMEHeaderKey(n)] = true
	}
	return set
}

// dropForwarding removes from h the headers only the broker may write (see
// clientHeaders and pathHeaders). CGI-style servers (PHP, Django and other
// WSGI, Rack) read X_Real_IP as they read X-Real-IP, so the spelling of each
// such header with "_" for "-" is removed from everyone: no proxy writes it.
func dropForwarding(h http.Header, fromTrusted bool) {
	for k := range h {
		name := k
		if strings.Contains(k, "_") {
			name = textproto.CanonicalMIMEHeaderKey(strings.ReplaceAll(k, "_", "-"))
		}
		forwarding := clientHeaders[name] || strings.HasPrefix(name, "X-Forwarded-")
		switch {
		case pathHeaders[name]:
			delete(h, k)
		case name != k && (forwarding || name == requestIDHeader):
			delete(h, k)
		case forwarding && !fromTrusted:
			delete(h, k)
		}
	}
}

// peerAddr is the address of the connection's peer, unmapped and without a
// zone so that it compares equal to the same address written as IPv4.
func peerAddr(r *http.Request) (netip.Addr, bool) {
	return parseHop(remoteHost(r))
}

// remoteHost is the host part of r.RemoteAddr, or all of it when it has no
// port (as for a Unix socket peer).
func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// forwardedFor returns the entries of every X-Forwarded-For header in order,
// leftmost first.
func forwardedFor(h http.Header) []string {
	var hops []string
	for _, v := range h.Values("X-Forwarded-For") {
		for hop := range strings.SplitSeq(v, ",") {
			if hop = strings.TrimSpace(hop); hop != "" {
				hops = append(hops, hop)
			}
		}
	}
	return hops
}

// parseHop parses one X-Forwarded-For entry: an address, or an address with a
// port as some proxies write it.
func parseHop(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.Addr{}, false
		}
		a = ap.Addr()
	}
	return a.Unmap().WithZone(""), true
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
