// Package helm_test renders the broker's Helm chart (deploy/helm/broker)
// with the Helm SDK, as `helm template` does, and checks the manifests
// against the broker's contract. It is a module of its own so that the
// Helm SDK and its Kubernetes dependencies stay out of the broker's.
package helm_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// required are the values an install must give: the settings the broker
// cannot start without and the Secrets holding the secret ones.
func required() map[string]any {
	return map[string]any{
		"config": map[string]any{
			"BROKER_OIDC_ISSUER":    "https://idp.example.com",
			"BROKER_OIDC_CLIENT_ID": "mobile",
			"BROKER_REDIRECT_URIS":  "com.example.app:/callback",
			"BROKER_ROUTES":         "/api=http://api.internal",
		},
		"secrets": map[string]any{
			"redisURL":       map[string]any{"name": "broker-redis"},
			"encryptionKeys": map[string]any{"name": "broker-keys"},
			"adminTokens":    map[string]any{"name": "broker-admin"},
			"clientSecret":   map[string]any{"name": "broker-oidc"},
		},
	}
}

// manifests are the objects of one rendering, decoded strictly into their
// Kubernetes types: a field the API does not know fails the test.
type manifests struct {
	deployments     []appsv1.Deployment
	services        []corev1.Service
	pdbs            []policyv1.PodDisruptionBudget
	hpas            []autoscalingv2.HorizontalPodAutoscaler
	networkPolicies []networkingv1.NetworkPolicy
	jobs            []batchv1.Job
	serviceAccounts []corev1.ServiceAccount
	kinds           []string
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load("broker")
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("chart metadata: %v", err)
	}
	return c
}

// render renders the chart for an install with vals over values.yaml.
func render(t *testing.T, vals map[string]any) (manifests, error) {
	t.Helper()
	c := loadChart(t)
	if err := chartutil.ValidateAgainstSchema(c, vals); err != nil {
		t.Fatalf("values: %v", err)
	}
	top, err := chartutil.ToRenderValues(c, vals, chartutil.ReleaseOptions{
		Name: "tb", Namespace: "auth", Revision: 1, IsInstall: true,
	}, chartutil.DefaultCapabilities)
	if err != nil {
		t.Fatalf("values: %v", err)
	}
	files, err := engine.Render(c, top)
	if err != nil {
		return manifests{}, err
	}
	var m manifests
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if strings.HasSuffix(name, "NOTES.txt") || strings.HasPrefix(baseName(name), "_") {
			continue
		}
		for _, doc := range releaseutil.SplitManifests(files[name]) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			m.kinds = append(m.kinds, tm.Kind)
			var into any
			switch tm.Kind {
			case "Deployment":
				m.deployments = append(m.deployments, appsv1.Deployment{})
				into = &m.deployments[len(m.deployments)-1]
			case "Service":
				m.services = append(m.services, corev1.Service{})
				into = &m.services[len(m.services)-1]
			case "PodDisruptionBudget":
				m.pdbs = append(m.pdbs, policyv1.PodDisruptionBudget{})
				into = &m.pdbs[len(m.pdbs)-1]
			case "HorizontalPodAutoscaler":
				m.hpas = append(m.hpas, autoscalingv2.HorizontalPodAutoscaler{})
				into = &m.hpas[len(m.hpas)-1]
			case "NetworkPolicy":
				m.networkPolicies = append(m.networkPolicies, networkingv1.NetworkPolicy{})
				into = &m.networkPolicies[len(m.networkPolicies)-1]
			case "Job":
				m.jobs = append(m.jobs, batchv1.Job{})
				into = &m.jobs[len(m.jobs)-1]
			case "ServiceAccount":
				m.serviceAccounts = append(m.serviceAccounts, corev1.ServiceAccount{})
				into = &m.serviceAccounts[len(m.serviceAccounts)-1]
			default:
				t.Fatalf("%s: unexpected kind %q", name, tm.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
		}
	}
	return m, nil
}

func baseName(p string) string { return p[strings.LastIndex(p, "/")+1:] }

