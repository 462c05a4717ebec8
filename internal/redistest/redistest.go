// Package redistest gives each test a real Redis: a redis-server process of
// its own on a loopback port, or the shared server named by
// BROKER_TEST_REDIS_URL.
package redistest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// EnvURL names the variable that points the tests at an existing Redis
// instead of starting redis-server.
const EnvURL = "BROKER_TEST_REDIS_URL"

const (
	// startAttempts bounds the free ports tried when redis-server loses a
	// port to another process between probing and binding.
	startAttempts = 5
	// readyTimeout bounds the wait for a started server to answer PING.
	readyTimeout = 10 * time.Second
)

// Server is a Redis used by one test.
type Server struct {
	url      string
	addr     string
	external bool

	// Set for a server this package runs.
	bin  string
	dir  string
	port int
	// args returns redis-server's arguments for a port. Restart calls it
	// again with the same port.
	args func(port int) ([]string, error)

	mu   sync.Mutex
	proc *process
}

// process is one running redis-server.
type process struct {
	cmd    *exec.Cmd
	output *lockedBuffer
	exited chan struct{}
}

// Start returns a Redis for the test.
//
// If BROKER_TEST_REDIS_URL is set, that server is used and its database is
// flushed (FLUSHDB) first; Stop, Pause, Resume and Restart then skip the
// test, as an external server is not ours to control. Otherwise Start runs
// redis-server from PATH on a free 127.0.0.1 port, without persistence, in a
// temporary directory, waits until it answers PING and kills it when the
// test ends. A missing redis-server fails the test.
func Start(t testing.TB) *Server {
	t.Helper()
	if u := os.Getenv(EnvURL); u != "" {
		return external(t, u)
	}
	return startServer(t, lookPath(t, "redis-server", " or set "+EnvURL), nil)
}

// standaloneArgs are the arguments of a server without persistence but
// its append-only file, which lets Restart bring back the data. A replica
// gets its first copy at once rather than after the default 5 s a master
// waits for more replicas to share the transfer.
func standaloneArgs(dir string, port int) []string {
	return []string{
		"--repl-diskless-sync-delay", "0",
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "yes",
		"--appendfsync", "always",
		"--dir", dir,
		"--daemonize", "no",
	}
}

// lookPath finds a Redis binary or fails the test saying how to get it.
func lookPath(t testing.TB, name, alternative string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("redistest: %s not found in PATH (%v): install Redis (e.g. apt-get install redis-server, brew install redis)%s", name, err, alternative)
	}
	return bin
}

// startServer runs bin on a free port with the arguments args returns for
// its directory and the port (those of a standalone server when nil), in a
// directory of its own, and kills it when the test ends.
func startServer(t testing.TB, bin string, args func(dir string, port int) ([]string, error)) *Server {
	t.Helper()
	if args == nil {
		args = func(dir string, port int) ([]string, error) { return standaloneArgs(dir, port), nil }
	}
	s := &Server{bin: bin, dir: t.TempDir()}
	s.args = func(port int) ([]string, error) { return args(s.dir, port) }
	t.Cleanup(func() { s.kill() })

	var errs []error
	for range startAttempts {
		port, err := freePort()
		if err != nil {
			t.Fatalf("redistest: find a free port: %v", err)
		}
		s.setPort(port)
		if err := s.launch(); err != nil {
			errs = append(errs, err)
			continue
		}
		return s
	}
	t.Fatalf("redistest: start redis-server: %v", errors.Join(errs...))
	return nil
}

func external(t testing.TB, rawURL string) *Server {
	t.Helper()
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		t.Fatalf("redistest: %s: %v", EnvURL, err)
	}
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := c.FlushDB(ctx).Err(); err != nil {
		t.Fatalf("redistest: FLUSHDB on %s: %v", EnvURL, err)
	}
	return &Server{url: rawURL, addr: opts.Addr, external: true}
}

func (s *Server) setPort(port int) {
	s.port = port
	s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s.url = "redis://" + s.addr + "/0"
}

// URL returns the server's URL, e.g. "redis://127.0.0.1:41234/0".
func (s *Server) URL() string { return s.url }

// Addr returns the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Client returns a client of the server, closed when the test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(s.url)
	if err != nil {
		t.Fatalf("redistest: parse %q: %v", s.url, err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// Stop kills the server: connections are refused until Restart.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.skipExternal(t, "Stop")
	s.kill()
}

// Restart starts the server again on the same port, after Stop or while
// running, and waits until it answers PING. The data survives: the server
// appends every write to its AOF with fsync before answering, so a killed
// server comes back as it was, like a production Redis with persistence.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.skipExternal(t, "Restart")
	s.kill()
	var errs []error
	// The port is ours again once the old process is gone, but the kernel
	// may take a moment to release it.
	for range startAttempts {
		err := s.launch()
		if err == nil {
			return
		}
		errs = append(errs, err)
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("redistest: restart redis-server on %s: %v", s.addr, errors.Join(errs...))
}

// Pause stops the server with SIGSTOP, as a hung host or a long pause of
// the process would: connections are still accepted by the kernel and
// commands are sent, but nothing is answered until Resume. A paused server
// may still be stopped, restarted or killed at the end of the test.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	s.skipExternal(t, "Pause")
	s.signal(t, "Pause", syscall.SIGSTOP)
}

// Resume continues a paused server with SIGCONT: it answers the commands
// that reached it meanwhile, even those whose clients have given up.
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	s.skipExternal(t, "Resume")
	s.signal(t, "Resume", syscall.SIGCONT)
}

func (s *Server) signal(t testing.TB, op string, sig syscall.Signal) {
	t.Helper()
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		t.Fatalf("redistest: %s: redis-server on %s is not running", op, s.addr)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("redistest: %s: signal redis-server on %s: %v", op, s.addr, err)
	}
}

func (s *Server) skipExternal(t testing.TB, op string) {
	t.Helper()
	if s.external {
		t.Skipf("redistest: %s needs a redis-server run by the test; %s points at an external server that cannot be stopped, paused or restarted", op, EnvURL)
	}
}

// launch starts redis-server on s.port and waits until it answers PING.
func (s *Server) launch() error {
	args, err := s.args(s.port)
	if err != nil {
		return err
	}
	out := &lockedBuffer{}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, output: out, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()

	if err := waitReady(s.addr, p.exited); err != nil {
		p.kill()
		return fmt.Errorf("redis-server on port %d: %w\n%s", s.port, err, lastLines(out.String(), 10))
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return nil
}

func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// kill stops the running process, if any, and waits for it to exit.
func (s *Server) kill() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

func (p *process) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}

// waitReady polls addr with PING until it answers PONG, the process exits
// or readyTimeout passes.
func waitReady(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(readyTimeout)
	var err error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("exited before answering PING")
		default:
		}
		if err = ping(addr); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no answer to PING within %v: %w", readyTimeout, err)
}

func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// freePort asks the kernel for a free loopback port. Another process may
// take it before redis-server binds it; Start then tries another.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lockedBuffer collects a process's output, written from the goroutines
// os/exec copies it with.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
