package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/oauth2"

	"github.com/mobile-token-broker/broker/internal/devidp"
	"github.com/mobile-token-broker/broker/internal/redistest"
	"github.com/mobile-token-broker/broker/migrations"
	"github.com/mobile-token-broker/broker/sessions"
)

// The fault soak runs the real broker binary as three processes on one real
// redis-server and the development OP, keeps steady traffic on a few dozen
// sessions, and puts ordinary faults under it one after another: Redis
// SIGKILLed, a broker SIGKILLed, the IdP paused twice, the refresh leases
// deleted under the refreshers, sessions revoked by an admin. It then asks
// what the faults cost: sessions lost, revoked sessions served, refresh
// tokens sent twice, refresh grants per expiry, and per phase the answers
// and latencies the apps saw.
//
//	go test -run='^$' -bench='^BenchmarkFaultSoak$' -benchtime=1x ./cmd/broker/
//	SOAK_SCALE=0.2 go test -run='^$' -bench='^BenchmarkFaultSoak$' -benchtime=1x ./cmd/broker/
//
// SOAK_SCALE (default 1, about five minutes of faults) scales every duration
// of the timeline. SOAK_LOGS names a directory that keeps the brokers' logs
// and every request of the run (requests.tsv) after the run; by default
// they go to a temporary directory.

const (
	soakSessions = 30
	soakClients  = 12
	soakBrokers  = 3
	// The IdP's access tokens live soakAccessTokenTTL and the brokers
	// refresh them soakRefreshSkew before they expire, so every session in
	// use refreshes every couple of seconds, all through the run.
	soakAccessTokenTTL = 3 * time.Second
	soakRefreshSkew    = time.Second
	// soakRequestTimeout bounds each proxied request the load sends: well
	// above the 5 s a request waits for a refresh.
	soakRequestTimeout = 10 * time.Second
	// soakThink is each client's pause between requests. It keeps the
	// load at a few hundred requests per second, so that on a small machine
	// the latencies show the faults rather than CPU saturation.
	soakThink = 20 * time.Millisecond
	// soakLeaseSweepEvery is how often the leases are deleted during the
	// lease fault. It is not scaled: it is about hitting refreshes in
	// flight, not about the length of the run.
	soakLeaseSweepEvery = 200 * time.Millisecond
	// soakLeaseIdPLatency is how long the IdP takes to answer during the
	// lease fault. At its usual few milliseconds a refresh's lease is
	// rarely there when a sweep comes; at this latency most refreshes of
	// the phase lose theirs, and the refresh still ends well before the
	// access token it replaces (soakRefreshSkew).
	soakLeaseIdPLatency = 500 * time.Millisecond
	// soakReadyTimeout bounds the wait for a started broker's /readyz.
	soakReadyTimeout = 30 * time.Second
	// soakAdminTimeout bounds one admin call: a revocation waits for the
	// IdP's RFC 7009 answer (at most the broker's 10 s IdP timeout).
	soakAdminTimeout = 30 * time.Second
	// soakRevokeRetryFor bounds the retries of a revocation that met a
	// broker or Redis that was down.
	soakRevokeRetryFor = time.Minute
	// soakEndGrace is the contract's allowance for other replicas to see
	// an end: "within 100 ms of the answer that ended it".
	soakEndGrace = 100 * time.Millisecond
)

// soakLeasePattern matches every refresh lease (sessions.lockKey) in a SCAN.
const soakLeasePattern = "broker:session:{*}:lock"

// BenchmarkFaultSoak runs the fault timeline once under steady load and
// reports what the faults cost; see the comment above for how to run it. Run
// it once: -benchtime=1x. It fails if a revoked session is served after its
// revocation was answered; lost sessions are reported, with the brokers' log
// lines that mention them.
func BenchmarkFaultSoak(b *testing.B) {
	if os.Getenv(redistest.EnvURL) != "" {
		b.Skipf("the soak kills and restarts its own redis-server; unset %s", redistest.EnvURL)
	}
	tl := newSoakTimeline(soakScale(b))
	quietExampleOP(b)
	dir := soakLogDir(b)
	s := newSoakStack(b, buildBroker(b, dir), dir)
	s.openSessions(b)

	b.ResetTimer()
	run := s.runTimeline(b, tl)
	b.StopTimer()

	r := s.analyse(run)
	s.writeRequests(b, filepath.Join(dir, "requests.tsv"), run)
	r.print(os.Stdout, s, run)
	r.reportMetrics(b, run)
	if len(r.lost) > 0 {
		b.Logf("%d sessions lost; see the report above and the logs in %s", len(r.lost), dir)
	}
	if n := len(r.revokedServed); n > 0 {
		b.Errorf("%d requests with a revoked session's handle were served after the revocation was answered", n)
	}
}

// soakScale reads SOAK_SCALE, the factor applied to every duration of the
// timeline.
func soakScale(tb testing.TB) float64 {
	tb.Helper()
	v := os.Getenv("SOAK_SCALE")
	if v == "" {
		return 1
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f > 0) || math.IsInf(f, 0) {
		tb.Fatalf("SOAK_SCALE=%q: want a positive number such as 0.2", v)
	}
	return f
}

// soakTimeline is how long each part of the run lasts.
type soakTimeline struct {
	warmUp, gap, calm time.Duration
	redisDown         time.Duration
	brokerDown        time.Duration
	idpShortPause     time.Duration
	idpLongPause      time.Duration
	leaseSweep        time.Duration
}

