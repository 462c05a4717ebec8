package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/mobile-token-broker/broker/broker"
)

// WebSocket tunnels. A route opts in with a TunnelPolicy; on every other
// route Upgrade is dropped (see rewrite). Once the upstream answers 101 the
// broker relays bytes both ways and sees no more requests, so it bounds what
// the tunnel may outlive: the session (re-checked every CheckInterval on
// the store every replica shares) and a maximum lifetime.

// Defaults of TunnelPolicy.
const (
	DefaultTunnelMaxLifetime   = time.Hour
	DefaultTunnelCheckInterval = 5 * time.Second
)

// maxFailedChecks is how many session checks in a row may fail (the store
// did not answer) before a tunnel is closed: whether its session ended
// cannot be told, and a request would get 503 meanwhile.
const maxFailedChecks = 3

// TunnelPolicy lets a route's requests upgrade to WebSocket, and only to it,
// and bounds the tunnels.
type TunnelPolicy struct {
	// MaxLifetime closes a tunnel this long after it opened, whatever
	// flows through it. Zero means DefaultTunnelMaxLifetime.
	MaxLifetime time.Duration
	// CheckInterval is how often the session of an open tunnel is checked:
	// a session that ends on any replica closes its tunnels within it.
	// Zero means DefaultTunnelCheckInterval.
	CheckInterval time.Duration
}

func (tp TunnelPolicy) withDefaults() (TunnelPolicy, error) {
	if tp.MaxLifetime < 0 || tp.CheckInterval < 0 {
		return tp, errors.New("WebSocket lifetime and check interval must not be negative")
	}
	if tp.MaxLifetime == 0 {
		tp.MaxLifetime = DefaultTunnelMaxLifetime
	}
	if tp.CheckInterval == 0 {
		tp.CheckInterval = DefaultTunnelCheckInterval
	}
	return tp, nil
}

// AllowWebSocket parses BROKER_WEBSOCKET_ROUTES, comma-separated route
// prefixes such as "/ws,/api/chat", and returns routes with policy set on
// each route listed. A listed prefix must be exactly the prefix of one of
// routes: the tunnel is allowed on that route's paths, and on no longer
// route under it. Blank entries are skipped; each bad entry is reported by
// its position in the list, never by its value.
func AllowWebSocket(routes []Route, spec string, policy TunnelPolicy) ([]Route, error) {
	out := make([]Route, len(routes))
	copy(out, routes)
	index := make(map[string]int, len(routes))
	for i, r := range routes {
		index[r.Prefix] = i
	}
	var errs []error
	listed := make(map[string]bool)
	n := 0
	for entry := range strings.SplitSeq(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		n++
		i, ok := index[entry]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("entry %d is not the prefix of a configured route", n))
		case listed[entry]:
			errs = append(errs, fmt.Errorf("entry %d lists a route a second time", n))
		default:
			listed[entry] = true
			p := policy
			out[i].WebSocket = &p
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// isWebSocketUpgrade reports whether r opens a WebSocket (RFC 6455 section
// 4.1): a GET over HTTP/1.1 with "Connection: Upgrade" and "Upgrade:
// websocket", naming no other protocol, and without a body, which would
// otherwise reach the upstream ahead of the tunnel's first frame.
func isWebSocketUpgrade(r *http.Request) bool {
	if r.Method != http.MethodGet || r.ProtoMajor != 1 || r.ProtoMinor < 1 {
		return false
	}
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		return false
	}
	if !httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") {
		return false
	}
	up := r.Header.Values("Upgrade")
	return len(up) == 1 && strings.EqualFold(strings.TrimSpace(up[0]), "websocket")
}

// Why a tunnel closed: the causes the watcher cancels a tunnel with, and
// the reasons logged and counted.
var (
	errTunnelSessionEnded = errors.New("the session ended")
	errTunnelLifetime     = errors.New("the tunnel reached its maximum lifetime")
	errTunnelUnchecked    = errors.New("the session could not be checked")
	errTunnelShutdown     = errors.New("the broker is shutting down")
)

const (
	reasonClosed       = "closed" // either end closed it
	reasonSessionEnded = "session_ended"
	reasonLifetime     = "max_lifetime"
	reasonUnchecked    = "check_failed"
	reasonShutdown     = "shutdown"
)

var tunnelCloseReasons = []string{reasonClosed, reasonSessionEnded, reasonLifetime, reasonUnchecked, reasonShutdown}

func closeReason(cause error) string {
	switch {
	case errors.Is(cause, errTunnelSessionEnded):
		return reasonSessionEnded
	case errors.Is(cause, errTunnelLifetime):
		return reasonLifetime
	case errors.Is(cause, errTunnelUnchecked):
		return reasonUnchecked
	case errors.Is(cause, errTunnelShutdown):
		return reasonShutdown
	}
	return reasonClosed
}

