{{/*
Name of the chart, or nameOverride.
*/}}
{{- define "nod-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: fullnameOverride, or the release name when
it already contains the chart name, or "<release>-<chart>". Cut to 63
characters (a DNS label).
*/}}
{{- define "nod-operator.fullname" -}}
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

{{- define "nod-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "nod-operator.labels" -}}
helm.sh/chart: {{ include "nod-operator.chart" . }}
{{ include "nod-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: nod
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the operator's pods; never change them on upgrade (a
Deployment's selector is immutable).
*/}}
{{- define "nod-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nod-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The metrics Service: a Service name is a DNS label (63 characters at most).
*/}}
{{- define "nod-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "nod-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "nod-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nod-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator's image reference.
*/}}
{{- define "nod-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Rules of the operator's role on NodClusters and what it makes for them. The
same rules serve the ClusterRole (all namespaces) and each namespaced Role.
Exactly the verbs the operator's code uses (operator/src/controller.rs and
main.rs): server-side apply needs patch, and create for an object that does
not exist yet; the watched kinds need list and watch. Nothing more: the
operator reads no Secrets or ConfigMaps and changes no Nodes.
*/}}
{{- define "nod-operator.rules" -}}
# Watched; patched only to remove the finalizer of earlier operators.
- apiGroups: ["nod.io"]
  resources: ["nodclusters"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["nod.io"]
  resources: ["nodclusters/status"]
  verbs: ["patch"]
# Read (get) every reconcile; owned, so watched.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Owned, so watched; applied every reconcile. The backup agent's Service
# (spec.backup) is deleted when backups are turned off.
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# The backup agent of spec.backup, one per NodCluster: applied, deleted when
# backups are turned off.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch"]
# Listed each reconcile; deleted to roll one or to replace a removed member.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "delete"]
# Listed each reconcile; patched to expand; deleted after their member left.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "patch", "delete"]
# kube-rs's event recorder creates an Event, then patches it on repeats.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# One per NodCluster that sets spec.metrics.serviceMonitor (applied only).
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["create", "patch"]
# One per NodCluster (spec.networkPolicy): applied, deleted when turned off.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch", "delete"]
# The Secrets the operator names itself, by name only (no list, no watch):
# each cluster's gossip key and, with spec.tls, its CA and certificates
# (created once or applied), the root password of spec.auth and the
# certificates of tls.mode certManager or secrets (read).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# tls.mode certManager: three Certificates per NodCluster (applied only).
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["create", "patch"]
{{- end }}