func mustRender(t *testing.T, vals map[string]any) manifests {
	t.Helper()
	m, err := render(t, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return m
}

// with returns vals with the value at the dotted path set.
func with(vals map[string]any, path string, v any) map[string]any {
	keys := strings.Split(path, ".")
	m := vals
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	m[keys[len(keys)-1]] = v
	return vals
}

func TestChartKinds(t *testing.T) {
	m := mustRender(t, required())
	slices.Sort(m.kinds)
	want := []string{"Deployment", "Job", "PodDisruptionBudget", "Service", "Service", "ServiceAccount"}
	if !slices.Equal(m.kinds, want) {
		t.Fatalf("kinds %v, want %v (HPA and NetworkPolicy are off by default)", m.kinds, want)
	}

	m = mustRender(t, with(with(required(), "autoscaling.enabled", true), "networkPolicy.enabled", true))
	if len(m.hpas) != 1 || len(m.networkPolicies) != 1 {
		t.Fatalf("with autoscaling and networkPolicy enabled: %d HPAs, %d NetworkPolicies", len(m.hpas), len(m.networkPolicies))
	}
	d := m.deployments[0]
	if d.Spec.Replicas != nil {
		t.Errorf("with an HPA the Deployment sets replicas %d, which every upgrade would reset", *d.Spec.Replicas)
	}
	hpa := m.hpas[0]
	if ref := hpa.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != d.Name {
		t.Errorf("HPA scales %s %s, want Deployment %s", ref.Kind, ref.Name, d.Name)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 {
		t.Errorf("HPA minReplicas %v, want at least 2 by default", hpa.Spec.MinReplicas)
	}
	np := m.networkPolicies[0]
	if !selects(t, &np.Spec.PodSelector, d.Spec.Template.Labels) {
		t.Errorf("NetworkPolicy podSelector %v does not select the broker's pods %v", np.Spec.PodSelector, d.Spec.Template.Labels)
	}
	if len(np.Spec.Ingress) != 1 || np.Spec.Ingress[0].Ports[0].Port.String() != "public" {
		t.Errorf("NetworkPolicy without adminFrom admits %+v, want the public port alone", np.Spec.Ingress)
	}
	if slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Error("NetworkPolicy restricts egress without egress rules: the broker could reach neither Redis nor the IdP")
	}
}

func selects(t *testing.T, sel *metav1.LabelSelector, set map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector %v: %v", sel, err)
	}
	return !s.Empty() && s.Matches(labels.Set(set))
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

func envOf(c corev1.Container) map[string]corev1.EnvVar {
	out := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		out[e.Name] = e
	}
	return out
}

func TestChartProbesAndListeners(t *testing.T) {
	m := mustRender(t, required())
	d := m.deployments[0]
	c := container(t, d.Spec.Template.Spec, "broker")
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["public"] != 8080 || ports["admin"] != 9090 {
		t.Fatalf("container ports %v, want public 8080 and admin 9090", ports)
	}
	env := envOf(c)
	if env["BROKER_LISTEN"].Value != ":8080" || env["BROKER_ADMIN_LISTEN"].Value != ":9090" {
		t.Errorf("BROKER_LISTEN %q, BROKER_ADMIN_LISTEN %q: the listeners must match the container ports on every interface",
			env["BROKER_LISTEN"].Value, env["BROKER_ADMIN_LISTEN"].Value)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe: none or not HTTP", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "admin" {
			t.Errorf("%s probe GET %s on port %s, want %s on admin", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
		}
	}
	if !slices.Equal(c.Args, []string{"serve"}) {
		t.Errorf("broker args %v, want [serve]", c.Args)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want CPU and memory requests and a memory limit", c.Resources)
	}
	if !strings.HasPrefix(c.Image, "mobile-token-broker/broker:") {
		t.Errorf("image %q", c.Image)
	}
	digest := "sha256:" + strings.Repeat("ab", 32)
	m = mustRender(t, with(required(), "image.digest", digest))
	if got := container(t, m.deployments[0].Spec.Template.Spec, "broker").Image; got != "mobile-token-broker/broker@"+digest {
		t.Errorf("with image.digest the image is %q, want it pulled by digest", got)
	}

	// Services: the public one and the admin one, each to its named port
	// of the broker's pods.
	want := map[string]string{"tb-broker": "public", "tb-broker-admin": "admin"}
	for _, s := range m.services {
		port, ok := want[s.Name]
		if !ok {
			t.Errorf("unexpected Service %s", s.Name)
			continue
		}
		delete(want, s.Name)
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) || len(s.Spec.Selector) == 0 {
			t.Errorf("Service %s selects %v, not the broker's pods %v", s.Name, s.Spec.Selector, d.Spec.Template.Labels)
		}
		if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].TargetPort.String() != port {
			t.Errorf("Service %s ports %+v, want one to the container port %s", s.Name, s.Spec.Ports, port)
		}
	}
	if len(want) > 0 {
		t.Errorf("missing Services %v", slices.Collect(maps.Keys(want)))
	}
}

