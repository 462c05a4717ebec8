package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// clientFrom returns an HTTP client whose connections come from the
// loopback address ip (Linux routes all of 127.0.0.0/8 to lo), to play a
// second client on one machine.
func clientFrom(t testing.TB, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// dialFrom opens a TCP connection to addr from the loopback address ip.
func dialFrom(t testing.TB, ip, addr string) (net.Conn, error) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return d.DialContext(ctx, "tcp", addr)
}

// hostOf returns the host:port of a broker URL.
func hostOf(base string) string {
	return strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://")
}

// openIdle opens n connections from ip to addr that send nothing.
func openIdle(t *testing.T, ip, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := dialFrom(t, ip, addr)
		if err != nil {
			t.Fatalf("dial %s from %s: %v", addr, ip, err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns
}

// wantRefused checks that the broker closes a new connection from ip to
// addr without a word, soon: a connection over a cap is accepted and reset
// at once, so that the reset may even reach the dial.
func wantRefused(t *testing.T, ip, addr, what string) {
	t.Helper()
	c, err := dialFrom(t, ip, addr)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: dial: %v, want a connection reset", what, err)
		}
		return
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case err == nil:
		t.Errorf("%s: the broker sent %d bytes, want the connection closed", what, n)
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("%s: still open after 5s, want it closed at once", what)
	}
}

// getFrom sends GET url from the loopback address ip on a new connection
// and returns the status, or an error if the connection was refused.
func getFrom(t *testing.T, ip, url string) (int, error) {
	t.Helper()
	c := clientFrom(t, ip)
	c.Transport.(*http.Transport).DisableKeepAlives = true
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// eventually retries f every 20 ms until it reports true, for at most 10 s.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// One client address cannot hold more than its share of connections, and
// another address is served meanwhile; a closed connection gives its place
// back.
func TestConnectionCapPerClient(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_MAX_CONNECTIONS_PER_CLIENT": "4"}})
	b := s.start()
	addr := hostOf(b.base)

	idle := openIdle(t, "127.0.0.1", addr, 4)
	wantRefused(t, "127.0.0.1", addr, "a 5th idle connection from 127.0.0.1")
	if st, err := getFrom(t, "127.0.0.2", b.base+"/v1/session"); err != nil || st != http.StatusUnauthorized {
		t.Fatalf("GET /v1/session from 127.0.0.2 = %d, %v; want 401", st, err)
	}

	idle[0].Close()
	eventually(t, "127.0.0.1 served again after closing one of its connections", func() bool {
		st, err := getFrom(t, "127.0.0.1", b.base+"/v1/session")
		return err == nil && st == http.StatusUnauthorized
	})
	if !strings.Contains(b.logs.String(), "connections refused at a connection cap") {
		t.Errorf("no warning of the refused connections in the log")
	}
	metrics := doURL(t, http.MethodGet, b.admin+"/metrics", "", nil, nil)
	if !strings.Contains(string(metrics.body), `broker_connections_refused_total{listener="public",reason="max_connections_per_client"}`) {
		t.Errorf("/metrics has no count of the refused connections")
	}
}

// The public listener at its overall cap refuses every address, and the
// admin listener, which has caps of its own, still answers its probes.
func TestConnectionCapOverall(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_MAX_CONNECTIONS": "6"}})
	b := s.start()
	addr := hostOf(b.base)

	idle := openIdle(t, "127.0.0.1", addr, 6)
	wantRefused(t, "127.0.0.2", addr, "a connection from 127.0.0.2 over the overall cap")
	if st, err := getFrom(t, "127.0.0.1", b.admin+"/healthz"); err != nil || st != http.StatusOK {
		t.Errorf("GET /healthz on the admin listener while the public one is full = %d, %v; want 200", st, err)
	}
	// Discovery may still be under way just after start.
	eventually(t, "GET /readyz = 200 on the admin listener while the public one is full", func() bool {
		st, err := getFrom(t, "127.0.0.1", b.admin+"/readyz")
		return err == nil && st == http.StatusOK
	})
	for _, c := range idle {
		c.Close()
	}
	eventually(t, "the public listener serves again once the idle connections are closed", func() bool {
		st, err := getFrom(t, "127.0.0.2", b.base+"/v1/session")
		return err == nil && st == http.StatusUnauthorized
	})
}
