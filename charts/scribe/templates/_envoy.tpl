{{/*
Envoy bootstrap (v3 API), rendered from values.envoy. One gRPC listener routes
/scribe.v1.<Service>/ to each service's cluster over HTTP/2; an ops listener answers /ready and
/stats/prometheus; the admin interface listens on loopback only.

Clusters resolve the services' headless Services (STRICT_DNS), so Envoy sees every pod, balances
per request (not per connection) and health-checks each pod with grpc.health.v1 (a pod in its
drain window answers NOT_SERVING and stops receiving new calls).
*/}}
{{- /* Upstreams Envoy has a cluster for: those the routes name, plus envoy.defaultUpstream. */ -}}
{{- define "scribe.envoyUpstreams" -}}
{{- $root := . -}}
{{- $table := include "scribe.serviceTable" . | fromYaml -}}
{{- $keys := list .Values.envoy.defaultUpstream -}}
{{- range $r := .Values.envoy.routes }}{{ $keys = append $keys $r.upstream }}{{ end -}}
{{- range $key := $keys | uniq | sortAlpha -}}
{{- $svc := index $root.Values $key -}}
{{- if and $svc $svc.enabled (hasKey $table $key) }}
{{ $key }}:
  cluster: {{ (index $table $key).name }}
  host: {{ include "scribe.componentName" (dict "root" $root "name" (index $table $key).name) }}-headless.{{ $root.Release.Namespace }}.svc.{{ $root.Values.clusterDomain }}
  port: {{ $svc.port }}
{{- end }}
{{- end }}
{{- end }}

{{- /* Route action. maxStreamDuration caps every call and the client's grpc-timeout; 0s: no cap
(the client's deadline applies unchanged). timeout 0s: no whole-call limit (streams). */ -}}
{{- define "scribe.envoyRouteAction" -}}
cluster: {{ .cluster }}
timeout: {{ .route.timeout | default "60s" }}
{{- with .route.idleTimeout }}
idle_timeout: {{ . }}
{{- end }}
max_stream_duration:
  max_stream_duration: {{ .route.maxStreamDuration | default "0s" }}
  grpc_timeout_header_max: {{ .route.maxStreamDuration | default "0s" }}
{{- end }}

