// Package deploy_test checks the container files at the repository root
// (docker-compose.yml, Dockerfile, .dockerignore) and deploy/dex/config.yaml
// against each other and against the broker's contract, without a Docker
// engine: the compose file is loaded and validated with compose-go, the rest
// is parsed here.
package deploy_test

import (
	"bufio"
	"context"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v4"
	"golang.org/x/crypto/bcrypt"
)

// testSecrets are the variables docker-compose.yml requires from the
// environment, with values of the right shape.
var testSecrets = map[string]string{
	"REDIS_PASSWORD":         "0123456789abcdef0123456789abcdef",
	"BROKER_ENCRYPTION_KEYS": "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
	"BROKER_ADMIN_TOKENS":    "security:test-admin-token",
}

// demoPassword is the password of Dex's static user, as documented in
// deploy/dex/config.yaml and docker-compose.yml.
const demoPassword = "demo-password"

// repoRoot is the directory of the module's go.mod, found by walking up.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

func loadProject(t *testing.T, env map[string]string) (*types.Project, error) {
	t.Helper()
	root := repoRoot(t)
	var environ []string
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	// Only the given environment: neither the test process's nor a .env file.
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root),
		cli.WithEnv(environ),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(context.Background())
}

func mustLoad(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadProject(t, testSecrets)
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml has no service %q", name)
	}
	return s
}

// env returns a service's environment as plain strings.
func env(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			out[k] = *v
		}
	}
	return out
}

// contractVar is one row of the contract's configuration table.
type contractVar struct {
	name, def string
}

// required reports whether the broker's serve command cannot start without
// the variable: the contract says "required" (possibly with a condition),
// or "none" for a variable without a default.
func (v contractVar) required() bool {
	d := strings.ToLower(v.def)
	return strings.Contains(d, "required") || strings.HasPrefix(d, "none")
}

// fallbackContract is used when shared/CONTRACT.md is not beside the
// repository.
var fallbackContract = []contractVar{
	{"BROKER_LISTEN", "`:8080`"},
	{"BROKER_ADMIN_LISTEN", "`127.0.0.1:9090`"},
	{"BROKER_REDIS_URL", "none: see README for the dev default"},
	{"BROKER_OIDC_ISSUER", "required"},
	{"BROKER_OIDC_CLIENT_ID", "required"},
	{"BROKER_OIDC_CLIENT_SECRET", "empty"},
	{"BROKER_REDIRECT_URIS", "required"},
	{"BROKER_ROUTES", "required"},
	{"BROKER_ENCRYPTION_KEYS", "required outside dev mode"},
	{"BROKER_ADMIN_TOKENS", "required to enable the admin API"},
	{"BROKER_SESSION_IDLE_TIMEOUT", "`720h`"},
	{"BROKER_SESSION_MAX_LIFETIME", "`2160h`"},
	{"BROKER_REFRESH_SKEW", "`10s`"},
	{"BROKER_UPSTREAM_TIMEOUT", "`30s`"},
	{"BROKER_TRUSTED_PROXIES", "empty"},
	{"BROKER_RATE_LIMIT_EXCHANGE", "`10/s`"},
	{"BROKER_RATE_LIMIT_INVALID", "`20/s`"},
}

var contractRow = regexp.MustCompile("^\\|\\s*`(BROKER_[A-Z0-9_]+)`\\s*\\|")

// contractVars reads the configuration table of ../shared/CONTRACT.md
// (beside the repository), or falls back to fallbackContract.
func contractVars(t *testing.T) map[string]contractVar {
	t.Helper()
	file := filepath.Join(repoRoot(t), "..", "shared", "CONTRACT.md")
	vars := map[string]contractVar{}
	f, err := os.Open(file)
	if err != nil {
		t.Logf("%v: using the test's own list of the contract's variables", err)
		for _, v := range fallbackContract {
			vars[v.name] = v
		}
		return vars
	}
	defer f.Close()
	inConfig := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			inConfig = strings.HasPrefix(line, "## Configuration")
			continue
		}
		m := contractRow.FindStringSubmatch(line)
		if !inConfig || m == nil {
			continue
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		vars[m[1]] = contractVar{name: m[1], def: strings.TrimSpace(cells[len(cells)-1])}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(vars) == 0 {
		t.Fatalf("%s: no BROKER_* variable in its Configuration table", file)
	}
	return vars
}

