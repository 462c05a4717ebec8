package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/mobile-token-broker/broker/api"
)

// testClients holds the HTTP client of the tests that asked for one other
// than http.DefaultClient, by test.
var testClients sync.Map // testing.TB -> *http.Client

// clientFor returns the client doURL sends t's requests with. Every
// end-to-end test checks its exchanges with the broker against the OpenAPI
// description, unless BROKER_TEST_OPENAPI=0 is in the environment.
func clientFor(t testing.TB) *http.Client {
	if c, ok := testClients.Load(t); ok {
		return c.(*http.Client)
	}
	if os.Getenv("BROKER_TEST_OPENAPI") != "0" {
		v := validateAgainstOpenAPI(t, "/api")
		// Calls the tests make to the IdP or an upstream directly carry
		// no request id and are not the broker's.
		v.onlyBroker = true
		return clientFor(t)
	}
	return http.DefaultClient
}

// loadOpenAPI loads and validates the broker's OpenAPI description.
func loadOpenAPI(t testing.TB) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatalf("load api/openapi.yaml: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("api/openapi.yaml is not a valid OpenAPI 3 document: %v", err)
	}
	return doc
}

func TestOpenAPIDocumentIsValid(t *testing.T) {
	doc := loadOpenAPI(t)
	// Every operation states what its errors look like. /readyz answers 503
	// with its checks instead: probes and operators read them.
	for path, item := range doc.Paths.Map() {
		if path == "/readyz" {
			continue
		}
		for method, op := range item.Operations() {
			for code, ref := range op.Responses.Map() {
				if code[0] != '4' && code[0] != '5' {
					continue
				}
				mt := ref.Value.Content.Get("application/json")
				if mt == nil || mt.Schema == nil || mt.Schema.Ref != "#/components/schemas/Error" {
					t.Errorf("%s %s %s: the body is not the Error schema", method, path, code)
				}
			}
		}
	}
}

// openAPIValidator is a RoundTripper that checks every request and response
// against the OpenAPI description: a response must be one the operation
// documents, and a request the description refuses must be refused by the
// broker too.
type openAPIValidator struct {
	t      testing.TB
	router routers.Router
	// proxyPrefixes are the route prefixes of the stack, which the
	// description stands for with /api/{path}.
	proxyPrefixes []string

	// onlyBroker skips exchanges whose response has no X-Request-Id,
	// which no broker response lacks.
	onlyBroker bool

	mu   sync.Mutex
	seen map[string]bool // "METHOD /template STATUS"
	// held queues exchanges while a burst runs (see hold).
	held    []exchange
	holding bool
}

// exchange is one request and its response, bodies read.
type exchange struct {
	req      *http.Request
	reqBody  []byte
	resp     *http.Response
	respBody []byte
}

// validatorOf returns the validator t's requests go through, or nil.
func validatorOf(t testing.TB) *openAPIValidator {
	v, _ := clientFor(t).Transport.(*openAPIValidator)
	return v
}

// hold queues the exchanges that follow instead of checking each as it
// completes, until the returned function checks them all. A burst of
// concurrent requests (a refresh storm) runs brokers and validator in one
// process: checking during the burst would take the CPU the brokers' timing
// depends on, so it is checked after.
func (v *openAPIValidator) hold() (checkAll func()) {
	v.mu.Lock()
	v.holding = true
	v.mu.Unlock()
	return func() {
		v.mu.Lock()
		held := v.held
		v.held, v.holding = nil, false
		v.mu.Unlock()
		for _, x := range held {
			v.check(x.req, x.reqBody, x.resp, x.respBody)
		}
	}
}

