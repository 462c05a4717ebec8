package devidp

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

// The demo users every Provider knows. The subjects are stable across
// providers and runs, so tests may compare them with the ID token's sub.
const (
	DemoUsername = "demo"
	DemoPassword = "demo-password"
	DemoSubject  = "demo-user"
	DemoEmail    = "demo@example.com"
	DemoName     = "Demo User"

	OtherUsername = "other"
	OtherPassword = "other-password"
	OtherSubject  = "other-user"
	OtherEmail    = "other@example.com"
	OtherName     = "Other User"
)

// users is the fixed user directory of the dev IdP.
type users map[string]*storage.User

func newUsers() users {
	return users{
		DemoSubject: {
			ID:                DemoSubject,
			Username:          DemoUsername,
			Password:          DemoPassword,
			FirstName:         "Demo",
			LastName:          "User",
			Email:             DemoEmail,
			EmailVerified:     true,
			PreferredLanguage: language.English,
		},
		OtherSubject: {
			ID:                OtherSubject,
			Username:          OtherUsername,
			Password:          OtherPassword,
			FirstName:         "Other",
			LastName:          "User",
			Email:             OtherEmail,
			EmailVerified:     true,
			PreferredLanguage: language.English,
		},
	}
}

func (u users) GetUserByID(id string) *storage.User { return u[id] }

func (u users) GetUserByUsername(username string) *storage.User {
	for _, user := range u {
		if user.Username == username {
			return user
		}
	}
	return nil
}

func (u users) ExampleClientID() string { return storage.ServiceUserID }

// client adapts an example client to what a mobile app needs: userinfo
// claims asserted into the ID token, and custom-scheme redirect URIs for a
// confidential client (the example's web clients allow only http(s)).
type client struct {
	*storage.Client
	appType op.ApplicationType
}

func (c client) ApplicationType() op.ApplicationType { return c.appType }

// IDTokenUserinfoClaimsAssertion puts name and email in the ID token even
// though an access token is issued alongside it, as most hosted IdPs do.
func (c client) IDTokenUserinfoClaimsAssertion() bool { return true }

type signingKey struct {
	id  string
	key *rsa.PrivateKey
}

func (k *signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k *signingKey) Key() any                                    { return k.key }
func (k *signingKey) ID() string                                  { return k.id }

type publicKey struct{ *signingKey }

func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return &k.key.PublicKey }

// accessToken is what the dev IdP remembers of an issued access token. The
// example storage hard-codes a five minute lifetime, so expiry, revocation and
// the userinfo lookup are tracked here to honour Config.AccessTokenTTL.
type accessToken struct {
	subject  string
	clientID string
	audience []string
	scopes   []string
	expires  time.Time
}

// refreshToken links a live refresh token to its access token and session.
type refreshToken struct {
	subject  string
	clientID string
	accessID string
}

// store is the example in-memory storage with the dev IdP's own signing key,
// clients, access token lifetime and session ids.
type store struct {
	*storage.Storage

	// keyMu guards key, the key ID tokens are signed with, and published,
	// every key the JWKS lists (the current one and those rotated out).
	keyMu     sync.RWMutex
	key       *signingKey
	published []*signingKey

	clients map[string]client
	ttl     time.Duration

	// mu serialises refresh token rotation with the copies handed out by
	// TokenRequestByRefreshToken: the example storage rotates a refresh
	// token by mutating the record it returned earlier.
	mu      sync.Mutex
	now     func() time.Time
	access  map[string]accessToken
	refresh map[string]refreshToken
	// sids maps every refresh token ever issued, rotated or not, to the
	// session id of the login it descends from.
	sids map[string]string
	// issued lists every refresh token ever issued, in order.
	issued []string
}

var (
	_ op.Storage                   = (*store)(nil)
	_ op.CanSetUserinfoFromRequest = (*store)(nil)
)

func newStore(clients map[string]client, key *signingKey, ttl time.Duration) *store {
	registry := make(map[string]*storage.Client, len(clients))
	for id, c := range clients {
		registry[id] = c.Client
	}
	return &store{
		Storage:   storage.NewStorageWithClients(newUsers(), registry),
		key:       key,
		published: []*signingKey{key},
		clients:   clients,
		ttl:       ttl,
		now:       time.Now,
		access:    make(map[string]accessToken),
		refresh:   make(map[string]refreshToken),
		sids:      make(map[string]string),
	}
}

