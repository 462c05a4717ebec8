package main

import (
	"bufio"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// received returns the requests the upstream has seen so far.
func (u *upstream) received() []*http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*http.Request(nil), u.requests...)
}

// last returns the upstream's latest request.
func (u *upstream) last(t *testing.T) *http.Request {
	t.Helper()
	reqs := u.received()
	if len(reqs) == 0 {
		t.Fatal("the upstream received no request")
	}
	return reqs[len(reqs)-1]
}

// logLines returns the broker's JSON log lines that carry request id id.
func logLines(t *testing.T, inst *instance, id string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(inst.logs.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			continue // the test's own devidp and redis lines
		}
		if line["request_id"] == id {
			out = append(out, line)
		}
	}
	return out
}

// messages returns the msg of each line.
func messages(lines []map[string]any) []string {
	var out []string
	for _, l := range lines {
		msg, _ := l["msg"].(string)
		out = append(out, msg)
	}
	return out
}

func TestRequestID(t *testing.T) {
	s := newStack(t, stackOptions{accessTokenTTL: time.Minute})
	b := s.start()

	// A sane client id is kept for the whole request: the response, the
	// access log and the broker package's own lines.
	code, verifier := s.authorize("n-rid")
	res := doURL(t, http.MethodPost, b.base+"/v1/sessions", "", map[string]string{
		"code": code, "code_verifier": verifier, "redirect_uri": redirectURI,
	}, http.Header{"X-Request-Id": {"app-login.1_A"}})
	if res.status != http.StatusCreated {
		t.Fatalf("POST /v1/sessions = %d %s, want 201", res.status, res.body)
	}
	if got := res.header.Get("X-Request-Id"); got != "app-login.1_A" {
		t.Errorf("X-Request-Id = %q, want the client's app-login.1_A", got)
	}
	var c created
	res.decode(t, &c)
	if msgs := messages(logLines(t, b, "app-login.1_A")); !containsAll(msgs, "session opened", "request") {
		t.Errorf("log lines with the login's request id: %q, want \"session opened\" and the access log \"request\"", msgs)
	}

	// The proxy passes the id on; a refresh on the way logs it too.
	s.clock.Advance(51 * time.Second) // 9s left, within the 10s skew
	res = doURL(t, http.MethodGet, b.base+"/api/rid", c.Session, nil, http.Header{"X-Request-Id": {"call-2"}})
	if res.status != http.StatusOK || res.header.Get("X-Request-Id") != "call-2" {
		t.Fatalf("GET /api/rid = %d with X-Request-Id %q, want 200 and call-2", res.status, res.header.Get("X-Request-Id"))
	}
	if got := s.upstream.last(t).Header.Get("X-Request-Id"); got != "call-2" {
		t.Errorf("the upstream got X-Request-Id %q, want call-2", got)
	}
	if msgs := messages(logLines(t, b, "call-2")); !containsAll(msgs, "session refreshed", "request") {
		t.Errorf("log lines with the call's request id: %q, want \"session refreshed\" and \"request\"", msgs)
	}
	// Without tracing, the broker adds no trace context.
	if tp := s.upstream.last(t).Header.Get("Traceparent"); tp != "" {
		t.Errorf("the upstream got traceparent %q with tracing off, want none", tp)
	}

	// Ids that are not sane tokens are replaced, and the upstream and the
	// logs get the replacement.
	for _, sent := range []string{"", "two words", `x","admin":"true`, strings.Repeat("a", 129), "caf\u00e9"} {
		res := doURL(t, http.MethodGet, b.base+"/api/rid", c.Session, nil, http.Header{"X-Request-Id": {sent}})
		got := res.header.Get("X-Request-Id")
		if got == "" || got == sent || len(got) > 128 || strings.ContainsFunc(got, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("._-", r))
		}) {
			t.Errorf("X-Request-Id sent %q: response has %q, want a fresh sane id", sent, got)
			continue
		}
		if up := s.upstream.last(t).Header.Get("X-Request-Id"); up != got {
			t.Errorf("X-Request-Id sent %q: upstream got %q, want the response's %q", sent, up, got)
		}
		if len(logLines(t, b, got)) == 0 {
			t.Errorf("no log line carries the generated request id %q", got)
		}
	}

	// Errors and the admin listener have ids too.
	if res := do(t, b, http.MethodGet, "/nothing", "", nil); res.header.Get("X-Request-Id") == "" {
		t.Errorf("a 404 has no X-Request-Id")
	}
	if res := s.admin(b, http.MethodGet, "/healthz"); res.header.Get("X-Request-Id") == "" {
		t.Errorf("GET /healthz has no X-Request-Id")
	}
}

