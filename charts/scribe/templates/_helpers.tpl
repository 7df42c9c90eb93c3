{{/*
Names, labels and the small shared pieces every workload template uses.
*/}}

{{- define "scribe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified base name, e.g. "scribe" for release "scribe", "prod-scribe" for "prod". */}}
{{- define "scribe.fullname" -}}
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

{{- define "scribe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The services of the platform: values key -> resource name and the SCRIBE_<SERVICE>_ env prefix.
The transcriber is listed for naming only; its Deployments are rendered per pool; the HTTP
gateway has its own template (http-gateway.yaml: HTTP, no NATS or object store).
*/}}
{{- define "scribe.serviceTable" -}}
ingest: {name: ingest, env: INGEST}
results: {name: results, env: RESULTS}
postprocess: {name: postprocess, env: POSTPROCESS}
streamGateway: {name: stream-gateway, env: STREAM_GATEWAY}
httpGateway: {name: http-gateway, env: HTTP_GATEWAY}
transcriber: {name: transcriber, env: TRANSCRIBER}
{{- end }}

{{/*
"true" when the HTTP gateway reaches Ingest and Results through Envoy: Envoy is enabled and its
listener is plaintext (the gateway's gRPC channels are plaintext; with envoy.tls it dials the
services' ClusterIP Services instead).
*/}}
{{- define "scribe.httpGatewayViaEnvoy" -}}
{{- and .Values.envoy.enabled (not .Values.envoy.tls.secretName) | toString -}}
{{- end }}

{{/* Stateless services (one Deployment + Service + HPA each), in render order. */}}
{{- define "scribe.statelessKeys" -}}
ingest results postprocess streamGateway
{{- end }}

{{/* Full resource name of a component: (dict "root" $ "name" "ingest") -> "scribe-ingest". */}}
{{- define "scribe.componentName" -}}
{{- printf "%s-%s" (include "scribe.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "scribe.labels" -}}
helm.sh/chart: {{ include "scribe.chart" . }}
app.kubernetes.io/name: {{ include "scribe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: scribe
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "ingest"). */}}
{{- define "scribe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scribe.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Image reference of any image of the chart: (dict "root" $ "image" <image values> "registry" <fallback registry> "tag" <tag>).
Registry: global.imageRegistry, else the image's own `registry`, else the fallback (image.registry
for the scribe images and the models init container, none for Envoy and the helm test image).
Digest wins over tag.
*/}}
{{- define "scribe.imageRef" -}}
{{- $global := default dict .root.Values.global -}}
{{- $registry := coalesce $global.imageRegistry .image.registry .registry | default "" -}}
{{- $repo := .image.repository -}}
{{- if $registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" $registry) $repo }}{{ end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString .tag) -}}
{{- end -}}
{{- end }}

{{/* Image reference of a scribe image: (dict "root" $ "image" .Values.ingest.image). Tag: its own, then image.tag, then appVersion. */}}
{{- define "scribe.image" -}}
{{- $tag := default .root.Chart.AppVersion (default .root.Values.image.tag .image.tag) -}}
{{- include "scribe.imageRef" (dict "root" .root "image" .image "registry" .root.Values.image.registry "tag" $tag) -}}
{{- end }}

{{/*
imagePullSecrets of every pod: global.imagePullSecrets merged with image.pullSecrets, each given
as a name ("regcred") or an object ({name: regcred}); duplicates dropped. Renders the whole
`imagePullSecrets:` key, or nothing when there are none.
*/}}
{{- define "scribe.imagePullSecrets" -}}
{{- $global := default dict .Values.global -}}
{{- $names := list -}}
{{- range (concat (default list $global.imagePullSecrets) (default list .Values.image.pullSecrets)) -}}
{{- if kindIs "string" . -}}
{{- $names = append $names . -}}
{{- else if kindIs "map" . -}}
{{- $names = append $names (toString .name) -}}
{{- end -}}
{{- end -}}
{{- $names = $names | compact | uniq -}}
{{- if $names }}
imagePullSecrets:
{{- range $names }}
  - name: {{ . }}
{{- end }}
{{- end -}}
{{- end }}

{{/* ServiceAccount of the stateless services and Envoy. */}}
{{- define "scribe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "scribe.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{/* ServiceAccount of the transcriber pools; the pod RBAC (transcriber.rbac.create) binds to it. */}}
{{- define "scribe.transcriberServiceAccountName" -}}
{{- if .Values.transcriber.serviceAccountName -}}
{{- .Values.transcriber.serviceAccountName -}}
{{- else if .Values.serviceAccount.create -}}
{{- printf "%s-transcriber" (include "scribe.serviceAccountName" .) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- include "scribe.serviceAccountName" . -}}
{{- end -}}
{{- end }}

{{/* True ("true") for a pool that is rendered: `enabled` absent or not false. */}}
{{- define "scribe.poolEnabled" -}}
{{- ne (toString .enabled) "false" -}}
{{- end }}

{{/*
The pools ingest routes to, as JSON {pool: [models]} (SCRIBE_INGEST_POOLS): every enabled entry of
transcriber.pools, or {} when the chart runs no transcriber. Keys sorted (Go's JSON encoding).
*/}}
{{- define "scribe.poolModels" -}}
{{- $out := dict -}}
{{- if .Values.transcriber.enabled -}}
{{- range $name, $pool := .Values.transcriber.pools -}}
{{- if eq (include "scribe.poolEnabled" $pool) "true" -}}
{{- $_ := set $out $name (default list $pool.models) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end }}

{{/*
Default model of a service: (dict "root" $ "value" <ingest.defaultModel or streamGateway.defaultModel>).
The value when set; else the first model of the first enabled pool in pool-name order (helm
ranges over a map in sorted key order), so a GPU-only install defaults to a model its pool
serves; "" when no pool is rendered (the service's own default applies).
*/}}
{{- define "scribe.defaultModel" -}}
{{- if .value -}}
{{- .value -}}
{{- else if .root.Values.transcriber.enabled -}}
{{- $first := "" -}}
{{- range $name, $pool := .root.Values.transcriber.pools -}}
{{- if and (not $first) (eq (include "scribe.poolEnabled" $pool) "true") $pool.models -}}
{{- $first = first $pool.models -}}
{{- end -}}
{{- end -}}
{{- $first -}}
{{- end -}}
{{- end }}

{{/* Name the official NATS chart gives its Service (its fullname rule, alias "nats"). */}}
{{- define "scribe.natsFullname" -}}
{{- if contains "nats" .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{ else }}{{ printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{/* Name the official MinIO chart gives its Service and generated Secret. */}}
{{- define "scribe.minioFullname" -}}
{{- if contains "minio" .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{ else }}{{ printf "%s-minio" .Release.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{/* Whether the embedded NATS runs as a cluster (nats.config.cluster.enabled of the NATS chart). */}}
{{- define "scribe.natsClustered" -}}
{{- $cluster := (default dict (default dict .Values.nats.config).cluster) -}}
{{- and .Values.nats.enabled $cluster.enabled | toString -}}
{{- end }}

{{/* Servers of the embedded NATS: config.cluster.replicas (the NATS chart's default 3) when clustered, else 1. */}}
{{- define "scribe.natsServers" -}}
{{- $cluster := (default dict (default dict .Values.nats.config).cluster) -}}
{{- if eq (include "scribe.natsClustered" .) "true" }}{{ hasKey $cluster "replicas" | ternary $cluster.replicas 3 | int }}{{ else }}1{{ end -}}
{{- end }}

{{/* Port of the embedded NATS (config.<key>.port of the NATS chart, or its default). */}}
{{- define "scribe.natsPort" -}}
{{- $block := get (default dict .root.Values.nats.config) .key | default dict -}}
{{- hasKey $block "port" | ternary $block.port .default | int -}}
{{- end }}

{{/*
nats://host:port the services connect to, comma-separated. Embedded cluster: every server by its
stable pod name on the headless Service (nats://<nats>-N.<nats>-headless.<ns>.svc:4222), since the
NATS chart's servers do not advertise their addresses to clients (cluster.noAdvertise), so a
client knows only the servers it was given; a single embedded server: its Service.
*/}}
{{- define "scribe.natsUrl" -}}
{{- $port := include "scribe.natsPort" (dict "root" . "key" "nats" "default" 4222) -}}
{{- $name := include "scribe.natsFullname" . -}}
{{- if eq (include "scribe.natsClustered" .) "true" -}}
{{- $urls := list -}}
{{- range $i := until (include "scribe.natsServers" . | int) -}}
{{- $urls = append $urls (printf "nats://%s-%d.%s-headless.%s.svc:%s" $name $i $name $.Release.Namespace $port) -}}
{{- end -}}
{{ join "," $urls }}
{{- else if .Values.nats.enabled -}}
nats://{{ $name }}.{{ .Release.Namespace }}.svc:{{ $port }}
{{- else -}}
{{ .Values.nats.url }}
{{- end -}}
{{- end }}

{{/* Replicas of scribe's streams and KV buckets: nats.jetstreamReplicas, or the embedded cluster's size (at most 5), or 1. */}}
{{- define "scribe.natsReplicas" -}}
{{- $set := int (default 0 .Values.nats.jetstreamReplicas) -}}
{{- if gt $set 0 }}{{ $set }}{{ else }}{{ min 5 (include "scribe.natsServers" . | int) }}{{ end -}}
{{- end }}

{{/* host:port of the embedded NATS servers' HTTP monitoring on the headless Service (KEDA's scaler reads /jsz there). */}}
{{- define "scribe.natsMonitoringEndpoint" -}}
{{- $name := include "scribe.natsFullname" . -}}
{{- printf "%s-headless.%s.svc.%s:%s" $name .Release.Namespace .Values.clusterDomain (include "scribe.natsPort" (dict "root" . "key" "monitor" "default" 8222)) -}}
{{- end }}

{{/* host:port of the S3 endpoint. */}}
{{- define "scribe.objectStoreEndpoint" -}}
{{- if .Values.minio.enabled -}}
{{ include "scribe.minioFullname" . }}.{{ .Release.Namespace }}.svc:9000
{{- else -}}
{{ .Values.objectStore.endpoint }}
{{- end -}}
{{- end }}

{{/* Secret name/keys holding the S3 credentials, as a YAML dict {name, accessKey, secretKey}. */}}
{{- define "scribe.objectStoreSecret" -}}
{{- if .Values.minio.enabled -}}
name: {{ default (include "scribe.minioFullname" .) .Values.minio.existingSecret }}
accessKey: rootUser
secretKey: rootPassword
{{- else -}}
name: {{ .Values.objectStore.existingSecret }}
accessKey: {{ .Values.objectStore.accessKeyKey }}
secretKey: {{ .Values.objectStore.secretKeyKey }}
{{- end -}}
{{- end }}

{{/* Secret holding the hashed API keys file. */}}
{{- define "scribe.serviceKeysSecretName" -}}
{{- printf "%s-service-keys" (include "scribe.fullname" .) }}
{{- end }}

{{- define "scribe.authSecretName" -}}
{{- default (printf "%s-api-keys" (include "scribe.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/*
Shutdown budget of one workload: (dict "root" $ "cfg" <service or pool values>).
Per-workload `shutdown.*` keys override `common.shutdown.*` (hasKey, so 0 overrides too).
Returns YAML: {preStop, drain, grace, margin, total} in seconds, where
total = preStop + drain + grace + margin is the pod's terminationGracePeriodSeconds:
  preStop: kubelet sleeps before sending SIGTERM (endpoint removal propagates meanwhile);
  drain:   the service reports NOT_SERVING and keeps serving this long (SCRIBE_<S>_DRAIN_SECONDS);
  grace:   grpc server.stop(grace) lets in-flight calls finish (SCRIBE_<S>_GRACE_SECONDS);
  margin:  NATS drain and telemetry flush after the server stopped.
*/}}
{{- define "scribe.shutdown" -}}
{{- $common := .root.Values.common.shutdown -}}
{{- $own := default dict .cfg.shutdown -}}
{{- $out := dict -}}
{{- range $k := list "preStopSleepSeconds" "drainSeconds" "graceSeconds" "marginSeconds" -}}
{{- $_ := set $out $k (int (ternary (index $own $k) (index $common $k) (hasKey $own $k))) -}}
{{- end -}}
preStop: {{ $out.preStopSleepSeconds }}
drain: {{ $out.drainSeconds }}
grace: {{ $out.graceSeconds }}
margin: {{ $out.marginSeconds }}
total: {{ add $out.preStopSleepSeconds $out.drainSeconds $out.graceSeconds $out.marginSeconds }}
{{- end }}

{{/*
Environment shared by every scribe service: (dict "root" $ "prefix" "SCRIBE_INGEST_" "cfg" <values>
"sd" <shutdown dict> "component" <name> "serviceEnv" <optional YAML list of the service's own variables>).
The service's own variables come before common.extraEnv and the service's extraEnv.
*/}}
{{- define "scribe.commonEnv" -}}
{{- $root := .root -}}
{{- $p := .prefix -}}
{{- $store := include "scribe.objectStoreSecret" $root | fromYaml -}}
- name: {{ $p }}PORT
  value: {{ .cfg.port | quote }}
- name: {{ $p }}METRICS_PORT
  value: {{ $root.Values.common.metrics.port | quote }}
- name: {{ $p }}LOG_LEVEL
  value: {{ default $root.Values.common.logLevel .cfg.logLevel | quote }}
# Shutdown: with preStop and terminationGracePeriodSeconds (see the pod spec).
- name: {{ $p }}DRAIN_SECONDS
  value: {{ .sd.drain | quote }}
- name: {{ $p }}GRACE_SECONDS
  value: {{ .sd.grace | quote }}
- name: {{ $p }}NATS__URL
  value: {{ include "scribe.natsUrl" $root | quote }}
# Replicas of every stream and KV bucket the service declares (3 on the embedded 3-node cluster).
- name: {{ $p }}NATS__REPLICAS
  value: {{ include "scribe.natsReplicas" $root | quote }}
- name: {{ $p }}STORE__KIND
  value: "s3"
- name: {{ $p }}STORE__ENDPOINT
  value: {{ include "scribe.objectStoreEndpoint" $root | quote }}
- name: {{ $p }}STORE__SECURE
  value: {{ ternary "false" ($root.Values.objectStore.secure | toString) $root.Values.minio.enabled | quote }}
{{- if $root.Values.objectStore.region }}
- name: {{ $p }}STORE__REGION
  value: {{ $root.Values.objectStore.region | quote }}
{{- end }}
- name: {{ $p }}STORE__ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $store.name }}
      key: {{ $store.accessKey }}
- name: {{ $p }}STORE__SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $store.name }}
      key: {{ $store.secretKey }}
- name: {{ $p }}AUTH__KEYS_FILE
  value: {{ printf "%s/%s" $root.Values.auth.mountPath $root.Values.auth.secretKey | quote }}
- name: {{ $p }}AUTH__SERVICE_KEYS_FILE
  value: {{ printf "%s/service-keys.json" $root.Values.auth.mountPath | quote }}
# Every service declares the scribe_jobs bucket with this TTL: they must all agree.
- name: {{ $p }}RETENTION_DAYS
  value: {{ $root.Values.results.retentionDays | quote }}
{{- with $root.Values.common.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ .component | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "service.namespace=%s,k8s.namespace.name=%s" (include "scribe.fullname" $root) $root.Release.Namespace | quote }}
{{- with .serviceEnv }}
{{ . }}
{{- end }}
{{- with $root.Values.common.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .cfg.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Volumes every scribe pod has: writable /tmp (root filesystem is read-only), the API keys file
(only that key of the Secret: a generated Secret also holds the plain admin key, which no pod
needs), then common.extraVolumes.
*/}}
{{- define "scribe.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.common.tmpSizeLimit }}
- name: api-keys
  # The customer keys file and the chart's service keys file side by side in auth.mountPath.
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "scribe.authSecretName" . }}
          items:
            - key: {{ .Values.auth.secretKey }}
              path: {{ .Values.auth.secretKey }}
      - secret:
          name: {{ include "scribe.serviceKeysSecretName" . }}
          items:
            - key: service-keys.json
              path: service-keys.json
{{- with .Values.common.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Mounts of every scribe container: /tmp, the API keys, then common.extraVolumeMounts. */}}
{{- define "scribe.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: api-keys
  mountPath: {{ .Values.auth.mountPath }}
  readOnly: true
{{- with .Values.common.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Native gRPC probes: (dict "port" 50051 "probes" <probes values>). */}}
{{- define "scribe.grpcProbes" -}}
{{- $port := .port -}}
{{- range $kind := list "startup" "readiness" "liveness" }}
{{ $kind }}Probe:
  grpc:
    port: {{ $port }}
    service: {{ (index $.probes $kind).service | default "" | quote }}
  periodSeconds: {{ (index $.probes $kind).periodSeconds }}
  timeoutSeconds: {{ (index $.probes $kind).timeoutSeconds }}
  failureThreshold: {{ (index $.probes $kind).failureThreshold }}
  {{- if ne $kind "startup" }}
  successThreshold: 1
  {{- end }}
{{- end }}
{{- end }}

{{/* Ports every scribe container exposes. */}}
{{- define "scribe.containerPorts" -}}
- name: grpc
  containerPort: {{ .port }}
  protocol: TCP
- name: metrics
  containerPort: {{ .metricsPort }}
  protocol: TCP
{{- end }}

{{/* Prometheus scrape annotations for pods. */}}
{{- define "scribe.scrapeAnnotations" -}}
{{- if .Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.common.metrics.port | quote }}
prometheus.io/path: {{ .Values.common.metrics.path | quote }}
{{- end }}
{{- end }}

{{/* Checksum of the configuration a scribe pod reads, so a change rolls the pods. */}}
{{- define "scribe.configChecksum" -}}
{{- $parts := list (toYaml .Values.common) (toYaml .Values.objectStore) (include "scribe.natsUrl" .) (include "scribe.natsReplicas" .) (toYaml .Values.auth.existingSecret) -}}
{{- if .Values.auth.rollOnChange }}{{ $parts = append $parts (toYaml .Values.auth.keysFile) }}{{ end -}}
{{- join "\n" $parts | sha256sum -}}
{{- end }}