// validateAgainstOpenAPI makes every request t sends through doURL go
// through an openAPIValidator, and returns it.
func validateAgainstOpenAPI(t testing.TB, proxyPrefixes ...string) *openAPIValidator {
	t.Helper()
	doc := loadOpenAPI(t)
	// The listeners' addresses are the test's own: match on paths only.
	doc.Servers = nil
	adminPaths := map[string]openapi3.Servers{}
	for path, item := range doc.Paths.Map() {
		adminPaths[path], item.Servers = item.Servers, nil
	}
	router, err := gorillamux.NewRouter(doc)
	// The router is built; the servers go back, for check to tell the
	// admin listener's paths apart.
	for path, item := range doc.Paths.Map() {
		item.Servers = adminPaths[path]
	}
	if err != nil {
		t.Fatalf("gorillamux.NewRouter: %v", err)
	}
	v := &openAPIValidator{t: t, router: router, proxyPrefixes: proxyPrefixes, seen: map[string]bool{}}
	testClients.Store(t, &http.Client{Transport: v})
	t.Cleanup(func() { testClients.Delete(t) })
	return v
}

func (v *openAPIValidator) RoundTrip(req *http.Request) (*http.Response, error) {
	var reqBody []byte
	if req.Body != nil {
		var err error
		if reqBody, err = io.ReadAll(req.Body); err != nil {
			return nil, err
		}
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	respBody, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(respBody))
	v.mu.Lock()
	if v.holding {
		v.held = append(v.held, exchange{req, reqBody, resp, respBody})
		v.mu.Unlock()
		return resp, nil
	}
	v.mu.Unlock()
	v.check(req, reqBody, resp, respBody)
	return resp, nil
}

func (v *openAPIValidator) check(req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) {
	t := v.t
	t.Helper()
	name := req.Method + " " + req.URL.Path
	if v.onlyBroker && resp.Header.Get("X-Request-Id") == "" {
		return
	}
	if resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("%s = %d without X-Request-Id", name, resp.StatusCode)
	}
	// The description stands for every proxy prefix with /api/{path}.
	lookup := req.Clone(context.Background())
	if v.isProxied(req.URL.EscapedPath()) {
		lookup.URL = &url.URL{Path: "/api/p", RawQuery: req.URL.RawQuery}
	}
	var e struct{ Error string }
	errorCode := ""
	if json.Unmarshal(respBody, &e) == nil {
		errorCode = e.Error
	}
	route, params, err := v.router.FindRoute(lookup)
	if err != nil {
		if v.onlyBroker {
			// Not the broker's, or a path only the dedicated test judges.
			return
		}
		// A path the description does not have must be a 404 not_found;
		// under /admin/v1/ the admin token is checked first.
		adminPath := strings.HasPrefix(req.URL.Path, "/admin/v1/")
		if !(resp.StatusCode == http.StatusNotFound && errorCode == "not_found" ||
			adminPath && resp.StatusCode == http.StatusUnauthorized && errorCode == "invalid_token") {
			t.Errorf("%s = %d %s: no operation of the description matches (%v), want 404 not_found", name, resp.StatusCode, respBody, err)
		}
		v.record(req.Method + " (undocumented) " + fmt.Sprint(resp.StatusCode))
		return
	}
	if len(route.PathItem.Servers) > 0 && route.Operation.Responses.Status(http.StatusNotFound) == nil &&
		resp.StatusCode == http.StatusNotFound && errorCode == "not_found" {
		// An admin listener path asked of the public listener, which the
		// description states through the path's servers.
		v.record(fmt.Sprintf("%s %s on the public listener 404", req.Method, route.Path))
		return
	}
	v.record(fmt.Sprintf("%s %s %d", req.Method, route.Path, resp.StatusCode))

	in := req.Clone(context.Background())
	in.Body = io.NopCloser(bytes.NewReader(reqBody))
	reqInput := &openapi3filter.RequestValidationInput{
		Request:    in,
		PathParams: params,
		Route:      route,
		Options: &openapi3filter.Options{
			MultiError:         true,
			AuthenticationFunc: bearerPresent,
		},
	}
	if err := openapi3filter.ValidateRequest(context.Background(), reqInput); err != nil && resp.StatusCode < 400 {
		t.Errorf("%s: the description refuses the request (%v), yet the broker answered %d", name, err, resp.StatusCode)
	}
	err = openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: reqInput,
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Body:                   io.NopCloser(bytes.NewReader(respBody)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	})
	if err != nil {
		t.Errorf("%s = %d %.300s: the response does not match the description: %v", name, resp.StatusCode, respBody, err)
	}
}

