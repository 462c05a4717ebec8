package devidp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
)

// pause is one Pause of the Provider: released is closed by Resume, or by
// Stop after setting dropped.
type pause struct {
	released chan struct{}
	// dropped is written under Provider.mu before released is closed and
	// read only after it is.
	dropped bool
}

// Pause holds every request that arrives from now on, on any endpoint,
// before it reaches the OP, as a SIGSTOPped IdP process would: the client
// waits, its connection open. Resume serves the held requests even if
// their clients have given up meanwhile, as a resumed process serves what is
// in its socket buffers; the response is then written to a closed connection
// and lost. Requests still count (Count) when they arrive. Pausing a paused
// Provider changes nothing. Stop and Close drop the held requests unserved.
func (p *Provider) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pause == nil {
		p.pause = &pause{released: make(chan struct{})}
	}
}

// Resume serves every request held since Pause and stops holding new ones.
// Resuming a Provider that is not paused changes nothing.
func (p *Provider) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pause != nil {
		close(p.pause.released)
		p.pause = nil
	}
}

// dropHeld ends a pause without serving the requests it holds. p.mu must
// be held.
func (p *Provider) dropHeld() {
	if p.pause != nil {
		p.pause.dropped = true
		close(p.pause.released)
		p.pause = nil
	}
}

// hold keeps each request that arrives while the Provider is paused until
// Resume, then serves it detached from its client.
func (p *Provider) hold(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		held := p.pause
		p.mu.Unlock()
		if held == nil {
			next.ServeHTTP(w, r)
			return
		}
		// A stopped process has the whole request in its socket buffer, so
		// read it now: once the client goes, its connection is gone too.
		if err := bufferBody(r); err != nil {
			panic(http.ErrAbortHandler)
		}
		<-held.released
		if held.dropped {
			// Stop has closed the connection; abort without a response.
			panic(http.ErrAbortHandler)
		}
		next.ServeHTTP(w, r.WithContext(context.WithoutCancel(r.Context())))
	})
}

// bufferBody reads the request body, at most maxFormBytes of it, into
// memory.
func bufferBody(r *http.Request) error {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxFormBytes+1))
	r.Body.Close()
	if err != nil {
		return err
	}
	if len(body) > maxFormBytes {
		return errors.New("request body too large")
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return nil
}
