package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/mobile-token-broker/broker/internal/devidp"
)

// The security console is tested in a real browser: headless Chromium,
// driven over the DevTools protocol, with JavaScript disabled throughout, as
// the console needs none.

// chromiumPath finds Chromium. Without one the browser tests skip, except
// in CI (CI=true), where they fail: .ci/run installs Chromium.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("Chromium is not installed (apt-get install chromium); the console's browser tests need it")
	}
	t.Skip("Chromium is not installed (apt-get install chromium); skipping the console's browser tests")
	return ""
}

// browser is one headless Chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context
}

// newBrowser starts Chromium with script execution disabled.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox, // the CI runs as root
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	// The first call starts the browser, whose life is the context's: no
	// timeout on it.
	if _, err := chromedp.Call(ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true}); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return &browser{t: t, ctx: ctx}
}

// get runs an action that returns a value within a minute.
func browse[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		html, _ := chromedp.Run(b.ctx, chromedp.OuterHTML(chromedp.CSS("body")))
		b.t.Fatalf("%s: %v\npage: %s", what, err, html)
	}
	return v
}

// run runs actions within a minute.
func (b *browser) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	browse(b, what, chromedp.Steps(steps...))
}

// text returns the text of the first element sel matches.
func (b *browser) text(sel string) string {
	b.t.Helper()
	return browse(b, "read "+sel, chromedp.Text(chromedp.CSS(sel), chromedp.NodeVisible))
}

// count returns how many elements sel matches.
func (b *browser) count(sel string) int {
	b.t.Helper()
	return len(browse(b, "count "+sel, chromedp.EvaluateAsDevTools[[]int](fmt.Sprintf("Array.from(document.querySelectorAll(%q)).map(() => 1)", sel))))
}

