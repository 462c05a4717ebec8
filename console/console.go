// Package console is the security console: server-rendered pages on the
// admin listener, under /console/, where the security team signs in with an
// admin token, finds users and sessions, ends them and reads the audit
// trail. It calls the same broker use cases as the admin API, so every end
// it makes writes the audit trail and revokes at the IdP.
package console

import (
	"bytes"
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/mobile-token-broker/broker/broker"
)

// Service is what the console needs of the broker: the admin API's use
// cases and the IdP's readiness. *broker.Service implements it.
type Service interface {
	SearchSessions(ctx context.Context, q broker.SessionQuery) (broker.SessionPage, error)
	UserSessions(ctx context.Context, sub string) ([]*broker.Session, error)
	RevokeSession(ctx context.Context, id, actor string) error
	RevokeUser(ctx context.Context, sub, actor string) (broker.UserRevocation, error)
	SearchAudit(ctx context.Context, q broker.AuditQuery) (broker.AuditPage, error)
	Ready() bool
}

var _ Service = (*broker.Service)(nil)

// Config wires the console to the broker.
type Config struct {
	Service Service
	// ActiveSessions counts the live sessions, for the overview.
	ActiveSessions func(context.Context) (int64, error)
	// Ping reports whether the session store answers, for the overview.
	Ping func(context.Context) error
	// Activity is the last hour's activity; it must be the broker.Metrics
	// the service reports to.
	Activity *Activity
	// IdleTimeout and MaxLifetime bound a sign-in; zero takes
	// DefaultIdleTimeout and DefaultMaxLifetime.
	IdleTimeout, MaxLifetime time.Duration
	// Now is the clock; default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Admission is how the HTTP edge admits admins: the same tokens, and the
// same budget and audit event for refusals, as the admin API.
type Admission struct {
	// Authenticate returns the name of the admin token presented.
	Authenticate func(token string) (actor string, ok bool)
	// Refused records a refused sign-in (an admin.denied event saying
	// why) against the refusals' rate limit; it reports false, recording
	// nothing, when the client is over that budget.
	Refused func(c echo.Context, why string) bool
}

// Console serves the security console.
type Console struct {
	cfg     Config
	log     *slog.Logger
	signIns *signIns
	pages   map[string]*template.Template
	cop     *http.CrossOriginProtection
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// New builds the console.
func New(cfg Config) (*Console, error) {
	if cfg.Service == nil || cfg.ActiveSessions == nil || cfg.Ping == nil || cfg.Activity == nil {
		return nil, errors.New("console: service, active sessions, ping and activity are required")
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = DefaultMaxLifetime
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	return &Console{
		cfg: cfg, log: cfg.Logger, pages: pages,
		signIns: newSignIns(cfg.IdleTimeout, cfg.MaxLifetime),
		cop:     http.NewCrossOriginProtection(),
	}, nil
}

// Prefix is where the console is served.
const Prefix = "/console"

// Bounds of what the console reads from a request.
const (
	// maxFormBytes bounds a form's body.
	maxFormBytes = 16 << 10
	// maxValueLen bounds every search and filter value; a subject is at
	// most 255 characters (OpenID Connect Core 1.0 section 2).
	maxValueLen = 1024
	// maxTokenLen bounds the admin token of the sign-in form.
	maxTokenLen = 4096
	// pageSize is the sessions or events a page lists.
	pageSize = 50
)

// Cookies.
const (
	sessionCookie = "console_session"
	// preCookie carries the sign-in form's CSRF token before there is a
	// sign-in (a double-submitted token).
	preCookie = "console_signin"
)

// Register adds the console's routes to g, the /console group of the admin
// listener.
func (con *Console) Register(g *echo.Group, adm Admission) {
	g.Use(con.headers)
	g.GET("", func(c echo.Context) error { return c.Redirect(http.StatusFound, Prefix+"/") })
	g.GET("/static/*", con.static)
	g.GET("/signin", con.signInPage)
	g.POST("/signin", con.signIn(adm), con.sameOrigin)
	g.POST("/signout", con.signOut, con.sameOrigin, con.requireSignIn, con.checkCSRF)

	g.GET("/", con.overview, con.requireSignIn)
	g.GET("/sessions", con.sessions, con.requireSignIn)
	g.GET("/user", con.user, con.requireSignIn)
	g.GET("/user/end-all", con.confirmEndAll, con.requireSignIn)
	g.POST("/user/end-all", con.endAll, con.sameOrigin, con.requireSignIn, con.checkCSRF)
	g.POST("/session/end", con.endOne, con.sameOrigin, con.requireSignIn, con.checkCSRF)
	g.GET("/audit", con.audit, con.requireSignIn)
	g.Any("/*", func(c echo.Context) error {
		return con.fail(c, http.StatusNotFound, "There is no such page.")
	})
}

// contentSecurityPolicy allows the console's own stylesheet and nothing
// else: no script at all, no frames, forms posting only to the console.
const contentSecurityPolicy = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// headers sets the console's security headers on every answer.
func (con *Console) headers(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		return next(c)
	}
}

// sameOrigin refuses a state-changing request another origin sent (by the
// browser's Sec-Fetch-Site, or else its Origin against Host), and bounds
// the form's body.
func (con *Console) sameOrigin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if err := con.cop.Check(r); err != nil {
			return con.fail(c, http.StatusForbidden, "This form was sent from another site and is refused.")
		}
		r.Body = http.MaxBytesReader(c.Response(), r.Body, maxFormBytes)
		if err := r.ParseForm(); err != nil {
			return con.fail(c, http.StatusBadRequest, "The form could not be read.")
		}
		return next(c)
	}
}

