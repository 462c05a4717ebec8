package handlers

import (
	"net/http"
	"net/netip"
	"strings"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mobile-token-broker/broker/broker"
)

// dpopHeader carries a DPoP proof (RFC 9449 section 4.1), and
// dpopNonceHeader a server nonce (section 8).
const (
	dpopHeader      = "DPoP"
	dpopNonceHeader = "DPoP-Nonce"
)

// credential reads what a request presents to use a session: the handle of
// an "Authorization: Bearer" or "Authorization: DPoP" header (RFC 6750
// section 2.1, RFC 9449 section 7.1; schemes are case-insensitive), and the
// DPoP proofs with what they must match. present is false when the request
// has no Authorization header at all; a header of another scheme, or an
// empty handle, yields present=true and an empty handle, so that it is
// answered as an invalid token.
func credential(r *http.Request, trusted []netip.Prefix) (cred broker.Credential, present bool) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return broker.Credential{}, false
	}
	scheme, rest, ok := strings.Cut(h, " ")
	switch {
	case !ok:
	case strings.EqualFold(scheme, "Bearer"):
		cred.Handle = strings.TrimSpace(rest)
	case strings.EqualFold(scheme, "DPoP"):
		cred.Handle, cred.DPoP = strings.TrimSpace(rest), true
	}
	if cred.DPoP || r.Header.Get(dpopHeader) != "" {
		// Only a proof needs the URL; a bearer request without one is
		// spared building it.
		cred.ProofRequest = proofRequest(r, trusted)
	}
	return cred, true
}

// requireCredential is credential for the broker's own routes: a request
// without an Authorization header is refused with errNoHandle.
func (s *Server) requireCredential(c echo.Context) (broker.Credential, error) {
	cred, present := credential(c.Request(), s.cfg.TrustedProxies)
	if !present {
		return broker.Credential{}, errNoHandle
	}
	return cred, nil
}

// proofRequest is what a DPoP proof of r must match: its method and its URL
// as the app addressed it, without query and fragment (RFC 9449 section
// 4.3 point 9).
func proofRequest(r *http.Request, trusted []netip.Prefix) broker.ProofRequest {
	scheme, host := origin(r, trusted)
	return broker.ProofRequest{
		Proofs: r.Header.Values(dpopHeader),
		Method: r.Method,
		URL:    scheme + "://" + host + r.URL.EscapedPath(),
	}
}

// origin is the scheme and host the app addressed: those of the broker's own
// listener, or, from a trusted proxy, those it reports in X-Forwarded-Proto
// and X-Forwarded-Host (the leftmost entry, the proxy nearest the app).
// setForwarded passes those headers on to the upstream whole, every entry.
func origin(r *http.Request, trusted []netip.Prefix) (scheme, host string) {
	scheme, host = "http", r.Host
	if r.TLS != nil {
		scheme = "https"
	}
	addr, ok := peerAddr(r)
	if !ok || !isTrusted(addr, trusted) {
		return scheme, host
	}
	first := func(v string) string {
		v, _, _ = strings.Cut(v, ",")
		return strings.TrimSpace(v)
	}
	if v := first(r.Header.Get("X-Forwarded-Proto")); v != "" {
		scheme = strings.ToLower(v)
	}
	if v := first(r.Header.Get("X-Forwarded-Host")); v != "" {
		host = v
	}
	return scheme, host
}

// writeDPoPChallenge sets the headers of a DPoP refusal: the
// WWW-Authenticate challenge of RFC 9449 section 7.1 (not at sign-in, which
// answers like a token endpoint, section 5) and a fresh DPoP-Nonce
// (section 8). It returns the status: 400 at sign-in, 401 otherwise.
func writeDPoPChallenge(w http.ResponseWriter, e *broker.DPoPError) int {
	if e.Nonce != "" {
		w.Header().Set(dpopNonceHeader, e.Nonce)
	}
	if e.SignIn {
		return http.StatusBadRequest
	}
	w.Header().Set("WWW-Authenticate", `DPoP error="`+string(e.Err.Code)+`", algs="`+strings.Join(e.Algorithms, " ")+`"`)
	return http.StatusUnauthorized
}

// dpopOutcomes are the decisions broker.DPoPMetrics reports.
var dpopOutcomes = []string{"bound", "ok", "invalid", "replayed", "nonce", "bearer_use", "other_key"}

var _ broker.DPoPMetrics = (*Metrics)(nil)

func newDPoPCounter(reg *prometheus.Registry) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "broker_dpop_total",
		Help: "DPoP decisions, by outcome: bound (a session opened bound to a key), ok (a proof accepted), invalid (a proof refused), replayed (a proof used twice), nonce (use_dpop_nonce answered), bearer_use and other_key (a bound handle presented without a proof of its key: possible theft).",
	}, []string{"outcome"})
	reg.MustRegister(c)
	for _, o := range dpopOutcomes {
		c.WithLabelValues(o)
	}
	return c
}

// DPoP implements broker.DPoPMetrics.
func (m *Metrics) DPoP(outcome string) { m.dpop.WithLabelValues(outcome).Inc() }
