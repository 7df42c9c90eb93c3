{{/*
Cross-field checks that values.schema.json cannot express. Each failed check adds one line
that names the value and says what to do; all lines are reported together, e.g.

  scribe: invalid values:
    - transcriber.pools.l4: gpu is true but resources.limits."nvidia.com/gpu" is missing; set it to 1 (one pod per GPU)
*/}}
{{- define "scribe.validateValues" -}}
{{- $errs := list -}}
{{- $v := .Values -}}

{{- /* Messaging and storage: embedded dependency or external endpoint. */ -}}
{{- if and (not $v.nats.enabled) (not $v.nats.url) -}}
{{- $errs = append $errs "nats.enabled is false but nats.url is empty; set nats.url (e.g. nats://nats.messaging.svc:4222) or enable the embedded NATS" -}}
{{- end -}}
{{- if $v.nats.url -}}
{{- range $u := splitList "," $v.nats.url -}}
{{- $u = trim $u -}}
{{- if and (not (hasPrefix "nats://" $u)) (not (hasPrefix "tls://" $u)) -}}
{{- $errs = append $errs (printf "nats.url %q must start with nats:// or tls:// (several servers: comma-separated URLs, each with its scheme)" $u) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* Stream replicas cannot exceed the JetStream servers (JetStream refuses to create such a stream). */ -}}
{{- if $v.nats.enabled -}}
{{- $servers := include "scribe.natsServers" . | int -}}
{{- if gt (int (default 0 $v.nats.jetstreamReplicas)) $servers -}}
{{- $errs = append $errs (printf "nats.jetstreamReplicas is %d but the embedded NATS has %d JetStream server(s); set it to at most %d, or raise nats.config.cluster.replicas" (int $v.nats.jetstreamReplicas) $servers $servers) -}}
{{- end -}}
{{- end -}}
{{- /* KEDA: an endpoint to read, and a range that makes sense, per pool. */ -}}
{{- $kedaDefaults := dig "autoscaling" "keda" dict $v.transcriber -}}
{{- range $name, $pool := $v.transcriber.pools -}}
{{- if eq (include "scribe.poolEnabled" $pool) "true" -}}
{{- $keda := deepCopy $kedaDefaults -}}
{{- range $k, $val := (default dict $pool.autoscaling) }}{{ $_ := set $keda $k $val }}{{ end -}}
{{- if eq (toString (default false $keda.enabled)) "true" -}}
{{- if and (not $v.nats.enabled) (not $keda.natsServerMonitoringEndpoint) -}}
{{- $errs = append $errs (printf "transcriber.pools.%s: KEDA autoscaling with external NATS needs transcriber.autoscaling.keda.natsServerMonitoringEndpoint (host:port of the NATS HTTP monitoring, e.g. nats-headless.messaging.svc.cluster.local:8222)" $name) -}}
{{- end -}}
{{- if gt (int $keda.minReplicas) (int $keda.maxReplicas) -}}
{{- $errs = append $errs (printf "transcriber.pools.%s: KEDA minReplicas %d is above maxReplicas %d" $name (int $keda.minReplicas) (int $keda.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $v.minio.enabled -}}
{{- if not $v.objectStore.endpoint -}}
{{- $errs = append $errs "minio.enabled is false but objectStore.endpoint is empty; set objectStore.endpoint (host:port of your S3 service) or enable the embedded MinIO" -}}
{{- else if or (contains "://" $v.objectStore.endpoint) (contains "/" $v.objectStore.endpoint) -}}
{{- $errs = append $errs (printf "objectStore.endpoint %q must be host:port without a scheme or path; use objectStore.secure for https" $v.objectStore.endpoint) -}}
{{- end -}}
{{- if not $v.objectStore.existingSecret -}}
{{- $errs = append $errs "minio.enabled is false but objectStore.existingSecret is empty; create a Secret with the S3 access and secret keys and name it there" -}}
{{- end -}}
{{- end -}}

{{- /* API keys. With neither existingSecret nor keysFile the chart generates an admin key. */ -}}
{{- if and (not $v.auth.existingSecret) (eq $v.auth.secretKey "admin-api-key") -}}
{{- $errs = append $errs "auth.secretKey must not be \"admin-api-key\": the chart keeps the generated plain admin key under that key of its Secret; use e.g. api-keys.json" -}}
{{- end -}}

{{- /* ServiceAccounts: the pod RBAC must not land on the namespace's shared "default" by accident. */ -}}
{{- if and $v.transcriber.enabled $v.transcriber.rbac.create (not $v.serviceAccount.create) (not $v.serviceAccount.name) (not $v.transcriber.serviceAccountName) -}}
{{- $errs = append $errs "serviceAccount.create is false and no ServiceAccount is named, so the transcriber pods would run as \"default\" and transcriber.rbac would let every pod using it patch pods; set transcriber.serviceAccountName (or serviceAccount.name) to an existing ServiceAccount" -}}
{{- end -}}

{{- /* Shutdown budget. */ -}}
{{- range $k := list "preStopSleepSeconds" "drainSeconds" "graceSeconds" "marginSeconds" -}}
{{- if lt (int (index $v.common.shutdown $k)) 0 -}}
{{- $errs = append $errs (printf "common.shutdown.%s must be >= 0" $k) -}}
{{- end -}}
{{- end -}}

{{- /* Stateless services: autoscaling needs a CPU request to compute utilisation. */ -}}
{{- range $key := splitList " " (include "scribe.statelessKeys" .) -}}
{{- $svc := index $v $key -}}
{{- if and $svc.enabled $svc.autoscaling.enabled -}}
{{- if not (and $svc.resources $svc.resources.requests (index $svc.resources.requests "cpu")) -}}
{{- $errs = append $errs (printf "%s.autoscaling.enabled is true but %s.resources.requests.cpu is not set; the HPA scales on CPU utilisation of the request" $key $key) -}}
{{- end -}}
{{- if gt (int $svc.autoscaling.minReplicas) (int $svc.autoscaling.maxReplicas) -}}
{{- $errs = append $errs (printf "%s.autoscaling.minReplicas (%d) is greater than maxReplicas (%d)" $key (int $svc.autoscaling.minReplicas) (int $svc.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Transcriber pools. */ -}}
{{- if $v.transcriber.enabled -}}
{{- $enabled := 0 -}}
{{- range $name, $pool := $v.transcriber.pools -}}
{{- if eq (include "scribe.poolEnabled" $pool) "true" -}}
{{- $enabled = add1 $enabled -}}
{{- $limits := dict -}}
{{- if and $pool.resources $pool.resources.limits -}}{{- $limits = $pool.resources.limits -}}{{- end -}}
{{- $requests := dict -}}
{{- if and $pool.resources $pool.resources.requests -}}{{- $requests = $pool.resources.requests -}}{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- $errs = append $errs (printf "transcriber.pools.%s: the pool name must be a DNS label (lower-case letters, digits, '-'); it names a Deployment, a NATS subject and the scribe.dev/pool label" $name) -}}
{{- else if gt (len $name) 30 -}}
{{- $errs = append $errs (printf "transcriber.pools.%s: the pool name must be at most 30 characters" $name) -}}
{{- end -}}
{{- if $pool.gpu -}}
{{- if not (hasKey $pool "resources") -}}
{{- /* no resources at all: the chart gives the pod limits."nvidia.com/gpu": 1 */ -}}
{{- else if not (hasKey $limits "nvidia.com/gpu") -}}
{{- $errs = append $errs (printf "transcriber.pools.%s: gpu is true but resources.limits.\"nvidia.com/gpu\" is missing; set it to 1 (one pod per GPU)" $name) -}}
{{- else if ne (toString (index $limits "nvidia.com/gpu")) "1" -}}
{{- $errs = append $errs (printf "transcriber.pools.%s: resources.limits.\"nvidia.com/gpu\" is %v; a transcriber pod owns exactly one GPU, set it to 1 and scale with replicas" $name (index $limits "nvidia.com/gpu")) -}}
{{- end -}}
{{- if eq (toString $pool.device) "cpu" -}}
{{- $errs = append $errs (printf "transcriber.pools.%s: gpu is true but device is \"cpu\"; use device auto or cuda" $name) -}}
{{- end -}}
{{- else -}}
{{- if or (hasKey $limits "nvidia.com/gpu") (hasKey $requests "nvidia.com/gpu") -}}
{{- $errs = append $errs (printf "transcriber.pools.%s: asks for nvidia.com/gpu but gpu is false; set gpu: true (GPU image, node selector, tolerations) or remove the GPU request" $name) -}}
{{- end -}}
{{- if eq (toString $pool.device) "cuda" -}}
{{- $errs = append $errs (printf "transcriber.pools.%s: device is \"cuda\" but gpu is false; a CPU pool cannot use CUDA" $name) -}}
{{- end -}}
{{- end -}}
{{- if not $pool.models -}}
{{- $errs = append $errs (printf "transcriber.pools.%s: models is empty; list the models this pool loads, e.g. [large-v3]" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq $enabled 0 -}}
{{- $errs = append $errs "transcriber.enabled is true but no pool in transcriber.pools is enabled; no job could ever run" -}}
{{- end -}}
{{- /* A default model must be one an enabled pool serves, or every job/session without a model fails. */ -}}
{{- $served := dict -}}
{{- range $name, $pool := $v.transcriber.pools -}}
{{- if eq (include "scribe.poolEnabled" $pool) "true" -}}
{{- range $m := (default list $pool.models) }}{{ $_ := set $served $m true }}{{ end -}}
{{- end -}}
{{- end -}}
{{- range $key := list "ingest" "streamGateway" -}}
{{- $svc := index $v $key -}}
{{- if and $svc.enabled $svc.defaultModel (not (hasKey $served $svc.defaultModel)) -}}
{{- $errs = append $errs (printf "%s.defaultModel %q is served by no enabled pool (served: %s); add it to a pool's models or pick one of those, or leave it empty for the first model of the first enabled pool" $key $svc.defaultModel (join ", " (keys $served | sortAlpha))) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Post-correction: the default is allowed, and a mode beyond "off" has an LLM to run it. */ -}}
{{- $pc := $v.postCorrection -}}
{{- $allowed := list -}}
{{- range $m := (default list $pc.allowed) }}{{ $allowed = append $allowed (toString $m) }}{{ end -}}
{{- if not (has (toString $pc.default) $allowed) -}}
{{- $errs = append $errs (printf "postCorrection.default %q is not in postCorrection.allowed [%s]; add it there or pick one of those (ingest would accept jobs that postprocess then refuses to correct)" (toString $pc.default) (join ", " $allowed)) -}}
{{- end -}}
{{- $llmEnv := dict -}}
{{- range $e := (default list $v.postprocess.extraEnv) }}{{ if hasKey $e "value" }}{{ $_ := set $llmEnv $e.name (toString $e.value) }}{{ end }}{{ end -}}
{{- $llmByEnv := and (eq (lower (default "" (get $llmEnv "SCRIBE_POSTPROCESS_LLM__ENABLED"))) "true") (get $llmEnv "SCRIBE_POSTPROCESS_LLM__ENDPOINT") -}}
{{- $beyondOff := without $allowed "off" -}}
{{- if and $beyondOff (not $pc.llm.endpoint) (not $llmByEnv) -}}
{{- $errs = append $errs (printf "postCorrection.allowed lists %s but no LLM endpoint is configured; set postCorrection.llm.endpoint (e.g. http://ollama.llm.svc:11434/v1) or allow only \"off\"" (join ", " $beyondOff)) -}}
{{- end -}}
{{- if and $beyondOff (not $v.postprocess.enabled) -}}
{{- $errs = append $errs (printf "postCorrection.allowed lists %s but postprocess.enabled is false; nothing would run the pass" (join ", " $beyondOff)) -}}
{{- end -}}

{{- /* The HTTP gateway calls Ingest and Results. */ -}}
{{- if $v.httpGateway.enabled -}}
{{- range $key := list "ingest" "results" -}}
{{- if not (index $v $key).enabled -}}
{{- $errs = append $errs (printf "httpGateway.enabled is true but %s.enabled is false; the HTTP gateway calls Ingest and Results, so enable %s or set httpGateway.enabled=false" $key $key) -}}
{{- end -}}
{{- end -}}
{{- if and $v.httpGateway.defaultModel $v.transcriber.enabled -}}
{{- $served := dict -}}
{{- range $name, $pool := $v.transcriber.pools -}}
{{- if eq (include "scribe.poolEnabled" $pool) "true" -}}
{{- range $m := (default list $pool.models) }}{{ $_ := set $served $m true }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if not (hasKey $served $v.httpGateway.defaultModel) -}}
{{- $errs = append $errs (printf "httpGateway.defaultModel %q is served by no enabled pool (served: %s); whisper-1 requests would fail with model_not_found" $v.httpGateway.defaultModel (join ", " (keys $served | sortAlpha))) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Envoy routes. */ -}}
{{- if $v.envoy.enabled -}}
{{- $def := index $v $v.envoy.defaultUpstream -}}
{{- if not (and $def $def.enabled) -}}
{{- $errs = append $errs (printf "envoy.defaultUpstream %q is not an enabled service; pick one of ingest, results, streamGateway that is enabled" $v.envoy.defaultUpstream) -}}
{{- end -}}
{{- range $i, $r := $v.envoy.routes -}}
{{- $up := index $v $r.upstream -}}
{{- if not $up -}}
{{- $errs = append $errs (printf "envoy.routes[%d] (%s): upstream %q is not a service of this chart" $i $r.name $r.upstream) -}}
{{- else if not $up.enabled -}}
{{- $errs = append $errs (printf "envoy.routes[%d] (%s): upstream %q is disabled (%s.enabled=false); remove the route or enable the service" $i $r.name $r.upstream $r.upstream) -}}
{{- end -}}
{{- if and (not $r.prefix) (not $r.path) -}}
{{- $errs = append $errs (printf "envoy.routes[%d] (%s): set prefix or path" $i $r.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- if $errs -}}
{{- fail (printf "\n\nscribe: invalid values:\n  - %s\n" (join "\n  - " $errs)) -}}
{{- end -}}
{{- end }}
