package broker

import (
	"errors"
	"fmt"
)

// Code is an error code of the broker's external contract. Each code maps to
// exactly one HTTP status and OAuth-style "error" value at the HTTP boundary.
type Code string

// The error codes of the contract, plus CodeInternal for everything the broker
// does not expect; an internal error's detail never reaches a client.
const (
	CodeInvalidRequest      Code = "invalid_request"
	CodeInvalidGrant        Code = "invalid_grant"
	CodeInvalidToken        Code = "invalid_token"
	CodeNotFound            Code = "not_found"
	CodeRateLimited         Code = "rate_limited"
	CodeUpstreamUnavailable Code = "upstream_unavailable"
	CodeIdPUnavailable      Code = "idp_unavailable"
	CodeStoreUnavailable    Code = "store_unavailable"
	CodeInternal            Code = "internal"
)

// Error is an error with a contract code and a message that is safe to show
// to a client. The wrapped cause is for logs only and may hold internal detail
// (never a token or handle: callers must not wrap errors that contain one).
type Error struct {
	Code    Code
	Message string
	Err     error
}

func (e *Error) Error() string {
	s := string(e.Code)
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, ErrNotFound) holds for any not-found error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
}

// Errorf returns an *Error with the given code and a client-safe message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// wrap returns an *Error with the code and client-safe message, keeping cause
// for the logs.
func wrap(code Code, cause error, msg string) *Error {
	return &Error{Code: code, Message: msg, Err: cause}
}

// Sentinels that adapters return (wrapped with %w) and callers test with
// errors.Is. Only the code is compared, so an adapter may wrap them freely.
var (
	// ErrNotFound: the object does not exist, has expired or was deleted.
	ErrNotFound = &Error{Code: CodeNotFound}
	// ErrStoreUnavailable: the session store cannot be reached; nothing was
	// changed that the caller cannot retry.
	ErrStoreUnavailable = &Error{Code: CodeStoreUnavailable}
	// ErrInvalidToken: the handle is malformed, unknown, expired or revoked.
	ErrInvalidToken = &Error{Code: CodeInvalidToken}
)

// ErrorCode returns the contract code of err: the code of the first *Error in
// its chain, or CodeInternal.
func ErrorCode(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrorMessage returns the client-safe message of err, or a generic one for
// internal errors and errors without a message.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Message != "" {
		return e.Message
	}
	switch ErrorCode(err) {
	case CodeNotFound:
		return "not found"
	case CodeStoreUnavailable:
		return "the session store is unavailable; nothing was lost, retry later"
	case CodeInvalidToken:
		return "session is expired or revoked"
	case CodeIdPUnavailable:
		return "the identity provider is unavailable, retry later"
	}
	return "internal error"
}
