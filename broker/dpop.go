package broker

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// OAuth 2.0 Demonstrating Proof of Possession (DPoP, RFC 9449): a session
// opened with a DPoP proof is bound to the proof's public key, and every use
// of its handle must come with a fresh proof signed by that key. A copy of
// the handle alone (from a backup, a log, a debugging proxy) is then useless.

// DPoP modes.
const (
	// DPoPOptional binds the sessions whose sign-in carried a proof and
	// leaves the others bearer sessions.
	DPoPOptional = "optional"
	// DPoPRequired refuses a sign-in without a proof and every use of a
	// session that is not bound.
	DPoPRequired = "required"
)

// DefaultDPoPAlgorithms are the proof algorithms accepted when
// DPoPConfig.Algorithms is empty: ES256, which the iOS Secure Enclave and
// the Android Keystore both sign with.
var DefaultDPoPAlgorithms = []string{"ES256"}

// dpopAlgorithms are the asymmetric JWS algorithms a proof may be signed
// with (RFC 9449 section 4.3 point 5: no "none", no MAC).
var dpopAlgorithms = []string{"ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512", "EdDSA"}

// ValidDPoPAlgorithm reports whether a is a JWS algorithm a proof may be
// configured to use.
func ValidDPoPAlgorithm(a string) bool { return slices.Contains(dpopAlgorithms, a) }

// DPoPConfig configures proof checking.
type DPoPConfig struct {
	// Mode is DPoPOptional (the default when empty) or DPoPRequired.
	Mode string
	// Algorithms are the JWS algorithms proofs may use, a subset of
	// ES256, ES384, ES512, PS256, PS384, PS512, RS256, RS384, RS512 and
	// EdDSA; DefaultDPoPAlgorithms when empty.
	Algorithms []string
	// Metrics counts the DPoP decisions; when nil, Config.Metrics does if
	// it implements DPoPMetrics.
	Metrics DPoPMetrics
	// Nonces seals and opens the server nonces (RFC 9449 section 8); every
	// replica must hold the same keys, so that a nonce issued by one is
	// accepted by all without a store lookup. Nil disables nonces: a proof
	// must then be fresh by its iat alone.
	Nonces Sealer
}

// Sealer is authenticated encryption under keys every replica shares (the
// session keyring): Open accepts what any replica's Seal produced with the
// same additional data.
type Sealer interface {
	Seal(plaintext, aad []byte) ([]byte, error)
	Open(sealed, aad []byte) ([]byte, error)
}

// DPoPMetrics is implemented by a Metrics that also counts DPoP proofs.
type DPoPMetrics interface {
	// DPoP counts a decision: "bound" (a session opened bound), "ok" (a
	// proof accepted), "invalid" (a proof refused), "replayed", "nonce"
	// (use_dpop_nonce answered), "bearer_use" and "other_key" (a bound
	// handle without a proof of its key: possible theft).
	DPoP(outcome string)
}

// Bounds and windows of proofs.
const (
	// maxProofLen bounds a DPoP header: a P-521 or RSA 4096 JWK and the
	// claims fit well within it.
	maxProofLen = 8 << 10
	// maxJTILen bounds the jti of a proof.
	maxJTILen = 256
	// maxNonceLen bounds the nonce claim of a proof.
	maxNonceLen = 256
	// proofMaxAge is how old a proof's iat may be, and proofMaxAhead how
	// far in the future, when it carries no server nonce (RFC 9449
	// section 11.1).
	proofMaxAge   = 60 * time.Second
	proofMaxAhead = 10 * time.Second
	// nonceStep is how often the server nonce changes. A nonce is
	// accepted during its step and the next, so for 5 to 10 minutes.
	nonceStep = 5 * time.Minute
	// replayMargin is added to how long a jti is remembered, for the clocks
	// of replicas that differ.
	replayMargin = 10 * time.Second
	// theftAuditInterval bounds the audit events of possible thefts to
	// one per session per interval per process, so that a flood of
	// attempts cannot push older events out of the capped trail; the
	// metric counts every one.
	theftAuditInterval = time.Minute
)

// Error codes of RFC 9449 sections 7.1 and 8.
const (
	CodeInvalidDPoPProof Code = "invalid_dpop_proof"
	CodeUseDPoPNonce     Code = "use_dpop_nonce"
)

