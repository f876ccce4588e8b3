#!/usr/bin/env python3
"""Generates the four Grafana dashboards into deploy/helm/proxy-telemetry/files/dashboards/.

    python3 deploy/grafana/generate.py          # write
    python3 deploy/grafana/generate.py --check  # fail if the checked-in JSON differs

Dashboards are described here compactly (panels as title, type, queries) and rendered with the
same conventions everywhere: a stable uid, a `datasource` variable, `vendor`, `namespace`,
`workload` and `pod` variables, `$__rate_interval` in every rate over raw counters, and the recording rules of
files/prometheus-rules.yaml for the aggregations that are expensive at fleet scale.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "helm/proxy-telemetry/files/dashboards"

VENDOR = 'proxy_vendor=~"$vendor"'
POD = 'proxy_vendor=~"$vendor",source_namespace=~"$namespace",source_workload=~"$workload",source_pod=~"$pod"'


def variables(extra=()):
    def query(name, label, expr, multi=True):
        return {
            "name": name, "label": label, "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": expr, "refId": f"{name}-values"},
            "definition": expr, "refresh": 2, "sort": 1,
            "multi": multi, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        }
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1},
        query("vendor", "Vendor", "label_values(proxy_requests_total, proxy_vendor)"),
        query("namespace", "Namespace", f"label_values(proxy_requests_total{{{VENDOR}}}, source_namespace)"),
        query("workload", "Workload",
              f'label_values(proxy_requests_total{{{VENDOR},source_namespace=~"$namespace"}}, source_workload)'),
        query("pod", "Pod", f'label_values(proxy_requests_total{{{VENDOR},source_namespace=~"$namespace",'
                            f'source_workload=~"$workload"}}, source_pod)'),
        *[query(name, label, expr) for name, label, expr in extra],
    ]


def panel(title, kind, queries, unit="short", w=12, h=8, description="", legend=None, options=None):
    return {"title": title, "type": kind, "queries": queries, "unit": unit, "w": w, "h": h,
            "description": description, "legend": legend, "options": options or {}}


def render(uid, title, description, panels, extra_variables=()):
    rendered, x, y, row_h = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        if x + p["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        targets = []
        for j, (expr, legend) in enumerate(p["queries"]):
            target = {"datasource": {"type": "prometheus", "uid": "${datasource}"}, "expr": expr,
                      "legendFormat": legend, "refId": chr(ord("A") + j), "range": p["type"] != "table",
                      "instant": p["type"] == "table"}
            if p["type"] == "table":
                target["format"] = "table"
            targets.append(target)
        rendered.append({
            "id": i, "type": p["type"], "title": p["title"], "description": p["description"],
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"x": x, "y": y, "w": p["w"], "h": p["h"]},
            "fieldConfig": {"defaults": {"unit": p["unit"]}, "overrides": []},
            "options": p["options"], "targets": targets,
        })
        x += p["w"]
        row_h = max(row_h, p["h"])
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["proxy-telemetry"], "timezone": "browser", "editable": True, "graphTooltip": 1,
        "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables(extra_variables)},
        "links": [{"title": "Proxy telemetry", "type": "dashboards", "tags": ["proxy-telemetry"], "asDropdown": True}],
        "panels": rendered,
    }


def rate(metric, selector=POD, by="proxy_vendor"):
    return f"sum by ({by}) (rate({metric}{{{selector}}}[$__rate_interval]))"


OVERVIEW = render(
    "pt-overview", "Proxy Overview",
    "Requests, success and bandwidth per proxy vendor (requirements a, c, d at a glance).",
    [
        panel("Request rate", "stat", [(f"sum(rate(proxy_requests_total{{{POD}}}[$__rate_interval]))", "")], "reqps", w=6, h=4),
        panel("Success rate", "stat", [(
            f'sum(rate(proxy_requests_total{{{POD},status_class=~"2xx|3xx"}}[$__rate_interval])) '
            f"/ sum(rate(proxy_requests_total{{{POD}}}[$__rate_interval]))", "")], "percentunit", w=6, h=4),
        panel("Active pods", "stat", [(f"sum(vendor:proxy_active_pods:count{{{VENDOR}}})", "")], w=6, h=4,
              description="Pods with at least one request through the vendor in the last 5 minutes."),
        panel("Total bandwidth", "stat", [(
            f"sum(rate(proxy_sent_bytes_total{{{POD}}}[$__rate_interval])) "
            f"+ sum(rate(proxy_received_bytes_total{{{POD}}}[$__rate_interval]))", "")], "Bps", w=6, h=4),
        panel("Requests per vendor", "timeseries", [(rate("proxy_requests_total"), "{{proxy_vendor}}")], "reqps"),
        panel("Success rate per vendor", "timeseries", [(f"vendor:proxy_requests_success:ratio_rate5m{{{VENDOR}}}", "{{proxy_vendor}}")],
              "percentunit", description="Share of 2xx and 3xx answers, 5-minute window."),
        panel("Requests by status class", "timeseries", [(rate("proxy_requests_total", by="proxy_vendor, status_class"),
                                                           "{{proxy_vendor}} {{status_class}}")], "reqps"),
        panel("Requests by protocol", "timeseries", [(rate("proxy_requests_total", by="proxy_vendor, protocol"),
                                                      "{{proxy_vendor}} {{protocol}}")], "reqps",
              description="http1 and h2 are plain-HTTP requests; connect counts tunnels (HTTPS)."),
        panel("Bandwidth per vendor", "timeseries", [
            (rate("proxy_sent_bytes_total"), "{{proxy_vendor}} sent"),
            (rate("proxy_received_bytes_total"), "{{proxy_vendor}} received")], "Bps", w=24),
    ],
)

BANDWIDTH = render(
    "pt-bandwidth", "Bandwidth Analytics",
    "Bytes sent to and received from each vendor, per vendor and per pod: what vendors bill (requirements c and d).",
    [
        panel("Sent per vendor", "timeseries", [(rate("proxy_sent_bytes_total"), "{{proxy_vendor}}")], "Bps"),
        panel("Received per vendor", "timeseries", [(rate("proxy_received_bytes_total"), "{{proxy_vendor}}")], "Bps"),
        panel("Top pods by bytes received", "timeseries", [(
            f"topk(10, {rate('proxy_received_bytes_total', by='proxy_vendor, source_namespace, source_pod')})",
            "{{source_namespace}}/{{source_pod}} via {{proxy_vendor}}")], "Bps"),
        panel("Top pods by bytes sent", "timeseries", [(
            f"topk(10, {rate('proxy_sent_bytes_total', by='proxy_vendor, source_namespace, source_pod')})",
            "{{source_namespace}}/{{source_pod}} via {{proxy_vendor}}")], "Bps"),
        panel("Received per workload", "timeseries", [(
            f'topk(10, vendor_workload:proxy_received_bytes:rate5m{{{VENDOR},source_namespace=~"$namespace",'
            f'source_workload=~"$workload"}})', "{{source_namespace}}/{{source_workload}} via {{proxy_vendor}}")], "Bps",
              description="Deployments, StatefulSets, Jobs: their series outlive pod churn (5-minute rates)."),
        panel("Sent per workload", "timeseries", [(
            f'topk(10, vendor_workload:proxy_sent_bytes:rate5m{{{VENDOR},source_namespace=~"$namespace",'
            f'source_workload=~"$workload"}})', "{{source_namespace}}/{{source_workload}} via {{proxy_vendor}}")], "Bps"),
        panel("Transfer in the last 24 h per vendor", "bargauge", [
            (f"vendor:proxy_sent_bytes:increase24h{{{VENDOR}}}", "{{proxy_vendor}} sent"),
            (f"vendor:proxy_received_bytes:increase24h{{{VENDOR}}}", "{{proxy_vendor}} received")], "bytes",
              description="From recording rules evaluated every 5 minutes."),
        panel("Top pods, last 24 h", "table", [(
            f'topk(20, vendor_pod:proxy_received_bytes:increase24h{{{VENDOR},source_namespace=~"$namespace"}})', "")], "bytes"),
        panel("Bytes per request by vendor", "timeseries", [(
            f"{rate('proxy_received_bytes_total')} / {rate('proxy_requests_total')}", "{{proxy_vendor}}")], "bytes", w=24,
              description="Average bytes received per request or tunnel."),
    ],
)

DESTINATIONS = render(
    "pt-destinations", "Destination Tracking",
    "Where crawlers go through each vendor: requests and bytes per destination (requirement b).",
    [
        panel("Distinct destinations", "stat", [(
            f"count(count by (proxy_vendor, destination) (proxy_destination_requests_total{{{VENDOR}}}))", "")], w=8, h=4),
        panel("Requests folded into other", "stat", [(
            f'sum(rate(proxy_destination_requests_total{{{VENDOR},destination="other"}}[$__rate_interval]))', "")], "reqps", w=8, h=4,
              description="Past metrics.max_destinations_per_vendor, new destinations count as other."),
        panel("Destination label values in use", "stat", [(f"max(proxy_destination_labels{{{VENDOR}}})", "")], w=8, h=4,
              description="The most any one meter holds, against its limit."),
        panel("Top destinations per vendor", "table", [(
            f"topk(20, vendor_destination:proxy_destination_requests:rate5m{{{VENDOR}}})", "")], "reqps"),
        panel("Requests per destination", "timeseries", [(
            f'topk(10, sum by (proxy_vendor, destination) (rate(proxy_destination_requests_total{{{VENDOR},destination=~"$destination"}}[$__rate_interval])))',
            "{{destination}} via {{proxy_vendor}}")], "reqps"),
        panel("Bytes received per destination", "timeseries", [(
            f'topk(10, sum by (proxy_vendor, destination) (rate(proxy_destination_received_bytes_total{{{VENDOR},destination=~"$destination"}}[$__rate_interval])))',
            "{{destination}} via {{proxy_vendor}}")], "Bps"),
        panel("Bytes sent per destination", "timeseries", [(
            f'topk(10, sum by (proxy_vendor, destination) (rate(proxy_destination_sent_bytes_total{{{VENDOR},destination=~"$destination"}}[$__rate_interval])))',
            "{{destination}} via {{proxy_vendor}}")], "Bps"),
        panel("Requests of the selected pods", "timeseries", [(rate("proxy_requests_total", by="proxy_vendor, source_pod"),
                                                               "{{source_pod}} via {{proxy_vendor}}")], "reqps",
              description="Per-pod families carry no destination; the access log has pod × destination."),
    ],
    extra_variables=[("destination", "Destination",
                      f"label_values(proxy_destination_requests_total{{{VENDOR}}}, destination)")],
)

HEALTH = render(
    "pt-health", "Performance & Health",
    "Vendor latency and errors, refused requests, tunnels, and the meters themselves.",
    [
        panel("Latency per vendor (p50 / p95 / p99)", "timeseries", [(
            f"vendor:proxy_request_duration_seconds:histogram_quantile{{{VENDOR}}}", "{{proxy_vendor}} p{{quantile}}")], "s",
              description="To the vendor's response head, or to the tunnel established."),
        panel("Latency by protocol (p99)", "timeseries", [(
            f"histogram_quantile(0.99, sum by (proxy_vendor, protocol, le) (rate(proxy_request_duration_seconds_bucket{{{VENDOR}}}[$__rate_interval])))",
            "{{proxy_vendor}} {{protocol}}")], "s"),
        panel("Vendor errors by reason", "timeseries", [(
            f"sum by (proxy_vendor, reason) (rate(proxy_upstream_errors_total{{{VENDOR}}}[$__rate_interval]))",
            "{{proxy_vendor}} {{reason}}")], "reqps"),
        panel("Refused requests by reason", "timeseries", [(
            "sum by (reason) (rate(proxy_rejected_requests_total[$__rate_interval]))", "{{reason}}")], "reqps",
              description="Refused by the meter before anything was forwarded (policy, credentials, limits)."),
        panel("Active tunnels", "timeseries", [(f"vendor:proxy_active_tunnels:sum{{{VENDOR}}}", "{{proxy_vendor}}")]),
        panel("Tunnels by inner protocol", "timeseries", [(
            f"sum by (proxy_vendor, inner) (rate(proxy_tunnels_total{{{VENDOR}}}[$__rate_interval]))",
            "{{proxy_vendor}} {{inner}}")], "reqps", description="From the TLS ClientHello inside each tunnel."),
        panel("Meters up", "stat", [('sum(up{job="proxy-telemetry"})', "")], w=6, h=4),
        panel("Meters down", "stat", [('count(up{job="proxy-telemetry"} == 0) or vector(0)', "")], w=6, h=4),
        panel("Open client connections", "stat", [("sum(proxy_open_connections)", "")], w=6, h=4),
        panel("Meter versions", "stat", [("count by (version) (proxy_build_info)", "{{version}}")], w=6, h=4),
    ],
)

DASHBOARDS = {
    "proxy-overview.json": OVERVIEW,
    "bandwidth-analytics.json": BANDWIDTH,
    "destination-tracking.json": DESTINATIONS,
    "performance-health.json": HEALTH,
}


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, dashboard in DASHBOARDS.items():
        text = json.dumps(dashboard, indent=2, sort_keys=True) + "\n"
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        sys.exit(f"dashboards out of date (run python3 deploy/grafana/generate.py): {', '.join(stale)}")


if __name__ == "__main__":
    main()