func containsAll(have []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

// otlpReceiver is an OTLP/HTTP trace receiver, as a collector runs one.
type otlpReceiver struct {
	*httptest.Server
	mu    sync.Mutex
	spans []*tracepb.Span
	attrs map[string]string // resource attributes seen
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	rcv := &otlpReceiver{attrs: map[string]string{}}
	rcv.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		body := io.Reader(r.Body)
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		raw, err := io.ReadAll(body)
		var req coltrace.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(raw, &req)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rcv.mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			for _, kv := range rs.GetResource().GetAttributes() {
				rcv.attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
			}
			for _, ss := range rs.GetScopeSpans() {
				rcv.spans = append(rcv.spans, ss.GetSpans()...)
			}
		}
		rcv.mu.Unlock()
		out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(rcv.Close)
	return rcv
}

// span returns the received span named name in trace traceID.
func (r *otlpReceiver) span(traceID, name string) *tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.spans {
		if hex.EncodeToString(s.GetTraceId()) == traceID && s.GetName() == name {
			return s
		}
	}
	return nil
}

func TestTracing(t *testing.T) {
	rcv := newOTLPReceiver(t)
	s := newStack(t, stackOptions{env: map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.URL,
		"OTEL_SERVICE_NAME":           "broker-under-test",
	}})
	b := s.start()
	c := s.login(b)

	// The app traces too: the broker continues its trace.
	const appTrace, appSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	res := doURL(t, http.MethodGet, b.base+"/api/traced", c.Session, nil, http.Header{
		"Traceparent":  {"00-" + appTrace + "-" + appSpan + "-01"},
		"X-Request-Id": {"traced-1"},
	})
	if res.status != http.StatusOK {
		t.Fatalf("GET /api/traced = %d %s, want 200", res.status, res.body)
	}
	tp := s.upstream.last(t).Header.Get("Traceparent")
	parts := strings.Split(tp, "-")
	if len(parts) != 4 || parts[0] != "00" || parts[1] != appTrace || parts[2] == appSpan || parts[3] != "01" {
		t.Fatalf("the upstream got traceparent %q, want 00-%s-<the broker's span>-01", tp, appTrace)
	}
	// Log lines of the request carry the trace id, to join logs and traces.
	lines := logLines(t, b, "traced-1")
	if len(lines) == 0 || lines[len(lines)-1]["trace_id"] != appTrace {
		t.Errorf("log lines of the traced request = %v, want trace_id %s", lines, appTrace)
	}

	// Stopping flushes the batched spans.
	if err := b.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	server := rcv.span(appTrace, "GET /api/*")
	client := rcv.span(appTrace, "proxy /api")
	switch {
	case server == nil || client == nil:
		t.Fatalf("the receiver got no server span %q and client span %q in trace %s", "GET /api/*", "proxy /api", appTrace)
	case hex.EncodeToString(server.GetParentSpanId()) != appSpan:
		t.Errorf("server span's parent = %x, want the app's %s", server.GetParentSpanId(), appSpan)
	case server.GetKind() != tracepb.Span_SPAN_KIND_SERVER || client.GetKind() != tracepb.Span_SPAN_KIND_CLIENT:
		t.Errorf("span kinds = %v and %v, want server and client", server.GetKind(), client.GetKind())
	case hex.EncodeToString(client.GetParentSpanId()) != hex.EncodeToString(server.GetSpanId()):
		t.Errorf("the proxy span is not the child of the request's span")
	case hex.EncodeToString(client.GetSpanId()) != parts[2]:
		t.Errorf("the upstream's parent span = %s, want the proxy span %x", parts[2], client.GetSpanId())
	}
	rcv.mu.Lock()
	service := rcv.attrs["service.name"]
	rcv.mu.Unlock()
	if service != "broker-under-test" {
		t.Errorf("service.name = %q, want OTEL_SERVICE_NAME's broker-under-test", service)
	}
}

func TestTracingConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"endpoint not a URL", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT must be an absolute http(s) URL"},
		{"gRPC", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf"},
		{"unknown exporter", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER must be otlp or none"},
	} {
		env := validEnv()
		for k, v := range tc.env {
			env[k] = v
		}
		_, err := loadConfig(func(k string) string { return env[k] }, true)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: loadConfig = %v, want %q", tc.name, err, tc.want)
		}
	}
	env := validEnv()
	env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://collector:4318/"
	cfg, err := loadConfig(func(k string) string { return env[k] }, true)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.tracesEndpoint(); got != "http://collector:4318/v1/traces" {
		t.Errorf("traces endpoint = %q, want http://collector:4318/v1/traces", got)
	}
	env["OTEL_SDK_DISABLED"] = "true"
	if cfg, _ := loadConfig(func(k string) string { return env[k] }, true); cfg.tracesEndpoint() != "" {
		t.Errorf("OTEL_SDK_DISABLED=true leaves tracing on")
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key as
// PEM files and returns their paths and a pool that trusts it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "broker test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_TLS_CERT": certFile, "BROKER_TLS_KEY": keyFile}})
	b := s.start()
	b.base = "https://" + strings.TrimPrefix(b.base, "http://")
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
	}}
	testClients.Store(t, client)
	t.Cleanup(func() { testClients.Delete(t) })

	c := s.login(b)
	req, err := http.NewRequest(http.MethodGet, b.base+"/api/secure", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Session)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET /api/secure over TLS: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Errorf("GET /api/secure = %d over %s, want 200 over HTTP/2", resp.StatusCode, resp.Proto)
	}
	if got := s.upstream.last(t).Header.Get("X-Forwarded-Proto"); got != "https" {
		t.Errorf("the upstream got X-Forwarded-Proto %q, want https", got)
	}
	// The admin listener stays plain HTTP, for probes.
	if res := s.admin(b, http.MethodGet, "/healthz"); res.status != http.StatusOK {
		t.Errorf("GET /healthz on the admin listener = %d, want 200", res.status)
	}
}

func TestTLSConfig(t *testing.T) {
	certFile, keyFile, _ := selfSigned(t)
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"cert only", map[string]string{"BROKER_TLS_CERT": certFile}, "BROKER_TLS_CERT and BROKER_TLS_KEY must be set together"},
		{"key only", map[string]string{"BROKER_TLS_KEY": keyFile}, "BROKER_TLS_CERT and BROKER_TLS_KEY must be set together"},
		{"missing file", map[string]string{"BROKER_TLS_CERT": certFile + ".nope", "BROKER_TLS_KEY": keyFile}, "do not hold a usable PEM certificate"},
		{"swapped", map[string]string{"BROKER_TLS_CERT": keyFile, "BROKER_TLS_KEY": certFile}, "do not hold a usable PEM certificate"},
	} {
		env := validEnv()
		for k, v := range tc.env {
			env[k] = v
		}
		_, err := loadConfig(func(k string) string { return env[k] }, true)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: loadConfig = %v, want %q", tc.name, err, tc.want)
		}
	}
}