func TestComposeLoadsAndValidates(t *testing.T) {
	p := mustLoad(t)
	for _, name := range []string{"redis", "dex", "upstream", "migrate", "broker"} {
		service(t, p, name)
	}
	for _, name := range []string{"redis-data", "dex-data"} {
		if _, ok := p.Volumes[name]; !ok {
			t.Errorf("no named volume %q", name)
		}
	}
}

// Every ${VAR} of the compose file either must be set (":?") or has a
// default, so that a forgotten secret stops `docker compose` instead of
// starting the stack with an empty value.
func TestComposeVariablesAreGuarded(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var body []string
	for line := range strings.SplitSeq(string(raw), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			body = append(body, line)
		}
	}
	refs := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}`).FindAllStringSubmatch(strings.Join(body, "\n"), -1)
	seen := map[string]bool{}
	for _, m := range refs {
		seen[m[1]] = true
		if !strings.HasPrefix(m[2], ":?") && !strings.HasPrefix(m[2], ":-") {
			t.Errorf("${%s%s}: neither required (:?) nor defaulted (:-)", m[1], m[2])
		}
	}
	for name := range seen {
		if _, ok := testSecrets[name]; !ok && !slices.ContainsFunc(refs, func(m []string) bool { return m[1] == name && strings.HasPrefix(m[2], ":-") }) {
			t.Errorf("${%s} is required by docker-compose.yml but not in the test's secrets", name)
		}
	}
	for name := range testSecrets {
		if !seen[name] {
			t.Errorf("the test supplies %s, which docker-compose.yml does not use", name)
		}
	}
}

func TestComposeFailsWithoutSecrets(t *testing.T) {
	for name := range testSecrets {
		for _, value := range []string{"unset", ""} {
			env := map[string]string{}
			for k, v := range testSecrets {
				env[k] = v
			}
			if value == "unset" {
				delete(env, name)
			} else {
				env[name] = value
			}
			_, err := loadProject(t, env)
			if err == nil {
				t.Errorf("%s %s: the compose file loads; want an error", name, value)
				continue
			}
			if msg := err.Error(); !strings.Contains(msg, name) || !strings.Contains(msg, "docker-compose.yml") {
				t.Errorf("%s %s: error %q does not name the variable and where to read how to set it", name, value, msg)
			}
		}
	}
}

func TestBrokerEnvironmentMatchesContract(t *testing.T) {
	p := mustLoad(t)
	vars := contractVars(t)
	for _, name := range []string{"broker", "migrate"} {
		for k := range env(service(t, p, name)) {
			if strings.HasPrefix(k, "BROKER_") {
				if _, ok := vars[k]; !ok {
					t.Errorf("%s sets %s, which the contract does not define", name, k)
				}
			}
		}
	}
	be := env(service(t, p, "broker"))
	for _, v := range vars {
		if v.required() && be[v.name] == "" {
			t.Errorf("broker: %s is required (contract default: %s) but not set", v.name, v.def)
		}
	}
	if got, want := env(service(t, p, "migrate"))["BROKER_REDIS_URL"], be["BROKER_REDIS_URL"]; got != want {
		t.Errorf("migrate uses BROKER_REDIS_URL %q, the broker %q", got, want)
	}

	u, err := url.Parse(be["BROKER_REDIS_URL"])
	if err != nil || u.Scheme != "redis" {
		t.Fatalf("BROKER_REDIS_URL %q is not a redis:// URL", be["BROKER_REDIS_URL"])
	}
	if pw, _ := u.User.Password(); pw != testSecrets["REDIS_PASSWORD"] || u.Hostname() != "redis" {
		t.Errorf("BROKER_REDIS_URL does not point at the redis service with REDIS_PASSWORD: %s", u.Redacted())
	}
	if be["BROKER_ENCRYPTION_KEYS"] != testSecrets["BROKER_ENCRYPTION_KEYS"] || be["BROKER_ADMIN_TOKENS"] != testSecrets["BROKER_ADMIN_TOKENS"] {
		t.Error("BROKER_ENCRYPTION_KEYS and BROKER_ADMIN_TOKENS must come from the environment")
	}
	iss, err := url.Parse(be["BROKER_OIDC_ISSUER"])
	if err != nil || iss.Hostname() != "dex" {
		t.Errorf("BROKER_OIDC_ISSUER %q is not served by the dex service", be["BROKER_OIDC_ISSUER"])
	}
	for route := range strings.SplitSeq(be["BROKER_ROUTES"], ",") {
		prefix, upstream, ok := strings.Cut(route, "=")
		u, err := url.Parse(upstream)
		if !ok || !strings.HasPrefix(prefix, "/") || err != nil {
			t.Errorf("BROKER_ROUTES entry %q is not PREFIX=URL", route)
			continue
		}
		if _, ok := p.Services[u.Hostname()]; !ok {
			t.Errorf("route %s goes to %s, which is not a service of the stack", prefix, u.Host)
		}
	}
}

func TestBrokerService(t *testing.T) {
	p := mustLoad(t)
	root := repoRoot(t)
	b := service(t, p, "broker")
	for _, name := range []string{"broker", "migrate"} {
		s := service(t, p, name)
		if s.Build == nil {
			t.Errorf("%s is not built from the Dockerfile", name)
			continue
		}
		df := s.Build.Dockerfile
		if !filepath.IsAbs(df) {
			df = filepath.Join(s.Build.Context, df)
		}
		if filepath.Clean(s.Build.Context) != root || df != filepath.Join(root, "Dockerfile") {
			t.Errorf("%s builds context %s with %s; want the repository root and its Dockerfile", name, s.Build.Context, df)
		}
		if s.Image != b.Image {
			t.Errorf("%s is image %q, the broker %q: they should share one build", name, s.Image, b.Image)
		}
		if !s.ReadOnly || !slices.Contains(s.SecurityOpt, "no-new-privileges:true") || !slices.Contains(s.CapDrop, "ALL") {
			t.Errorf("%s: want read_only, no-new-privileges:true and cap_drop ALL; got %v, %v, %v", name, s.ReadOnly, s.SecurityOpt, s.CapDrop)
		}
	}

	if !slices.Equal(b.Command, types.ShellCommand{"serve"}) || b.Restart != "unless-stopped" {
		t.Errorf("broker: command %q, restart %q; want [serve], unless-stopped", b.Command, b.Restart)
	}
	m := service(t, p, "migrate")
	if !slices.Equal(m.Command, types.ShellCommand{"migrate"}) || m.Restart != "no" {
		t.Errorf("migrate: command %q, restart %q; want [migrate], no", m.Command, m.Restart)
	}
	if d, ok := m.DependsOn["redis"]; !ok || d.Condition != types.ServiceConditionHealthy {
		t.Errorf("migrate must wait for redis to be healthy: %+v", m.DependsOn)
	}

	for dep, conditions := range map[string][]string{
		"redis":    {types.ServiceConditionHealthy},
		"migrate":  {types.ServiceConditionCompletedSuccessfully},
		"dex":      {types.ServiceConditionHealthy, types.ServiceConditionStarted},
		"upstream": {types.ServiceConditionStarted, types.ServiceConditionHealthy},
	} {
		d, ok := b.DependsOn[dep]
		if !ok || !slices.Contains(conditions, d.Condition) {
			t.Errorf("broker depends on %s with %+v; want one of %v", dep, d, conditions)
		}
	}
	for _, dep := range []string{"redis", "dex"} {
		if hc := service(t, p, dep).HealthCheck; hc == nil || hc.Disable || len(hc.Test) == 0 {
			t.Errorf("%s has no health check, but the broker waits for it to be healthy", dep)
		}
	}

	// The listeners bind inside the container; the admin port is published
	// on the host's loopback only.
	be := env(b)
	published := map[string]string{} // container port: host IP
	for _, port := range b.Ports {
		published[strconv.FormatUint(uint64(port.Target), 10)] = port.HostIP
	}
	for _, v := range []string{"BROKER_LISTEN", "BROKER_ADMIN_LISTEN"} {
		host, _, _ := strings.Cut(be[v], ":")
		if host != "" && host != "0.0.0.0" {
			t.Errorf("%s=%q binds %s inside the container; a published port cannot reach it", v, be[v], host)
		}
	}
	if ip, ok := published[strings.TrimPrefix(be["BROKER_ADMIN_LISTEN"], ":")]; !ok || ip != "127.0.0.1" {
		t.Errorf("the admin port must be published on 127.0.0.1 only; ports: %+v", b.Ports)
	}
	if _, ok := published[strings.TrimPrefix(be["BROKER_LISTEN"], ":")]; !ok {
		t.Errorf("the public port is not published; ports: %+v", b.Ports)
	}
	if hc := b.HealthCheck; hc == nil || hc.Disable || !slices.Contains(hc.Test, "/readyz") {
		t.Errorf("broker health check: %+v; want a probe of /readyz", hc)
	}
	if hc := m.HealthCheck; hc == nil || !hc.Disable {
		t.Errorf("migrate runs no listener: the image's health check must be disabled, got %+v", hc)
	}
}

func TestRedisService(t *testing.T) {
	r := service(t, mustLoad(t), "redis")
	cmd := strings.Join(r.Command, " ")
	if !strings.Contains(cmd, "--appendonly yes") {
		t.Errorf("redis command %q does not enable appendonly", cmd)
	}
	if !strings.Contains(cmd, "--requirepass "+testSecrets["REDIS_PASSWORD"]) {
		t.Errorf("redis command does not set requirepass to REDIS_PASSWORD")
	}
	if !slices.ContainsFunc(r.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeVolume && v.Source == "redis-data" && v.Target == "/data"
	}) {
		t.Errorf("redis keeps /data on no named volume: %+v", r.Volumes)
	}
}

// dexConfig is the part of Dex's configuration the test checks.
type dexConfig struct {
	Issuer  string `yaml:"issuer"`
	Storage struct {
		Type string `yaml:"type"`
	} `yaml:"storage"`
	OAuth2 struct {
		SkipApprovalScreen bool `yaml:"skipApprovalScreen"`
	} `yaml:"oauth2"`
	Expiry struct {
		IDTokens      string `yaml:"idTokens"`
		RefreshTokens struct {
			DisableRotation bool   `yaml:"disableRotation"`
			ReuseInterval   string `yaml:"reuseInterval"`
		} `yaml:"refreshTokens"`
	} `yaml:"expiry"`
	StaticClients []struct {
		ID           string   `yaml:"id"`
		Public       bool     `yaml:"public"`
		Secret       string   `yaml:"secret"`
		RedirectURIs []string `yaml:"redirectURIs"`
	} `yaml:"staticClients"`
	EnablePasswordDB bool `yaml:"enablePasswordDB"`
	StaticPasswords  []struct {
		Email string `yaml:"email"`
		Hash  string `yaml:"hash"`
	} `yaml:"staticPasswords"`
}

func TestDexConfig(t *testing.T) {
	p := mustLoad(t)
	root := repoRoot(t)
	file := filepath.Join(root, "deploy", "dex", "config.yaml")
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var cfg dexConfig
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	// Dex's image renders its configuration with gomplate first.
	if strings.Contains(string(raw), "{{") {
		t.Errorf("%s contains template delimiters", file)
	}

	be := env(service(t, p, "broker"))
	if cfg.Issuer != be["BROKER_OIDC_ISSUER"] {
		t.Errorf("Dex's issuer %q differs from BROKER_OIDC_ISSUER %q", cfg.Issuer, be["BROKER_OIDC_ISSUER"])
	}
	found := false
	for _, c := range cfg.StaticClients {
		if c.ID != be["BROKER_OIDC_CLIENT_ID"] {
			continue
		}
		found = true
		for uri := range strings.SplitSeq(be["BROKER_REDIRECT_URIS"], ",") {
			if !slices.Contains(c.RedirectURIs, strings.TrimSpace(uri)) {
				t.Errorf("Dex client %s does not allow redirect URI %s", c.ID, uri)
			}
		}
		if be["BROKER_OIDC_CLIENT_SECRET"] == "" && (!c.Public || c.Secret != "") {
			t.Errorf("the broker uses %s as a public client; Dex must register it public and without a secret", c.ID)
		}
	}
	if !found {
		t.Errorf("Dex has no static client %q (BROKER_OIDC_CLIENT_ID)", be["BROKER_OIDC_CLIENT_ID"])
	}

	if !cfg.EnablePasswordDB || len(cfg.StaticPasswords) == 0 {
		t.Error("Dex has no password database with a static user")
	}
	for _, u := range cfg.StaticPasswords {
		if err := bcrypt.CompareHashAndPassword([]byte(u.Hash), []byte(demoPassword)); err != nil {
			t.Errorf("the hash of %s is not that of the documented password %q: %v", u.Email, demoPassword, err)
		}
	}
	if !cfg.OAuth2.SkipApprovalScreen {
		t.Error("Dex shows an approval screen")
	}
	if cfg.Storage.Type != "memory" && cfg.Storage.Type != "sqlite3" {
		t.Errorf("Dex storage %q; want memory or sqlite3", cfg.Storage.Type)
	}
	if d, err := time.ParseDuration(cfg.Expiry.IDTokens); err != nil || d > 15*time.Minute {
		t.Errorf("Dex token expiry %q: want a short one, so that refreshes show", cfg.Expiry.IDTokens)
	}
	if cfg.Expiry.RefreshTokens.DisableRotation || cfg.Expiry.RefreshTokens.ReuseInterval == "" {
		t.Errorf("Dex refresh tokens: want rotation with a reuse interval, got %+v", cfg.Expiry.RefreshTokens)
	}

	// The dex service serves this very file.
	dex := service(t, p, "dex")
	var target string
	for _, v := range dex.Volumes {
		if v.Type == types.VolumeTypeBind && v.Source == file {
			target = v.Target
		}
	}
	if target == "" || !slices.Contains(dex.Command, target) {
		t.Errorf("the dex service does not serve %s: volumes %+v, command %q", file, dex.Volumes, dex.Command)
	}
}

// stage is one stage of a parsed Dockerfile: its base image, its name, and
// its instructions (keyword upper-cased, then the rest of the line).
type stage struct {
	from, name string
	instr      [][2]string
}

func parseDockerfile(t *testing.T, file string) []stage {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var stages []stage
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		kw, rest, _ := strings.Cut(line, " ")
		kw, rest = strings.ToUpper(kw), strings.TrimSpace(rest)
		if kw == "FROM" {
			var s stage
			fields := strings.Fields(rest)
			for len(fields) > 0 && strings.HasPrefix(fields[0], "--") {
				fields = fields[1:]
			}
			if len(fields) == 0 {
				t.Fatalf("%s: FROM without an image", file)
			}
			s.from = fields[0]
			if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
				s.name = fields[2]
			}
			stages = append(stages, s)
			return
		}
		if len(stages) == 0 {
			if kw != "ARG" {
				t.Fatalf("%s: %s before the first FROM", file, kw)
			}
			return
		}
		last := &stages[len(stages)-1]
		last.instr = append(last.instr, [2]string{kw, rest})
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cur.WriteString(cont + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	if len(stages) < 2 {
		t.Fatalf("%s: %d stage(s); want a build stage and a final one", file, len(stages))
	}
	return stages
}

func (s stage) all(kw string) []string {
	var out []string
	for _, in := range s.instr {
		if in[0] == kw {
			out = append(out, in[1])
		}
	}
	return out
}

func TestDockerfile(t *testing.T) {
	root := repoRoot(t)
	stages := parseDockerfile(t, filepath.Join(root, "Dockerfile"))
	build, final := stages[0], stages[len(stages)-1]

	// The build stage's Go is the one go.mod asks for.
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if goLine == nil {
		t.Fatal("go.mod has no go directive")
	}
	if want := "golang:" + string(goLine[1]); build.from != want && !strings.HasPrefix(build.from, want+"-") && !strings.HasPrefix(build.from, want+".") {
		t.Errorf("build stage FROM %s; want %s (go.mod says go %s)", build.from, want, goLine[1])
	}

	// Module download in a layer of its own, before the sources come in.
	var order []string
	for _, in := range build.instr {
		switch {
		case in[0] == "COPY" && strings.Fields(in[1])[0] == "go.mod":
			order = append(order, "copy go.mod")
		case in[0] == "RUN" && strings.Contains(in[1], "go mod download"):
			order = append(order, "download")
		case in[0] == "COPY" && strings.HasPrefix(in[1], ". "):
			order = append(order, "copy sources")
		case in[0] == "RUN" && strings.Contains(in[1], "go build"):
			order = append(order, "build")
			for _, want := range []string{"CGO_ENABLED=0", "-tags nodev", "-trimpath", `-ldflags="-s -w `,
				`-X 'main.version=${VERSION}'`, `-X 'main.revision=${REVISION}'`, `-X 'main.buildDate=${CREATED}'`, "-o /out/broker ./cmd/broker"} {
				if !strings.Contains(in[1], want) {
					t.Errorf("build command %q lacks %s", in[1], want)
				}
			}
		}
	}
	if want := []string{"copy go.mod", "download", "copy sources", "build"}; !slices.Equal(order, want) {
		t.Errorf("build stage steps %v; want %v", order, want)
	}

	// A minimal, non-root final stage.
	image, tag, _ := strings.Cut(final.from, ":")
	if !strings.HasPrefix(image, "gcr.io/distroless/static") {
		t.Errorf("final stage FROM %s; want gcr.io/distroless/static-*", final.from)
	}
	users := final.all("USER")
	nonRootUser := len(users) > 0 && !slices.Contains([]string{"root", "0", "root:root", "0:0"}, users[len(users)-1])
	if !strings.Contains(tag, "nonroot") && !nonRootUser {
		t.Errorf("final stage runs as root: tag %q, USER %v", tag, users)
	}
	if len(users) > 0 && !nonRootUser {
		t.Errorf("final stage switches to USER %s", users[len(users)-1])
	}
	for kw, want := range map[string]string{"ENTRYPOINT": `["/broker"]`, "CMD": `["serve"]`} {
		if got := final.all(kw); len(got) == 0 || got[len(got)-1] != want {
			t.Errorf("final stage %s %v; want %s", kw, got, want)
		}
	}
	exposed := strings.Fields(strings.Join(final.all("EXPOSE"), " "))
	for _, port := range []string{"8080", "9090"} {
		if !slices.Contains(exposed, port) {
			t.Errorf("final stage does not EXPOSE %s", port)
		}
	}
	// The image names its release in the OCI labels, from build args.
	labels := strings.Join(final.all("LABEL"), " ")
	args := strings.Join(final.all("ARG"), " ")
	for _, l := range []string{"version", "revision", "created", "source"} {
		arg := strings.ToUpper(l)
		if !strings.Contains(labels, "org.opencontainers.image."+l+`="${`+arg+`}"`) || !strings.Contains(args, arg) {
			t.Errorf("final stage lacks the label org.opencontainers.image.%s from the build arg %s", l, arg)
		}
	}
	if !strings.Contains(labels, `org.opencontainers.image.licenses="Apache-2.0"`) {
		t.Error("final stage lacks the label org.opencontainers.image.licenses")
	}
	// A base image pinned by digest (scripts/pin-base-images.sh) names a
	// whole sha256 digest after its tag.
	for _, s := range stages {
		if _, digest, ok := strings.Cut(s.from, "@"); ok && !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(digest) {
			t.Errorf("FROM %s: not a sha256 digest", s.from)
		}
	}
	// A HEALTHCHECK runs a program the image has: there is no shell.
	copied := strings.Join(final.all("COPY"), "\n")
	for _, hc := range final.all("HEALTHCHECK") {
		m := regexp.MustCompile(`CMD \["([^"]+)"`).FindStringSubmatch(hc)
		if m == nil || !strings.Contains(copied, " "+m[1]) {
			t.Errorf("HEALTHCHECK %q does not run, in exec form, a program copied into the image", hc)
		}
	}
}