// DPoPError is a refusal of RFC 9449: the request's proof, or its lack,
// does not allow it. Err's code is CodeInvalidDPoPProof, CodeUseDPoPNonce
// or CodeInvalidToken. At the HTTP boundary it becomes a 401 with a
// "WWW-Authenticate: DPoP" challenge (section 7.1), or at sign-in a 400
// (section 5), with a DPoP-Nonce header when Nonce is set.
type DPoPError struct {
	Err *Error
	// Nonce is a fresh server nonce for the DPoP-Nonce header.
	Nonce string
	// Algorithms are those the broker accepts, for the challenge's algs.
	Algorithms []string
	// SignIn marks a refusal of POST /v1/sessions.
	SignIn bool
}

func (e *DPoPError) Error() string { return e.Err.Error() }
func (e *DPoPError) Unwrap() error { return e.Err }

// ProofRequest is what a DPoP proof must match: the request as the app
// addressed it.
type ProofRequest struct {
	// Proofs are the values of the request's DPoP headers; more than one
	// is refused (RFC 9449 section 4.3 point 1).
	Proofs []string
	// Method is the request's method; URL its absolute URL without query
	// and fragment, with the scheme and host the app used (behind trusted
	// proxies, those they report).
	Method, URL string
}

// Credential is what a request presents to use a session.
type Credential struct {
	Handle string
	// DPoP is set when the Authorization scheme is DPoP rather than
	// Bearer (RFC 9449 section 7.1).
	DPoP bool
	ProofRequest
}

// proof is a verified DPoP proof.
type proof struct {
	jkt   string // RFC 7638 thumbprint of its key, base64url
	jti   string
	iat   time.Time
	nonce string
	// until is how long the proof stays acceptable: its jti is
	// remembered that long.
	until time.Time
}

// proofClaims are the claims of RFC 9449 section 4.2.
type proofClaims struct {
	JTI   string           `json:"jti"`
	HTM   string           `json:"htm"`
	HTU   string           `json:"htu"`
	IAT   *json.RawMessage `json:"iat"`
	ATH   *string          `json:"ath"`
	Nonce *string          `json:"nonce"`
}

// dpop holds the Service's proof checking.
type dpop struct {
	mode    string
	algs    []string
	joseAlg []jose.SignatureAlgorithm
	nonces  Sealer
	metrics DPoPMetrics
	thefts  theftSeen
}

