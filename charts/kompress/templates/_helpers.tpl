{{/* Chart name. */}}
{{- define "kompress.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-kompress, or the release name when it already contains the chart name. */}}
{{- define "kompress.fullname" -}}
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

{{- define "kompress.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kompress.labels" -}}
helm.sh/chart: {{ include "kompress.chart" . }}
{{ include "kompress.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kompress
{{- end }}

{{- define "kompress.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kompress.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "kompress.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kompress.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest] from an image dict, with fallbacks. Args: (list image defaultRepository defaultTag). */}}
{{- define "kompress.imageRef" -}}
{{- $img := index . 0 }}
{{- $repo := default (index . 1) $img.repository }}
{{- if $img.digest }}
{{- printf "%s@%s" $repo $img.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default (index . 2) $img.tag) }}
{{- end }}
{{- end }}

{{- define "kompress.image" -}}
{{- include "kompress.imageRef" (list .Values.image .Values.image.repository .Chart.AppVersion) }}
{{- end }}

{{- define "kompress.workerImage" -}}
{{- if or .Values.worker.image.repository .Values.worker.image.tag .Values.worker.image.digest }}
{{- include "kompress.imageRef" (list .Values.worker.image .Values.image.repository (default .Chart.AppVersion .Values.image.tag)) }}
{{- else }}
{{- include "kompress.image" . }}
{{- end }}
{{- end }}

{{- define "kompress.workerGpuImage" -}}
{{- include "kompress.imageRef" (list .Values.worker.gpuImage .Values.image.repository (printf "%s-gpu" (default .Chart.AppVersion .Values.image.tag))) }}
{{- end }}

{{/* The namespace the controller watches: "" means all namespaces. */}}
{{- define "kompress.watchNamespace" -}}
{{- if .Values.controller.watchNamespace }}
{{- .Values.controller.watchNamespace }}
{{- else if .Values.rbac.namespaced }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* The leader-election Lease name (fixed by the controller). */}}
{{- define "kompress.leaseName" -}}
kompress-controller
{{- end }}

{{/* The controller's permissions (least privilege; no Secrets: worker pods read storage
credentials through envFrom.secretRef, which needs no controller permission). */}}
{{- define "kompress.rbacRules" -}}
- apiGroups: ["kompress.dev"]
  resources: ["compressionjobs"]
  verbs: ["get", "list", "watch", "patch", "create", "delete"]
- apiGroups: ["kompress.dev"]
  resources: ["compressionjobs/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["kompress.dev"]
  resources: ["compressionpolicies"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kompress.dev"]
  resources: ["compressionpolicies/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Kueue: why a queued worker Job waits (read-only; harmless where Kueue is not installed)
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list"]
{{- end }}