{{- define "scribe.envoyConfig" -}}
{{- $root := . -}}
{{- $e := .Values.envoy -}}
{{- $ups := include "scribe.envoyUpstreams" . | fromYaml -}}
{{- $defaultUp := index $ups $e.defaultUpstream -}}
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: {{ $e.adminPort }}}
static_resources:
  listeners:
    - name: grpc
      address:
        socket_address: {address: 0.0.0.0, port_value: {{ $e.port }}}
      # Memory bound per client connection for flow control (bytes). Uploads stream through;
      # Envoy never holds a whole request.
      per_connection_buffer_limit_bytes: {{ int64 $e.uploads.bufferLimitBytes }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: grpc
                codec_type: AUTO
                use_remote_address: true
                # Per-stream inactivity limit; routes below override it (streams idle longer).
                stream_idle_timeout: {{ $e.streamIdleTimeout }}
                request_timeout: 0s
                max_request_headers_kb: {{ $e.maxRequestHeadersKb }}
                common_http_protocol_options:
                  idle_timeout: {{ $e.connectionIdleTimeout }}
                  headers_with_underscores_action: REJECT_REQUEST
                http2_protocol_options:
                  max_concurrent_streams: {{ $e.http2.maxConcurrentStreams }}
                  initial_stream_window_size: {{ int64 $e.http2.initialStreamWindowSize }}
                  initial_connection_window_size: {{ int64 $e.http2.initialConnectionWindowSize }}
                access_log:
                  - name: envoy.access_loggers.stdout
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
                      log_format:
                        json_format:
                          timestamp: "%START_TIME%"
                          method: "%REQ(:PATH)%"
                          grpc_status: "%GRPC_STATUS%"
                          response_flags: "%RESPONSE_FLAGS%"
                          duration_ms: "%DURATION%"
                          bytes_received: "%BYTES_RECEIVED%"
                          bytes_sent: "%BYTES_SENT%"
                          upstream_host: "%UPSTREAM_HOST%"
                          trace_id: "%REQ(TRACEPARENT)%"
                route_config:
                  name: scribe
                  virtual_hosts:
                    - name: scribe
                      domains: ["*"]
                      routes:
                        {{- range $r := $e.routes }}
                        {{- $up := index $ups $r.upstream }}
                        # {{ $r.name }}
                        - match:
                            {{- if $r.path }}
                            path: {{ $r.path | quote }}
                            {{- else }}
                            prefix: {{ $r.prefix | quote }}
                            {{- end }}
                            grpc: {}
                          route:
                            {{- include "scribe.envoyRouteAction" (dict "cluster" $up.cluster "route" $r) | nindent 28 }}
                        {{- end }}
                        {{- /* Health and reflection of one service, chosen by the x-scribe-upstream header. */}}
                        {{- range $key, $up := $ups }}
                        {{- range $p := list "/grpc.health.v1.Health/" "/grpc.reflection." }}
                        - match:
                            prefix: {{ $p | quote }}
                            headers:
                              - name: x-scribe-upstream
                                string_match: {exact: {{ $up.cluster | quote }}}
                          route:
                            {{- include "scribe.envoyRouteAction" (dict "cluster" $up.cluster "route" (dict "timeout" "10s")) | nindent 28 }}
                        {{- end }}
                        {{- end }}
                        {{- range $p := list "/grpc.health.v1.Health/" "/grpc.reflection." }}
                        - match:
                            prefix: {{ $p | quote }}
                          route:
                            {{- include "scribe.envoyRouteAction" (dict "cluster" $defaultUp.cluster "route" (dict "timeout" "10s")) | nindent 28 }}
                        {{- end }}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          {{- if $e.tls.secretName }}
          transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              common_tls_context:
                alpn_protocols: ["h2"]
                tls_certificates:
                  - certificate_chain: {filename: /etc/envoy/tls/tls.crt}
                    private_key: {filename: /etc/envoy/tls/tls.key}
          {{- end }}
    - name: ops
      address:
        socket_address: {address: 0.0.0.0, port_value: {{ $e.opsPort }}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ops
                codec_type: HTTP1
                route_config:
                  name: ops
                  virtual_hosts:
                    - name: ops
                      domains: ["*"]
                      routes:
                        - match: {path: /stats/prometheus}
                          route: {cluster: envoy-admin}
                        - match: {path: /ready}
                          route: {cluster: envoy-admin}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    {{- range $key, $up := $ups }}
    - name: {{ $up.cluster }}
      type: STRICT_DNS
      dns_lookup_family: V4_PREFERRED
      dns_refresh_rate: {{ $e.dnsRefreshRate }}
      respect_dns_ttl: false
      lb_policy: LEAST_REQUEST
      connect_timeout: 2s
      per_connection_buffer_limit_bytes: {{ int64 $e.uploads.bufferLimitBytes }}
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options:
              connection_keepalive: {interval: 30s, timeout: 5s}
      load_assignment:
        cluster_name: {{ $up.cluster }}
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {address: {{ $up.host }}, port_value: {{ $up.port }}}
      health_checks:
        - timeout: {{ $e.healthCheck.timeout }}
          interval: {{ $e.healthCheck.interval }}
          unhealthy_threshold: {{ $e.healthCheck.unhealthyThreshold }}
          healthy_threshold: {{ $e.healthCheck.healthyThreshold }}
          grpc_health_check: {}
    {{- end }}
    - name: envoy-admin
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: envoy-admin
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {address: 127.0.0.1, port_value: {{ $e.adminPort }}}
{{- end }}