func checkSecurityContext(t *testing.T, what string, spec corev1.PodSpec) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("%s: pod securityContext %+v, want runAsNonRoot and a non-zero runAsUser", what, psc)
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod seccompProfile is not RuntimeDefault", what)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: the service account token is mounted; the broker never calls the Kubernetes API", what)
	}
	for _, c := range spec.Containers {
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("%s/%s: no securityContext", what, c.Name)
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s/%s: root filesystem is writable", what, c.Name)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s/%s: privilege escalation allowed", what, c.Name)
		case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
			t.Errorf("%s/%s: runAsNonRoot not set", what, c.Name)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
			t.Errorf("%s/%s: capabilities %+v, want all dropped and none added", what, c.Name, sc.Capabilities)
		}
	}
}

func TestChartSecurityContext(t *testing.T) {
	m := mustRender(t, required())
	checkSecurityContext(t, "Deployment", m.deployments[0].Spec.Template.Spec)
	checkSecurityContext(t, "migrate Job", m.jobs[0].Spec.Template.Spec)
	if sa := m.serviceAccounts[0]; sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("the ServiceAccount mounts its token")
	}
}

// secretSettings are the settings that may only come from a Secret, with
// the Secret each names in required().
var secretSettings = map[string]string{
	"BROKER_REDIS_URL":          "broker-redis",
	"BROKER_ENCRYPTION_KEYS":    "broker-keys",
	"BROKER_ADMIN_TOKENS":       "broker-admin",
	"BROKER_OIDC_CLIENT_SECRET": "broker-oidc",
}

func TestChartSecretsAreReferences(t *testing.T) {
	m := mustRender(t, required())
	if slices.Contains(m.kinds, "Secret") {
		t.Error("the chart renders a Secret: it must only reference existing ones")
	}
	check := func(what string, c corev1.Container, names []string) {
		env := envOf(c)
		for _, name := range names {
			e, ok := env[name]
			switch {
			case !ok:
				t.Errorf("%s: %s not set", what, name)
			case e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil:
				t.Errorf("%s: %s is not read from a Secret", what, name)
			case e.ValueFrom.SecretKeyRef.Name != secretSettings[name] || e.ValueFrom.SecretKeyRef.Key == "":
				t.Errorf("%s: %s reads Secret %q key %q, want Secret %q", what, name, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key, secretSettings[name])
			}
		}
	}
	check("broker", container(t, m.deployments[0].Spec.Template.Spec, "broker"), slices.Collect(maps.Keys(secretSettings)))
	check("migrate", container(t, m.jobs[0].Spec.Template.Spec, "migrate"), []string{"BROKER_REDIS_URL", "BROKER_ENCRYPTION_KEYS"})

	// values.yaml holds no secret value: the defaults name no Secret at
	// all, and a rendering without the required Secrets fails and says
	// which.
	defaults := loadChart(t).Values
	secrets, _ := defaults["secrets"].(map[string]any)
	if len(secrets) != len(secretSettings) {
		t.Errorf("values.yaml secrets has %d entries, want %d", len(secrets), len(secretSettings))
	}
	for name, ref := range secrets {
		r, _ := ref.(map[string]any)
		if len(r) != 2 || r["name"] != "" || r["key"] == "" {
			t.Errorf("values.yaml secrets.%s is %v, want an empty name and a key, nothing else", name, ref)
		}
	}
	for _, name := range []string{"redisURL", "encryptionKeys"} {
		_, err := render(t, with(required(), "secrets."+name+".name", ""))
		if err == nil || !strings.Contains(err.Error(), "secrets."+name+".name is required") {
			t.Errorf("without secrets.%s.name: %v, want the rendering refused naming it", name, err)
		}
	}
	env := envOf(container(t, mustRender(t, with(with(required(), "secrets.adminTokens.name", ""), "secrets.clientSecret.name", "")).deployments[0].Spec.Template.Spec, "broker"))
	if _, ok := env["BROKER_ADMIN_TOKENS"]; ok {
		t.Error("BROKER_ADMIN_TOKENS set without secrets.adminTokens.name")
	}
	if _, ok := env["BROKER_OIDC_CLIENT_SECRET"]; ok {
		t.Error("BROKER_OIDC_CLIENT_SECRET set without secrets.clientSecret.name")
	}
	// A secret put in config by mistake is refused rather than rendered
	// into the manifest in the clear.
	for name := range secretSettings {
		_, err := render(t, with(required(), "config."+name, "leaked-value"))
		if err == nil || !strings.Contains(err.Error(), "config."+name) {
			t.Errorf("config.%s: %v, want the rendering refused", name, err)
		}
	}
	_, err := render(t, with(required(), "config.BROKER_ROUTES", ""))
	if err == nil || !strings.Contains(err.Error(), "config.BROKER_ROUTES is required") {
		t.Errorf("without config.BROKER_ROUTES: %v, want the rendering refused naming it", err)
	}
}

