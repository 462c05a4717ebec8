package broker

import (
	"errors"
	"net/netip"
	"net/url"
	"strings"
)

// Redirect URIs of native apps (RFC 8252).
//
// The broker accepts the two kinds a mobile app can receive a code on:
//
//   - a private-use URI scheme (section 7.1), e.g.
//     com.example.app:/oauth2redirect. Any app can register any scheme, so
//     such a redirect does not prove which app receives the code; PKCE
//     keeps an intercepted code useless (section 8.1);
//   - a claimed "https" URI (section 7.2), e.g.
//     https://app.example.com/oauth2redirect, an iOS Universal Link or
//     Android App Link: the operating system hands it only to the app that
//     the domain names in its apple-app-site-association or assetlinks.json
//     file, so the code reaches that app (section 8.6).
//
// Loopback redirects (section 7.3, http://127.0.0.1:{port}/...) are for
// desktop apps: they need the port to vary, and on a phone any app may
// listen on that port first (section 8.3). The broker matches redirect
// URIs exactly and refuses plain http altogether.

// CheckRedirectURI reports why uri cannot be one of the broker's redirect
// URIs, or nil when it can. The error never quotes uri.
func CheckRedirectURI(uri string) error {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme == "" {
		return errors.New("not an absolute URI")
	}
	if strings.Contains(uri, "#") {
		// RFC 6749 section 3.1.2: "The endpoint URI MUST NOT include a
		// fragment component."
		return errors.New("a redirect URI must not have a fragment (RFC 6749 section 3.1.2)")
	}
	switch u.Scheme {
	case "https":
		host := u.Hostname()
		if host == "" {
			return errors.New("a claimed https redirect URI needs a host")
		}
		if u.User != nil {
			return errors.New("a redirect URI must not carry user information")
		}
		if _, err := netip.ParseAddr(host); err == nil || host == "localhost" || strings.HasSuffix(host, ".localhost") {
			return errors.New("a claimed https redirect URI needs a domain the app's owner controls, not an IP address or localhost (RFC 8252 section 7.2)")
		}
		return nil
	case "http":
		return errors.New("plain http redirect URIs are refused, loopback ones included: they serve desktop apps (RFC 8252 sections 7.3 and 8.3); use a claimed https URI or a private-use scheme")
	}
	// RFC 8252 section 8.4: "At a minimum, any private-use URI scheme that
	// doesn't contain a period character (".") SHOULD be rejected." A
	// reverse domain name (section 7.1) keeps schemes of different apps
	// apart and leaves javascript:, data: and file: out.
	if !strings.Contains(u.Scheme, ".") {
		return errors.New("a private-use URI scheme must be a reverse domain name such as com.example.app (RFC 8252 sections 7.1 and 8.4)")
	}
	if u.Opaque == "" && u.Host == "" && u.Path == "" {
		return errors.New("a private-use URI scheme redirect needs a path, as in com.example.app:/oauth2redirect")
	}
	return nil
}