// awaitURL waits until the page's address contains part: a form that
// leads to a page like the one it was sent from is only seen to have
// arrived by its address.
func (b *browser) awaitURL(part string) {
	b.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		href := browse(b, "read the address", chromedp.EvaluateAsDevTools[string]("document.location.href"))
		if strings.Contains(href, part) {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("the page is still at %s after 10s, want an address with %q", href, part)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// screenshot saves the page as docs/console/name.png when
// CONSOLE_SCREENSHOTS=1, for the README.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	if os.Getenv("CONSOLE_SCREENSHOTS") != "1" {
		return
	}
	png := browse(b, "screenshot "+name, chromedp.FullScreenshot(100))
	dir := filepath.Join("..", "..", "docs", "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// consoleGet fetches a console page without following redirects, with the
// given cookies.
func consoleGet(t *testing.T, method, u string, form url.Values, cookies ...*http.Cookie) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func TestConsoleHeaders(t *testing.T) {
	s := newStack(t, stackOptions{})
	inst := s.start()
	for _, path := range []string{"/console/signin", "/console/nothing"} {
		res, body := consoleGet(t, http.MethodGet, inst.admin+path, nil)
		want := map[string]string{
			"Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
			"X-Content-Type-Options":  "nosniff",
			"Referrer-Policy":         "no-referrer",
			"Cache-Control":           "no-store",
			"X-Frame-Options":         "DENY",
		}
		for k, v := range want {
			if got := res.Header.Get(k); got != v {
				t.Errorf("GET %s: %s = %q, want %q", path, k, got, v)
			}
		}
		if strings.Contains(body, "<script") || strings.Contains(body, " style=") {
			t.Errorf("GET %s holds inline script or style:\n%s", path, body)
		}
	}
	// Without a sign-in, pages send to the sign-in page and forms are
	// refused.
	if res, _ := consoleGet(t, http.MethodGet, inst.admin+"/console/", nil); res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/console/signin" {
		t.Errorf("GET /console/ signed out = %d to %q, want 303 to /console/signin", res.StatusCode, res.Header.Get("Location"))
	}
	if res, _ := consoleGet(t, http.MethodPost, inst.admin+"/console/user/end-all", url.Values{"sub": {"x"}}); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST /console/user/end-all signed out = %d, want 401", res.StatusCode)
	}
	// A sign-in form posted cross-site is refused before the token is
	// looked at.
	req, _ := http.NewRequest(http.MethodPost, inst.admin+"/console/signin", strings.NewReader("token=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden {
		t.Errorf("POST /console/signin cross-site = %d, want 403", res.StatusCode)
	}
}

// signInForm fetches the sign-in page and returns its double-submit cookie
// and the form's matching token.
func signInForm(t *testing.T, admin string) (*http.Cookie, string) {
	t.Helper()
	res, body := consoleGet(t, http.MethodGet, admin+"/console/signin", nil)
	var pre *http.Cookie
	for _, c := range res.Cookies() {
		if c.Name == "console_signin" {
			pre = c
		}
	}
	_, rest, ok := strings.Cut(body, `name="csrf" value="`)
	csrf, _, _ := strings.Cut(rest, `"`)
	if pre == nil || !ok || csrf != pre.Value {
		t.Fatalf("GET /console/signin: cookie %v and form token %q, want a token double-submitted in both", pre, csrf)
	}
	return &http.Cookie{Name: pre.Name, Value: pre.Value}, csrf
}

func TestConsoleSignInRateLimited(t *testing.T) {
	s := newStack(t, stackOptions{env: map[string]string{"BROKER_RATE_LIMIT_INVALID": "2/m"}})
	inst := s.start()
	_, token := s.adminToken()
	post := func(tok string) int {
		pre, csrf := signInForm(t, inst.admin)
		res, _ := consoleGet(t, http.MethodPost, inst.admin+"/console/signin", url.Values{"csrf": {csrf}, "token": {tok}}, pre)
		return res.StatusCode
	}
	for i, want := range []int{http.StatusUnauthorized, http.StatusUnauthorized, http.StatusTooManyRequests} {
		if got := post("wrong-" + strconv.Itoa(i)); got != want {
			t.Errorf("wrong token, try %d: POST /console/signin = %d, want %d", i+1, got, want)
		}
	}
	// Refusals and the API's share one budget: the API refuses too.
	if res := doURL(t, http.MethodGet, inst.admin+"/admin/v1/audit", "wrong", nil, nil); res.status != http.StatusTooManyRequests {
		t.Errorf("GET /admin/v1/audit with a wrong token after the console's refusals = %d, want 429", res.status)
	}
	// Only refusals are counted: the right token still signs in.
	if got := post(token); got != http.StatusSeeOther {
		t.Errorf("right token after the refusals: POST /console/signin = %d, want 303", got)
	}
	denied := 0
	events, _ := s.audit(inst, "50")
	for _, e := range events {
		if e.Action == "admin.denied" && strings.HasPrefix(e.Detail, "POST /console/signin") {
			denied++
		}
	}
	if denied != 2 {
		t.Errorf("%d admin.denied events of the console's sign-in, want 2 (the refusals within the budget)", denied)
	}
	// A form without the double-submitted token is refused before the
	// token is looked at.
	res, _ := consoleGet(t, http.MethodPost, inst.admin+"/console/signin", url.Values{"token": {token}})
	if res.StatusCode != http.StatusForbidden {
		t.Errorf("POST /console/signin without the form's token = %d, want 403", res.StatusCode)
	}
}

func TestConsoleInBrowser(t *testing.T) {
	b := newBrowser(t)
	s := newStack(t, stackOptions{})
	inst := s.start()
	actor, token := s.adminToken()
	console := inst.admin + "/console"

	// Two devices of the demo user, one of another user.
	phone := s.loginFrom(inst, devidp.DemoUsername, devidp.DemoPassword, "DemoApp/1.0 (phone)")
	tablet := s.loginFrom(inst, devidp.DemoUsername, devidp.DemoPassword, "DemoApp/1.0 (tablet)")
	theirs := s.loginFrom(inst, devidp.OtherUsername, devidp.OtherPassword, "OtherApp/1.0")
	// A session of the other user bound to its device's key by DPoP.
	var bound created
	res := s.signIn(inst, devidp.OtherUsername, dpopHeaders("", proofFor(t, newTestKey(t), inst, http.MethodPost, "/v1/sessions", "", "", s.clock.Now())))
	if res.status != http.StatusCreated {
		t.Fatalf("POST /v1/sessions with a proof = %d %s, want 201", res.status, res.body)
	}
	res.decode(t, &bound)

	// Scripts are off: a page's script does not run.
	b.run("load a page with a script", chromedp.Navigate(`data:text/html,<title>before</title><script>document.title="ran"</script>`))
	if title := browse(b, "read the title", chromedp.Title()); title != "before" {
		t.Fatalf("the page's script ran (title %q): JavaScript is not disabled", title)
	}

	// Signed out, the console sends to its sign-in page.
	b.run("open the console", chromedp.Navigate(console+"/"), chromedp.WaitVisible(chromedp.ID("token")))
	b.screenshot("signin")

	t.Run("a wrong token is refused", func(t *testing.T) {
		b.run("sign in with a wrong token",
			chromedp.SendKeys(chromedp.ID("token"), "not-the-token"),
			chromedp.Click(chromedp.CSS(`button[type="submit"]`)),
			chromedp.WaitVisible(chromedp.CSS(".problem")))
		if got := b.text(".problem"); !strings.Contains(got, "not valid") {
			t.Errorf("problem = %q, want the token refused", got)
		}
		if b.count("#actor") != 0 {
			t.Error("signed in with a wrong token")
		}
		events, _ := s.audit(inst, "10")
		if len(events) == 0 || events[0].Action != "admin.denied" || !strings.Contains(events[0].Detail, "/console/signin: wrong token") {
			t.Errorf("newest audit event = %+v, want admin.denied for the console's sign-in", events)
		}
	})

	b.run("sign in",
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.CSS(`button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.ID("actor")))
	if got := b.text("#actor"); got != actor {
		t.Fatalf("signed in as %q, want %q", got, actor)
	}
	if got := b.text("#active"); got != "4" {
		t.Errorf("overview: %s active sessions, want 4", got)
	}
	if got := b.text("#opened"); got != "4" {
		t.Errorf("overview: %s opened in the last hour, want 4", got)
	}
	if got := b.text("#idp") + " " + b.text("#store"); got != "ready up" {
		t.Errorf("overview: IdP and store %q, want ready up", got)
	}
	b.screenshot("overview")

	// The session cookie is HttpOnly, SameSite=Strict, scoped to the
	// console, and is not the admin token.
	cookies, err := chromedp.Call(b.ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{console + "/"}})
	if err != nil {
		t.Fatalf("read cookies: %v", err)
	}
	var session *network.Cookie
	for _, c := range cookies.Cookies {
		if c.Name == "console_session" {
			session = c
		}
	}
	if session == nil {
		t.Fatalf("no console_session cookie among %v", cookies)
	}
	if !session.HTTPOnly || session.SameSite != network.CookieSameSiteStrict || session.Path != "/console/" || strings.Contains(session.Value, token) {
		t.Errorf("console_session: HttpOnly %v, SameSite %v, Path %q; want HttpOnly, Strict, /console/, and not the token",
			session.HTTPOnly, session.SameSite, session.Path)
	}
	sessionCookie := &http.Cookie{Name: session.Name, Value: session.Value}

	t.Run("search a user with two sessions", func(t *testing.T) {
		b.run("search by subject",
			chromedp.Navigate(console+"/sessions"),
			chromedp.WaitVisible(chromedp.ID("q")),
			chromedp.SetValue(chromedp.ID("by"), "sub"),
			chromedp.SendKeys(chromedp.ID("q"), devidp.DemoSubject),
			chromedp.Click(chromedp.CSS(`form.search button`)))
		b.awaitURL("q=" + url.QueryEscape(devidp.DemoSubject))
		b.run("read the results", chromedp.WaitVisible(chromedp.CSS("tbody tr")))
		if n := b.count("tbody tr"); n != 2 {
			t.Errorf("search by subject: %d sessions, want 2", n)
		}
		body := b.text("tbody")
		if !strings.Contains(body, phone.SessionID) || !strings.Contains(body, tablet.SessionID) || strings.Contains(body, theirs.SessionID) {
			t.Errorf("search by subject lists:\n%s\nwant %s and %s only", body, phone.SessionID, tablet.SessionID)
		}
		b.screenshot("sessions")
		b.run("search by client address",
			chromedp.Navigate(console+"/sessions?by=ip&q=127.0.0.0/8"),
			chromedp.WaitVisible(chromedp.CSS("tbody tr")))
		if n := b.count("tbody tr"); n != 4 {
			t.Errorf("search by client address 127.0.0.0/8: %d sessions, want 4", n)
		}
		b.run("search by session id",
			chromedp.Navigate(console+"/sessions?by=session_id&q="+theirs.SessionID),
			chromedp.WaitVisible(chromedp.CSS("tbody tr")))
		if got := b.text("tbody"); b.count("tbody tr") != 1 || !strings.Contains(got, devidp.OtherSubject) || !strings.Contains(got, "bearer") {
			t.Errorf("search by session id lists:\n%s\nwant the other user's bearer session", got)
		}
		b.run("search a DPoP-bound session",
			chromedp.Navigate(console+"/sessions?by=session_id&q="+bound.SessionID),
			chromedp.WaitVisible(chromedp.CSS("tbody tr")))
		if got := b.text("tbody"); b.count("tbody tr") != 1 || !strings.Contains(got, "DPoP-bound") {
			t.Errorf("search by session id lists:\n%s\nwant the session flagged DPoP-bound", got)
		}
	})

	t.Run("revoke one", func(t *testing.T) {
		b.run("open the user's page",
			chromedp.Navigate(console+"/user?sub="+url.QueryEscape(devidp.DemoSubject)),
			chromedp.WaitVisible(chromedp.ID("count")))
		if got := b.text("#count"); got != "2 live sessions" {
			t.Errorf("user page: %q, want 2 live sessions", got)
		}
		body := b.text("tbody")
		if !strings.Contains(body, "DemoApp/1.0 (phone)") || !strings.Contains(body, "127.0.0.1") {
			t.Errorf("user page lists:\n%s\nwant the user agent and client address", body)
		}
		b.screenshot("user")
		revokedBefore := len(s.idp.Revoked())
		b.run("end the phone's session",
			chromedp.Click(chromedp.CSS(fmt.Sprintf(`button[aria-label="End session %s"]`, phone.SessionID))),
			chromedp.WaitVisible(chromedp.CSS(".notice")))
		if got := b.text("#count"); got != "1 live session" {
			t.Errorf("after ending one: %q, want 1 live session", got)
		}
		if res := do(t, inst, http.MethodGet, "/api/x", phone.Session, nil); res.status != http.StatusUnauthorized {
			t.Errorf("the app's next call with the ended session = %d, want 401", res.status)
		}
		if res := do(t, inst, http.MethodGet, "/api/x", tablet.Session, nil); res.status != http.StatusOK {
			t.Errorf("the app's call with the other session = %d, want 200", res.status)
		}
		if got := len(s.idp.Revoked()) - revokedBefore; got != 1 {
			t.Errorf("the IdP saw %d revocations, want 1 (RFC 7009)", got)
		}
	})

	t.Run("a cross-site form post is refused", func(t *testing.T) {
		// A page on another site (localhost is not 127.0.0.1's site) with
		// a form aimed at the console, submitted by the signed-in admin.
		evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, `<!doctype html><form method="post" action="%s/user/end-all">
<input type="hidden" name="sub" value="%s"><input type="hidden" name="csrf" value="guess">
<button id="go" type="submit">Win a prize</button></form>`, console, devidp.OtherSubject)
		}))
		defer evil.Close()
		evilURL := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)
		b.run("submit the other site's form",
			chromedp.Navigate(evilURL),
			chromedp.WaitVisible(chromedp.ID("go")),
			chromedp.Click(chromedp.ID("go")),
			chromedp.WaitVisible(chromedp.CSS(".problem")))
		if got := b.text(".problem"); !strings.Contains(got, "another site") {
			t.Errorf("cross-site post answered %q, want it refused", got)
		}
		if res := do(t, inst, http.MethodGet, "/api/x", theirs.Session, nil); res.status != http.StatusOK {
			t.Errorf("the other user's session after the cross-site post = %d, want 200 (not ended)", res.status)
		}
		// The same post with the admin's cookie but without the form's
		// CSRF token (a client that sends no Sec-Fetch-Site) is refused too.
		res, body := consoleGet(t, http.MethodPost, console+"/user/end-all", url.Values{"sub": {devidp.OtherSubject}, "csrf": {"guess"}}, sessionCookie)
		if res.StatusCode != http.StatusForbidden {
			t.Errorf("POST without the CSRF token = %d, want 403:\n%s", res.StatusCode, body)
		}
		if res := do(t, inst, http.MethodGet, "/api/x", theirs.Session, nil); res.status != http.StatusOK {
			t.Errorf("the other user's session after a post without the CSRF token = %d, want 200 (not ended)", res.status)
		}
	})

	t.Run("revoke all", func(t *testing.T) {
		b.run("ask to end every session",
			chromedp.Navigate(console+"/user?sub="+url.QueryEscape(devidp.DemoSubject)),
			chromedp.WaitVisible(chromedp.CSS("a.danger")),
			chromedp.Click(chromedp.CSS("a.danger")),
			chromedp.WaitVisible(chromedp.ID("confirm-text")))
		if got := b.text("#confirm-text"); !strings.Contains(got, "End 1 session of "+devidp.DemoSubject) {
			t.Errorf("confirmation = %q, want it to name 1 session", got)
		}
		b.screenshot("confirm")
		revokedBefore := len(s.idp.Revoked())
		b.run("confirm",
			chromedp.Click(chromedp.CSS(`form.card button.danger`)),
			chromedp.WaitVisible(chromedp.CSS(".notice")))
		if got := b.text(".empty"); !strings.Contains(got, "no live session") {
			t.Errorf("after ending all: %q, want no live session", got)
		}
		if res := do(t, inst, http.MethodGet, "/api/x", tablet.Session, nil); res.status != http.StatusUnauthorized {
			t.Errorf("the app's call after revoke all = %d, want 401", res.status)
		}
		if res := do(t, inst, http.MethodGet, "/api/x", theirs.Session, nil); res.status != http.StatusOK {
			t.Errorf("the other user's session after revoking the demo user = %d, want 200", res.status)
		}
		if got := len(s.idp.Revoked()) - revokedBefore; got != 1 {
			t.Errorf("the IdP saw %d revocations, want 1 (RFC 7009)", got)
		}
	})

	t.Run("the audit page shows both events with the actor", func(t *testing.T) {
		b.run("filter the audit trail by subject",
			chromedp.Navigate(console+"/audit"),
			chromedp.WaitVisible(chromedp.ID("sub")),
			chromedp.SendKeys(chromedp.ID("sub"), devidp.DemoSubject),
			chromedp.Click(chromedp.CSS(`form.filters button`)))
		b.awaitURL("sub=" + url.QueryEscape(devidp.DemoSubject))
		b.run("read the trail", chromedp.WaitVisible(chromedp.ID("events")))
		rows := browse(b, "read the events", chromedp.EvaluateAsDevTools[[]string](
			`Array.from(document.querySelectorAll("#events tbody tr")).map(r => r.querySelector(".action").textContent + " " + r.querySelector(".actor").textContent)`))
		want := map[string]bool{"user.revoke " + actor: false, "session.revoke " + actor: false}
		for _, r := range rows {
			if _, ok := want[r]; ok {
				want[r] = true
			}
		}
		for ev, seen := range want {
			if !seen {
				t.Errorf("audit page rows %q lack %q", rows, ev)
			}
		}
		if n := b.count(`#events a[href^="/console/user?sub="]`); n < 2 {
			t.Errorf("%d links to the user, want one per event", n)
		}
		if n := b.count(`#events a[href*="by=session_id"]`); n < 1 {
			t.Errorf("%d links to a session, want the revoked one", n)
		}
		b.screenshot("audit")
	})

	t.Run("on a phone", func(t *testing.T) {
		b.run("phone viewport",
			chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(3), chromedp.EmulateMobile),
			chromedp.Navigate(console+"/user?sub="+url.QueryEscape(devidp.OtherSubject)),
			chromedp.WaitVisible(chromedp.ID("count")))
		scrollWidth := browse(b, "measure", chromedp.EvaluateAsDevTools[int](`document.documentElement.scrollWidth`))
		if scrollWidth > 390 {
			wide := browse(b, "find wide elements", chromedp.EvaluateAsDevTools[[]string](
				`Array.from(document.querySelectorAll("body *")).filter(e => e.getBoundingClientRect().right > 390).map(e => e.tagName + "." + e.className + " " + Math.round(e.getBoundingClientRect().right))`))
			t.Errorf("the page is %d px wide on a 390 px phone, want no sideways scroll of the page; elements past the edge: %q", scrollWidth, wide)
		}
		b.screenshot("phone")
		b.run("desktop viewport", chromedp.EmulateReset())
	})

	t.Run("sign out", func(t *testing.T) {
		b.run("sign out",
			chromedp.Navigate(console+"/"),
			chromedp.WaitVisible(chromedp.ID("actor")),
			chromedp.Click(chromedp.CSS(`form.signout button`)),
			chromedp.WaitVisible(chromedp.ID("token")))
		res, _ := consoleGet(t, http.MethodGet, console+"/", nil, sessionCookie)
		if res.StatusCode != http.StatusSeeOther {
			t.Errorf("GET /console/ with the signed-out cookie = %d, want 303 to the sign-in page", res.StatusCode)
		}
	})
}