func newSoakTimeline(scale float64) soakTimeline {
	d := func(x time.Duration) time.Duration { return time.Duration(float64(x) * scale) }
	return soakTimeline{
		warmUp:        d(20 * time.Second),
		gap:           d(20 * time.Second),
		calm:          d(20 * time.Second),
		redisDown:     d(3 * time.Second),
		brokerDown:    d(2 * time.Second),
		idpShortPause: d(30 * time.Second),
		idpLongPause:  d(2 * time.Minute),
		leaseSweep:    d(10 * time.Second),
	}
}

// quietExampleOP silences the example OP, which logs every request it
// serves through the process-wide slog default, for the length of the
// benchmark. Setting a slog default also redirects the log package, so
// that is put back too.
func quietExampleOP(tb testing.TB) {
	prev, out, flags := slog.Default(), log.Writer(), log.Flags()
	slog.SetDefault(slog.New(slog.DiscardHandler))
	tb.Cleanup(func() {
		slog.SetDefault(prev)
		log.SetOutput(out)
		log.SetFlags(flags)
	})
}

// soakLogDir is where the broker binary and the brokers' logs go: SOAK_LOGS
// when set (kept after the run, so a loss can be studied), a temporary
// directory otherwise.
func soakLogDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("SOAK_LOGS")
	if dir == "" {
		return tb.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatalf("SOAK_LOGS: %v", err)
	}
	return dir
}

// buildBroker builds the broker binary into dir, from the module this test
// belongs to, and returns its path. The soak kills brokers with SIGKILL,
// which only a process of their own can take.
func buildBroker(tb testing.TB, dir string) string {
	tb.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		tb.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		tb.Fatalf("go env GOMOD = %q: not inside the broker's module", gomod)
	}
	bin := filepath.Join(dir, "broker")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/broker")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build ./cmd/broker: %v\n%s", err, out)
	}
	return bin
}

// soakStack is one Redis, one IdP, one upstream, the brokers and the
// sessions the load uses.
type soakStack struct {
	redis      *redistest.Server
	rdb        *redis.Client
	idp        *devidp.Provider
	brokers    []*soakBroker
	adminToken string
	sessions   []created
	client     *http.Client // keep-alive client of the load and the probes
}

// newSoakStack starts Redis (migrated), the IdP, the upstream and
// soakBrokers broker processes of bin, and waits until every broker is
// ready.
func newSoakStack(tb testing.TB, bin, dir string) *soakStack {
	tb.Helper()
	rs := redistest.Start(tb)
	rdb, err := sessions.NewClient(rs.URL())
	if err != nil {
		tb.Fatalf("sessions.NewClient: %v", err)
	}
	defer rdb.Close()
	if _, err := migrations.Apply(context.Background(), rdb, migrations.Options{}); err != nil {
		tb.Fatalf("migrations.Apply: %v", err)
	}
	idp, err := devidp.Start(devidp.Config{RedirectURIs: []string{redirectURI}, AccessTokenTTL: soakAccessTokenTTL})
	if err != nil {
		tb.Fatalf("devidp.Start: %v", err)
	}
	tb.Cleanup(func() { _ = idp.Close() })
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	tb.Cleanup(up.Close)

	s := &soakStack{
		redis:      rs,
		rdb:        rs.Client(tb),
		idp:        idp,
		adminToken: randomKey(tb),
		client:     loadClient(soakClients),
	}
	tb.Cleanup(s.client.CloseIdleConnections)
	common := []string{
		"PATH=" + os.Getenv("PATH"),
		"BROKER_REDIS_URL=" + rs.URL(),
		"BROKER_OIDC_ISSUER=" + idp.Issuer(),
		"BROKER_OIDC_CLIENT_ID=" + idp.ClientID(),
		"BROKER_REDIRECT_URIS=" + redirectURI,
		"BROKER_ROUTES=/api=" + up.URL,
		"BROKER_ENCRYPTION_KEYS=k1:" + randomKey(tb),
		"BROKER_ADMIN_TOKENS=soak:" + s.adminToken,
		"BROKER_REFRESH_SKEW=" + soakRefreshSkew.String(),
		// All the load comes from one IP; revoked sessions keep being
		// tried on purpose.
		"BROKER_RATE_LIMIT_EXCHANGE=1000/s",
		"BROKER_RATE_LIMIT_INVALID=10000/s",
	}
	// The ports are fixed up front so that a restarted broker listens
	// where its predecessor did, as behind a load balancer.
	ports := freeAddrs(tb, 2*soakBrokers)
	for i := range soakBrokers {
		p := &soakBroker{
			name:    "broker-" + strconv.Itoa(i+1),
			bin:     bin,
			public:  ports[2*i],
			admin:   ports[2*i+1],
			logPath: filepath.Join(dir, fmt.Sprintf("broker-%d.log", i+1)),
		}
		p.env = append(slices.Clone(common), "BROKER_LISTEN="+p.public, "BROKER_ADMIN_LISTEN="+p.admin)
		tb.Cleanup(p.kill)
		p.start(tb)
		s.brokers = append(s.brokers, p)
	}
	for _, p := range s.brokers {
		p.waitReady(tb)
	}
	return s
}

