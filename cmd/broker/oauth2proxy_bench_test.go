package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"go/build"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// BenchmarkProxyVsOAuth2ProxyWrk puts the broker, the plain proxy of
// newBenchEnv and oauth2-proxy with its Redis session store side by side
// under wrk, in one interleaved run:
//
//	go install github.com/oauth2-proxy/oauth2-proxy/v7@v7.15.6
//	go test -run='^$' -bench='^BenchmarkProxyVsOAuth2ProxyWrk$' -benchtime=1x ./cmd/broker/
//
// or scripts/bench-compare.sh. oauth2-proxy runs as its own process against
// a second in-process dev OpenID Provider (a confidential client with an
// http redirect URI, which oauth2-proxy needs), on the stack's Redis, in
// front of the same upstream; a Go client with a cookie jar signs in once
// through its /oauth2/start, the OP's login form and its callback, and
// every wrk request carries the session cookie it got. The broker runs at
// its default configuration (access log, metrics, request ids and session
// cache on); oauth2-proxy at its own defaults plus its metrics listener,
// PKCE, the Redis session store and X-Forwarded-Access-Token.
//
// Each round loads every target after an unmeasured warm-up run, in an
// order that rotates from round to round so that a drift of the machine's
// load does not favour one; the figures reported are the medians over the
// rounds, the ratios the medians of the rounds' ratios.

var (
	cmpRounds      = flag.Int("cmp.rounds", 5, "BenchmarkProxyVsOAuth2ProxyWrk: interleaved rounds")
	oauth2ProxyBin = flag.String("oauth2proxy.bin", "", "BenchmarkProxyVsOAuth2ProxyWrk: the oauth2-proxy binary; found in PATH or $(go env GOPATH)/bin when empty")
)

// headerTarget is one proxy under wrk, with the header that authenticates
// its requests.
type headerTarget struct {
	name   string
	url    string
	header string // "Name: value"
}

func BenchmarkProxyVsOAuth2ProxyWrk(b *testing.B) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not in PATH: install it (apt-get install wrk, brew install wrk) to run this benchmark")
	}
	o2pBin, err := findOAuth2Proxy()
	if err != nil {
		b.Skipf("%v: install it for the benchmark only with `go install github.com/oauth2-proxy/oauth2-proxy/v7@v7.15.6`, or pass -oauth2proxy.bin", err)
	}
	env := newBenchEnv(b)
	o2p := startOAuth2Proxy(b, env, o2pBin)
	targets := []headerTarget{
		{name: "plain", url: env.plain.url, header: "Authorization: " + env.plain.auth},
		{name: "broker", url: env.broker.url, header: "Authorization: " + env.broker.auth},
		{name: "oauth2-proxy", url: o2p.url, header: "Cookie: " + o2p.cookie},
	}
	client := loadClient(1)
	defer client.CloseIdleConnections()
	for _, t := range targets {
		if err := getWithHeader(client, t); err != nil {
			b.Fatalf("%s: %v", t.name, err)
		}
	}

	b.ResetTimer()
	rounds := max(*cmpRounds, 1)
	runs := map[string][]wrkResult{}
	var brokerPlain, brokerO2P, o2pPlain []float64
	for round := range rounds {
		m := map[string]wrkResult{}
		for i := range targets {
			t := targets[(i+round)%len(targets)]
			if _, err := runWrkHeader(wrk, t, *wrkWarmup); err != nil {
				b.Fatalf("wrk warm-up on %s: %v", t.name, err)
			}
			before := takeSnapshot(b, env)
			res, err := runWrkHeader(wrk, t, *wrkDuration)
			if err != nil {
				b.Fatalf("wrk on %s: %v", t.name, err)
			}
			after := takeSnapshot(b, env)
			res.upstreamDials = after.upstreamConns - before.upstreamConns
			if t.name != "plain" {
				res.redis = redisUseBetween(b, env.rdb, before, after)
			}
			m[t.name] = res
			runs[t.name] = append(runs[t.name], res)
			b.Logf("round %d %-12s %d requests, %.0f req/s, p50 %.3f ms, p99 %.3f ms, %d new upstream connections, Redis %s",
				round+1, t.name, res.requests, res.rps, res.p50, res.p99, res.upstreamDials, res.redis)
		}
		brokerPlain = append(brokerPlain, m["broker"].rps/m["plain"].rps)
		brokerO2P = append(brokerO2P, m["broker"].rps/m["oauth2-proxy"].rps)
		o2pPlain = append(o2pPlain, m["oauth2-proxy"].rps/m["plain"].rps)
	}
	b.StopTimer()

	for _, t := range targets {
		rs := runs[t.name]
		b.ReportMetric(median(rs, func(r wrkResult) float64 { return r.rps }), t.name+"-req/s")
		b.ReportMetric(median(rs, func(r wrkResult) float64 { return r.p50 }), t.name+"-p50-ms")
		b.ReportMetric(median(rs, func(r wrkResult) float64 { return r.p99 }), t.name+"-p99-ms")
		if t.name != "plain" {
			b.ReportMetric(median(rs, func(r wrkResult) float64 {
				return float64(r.redis.commands) / float64(r.requests)
			}), t.name+"-redis-cmds/req")
		}
	}
	ident := func(v float64) float64 { return v }
	b.ReportMetric(median(brokerPlain, ident), "broker/plain")
	b.ReportMetric(median(brokerO2P, ident), "broker/oauth2-proxy")
	b.ReportMetric(median(o2pPlain, ident), "oauth2-proxy/plain")
	b.ReportMetric(0, "ns/op")
}

