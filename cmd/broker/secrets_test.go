package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Neither Redis nor the logs ever hold a handle, token, code, verifier or
// secret in plaintext, across a full flow with refresh, errors and logout.
func TestNoSecretsAtRestOrInLogs(t *testing.T) {
	const clientSecret = "client-secret-9f8e7d"
	s := newStack(t, stackOptions{clientSecret: clientSecret, accessTokenTTL: time.Minute})
	b1, b2 := s.start(), s.start()

	code, verifier := s.authorize("nonce-xyz")
	res := do(t, b1, http.MethodPost, "/v1/sessions", "", map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI, "nonce": "nonce-xyz"})
	if res.status != http.StatusCreated {
		t.Fatalf("POST /v1/sessions = %d %s", res.status, res.body)
	}
	var c created
	res.decode(t, &c)
	do(t, b2, http.MethodGet, "/api/a", c.Session, nil)
	s.clock.Advance(55 * time.Second)
	do(t, b1, http.MethodGet, "/api/b", c.Session, nil) // refresh
	do(t, b2, http.MethodGet, "/v1/userinfo", c.Session, nil)
	do(t, b1, http.MethodGet, "/v1/session", c.Session+"x", nil)
	do(t, b1, http.MethodPost, "/v1/sessions", "", map[string]string{"code": code, "code_verifier": verifier, "redirect_uri": redirectURI})

	_, handleSecret, _ := strings.Cut(c.Session, ".")
	secrets := map[string]string{
		"handle":        c.Session,
		"handle secret": handleSecret,
		"id token":      c.IDToken,
		"code":          code,
		"verifier":      verifier,
		"client secret": clientSecret,
	}
	for auth := range s.upstream.authorizations() {
		tok := strings.TrimPrefix(auth, "Bearer ")
		secrets["access token "+tok[:min(6, len(tok))]] = tok
	}
	for i, rt := range s.idp.IssuedRefreshTokens() {
		secrets[fmt.Sprintf("refresh token %d", i)] = rt
	}
	if len(secrets) < 9 {
		t.Fatalf("collected %d secrets, want handle, tokens of two grants and the rest", len(secrets))
	}

	// Check the session is still live, so its keys are there to read.
	if res := do(t, b1, http.MethodGet, "/v1/session", c.Session, nil); res.status != http.StatusOK {
		t.Fatalf("session not live: %d", res.status)
	}
	dump := dumpRedis(t, s)
	logs := s.allLogs()
	if !strings.Contains(logs, c.SessionID) {
		t.Errorf("the logs do not name the session id; the check below would be vacuous")
	}
	for name, secret := range secrets {
		if strings.Contains(dump, secret) {
			t.Errorf("Redis holds the %s in plaintext", name)
		}
		if strings.Contains(logs, secret) {
			t.Errorf("the logs hold the %s", name)
		}
	}
}

// dumpRedis renders every key and value of the stack's Redis.
func dumpRedis(t *testing.T, s *stack) string {
	t.Helper()
	ctx := context.Background()
	rdb := s.redis.Client(t)
	var b strings.Builder
	iter := rdb.Scan(ctx, 0, "*", 100).Iterator()
	n := 0
	for iter.Next(ctx) {
		key := iter.Val()
		n++
		fmt.Fprintf(&b, "%s ", key)
		switch typ := rdb.Type(ctx, key).Val(); typ {
		case "string":
			b.WriteString(rdb.Get(ctx, key).Val())
		case "hash":
			fmt.Fprint(&b, rdb.HGetAll(ctx, key).Val())
		case "zset":
			fmt.Fprint(&b, rdb.ZRangeWithScores(ctx, key, 0, -1).Val())
		case "set":
			fmt.Fprint(&b, rdb.SMembers(ctx, key).Val())
		case "list":
			fmt.Fprint(&b, rdb.LRange(ctx, key, 0, -1).Val())
		case "stream":
			fmt.Fprint(&b, rdb.XRange(ctx, key, "-", "+").Val())
		default:
			t.Errorf("key %s has unexpected type %s", key, typ)
		}
		b.WriteString("\n")
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if n < 2 {
		t.Fatalf("Redis has %d keys, want the session and its index at least", n)
	}
	return b.String()
}

// A handle sent where it does not belong (an operator pasting it where a
// session id or subject is expected, an app sending it in a path or as its
// request id) leaves no secret in any log line.
func TestHandleOutOfPlaceIsNotLogged(t *testing.T) {
	s := newStack(t, stackOptions{})
	b := s.start()
	c := s.login(b)
	_, secret, _ := strings.Cut(c.Session, ".")

	for _, req := range []struct{ method, path string }{
		{http.MethodGet, "/admin/v1/sessions/" + c.Session},
		{http.MethodDelete, "/admin/v1/sessions/" + c.Session},
		{http.MethodGet, "/admin/v1/users/" + c.Session + "/sessions"},
		{http.MethodDelete, "/admin/v1/users/" + c.Session + "/sessions"},
		{http.MethodGet, "/admin/v1/nothing/" + c.Session},
	} {
		res := s.admin(b, req.method, req.path)
		if res.status >= 500 {
			t.Errorf("%s %s = %d, want a 2xx or 4xx", req.method, req.path, res.status)
		}
	}
	doURL(t, http.MethodGet, b.admin+"/admin/v1/sessions/"+c.Session, "wrong-token", nil, nil)
	do(t, b, http.MethodGet, "/api/"+c.Session, c.Session, nil)
	do(t, b, http.MethodGet, "/nothing/"+c.Session, "", nil)
	doURL(t, http.MethodGet, b.base+"/v1/session", c.Session, nil, http.Header{"X-Request-Id": {c.Session}})

	logs := b.logs.String()
	if strings.Contains(logs, secret) {
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, secret) {
				t.Errorf("a log line holds the handle's secret: %s", line)
			}
		}
	}
	if !strings.Contains(logs, "/admin/v1/sessions/"+c.SessionID+".[redacted]") {
		t.Errorf("the access log does not show the admin path with the secret redacted; the check above may be vacuous")
	}
	// The session is still the user's: nothing above ended it.
	if res := do(t, b, http.MethodGet, "/v1/session", c.Session, nil); res.status != http.StatusOK {
		t.Errorf("GET /v1/session = %d, want 200", res.status)
	}
}
