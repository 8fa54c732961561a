{{/*
Pieces shared by the head and worker pod templates of the RayService.
Call with (dict "root" $ "node" <head values or a workerGroups entry> "type" "head"|"worker").
*/}}

{{/* Pod metadata. */}}
{{- define "qwen-serve.podMetadata" -}}
labels:
  {{- include "qwen-serve.podSelectorLabels" .root | nindent 2 }}
  app.kubernetes.io/component: {{ printf "ray-%s" .type }}
  {{- with .node.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .node.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod spec (the Ray container is the first container, as KubeRay expects). */}}
{{- define "qwen-serve.podSpec" -}}
{{- $root := .root }}
{{- $node := .node }}
{{- $v := $root.Values }}
{{- with $v.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
{{- with $node.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $node.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $node.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: {{ printf "ray-%s" .type }}
    image: {{ include "qwen-serve.image" $root | quote }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    ports:
      {{- if eq .type "head" }}
      - {name: gcs, containerPort: 6379}
      - {name: dashboard, containerPort: 8265}
      - {name: client, containerPort: 10001}
      {{- end }}
      - {name: serve, containerPort: {{ include "qwen-serve.servePort" $root }}}
      - {name: metrics, containerPort: {{ include "qwen-serve.metricsPort" $root }}}
    resources:
      {{- $res := deepCopy ($node.resources | default dict) }}
      {{- if gt (int ($node.gpusPerPod | default 0)) 0 }}
      {{- $gpus := int $node.gpusPerPod }}
      {{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" $gpus) ($res.limits | default dict)) }}
      {{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" $gpus) ($res.requests | default dict)) }}
      {{- end }}
      {{- toYaml $res | nindent 6 }}
    env:
      - name: HF_HOME
        value: {{ $v.modelCache.mountPath | quote }}
      {{- if include "qwen-serve.hfTokenEnabled" $root }}
      - name: HF_TOKEN
        valueFrom:
          secretKeyRef:
            name: {{ include "qwen-serve.hfTokenSecretName" $root }}
            key: {{ $v.hfToken.secretKey }}
      {{- end }}
      {{- with $node.env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    volumeMounts:
      - name: shared-mem
        mountPath: /dev/shm
      - name: model-cache
        mountPath: {{ $v.modelCache.mountPath }}
      {{- if $v.apiKeys.enabled }}
      - name: api-keys
        mountPath: {{ $v.apiKeys.mountPath }}
        readOnly: true
      {{- end }}
    lifecycle:
      preStop:
        exec:
          command: ["/bin/sh", "-c", "ray stop"]
volumes:
  # Shared memory for vLLM's workers and Ray's object store (the default 64 MiB is too small).
  - name: shared-mem
    emptyDir:
      medium: Memory
      sizeLimit: {{ $node.shmSize | default "2Gi" }}
  - name: model-cache
    {{- if $v.modelCache.existingClaim }}
    persistentVolumeClaim:
      claimName: {{ $v.modelCache.existingClaim }}
    {{- else }}
    emptyDir:
      sizeLimit: {{ $v.modelCache.sizeLimit }}
    {{- end }}
  {{- if $v.apiKeys.enabled }}
  - name: api-keys
    secret:
      secretName: {{ include "qwen-serve.apiKeysSecretName" $root }}
      items:
        - key: {{ $v.apiKeys.secretKey }}
          path: {{ $v.apiKeys.secretKey }}
  {{- end }}
{{- end }}

{{/*
rayStartParams of a worker group: its Ray resources (accelerator_type:<X>, in the escaped
JSON form KubeRay and the Ray autoscaler read), logical CPUs and the metrics port.
*/}}
{{- define "qwen-serve.workerRayStartParams" -}}
{{- $root := .root }}
{{- $g := .node }}
{{- $params := dict "metrics-export-port" (include "qwen-serve.metricsPort" $root) }}
{{- if $g.numCpus }}
{{- $_ := set $params "num-cpus" (toString $g.numCpus) }}
{{- end }}
{{- $resources := dict }}
{{- range $t := (include "qwen-serve.acceleratorTypes" $g.gpuKind | fromJsonArray) }}
{{- $_ := set $resources (printf "accelerator_type:%s" $t) 1 }}
{{- end }}
{{- if $resources }}
{{- $_ := set $params "resources" (printf "\"%s\"" ($resources | toJson | replace "\"" "\\\"")) }}
{{- end }}
{{- range $k, $val := ($g.rayStartParams | default dict) }}
{{- $_ := set $params $k (toString $val) }}
{{- end }}
{{- range $k := keys $params | sortAlpha }}
{{ $k }}: {{ get $params $k | toString | squote }}
{{- end }}
{{- end }}