// median returns the median of f over xs (the mean of the middle two for an
// even count).
func median[T any](xs []T, f func(T) float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

// runWrkHeader runs wrk against target for d, as runWrk does, with
// target's header.
func runWrkHeader(bin string, target headerTarget, d time.Duration) (wrkResult, error) {
	secs := max(int(d.Round(time.Second)/time.Second), 1)
	out, err := exec.Command(bin,
		"-t", strconv.Itoa(*wrkThreads),
		"-c", strconv.Itoa(*wrkConnections),
		"-d", strconv.Itoa(secs)+"s",
		"--timeout", "5s",
		"--latency",
		"-H", target.header,
		target.url,
	).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("%v: %s", err, out)
	}
	return parseWrk(string(out))
}

// getWithHeader sends one request with target's header and checks that the
// upstream's answer came back whole.
func getWithHeader(client *http.Client, target headerTarget) error {
	req, err := http.NewRequest(http.MethodGet, target.url, nil)
	if err != nil {
		return err
	}
	name, value, _ := strings.Cut(target.header, ": ")
	req.Header.Set(name, value)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return err
	case resp.StatusCode != http.StatusOK || string(body) != benchBody:
		return fmt.Errorf("GET %s = %d %q, want 200 and the upstream's body", target.url, resp.StatusCode, body)
	}
	return nil
}

