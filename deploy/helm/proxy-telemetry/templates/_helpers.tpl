{{/* Names */}}
{{- define "proxy-telemetry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "proxy-telemetry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's object name: "<fullname>-<component>". Call with (dict "root" $ "component" "x"). */}}
{{- define "proxy-telemetry.componentName" -}}
{{- printf "%s-%s" (include "proxy-telemetry.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "proxy-telemetry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Selector labels: name, instance and component only, so they never change on upgrade. */}}
{{- define "proxy-telemetry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "proxy-telemetry.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of an object. Call with (dict "root" $ "component" "x"). */}}
{{- define "proxy-telemetry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "proxy-telemetry.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: proxy-telemetry
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The environment variable holding a vendor's password. */}}
{{- define "proxy-telemetry.passwordEnv" -}}
{{- printf "%s_PASSWORD" (.name | upper | replace "-" "_" | replace "." "_") -}}
{{- end -}}

{{/*
The meter's configuration file. Call with (dict "root" $ "role" "gateway"|"sidecar"|"injected").
The chart sets listeners, admin, vendors, identity and clients; `meter.config` adds the rest.
"injected" is the transparent sidecar the injector adds: no proxy listener, no vendor
credentials (the crawler's own pass through), a transparent listener for init-iptables.
*/}}
{{- define "proxy-telemetry.meterConfig" -}}
{{- $root := .root -}}
{{- $gateway := eq .role "gateway" -}}
{{- $injected := eq .role "injected" -}}
{{- $host := ternary "0.0.0.0" "127.0.0.1" $gateway -}}
{{- $port := ternary $root.Values.gateway.service.proxyPort $root.Values.sidecar.proxyPort $gateway -}}
{{- $generated := dict -}}
{{- $listeners := list -}}
{{- if not $injected -}}
{{- $listeners = append $listeners (dict "address" (printf "%s:%v" $host $port)) -}}
{{- range $vendor, $dedicated := $root.Values.meter.dedicatedPorts -}}
{{- $listeners = append $listeners (dict "address" (printf "%s:%v" $host $dedicated) "vendor" $vendor) -}}
{{- end -}}
{{- else -}}
{{- $_ := set $generated "transparent" (dict "listeners" (list (printf "127.0.0.1:%v" $root.Values.injector.transparentPort))) -}}
{{- /* The crawler has exited when a native sidecar is stopped: nothing to drain, and the pod's
default 30 s grace must cover the final scrape. */ -}}
{{- $_ := set $generated "shutdown" (dict "grace_period" "5s" "final_scrape_delay" "15s") -}}
{{- end -}}
{{- $_ := set $generated "listeners" $listeners -}}
{{- $_ := set $generated "admin" (dict "address" (printf "0.0.0.0:%v" $root.Values.meter.metricsPort)) -}}
{{- $vendors := list -}}
{{- range $root.Values.vendors -}}
{{- if or (not $injected) .url -}}
{{- $v := dict "name" .name "kind" (default "http_proxy" .kind) -}}
{{- with .url }}{{ $_ := set $v "url" . }}{{ end -}}
{{- with .endpoints }}{{ $_ := set $v "endpoints" . }}{{ end -}}
{{- with .pricing }}{{ $_ := set $v "pricing" . }}{{ end -}}
{{- if and .username (not $injected) -}}
{{- $_ := set $v "username" .username -}}
{{- $_ := set $v "password_env" (include "proxy-telemetry.passwordEnv" .) -}}
{{- end -}}
{{- $vendors = append $vendors $v -}}
{{- end -}}
{{- end -}}
{{- $_ := set $generated "vendors" $vendors -}}
{{- if $gateway -}}
{{- if eq $root.Values.gateway.identity "kubernetes" -}}
{{- $_ := set $generated "identity" (dict "from" "kubernetes" "kubernetes" (dict "max_pods" $root.Values.gateway.podIndex.maxPods)) -}}
{{- else -}}
{{- $_ := set $generated "identity" (dict "from" $root.Values.gateway.identity) -}}
{{- end -}}
{{- $_ := set $generated "clients" (dict "allowed_sources" $root.Values.gateway.allowedSources) -}}
{{- else -}}
{{- $_ := set $generated "identity" (dict "from" "environment") -}}
{{- end -}}
{{- $config := deepCopy $root.Values.meter.config -}}
{{- if $gateway -}}
{{- $metrics := default dict (get $config "metrics") -}}
{{- $_ := set $metrics "max_pods" $root.Values.gateway.maxPods -}}
{{- $_ := set $config "metrics" $metrics -}}
{{- end -}}
{{- toYaml (merge $generated $config) -}}
{{- end -}}

{{/* Environment of a meter container: pod identity (Downward API) and vendor passwords. */}}
{{- define "proxy-telemetry.meterEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- range .Values.vendors }}
{{- if .username }}
- name: {{ include "proxy-telemetry.passwordEnv" . }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.credentials.secretName }}
      key: {{ .passwordKey | default (printf "%s-password" .name) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Probes of a meter container. */}}
{{- define "proxy-telemetry.meterProbes" -}}
readinessProbe:
  httpGet: {path: /readyz, port: pt-metrics}
  periodSeconds: 5
livenessProbe:
  httpGet: {path: /healthz, port: pt-metrics}
  periodSeconds: 10
  failureThreshold: 6
{{- end -}}

{{/*
The meter as a sidecar container, for the chart's load generators and for users' own crawler
pods (see docs/deployment.md and deploy/kustomize/sidecar). Call with the root context.
*/}}
{{- define "proxy-telemetry.sidecarContainer" -}}
- name: meter
  image: {{ include "proxy-telemetry.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: [meter, --config, /etc/proxy-telemetry/meter.yaml, --log-format, json]
  {{- if .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  env:
    {{- include "proxy-telemetry.meterEnv" . | nindent 4 }}
  ports:
    - name: pt-metrics
      containerPort: {{ .Values.meter.metricsPort }}
  {{- include "proxy-telemetry.meterProbes" . | nindent 2 }}
  volumeMounts:
    - name: meter-config
      mountPath: /etc/proxy-telemetry
      readOnly: true
  resources:
    {{- toYaml .Values.sidecar.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.meter.securityContext | nindent 4 }}
{{- end -}}

{{/* The volume of the sidecar's configuration. */}}
{{- define "proxy-telemetry.sidecarVolumes" -}}
- name: meter-config
  configMap:
    name: {{ include "proxy-telemetry.componentName" (dict "root" . "component" "sidecar-config") }}
{{- end -}}

{{/* The Prometheus URL the checker and Grafana use. */}}
{{- define "proxy-telemetry.prometheusUrl" -}}
{{- if .Values.prometheus.bundled.enabled -}}
{{- printf "http://%s:%v" (include "proxy-telemetry.componentName" (dict "root" . "component" "prometheus")) .Values.prometheus.bundled.service.port -}}
{{- else -}}
{{- required "grafana.prometheusUrl is required when prometheus.bundled.enabled is false" .Values.grafana.prometheusUrl -}}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy egress every meter pod needs: vendors, and DNS to resolve them. */}}
{{- define "proxy-telemetry.meterEgress" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- range .Values.networkPolicy.vendorEgress }}
- to:
    - ipBlock:
        cidr: {{ .cidr }}
        {{- with .except }}
        except: {{ toYaml . | nindent 10 }}
        {{- end }}
  ports:
    {{- range .ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- end }}
{{/* NetworkPolicy ingress to the metrics port: the bundled Prometheus and the configured scrapers. */}}
{{- define "proxy-telemetry.metricsIngress" -}}
- from:
    - podSelector:
        matchLabels:
          {{- include "proxy-telemetry.selectorLabels" (dict "root" . "component" "prometheus") | nindent 10 }}
    - {{- with .Values.networkPolicy.prometheusSelector }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
  ports:
    - {port: {{ .Values.meter.metricsPort }}, protocol: TCP}
{{- end }}

{{/*
The metric relabelling of prometheus.sidecarSeries=lean: a gateway's series all kept, a sidecar's
only the per-pod families of requirements a, c, d and the failure counters. `snake`: Prometheus'
own field names (source_labels), else the operator's (sourceLabels).
*/}}
{{- define "proxy-telemetry.sidecarSeries" -}}
- {{ if .snake }}source_labels{{ else }}sourceLabels{{ end }}: [component, __name__]
  regex: "gateway;.*|[^;]*;(proxy_requests_total|proxy_sent_bytes_total|proxy_received_bytes_total|proxy_upstream_errors_total|proxy_rejected_requests_total)"
  action: keep
{{- end }}

{{/*
Every metric relabelling of the meters' scrape: the lean sidecar profile's (unless `gatewayOnly`:
a gateway's scrape keeps everything), then prometheus.metricRelabelings (Prometheus' own
snake_case keys; camelCase for the operator's monitors when `snake` is false). Empty when there
is none.
*/}}
{{- define "proxy-telemetry.metricRelabelings" -}}
{{- if and (eq .root.Values.prometheus.sidecarSeries "lean") (not .gatewayOnly) }}
{{ include "proxy-telemetry.sidecarSeries" (dict "snake" .snake) }}
{{- end }}
{{- range .root.Values.prometheus.metricRelabelings }}
{{- $rule := dict }}
{{- range $key, $value := . }}
{{- $_ := set $rule (ternary $key (camelcase $key | untitle) $.snake) $value }}
{{- end }}
- {{- toYaml $rule | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Whether Prometheus gets the vendors' prices from the chart's values rather than from the meters:
with no gateway and lean sidecar series, the sidecars' price series are dropped at scrape time
(18 series per pod for three priced vendors), so the same prices, from the same values that
configure the meters, are recorded once by a rule group instead.
*/}}
{{- define "proxy-telemetry.pricesFromValues" -}}
{{- $priced := false -}}
{{- range .Values.vendors }}{{ if .pricing }}{{ $priced = true }}{{ end }}{{ end -}}
{{- if and $priced (not .Values.gateway.enabled) (eq .Values.prometheus.sidecarSeries "lean") -}}true{{- end -}}
{{- end -}}

{{/*
The price families as recording rules, from vendors[].pricing (docs/configuration.md: the meter
converts them the same way: per GB / unit, per 1,000 requests / 1,000).
*/}}
{{- define "proxy-telemetry.priceRules" -}}
groups:
  - name: proxy-telemetry.prices
    rules:
    {{- range .Values.vendors }}
    {{- if .pricing }}
    {{- $p := .pricing }}
    {{- $unit := ternary "1073741824" "1000000000" (eq ($p.unit | default "GB") "GiB") }}
    {{- $perByte := printf "%v / %s" ($p.per_gb | default 0) $unit }}
    {{- $labels := printf "proxy_vendor: %s, currency: %s" (.name | quote) ($p.currency | quote) }}
      - record: proxy_vendor_price_per_byte
        labels: {{ printf "{%s, direction: sent}" $labels }}
        expr: vector({{ ternary "0" $perByte (eq ($p.billed_bytes | default "sent_and_received") "received") }})
      - record: proxy_vendor_price_per_byte
        labels: {{ printf "{%s, direction: received}" $labels }}
        expr: vector({{ $perByte }})
      - record: proxy_vendor_price_per_request
        labels: {{ printf "{%s, requests: %s}" $labels ($p.billed_requests | default "all" | quote) }}
        expr: vector({{ $p.per_1k_requests | default 0 }} / 1000)
      - record: proxy_vendor_monthly_fee
        labels: {{ printf "{%s}" $labels }}
        expr: vector({{ $p.monthly_fee | default 0 }})
      - record: proxy_vendor_included_bytes
        labels: {{ printf "{proxy_vendor: %s}" (.name | quote) }}
        expr: round(vector({{ $p.included_gb | default 0 }} * {{ $unit }}))
      - record: proxy_vendor_billing_cycle_start_day
        labels: {{ printf "{proxy_vendor: %s}" (.name | quote) }}
        expr: vector({{ $p.cycle_start_day | default 1 }})
      {{- with $p.monthly_budget }}
      - record: proxy_vendor_monthly_budget
        labels: {{ printf "{%s}" $labels }}
        expr: vector({{ . }})
      {{- end }}
    {{- end }}
    {{- end }}
{{- end -}}

{{/*
The bundled Alertmanager's configuration: one route, one receiver made of whatever notifiers
alertmanager.bundled.receivers sets (none: the alerts are only shown in Alertmanager's UI).
Secrets (Slack URL, PagerDuty key, SMTP password) are read from files mounted from Secrets, never
written in the ConfigMap.
*/}}
{{- define "proxy-telemetry.alertmanagerConfig" -}}
{{- $a := .Values.alertmanager.bundled -}}
{{- $r := $a.receivers -}}
route:
  receiver: proxy-telemetry
  group_by: [alertname, proxy_vendor]
  group_wait: {{ $a.groupWait }}
  group_interval: {{ $a.groupInterval }}
  repeat_interval: {{ $a.repeatInterval }}
receivers:
  - name: proxy-telemetry
    {{- with $r.webhook.url }}
    webhook_configs:
      - url: {{ . | quote }}
        send_resolved: true
    {{- end }}
    {{- if $r.slack.secret.name }}
    slack_configs:
      - api_url_file: /etc/alertmanager-secrets/slack/{{ $r.slack.secret.key }}
        channel: {{ $r.slack.channel | quote }}
        send_resolved: true
        title: '{{ "{{" }} .CommonAnnotations.summary {{ "}}" }}'
        text: '{{ "{{" }} range .Alerts {{ "}}" }}{{ "{{" }} .Annotations.description {{ "}}" }} {{ "{{" }} .Annotations.runbook_url {{ "}}" }}{{ "{{" }} "\n" {{ "}}" }}{{ "{{" }} end {{ "}}" }}'
    {{- end }}
    {{- if $r.pagerduty.secret.name }}
    pagerduty_configs:
      - routing_key_file: /etc/alertmanager-secrets/pagerduty/{{ $r.pagerduty.secret.key }}
        send_resolved: true
    {{- end }}
    {{- if $r.email.to }}
    email_configs:
      - to: {{ $r.email.to | quote }}
        from: {{ $r.email.from | quote }}
        smarthost: {{ $r.email.smarthost | quote }}
        {{- with $r.email.username }}
        auth_username: {{ . | quote }}
        {{- end }}
        {{- if $r.email.secret.name }}
        auth_password_file: /etc/alertmanager-secrets/email/{{ $r.email.secret.key }}
        {{- end }}
        send_resolved: true
    {{- end }}
{{- end -}}

{{/*
Where Prometheus sends alerts: the bundled Alertmanager and any external ones.
*/}}
{{- define "proxy-telemetry.alertmanagerTargets" -}}
{{- $targets := list -}}
{{- if and .Values.alertmanager.bundled.enabled .Values.prometheus.bundled.enabled -}}
{{- $targets = append $targets (printf "%s:9093" (include "proxy-telemetry.componentName" (dict "root" . "component" "alertmanager"))) -}}
{{- end -}}
{{- range .Values.alertmanager.external -}}
{{- $targets = append $targets . -}}
{{- end -}}
{{- if $targets }}{{ toJson $targets }}{{ end -}}
{{- end -}}

{{/*
A checksum of the vendor credentials, for a pod annotation: meters read the passwords from
environment variables, so a rotated Secret applies only to new pods. With a cluster (`helm
upgrade`), the Secret's data as it is now; rendered without one (GitOps), the demo passwords
when the chart makes the Secret, else nothing (docs/deployment.md, "Vendor credentials").
*/}}
{{- define "proxy-telemetry.credentialsChecksum" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.credentials.secretName -}}
{{- if and $secret $secret.data -}}
{{ toJson $secret.data | sha256sum }}
{{- else if .Values.credentials.createDemoSecret -}}
{{- $data := dict -}}
{{- range $key, $value := .Values.credentials.demoPasswords }}{{ $_ := set $data $key ($value | toString | b64enc) }}{{ end -}}
{{ toJson $data | sha256sum }}
{{- end -}}
{{- end -}}

{{/* The bundled Grafana's provisioning (datasource, dashboard provider). */}}
{{- define "proxy-telemetry.grafanaProvisioning" -}}
datasources.yaml: |
  apiVersion: 1
  datasources:
    - name: Prometheus
      uid: prometheus
      type: prometheus
      access: proxy
      url: {{ include "proxy-telemetry.prometheusUrl" . }}
      isDefault: true
dashboards.yaml: |
  apiVersion: 1
  providers:
    - name: proxy-telemetry
      folder: Proxy telemetry
      type: file
      disableDeletion: true
      options:
        path: /var/lib/grafana/dashboards
{{- end -}}

{{/*
Where a component's pods run: priority class, node selection, and spread. A spread constraint
without a labelSelector selects the component's own pods. Call with (dict "root" $ "component"
NAME "values" .Values.<component>).
*/}}
{{- define "proxy-telemetry.podPlacement" -}}
{{- $v := .values -}}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- range . }}
  {{- $c := . }}
  {{- if not $c.labelSelector }}
  {{- $c = merge (dict "labelSelector" (dict "matchLabels" (include "proxy-telemetry.selectorLabels" (dict "root" $.root "component" $.component) | fromYaml))) $c }}
  {{- end }}
  - {{- toYaml $c | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
Native sidecars (an init container with restartPolicy Always) exist from Kubernetes 1.29: the
injector always makes them, the chart's own sidecars when sidecar.native is on. An older API
server drops the field and the meter becomes an init container that never ends, so the pod never
starts: refuse to render instead.
*/}}
{{- define "proxy-telemetry.checkKubeVersion" -}}
{{- $old := semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version -}}
{{- if and $old .Values.injector.enabled -}}
{{- fail (printf "injector.enabled needs Kubernetes 1.29 or later (native sidecars); this cluster is %s" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and $old .Values.sidecar.native .Values.loadGenerator.enabled (eq .Values.loadGenerator.via "sidecar") -}}
{{- fail (printf "sidecar.native needs Kubernetes 1.29 or later; this cluster is %s: set sidecar.native=false" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- end -}}

{{/*
gateway.extraEnv must not name a variable the chart sets: a duplicate name is dropped on a later
upgrade by Helm 3's merge, and refused by server-side apply.
*/}}
{{- define "proxy-telemetry.checkExtraEnv" -}}
{{- $reserved := list "POD_NAME" "POD_NAMESPACE" -}}
{{- range .Values.vendors }}{{ if .username }}{{ $reserved = append $reserved (include "proxy-telemetry.passwordEnv" .) }}{{ end }}{{ end -}}
{{- range .Values.gateway.extraEnv -}}
{{- if has .name $reserved -}}
{{- fail (printf "gateway.extraEnv sets %s, which the chart sets itself" .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The remote_write entries' names must differ: Prometheus refuses a configuration with two of the
same name (and the default names are unique).
*/}}
{{- define "proxy-telemetry.checkRemoteWrite" -}}
{{- $seen := dict -}}
{{- range $i, $rw := .Values.prometheus.bundled.remoteWrite -}}
{{- $name := $rw.name | default (printf "remote-write-%d" $i) -}}
{{- if hasKey $seen $name -}}
{{- fail (printf "prometheus.bundled.remoteWrite has two entries named %q" $name) -}}
{{- end -}}
{{- $_ := set $seen $name true -}}
{{- end -}}
{{- end -}}