func (s *store) GetClientByClientID(_ context.Context, clientID string) (op.Client, error) {
	c, ok := s.clients[clientID]
	if !ok {
		return nil, errors.New("client not found")
	}
	return c, nil
}

func (s *store) SigningKey(context.Context) (op.SigningKey, error) { return s.currentKey(), nil }

// currentKey returns the key ID tokens are signed with now.
func (s *store) currentKey() *signingKey {
	s.keyMu.RLock()
	defer s.keyMu.RUnlock()
	return s.key
}

// rotate makes key the signing key; the previous ones stay published.
func (s *store) rotate(key *signingKey) {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	s.key = key
	s.published = append(s.published, key)
}

func (s *store) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

func (s *store) KeySet(context.Context) ([]op.Key, error) {
	s.keyMu.RLock()
	defer s.keyMu.RUnlock()
	keys := make([]op.Key, 0, len(s.published))
	for _, k := range s.published {
		keys = append(keys, publicKey{k})
	}
	return keys, nil
}

// CreateAccessToken issues an access token without a refresh token (a code
// grant without offline_access).
func (s *store) CreateAccessToken(ctx context.Context, req op.TokenRequest) (string, time.Time, error) {
	id, _, err := s.Storage.CreateAccessToken(ctx, req)
	if err != nil {
		return "", time.Time{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return id, reported(s.rememberAccess(id, req, clientIDOf(req))), nil
}

// CreateAccessAndRefreshTokens issues an access token and a refresh token.
// On a refresh grant the example storage rotates the refresh token: the
// presented one is deleted, so presenting it again fails with invalid_grant.
func (s *store) CreateAccessAndRefreshTokens(ctx context.Context, req op.TokenRequest, current string) (string, string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	sid := ""
	if current != "" {
		// A concurrent grant may have rotated the token since it was looked
		// up (RFC 6749, section 5.2: invalid_grant).
		old, ok := s.refresh[current]
		if !ok {
			return "", "", time.Time{}, oidc.ErrInvalidGrant().WithDescription("refresh token is invalid")
		}
		delete(s.access, old.accessID)
		delete(s.refresh, current)
		sid = s.sids[current]
	} else if authReq, ok := req.(*storage.AuthRequest); ok {
		sid = authReq.ID
	}

	accessID, next, _, err := s.Storage.CreateAccessAndRefreshTokens(ctx, req, current)
	if err != nil {
		if current != "" {
			return "", "", time.Time{}, oidc.ErrInvalidGrant().WithDescription("refresh token is invalid").WithParent(err)
		}
		return "", "", time.Time{}, err
	}
	clientID := clientIDOf(req)
	expires := s.rememberAccess(accessID, req, clientID)
	s.refresh[next] = refreshToken{subject: req.GetSubject(), clientID: clientID, accessID: accessID}
	s.issued = append(s.issued, next)
	if sid != "" {
		s.sids[next] = sid
	}
	return accessID, next, reported(expires), nil
}

// reported is the expiry of an access token as the OP is told it. The OP
// answers expires_in with the whole seconds left when it writes the
// response, rounded down: a lifetime of N seconds would read N-1, and one
// second no expiry at all. Told a moment under a second later, it answers
// the configured lifetime; the token still expires at expires.
func reported(expires time.Time) time.Time {
	return expires.Add(time.Second - time.Millisecond)
}

// rememberAccess records an issued access token and returns its expiry.
// s.mu must be held.
func (s *store) rememberAccess(id string, req op.TokenRequest, clientID string) time.Time {
	expires := s.now().Add(s.ttl)
	s.access[id] = accessToken{
		subject:  req.GetSubject(),
		clientID: clientID,
		audience: slices.Clone(req.GetAudience()),
		scopes:   slices.Clone(req.GetScopes()),
		expires:  expires,
	}
	return expires
}

func clientIDOf(req op.TokenRequest) string {
	if r, ok := req.(interface{ GetClientID() string }); ok {
		return r.GetClientID()
	}
	return ""
}

// TokenRequestByRefreshToken returns a private copy of the refresh token
// record, so a concurrent rotation cannot change it under the caller.
func (s *store) TokenRequestByRefreshToken(ctx context.Context, token string) (op.RefreshTokenRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	req, err := s.Storage.TokenRequestByRefreshToken(ctx, token)
	if err != nil {
		return nil, err
	}
	r, ok := req.(*storage.RefreshTokenRequest)
	if !ok {
		return req, nil
	}
	record := *r.RefreshToken
	record.Scopes = slices.Clone(record.Scopes)
	return &storage.RefreshTokenRequest{RefreshToken: &record}, nil
}

// GetRefreshTokenInfo reports the owner of a live refresh token for the
// revocation endpoint.
func (s *store) GetRefreshTokenInfo(_ context.Context, clientID, token string) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt, ok := s.refresh[token]
	if !ok {
		return "", "", op.ErrInvalidRefreshToken
	}
	return rt.subject, token, nil
}

// RevokeToken implements RFC 7009 for both token types: revoking a refresh
// token also revokes the access token issued with it.
func (s *store) RevokeToken(ctx context.Context, tokenOrID, userID, clientID string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.Storage.RevokeToken(ctx, tokenOrID, userID, clientID); err != nil {
		return err
	}
	if at, ok := s.access[tokenOrID]; ok && at.clientID == clientID {
		delete(s.access, tokenOrID)
	}
	if rt, ok := s.refresh[tokenOrID]; ok && rt.clientID == clientID {
		delete(s.access, rt.accessID)
		delete(s.refresh, tokenOrID)
	}
	return nil
}

func (s *store) TerminateSession(ctx context.Context, userID, clientID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.Storage.TerminateSession(ctx, userID, clientID); err != nil {
		return err
	}
	for token, rt := range s.refresh {
		if rt.subject == userID && rt.clientID == clientID {
			delete(s.refresh, token)
		}
	}
	for id, at := range s.access {
		if at.subject == userID && at.clientID == clientID {
			delete(s.access, id)
		}
	}
	return nil
}

// SetUserinfoFromRequest fills the ID token's user claims and adds sid, the
// id of the login the tokens descend from (OpenID Connect Back-Channel
// Logout 1.0, section 2.1).
func (s *store) SetUserinfoFromRequest(ctx context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, info, req, scopes); err != nil {
		return err
	}
	var sid string
	switch r := req.(type) {
	case *storage.AuthRequest:
		sid = r.ID
	case *storage.RefreshTokenRequest:
		s.mu.Lock()
		sid = s.sids[r.Token]
		s.mu.Unlock()
	}
	if sid != "" {
		info.AppendClaims("sid", sid)
	}
	return nil
}

