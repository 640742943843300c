{{/* The chart name, overridable. */}}
{{- define "feedbackloop-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "feedbackloop-operator.fullname" -}}
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

{{- define "feedbackloop-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "feedbackloop-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "feedbackloop-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "feedbackloop-operator.labels" -}}
helm.sh/chart: {{ include "feedbackloop-operator.chart" . }}
{{ include "feedbackloop-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "feedbackloop-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "feedbackloop-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "feedbackloop-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The operator's whole API surface; docs/install.md and the RBAC test list the same verbs. */}}
{{- define "feedbackloop-operator.rules" -}}
- apiGroups: [feedbackloop.dev]
  resources: [feedbackloops]
  verbs: [get, list, watch, patch]
- apiGroups: [feedbackloop.dev]
  resources: [feedbackloops/status]
  verbs: [patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, patch]
# Retrain pods only: read a Job's termination message (a failure reason, or the manifest digest on success),
# and patch to remove the operator's finalizer, which keeps that message until the loop's status has it.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* One entry per Deployment: {"suffix": "", "selector": ""} without shards, else one per shard. */}}
{{- define "feedbackloop-operator.shards" -}}
{{- $shards := list -}}
{{- if .Values.shards -}}
{{- range .Values.shards -}}
{{- $shards = append $shards (dict "suffix" (printf "-%s" .name) "name" .name "selector" .selector) -}}
{{- end -}}
{{- else -}}
{{- $shards = append $shards (dict "suffix" "" "name" "" "selector" "") -}}
{{- end -}}
{{- toJson $shards -}}
{{- end }}

{{- define "feedbackloop-operator.leaseNames" -}}
{{- $names := list -}}
{{- range (include "feedbackloop-operator.shards" . | fromJsonArray) -}}
{{- $names = append $names (printf "%s%s" (include "feedbackloop-operator.fullname" $) .suffix) -}}
{{- end -}}
{{- toJson $names -}}
{{- end }}
