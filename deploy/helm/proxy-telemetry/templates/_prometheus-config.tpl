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
      {{- if eq .Values.prometheus.sidecarSeries "lean" }}
      metric_relabel_configs:
        {{- include "proxy-telemetry.sidecarSeries" (dict "snake" true) | nindent 8 }}
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