func newDPoP(cfg DPoPConfig, m Metrics) (*dpop, error) {
	d := &dpop{mode: cfg.Mode, algs: slices.Clone(cfg.Algorithms), nonces: cfg.Nonces}
	if d.mode == "" {
		d.mode = DPoPOptional
	}
	var errs []error
	if d.mode != DPoPOptional && d.mode != DPoPRequired {
		errs = append(errs, fmt.Errorf("DPoP mode must be %s or %s", DPoPOptional, DPoPRequired))
	}
	if len(d.algs) == 0 {
		d.algs = slices.Clone(DefaultDPoPAlgorithms)
	}
	for _, a := range d.algs {
		if !slices.Contains(dpopAlgorithms, a) {
			// The name is one of the operator's settings, not a secret.
			errs = append(errs, fmt.Errorf("DPoP algorithm %q is not one of %s", a, strings.Join(dpopAlgorithms, ", ")))
			continue
		}
		d.joseAlg = append(d.joseAlg, jose.SignatureAlgorithm(a))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	d.metrics = cfg.Metrics
	if d.metrics == nil {
		d.metrics, _ = m.(DPoPMetrics)
	}
	return d, nil
}

func (d *dpop) count(outcome string) {
	if d.metrics != nil {
		d.metrics.DPoP(outcome)
	}
}

// refuse returns a DPoPError of the given code.
func (d *dpop) refuse(code Code, format string, args ...any) *DPoPError {
	return &DPoPError{Err: Errorf(code, format, args...), Algorithms: d.algs}
}

// verify parses and checks a proof against the request (RFC 9449 section
// 4.3), everything but the jti's novelty and the key binding. handle is
// the handle the proof must hash into ath, or "" at sign-in, where ath is
// not checked.
func (d *dpop) verify(req ProofRequest, handle string, now time.Time) (*proof, error) {
	// Point 1: exactly one DPoP header.
	switch {
	case len(req.Proofs) == 0:
		return nil, d.refuse(CodeInvalidDPoPProof, "a DPoP proof is required")
	case len(req.Proofs) > 1:
		return nil, d.refuse(CodeInvalidDPoPProof, "more than one DPoP header")
	}
	p, err := d.parse(req.Proofs[0])
	if err != nil {
		return nil, err
	}
	claims := p.claims
	// Points 8 and 9: htm and htu name this request; htu is compared
	// without query and fragment, after normalization (section 4.3).
	if claims.HTM != req.Method {
		return nil, d.refuse(CodeInvalidDPoPProof, "the proof's htm is not this request's method")
	}
	if !sameHTU(claims.HTU, req.URL) {
		return nil, d.refuse(CodeInvalidDPoPProof, "the proof's htu is not this request's URL")
	}
	// Point 12: ath is the hash of the credential presented with it.
	if handle != "" {
		sum := sha256.Sum256([]byte(handle))
		want := base64.RawURLEncoding.EncodeToString(sum[:])
		if claims.ATH == nil || subtle.ConstantTimeCompare([]byte(*claims.ATH), []byte(want)) != 1 {
			return nil, d.refuse(CodeInvalidDPoPProof, "the proof's ath is not the hash of the session handle")
		}
	}
	// Points 10 and 11: freshness, by the server nonce when the proof
	// carries one, by iat otherwise.
	out := &proof{jkt: p.jkt, jti: claims.JTI, iat: p.iat}
	if claims.Nonce != nil {
		if d.nonces == nil {
			return nil, d.refuse(CodeInvalidDPoPProof, "the broker issues no DPoP nonces")
		}
		until, ok := d.openNonce(*claims.Nonce, now)
		if !ok {
			return nil, d.nonceRequired("the proof's nonce is unknown or expired", now)
		}
		out.nonce, out.until = *claims.Nonce, until
		return out, nil
	}
	if p.iat.Before(now.Add(-proofMaxAge)) || p.iat.After(now.Add(proofMaxAhead)) {
		if d.nonces != nil {
			return nil, d.nonceRequired("the proof's iat is too far from the server's clock", now)
		}
		return nil, d.refuse(CodeInvalidDPoPProof, "the proof's iat is too far from the server's clock")
	}
	out.until = p.iat.Add(proofMaxAge)
	return out, nil
}

// parsedProof is a proof whose signature verified.
type parsedProof struct {
	jkt    string
	iat    time.Time
	claims proofClaims
}

// parse checks a proof's syntax, header and signature (RFC 9449 section
// 4.3 points 2 to 7). go-jose parses the JWS with the allowed algorithms
// only, and refuses an embedded jwk that is not a valid public key.
func (d *dpop) parse(raw string) (*parsedProof, error) {
	if len(raw) > maxProofLen {
		return nil, d.refuse(CodeInvalidDPoPProof, "the DPoP proof is over %d bytes", maxProofLen)
	}
	jws, err := jose.ParseSignedCompact(raw, d.joseAlg)
	if err != nil {
		return nil, d.refuse(CodeInvalidDPoPProof, "the DPoP proof is not a JWS signed with one of %s", strings.Join(d.algs, ", "))
	}
	if len(jws.Signatures) != 1 {
		return nil, d.refuse(CodeInvalidDPoPProof, "the DPoP proof must have one signature")
	}
	h := jws.Signatures[0].Protected
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != "dpop+jwt" {
		return nil, d.refuse(CodeInvalidDPoPProof, `the DPoP proof's typ must be "dpop+jwt"`)
	}
	jwk := h.JSONWebKey
	if jwk == nil || !jwk.Valid() || !jwk.IsPublic() {
		return nil, d.refuse(CodeInvalidDPoPProof, "the DPoP proof's jwk header must hold a public key")
	}
	payload, err := jws.Verify(jwk)
	if err != nil {
		return nil, d.refuse(CodeInvalidDPoPProof, "the DPoP proof's signature does not verify with its jwk")
	}
	var claims proofClaims
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, d.refuse(CodeInvalidDPoPProof, "the DPoP proof's claims are not a JSON object of the expected types")
	}
	switch {
	case claims.JTI == "" || len(claims.JTI) > maxJTILen:
		return nil, d.refuse(CodeInvalidDPoPProof, "the DPoP proof's jti must be 1 to %d bytes", maxJTILen)
	case claims.HTM == "" || claims.HTU == "":
		return nil, d.refuse(CodeInvalidDPoPProof, "the DPoP proof must have htm and htu")
	case claims.Nonce != nil && (*claims.Nonce == "" || len(*claims.Nonce) > maxNonceLen):
		return nil, d.refuse(CodeInvalidDPoPProof, "the DPoP proof's nonce must be 1 to %d bytes", maxNonceLen)
	}
	iat, ok := numericDate(claims.IAT)
	if !ok {
		return nil, d.refuse(CodeInvalidDPoPProof, "the DPoP proof's iat must be a number of seconds")
	}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, d.refuse(CodeInvalidDPoPProof, "the DPoP proof's jwk has no thumbprint")
	}
	return &parsedProof{jkt: base64.RawURLEncoding.EncodeToString(tp), iat: iat, claims: claims}, nil
}

