package handlers

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/mobile-token-broker/broker/broker"
)

// What one request may hold of a listener. The server reads the header
// timeout and sizes; the handlers apply the body deadlines.
const (
	// ReadHeaderTimeout is the time a client has to send a request's
	// headers (and, over TLS, to finish the handshake).
	ReadHeaderTimeout = 10 * time.Second
	// MaxHeaderBytes caps a request's headers and request line (net/http
	// allows 4 KiB more) and, over HTTP/2, the header list.
	MaxHeaderBytes = 64 << 10
	// HTTP2MaxConcurrentStreams caps the requests one HTTP/2 connection
	// has in flight; net/http's default is 250.
	HTTP2MaxConcurrentStreams = 100
)

// BodyLimits bound the time a request body may take. net/http bounds the
// headers only, and before it answers a request whose body a handler left
// unread (a 404, a 401) it reads that body to keep the connection: a body
// that is declared and never sent held a handler, and the connection, for
// ever, on every route of both listeners.
type BodyLimits struct {
	// Timeout is the time a body has, from the end of the headers, on
	// every route but the proxy's: those bodies are at most 64 KiB, and an
	// honest client sends them at once. Zero means DefaultBodyTimeout.
	Timeout time.Duration
	// UploadWindow and UploadMinBytes set the minimum rate of a proxied
	// body, which may be large and is streamed to the upstream: the client
	// must deliver UploadMinBytes in every UploadWindow the broker spends
	// waiting for it (time the upstream takes to accept what was sent does
	// not count). Zero means DefaultUploadWindow and DefaultUploadMinBytes.
	UploadWindow   time.Duration
	UploadMinBytes int
}

// The body limits' defaults: a body of the broker's own API has 10 s; a
// proxied body must keep up at least 4 KiB per 10 s (about 400 B/s, below
// the slowest mobile link).
const (
	DefaultBodyTimeout    = 10 * time.Second
	DefaultUploadWindow   = 10 * time.Second
	DefaultUploadMinBytes = 4 << 10
)

func (l BodyLimits) withDefaults() BodyLimits {
	if l.Timeout <= 0 {
		l.Timeout = DefaultBodyTimeout
	}
	if l.UploadWindow <= 0 {
		l.UploadWindow = DefaultUploadWindow
	}
	if l.UploadMinBytes <= 0 {
		l.UploadMinBytes = DefaultUploadMinBytes
	}
	return l
}

// errBodyTimeout answers a request whose body did not arrive in time.
var errBodyTimeout = broker.Errorf(broker.CodeInvalidRequest, "the request body did not arrive in time")

// isBodyTimeout reports whether err is a body read cut off by its deadline.
func isBodyTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// ctxBody is the Echo context key of a request's deadlineBody.
const ctxBody = "deadline_body"

// bodyDeadline gives every request that has a body a read deadline of
// Timeout; streamBody turns it into a minimum rate on the proxy's routes.
func (s *Server) bodyDeadline(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			// No body: no deadline. On HTTP/1 the server watches the idle
			// connection for the client's going away, and a deadline
			// passing would end the request's context.
			return next(c)
		}
		b := &deadlineBody{body: r.Body, rc: http.NewResponseController(c.Response()), limits: s.cfg.Bodies}
		b.setDeadline(time.Now().Add(b.limits.Timeout))
		r.Body = b
		c.Set(ctxBody, b)
		// net/http reads what is left of the body when it writes the
		// response's header: from then on a streamed body's deadline runs
		// whether or not a handler reads.
		c.Response().Before(b.drain)
		defer b.drain()
		return next(c)
	}
}

// streamBody, on the proxy's routes, lets a body take as long as it needs
// at no less than the minimum rate. A body cut off answers 400, when the
// response has not begun: the transport reports the cut as its own failure
// (a 502), and on HTTP/1 net/http ends the request's context with it, which
// the proxy takes for the client's going away and answers nothing.
func streamBody(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		b, ok := c.Get(ctxBody).(*deadlineBody)
		if !ok {
			return next(c)
		}
		b.stream()
		err := next(c)
		if b.cutOff() && !c.Response().Committed {
			return errBodyTimeout
		}
		return err
	}
}

// deadlineBody is a request body whose reads have deadlines: one total
// deadline, or, once streamed, a minimum rate. It is read by the handler
// or, for the proxy, by the transport's goroutine, which may outlive the
// handler; its state is guarded by mu.
type deadlineBody struct {
	body   io.ReadCloser
	rc     *http.ResponseController
	limits BodyLimits

	mu        sync.Mutex
	streaming bool          // a minimum rate rather than a total time
	draining  bool          // the response has begun: the deadline runs between reads too
	eof       bool          // the body has been read to its end
	timedOut  bool          // a read was cut off by its deadline
	waited    time.Duration // time spent waiting in reads in this window
	got       int           // bytes read in this window
}

// stream turns the total deadline into the minimum rate, which runs only
// while a read waits.
func (b *deadlineBody) stream() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.eof {
		return
	}
	b.streaming = true
	b.setDeadline(time.Time{})
}

// drain starts the rate's deadline for what is left of a streamed body,
// read or not: the handler is done with it, or net/http is about to read
// the rest before it answers.
func (b *deadlineBody) drain() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.draining || b.eof || !b.streaming {
		return
	}
	b.draining = true
	b.setDeadline(time.Now().Add(b.limits.UploadWindow - b.waited))
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.streaming {
		b.setDeadline(time.Now().Add(b.limits.UploadWindow - b.waited))
	}
	b.mu.Unlock()

	start := time.Now()
	n, err := b.body.Read(p)

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.streaming {
		b.waited += time.Since(start)
		b.got += n
		if b.got >= b.limits.UploadMinBytes {
			b.waited, b.got = 0, 0
		}
	}
	switch {
	case isBodyTimeout(err):
		b.timedOut = true
	case err == io.EOF:
		// On HTTP/1 the server now watches the connection for the
		// client's going away: a deadline left would end the request's
		// context when it passed.
		b.eof = true
		b.setDeadline(time.Time{})
	case err != nil:
	case b.draining:
		b.setDeadline(time.Now().Add(b.limits.UploadWindow - b.waited))
	case b.streaming:
		// Time the upstream takes to accept what was read is not the
		// client's.
		b.setDeadline(time.Time{})
	}
	return n, err
}

func (b *deadlineBody) Close() error { return b.body.Close() }

// cutOff reports whether a read of the body was cut off by its deadline.
func (b *deadlineBody) cutOff() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.timedOut
}

// setDeadline sets the connection's (HTTP/1) or the stream's (HTTP/2) read
// deadline. A writer that has none (a test recorder) has no limits.
func (b *deadlineBody) setDeadline(t time.Time) {
	_ = b.rc.SetReadDeadline(t)
}
