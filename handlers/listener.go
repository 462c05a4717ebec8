package handlers

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Connection caps of the listeners. Each connection holds a file descriptor,
// a goroutine and buffers; without a cap, one client with a few hundred idle
// sockets exhausts the process's file descriptors, and the admin listener's
// probes and every other client go with them.
const (
	// DefaultMaxConnections caps the public listener's open connections
	// when BROKER_MAX_CONNECTIONS is unset.
	DefaultMaxConnections = 4096
	// DefaultMaxConnectionsPerClient caps the open connections of one
	// client address (an IPv6 client by its prefix, see DefaultIPv6Prefix)
	// when BROKER_MAX_CONNECTIONS_PER_CLIENT is unset. An app keeps a few
	// connections; many users behind one carrier-grade NAT share an
	// address, hence the room.
	DefaultMaxConnectionsPerClient = 256
	// AdminMaxConnections caps the admin listener, which has its own cap
	// so that its probes answer while the public listener is full.
	AdminMaxConnections = 64
)

// ConnLimits bound the connections a listener keeps open.
type ConnLimits struct {
	// Name names the listener in logs and metrics ("public", "admin").
	Name string
	// Max caps the connections open at once; zero means no cap.
	Max int
	// PerClient caps the connections open at once from one client: an IPv4
	// address, or an IPv6 prefix of IPv6Prefix bits (DefaultIPv6Prefix when
	// zero). Zero means no cap. Peers in Exempt, the trusted proxies that
	// carry many clients' connections, count against Max only.
	PerClient  int
	IPv6Prefix int
	Exempt     []netip.Prefix
	// Metrics, when set, counts the connections refused.
	Metrics *Metrics
	// Logger, when set, is told of refused connections, at most once a
	// minute.
	Logger *slog.Logger
}

// LimitListener returns l with the caps of lim: a connection over a cap is
// accepted and closed at once, so that the backlog drains and the client
// learns of it, rather than left waiting in the kernel's queue. A
// connection's place is given back when it is closed.
func LimitListener(l net.Listener, lim ConnLimits) net.Listener {
	if lim.IPv6Prefix == 0 {
		lim.IPv6Prefix = DefaultIPv6Prefix
	}
	return &limitListener{Listener: l, lim: lim, perClient: map[netip.Prefix]int{}}
}

type limitListener struct {
	net.Listener
	lim ConnLimits

	mu        sync.Mutex
	open      int
	perClient map[netip.Prefix]int
	// Refusals since the last warning, by reason, and when that was.
	refused    map[string]int
	lastWarned time.Time
}

// Refusal reasons, as metrics and logs name them.
const (
	refusedMax       = "max_connections"
	refusedPerClient = "max_connections_per_client"
)

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		client, perClient := l.clientOf(c.RemoteAddr())
		reason := l.admit(client, perClient)
		if reason == "" {
			return &limitedConn{Conn: c, release: func() { l.release(client, perClient) }}, nil
		}
		// A reset rather than an orderly close: nothing is left in
		// TIME_WAIT for a client that is flooding the listener.
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
		l.refuse(reason)
	}
}

// clientOf returns the client a connection from addr counts against, and
// whether it counts against a per-client cap at all.
func (l *limitListener) clientOf(addr net.Addr) (netip.Prefix, bool) {
	if l.lim.PerClient <= 0 {
		return netip.Prefix{}, false
	}
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return netip.Prefix{}, false
	}
	a := tcp.AddrPort().Addr().Unmap().WithZone("")
	if !a.IsValid() || isTrusted(a, l.lim.Exempt) {
		return netip.Prefix{}, false
	}
	return clientPrefix(a, l.lim.IPv6Prefix), true
}

// admit takes a place for a connection of client, or says which cap is
// full.
func (l *limitListener) admit(client netip.Prefix, perClient bool) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim.Max > 0 && l.open >= l.lim.Max {
		return refusedMax
	}
	if perClient && l.perClient[client] >= l.lim.PerClient {
		return refusedPerClient
	}
	l.open++
	if perClient {
		l.perClient[client]++
	}
	return ""
}

func (l *limitListener) release(client netip.Prefix, perClient bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if !perClient {
		return
	}
	if n := l.perClient[client] - 1; n > 0 {
		l.perClient[client] = n
	} else {
		delete(l.perClient, client)
	}
}

// refuse counts a refused connection, and warns at most once a minute with
// the refusals since the last warning: a flood must not flood the logs.
func (l *limitListener) refuse(reason string) {
	if l.lim.Metrics != nil {
		l.lim.Metrics.connectionRefused(l.lim.Name, reason)
	}
	if l.lim.Logger == nil {
		return
	}
	l.mu.Lock()
	if l.refused == nil {
		l.refused = map[string]int{}
	}
	l.refused[reason]++
	now := time.Now()
	if now.Sub(l.lastWarned) < time.Minute {
		l.mu.Unlock()
		return
	}
	counts := l.refused
	l.refused, l.lastWarned = nil, now
	l.mu.Unlock()
	l.lim.Logger.Warn("connections refused at a connection cap (counts since the previous such warning)",
		"listener", l.lim.Name,
		refusedMax, counts[refusedMax],
		refusedPerClient, counts[refusedPerClient])
}

// limitedConn gives its place back once, on its first Close.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