// ctxSignIn is the Echo context key of the request's sign-in.
const ctxSignIn = "console_signin"

// requireSignIn admits a request with a live sign-in; others are sent to
// the sign-in page (a form post is refused instead).
func (con *Console) requireSignIn(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		var in *signIn
		if ck, err := c.Cookie(sessionCookie); err == nil {
			in = con.signIns.find(ck.Value, con.cfg.Now())
		}
		if in == nil {
			if c.Request().Method != http.MethodGet {
				return con.fail(c, http.StatusUnauthorized, "You are not signed in, or your sign-in has ended.")
			}
			return c.Redirect(http.StatusSeeOther, Prefix+"/signin")
		}
		c.Set(ctxSignIn, in)
		return next(c)
	}
}

// checkCSRF refuses a form without the sign-in's CSRF token.
func (con *Console) checkCSRF(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		in := signedIn(c)
		got := c.Request().PostForm.Get("csrf")
		if in == nil || subtle.ConstantTimeCompare([]byte(got), []byte(in.csrf)) != 1 {
			return con.fail(c, http.StatusForbidden, "This form is out of date or was not sent by the console. Reload the page and try again.")
		}
		return next(c)
	}
}

func signedIn(c echo.Context) *signIn {
	in, _ := c.Get(ctxSignIn).(*signIn)
	return in
}

// setCookie sets a console cookie: HttpOnly, SameSite=Strict, scoped to the
// console's path, Secure when the request came over TLS. maxAge < 0
// deletes it.
func setCookie(c echo.Context, name, value string, maxAge int) {
	c.SetCookie(&http.Cookie{
		Name:     name,
		Value:    value,
		Path:     Prefix + "/",
		MaxAge:   maxAge,
		HttpOnly: true,
		Secure:   c.Request().TLS != nil,
		SameSite: http.SameSiteStrictMode,
	})
}

// static serves the embedded stylesheet.
func (con *Console) static(c echo.Context) error {
	name := c.Param("*")
	b, err := fs.ReadFile(staticFS, "static/"+name)
	if err != nil || strings.Contains(name, "..") {
		return con.fail(c, http.StatusNotFound, "There is no such page.")
	}
	ct := "application/octet-stream"
	if strings.HasSuffix(name, ".css") {
		ct = "text/css; charset=utf-8"
	}
	// The stylesheet changes only with the binary.
	c.Response().Header().Set("Cache-Control", "private, max-age=3600")
	return c.Blob(http.StatusOK, ct, b)
}

// page is what every page's template receives.
type page struct {
	Title string
	// Nav names the navigation entry of the page.
	Nav string
	// Actor and CSRF are empty when nobody is signed in.
	Actor string
	CSRF  string
	// Notice and Problem are messages shown at the top.
	Notice, Problem string
	Data            any
}

// render writes a page with the given status.
func (con *Console) render(c echo.Context, status int, name string, p page) error {
	if in := signedIn(c); in != nil {
		p.Actor, p.CSRF = in.actor, in.csrf
	}
	t := con.pages[name]
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", p); err != nil {
		con.log.ErrorContext(c.Request().Context(), "console page failed to render", "page", name, "error", err)
		return c.String(http.StatusInternalServerError, "The page could not be shown.")
	}
	return c.HTMLBlob(status, buf.Bytes())
}

// fail shows an error page.
func (con *Console) fail(c echo.Context, status int, message string) error {
	return con.render(c, status, "error", page{Title: http.StatusText(status), Problem: message})
}

// failErr shows the error page of a broker error, never its internal
// detail.
func (con *Console) failErr(c echo.Context, err error) error {
	switch broker.ErrorCode(err) {
	case broker.CodeInvalidRequest:
		if errors.Is(err, broker.ErrBadCursor) {
			return con.fail(c, http.StatusBadRequest, "This page link is no longer valid; start the search again.")
		}
		return con.fail(c, http.StatusBadRequest, "The request is not valid.")
	case broker.CodeStoreUnavailable:
		return con.fail(c, http.StatusServiceUnavailable, "The session store is unavailable; try again shortly.")
	}
	con.log.ErrorContext(c.Request().Context(), "console request failed", "path", c.Path(), "error", err)
	return con.fail(c, http.StatusInternalServerError, "Something went wrong; the broker's log says what.")
}

// parsePages parses each page with the layout.
func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"when": func(t time.Time) string {
			if t.IsZero() {
				return "-"
			}
			return t.UTC().Format("2006-01-02 15:04:05") + " UTC"
		},
		"dict": func(kv ...any) (map[string]any, error) {
			if len(kv)%2 != 0 {
				return nil, errors.New("dict: odd number of arguments")
			}
			m := make(map[string]any, len(kv)/2)
			for i := 0; i < len(kv); i += 2 {
				k, ok := kv[i].(string)
				if !ok {
					return nil, errors.New("dict: keys are strings")
				}
				m[k] = kv[i+1]
			}
			return m, nil
		},
		"plural": func(n int, one, many string) string {
			if n == 1 {
				return fmt.Sprintf("%d %s", n, one)
			}
			return fmt.Sprintf("%d %s", n, many)
		},
	}
	layout, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, err
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.Must(layout.Clone()).ParseFS(templateFS, n)
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", n, err)
		}
		pages[name] = t
	}
	return pages, nil
}