// The build context keeps what the build needs and leaves out secrets.
func TestDockerignore(t *testing.T) {
	root := repoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for line := range strings.SplitSeq(string(raw), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			patterns = append(patterns, strings.TrimSuffix(line, "/"))
		}
	}
	// ignored approximates Docker's matching: a pattern excludes a path when
	// it matches the path or one of its parent directories; "**/" matches
	// any number of leading directories.
	ignored := func(p string) bool {
		for _, pat := range patterns {
			for dir := p; dir != "."; dir = path.Dir(dir) {
				if ok, _ := path.Match(pat, dir); ok {
					return true
				}
				if rest, isAny := strings.CutPrefix(pat, "**/"); isAny {
					if ok, _ := path.Match(rest, path.Base(dir)); ok {
						return true
					}
				}
			}
		}
		return false
	}
	for _, p := range []string{"go.mod", "go.sum", "cmd/broker/main.go", "deploy/healthcheck/main.go", "broker/service.go", "sessions/store.go"} {
		if ignored(p) {
			t.Errorf(".dockerignore excludes %s, which the build needs", p)
		}
	}
	for _, p := range []string{".env", "deploy/.env.example", ".git/config", "bin/broker"} {
		if !ignored(p) {
			t.Errorf(".dockerignore does not exclude %s", p)
		}
	}
}
