package broker

import "context"

// Request describes the request a use case serves, for the audit trail:
// the HTTP layer puts one in the request's context (WithRequest), and every
// audit event written with that context names the request that caused it.
// The methods are called only when an event is written, so an
// implementation may work its answers out lazily.
type Request interface {
	// ClientIP is the client's address, as the rate limits see it.
	ClientIP() string
	// UserAgent is the request's User-Agent header, as sent.
	UserAgent() string
	// RequestID is the id the request's log lines carry.
	RequestID() string
}

type requestKey struct{}

// WithRequest returns ctx carrying r.
func WithRequest(ctx context.Context, r Request) context.Context {
	return context.WithValue(ctx, requestKey{}, r)
}

// RequestFrom returns the Request ctx carries, or nil.
func RequestFrom(ctx context.Context) Request {
	r, _ := ctx.Value(requestKey{}).(Request)
	return r
}
