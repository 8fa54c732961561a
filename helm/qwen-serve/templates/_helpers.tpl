{{/*
Shared names, labels and lookups of the qwen-serve chart.
*/}}

{{/* Chart name. */}}
{{- define "qwen-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the RayService's name and the stem of every resource. KubeRay appends a
suffix for the RayCluster and its pods and Services, so it is kept to 40 characters.
*/}}
{{- define "qwen-serve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart label value. */}}
{{- define "qwen-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource the chart renders. */}}
{{- define "qwen-serve.labels" -}}
helm.sh/chart: {{ include "qwen-serve.chart" . }}
app.kubernetes.io/name: {{ include "qwen-serve.name" . }}
{{ include "qwen-serve.podSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels on the Ray pods, and what PodMonitor and PodDisruptionBudget select them by.
Not app.kubernetes.io/name: KubeRay sets it to "kuberay" on Ray pods and its head
Service selects the head pod by it, so overriding it would cut workers off the head.
*/}}
{{- define "qwen-serve.podSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: qwen-serve
{{- end }}

{{/* Name of the OpenAI Service (KubeRay's serve Service for this RayService). */}}
{{- define "qwen-serve.serviceName" -}}
{{- default (include "qwen-serve.fullname" .) .Values.service.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Image reference. */}}
{{- define "qwen-serve.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion .Values.image.flavor) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/*
Ray accelerator types per GPU kind (server/catalog.yaml's ray_accelerator_type; Ray
detects an A100 of either size as "A100"). A group advertises each as a Ray resource
`accelerator_type:<X>`, which Ray Serve LLM's placement bundles ask for when a pool sets
accelerator_type; A100 groups also advertise their size (A100-40G / A100-80G).
*/}}
{{- define "qwen-serve.acceleratorTypes" -}}
{{- $types := dict "l4" (list "L4") "a100-40g" (list "A100" "A100-40G") "a100-80g" (list "A100" "A100-80G") "h100" (list "H100") "h200" (list "H200") "cpu" (list) }}
{{- get $types . | toJson }}
{{- end }}

{{/* Secret names. */}}
{{- define "qwen-serve.apiKeysSecretName" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "qwen-serve.fullname" .)) }}
{{- end }}

{{- define "qwen-serve.hfTokenSecretName" -}}
{{- .Values.hfToken.existingSecret | default (printf "%s-hf-token" (include "qwen-serve.fullname" .)) }}
{{- end }}

{{- define "qwen-serve.hfTokenEnabled" -}}
{{- if or .Values.hfToken.existingSecret .Values.hfToken.value }}true{{ end }}
{{- end }}

{{/* Path of the mounted API-keys file. */}}
{{- define "qwen-serve.apiKeysFile" -}}
{{- printf "%s/%s" (.Values.apiKeys.mountPath | trimSuffix "/") .Values.apiKeys.secretKey }}
{{- end }}

{{/*
The qwen-serve configuration document, as YAML (callers: `include ... | fromYaml`).
Source: `configFile` (a document or a Serve config file wrapping one), else `config`;
when it names no pools, files/default-config.yaml lies underneath. With apiKeys on,
security.api_keys_file points at the mounted Secret.
*/}}
{{- define "qwen-serve.config" -}}
{{- $cfg := dict }}
{{- if .Values.configFile }}
{{- $doc := fromYaml .Values.configFile }}
{{- if hasKey $doc "Error" }}
{{- fail (printf "configFile is not valid YAML: %s" (get $doc "Error")) }}
{{- end }}
{{- if and (hasKey $doc "applications") (not (hasKey $doc "pools")) }}
{{- $apps := list }}
{{- range $doc.applications }}
{{- if eq (.import_path | default "") "server.app:build_app" }}
{{- $apps = append $apps . }}
{{- end }}
{{- end }}
{{- if ne (len $apps) 1 }}
{{- fail "configFile: a Serve config file must hold exactly one application with import_path server.app:build_app" }}
{{- end }}
{{- $cfg = (first $apps).args | default dict }}
{{- else }}
{{- $cfg = $doc }}
{{- end }}
{{- else }}
{{- $cfg = deepCopy (.Values.config | default dict) }}
{{- end }}
{{- if not $cfg.pools }}
{{- $cfg = mergeOverwrite (.Files.Get "files/default-config.yaml" | fromYaml) $cfg }}
{{- end }}
{{- if .Values.apiKeys.enabled }}
{{- $security := $cfg.security | default dict }}
{{- $file := include "qwen-serve.apiKeysFile" . }}
{{- if and $security.api_keys_file (ne $security.api_keys_file $file) }}
{{- fail (printf "config.security.api_keys_file is %s, but apiKeys mounts the keys at %s: remove it from the config (the chart sets it) or set apiKeys.mountPath/secretKey to match" $security.api_keys_file $file) }}
{{- end }}
{{- $_ := set $security "api_keys_file" $file }}
{{- $_ := set $cfg "security" $security }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The Serve HTTP port: config.server.port (default 8000). */}}
{{- define "qwen-serve.servePort" -}}
{{- $cfg := include "qwen-serve.config" . | fromYaml }}
{{- (($cfg.server | default dict).port | default 8000) | int }}
{{- end }}

{{/* Ray's metrics export port: config.server.ray_metrics_port (default 8080). */}}
{{- define "qwen-serve.metricsPort" -}}
{{- $cfg := include "qwen-serve.config" . | fromYaml }}
{{- (($cfg.server | default dict).ray_metrics_port | default 8080) | int }}
{{- end }}
