{{/*
Cross-field checks that values.schema.json cannot express. Each failure stops
`helm install/upgrade/template` with a message that names the keys to change, instead of
a RayService whose replicas stay pending forever.
*/}}
{{- define "qwen-serve.validate" -}}
{{- $cfg := include "qwen-serve.config" . | fromYaml }}
{{- $groups := .Values.workerGroups | default list }}

{{- /* Worker groups: unique names, replica bounds, GPUs per kind. */}}
{{- $names := dict }}
{{- range $g := $groups }}
{{- if hasKey $names $g.name }}
{{- fail (printf "workerGroups: the name %q is used twice; group names must be unique" $g.name) }}
{{- end }}
{{- $_ := set $names $g.name true }}
{{- if gt (int $g.minReplicas) (int $g.maxReplicas) }}
{{- fail (printf "workerGroups[%s]: minReplicas (%d) is above maxReplicas (%d)" $g.name (int $g.minReplicas) (int $g.maxReplicas)) }}
{{- end }}
{{- if or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) }}
{{- fail (printf "workerGroups[%s]: replicas (%d) must lie between minReplicas (%d) and maxReplicas (%d)" $g.name (int $g.replicas) (int $g.minReplicas) (int $g.maxReplicas)) }}
{{- end }}
{{- if and (eq $g.gpuKind "cpu") (gt (int $g.gpusPerPod) 0) }}
{{- fail (printf "workerGroups[%s]: gpuKind cpu takes gpusPerPod 0 (got %d)" $g.name (int $g.gpusPerPod)) }}
{{- end }}
{{- if and (ne $g.gpuKind "cpu") (lt (int $g.gpusPerPod) 1) }}
{{- fail (printf "workerGroups[%s]: gpuKind %s needs gpusPerPod of at least 1" $g.name $g.gpuKind) }}
{{- end }}
{{- end }}

