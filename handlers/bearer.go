package handlers

import (
	"net/http"
	"strings"
)

// bearer returns the credentials of an "Authorization: Bearer" header
// (RFC 6750 section 2.1; the scheme is case-insensitive). present is false
// when the request has no Authorization header at all; a header of another
// scheme, or an empty token, yields present=true and an empty token so that
// it is answered as an invalid token.
func bearer(r *http.Request) (token string, present bool) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", false
	}
	scheme, rest, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", true
	}
	return strings.TrimSpace(rest), true
}
