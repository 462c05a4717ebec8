package handlers

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/mobile-token-broker/broker/broker"
)

// errorBody is the OAuth-style error of the contract.
type errorBody struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description,omitempty"`
}

// status maps a contract code to its HTTP status.
func status(code broker.Code) int {
	switch code {
	case broker.CodeInvalidRequest, broker.CodeInvalidGrant:
		return http.StatusBadRequest
	case broker.CodeInvalidToken, broker.CodeInvalidDPoPProof, broker.CodeUseDPoPNonce:
		return http.StatusUnauthorized
	case broker.CodeNotFound:
		return http.StatusNotFound
	case broker.CodeRateLimited:
		return http.StatusTooManyRequests
	case broker.CodeUpstreamUnavailable, broker.CodeIdPUnavailable:
		return http.StatusBadGateway
	case broker.CodeStoreUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// rateLimitedError carries the Retry-After of a 429.
type rateLimitedError struct {
	retryAfterSeconds int
}

func (e *rateLimitedError) Error() string { return "rate limited" }

// writeError renders err as the contract's JSON error. It is the one place
// where errors become responses: internal detail never reaches the body, and
// a 401 carries the WWW-Authenticate challenge of RFC 6750 section 3. It
// returns the code it rendered, for the error metrics.
func writeError(w http.ResponseWriter, err error) broker.Code {
	code := broker.ErrorCode(err)
	msg := broker.ErrorMessage(err)
	var rl *rateLimitedError
	if errors.As(err, &rl) {
		code, msg = broker.CodeRateLimited, "too many requests, retry later"
		w.Header().Set("Retry-After", strconv.Itoa(max(rl.retryAfterSeconds, 1)))
	}
	st := status(code)
	var missing *missingCredentialsError
	var dpop *broker.DPoPError
	switch {
	case errors.As(err, &dpop):
		st = writeDPoPChallenge(w, dpop)
	case errors.As(err, &missing):
		// RFC 6750 section 3.1: no error attribute when the request carried
		// no credentials at all.
		w.Header().Set("WWW-Authenticate", missing.challenge)
	case code == broker.CodeInvalidToken:
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	}
	if code == broker.CodeInternal {
		msg = "internal error"
	}
	writeStatusError(w, st, code, msg)
	return code
}

// BrokerErrorHeader marks a response as an error of the broker's own, not
// an upstream's: every error response the broker renders carries it, with
// the contract's error code as its value, and the proxy removes it from
// every upstream response, so that an upstream cannot send it. An app
// signs in again only on a 401 that carries it.
const BrokerErrorHeader = "Broker-Error"

// writeStatusError writes the JSON error body with an explicit status.
func writeStatusError(w http.ResponseWriter, status int, code broker.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header()[BrokerErrorHeader] = []string{string(code)}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{Error: string(code), ErrorDescription: msg})
}

// missingCredentialsError is a 401 for a request that sent no credentials.
type missingCredentialsError struct {
	challenge string
	message   string
}

func (e *missingCredentialsError) Error() string { return "no credentials" }

func (e *missingCredentialsError) Unwrap() error {
	return broker.Errorf(broker.CodeInvalidToken, "%s", e.message)
}

// errNoHandle is returned when a request carries no bearer handle.
var errNoHandle = &missingCredentialsError{challenge: "Bearer", message: "a session handle is required"}
