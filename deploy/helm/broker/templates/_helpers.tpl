{{/* The chart's name, bounded as Kubernetes names are. */}}
{{- define "broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, the prefix of every object's name. */}}
{{- define "broker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "broker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image, by digest when one is given. */}}
{{- define "broker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* A secret setting as an env item reading a Secret's key. */}}
{{- define "broker.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.name }}
      key: {{ required (printf "secrets.%s.key is required" .value) .ref.key }}
{{- end }}

{{/* The environment of `broker migrate`: the store and its keys. */}}
{{- define "broker.storeEnv" -}}
{{- $_ := required "secrets.redisURL.name is required: the Secret holding BROKER_REDIS_URL" .Values.secrets.redisURL.name }}
{{- $_ := required "secrets.encryptionKeys.name is required: the Secret holding BROKER_ENCRYPTION_KEYS" .Values.secrets.encryptionKeys.name }}
{{ include "broker.secretEnv" (dict "env" "BROKER_REDIS_URL" "value" "redisURL" "ref" .Values.secrets.redisURL) }}
{{ include "broker.secretEnv" (dict "env" "BROKER_ENCRYPTION_KEYS" "value" "encryptionKeys" "ref" .Values.secrets.encryptionKeys) }}
{{- end }}

{{/* The broker's whole environment. */}}
{{- define "broker.env" -}}
- name: BROKER_LISTEN
  value: {{ printf ":%v" .Values.ports.public | quote }}
- name: BROKER_ADMIN_LISTEN
  value: {{ printf ":%v" .Values.ports.admin | quote }}
{{- range $name := list "BROKER_OIDC_ISSUER" "BROKER_OIDC_CLIENT_ID" "BROKER_REDIRECT_URIS" "BROKER_ROUTES" }}
{{- $_ := required (printf "config.%s is required" $name) (get $.Values.config $name) }}
{{- end }}
{{- range $name, $value := .Values.config }}
{{- if has $name (list "BROKER_LISTEN" "BROKER_ADMIN_LISTEN" "BROKER_REDIS_URL" "BROKER_ENCRYPTION_KEYS" "BROKER_ADMIN_TOKENS" "BROKER_OIDC_CLIENT_SECRET") }}
{{- fail (printf "config.%s: set it through ports or secrets, not config" $name) }}
{{- end }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{ include "broker.storeEnv" . }}
{{- if .Values.secrets.adminTokens.name }}
{{ include "broker.secretEnv" (dict "env" "BROKER_ADMIN_TOKENS" "value" "adminTokens" "ref" .Values.secrets.adminTokens) }}
{{- end }}
{{- if .Values.secrets.clientSecret.name }}
{{ include "broker.secretEnv" (dict "env" "BROKER_OIDC_CLIENT_SECRET" "value" "clientSecret" "ref" .Values.secrets.clientSecret) }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