// numericDate reads a JWT NumericDate (RFC 7519 section 2): seconds, maybe
// fractional, within the years 1970 to 9999.
func numericDate(raw *json.RawMessage) (time.Time, bool) {
	if raw == nil {
		return time.Time{}, false
	}
	var secs float64
	if err := json.Unmarshal(*raw, &secs); err != nil || secs < 0 || secs > 253402300799 {
		return time.Time{}, false
	}
	whole := int64(secs)
	return time.Unix(whole, int64((secs-float64(whole))*float64(time.Second))), true
}

// sameHTU reports whether a proof's htu names the request URL: both are
// compared without query and fragment, after the syntax- and scheme-based
// normalization of RFC 3986 section 6.2.2 and 6.2.3 (case of the scheme
// and host, default port, percent-encoding), as RFC 9449 section 4.3 asks.
func sameHTU(htu, request string) bool {
	a, ok := normalizeHTU(htu)
	if !ok {
		return false
	}
	b, ok := normalizeHTU(request)
	return ok && a == b
}

func normalizeHTU(raw string) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" || u.User != nil {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "https" && scheme != "http" {
		return "", false
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return "", false
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port := u.Port(); port != "" && !(scheme == "https" && port == "443") && !(scheme == "http" && port == "80") {
		host += ":" + port
	}
	path := normalizePercent(u.EscapedPath())
	if path == "" {
		path = "/"
	}
	return scheme + "://" + host + path, true
}

// normalizePercent decodes the percent-encoded unreserved characters of an
// escaped path and upper-cases the hex digits of the others (RFC 3986
// section 6.2.2.1 and 6.2.2.2).
func normalizePercent(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] != '%' || i+2 >= len(p) {
			b.WriteByte(p[i])
			continue
		}
		hi, lo := unhex(p[i+1]), unhex(p[i+2])
		if hi < 0 || lo < 0 {
			b.WriteByte(p[i])
			continue
		}
		c := byte(hi<<4 | lo)
		if isUnreservedByte(c) {
			b.WriteByte(c)
		} else {
			b.WriteString("%" + strings.ToUpper(p[i+1:i+3]))
		}
		i += 2
	}
	return b.String()
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func isUnreservedByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// Server nonces (RFC 9449 section 8). A nonce is the number of its time
// step sealed under the keyring: any replica opens it without a store
// lookup, and a client cannot make one.

// nonceAAD binds a sealed value to its use, so that no other sealed value
// of the broker passes for a nonce.
var nonceAAD = []byte("broker dpop nonce v1")

func (d *dpop) step(now time.Time) uint64 { return uint64(now.UnixNano() / int64(nonceStep)) }

