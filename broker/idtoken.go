package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

// idTokenSkew is how far ahead of the broker's clock an ID token's iat may
// be: the IdP's clock and the broker's differ a little, never by a day.
const idTokenSkew = time.Minute

// checkIDToken makes the checks of OIDC Core 3.1.3.7 that go-oidc's
// verifier leaves to the relying party. The verifier has checked the
// signature (step 6), iss (step 2), that aud holds the client id (step 3)
// and, for a code grant, exp (step 9). It applies to the ID token of a code
// grant and to those of refresh grants (OIDC Core 12.2: "its iss, sub and
// aud Claim Values MUST be the same as in the ID Token issued when the
// original authentication occurred").
func (s *Service) checkIDToken(idt *oidc.IDToken) error {
	// OIDC Core 2: "sub REQUIRED. Subject Identifier. A locally unique and
	// never reassigned identifier within the Issuer for the End-User".
	// Sessions are indexed by it: users without one would share the index
	// of "", and a user-wide revoke of "" would span them all.
	if idt.Subject == "" {
		return errors.New("the ID token has no sub")
	}
	var c struct {
		AZP json.RawMessage `json:"azp"`
	}
	if err := idt.Claims(&c); err != nil {
		return fmt.Errorf("the ID token's claims cannot be read: %w", err)
	}
	// OIDC Core 3.1.3.7 step 4: "If the ID Token contains multiple
	// audiences, the Client SHOULD verify that an azp Claim is present."
	// Without it, a token issued to another client that lists this one
	// among its audiences would open a session here.
	if len(idt.Audience) > 1 && c.AZP == nil {
		return errors.New("the ID token has several audiences and no azp")
	}
	// Step 5: "If an azp (authorized party) Claim is present, the Client
	// SHOULD verify that its client_id is the Claim Value."
	if c.AZP != nil {
		var azp string
		if err := json.Unmarshal(c.AZP, &azp); err != nil || azp != s.cfg.ClientID {
			return errors.New("the ID token's azp is another client")
		}
	}
	// Step 10: "The iat Claim can be used to reject tokens that were issued
	// too far away from the current time [...]. The acceptable range is
	// Client specific." A token from the future was not issued by an IdP
	// whose clock agrees with the broker's: refuse it beyond a small skew.
	// (A missing iat, also against OIDC Core 2, is left to exp.)
	if idt.IssuedAt.After(s.cfg.Now().Add(idTokenSkew)) {
		return errors.New("the ID token's iat is in the future")
	}
	return nil
}
