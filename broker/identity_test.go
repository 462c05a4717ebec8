package broker_test

import (
	"strings"
	"testing"
	"time"
)

// A refreshed ID token that fails the checks of a code grant's ID token is
// ignored: the session keeps its ID token, and the refresh still counts.
func TestRefreshedIDTokenChecks(t *testing.T) {
	e := newEnv(t, time.Minute)
	a := e.replica(replicaOptions{})
	ns := e.login(a)
	id := ns.Session.ID
	client := e.idp.ClientID()
	tests := []struct {
		name    string
		rewrite func(c map[string]any)
		kept    bool
	}{
		{"no sub", func(c map[string]any) { delete(c, "sub") }, false},
		{"two audiences without azp", func(c map[string]any) { c["aud"] = []string{client, "another-client"}; delete(c, "azp") }, false},
		{"azp another client", func(c map[string]any) { c["azp"] = "another-client" }, false},
		{"iat a day ahead", func(c map[string]any) { c["iat"] = e.clock.Now().Add(24 * time.Hour).Unix() }, false},
		{"another sub", func(c map[string]any) { c["sub"] = "someone-else" }, false},
		{"two audiences, azp this client", func(c map[string]any) { c["aud"] = []string{client, "another-client"}; c["azp"] = client }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := storedSession(t, a, id)
			const ignored = "ignoring an ID token from a refresh"
			logged := strings.Count(a.logs.String(), ignored)
			e.idp.RewriteIDTokens(tt.rewrite)
			defer e.idp.RewriteIDTokens(nil)
			e.expire(a, id)
			if got := mustAccessToken(t, a, ns.Handle); got == before.Tokens.AccessToken {
				t.Fatal("the access token was not refreshed")
			}
			after := storedSession(t, a, id)
			if after.Generation != before.Generation+1 {
				t.Fatalf("generation %d after the refresh, want %d", after.Generation, before.Generation+1)
			}
			switch kept := after.Tokens.IDToken != before.Tokens.IDToken; {
			case kept && !tt.kept:
				t.Error("the session took the refreshed ID token, want it ignored")
			case !kept && tt.kept:
				t.Error("the session kept its old ID token, want the refreshed one")
			}
			if n := strings.Count(a.logs.String(), ignored) - logged; !tt.kept && n != 1 {
				t.Errorf("the log says %d times that the refreshed ID token was ignored, want once", n)
			}
		})
	}
}