// freeAddrs returns n distinct free loopback addresses. All are held open
// together until every one is known, so that none is handed out twice.
func freeAddrs(tb testing.TB, n int) []string {
	tb.Helper()
	addrs := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("find a free port: %v", err)
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

// soakBroker is one broker process, started again with the same command
// after it is killed.
type soakBroker struct {
	name          string
	bin           string
	env           []string
	public, admin string // host:port, the same for every start
	logPath       string // stdout and stderr of every start, appended

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// start runs the broker. It does not wait for it to be ready.
func (p *soakBroker) start(tb testing.TB) {
	tb.Helper()
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatalf("%s: log file: %v", p.name, err)
	}
	// The child writes through its own copy of the descriptor.
	defer f.Close()
	// A JSON line like the broker's own, so that a reader of the log sees
	// where each process begins.
	fmt.Fprintf(f, `{"time":%q,"level":"INFO","msg":"soak: broker process started by the benchmark"}`+"\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, "serve")
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		tb.Fatalf("%s: start: %v", p.name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
}

// kill SIGKILLs the running process, if any, and waits for it to exit.
func (p *soakBroker) kill() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// waitReady polls /readyz on the admin listener until it answers 200,
// failing if the process exits or soakReadyTimeout passes.
func (p *soakBroker) waitReady(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(soakReadyTimeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			tb.Fatalf("%s exited before it was ready:\n%s", p.name, tailFile(p.logPath, 20))
		default:
		}
		resp, err := client.Get("http://" + p.admin + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Fatalf("%s: /readyz not 200 within %v (last: %s):\n%s", p.name, soakReadyTimeout, last, tailFile(p.logPath, 20))
}

// tailFile returns the last n lines of a file, for failure messages.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// openSessions signs the demo user in soakSessions times, as the app does,
// spreading the exchanges over the brokers.
func (s *soakStack) openSessions(tb testing.TB) {
	tb.Helper()
	ctx := context.Background()
	for i := range soakSessions {
		nonce := "soak-" + strconv.Itoa(i)
		verifier := oauth2.GenerateVerifier()
		code, err := s.idp.Login(ctx, devidp.LoginRequest{
			CodeChallenge: oauth2.S256ChallengeFromVerifier(verifier),
			Nonce:         nonce,
			State:         "st-" + nonce,
		})
		if err != nil {
			tb.Fatalf("Login: %v", err)
		}
		body, _ := json.Marshal(map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI, "nonce": nonce})
		status, resp, err := s.call(http.MethodPost, "http://"+s.brokers[i%soakBrokers].public+"/v1/sessions", "", body, soakRequestTimeout)
		if err != nil || status != http.StatusCreated {
			tb.Fatalf("POST /v1/sessions = %d %s %v, want 201", status, resp, err)
		}
		var c created
		if err := json.Unmarshal(resp, &c); err != nil || c.Session == "" || c.SessionID == "" {
			tb.Fatalf("POST /v1/sessions: body %s: %v", resp, err)
		}
		s.sessions = append(s.sessions, c)
	}
}

// call sends one request with its own timeout and returns the status and
// body, or the error when no answer came.
func (s *soakStack) call(method, url, bearer string, body []byte, timeout time.Duration) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, b, err
}

// soakRecord is one proxied request as the app saw it.
type soakRecord struct {
	at      time.Time // when it was sent
	latency time.Duration
	session int // index in soakStack.sessions
	broker  int // index in soakStack.brokers
	status  int // 0 when no answer came
	code    string
}

func (r soakRecord) answered() time.Time { return r.at.Add(r.latency) }

// proxy sends one GET through broker with the session's handle.
func (s *soakStack) proxy(session, broker int) soakRecord {
	url := "http://" + s.brokers[broker].public + "/api/soak/" + strconv.Itoa(session)
	start := time.Now()
	status, body, err := s.call(http.MethodGet, url, s.sessions[session].Session, nil, soakRequestTimeout)
	r := soakRecord{at: start, latency: time.Since(start), session: session, broker: broker, status: status}
	switch {
	case err != nil && status == 0:
		r.code = transportFailure(err)
	case status != http.StatusOK:
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil {
			r.code = e.Error
		}
	}
	return r
}

// transportFailure names a request that got no answer.
func transportFailure(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "reset"
	}
	return "no answer"
}

// startLoad runs soakClients clients, each sending requests in turn over
// the sessions (one counter shared by all) to a random broker, until stop is
// closed. The returned function waits for the clients, whose last request
// ends within soakRequestTimeout, and returns every request they sent.
func (s *soakStack) startLoad(stop <-chan struct{}) func() []soakRecord {
	var (
		wg   sync.WaitGroup
		next atomic.Int64
		mu   sync.Mutex
		all  []soakRecord
	)
	for range soakClients {
		wg.Go(func() {
			var own []soakRecord
			for {
				select {
				case <-stop:
					mu.Lock()
					all = append(all, own...)
					mu.Unlock()
					return
				default:
				}
				session := int(next.Add(1)-1) % len(s.sessions)
				own = append(own, s.proxy(session, rand.IntN(len(s.brokers))))
				select {
				case <-stop:
				case <-time.After(soakThink):
				}
			}
		})
	}
	return func() []soakRecord {
		wg.Wait()
		slices.SortFunc(all, func(a, b soakRecord) int { return a.at.Compare(b.at) })
		return all
	}
}

// soakPhase is a stretch of the timeline: a fault, the recovery after it,
// the warm-up or the calm at the end.
type soakPhase struct {
	name, slug string
	start, end time.Time
	// The IdP's refresh grant count at the phase's start and end, and the
	// phase's stretch of RefreshTokensSeen, which is in arrival order.
	grantsFrom, grantsTo int
	seenFrom, seenTo     int
}

// soakRevocation is one admin revocation and when its 204 came back.
type soakRevocation struct {
	session   int
	phase     string
	requested time.Time
	answered  time.Time // zero if no 204 came
	broker    int       // the admin listener that answered 204
	attempts  int
	err       string
}

// soakEvent is a moment of the timeline worth printing.
type soakEvent struct {
	at   time.Time
	what string
}

// soakRun is what the timeline did and what the load saw.
type soakRun struct {
	start, end    time.Time
	phases        []soakPhase
	events        []soakEvent
	revocations   []*soakRevocation
	leasesDeleted int
	records       []soakRecord
	probes        []soakRecord
	grants        int // refresh grants during the load
	refreshesOK   int
	seen          []string // RefreshTokensSeen at the end
}

// begin ends the current phase, if any, and starts the next one.
func (r *soakRun) begin(s *soakStack, name, slug string) {
	now := time.Now()
	grants, seen := s.idp.Count(devidp.GrantRefreshToken), len(s.idp.RefreshTokensSeen())
	if n := len(r.phases); n > 0 {
		p := &r.phases[n-1]
		p.end, p.grantsTo, p.seenTo = now, grants, seen
	}
	if name != "" {
		r.phases = append(r.phases, soakPhase{name: name, slug: slug, start: now, grantsFrom: grants, seenFrom: seen})
	}
}

// phaseAt names the phase t falls in.
func (r *soakRun) phaseAt(t time.Time) string {
	for i, p := range r.phases {
		if !t.Before(p.start) && t.Before(p.end) {
			name := strings.TrimSpace(p.name)
			if i > 0 && strings.HasPrefix(p.name, " ") {
				name += " after " + strings.TrimSpace(r.phases[i-1].name)
			}
			return name
		}
	}
	return "the final probe"
}

func (r *soakRun) note(format string, args ...any) {
	r.events = append(r.events, soakEvent{time.Now(), fmt.Sprintf(format, args...)})
}

// runTimeline sends the load through the whole fault timeline, then probes
// every session once.
func (s *soakStack) runTimeline(b *testing.B, tl soakTimeline) *soakRun {
	b.Helper()
	run := &soakRun{}
	grants0, ok0 := s.idp.Count(devidp.GrantRefreshToken), s.idp.SuccessfulRefreshes()
	stop := make(chan struct{})
	run.start = time.Now()
	wait := s.startLoad(stop)
	var revokes sync.WaitGroup
	// revokeAfter revokes session i d from now, without holding up the
	// timeline: a revocation may wait for a paused IdP.
	revokeAfter := func(d time.Duration, i int, phase string) {
		rv := &soakRevocation{session: i, phase: phase}
		run.revocations = append(run.revocations, rv)
		revokes.Go(func() {
			time.Sleep(d)
			s.revoke(rv)
		})
	}

	run.begin(s, "warm-up", "warmup")
	revokeAfter(tl.warmUp/2, 3, "warm-up")
	time.Sleep(tl.warmUp)

	run.begin(s, fmt.Sprintf("Redis SIGKILLed, back after %v", tl.redisDown), "redis")
	s.redis.Stop(b)
	run.note("Redis SIGKILLed")
	time.Sleep(tl.redisDown)
	s.redis.Restart(b)
	run.note("Redis answers PING again")
	run.begin(s, "  recovery", "redis-after")
	revokeAfter(0, 9, "right after Redis came back")
	time.Sleep(tl.gap)

	down := s.brokers[1]
	run.begin(s, fmt.Sprintf("%s SIGKILLed, restarted after %v", down.name, tl.brokerDown), "broker")
	down.kill()
	run.note("%s SIGKILLed", down.name)
	revokeAfter(0, 15, "while "+down.name+" is down")
	time.Sleep(tl.brokerDown)
	down.start(b)
	down.waitReady(b)
	run.note("%s restarted and ready", down.name)
	run.begin(s, "  recovery", "broker-after")
	time.Sleep(tl.gap)

	run.begin(s, fmt.Sprintf("IdP paused %v", tl.idpShortPause), "idp-short")
	s.idp.Pause()
	run.note("IdP paused")
	revokeAfter(tl.idpShortPause/3, 21, "while the IdP is paused")
	time.Sleep(tl.idpShortPause)
	s.idp.Resume()
	run.note("IdP resumed")
	run.begin(s, "  recovery", "idp-short-after")
	time.Sleep(tl.gap)

	run.begin(s, fmt.Sprintf("IdP paused %v", tl.idpLongPause), "idp-long")
	s.idp.Pause()
	run.note("IdP paused")
	time.Sleep(tl.idpLongPause)
	s.idp.Resume()
	run.note("IdP resumed")
	run.begin(s, "  recovery", "idp-long-after")
	time.Sleep(tl.gap)

	run.begin(s, fmt.Sprintf("refresh leases deleted every %v for %v (IdP answering in %v)", soakLeaseSweepEvery, tl.leaseSweep, soakLeaseIdPLatency), "leases")
	// A refresh holds its lease only as long as the IdP takes to answer:
	// a slower IdP makes the sweeps meet refreshes in flight.
	s.idp.SetLatency(soakLeaseIdPLatency)
	revokeAfter(tl.leaseSweep/2, 27, "while leases are deleted")
	run.leasesDeleted = s.sweepLeases(b, tl.leaseSweep)
	s.idp.SetLatency(0)
	run.note("stopped deleting leases (%d deleted)", run.leasesDeleted)
	run.begin(s, "calm", "calm")
	time.Sleep(tl.calm)
	run.begin(s, "", "")

	close(stop)
	run.records = wait()
	run.end = time.Now()
	run.grants = s.idp.Count(devidp.GrantRefreshToken) - grants0
	run.refreshesOK = s.idp.SuccessfulRefreshes() - ok0
	revokes.Wait()
	for i := range s.sessions {
		run.probes = append(run.probes, s.proxy(i, i%len(s.brokers)))
	}
	run.seen = s.idp.RefreshTokensSeen()
	return run
}

// sweepLeases deletes every refresh lease in Redis every
// soakLeaseSweepEvery for d, as a failover that lost keys or a pause past
// the lease's TTL would, and returns how many it deleted.
func (s *soakStack) sweepLeases(tb testing.TB, d time.Duration) int {
	tb.Helper()
	ctx := context.Background()
	deleted := 0
	tick := time.NewTicker(soakLeaseSweepEvery)
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
		var cursor uint64
		// SCAN ends when the cursor comes back to 0; the bound only guards
		// against a server that never says so.
		for range 1000 {
			keys, next, err := s.rdb.Scan(ctx, cursor, soakLeasePattern, 100).Result()
			if err != nil {
				tb.Logf("SCAN %s: %v", soakLeasePattern, err)
				break
			}
			if len(keys) > 0 {
				n, err := s.rdb.Del(ctx, keys...).Result()
				if err != nil {
					tb.Logf("DEL leases: %v", err)
				}
				deleted += int(n)
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
	}
	return deleted
}

// revoke ends a session through the admin API, trying the brokers in turn
// while one is down or Redis is, until a 204 comes back or
// soakRevokeRetryFor passes.
func (s *soakStack) revoke(rv *soakRevocation) {
	rv.requested = time.Now()
	deadline := rv.requested.Add(soakRevokeRetryFor)
	for time.Now().Before(deadline) {
		broker := (rv.session + rv.attempts) % len(s.brokers)
		rv.attempts++
		url := "http://" + s.brokers[broker].admin + "/admin/v1/sessions/" + s.sessions[rv.session].SessionID
		status, body, err := s.call(http.MethodDelete, url, s.adminToken, nil, soakAdminTimeout)
		if status == http.StatusNoContent {
			rv.answered, rv.broker, rv.err = time.Now(), broker, ""
			return
		}
		rv.err = fmt.Sprintf("%s: %d %s %v", s.brokers[broker].name, status, bytes.TrimSpace(body), err)
		time.Sleep(250 * time.Millisecond)
	}
}

// writeRequests writes every request of the run, the final probes last, as
// tab-separated values, for questions the report does not answer.
func (s *soakStack) writeRequests(tb testing.TB, path string, run *soakRun) {
	tb.Helper()
	var buf bytes.Buffer
	buf.WriteString("sent\tsent_s\tlatency_ms\tsession\tsession_id\tbroker\tstatus\terror\n")
	for _, rec := range slices.Concat(run.records, run.probes) {
		fmt.Fprintf(&buf, "%s\t%.3f\t%.1f\t%d\t%s\t%s\t%d\t%s\n",
			rec.at.Format(time.RFC3339Nano), rec.at.Sub(run.start).Seconds(), float64(rec.latency)/float64(time.Millisecond),
			rec.session, s.sessions[rec.session].SessionID, s.brokers[rec.broker].name, rec.status, rec.code)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		tb.Logf("write %s: %v", path, err)
	}
}

// soakPhaseStats are the answers of one phase's requests.
type soakPhaseStats struct {
	requests, ok, idpUnavailable, storeUnavailable, noAnswer, other int
	others                                                          map[string]int
	hit                                                             map[int]bool // sessions with an answer other than 200
	p50, p99                                                        float64
	grants, sentTwice                                               int
}

// soakLoss is a session that was lost, and the request that showed it.
type soakLoss struct {
	session int
	reason  string
	first   soakRecord
	probe   bool
}

// soakReport is what the run measured.
type soakReport struct {
	phases        []soakPhaseStats
	total         soakPhaseStats
	expiries      float64 // access token lifetimes lived by the sessions
	grantsPerExp  float64
	okPerExp      float64
	sentTwice     int
	lost          []soakLoss
	revokedServed []soakRecord
	outages       []soakOutage // longest first
}

// soakOutage is a stretch of one session's requests that did not get 200:
// from the first failed request sent to the next successful one sent, or
// to the session's end (its revocation, or the end of the load) if none
// came.
type soakOutage struct {
	session  int
	from, to time.Time
	open     bool // no 200 came before the session's end
	answers  map[string]int
}

// outages returns each session's stretches of failed requests, longest
// first. records are in the order they were sent; skip leaves out those
// that say nothing of the faults; end gives each session's end.
func outages(records []soakRecord, skip func(soakRecord) bool, end func(session int) time.Time) []soakOutage {
	var out []soakOutage
	current := map[int]*soakOutage{}
	for _, rec := range records {
		if skip(rec) {
			continue
		}
		o := current[rec.session]
		switch {
		case rec.status == http.StatusOK && o != nil:
			o.to = rec.at
			out = append(out, *o)
			delete(current, rec.session)
		case rec.status != http.StatusOK:
			if o == nil {
				o = &soakOutage{session: rec.session, from: rec.at, answers: map[string]int{}}
				current[rec.session] = o
			}
			o.answers[rec.outcome()]++
		}
	}
	for _, o := range current {
		o.to, o.open = end(o.session), true
		out = append(out, *o)
	}
	slices.SortFunc(out, func(a, b soakOutage) int { return cmp.Compare(b.to.Sub(b.from), a.to.Sub(a.from)) })
	return out
}

// analyse turns the run's records into the report.
func (s *soakStack) analyse(run *soakRun) *soakReport {
	r := &soakReport{}
	revokedAt := map[int]*soakRevocation{}
	for _, rv := range run.revocations {
		revokedAt[rv.session] = rv
	}

	// A request answered once an admin was revoking its session may see
	// either outcome, so it is no measure of the faults: it is judged on
	// its own (revokedServed) and left out of the phase table.
	afterRevocation := func(rec soakRecord) bool {
		rv, ok := revokedAt[rec.session]
		return ok && !rv.requested.IsZero() && !rec.answered().Before(rv.requested)
	}
	served := func(rec soakRecord) bool {
		rv, ok := revokedAt[rec.session]
		return ok && !rv.answered.IsZero() && rec.at.After(rv.answered) && rec.status == http.StatusOK
	}

	// Duplicates are counted at their second arrival.
	dupAt := map[int]bool{}
	first := map[string]bool{}
	for i, tok := range run.seen {
		if first[tok] {
			dupAt[i] = true
			r.sentTwice++
		}
		first[tok] = true
	}

	r.phases = make([]soakPhaseStats, len(run.phases))
	lat := make([][]time.Duration, len(run.phases))
	var all []time.Duration
	for i := range r.phases {
		r.phases[i].others, r.phases[i].hit = map[string]int{}, map[int]bool{}
	}
	r.total.others, r.total.hit = map[string]int{}, map[int]bool{}
	for _, rec := range run.records {
		if served(rec) {
			r.revokedServed = append(r.revokedServed, rec)
		}
		if afterRevocation(rec) {
			continue
		}
		i := slices.IndexFunc(run.phases, func(p soakPhase) bool { return !rec.at.Before(p.start) && rec.at.Before(p.end) })
		if i < 0 {
			continue // sent in the moment between two phases or after the last
		}
		r.phases[i].add(rec)
		r.total.add(rec)
		lat[i] = append(lat[i], rec.latency)
		all = append(all, rec.latency)
	}
	for i, p := range run.phases {
		st := &r.phases[i]
		st.p50, st.p99 = percentile(slices.Clone(lat[i]), 0.50), percentile(lat[i], 0.99)
		st.grants = p.grantsTo - p.grantsFrom
		for j := p.seenFrom; j < p.seenTo; j++ {
			if dupAt[j] {
				st.sentTwice++
			}
		}
		r.total.grants += st.grants
		r.total.sentTwice += st.sentTwice
	}
	r.total.p50, r.total.p99 = percentile(slices.Clone(all), 0.50), percentile(all, 0.99)
	r.outages = outages(run.records, afterRevocation, func(session int) time.Time {
		if rv, ok := revokedAt[session]; ok && !rv.requested.IsZero() {
			return rv.requested
		}
		return run.end
	})
	for _, rec := range run.probes {
		if served(rec) {
			r.revokedServed = append(r.revokedServed, rec)
		}
	}

	// Each session lives an access token lifetime every
	// soakAccessTokenTTL until its revocation or the end of the load.
	for i := range s.sessions {
		end := run.end
		if rv, ok := revokedAt[i]; ok && !rv.answered.IsZero() {
			end = rv.answered
		}
		r.expiries += float64(end.Sub(run.start)) / float64(soakAccessTokenTTL)
	}
	r.grantsPerExp = float64(run.grants) / r.expiries
	r.okPerExp = float64(run.refreshesOK) / r.expiries

	// A session is lost if it got a 401 it did not owe to a revocation,
	// or if the final probe of a session nobody revoked is not 200.
	for i := range s.sessions {
		_, revoked := revokedAt[i]
		var loss *soakLoss
		for _, rec := range run.records {
			if rec.session != i || rec.status != http.StatusUnauthorized {
				continue
			}
			if revoked {
				rv := revokedAt[i]
				if rv.requested.IsZero() || !rec.answered().Before(rv.requested) {
					continue
				}
			}
			loss = &soakLoss{session: i, reason: "401 " + rec.code + " during the run", first: rec}
			break
		}
		if p := run.probes[i]; loss == nil && !revoked && p.status != http.StatusOK {
			loss = &soakLoss{session: i, reason: fmt.Sprintf("final probe %s", p.outcome()), first: p, probe: true}
		}
		if loss != nil {
			r.lost = append(r.lost, *loss)
		}
	}
	return r
}

func (st *soakPhaseStats) add(rec soakRecord) {
	st.requests++
	if rec.status != http.StatusOK {
		st.hit[rec.session] = true
	}
	switch {
	case rec.status == http.StatusOK:
		st.ok++
	case rec.status == http.StatusBadGateway && rec.code == "idp_unavailable":
		st.idpUnavailable++
	case rec.status == http.StatusServiceUnavailable && rec.code == "store_unavailable":
		st.storeUnavailable++
	case rec.status == 0:
		st.noAnswer++
		st.others[rec.outcome()]++
	default:
		st.other++
		st.others[rec.outcome()]++
	}
}

// outcome is a record's status and error code, e.g. "401 invalid_token".
func (r soakRecord) outcome() string {
	if r.status == 0 {
		return "no answer (" + r.code + ")"
	}
	return strings.TrimSpace(strconv.Itoa(r.status) + " " + r.code)
}

func (st soakPhaseStats) okShare() float64 {
	if st.requests == 0 {
		return 0
	}
	return 100 * float64(st.ok) / float64(st.requests)
}

// print writes the report: the timeline, the phase table, the guarantees,
// and each loss with the brokers' log lines that mention the session.
func (r *soakReport) print(w io.Writer, s *soakStack, run *soakRun) {
	rel := func(t time.Time) string { return fmt.Sprintf("%+.1fs", t.Sub(run.start).Seconds()) }
	clock := func(t time.Time) string { return t.Format("15:04:05.000") }

	fmt.Fprintf(w, "\nFault soak: %d sessions, %d clients, %d brokers, access tokens of %v refreshed %v before expiry; load from %s to %s (%.0f s); logs in %s\n",
		len(s.sessions), soakClients, len(s.brokers), soakAccessTokenTTL, soakRefreshSkew, clock(run.start), clock(run.end), run.end.Sub(run.start).Seconds(), filepath.Dir(s.brokers[0].logPath))

	fmt.Fprintf(w, "\nTimeline:\n")
	var lines []soakEvent
	for _, p := range run.phases {
		lines = append(lines, soakEvent{p.start, "phase: " + strings.TrimSpace(p.name)})
	}
	lines = append(lines, run.events...)
	for _, rv := range run.revocations {
		what := fmt.Sprintf("revocation of session %d (%s) asked %s", rv.session, s.sessions[rv.session].SessionID, rv.phase)
		lines = append(lines, soakEvent{rv.requested, what})
		if rv.answered.IsZero() {
			lines = append(lines, soakEvent{rv.requested, fmt.Sprintf("  no 204 after %d attempts: %s", rv.attempts, rv.err)})
		} else {
			lines = append(lines, soakEvent{rv.answered, fmt.Sprintf("  204 for session %d from %s after %d attempts, %.0f ms", rv.session, s.brokers[rv.broker].name, rv.attempts, float64(rv.answered.Sub(rv.requested))/float64(time.Millisecond))})
		}
	}
	slices.SortStableFunc(lines, func(a, b soakEvent) int { return a.at.Compare(b.at) })
	for _, e := range lines {
		fmt.Fprintf(w, "  %s %8s  %s\n", clock(e.at), rel(e.at), e.what)
	}

	fmt.Fprintf(w, "\nPer phase (requests on sessions not being revoked, by the time they were sent; latency of every answer):\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "phase\tfrom\tto\trequests\t200 %%\t502 idp_unavailable\t503 store_unavailable\tno answer\tother\tsessions hit\tp50 ms\tp99 ms\trefresh grants\tRTs sent twice\t\n")
	row := func(name, from, to string, st soakPhaseStats) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.2f\t%d\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t%d\t%d\t\n",
			name, from, to, st.requests, st.okShare(), st.idpUnavailable, st.storeUnavailable, st.noAnswer, st.other, len(st.hit), st.p50, st.p99, st.grants, st.sentTwice)
	}
	for i, p := range run.phases {
		row(p.name, rel(p.start), rel(p.end), r.phases[i])
	}
	row("all", rel(run.start), rel(run.end), r.total)
	tw.Flush()
	for i, p := range run.phases {
		if len(r.phases[i].others) > 0 {
			fmt.Fprintf(w, "  %s, other answers: %s\n", strings.TrimSpace(p.name), formatCounts(r.phases[i].others))
		}
	}

	// The longest outage of each phase, since a long fault (the IdP's
	// pause) would otherwise hide the short ones that outlast their fault.
	fmt.Fprintf(w, "\nLongest outage of one session begun in each phase (first failed request sent to the next 200 sent):\n")
	for _, p := range run.phases {
		i := slices.IndexFunc(r.outages, func(o soakOutage) bool { return !o.from.Before(p.start) && o.from.Before(p.end) })
		if i < 0 {
			continue
		}
		o := r.outages[i]
		end := "next 200 at " + rel(o.to)
		if o.open {
			end = "no 200 until the session's revocation or the end of the load at " + rel(o.to)
		}
		fmt.Fprintf(w, "  %6.1f s  session %d (%s) from %s (%s, in %s), %s: %s\n",
			o.to.Sub(o.from).Seconds(), o.session, s.sessions[o.session].SessionID, clock(o.from), rel(o.from), run.phaseAt(o.from), end, formatCounts(o.answers))
	}

	fmt.Fprintf(w, "\nGuarantees:\n")
	fmt.Fprintf(w, "  refresh grants per session per access-token lifetime: %.3f (%d grants over %.0f lifetimes; a session in constant use refreshes every %v, i.e. %.2f per lifetime, less while the IdP is paused)\n",
		r.grantsPerExp, run.grants, r.expiries, soakAccessTokenTTL-soakRefreshSkew, float64(soakAccessTokenTTL)/float64(soakAccessTokenTTL-soakRefreshSkew))
	fmt.Fprintf(w, "  successful refreshes per session per lifetime:        %.3f (%d)\n", r.okPerExp, run.refreshesOK)
	fmt.Fprintf(w, "  refresh tokens sent twice to the IdP:                %d (of %d presented)\n", r.sentTwice, len(run.seen))
	fmt.Fprintf(w, "  leases deleted during the lease fault:               %d\n", run.leasesDeleted)
	fmt.Fprintf(w, "  sessions lost (goal 0):                              %d\n", len(r.lost))
	fmt.Fprintf(w, "  revoked sessions served after the 204 (must be 0):   %d\n", len(r.revokedServed))
	probeOK := 0
	for _, p := range run.probes {
		if p.status == http.StatusOK {
			probeOK++
		}
	}
	fmt.Fprintf(w, "  final probe: %d of %d sessions answered 200 (%d revoked)\n", probeOK, len(run.probes), len(run.revocations))

	for i, rec := range r.revokedServed {
		if i == 20 {
			fmt.Fprintf(w, "  ... %d more\n", len(r.revokedServed)-i)
			break
		}
		rv := run.revocations[slices.IndexFunc(run.revocations, func(rv *soakRevocation) bool { return rv.session == rec.session })]
		note := ""
		if rec.broker != rv.broker && rec.at.Sub(rv.answered) < soakEndGrace {
			note = "; within the contract's 100 ms for another replica"
		}
		fmt.Fprintf(w, "  SERVED AFTER REVOCATION: session %d (%s) via %s, sent %s (%.0f ms after the 204 from %s), answered in %.0f ms%s\n",
			rec.session, s.sessions[rec.session].SessionID, s.brokers[rec.broker].name, clock(rec.at),
			float64(rec.at.Sub(rv.answered))/float64(time.Millisecond), s.brokers[rv.broker].name,
			float64(rec.latency)/float64(time.Millisecond), note)
	}

	for _, l := range r.lost {
		id := s.sessions[l.session].SessionID
		phase := run.phaseAt(l.first.at)
		fmt.Fprintf(w, "\nLOST: session %d (%s): %s; first at %s (%s, in %s) via %s\n",
			l.session, id, l.reason, clock(l.first.at), rel(l.first.at), phase, s.brokers[l.first.broker].name)
		bad := 0
		for _, rec := range run.records {
			if rec.session == l.session && rec.status == http.StatusUnauthorized {
				bad++
			}
		}
		fmt.Fprintf(w, "  401s on this session during the run: %d; final probe: %s\n", bad, run.probes[l.session].outcome())
		fmt.Fprintf(w, "  broker log lines mentioning it from 20 s before to 2 s after (successful requests left out):\n")
		for _, line := range s.logLines(id, l.first.at.Add(-20*time.Second), l.first.answered().Add(2*time.Second), 80) {
			fmt.Fprintf(w, "    %s\n", line)
		}
	}
	fmt.Fprintln(w)
}

func formatCounts(m map[string]int) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// logLines returns up to limit lines of the brokers' logs that mention the
// session id and were written between from and to, oldest first, each
// prefixed with its broker; request lines with status 200 are left out.
// When more lines match, the last limit are kept: those nearest the loss.
func (s *soakStack) logLines(id string, from, to time.Time, limit int) []string {
	type line struct {
		at   time.Time
		text string
	}
	var lines []line
	for _, p := range s.brokers {
		f, err := os.Open(p.logPath)
		if err != nil {
			lines = append(lines, line{from, p.name + ": " + err.Error()})
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			text := sc.Text()
			if !strings.Contains(text, id) {
				continue
			}
			var e struct {
				Time   time.Time `json:"time"`
				Msg    string    `json:"msg"`
				Status int       `json:"status"`
			}
			if json.Unmarshal([]byte(text), &e) != nil {
				lines = append(lines, line{from, p.name + " " + text})
				continue
			}
			if e.Time.Before(from) || e.Time.After(to) || (e.Msg == "request" && e.Status == http.StatusOK) {
				continue
			}
			lines = append(lines, line{e.Time, p.name + " " + text})
		}
		f.Close()
	}
	slices.SortStableFunc(lines, func(a, b line) int { return a.at.Compare(b.at) })
	out := make([]string, 0, len(lines))
	if len(lines) > limit {
		out = append(out, fmt.Sprintf("(%d earlier lines left out)", len(lines)-limit))
		lines = lines[len(lines)-limit:]
	}
	for _, l := range lines {
		out = append(out, l.text)
	}
	if len(out) == 0 {
		out = append(out, "(none)")
	}
	return out
}

// reportMetrics reports the guarantees and, per phase, the share of 200s
// and the p99 latency, and a zero ns/op: the length of the run is set by
// the timeline, not measured.
func (r *soakReport) reportMetrics(b *testing.B, run *soakRun) {
	b.ReportMetric(r.grantsPerExp, "grants/session-ttl")
	b.ReportMetric(r.okPerExp, "refreshes/session-ttl")
	b.ReportMetric(float64(r.sentTwice), "rt-sent-twice")
	b.ReportMetric(float64(len(r.lost)), "sessions-lost")
	b.ReportMetric(float64(len(r.revokedServed)), "revoked-served")
	b.ReportMetric(float64(r.total.requests), "requests")
	b.ReportMetric(r.total.okShare(), "ok-%")
	b.ReportMetric(r.total.p99, "p99-ms")
	for i, p := range run.phases {
		b.ReportMetric(r.phases[i].okShare(), "ok-%:"+p.slug)
		b.ReportMetric(r.phases[i].p99, "p99-ms:"+p.slug)
	}
	b.ReportMetric(0, "ns/op")
}
