package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/mobile-token-broker/broker/handlers"
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
	eventually(t, 10*time.Second, "127.0.0.1 served again after closing one of its connections", func() bool {
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
	eventually(t, 10*time.Second, "GET /readyz = 200 on the admin listener while the public one is full", func() bool {
		st, err := getFrom(t, "127.0.0.1", b.admin+"/readyz")
		return err == nil && st == http.StatusOK
	})
	for _, c := range idle {
		c.Close()
	}
	eventually(t, 10*time.Second, "the public listener serves again once the idle connections are closed", func() bool {
		st, err := getFrom(t, "127.0.0.2", b.base+"/v1/session")
		return err == nil && st == http.StatusUnauthorized
	})
}

// stalledBody sends head (a request's line and headers, which declare a
// body) to addr and then nothing, and returns the status the broker
// answered with (0 if it closed the connection without one) and how long it
// held on. It fails the test if the broker holds on for 10 s.
func stalledBody(t *testing.T, addr, head string) (int, time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(start.Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%q: the broker still waits for the body after 10s", strings.SplitN(head, "\r\n", 2)[0])
	}
	if err != nil {
		return 0, time.Since(start)
	}
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}

// tightBodies are body limits short enough for tests.
var tightBodies = handlers.BodyLimits{Timeout: time.Second, UploadWindow: time.Second, UploadMinBytes: 1 << 10}

// A body that is declared and never sent is cut off: on the broker's own
// routes (and the admin listener's, and on no route at all) once the body
// deadline passes, on the proxy's once nothing has come for the upload
// window.
func TestStalledBodiesAreCutOff(t *testing.T) {
	s := newStack(t, stackOptions{bodies: tightBodies})
	b := s.start()
	c := s.login(b)
	public, admin := hostOf(b.base), hostOf(b.admin)
	for _, tt := range []struct {
		name, addr, head string
		want             int // 0: any answer, or none
	}{
		{"exchange", public, "POST /v1/sessions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n", http.StatusBadRequest},
		{"back-channel logout", public, "POST /v1/backchannel-logout HTTP/1.1\r\nHost: b\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n", http.StatusBadRequest},
		{"no route", public, "POST /nothing HTTP/1.1\r\nHost: b\r\nContent-Length: 100\r\n\r\n", 0},
		{"chunked, no route", public, "POST /nothing HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n", 0},
		{"admin probe", admin, "POST /healthz HTTP/1.1\r\nHost: b\r\nContent-Length: 100\r\n\r\n", 0},
		{"admin API without a token", admin, "DELETE /admin/v1/sessions/x HTTP/1.1\r\nHost: b\r\nContent-Length: 100\r\n\r\n", 0},
		{"proxy without a handle", public, "POST /api/upload HTTP/1.1\r\nHost: b\r\nContent-Length: 100000\r\n\r\n", http.StatusUnauthorized},
		{"proxy with a live handle", public, "POST /api/upload HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer " + c.Session + "\r\nContent-Length: 100000\r\n\r\n", http.StatusBadRequest},
		{"proxy with a live handle, chunked", public, "PUT /api/upload HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer " + c.Session + "\r\nTransfer-Encoding: chunked\r\n\r\n", http.StatusBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			status, took := stalledBody(t, tt.addr, tt.head)
			if tt.want != 0 && status != tt.want {
				t.Errorf("answered %d after %v, want %d", status, took, tt.want)
			}
			if took > 5*time.Second {
				t.Errorf("held on %v, want about 1s", took)
			}
		})
	}
	t.Cleanup(func() {
		// The stalled bodies held nothing for good.
		if res := do(t, b, http.MethodGet, "/v1/session", c.Session, nil); res.status != http.StatusOK {
			t.Errorf("GET /v1/session = %d, want 200", res.status)
		}
	})
}

// trickle is a request body that arrives chunk by chunk, every interval.
type trickle struct {
	chunk    []byte
	left     int
	interval time.Duration
	started  bool
}

func (r *trickle) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if r.started {
		time.Sleep(r.interval) // the client's pace, not synchronisation
	}
	r.started = true
	r.left--
	return copy(p, r.chunk), nil
}