func (v *openAPIValidator) isProxied(escapedPath string) bool {
	for _, p := range v.proxyPrefixes {
		if rest, ok := strings.CutPrefix(escapedPath, p); ok && (rest == "" || rest[0] == '/') {
			return true
		}
	}
	return false
}

func (v *openAPIValidator) record(key string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.seen[key] = true
}

// missing returns the entries of want the validator has not seen.
func (v *openAPIValidator) missing(want []string) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []string
	for _, w := range want {
		if !v.seen[w] {
			out = append(out, w)
		}
	}
	return out
}

// bearerPresent accepts a request that sends "Authorization: Bearer" (or
// "Authorization: DPoP" for the dpop scheme) with a token: whether the
// token is good is the broker's to say.
func bearerPresent(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	h := in.RequestValidationInput.Request.Header.Get("Authorization")
	scheme := "Bearer "
	if in.SecurityScheme != nil && strings.EqualFold(in.SecurityScheme.Scheme, "dpop") {
		scheme = "DPoP "
	}
	if tok, ok := strings.CutPrefix(h, scheme); !ok || tok == "" {
		return fmt.Errorf("no %scredentials for %s", scheme, in.SecuritySchemeName)
	}
	return nil
}

// TestOpenAPIConformance replays every kind of exchange the contract defines
// against a real broker and checks each request and response against the
// OpenAPI description the broker serves.
func TestOpenAPIConformance(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	v := validateAgainstOpenAPI(t, "/api", "/api/orders")

	// The description, on both listeners, is the embedded one.
	for _, base := range []string{b.base, b.admin} {
		res := doURL(t, http.MethodGet, base+"/openapi.yaml", "", nil, nil)
		if res.status != http.StatusOK || !bytes.Equal(res.body, api.OpenAPI) {
			t.Errorf("GET %s/openapi.yaml = %d, want 200 and the embedded description", base, res.status)
		}
	}

	// POST /v1/sessions: every 400, then 201.
	code, verifier := s.authorize("n-openapi")
	good := map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI}
	for _, tc := range []struct {
		name   string
		body   any
		header http.Header
		want   string
	}{
		{"malformed JSON", "{", nil, "invalid_request"},
		{"empty object", map[string]string{}, nil, "invalid_request"},
		{"redirect URI not allowed", map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": "com.evil:/cb"}, nil, "invalid_request"},
		{"not JSON", "code=x", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, "invalid_request"},
		{"over 64 KiB", map[string]string{"code": strings.Repeat("x", 70<<10), "code_verifier": verifier, "redirect_uri": redirectURI}, nil, "invalid_request"},
		{"unknown code", map[string]string{"code": "nope", "code_verifier": verifier, "redirect_uri": redirectURI}, nil, "invalid_grant"},
	} {
		res := doURL(t, http.MethodPost, b.base+"/v1/sessions", "", tc.body, tc.header)
		if res.status != http.StatusBadRequest || res.errorCode(t) != tc.want {
			t.Errorf("POST /v1/sessions (%s) = %d %s, want 400 %s", tc.name, res.status, res.body, tc.want)
		}
	}
	res := doURL(t, http.MethodPost, b.base+"/v1/sessions", "", good, nil)
	if res.status != http.StatusCreated {
		t.Fatalf("POST /v1/sessions = %d %s, want 201", res.status, res.body)
	}
	var c created
	res.decode(t, &c)

	// The session's own endpoints, with a good, a bad and no handle.
	for _, path := range []string{"/v1/session", "/v1/userinfo"} {
		for _, tc := range []struct {
			handle string
			want   int
		}{{c.Session, 200}, {"", 401}, {"bogus.handle", 401}} {
			if res := do(t, b, http.MethodGet, path, tc.handle, nil); res.status != tc.want {
				t.Errorf("GET %s = %d %s, want %d", path, res.status, res.body, tc.want)
			}
		}
	}

	// The proxy: passed through, refused paths and handles, no route.
	for _, tc := range []struct {
		method, path, handle string
		body                 any
		want                 int
	}{
		{http.MethodGet, "/api/things?x=1", c.Session, nil, 200},
		{http.MethodPost, "/api/orders/42/items", c.Session, map[string]int{"qty": 1}, 200},
		{http.MethodGet, "/api", c.Session, nil, 200},
		{http.MethodGet, "/api/x", "", nil, 401},
		{http.MethodGet, "/api/x", "bogus.handle", nil, 401},
		{http.MethodGet, "/api/%2e%2e/secret", c.Session, nil, 400},
		{http.MethodGet, "/nothing", c.Session, nil, 404},
		{http.MethodGet, "/v1/nothing", "", nil, 404},
	} {
		if res := do(t, b, tc.method, tc.path, tc.handle, tc.body); res.status != tc.want {
			t.Errorf("%s %s = %d %s, want %d", tc.method, tc.path, res.status, res.body, tc.want)
		}
	}

	// The admin API.
	sub, _ := c.User["sub"].(string)
	_, token := s.adminToken()
	for _, tc := range []struct {
		method, path, token string
		want                int
	}{
		{http.MethodGet, "/admin/v1/users/" + url.PathEscape(sub) + "/sessions", token, 200},
		{http.MethodGet, "/admin/v1/users/nobody/sessions", token, 200},
		{http.MethodGet, "/admin/v1/sessions/" + c.SessionID, token, 200},
		{http.MethodGet, "/admin/v1/sessions/unknown", token, 404},
		{http.MethodGet, "/admin/v1/sessions/" + c.SessionID, "", 401},
		{http.MethodGet, "/admin/v1/sessions/" + c.SessionID, "wrong-token-wrong-token", 401},
		{http.MethodGet, "/admin/v1/audit?limit=5", token, 200},
		{http.MethodGet, "/admin/v1/audit?limit=0", token, 400},
		{http.MethodGet, "/admin/v1/audit?action=session.revoke&actor=admin&sub=x&session_id=y&since=2026-01-01T00:00:00Z&until=2036-01-01T00:00:00Z&limit=1", token, 200},
		{http.MethodGet, "/admin/v1/audit?cursor=nonsense", token, 400},
		{http.MethodGet, "/admin/v1/sessions?limit=1", token, 200},
		{http.MethodGet, "/admin/v1/sessions?sub=" + url.QueryEscape(sub) + "&session_id=" + c.SessionID, token, 200},
		{http.MethodGet, "/admin/v1/sessions?cursor=nonsense", token, 400},
		{http.MethodGet, "/admin/v1/sessions", "", 401},
		{http.MethodDelete, "/admin/v1/sessions/unknown", token, 404},
		{http.MethodGet, "/healthz", "", 200},
		{http.MethodGet, "/readyz", "", 200},
		{http.MethodGet, "/metrics", "", 200},
	} {
		if res := doURL(t, tc.method, b.admin+tc.path, tc.token, nil, nil); res.status != tc.want {
			t.Errorf("%s %s = %d %s, want %d", tc.method, tc.path, res.status, res.body, tc.want)
		}
	}
	if res := s.admin(b, http.MethodDelete, "/admin/v1/sessions/"+c.SessionID); res.status != http.StatusNoContent {
		t.Errorf("DELETE /admin/v1/sessions/{id} = %d %s, want 204", res.status, res.body)
	}
	s.login(b)
	if res := s.admin(b, http.MethodDelete, "/admin/v1/users/"+url.PathEscape(sub)+"/sessions"); res.status != http.StatusOK {
		t.Errorf("DELETE /admin/v1/users/{sub}/sessions = %d %s, want 200", res.status, res.body)
	}

	// Back-channel logout: a good token, a bad one, a body of the wrong type.
	c2 := s.login(b)
	if res := postLogout(t, b, logoutForm(s.signed(t, s.logoutClaims(sidOf(t, c2), "")))); res.status != http.StatusOK {
		t.Errorf("back-channel logout = %d %s, want 200", res.status, res.body)
	}
	if res := postLogout(t, b, logoutForm("not.a.jwt")); res.status != http.StatusBadRequest {
		t.Errorf("back-channel logout with a bad token = %d %s, want 400", res.status, res.body)
	}
	if res := doURL(t, http.MethodPost, b.base+"/v1/backchannel-logout", "", map[string]string{"logout_token": "x"}, nil); res.status != http.StatusBadRequest {
		t.Errorf("back-channel logout as JSON = %d %s, want 400", res.status, res.body)
	}

	// Logout, with and without a handle, and of an ended session.
	c3 := s.login(b)
	for _, tc := range []struct {
		handle string
		want   int
	}{{c3.Session, 204}, {c3.Session, 204}, {"", 401}} {
		if res := do(t, b, http.MethodDelete, "/v1/session", tc.handle, nil); res.status != tc.want {
			t.Errorf("DELETE /v1/session = %d %s, want %d", res.status, res.body, tc.want)
		}
	}

	// 429s, from a broker with tight limits.
	limited, err := s.tryStart(map[string]string{"BROKER_RATE_LIMIT_EXCHANGE": "1/m", "BROKER_RATE_LIMIT_INVALID": "1/m"})
	if err != nil {
		t.Fatalf("serve: %v", err)
	}
	for _, tc := range []struct{ method, path, handle string }{
		{http.MethodPost, "/v1/sessions", ""},
		{http.MethodGet, "/v1/session", "bogus.handle"},
		{http.MethodGet, "/v1/userinfo", "bogus.handle"},
		{http.MethodGet, "/api/x", "bogus.handle"},
	} {
		var res response
		for range 2 {
			res = do(t, limited, tc.method, tc.path, tc.handle, map[string]string{})
		}
		if tc.method == http.MethodGet {
			res = do(t, limited, tc.method, tc.path, tc.handle, nil)
		}
		if res.status != http.StatusTooManyRequests {
			t.Errorf("%s %s over the limit = %d %s, want 429", tc.method, tc.path, res.status, res.body)
		}
	}

	want := []string{
		"GET /openapi.yaml 200",
		"POST /v1/sessions 201", "POST /v1/sessions 400", "POST /v1/sessions 429",
		"GET /v1/session 200", "GET /v1/session 401", "GET /v1/session 429",
		"GET /v1/userinfo 200", "GET /v1/userinfo 401", "GET /v1/userinfo 429",
		"DELETE /v1/session 204", "DELETE /v1/session 401",
		"POST /v1/backchannel-logout 200", "POST /v1/backchannel-logout 400",
		"GET /api/{path} 200", "POST /api/{path} 200", "GET /api/{path} 400", "GET /api/{path} 401", "GET /api/{path} 429",
		"GET (undocumented) 404",
		"GET /admin/v1/users/{sub}/sessions 200", "DELETE /admin/v1/users/{sub}/sessions 200",
		"GET /admin/v1/sessions/{session_id} 200", "GET /admin/v1/sessions/{session_id} 401", "GET /admin/v1/sessions/{session_id} 404",
		"DELETE /admin/v1/sessions/{session_id} 204", "DELETE /admin/v1/sessions/{session_id} 404",
		"GET /admin/v1/audit 200", "GET /admin/v1/audit 400",
		"GET /admin/v1/sessions 200", "GET /admin/v1/sessions 400", "GET /admin/v1/sessions 401",
		"GET /healthz 200", "GET /readyz 200", "GET /metrics 200",
	}
	if m := v.missing(want); len(m) > 0 {
		slices.Sort(m)
		t.Errorf("exchanges never checked against the description: %q", m)
	}
}
