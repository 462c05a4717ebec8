package broker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"
)

// The IdP endpoints and outcomes Metrics.IdPRequest reports: small fixed
// sets, so that a metric never carries a URL, a query or an answer.
const (
	IdPEndpointDiscovery  = "discovery"
	IdPEndpointKeys       = "keys"
	IdPEndpointToken      = "token"
	IdPEndpointUserinfo   = "userinfo"
	IdPEndpointRevocation = "revocation"
	IdPEndpointOther      = "other"

	IdPOutcomeOK           = "ok"
	IdPOutcome4xx          = "status_4xx"
	IdPOutcome5xx          = "status_5xx"
	IdPOutcomeTimeout      = "timeout"
	IdPOutcomeCanceled     = "canceled"
	IdPOutcomeNetworkError = "network_error"
)

// IdPEndpoints and IdPOutcomes list every value of the labels, for a
// Metrics that creates its series ahead.
var (
	IdPEndpoints = []string{IdPEndpointDiscovery, IdPEndpointKeys, IdPEndpointToken, IdPEndpointUserinfo, IdPEndpointRevocation, IdPEndpointOther}
	IdPOutcomes  = []string{IdPOutcomeOK, IdPOutcome4xx, IdPOutcome5xx, IdPOutcomeTimeout, IdPOutcomeCanceled, IdPOutcomeNetworkError}
)

func (noMetrics) IdPRequest(string, string, time.Duration) {}

// instrumentIdP has every call of the IdP clients (cfg.HTTPClient and
// refreshClient) reported to Metrics.IdPRequest with its endpoint, outcome
// and the time to the response's headers.
func (s *Service) instrumentIdP() {
	wrap := func(c *http.Client) *http.Client {
		next := c.Transport
		if next == nil {
			next = http.DefaultTransport
		}
		out := *c
		out.Transport = &idpTransport{s: s, next: next}
		return &out
	}
	s.cfg.HTTPClient = wrap(s.cfg.HTTPClient)
	s.refreshClient = wrap(s.refreshClient)
}

// idpTransport times and counts the requests to the IdP.
type idpTransport struct {
	s    *Service
	next http.RoundTripper
}

func (t *idpTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	res, err := t.next.RoundTrip(req)
	t.s.cfg.Metrics.IdPRequest(t.s.idpEndpoint(req), idpOutcome(req, res, err), time.Since(start))
	return res, err
}

// idpEndpoint names the endpoint req calls, by its scheme, host and path:
// the discovery document's URL, or one that the document lists.
func (s *Service) idpEndpoint(req *http.Request) string {
	u := req.URL
	at := u.Scheme + "://" + u.Host + u.Path
	if d := s.idp.Load(); d != nil {
		switch at {
		case withoutQuery(d.endpoint.TokenURL):
			return IdPEndpointToken
		case withoutQuery(d.provider.UserInfoEndpoint()):
			return IdPEndpointUserinfo
		case withoutQuery(d.revocationURL):
			return IdPEndpointRevocation
		case withoutQuery(d.jwksURL):
			return IdPEndpointKeys
		}
	}
	if at == strings.TrimSuffix(s.cfg.Issuer, "/")+"/.well-known/openid-configuration" {
		return IdPEndpointDiscovery
	}
	return IdPEndpointOther
}

func withoutQuery(u string) string {
	u, _, _ = strings.Cut(u, "?")
	return u
}

// idpOutcome classifies the result of one request to the IdP. A failure
// once the request's deadline has passed is a timeout, whatever its form:
// the transport reports the http.Client's Timeout as a plain cancellation,
// and the client gives the request's context that deadline when it is the
// earlier one.
func idpOutcome(req *http.Request, res *http.Response, err error) string {
	var ne net.Error
	deadline, hasDeadline := req.Context().Deadline()
	switch {
	case err == nil && res.StatusCode >= 500:
		return IdPOutcome5xx
	case err == nil && res.StatusCode >= 400:
		return IdPOutcome4xx
	case err == nil:
		return IdPOutcomeOK
	case hasDeadline && !time.Now().Before(deadline), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return IdPOutcomeTimeout
	case req.Context().Err() != nil, errors.Is(err, context.Canceled):
		return IdPOutcomeCanceled
	}
	return IdPOutcomeNetworkError
}