// liveAccessToken returns the record of an access token that is neither
// expired nor revoked.
func (s *store) liveAccessToken(tokenID, subject string) (accessToken, error) {
	s.mu.Lock()
	at, ok := s.access[tokenID]
	now := s.now()
	s.mu.Unlock()
	if !ok || (subject != "" && at.subject != subject) {
		return accessToken{}, errors.New("token is invalid")
	}
	if !now.Before(at.expires) {
		return accessToken{}, errors.New("token is expired")
	}
	return at, nil
}

// userinfo fills info from the user directory as the example storage does
// for an ID token.
func (s *store) userinfo(ctx context.Context, info *oidc.UserInfo, at accessToken) error {
	req := &storage.RefreshTokenRequest{RefreshToken: &storage.RefreshToken{
		UserID:        at.subject,
		ApplicationID: at.clientID,
		Scopes:        at.scopes,
	}}
	return s.Storage.SetUserinfoFromRequest(ctx, info, req, at.scopes)
}

func (s *store) SetUserinfoFromToken(ctx context.Context, info *oidc.UserInfo, tokenID, subject, _ string) error {
	at, err := s.liveAccessToken(tokenID, subject)
	if err != nil {
		return err
	}
	return s.userinfo(ctx, info, at)
}

func (s *store) SetIntrospectionFromToken(ctx context.Context, resp *oidc.IntrospectionResponse, tokenID, subject, clientID string) error {
	at, err := s.liveAccessToken(tokenID, subject)
	if err != nil {
		return err
	}
	if !slices.Contains(at.audience, clientID) {
		return fmt.Errorf("token is not valid for client %q", clientID)
	}
	info := new(oidc.UserInfo)
	if err := s.userinfo(ctx, info, at); err != nil {
		return err
	}
	resp.SetUserInfo(info)
	resp.Expiration = oidc.FromTime(at.expires)
	resp.Scope = at.scopes
	resp.ClientID = at.clientID
	return nil
}

// setTTL changes the lifetime of access tokens issued from now on.
func (s *store) setTTL(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ttl = d
}

// issuedRefreshTokens returns every refresh token issued so far.
func (s *store) issuedRefreshTokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.issued)
}
