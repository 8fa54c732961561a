{{/*
The OpenAI endpoint's Service. It is rendered inside the RayService as spec.serveService
rather than as a standalone Service: KubeRay then owns its selector and moves it to the new
RayCluster only once the Serve application there is running, which is what makes cluster
upgrades zero-downtime. Name, type, labels, annotations and the port are ours.
*/}}
{{- define "qwen-serve.serveService" -}}
metadata:
  name: {{ include "qwen-serve.serviceName" . }}
  labels:
    {{- include "qwen-serve.labels" . | nindent 4 }}
    app.kubernetes.io/component: openai-api
    {{- with .Values.service.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .Values.service.type }}
  ports:
    - name: serve
      port: {{ include "qwen-serve.servePort" . }}
      targetPort: serve
      protocol: TCP
{{- end }}