// newNonce returns the current nonce, or "" without a Sealer.
func (d *dpop) newNonce(now time.Time) string {
	if d.nonces == nil {
		return ""
	}
	sealed, err := d.nonces.Seal(binary.BigEndian.AppendUint64(nil, d.step(now)), nonceAAD)
	if err != nil {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString(sealed)
}

// openNonce reports whether nonce is one this broker issued for the
// current or the previous step, and until when it is accepted.
func (d *dpop) openNonce(nonce string, now time.Time) (time.Time, bool) {
	if d.nonces == nil {
		return time.Time{}, false
	}
	sealed, err := base64.RawURLEncoding.DecodeString(nonce)
	if err != nil {
		return time.Time{}, false
	}
	plain, err := d.nonces.Open(sealed, nonceAAD)
	if err != nil || len(plain) != 8 {
		return time.Time{}, false
	}
	step, cur := binary.BigEndian.Uint64(plain), d.step(now)
	if step != cur && step+1 != cur {
		return time.Time{}, false
	}
	return time.Unix(0, int64(step+2)*int64(nonceStep)), true
}

// nonceRequired is the use_dpop_nonce answer with a fresh nonce.
func (d *dpop) nonceRequired(msg string, now time.Time) *DPoPError {
	e := d.refuse(CodeUseDPoPNonce, "%s; retry with the nonce of the DPoP-Nonce header", msg)
	e.Nonce = d.newNonce(now)
	return e
}

// theftSeen throttles the audit events of possible thefts per session.
type theftSeen struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// due reports whether an event for id is due at now.
func (t *theftSeen) due(id string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if last, ok := t.last[id]; ok && now.Sub(last) < theftAuditInterval {
		return false
	}
	if t.last == nil || len(t.last) >= unreadableLogLimit {
		t.last = map[string]time.Time{}
	}
	t.last[id] = now
	return true
}

// signInProof checks the proof of a sign-in (RFC 9449 section 5) and
// records its jti. It returns the key's thumbprint, or "" for a sign-in
// without a proof in optional mode.
func (s *Service) signInProof(ctx context.Context, req ProofRequest) (string, error) {
	d := s.dpop
	if len(req.Proofs) == 0 && d.mode == DPoPOptional {
		return "", nil
	}
	now := s.cfg.Now()
	p, err := d.verify(req, "", now)
	if err == nil {
		err = s.firstUse(ctx, p, now)
	}
	if err != nil {
		var de *DPoPError
		if errors.As(err, &de) {
			de.SignIn = true
			s.countRefusal(de)
		}
		return "", err
	}
	return p.jkt, nil
}

// checkCredential decides whether cred may use sess, whose handle it
// presented (RFC 9449 section 7). A bound session needs the DPoP scheme and
// a proof by its key; a bound handle used without one is counted and
// audited as a possible theft.
func (s *Service) checkCredential(ctx context.Context, sess *Session, cred Credential) error {
	d := s.dpop
	if sess.JKT == "" {
		switch {
		case d.mode == DPoPRequired:
			return d.refuse(CodeInvalidToken, "this broker accepts only DPoP-bound sessions; sign in again with a DPoP proof")
		case cred.DPoP:
			return d.refuse(CodeInvalidToken, "the session is not DPoP-bound; present its handle with the Bearer scheme")
		}
		return nil
	}
	now := s.cfg.Now()
	if !cred.DPoP {
		s.suspectTheft(ctx, sess, "bearer_use", "a DPoP-bound handle was presented as a bearer token")
		return d.refuse(CodeInvalidToken, "the session is DPoP-bound; present its handle with the DPoP scheme and a proof")
	}
	p, err := d.verify(cred.ProofRequest, cred.Handle, now)
	if err != nil {
		var de *DPoPError
		if errors.As(err, &de) {
			s.countRefusal(de)
		}
		return err
	}
	if subtle.ConstantTimeCompare([]byte(p.jkt), []byte(sess.JKT)) != 1 {
		s.suspectTheft(ctx, sess, "other_key", "a DPoP-bound handle was presented with a proof by another key")
		return d.refuse(CodeInvalidDPoPProof, "the proof is not signed by the key the session is bound to")
	}
	if err := s.firstUse(ctx, p, now); err != nil {
		return err
	}
	d.count("ok")
	return nil
}

// firstUse records a proof's jti (scoped to its key) until the proof stops
// being acceptable, on every replica (RFC 9449 section 11.1).
func (s *Service) firstUse(ctx context.Context, p *proof, now time.Time) error {
	if s.cfg.Replay == nil {
		return errors.New("DPoP needs a replay guard")
	}
	ttl := p.until.Sub(now) + replayMargin
	first, err := s.cfg.Replay.FirstUse(ctx, "dpop\x00"+p.jkt+"\x00"+p.jti, ttl)
	if err != nil {
		return fmt.Errorf("record DPoP proof: %w", err)
	}
	if !first {
		s.dpop.count("replayed")
		return s.dpop.refuse(CodeInvalidDPoPProof, "the DPoP proof was used before")
	}
	return nil
}

func (s *Service) countRefusal(de *DPoPError) {
	if de.Err.Code == CodeUseDPoPNonce {
		s.dpop.count("nonce")
	} else {
		s.dpop.count("invalid")
	}
}

// suspectTheft counts and audits a bound handle used without its key.
func (s *Service) suspectTheft(ctx context.Context, sess *Session, outcome, detail string) {
	s.dpop.count(outcome)
	s.log.WarnContext(ctx, "possible theft of a DPoP-bound session handle", "session_id", sess.ID, "sub", sess.Subject, "reason", outcome)
	if s.dpop.thefts.due(sess.ID, s.cfg.Now()) {
		s.audit(ctx, AuditEvent{Actor: ActorBroker, Action: ActionDPoPRefused, SessionID: sess.ID, Subject: sess.Subject,
			Outcome: OutcomeError, Detail: detail + " (possible theft of the handle)"})
	}
}

// ActionDPoPRefused is the audit action of a DPoP-bound handle presented
// without a proof of its key.
const ActionDPoPRefused = "dpop.refused"
