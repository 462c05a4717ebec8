//go:build !nodev

package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mobile-token-broker/broker/internal/redistest"
)

// `broker dev` runs a whole stack on an embedded store, and `broker dev
// login` plays the app against it: the handle it prints calls the demo API.
func TestDevStack(t *testing.T) {
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan [2]string, 1)
	done := make(chan error, 1)
	getenv := func(k string) string {
		return map[string]string{"BROKER_LISTEN": "127.0.0.1:0", "BROKER_ADMIN_LISTEN": "127.0.0.1:0"}[k]
	}
	go func() {
		done <- runDev(ctx, getenv, "127.0.0.1:0", &out, io.Discard, &hooks{listening: func(p, a string) { ready <- [2]string{p, a} }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("broker dev stopped with %v", err)
		}
	})
	var addrs [2]string
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("broker dev: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("broker dev did not start")
	}
	issuer := regexp.MustCompile(`identity provider\s+(\S+)`).FindStringSubmatch(out.String())
	if issuer == nil {
		t.Fatalf("walkthrough does not name the identity provider:\n%s", out.String())
	}

	var handle bytes.Buffer
	if err := run(ctx, []string{"dev", "login", "--broker", "http://" + addrs[0], "--idp", issuer[1]}, getenv, &handle, io.Discard); err != nil {
		t.Fatalf("broker dev login: %v", err)
	}
	h := strings.TrimSpace(handle.String())
	res := doURL(t, http.MethodGet, "http://"+addrs[0]+"/api/whoami", h, nil, nil)
	if res.status != http.StatusOK || !strings.Contains(string(res.body), `"sub":"demo-user"`) {
		t.Fatalf("GET /api/whoami = %d %s, want 200 with the demo user's claims", res.status, res.body)
	}
	if res := doURL(t, http.MethodGet, "http://"+addrs[1]+"/readyz", "", nil, nil); res.status != http.StatusOK {
		t.Errorf("/readyz = %d, want 200", res.status)
	}

	// `dev login --dpop` binds the session to a key it saves, and `dev
	// proof` signs the proofs a bound handle needs.
	keyFile := filepath.Join(t.TempDir(), "dpop-key.json")
	handle.Reset()
	if err := run(ctx, []string{"dev", "login", "--dpop", "--dpop-key", keyFile, "--broker", "http://" + addrs[0], "--idp", issuer[1]}, getenv, &handle, io.Discard); err != nil {
		t.Fatalf("broker dev login --dpop: %v", err)
	}
	bound := strings.TrimSpace(handle.String())
	if res := doURL(t, http.MethodGet, "http://"+addrs[0]+"/api/whoami", bound, nil, nil); res.status != http.StatusUnauthorized {
		t.Errorf("GET /api/whoami with a bound handle as a bearer = %d, want 401", res.status)
	}
	for _, path := range []string{"/api/whoami", "/v1/sessions"} {
		var proof bytes.Buffer
		if err := run(ctx, []string{"dev", "proof", "--key", keyFile, "--handle", bound, "GET", "http://" + addrs[0] + path}, getenv, &proof, io.Discard); err != nil {
			t.Fatalf("broker dev proof: %v", err)
		}
		res := doURL(t, http.MethodGet, "http://"+addrs[0]+path, "", nil, http.Header{
			"Authorization": {"DPoP " + bound}, "Dpop": {strings.TrimSpace(proof.String())},
		})
		if res.status != http.StatusOK {
			t.Errorf("GET %s with a proof of `broker dev proof` = %d %s, want 200", path, res.status, res.body)
		}
	}
}

// `broker dev` with BROKER_REDIS_URL keeps its key in the user's cache
// directory: a handle saved before a restart still opens its session.
func TestDevKeepsSessionsAcrossRestarts(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	rs := redistest.Start(t)
	getenv := func(k string) string {
		return map[string]string{"BROKER_LISTEN": "127.0.0.1:0", "BROKER_ADMIN_LISTEN": "127.0.0.1:0", "BROKER_REDIS_URL": rs.URL()}[k]
	}
	start := func() (public, issuer string, stop func()) {
		var out syncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan string, 1)
		done := make(chan error, 1)
		go func() {
			done <- runDev(ctx, getenv, "127.0.0.1:0", &out, io.Discard, &hooks{listening: func(p, _ string) { ready <- p }})
		}()
		select {
		case public = <-ready:
		case err := <-done:
			t.Fatalf("broker dev: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("broker dev did not start")
		}
		m := regexp.MustCompile(`identity provider\s+(\S+)`).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("walkthrough does not name the identity provider:\n%s", out.String())
		}
		return public, m[1], func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("broker dev stopped with %v", err)
			}
		}
	}
	public, issuer, stop := start()
	var handle bytes.Buffer
	if err := run(context.Background(), []string{"dev", "login", "--broker", "http://" + public, "--idp", issuer}, getenv, &handle, io.Discard); err != nil {
		t.Fatalf("broker dev login: %v", err)
	}
	h := strings.TrimSpace(handle.String())
	stop()

	public, _, stop = start()
	defer stop()
	if res := doURL(t, http.MethodGet, "http://"+public+"/v1/session", h, nil, nil); res.status != http.StatusOK {
		t.Errorf("GET /v1/session after a restart = %d %s, want 200", res.status, res.body)
	}
}