func TestChartMigrateHook(t *testing.T) {
	m := mustRender(t, required())
	if len(m.jobs) != 1 {
		t.Fatalf("%d Jobs, want the migrate Job", len(m.jobs))
	}
	j := m.jobs[0]
	hooks := strings.Split(j.Annotations["helm.sh/hook"], ",")
	slices.Sort(hooks)
	if !slices.Equal(hooks, []string{"post-upgrade", "pre-install"}) {
		t.Errorf("helm.sh/hook %q, want pre-install (before the brokers start) and post-upgrade (once the new brokers serve)", j.Annotations["helm.sh/hook"])
	}
	if p := j.Annotations["helm.sh/hook-delete-policy"]; !strings.Contains(p, "before-hook-creation") {
		t.Errorf("helm.sh/hook-delete-policy %q: a second upgrade would find the Job of the first", p)
	}
	c := container(t, j.Spec.Template.Spec, "migrate")
	if !slices.Equal(c.Args, []string{"migrate"}) {
		t.Errorf("migrate Job args %v, want [migrate]", c.Args)
	}
	if d := container(t, m.deployments[0].Spec.Template.Spec, "broker"); c.Image != d.Image {
		t.Errorf("migrate image %q, broker image %q: the migration must be the release's", c.Image, d.Image)
	}
	if j.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restartPolicy %q", j.Spec.Template.Spec.RestartPolicy)
	}
	// The Job's pod is no broker: no Service sends it traffic and the PDB
	// does not count it.
	for _, s := range m.services {
		if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(j.Spec.Template.Labels)) {
			t.Errorf("Service %s selects the migrate pod", s.Name)
		}
	}
	if selects(t, m.pdbs[0].Spec.Selector, j.Spec.Template.Labels) {
		t.Error("the PodDisruptionBudget counts the migrate pod")
	}
}

func TestChartPodDisruptionBudget(t *testing.T) {
	m := mustRender(t, required())
	d, pdb := m.deployments[0], m.pdbs[0]
	if !selects(t, pdb.Spec.Selector, d.Spec.Template.Labels) {
		t.Errorf("PDB selector %v does not match the Deployment's pod labels %v", pdb.Spec.Selector, d.Spec.Template.Labels)
	}
	if !selects(t, d.Spec.Selector, d.Spec.Template.Labels) {
		t.Errorf("Deployment selector %v does not match its own pod labels", d.Spec.Selector)
	}
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("PDB minAvailable %v, want 1", pdb.Spec.MinAvailable)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("default replicas %v: a PDB of minAvailable 1 over one replica blocks every drain", d.Spec.Replicas)
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rolling update %+v: want maxUnavailable 0, so that a rollout never lowers capacity", ru)
	}
	m = mustRender(t, with(required(), "podDisruptionBudget.maxUnavailable", 1))
	if p := m.pdbs[0].Spec; p.MaxUnavailable == nil || p.MaxUnavailable.IntValue() != 1 || p.MinAvailable != nil {
		t.Errorf("with maxUnavailable 1: %+v", p)
	}
}
