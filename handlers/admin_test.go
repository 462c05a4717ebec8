package handlers

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"
)

func TestAdminTokenWarnings(t *testing.T) {
	tokens, err := ParseAdminTokens("ci:short,ci:0123456789abcdef,0123456789abcdefXYZ")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(AdminTokenWarnings(tokens), "\n")
	for _, want := range []string{"entry 1 (ci) is shorter than 16", "entries 1 and 2 are both named \"ci\""} {
		if !strings.Contains(got, want) {
			t.Errorf("warnings %q lack %q", got, want)
		}
	}
	if strings.Contains(got, "short,") || strings.Contains(got, "0123456789abcdef") {
		t.Errorf("warnings %q show a token", got)
	}
	if w := AdminTokenWarnings(tokens[2:]); len(w) != 0 {
		t.Errorf("a long unique token draws warnings %q", w)
	}
}

func TestParseAdminTokens(t *testing.T) {
	const (
		tok1 = "0123456789abcdef"
		tok2 = "fedcba9876543210-x"
	)
	valid := []struct {
		name, spec string
		want       []string // names
	}{
		{"unset", "", nil},
		{"unnamed", tok1, []string{"admin"}},
		{"named", "secops:" + tok1, []string{"secops"}},
		{"several with spaces", " secops:" + tok1 + " , oncall@example.com:" + tok2, []string{"secops", "oncall@example.com"}},
		{"token with a colon after a name", "ci:" + tok1 + ":more", []string{"ci"}},
		{"unnamed and named", tok1 + ",ci:" + tok2, []string{"admin", "ci"}},
		{"empty entries skipped", tok1 + ",,ci:" + tok2 + ",", []string{"admin", "ci"}},
		{"blank", "  ", nil},
		{"short token kept", "ci:" + tok1[:10], []string{"ci"}},
		{"name with a space", "sec ops:" + tok1, []string{"sec ops"}},
		{"two unnamed", tok1 + "," + tok2, []string{"admin", "admin"}},
		{"repeated token dropped", "a:" + tok1 + ",b:" + tok1, []string{"a"}},
	}
	for _, tt := range valid {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAdminTokens(tt.spec)
			if err != nil {
				t.Fatalf("ParseAdminTokens = %v, want no error", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("ParseAdminTokens = %v, want names %v", got, tt.want)
			}
			for i, at := range got {
				if at.Name != tt.want[i] {
					t.Errorf("token %d named %q, want %q", i, at.Name, tt.want[i])
				}
			}
		})
	}

	invalid := []struct {
		name, spec, want string
	}{
		{"empty token", "ci:", "entry 1: the token is empty"},
		{"empty name", ":" + tok1, "entry 1: the name before ':' is empty"},
		{"space in token", "ci:" + tok1 + " x", "entry 1: the token may hold only printable ASCII"},
		{"control character in name", "sec\tops:" + tok1, "entry 1: the name may hold only printable"},
		{"second entry bad", "ci:" + tok1 + ",x:", "entry 2: the token is empty"},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseAdminTokens(tt.spec)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseAdminTokens = %v, want an error with %q", err, tt.want)
			}
			for _, secret := range []string{tok1, tok2, tok1[:10], tok1[:15]} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q shows a token", err)
				}
			}
		})
	}
}

func TestAdminActor(t *testing.T) {
	tokens, err := ParseAdminTokens("secops:0123456789abcdef,ci:fedcba9876543210,0000000000000000")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, presented, want string
		ok                    bool
	}{
		{"first", "0123456789abcdef", "secops", true},
		{"second", "fedcba9876543210", "ci", true},
		{"unnamed", "0000000000000000", "admin", true},
		{"wrong", "0123456789abcdeX", "", false},
		{"prefix", "0123456789abcde", "", false},
		{"name and token", "secops:0123456789abcdef", "", false},
		{"empty", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := adminActor(tokens, tt.presented)
			if got != tt.want || ok != tt.ok {
				t.Errorf("adminActor(%q) = %q, %v, want %q, %v", tt.presented, got, ok, tt.want, tt.ok)
			}
		})
	}
	if _, ok := adminActor(nil, "0123456789abcdef"); ok {
		t.Error("adminActor with no tokens configured admitted a token")
	}
	if s := tokens[0].String(); strings.Contains(s, "0123456789abcdef") {
		t.Errorf("AdminToken.String() = %q shows the token", s)
	}
}

// Echo matches routes on the escaped path when the request's escaping is not
// Go's default, and then yields escaped parameters; pathParam must give the
// subject as the IdP wrote it in every case.
func TestPathParamUnescapes(t *testing.T) {
	tests := []struct {
		path, want string
	}{
		{"/admin/v1/users/auth0%7C123/sessions", "auth0|123"},
		{"/admin/v1/users/auth0%7c123/sessions", "auth0|123"},
		{"/admin/v1/users/auth0|123/sessions", "auth0|123"},
		{"/admin/v1/users/a%2Fb/sessions", "a/b"},
		{"/admin/v1/users/demo%2Duser/sessions", "demo-user"},
		{"/admin/v1/users/100%25/sessions", "100%"},
		{"/admin/v1/users/plain/sessions", "plain"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			e := echo.New()
			var got string
			e.GET("/admin/v1/users/:sub/sessions", func(c echo.Context) error {
				sub, err := pathParam(c, "sub")
				got = sub
				return err
			})
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tt.path, nil))
			if rec.Code != http.StatusOK {
				t.Fatalf("GET %s = %d, want 200", tt.path, rec.Code)
			}
			if got != tt.want {
				t.Errorf("sub = %q, want %q", got, tt.want)
			}
		})
	}
}