// A proxied upload at an honest pace goes through however long it takes in
// all; one below the minimum rate is cut off although bytes keep coming.
func TestProxiedUploadMinimumRate(t *testing.T) {
	s := newStack(t, stackOptions{bodies: tightBodies})
	b := s.start()
	c := s.login(b)
	upload := func(r *trickle, size int) (*http.Response, error) {
		req, err := http.NewRequest(http.MethodPost, b.base+"/api/upload", r)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = int64(size)
		req.Header.Set("Authorization", "Bearer "+c.Session)
		return (&http.Client{Timeout: 20 * time.Second}).Do(req)
	}

	// 64 KiB as 4 KiB every 200 ms: 3 s in all, three times the body
	// deadline of the broker's own routes, 20 KiB a second.
	chunk := []byte(strings.Repeat("u", 4<<10))
	start := time.Now()
	resp, err := upload(&trickle{chunk: chunk, left: 16, interval: 200 * time.Millisecond}, 64<<10)
	if err != nil {
		t.Fatalf("a slow honest upload: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var echoed struct{ Body string }
	_ = json.Unmarshal(body, &echoed)
	if resp.StatusCode != http.StatusOK || len(echoed.Body) != 64<<10 {
		t.Fatalf("a slow honest upload = %d with %d bytes at the upstream, want 200 and 65536", resp.StatusCode, len(echoed.Body))
	}
	if took := time.Since(start); took < 2*tightBodies.Timeout {
		t.Errorf("the upload took %v; too fast to show that proxied bodies have no total deadline", took)
	}

	// 100 bytes every 300 ms, about 330 B/s: below 1 KiB a second.
	start = time.Now()
	resp, err = upload(&trickle{chunk: chunk[:100], left: 100, interval: 300 * time.Millisecond}, 100*100)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("an upload below the minimum rate = 200 after %v, want it cut off", time.Since(start))
		}
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("an upload below the minimum rate was cut off after %v, want within a few windows of 1s", took)
	}
}

// One HTTP/2 connection cannot have more than the stream limit of requests
// in flight: the broker announces the limit, and a stream past it is reset,
// while the ones before it wait for bodies that never come, until their
// deadline.
func TestHTTP2StreamLimit(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	s := newStack(t, stackOptions{
		env:    map[string]string{"BROKER_TLS_CERT": certFile, "BROKER_TLS_KEY": keyFile},
		bodies: handlers.BodyLimits{Timeout: 2 * time.Second},
	})
	b := s.start()
	conn, err := tls.Dial("tcp", hostOf(b.base), &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}

	// The server's settings come first.
	var limit uint32
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the server's settings: %v", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			v, ok := sf.Value(http2.SettingMaxConcurrentStreams)
			if !ok {
				t.Fatal("the server announces no stream limit")
			}
			limit = v
			if err := fr.WriteSettingsAck(); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if limit != handlers.HTTP2MaxConcurrentStreams {
		t.Fatalf("SETTINGS_MAX_CONCURRENT_STREAMS = %d, want %d", limit, handlers.HTTP2MaxConcurrentStreams)
	}

	// limit+1 requests that each declare a body and send none.
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", "broker"}, {":path", "/v1/sessions"},
		{"content-type", "application/json"}, {"content-length", "100"},
	} {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			t.Fatal(err)
		}
	}
	last := uint32(2*limit + 1)
	for id := uint32(1); id <= last; id += 2 {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	reset := false
	answered := map[uint32]string{}
	for !reset || len(answered) < int(limit) {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("stream %d reset: %v, streams answered: %d of %d: %v", last, reset, len(answered), limit, err)
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			switch {
			case f.StreamID == last:
				reset = true
			case f.ErrCode == http2.ErrCodeNo && answered[f.StreamID] != "":
				// Answered: the client may stop sending its body.
			default:
				t.Fatalf("stream %d reset (%v), want only stream %d, the one past the limit", f.StreamID, f.ErrCode, last)
			}
		case *http2.MetaHeadersFrame:
			if !reset {
				t.Fatalf("stream %d answered before the stream past the limit was reset", f.StreamID)
			}
			answered[f.StreamID] = f.PseudoValue("status")
		case *http2.GoAwayFrame:
			t.Fatalf("the server went away (%v), want the stream past the limit reset", f.ErrCode)
		}
	}
	for id, status := range answered {
		if status != "400" {
			t.Errorf("stream %d, whose body never came, = %s, want 400", id, status)
		}
	}
}