{{- /* Router modes name existing pools. */}}
{{- $pools := $cfg.pools | default dict }}
{{- range $mode, $m := (($cfg.router | default dict).modes | default dict) }}
{{- if not (hasKey $pools $m.pool) }}
{{- fail (printf "config.router.modes.%s.pool is %q, which is not a pool (pools: %s)" $mode $m.pool (keys $pools | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}

{{- /* Every pool has somewhere to run, and its minimum fits the groups' maximum. */}}
{{- $cpuCapacity := gt (float64 (.Values.head.numCpus | default "0")) 0.0 }}
{{- $gpuCapacity := dict }}
{{- $gpuTotal := 0 }}
{{- $groupList := list }}
{{- range $g := $groups }}
{{- $groupList = append $groupList (printf "%s (gpuKind %s, %d GPU/pod)" $g.name $g.gpuKind (int $g.gpusPerPod)) }}
{{- if eq $g.gpuKind "cpu" }}
{{- $cpuCapacity = true }}
{{- else }}
{{- $gpuTotal = add $gpuTotal (mul (int $g.maxReplicas) (int $g.gpusPerPod)) }}
{{- range $t := (include "qwen-serve.acceleratorTypes" $g.gpuKind | fromJsonArray) }}
{{- $_ := set $gpuCapacity $t (add (get $gpuCapacity $t | default 0) (mul (int $g.maxReplicas) (int $g.gpusPerPod))) }}
{{- end }}
{{- end }}
{{- end }}
{{- $groupText := $groupList | join ", " | default "none" }}
{{- $kindByPlanGpu := dict "l4" "L4" "a100-40g" "A100" "a100-80g" "A100" "h100" "H100" "h200" "H200" }}
{{- $gpuNeed := dict }}
{{- $gpuNeedTotal := 0 }}
{{- range $name := keys $pools | sortAlpha }}
{{- $p := get $pools $name }}
{{- if not $p.model }}
{{- fail (printf "config.pools.%s.model is missing: name a model (e.g. Qwen/Qwen3-30B-A3B or tiny-qwen3-dense)" $name) }}
{{- end }}
{{- $plan := $p.plan | default dict }}
{{- $accel := $p.accelerator | default "gpu" }}
{{- if $plan.gpu }}{{ $accel = ternary "cpu" "gpu" (eq $plan.gpu "cpu") }}{{ end }}
{{- if $p.autoscaling }}
{{- $a := $p.autoscaling }}
{{- if gt (int ($a.min_replicas | default 1)) (int ($a.max_replicas | default 1)) }}
{{- fail (printf "config.pools.%s.autoscaling: min_replicas (%d) is above max_replicas (%d)" $name (int ($a.min_replicas | default 1)) (int ($a.max_replicas | default 1))) }}
{{- end }}
{{- end }}
{{- if eq $accel "cpu" }}
{{- if $p.accelerator_type }}
{{- fail (printf "config.pools.%s: accelerator_type applies to GPU pools only; remove it or set accelerator: gpu" $name) }}
{{- end }}
{{- if not $cpuCapacity }}
{{- fail (printf "config.pools.%s runs on the CPU (accelerator: cpu), but no workerGroups entry has gpuKind cpu and head.numCpus is \"0\" (groups: %s). Add a cpu group, or drop the pool (e.g. `config.pools.%s: null` if it is a default)" $name $groupText $name) }}
{{- end }}
{{- else }}
{{- /* GPUs one replica takes, and replicas that must fit. */}}
{{- $par := $p.parallelism | default dict }}
{{- $tp := int ($par.tensor_parallel_size | default 1) }}
{{- $pp := int ($par.pipeline_parallel_size | default 1) }}
{{- $perReplica := mul $tp $pp }}
{{- $perNode := ternary $perReplica $tp (eq $pp 1) }}
{{- if $p.placement }}
{{- $bundleGpus := 0.0 }}
{{- range $b := $p.placement.bundles }}{{ $bundleGpus = addf $bundleGpus (float64 ($b.GPU | default 0)) }}{{ end }}
{{- $perReplica = int (ceil $bundleGpus) }}
{{- end }}
{{- $replicas := int ($p.replicas | default 1) }}
{{- if hasKey $p "replicas" }}{{ $replicas = int $p.replicas }}{{ end }}
{{- if $p.autoscaling }}
{{- $a := $p.autoscaling }}
{{- $replicas = int (max (int ($a.min_replicas | default 1)) 1) }}
{{- if hasKey $a "initial_replicas" }}{{ if $a.initial_replicas }}{{ $replicas = int $a.initial_replicas }}{{ end }}{{ end }}
{{- end }}
{{- $need := mul $replicas $perReplica }}
{{- $type := $p.accelerator_type | default "" }}
{{- if $plan.gpu }}
{{- $type = get $kindByPlanGpu $plan.gpu }}
{{- $perNode = int ($plan.gpus | default 1) }}
{{- $need = mul (int ($plan.gpus | default 1)) (int ($plan.nodes | default 1)) }}
{{- end }}
{{- if $type }}
{{- if not (hasKey $gpuCapacity $type) }}
{{- fail (printf "config.pools.%s needs accelerator_type %s, but no workerGroups entry offers it (groups: %s). Add a group with the matching gpuKind (l4, a100-40g, a100-80g, h100, h200)" $name $type $groupText) }}
{{- end }}
{{- $fits := false }}
{{- range $g := $groups }}
{{- if and (has $type (include "qwen-serve.acceleratorTypes" $g.gpuKind | fromJsonArray)) (ge (int $g.gpusPerPod) $perNode) }}{{ $fits = true }}{{ end }}
{{- end }}
{{- if not $fits }}
{{- fail (printf "config.pools.%s places %d GPUs of one replica on one node (tensor_parallel_size %d), but no %s group has that many GPUs per pod (groups: %s). Raise gpusPerPod or lower tensor_parallel_size" $name $perNode $tp $type $groupText) }}
{{- end }}
{{- $_ := set $gpuNeed $type (add (get $gpuNeed $type | default 0) $need) }}
{{- else if eq $gpuTotal 0 }}
{{- fail (printf "config.pools.%s runs on GPUs (accelerator: gpu), but no workerGroups entry has GPUs (groups: %s)" $name $groupText) }}
{{- end }}
{{- $gpuNeedTotal = add $gpuNeedTotal $need }}
{{- end }}
{{- end }}
{{- range $type, $need := $gpuNeed }}
{{- if gt (int $need) (int (get $gpuCapacity $type)) }}
{{- fail (printf "config.pools need at least %d %s GPUs for their minimum replicas, but the %s worker groups hold at most %d (maxReplicas x gpusPerPod). Raise maxReplicas or lower the pools' replicas" (int $need) $type $type (int (get $gpuCapacity $type))) }}
{{- end }}
{{- end }}
{{- if gt (int $gpuNeedTotal) (int $gpuTotal) }}
{{- fail (printf "config.pools need at least %d GPUs for their minimum replicas, but the worker groups hold at most %d (maxReplicas x gpusPerPod)" (int $gpuNeedTotal) (int $gpuTotal)) }}
{{- end }}

{{- /* Pods outlive the router's graceful shutdown, so in-flight streams can finish. */}}
{{- $grace := float64 (($cfg.server | default dict).graceful_shutdown_timeout_s | default 30) }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed config.server.graceful_shutdown_timeout_s (%v), or Kubernetes kills pods while streams are still finishing" .Values.terminationGracePeriodSeconds $grace) }}
{{- end }}

{{- /* Secrets the config relies on. */}}
{{- $security := $cfg.security | default dict }}
{{- if and .Values.apiKeys.enabled (not .Values.apiKeys.existingSecret) (not .Values.apiKeys.keys) }}
{{- fail "apiKeys.enabled needs apiKeys.existingSecret (recommended) or apiKeys.keys" }}
{{- end }}
{{- if and $security.api_keys_file (not .Values.apiKeys.enabled) }}
{{- fail (printf "config.security.api_keys_file is %s, but apiKeys.enabled is false: nothing mounts that file and the router would not start. Set apiKeys.enabled with apiKeys.existingSecret" $security.api_keys_file) }}
{{- end }}
{{- $metrics := $cfg.metrics | default dict }}
{{- if and .Values.monitoring.serviceMonitor.enabled $metrics.require_auth .Values.apiKeys.enabled (not .Values.monitoring.serviceMonitor.bearerTokenSecret.name) }}
{{- fail "config.metrics.require_auth is true: set monitoring.serviceMonitor.bearerTokenSecret {name, key} to a Secret holding an API key, or Prometheus gets 401 from /metrics" }}
{{- end }}
{{- $pm := .Values.monitoring.podMonitor }}
{{- if and .Values.monitoring.serviceMonitor.enabled $pm.enabled $pm.routerMetrics (ne (toString $metrics.ray_export) "false") }}
{{- fail "monitoring.serviceMonitor and monitoring.podMonitor.routerMetrics both collect qwen_serve_* (the router's /metrics, and every router replica's copy through Ray's metrics port): the router's requests would count twice. Keep one: monitoring.serviceMonitor.enabled false (exact with any number of router replicas), or monitoring.podMonitor.routerMetrics false" }}
{{- end }}
{{- if and (eq .Values.rayService.upgradeStrategy "NewClusterWithIncrementalUpgrade") (not .Values.rayService.clusterUpgradeOptions.gatewayClassName) }}
{{- fail "rayService.upgradeStrategy NewClusterWithIncrementalUpgrade needs rayService.clusterUpgradeOptions {gatewayClassName, stepSizePercent, intervalSeconds}" }}
{{- end }}
{{- end }}
