{{/*
The release's base name: the release name, with the chart name appended
unless the release name already holds it; cut to 52 characters so that
"-controller-manager" still fits a 63-character DNS label.
*/}}
{{- define "skiff.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. Call with (dict "root" $ "component" "x"). */}}
{{- define "skiff.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: skiff
{{ include "skiff.selectorLabels" . }}
{{- end -}}

{{/*
The labels a component's pods are selected by; fixed for the life of a
release, since a Deployment's selector cannot change.
*/}}
{{- define "skiff.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Image reference: the component's `image` keys over the global ones, the
registry (if any) before the repository.
*/}}
{{- define "skiff.image" -}}
{{- $img := merge (deepCopy (.values.image | default dict)) .root.Values.image -}}
{{- $registry := $img.registry | default "" | trimSuffix "/" -}}
{{- $repository := ternary (printf "%s/%s" $registry $img.repository) $img.repository (ne $registry "") -}}
{{- printf "%s:%s" $repository (toString ($img.tag | default .root.Chart.AppVersion)) -}}
{{- end -}}

{{- define "skiff.pullPolicy" -}}
{{- $img := merge (deepCopy (.values.image | default dict)) .root.Values.image -}}
{{- $img.pullPolicy -}}
{{- end -}}

{{/* The apiserver's address as the other components dial it. */}}
{{- define "skiff.apiServerURL" -}}
{{- if .Values.apiServerURL -}}
{{- .Values.apiServerURL -}}
{{- else -}}
{{- printf "https://%s-apiserver.%s.svc:%v" (include "skiff.fullname" .) .Release.Namespace .Values.apiserver.port -}}
{{- end -}}
{{- end -}}

{{/* Pod annotations Prometheus' annotation-based discovery reads. */}}
{{- define "skiff.scrapeAnnotations" -}}
{{- if .root.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: {{ .root.Values.metrics.path | quote }}
{{- end }}
{{- end -}}

{{/*
The health probes on a component's metrics port: a process that stops
answering /healthz is restarted; one whose /readyz fails (caches not synced,
draining) gets no traffic.
*/}}
{{- define "skiff.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  initialDelaySeconds: 10
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* The pod-spec keys every component takes from its values. */}}
{{- define "skiff.scheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Leader-election flags of the scheduler and the controller-manager. */}}
{{- define "skiff.leaderElectionArgs" -}}
{{- $le := .Values.leaderElection }}
- --leader-elect={{ $le.enabled }}
{{- if $le.enabled }}
{{- /* Kubernetes expands $(POD_NAME) from the env var below. */}}
- --leader-elect-identity=$(POD_NAME)
- --lease-namespace={{ .Release.Namespace }}
- --lease-duration={{ $le.leaseDuration }}
- --renew-deadline={{ $le.renewDeadline }}
- --retry-period={{ $le.retryPeriod }}
{{- end }}
{{- end -}}

{{/*
A component's credentials (pki.yaml's <fullname>-<component>-client, or
the kubelet's bootstrap Secret), mounted at /etc/skiff/pki.
*/}}
{{- define "skiff.pkiMount" -}}
- name: pki
  mountPath: /etc/skiff/pki
  readOnly: true
{{- end -}}

{{/* The volume for skiff.pkiMount. Call with (dict "root" $ "component" "x"). */}}
{{- define "skiff.pkiVolume" -}}
- name: pki
  secret:
    secretName: {{ include "skiff.fullname" .root }}-{{ .component }}-client
    defaultMode: 256  # 0400
{{- end -}}

{{- define "skiff.kubeconfigPath" -}}
/etc/skiff/pki/kubeconfig.yaml
{{- end -}}

{{/*
A skiff client config (--kubeconfig): the server, the CA, and a client
pair or a token, as files under /etc/skiff/pki. Call with
(dict "server" URL "client" true) or (dict "server" URL "token" T).
*/}}
{{- define "skiff.kubeconfig" -}}
server: {{ .server }}
certificate-authority: /etc/skiff/pki/ca.crt
{{- if .client }}
client-certificate: /etc/skiff/pki/tls.crt
client-key: /etc/skiff/pki/tls.key
{{- end }}
{{- with .token }}
token: {{ . }}
{{- end }}
{{ end -}}
