package handlers

import (
	"errors"
	"net"
	"net/netip"
	"testing"
)

// fakeListener hands out the connections queued on it, and errEmpty when
// there are none left.
type fakeListener struct{ conns chan net.Conn }

var errEmpty = errors.New("no connection queued")

func (l *fakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	default:
		return nil, errEmpty
	}
}
func (l *fakeListener) Close() error   { return nil }
func (l *fakeListener) Addr() net.Addr { return &net.TCPAddr{} }

// fakeConn is a connection from a chosen address that records its closing.
type fakeConn struct {
	net.Conn
	from   *net.TCPAddr
	closed bool
}

func (c *fakeConn) RemoteAddr() net.Addr { return c.from }
func (c *fakeConn) Close() error         { c.closed = true; return nil }

func TestLimitListener(t *testing.T) {
	fl := &fakeListener{conns: make(chan net.Conn, 1)}
	l := LimitListener(fl, ConnLimits{
		Max:       5,
		PerClient: 2,
		Exempt:    []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	// accept offers a connection from addr and returns it if the listener
	// kept it, nil if it refused it: closed it and went on to the next.
	accept := func(addr string) net.Conn {
		t.Helper()
		c := &fakeConn{from: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(addr))}
		fl.conns <- c
		got, err := l.Accept()
		switch {
		case err == nil:
			return got
		case !errors.Is(err, errEmpty):
			t.Fatal(err)
		case !c.closed:
			t.Fatalf("a refused connection from %s was left open", addr)
		}
		return nil
	}

	a1, a2 := accept("[2001:db8:1:2::1]:1"), accept("[2001:db8:1:2:ffff::9]:1")
	if a1 == nil || a2 == nil {
		t.Fatal("the first two connections of a /64 were refused")
	}
	if accept("[2001:db8:1:2::77]:1") != nil {
		t.Error("a third connection from the same /64 was kept, want it refused")
	}
	if accept("[2001:db8:1:3::1]:1") == nil {
		t.Error("a connection from another /64 was refused")
	}
	// A trusted proxy counts against the overall cap only.
	if accept("10.1.1.1:1") == nil || accept("10.1.1.1:2") == nil {
		t.Fatal("connections of a trusted proxy were refused")
	}
	if accept("10.1.1.1:3") != nil {
		t.Error("a 6th connection was kept, want it refused at the overall cap of 5")
	}
	// Closing gives the place back, once however often it is closed.
	a1.Close()
	a1.Close()
	if accept("[2001:db8:1:2::77]:1") == nil {
		t.Error("a connection from the /64 was refused after one of its own closed")
	}
	if accept("198.51.100.1:1") != nil {
		t.Error("a closed connection gave back more than its place")
	}
}
