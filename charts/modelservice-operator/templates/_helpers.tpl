{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "modelservice-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name used for every namespaced object of the release. */}}
{{- define "modelservice-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding): they are shared by every
namespace, so the release namespace is part of the name to let two releases coexist.
*/}}
{{- define "modelservice-operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "modelservice-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelservice-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "modelservice-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: modelservice
{{- end }}

{{- define "modelservice-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelservice-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modelservice-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelservice-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelservice-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* True (non-empty) when kopf peering is used: more than one replica. */}}
{{- define "modelservice-operator.peering" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/*
Rules for the namespaced objects the operator owns and reconciles. Shared by the ClusterRole
(all namespaces) and the per-namespace Roles so that both modes grant exactly the same verbs.
*/}}
{{- define "modelservice-operator.namespacedRules" -}}
{{- /* Exactly modelservice_operator.rbac.NAMESPACED_RULES; tests/unit/test_chart.py checks. */}}
# The ModelService resource: watched, kopf's annotations patched, status written.
- apiGroups: ["serving.modelservice.io"]
  resources: ["modelservices"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["serving.modelservice.io"]
  resources: ["modelservices/status"]
  verbs: ["get", "patch"]
# Children: server-side applied and watched; garbage collection deletes them with their owner.
# The operator deletes only what the spec stops rendering while the owner lives: an HPA
# (autoscaling removed), a canary's Deployment and Services (spec.canary removed).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The weighted routes on a Gateway: applied, deleted with spec.gateway, watched for the
# status the Gateway's controller writes (condition Routed).
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes", "grpcroutes"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Scale to zero: a Deployment's replicas set to 0 and back through its scale subresource.
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
# Scale to zero: the EndpointSlice that points a model's Service at the activator while at zero.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "create", "patch", "delete"]
# Runtime pods: only watched, to report why replicas are not ready (a failed model fetch).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# The last lines of a pod still fetching or loading its model: the status's progress line.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# kopf posts handler progress and errors as core/v1 events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Rules kopf needs cluster-wide in every mode: discovering CRDs and namespaces. */}}
{{- define "modelservice-operator.scanRules" -}}
# kopf scans CRDs to find the resources it serves and notices them appear/disappear.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# kopf lists namespaces to match the namespaces it was told to serve.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* kopf run flags of the operator container, one per line. */}}
{{- define "modelservice-operator.args" -}}
- --liveness=http://0.0.0.0:{{ .Values.ports.health }}/healthz
{{- if .Values.watchNamespaces }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
{{- if include "modelservice-operator.peering" . }}
- --peering={{ .Values.peering.name }}
{{- else }}
- --standalone
{{- end }}
{{- if eq .Values.logLevel "debug" }}
- --verbose
{{- else if eq .Values.logLevel "warning" }}
- --quiet
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* The activator (activator.enabled): its name, labels (its own app name, so that the
operator's Service never selects it) and the Service address the operator routes to:
namespace/name:port:grpcPort (settings.py reads it). */}}
{{- define "modelservice-operator.activatorName" -}}
{{- printf "%s-activator" (include "modelservice-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelservice-operator.activatorSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-activator" (include "modelservice-operator.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modelservice-operator.activatorAddress" -}}
{{- if .Values.activator.enabled }}
{{- printf "%s/%s:%d:%d" .Release.Namespace (include "modelservice-operator.activatorName" .) (int .Values.activator.port) (int .Values.activator.grpcPort) }}
{{- end }}
{{- end }}

{{/* Exactly modelservice_operator.rbac.ACTIVATOR_RULES; tests/unit/test_chart.py checks. */}}
{{- define "modelservice-operator.activatorRules" -}}
# Reads a ModelService (its hold bound, its status) and sets its wake annotation.
- apiGroups: ["serving.modelservice.io"]
  resources: ["modelservices"]
  verbs: ["get", "patch"]
# Finds a Ready pod of the model's Service, and the model a Service's hold slice is for.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list"]
{{- end }}
