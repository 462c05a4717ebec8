package redistest

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	// proxyDialTimeout bounds the proxy's connection to Redis.
	proxyDialTimeout = 5 * time.Second
	// proxyBufferSize is the most a proxy reads at once in each direction.
	proxyBufferSize = 32 << 10
)

// Proxy is a TCP proxy in front of a Redis that injects the network faults
// a client must survive: a reply lost after the command ran, and a cut
// network. Its methods are safe for concurrent use.
//
// A Proxy forwards bytes without parsing them. Its goroutines, one accept
// loop and two per open connection, end when the test ends.
type Proxy struct {
	target string
	ln     net.Listener
	// ctx is cancelled when the test ends, to stop dials to the target.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[*proxyConn]struct{}
	cut   bool
	// blackhole holds new connections open without forwarding anything;
	// held are those connections, closed by Heal.
	blackhole bool
	held      []net.Conn
	closed    bool
	armed     bool
	match     func(chunk []byte) bool
	// swallow keeps the connection open when the armed fault fires: the
	// reply is lost, the connection lives on (see SwallowReplyOnceFunc).
	swallow bool
	fired   int
}

// proxyConn is a client's connection and the proxy's connection to Redis
// on its behalf.
type proxyConn struct {
	client, server net.Conn
	// dropReply is set before the command that fired DropReplyOnce is
	// forwarded; whatever Redis sends next is that command's reply.
	dropReply atomic.Bool
	// swallowReply is dropReply for SwallowReplyOnceFunc.
	swallowReply atomic.Bool
	closeOnce    sync.Once
}

func (c *proxyConn) close() {
	c.closeOnce.Do(func() {
		c.client.Close()
		c.server.Close()
	})
}

// NewProxy listens on a free 127.0.0.1 port and forwards every connection
// to the Redis at target (host:port). The proxy and its connections are
// closed when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: proxy: listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{target: target, ln: ln, ctx: ctx, cancel: cancel, conns: make(map[*proxyConn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr returns the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL returns the proxy's URL, e.g. "redis://127.0.0.1:41234".
func (p *Proxy) URL() string { return "redis://" + p.Addr() }

// DropReplyOnce arms a one-shot fault: the next chunk a client sends that
// contains match is forwarded to Redis; the proxy then waits for the first
// bytes of Redis's reply, discards them and closes that client's
// connection. The command took effect, but the client reads io.EOF where
// its reply should be, as after a Redis crash or a network cut right after
// execution. Calling it again before it fired replaces the match.
//
// The match is on raw RESP bytes as the client writes them, where every
// command argument appears verbatim: a key name, a value, or a script's
// SHA1 (EVALSHA sends the SHA, not the script body; EVAL sends the body).
// Arm it after the client has connected, or the handshake (HELLO, AUTH,
// CLIENT SETINFO) may match. A match split across two reads is missed, and
// whatever Redis sends after the matching chunk counts as its reply, so
// pipelined replies still in flight are dropped too.
func (p *Proxy) DropReplyOnce(match []byte) {
	match = bytes.Clone(match)
	p.DropReplyOnceFunc(func(chunk []byte) bool { return bytes.Contains(chunk, match) })
}

// DropReplyOnceFunc is DropReplyOnce for the next chunk for which match
// reports true, e.g. one that holds both a key and a command name.
func (p *Proxy) DropReplyOnceFunc(match func(chunk []byte) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armed, p.match, p.swallow = true, match, false
}

// SwallowReplyOnceFunc is DropReplyOnceFunc without the close: the first
// bytes Redis sends after the matching chunk are discarded and the
// connection stays open, as if the reply had never been sent. A client
// waiting for that reply waits on a live connection.
func (p *Proxy) SwallowReplyOnceFunc(match func(chunk []byte) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armed, p.match, p.swallow = true, match, true
}

// Fired returns how many DropReplyOnce faults have fired: replies
// discarded and connections closed.
func (p *Proxy) Fired() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fired
}

// Cut drops every open connection and closes new ones as soon as they are
// accepted, until Heal. Commands in flight may or may not have reached
// Redis.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	conns := p.openConns()
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Blackhole drops every open connection, then accepts new ones but
// forwards nothing on them, as a host that vanished behind a network that
// still completes the handshake: a client that reconnects waits on a
// connection that never answers, until its own timeouts end the wait.
// Heal ends it.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	p.blackhole = true
	conns := p.openConns()
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Heal forwards new connections again after Cut or Blackhole.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut, p.blackhole = false, false
	for _, c := range p.held {
		c.Close()
	}
	p.held = nil
}

// openConns returns the open connections. p.mu must be held.
func (p *Proxy) openConns() []*proxyConn {
	conns := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	return conns
}

// close stops accepting, drops every connection and waits for the
// proxy's goroutines to end.
func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	conns := p.openConns()
	p.mu.Unlock()
	p.cancel()
	p.ln.Close()
	for _, c := range conns {
		c.close()
	}
	p.mu.Lock()
	for _, c := range p.held {
		c.Close()
	}
	p.held = nil
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of file descriptors, say: try again shortly.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.mu.Lock()
		if p.closed || p.cut {
			p.mu.Unlock()
			client.Close()
			continue
		}
		if p.blackhole {
			p.held = append(p.held, client)
			p.mu.Unlock()
			continue
		}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(client)
	}
}

// serve connects client to Redis and forwards both ways until either side
// closes or a fault closes them.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: proxyDialTimeout}
	server, err := d.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	c := &proxyConn{client: client, server: server}
	p.mu.Lock()
	if p.closed || p.cut {
		p.mu.Unlock()
		c.close()
		return
	}
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()

	go func() {
		defer p.wg.Done()
		p.forwardReplies(c)
	}()
	p.forwardCommands(c)

	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// forwardCommands copies what the client sends to Redis, arming the
// connection's reply drop when a chunk fires DropReplyOnce.
func (p *Proxy) forwardCommands(c *proxyConn) {
	defer c.close()
	buf := make([]byte, proxyBufferSize)
	for {
		n, err := c.client.Read(buf)
		if n > 0 {
			if fired, swallow := p.fire(buf[:n]); fired && swallow {
				c.swallowReply.Store(true)
			} else if fired {
				c.dropReply.Store(true)
			}
			if _, err := c.server.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// forwardReplies copies what Redis sends to the client, unless it is the
// reply DropReplyOnce drops.
func (p *Proxy) forwardReplies(c *proxyConn) {
	defer c.close()
	buf := make([]byte, proxyBufferSize)
	for {
		n, err := c.server.Read(buf)
		if n > 0 {
			if c.swallowReply.CompareAndSwap(true, false) {
				p.mu.Lock()
				p.fired++
				p.mu.Unlock()
				continue
			}
			if c.dropReply.Load() {
				// Counted before the close, so a client that sees the
				// connection end also sees the fault counted.
				p.mu.Lock()
				p.fired++
				p.mu.Unlock()
				return
			}
			if _, err := c.client.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// fire reports whether chunk fires the armed fault, disarming it, and
// whether that fault keeps the connection open.
func (p *Proxy) fire(chunk []byte) (fired, swallow bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.armed || !p.match(chunk) {
		return false, false
	}
	p.armed, p.match = false, nil
	return true, p.swallow
}