// tunnel is one WebSocket request's state, from the handler's start to its
// end.
type tunnel struct {
	policy TunnelPolicy
	// cancel ends the upstream request, and with it the tunnel: ReverseProxy
	// closes the upstream connection when the request's context ends, and
	// then the client's.
	cancel context.CancelCauseFunc
	// rc clears the client connection's deadlines once the tunnel opens.
	rc *http.ResponseController

	// watched is closed when the watch of an opened tunnel returns.
	watched chan struct{}

	mu       sync.Mutex
	openedAt time.Time // zero until the upstream switched protocols
}

// opened reports whether the upstream switched protocols, and when.
func (tn *tunnel) opened() (time.Time, bool) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	return tn.openedAt, !tn.openedAt.IsZero()
}

// serveTunnel proxies a WebSocket upgrade request and, if the upstream
// switches protocols, the tunnel until it closes.
func (p *Proxy) serveTunnel(w http.ResponseWriter, r *http.Request, t *target) {
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	tn := &tunnel{policy: *t.route.WebSocket, cancel: cancel, rc: http.NewResponseController(w), watched: make(chan struct{})}
	t.tunnel = tn
	p.tunnels.add(tn)
	defer p.tunnels.remove(tn)
	p.rp.ServeHTTP(w, r.WithContext(ctx))

	openedAt, ok := tn.opened()
	if !ok {
		return
	}
	reason := closeReason(context.Cause(ctx))
	cancel(nil)
	<-tn.watched
	p.metrics.tunnelClosed(reason)
	p.log.InfoContext(r.Context(), "websocket tunnel closed", "route", t.route.Prefix, "session_id", t.sessionID,
		"reason", reason, "duration_s", time.Since(openedAt).Seconds())
}

// CloseTunnels closes every open tunnel. http.Server.Shutdown does not wait
// for hijacked connections, so serve registers it to run when shutdown
// begins: clients reconnect to another replica rather than keep a tunnel
// to a process that is going away.
func (p *Proxy) CloseTunnels() { p.tunnels.closeAll(errTunnelShutdown) }

// tunnelSet is the set of a proxy's tunnels in flight.
type tunnelSet struct {
	mu sync.Mutex
	m  map[*tunnel]struct{}
}

func (ts *tunnelSet) add(tn *tunnel) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.m == nil {
		ts.m = map[*tunnel]struct{}{}
	}
	ts.m[tn] = struct{}{}
}

func (ts *tunnelSet) remove(tn *tunnel) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	delete(ts.m, tn)
}

func (ts *tunnelSet) closeAll(cause error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for tn := range ts.m {
		tn.cancel(cause)
	}
}

// errUnaskedUpgrade is the error of an upstream that switches protocols
// when the broker did not ask it to.
var errUnaskedUpgrade = errors.New("the upstream switched protocols without being asked to")

// checkResponse removes BrokerErrorHeader from an upstream's response, and
// starts the watch of a tunnel when the upstream switches protocols.
// ReverseProxy itself refuses a 101 to another protocol than the one asked
// for, and one that no request asked for.
func (p *Proxy) checkResponse(res *http.Response) error {
	// Only the broker's own errors carry BrokerErrorHeader.
	delete(res.Header, BrokerErrorHeader)
	if res.StatusCode != http.StatusSwitchingProtocols {
		return nil
	}
	t := targetOf(res.Request.Context())
	if t == nil || t.tunnel == nil {
		return errUnaskedUpgrade
	}
	tn := t.tunnel
	// Deadlines the server set for reading and writing the request would
	// cut the tunnel short; its own lifetime bounds it instead.
	_ = tn.rc.SetReadDeadline(time.Time{})
	_ = tn.rc.SetWriteDeadline(time.Time{})
	tn.mu.Lock()
	tn.openedAt = time.Now()
	tn.mu.Unlock()
	ctx := res.Request.Context()
	p.metrics.tunnelOpened()
	p.log.InfoContext(ctx, "websocket tunnel opened", "route", t.route.Prefix, "session_id", t.sessionID)
	go p.watch(ctx, tn, t.sessionID)
	return nil
}

// watch closes the tunnel when its session ends, when the session can no
// longer be checked, or at its maximum lifetime, whichever comes first; it
// returns when ctx ends.
func (p *Proxy) watch(ctx context.Context, tn *tunnel, sessionID string) {
	defer close(tn.watched)
	life := time.NewTimer(tn.policy.MaxLifetime)
	defer life.Stop()
	tick := time.NewTicker(tn.policy.CheckInterval)
	defer tick.Stop()
	failed := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-life.C:
			tn.cancel(errTunnelLifetime)
			return
		case <-tick.C:
		}
		cctx, cancel := context.WithTimeout(ctx, tn.policy.CheckInterval)
		err := p.tokens.SessionLive(cctx, sessionID)
		cancel()
		switch {
		case err == nil:
			failed = 0
		case ctx.Err() != nil:
			return
		case broker.ErrorCode(err) == broker.CodeInvalidToken:
			tn.cancel(errTunnelSessionEnded)
			return
		default:
			failed++
			p.log.WarnContext(ctx, "websocket tunnel: session check failed", "session_id", sessionID, "failures", failed, "error", err)
			if failed >= maxFailedChecks {
				tn.cancel(errTunnelUnchecked)
				return
			}
		}
	}
}
