{{/*
The bundled Prometheus' ConfigMap data (its configuration, the rules, the recorded prices), one
text for the ConfigMap and for the checksum that restarts Prometheus when any of it changes.
*/}}
{{- define "proxy-telemetry.prometheusConfigData" -}}
{{- $p := .Values.prometheus.bundled -}}
prometheus.yml: |
  global:
    scrape_interval: {{ $p.scrapeInterval }}
    evaluation_interval: {{ $p.scrapeInterval }}
    {{- with $p.externalLabels }}
    external_labels:
      {{- range $label, $value := . }}
      {{ $label }}: {{ $value | quote }}
      {{- end }}
    {{- end }}
  {{- include "proxy-telemetry.checkRemoteWrite" . }}
  {{- with $p.remoteWrite }}
  remote_write:
    {{- range $i, $rw := . }}
    - url: {{ $rw.url | quote }}
      name: {{ $rw.name | default (printf "remote-write-%d" $i) | quote }}
      {{- with $rw.basicAuth }}
      basic_auth:
        username: {{ .username | quote }}
        password_file: {{ include "proxy-telemetry.remoteWriteSecretFile" .secret }}
      {{- end }}
      {{- with $rw.bearerToken }}
      authorization:
        credentials_file: {{ include "proxy-telemetry.remoteWriteSecretFile" .secret }}
      {{- end }}
      {{- with $rw.headers }}
      headers:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $rw.tlsConfig }}
      tls_config:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $rw.queueConfig }}
      queue_config:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $rw.writeRelabelConfigs }}
      write_relabel_configs:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
  {{- end }}
  {{- with include "proxy-telemetry.alertmanagerTargets" . }}
  alerting:
    alertmanagers:
      - static_configs:
          - targets: {{ . }}
  {{- end }}
  {{- if .Values.prometheus.rules.enabled }}
  rule_files:
    - /etc/prometheus/rules/*.yaml
  {{- end }}
  scrape_configs:
    # Every meter (gateway and sidecars): any pod exposing a container port named pt-metrics.
    - job_name: proxy-telemetry
      kubernetes_sd_configs:
        - role: pod
          {{- with $p.namespaces }}
          namespaces:
            names: {{ toYaml . | nindent 14 }}
          {{- end }}
      relabel_configs:
        - source_labels: [__meta_kubernetes_pod_container_port_name]
          regex: pt-metrics
          action: keep
        - source_labels: [__meta_kubernetes_pod_phase]
          regex: Pending|Succeeded|Failed
          action: drop
        - source_labels: [__meta_kubernetes_namespace]
          target_label: namespace
        - source_labels: [__meta_kubernetes_pod_name]
          target_label: pod
        - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_component]
          target_label: component
      {{- with .Values.prometheus.sampleLimit }}
      sample_limit: {{ . }}
      {{- end }}
      {{- with include "proxy-telemetry.metricRelabelings" (dict "root" . "snake" true) }}
      metric_relabel_configs:
        {{- . | nindent 8 }}
      {{- end }}
    - job_name: prometheus
      static_configs:
        - targets: ["localhost:9090"]
{{- if .Values.prometheus.rules.enabled }}
proxy-telemetry.rules.yaml: |
  {{- .Files.Get "files/prometheus-rules.yaml" | nindent 2 }}
{{- if include "proxy-telemetry.pricesFromValues" . }}
proxy-telemetry.prices.yaml: |
  {{- include "proxy-telemetry.priceRules" . | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}


{{/* Where the bundled Prometheus reads a remote_write Secret's key (one volume per Secret). */}}
{{- define "proxy-telemetry.remoteWriteSecretFile" -}}
{{ printf "/etc/prometheus/secrets/%s/%s" .name .key }}
{{- end -}}

{{/* The Secrets the remote_write entries read, each once, sorted. */}}
{{- define "proxy-telemetry.remoteWriteSecrets" -}}
{{- $names := dict -}}
{{- range .Values.prometheus.bundled.remoteWrite -}}
{{- with .basicAuth }}{{ $_ := set $names .secret.name true }}{{ end -}}
{{- with .bearerToken }}{{ $_ := set $names .secret.name true }}{{ end -}}
{{- end -}}
{{- keys $names | sortAlpha | join " " -}}
{{- end -}}