// findOAuth2Proxy returns the path of the oauth2-proxy binary: the flag's,
// or the one in PATH, or the one `go install` put in GOPATH/bin.
func findOAuth2Proxy() (string, error) {
	if *oauth2ProxyBin != "" {
		return *oauth2ProxyBin, nil
	}
	if p, err := exec.LookPath("oauth2-proxy"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		gopath = build.Default.GOPATH
	}
	for dir := range strings.SplitSeq(gopath, string(os.PathListSeparator)) {
		p := filepath.Join(dir, "bin", "oauth2-proxy")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", errors.New("oauth2-proxy is neither in PATH nor in GOPATH/bin")
}

// oauth2Proxy is a running oauth2-proxy with one signed-in session.
type oauth2Proxy struct {
	url    string // GET this URL
	cookie string // with this Cookie header
}

// oauth2ProxyPath is the path requested through oauth2-proxy. Its upstream
// is mounted at /base/, which oauth2-proxy forwards unchanged, so the
// upstream sees the path the plain proxy and the broker send it:
// /base/items/42.
const oauth2ProxyPath = "/base/items/42"

// startOAuth2Proxy starts bin in front of env's upstream with the Redis
// session store on env's Redis, and signs in once through a dev OP of its
// own.
func startOAuth2Proxy(b *testing.B, env *benchEnv, bin string) oauth2Proxy {
	b.Helper()
	upstream, ok := strings.CutPrefix(env.stack.env["BROKER_ROUTES"], "/api=")
	if !ok || !strings.HasSuffix(upstream, "/base") {
		b.Fatalf("BROKER_ROUTES = %q: want the bench env's single /api route to .../base", env.stack.env["BROKER_ROUTES"])
	}
	addr, metricsAddr := freeAddr(b), freeAddr(b)
	base := "http://" + addr
	secret := randomKey(b)
	idp, err := devidp.Start(devidp.Config{
		ClientID:       "oauth2-proxy",
		ClientSecret:   secret,
		RedirectURIs:   []string{base + "/oauth2/callback"},
		AccessTokenTTL: 24 * time.Hour,
	})
	if err != nil {
		b.Fatalf("devidp.Start: %v", err)
	}
	b.Cleanup(func() { _ = idp.Close() })
	cookieSecret := make([]byte, 32)
	if _, err := rand.Read(cookieSecret); err != nil {
		b.Fatal(err)
	}

	out := &headBuffer{max: 16 << 10}
	cmd := exec.Command(bin,
		"--http-address="+addr,
		"--metrics-address="+metricsAddr,
		"--provider=oidc",
		"--oidc-issuer-url="+idp.Issuer(),
		"--client-id="+idp.ClientID(),
		"--client-secret="+secret,
		"--redirect-url="+base+"/oauth2/callback",
		"--code-challenge-method=S256",
		"--upstream="+upstream+"/",
		"--email-domain=*",
		"--cookie-secret="+base64.RawURLEncoding.EncodeToString(cookieSecret),
		"--cookie-secure=false",
		"--session-store-type=redis",
		"--redis-connection-url="+env.stack.redis.URL(),
		"--skip-provider-button=true",
		"--pass-access-token=true",
	)
	// The client secret is on the command line: this is a throwaway OP.
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatalf("start oauth2-proxy: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			b.Fatalf("oauth2-proxy exited (%v):\n%s", err, out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatalf("oauth2-proxy not ready on %s after 30s:\n%s", addr, out)
		}
	}

	cookie, err := oauth2ProxyLogin(base)
	if err != nil {
		b.Fatalf("signing in through oauth2-proxy: %v\n%s", err, out)
	}
	return oauth2Proxy{url: base + oauth2ProxyPath + "?fields=all", cookie: cookie}
}

// oauth2ProxyLogin plays the user in a browser: it starts oauth2-proxy's
// sign-in, fills in the OP's login form, follows the redirects back through
// the callback to the proxied page, and returns the Cookie header that
// carries the session.
func oauth2ProxyLogin(base string) (string, error) {
	jar, err := cookiejar.New(nil)
	if err != nil {
		return "", err
	}
	browser := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	resp, body, err := fetch(browser, http.MethodGet, base+"/oauth2/start?rd="+url.QueryEscape(oauth2ProxyPath), nil)
	if err != nil {
		return "", fmt.Errorf("/oauth2/start: %w", err)
	}
	id := resp.Request.URL.Query().Get("authRequestID")
	if resp.StatusCode != http.StatusOK || id == "" {
		return "", fmt.Errorf("/oauth2/start ended at %s with %d %.200q, want the OP's login form", resp.Request.URL, resp.StatusCode, body)
	}
	form := url.Values{"id": {id}, "username": {devidp.DemoUsername}, "password": {devidp.DemoPassword}}
	loginURL := *resp.Request.URL
	loginURL.RawQuery = ""
	resp, body, err = fetch(browser, http.MethodPost, loginURL.String(), form)
	if err != nil {
		return "", fmt.Errorf("login form: %w", err)
	}
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != oauth2ProxyPath || string(body) != benchBody {
		return "", fmt.Errorf("login ended at %s with %d %.200q, want the upstream's answer at %s", resp.Request.URL, resp.StatusCode, body, oauth2ProxyPath)
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	var parts []string
	for _, c := range jar.Cookies(u) {
		parts = append(parts, c.Name+"="+c.Value)
	}
	if len(parts) == 0 {
		return "", errors.New("signed in, but oauth2-proxy set no cookie")
	}
	return strings.Join(parts, "; "), nil
}

// fetch sends a GET, or a POST of form when it is not nil, follows the
// redirects and reads the final answer.
func fetch(c *http.Client, method, target string, form url.Values) (*http.Response, []byte, error) {
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		return nil, nil, err
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp, b, err
}

// freeAddr returns a loopback address with a port that was free a moment
// ago, for a process that takes its listen address as a flag.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// headBuffer keeps the first max bytes written to it, for a child process's
// start-up messages, and drops the rest (its request log).
type headBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (h *headBuffer) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if room := h.max - h.buf.Len(); room > 0 {
		h.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (h *headBuffer) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.buf.String()
}
