{{/*
The chart name, truncated to 63 characters (a label value's limit).
*/}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: RELEASE-kubetune, or just RELEASE when it already says kubetune.
*/}}
{{- define "kubetune.fullname" -}}
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

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator pod. Never change them: a Deployment's selector is immutable.
*/}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels on every resource the chart creates (CRDs get kubetune.crdLabels instead).
*/}}
{{- define "kubetune.labels" -}}
{{ include "kubetune.selectorLabels" . }}
{{ include "kubetune.crdLabels" . }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{/*
Labels added to the CRDs, which already carry app.kubernetes.io/part-of from crds/.
*/}}
{{- define "kubetune.crdLabels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {registry, repository, tag, digest}: REGISTRY/REPOSITORY:TAG@DIGEST.
Call with (dict "image" .Values.image "defaultTag" "x").
*/}}
{{- define "kubetune.image" -}}
{{- $image := .image }}
{{- $ref := $image.repository }}
{{- if $image.registry }}
{{- $ref = printf "%s/%s" $image.registry $image.repository }}
{{- end }}
{{- $tag := default .defaultTag $image.tag }}
{{- if $tag }}
{{- $ref = printf "%s:%s" $ref $tag }}
{{- end }}
{{- if $image.digest }}
{{- $ref = printf "%s@%s" $ref $image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{/*
The namespaced rules the operator needs wherever it manages FineTuneJobs and ModelDeployments.
docs/security.md explains each one; tests/chart checks there are no wildcards and no Secret access.
*/}}
{{- define "kubetune.namespacedRules" -}}
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs", "modeldeployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs/status", "modeldeployments/status"]
  verbs: ["get", "patch"]
# Children carry ownerReferences with blockOwnerDeletion: true, which needs update on the owner's
# finalizers subresource where the OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift).
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs/finalizers", "modeldeployments/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Multi-node training runs as a JobSet where the cluster serves jobset.x-k8s.io (found by discovery).
- apiGroups: ["jobset.x-k8s.io"]
  resources: ["jobsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- if .Values.keda.enabled }}
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}
{{- if .Values.gatewayAPI.enabled }}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/*
Cluster-scoped reads: Kopf discovers the CRDs (and waits for them) in every mode.
*/}}
{{- define "kubetune.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
