#!/usr/bin/env python3
"""Generates the five Grafana dashboards into deploy/helm/proxy-telemetry/files/dashboards/.

    python3 deploy/grafana/generate.py          # write
    python3 deploy/grafana/generate.py --check  # fail if the checked-in JSON differs

Dashboards are described here compactly (panels as title, type, queries) and rendered with the
same conventions everywhere: a stable uid, a `datasource` variable, `cluster`, `vendor`, `namespace`,
`workload` and `pod` variables, `$__rate_interval` in every rate over raw counters.

Built for fleets whose pods churn (bench/results/scale.md): every panel over a range reads the
recording rules of files/prometheus-rules.yaml (per vendor, per workload, per destination), whose
series survive pod churn; the panels that read per-pod raw series are tables of the busiest pods
now (a series per pod over hours is what made them take seconds at 5,000 pods), and the pod
variable is a pattern typed in, not a list of every pod that ever ran.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "helm/proxy-telemetry/files/dashboards"

# `cluster` is the label a Prometheus' external_labels add on the way to a shared store
# (values: prometheus.bundled.externalLabels); in a single Prometheus no series has it and the
# variable's All (`.*`) matches its absence.
CLUSTER = 'cluster=~"$cluster"'
VENDOR = f'{CLUSTER},proxy_vendor=~"$vendor"'
WORKLOAD = f'{VENDOR},source_namespace=~"$namespace",source_workload=~"$workload"'
POD = f'{WORKLOAD},source_pod=~"$pod"'
WORKLOAD_LABELS = "proxy_vendor, source_namespace, source_workload"
DESTINATION_LABELS = "proxy_vendor, destination"
POD_NOTE = ("Per-pod detail now: the busiest pods over the last few minutes. Pods churn, and a series per pod over "
            "hours is what makes a dashboard slow at thousands of pods (bench/results/scale.md). Per workload over any "
            "range; the meter's access log for any pod over any period.")


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
        query("cluster", "Cluster", "label_values(vendor:proxy_requests:rate5m, cluster)"),
        query("vendor", "Vendor", f"label_values(vendor:proxy_requests:rate5m{{{CLUSTER}}}, proxy_vendor)"),
        query("namespace", "Namespace",
              f"label_values(vendor_workload_status_class:proxy_requests:rate5m{{{VENDOR}}}, source_namespace)"),
        query("workload", "Workload",
              f'label_values(vendor_workload_status_class:proxy_requests:rate5m{{{VENDOR},source_namespace=~"$namespace"}}, '
              "source_workload)"),
        {"name": "pod", "label": "Pod (regex)", "type": "textbox", "query": ".*",
         "current": {"text": ".*", "value": ".*"},
         "description": "A pattern of pod names for the per-pod panels (thousands of pods churn: no list)."},
        *[query(name, label, expr) for name, label, expr in extra],
    ]


def panel(title, kind, queries, unit="short", w=12, h=8, description="", legend=None, options=None, time_from=None,
          instant=False):
    """`instant`: one value per series at the range's end (tables always; stat panels that compute
    over `$__range` themselves, which as a range query would redo the whole range at every step)."""
    return {"title": title, "type": kind, "queries": queries, "unit": unit, "w": w, "h": h,
            "description": description, "legend": legend, "options": options or {}, "time_from": time_from,
            "instant": instant or kind == "table"}


def pod_panel(title, queries, unit="short", w=12, h=8, description=""):
    """A table of the 20 busiest pods now (see POD_NOTE)."""
    return panel(title, "table", queries, unit, w, h, " ".join(filter(None, [description, POD_NOTE])))


def render(uid, title, description, panels, extra_variables=()):
    rendered, x, y, row_h = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        if x + p["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        targets = []
        for j, (expr, legend) in enumerate(p["queries"]):
            target = {"datasource": {"type": "prometheus", "uid": "${datasource}"}, "expr": expr,
                      "legendFormat": legend, "refId": chr(ord("A") + j), "range": not p["instant"],
                      "instant": p["instant"]}
            if p["type"] == "table":
                target["format"] = "table"
            targets.append(target)
        rendered.append({
            "id": i, "type": p["type"], "title": p["title"], "description": p["description"],
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"x": x, "y": y, "w": p["w"], "h": p["h"]},
            "fieldConfig": {"defaults": {"unit": p["unit"]}, "overrides": []},
            "options": p["options"], "targets": targets,
            **({"timeFrom": p["time_from"]} if p["time_from"] else {}),
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


def recorded(name, by="proxy_vendor", selector=WORKLOAD):
    return f"sum by ({by}) ({name}{{{selector}}})"


def top(k, selector, by):
    """The k series of `selector` (summed by `by`) that were largest on average over the whole
    dashboard range, drawn over it: a bare topk picks k at every step, and a time-series panel
    then shows every series that was ever in some step's k."""
    return (f"sum by ({by}) ({selector}) and on ({by}) "
            f"topk({k}, sum by ({by}) (avg_over_time({selector}[$__range] @ end())))")


def zero_if_none(expr):
    """For totals where no series means none happened (nothing folded, no meter down), not
    "unknown": the panel shows 0 instead of No data."""
    return f"({expr}) or vector(0)"


REQUESTS = "vendor_workload_status_class:proxy_requests:rate5m"
SUCCESS = f'{REQUESTS}{{{WORKLOAD},status_class=~"2xx|3xx"}}'
SENT = "vendor_workload:proxy_sent_bytes:rate5m"
RECEIVED = "vendor_workload:proxy_received_bytes:rate5m"


OVERVIEW = render(
    "pt-overview", "Proxy Overview",
    "Requests, success and bandwidth per proxy vendor (requirements a, c, d at a glance); filters by namespace "
    "and workload. 5-minute rates from the recording rules.",
    [
        panel("Request rate", "stat", [(zero_if_none(f"sum({REQUESTS}{{{WORKLOAD}}})"), "")], "reqps", w=6, h=4),
        panel("Success rate", "stat", [(f"sum({SUCCESS}) / sum({REQUESTS}{{{WORKLOAD}}})", "")], "percentunit", w=6, h=4),
        panel("Active pods", "stat", [(zero_if_none(f"sum(vendor_workload:proxy_active_pods:count{{{WORKLOAD}}})"), "")], w=6, h=4,
              description="Pods with at least one request through the vendor in the last 5 minutes."),
        panel("Total bandwidth", "stat", [(zero_if_none(f"sum({SENT}{{{WORKLOAD}}}) + sum({RECEIVED}{{{WORKLOAD}}})"), "")], "Bps", w=6, h=4),
        panel("Requests per vendor", "timeseries", [(recorded(REQUESTS), "{{proxy_vendor}}")], "reqps"),
        panel("Success rate per vendor", "timeseries", [(
            f"sum by (proxy_vendor) ({SUCCESS}) / {recorded(REQUESTS)}", "{{proxy_vendor}}")],
              "percentunit", description="Share of 2xx and 3xx answers, 5-minute window."),
        panel("Requests by status class", "timeseries", [(recorded(REQUESTS, by="proxy_vendor, status_class"),
                                                           "{{proxy_vendor}} {{status_class}}")], "reqps"),
        panel("Requests by protocol", "timeseries", [(recorded("vendor_workload_protocol:proxy_requests:rate5m",
                                                               by="proxy_vendor, protocol"),
                                                      "{{proxy_vendor}} {{protocol}}")], "reqps",
              description="http1 and h2 are plain-HTTP requests; connect counts tunnels (HTTPS)."),
        panel("Bandwidth per vendor", "timeseries", [
            (recorded(SENT), "{{proxy_vendor}} sent"),
            (recorded(RECEIVED), "{{proxy_vendor}} received")], "Bps", w=24),
    ],
)

BANDWIDTH = render(
    "pt-bandwidth", "Bandwidth Analytics",
    "Bytes sent to and received from each vendor, per vendor, per workload and per pod: what vendors bill "
    "(requirements c and d).",
    [
        panel("Sent per vendor", "timeseries", [(recorded(SENT), "{{proxy_vendor}}")], "Bps"),
        panel("Received per vendor", "timeseries", [(recorded(RECEIVED), "{{proxy_vendor}}")], "Bps"),
        panel("Received per workload", "timeseries", [(
            top(10, f"{RECEIVED}{{{WORKLOAD}}}", WORKLOAD_LABELS),
            "{{source_namespace}}/{{source_workload}} via {{proxy_vendor}}")], "Bps",
              description="Deployments, StatefulSets, Jobs: their series outlive pod churn (5-minute rates)."),
        panel("Sent per workload", "timeseries", [(
            top(10, f"{SENT}{{{WORKLOAD}}}", WORKLOAD_LABELS),
            "{{source_namespace}}/{{source_workload}} via {{proxy_vendor}}")], "Bps"),
        pod_panel("Top pods by bytes received, now", [(
            f"topk(20, {rate('proxy_received_bytes_total', by='proxy_vendor, source_namespace, source_pod')})",
            "")], "Bps"),
        pod_panel("Top pods by bytes sent, now", [(
            f"topk(20, {rate('proxy_sent_bytes_total', by='proxy_vendor, source_namespace, source_pod')})",
            "")], "Bps"),
        panel("Transfer in the last 24 h per vendor", "bargauge", [
            (f"vendor:proxy_sent_bytes:increase24h{{{VENDOR}}}", "{{proxy_vendor}} sent"),
            (f"vendor:proxy_received_bytes:increase24h{{{VENDOR}}}", "{{proxy_vendor}} received")], "bytes",
              description="From recording rules evaluated every 5 minutes."),
        panel("Top pods, last 24 h", "table", [(
            f'vendor_pod:proxy_received_bytes:increase24h_top20{{{WORKLOAD}}}', "")], "bytes",
              description="The 20 pods of the fleet that received most over the last 24 hours (recorded every 5 minutes)."),
        panel("Bytes per request by vendor", "timeseries", [(
            f"{recorded(RECEIVED)} / {recorded(REQUESTS)}", "{{proxy_vendor}}")], "bytes", w=24,
              description="Average bytes received per request or tunnel."),
    ],
)

DESTINATION = f'{VENDOR},destination=~"$destination"'
# Families a meter keeps per vendor only (a label per pod there would multiply them by the fleet).
VENDOR_ONLY = "Per vendor: this family carries no pod labels, so namespace, workload and pod filters do not apply."
DESTINATIONS = render(
    "pt-destinations", "Destination Tracking",
    "Where crawlers go through each vendor: requests and bytes per destination (requirement b). Destination "
    "families carry no pod labels: namespace, workload and pod filters apply to the per-pod table only.",
    [
        panel("Distinct destinations", "stat", [(zero_if_none(f"sum(vendor:proxy_destinations:count{{{VENDOR}}})"), "")], w=8, h=4),
        panel("Requests folded into other", "stat", [(zero_if_none(
            f'sum(vendor_destination:proxy_destination_requests:rate5m{{{VENDOR},destination="other"}})'), "")],
              "reqps", w=8, h=4, description="Past metrics.max_destinations_per_vendor, new destinations count as other."),
        panel("Destination label values in use", "stat", [(f"max(vendor:proxy_destination_labels:max{{{VENDOR}}})", "")],
              w=8, h=4, description="The most any one meter holds, against its limit."),
        panel("Top destinations per vendor", "table", [(
            f"topk(20, vendor_destination:proxy_destination_requests:rate5m{{{VENDOR}}})", "")], "reqps"),
        panel("Requests per destination", "timeseries", [(
            top(10, f"vendor_destination:proxy_destination_requests:rate5m{{{DESTINATION}}}", DESTINATION_LABELS),
            "{{destination}} via {{proxy_vendor}}")], "reqps"),
        panel("Bytes received per destination", "timeseries", [(
            top(10, f"vendor_destination:proxy_destination_received_bytes:rate5m{{{DESTINATION}}}", DESTINATION_LABELS),
            "{{destination}} via {{proxy_vendor}}")], "Bps"),
        panel("Bytes sent per destination", "timeseries", [(
            top(10, f"vendor_destination:proxy_destination_sent_bytes:rate5m{{{DESTINATION}}}", DESTINATION_LABELS),
            "{{destination}} via {{proxy_vendor}}")], "Bps"),
        pod_panel("Requests of the selected pods, now", [(
            f"topk(20, {rate('proxy_requests_total', by='proxy_vendor, source_namespace, source_pod')})", "")], "reqps",
                  description="Per-pod families carry no destination; the access log has pod × destination."),
    ],
    extra_variables=[("destination", "Destination",
                      f"label_values(vendor_destination:proxy_destination_requests:rate5m{{{VENDOR}}}, destination)")],
)

HEALTH = render(
    "pt-health", "Performance & Health",
    "Vendor latency and errors, refused requests, tunnels, and the meters themselves.",
    [
        panel("Latency per vendor (p50 / p95 / p99)", "timeseries", [(
            f"vendor:proxy_request_duration_seconds:histogram_quantile{{{VENDOR}}}", "{{proxy_vendor}} p{{quantile}}")], "s",
              description="To the vendor's response head, or to the tunnel established. " + VENDOR_ONLY),
        panel("Latency by protocol (p99)", "timeseries", [(
            f"vendor_protocol:proxy_request_duration_seconds:histogram_quantile{{{VENDOR}}}",
            "{{proxy_vendor}} {{protocol}}")], "s", description=VENDOR_ONLY),
        panel("Vendor errors by reason", "timeseries", [(
            f"vendor_reason:proxy_upstream_errors:rate5m{{{VENDOR}}}", "{{proxy_vendor}} {{reason}}")], "reqps",
              description=VENDOR_ONLY),
        panel("Refused requests by reason", "timeseries", [(f"reason:proxy_rejected_requests:rate5m{{{CLUSTER}}}", "{{reason}}")], "reqps",
              description="Refused by the meter before anything was forwarded (policy, credentials, limits)."),
        panel("Active tunnels", "timeseries", [(f"vendor:proxy_active_tunnels:sum{{{VENDOR}}}", "{{proxy_vendor}}")],
              description=VENDOR_ONLY),
        panel("Tunnels by inner protocol", "timeseries", [(
            f"vendor_inner:proxy_tunnels:rate5m{{{VENDOR}}}", "{{proxy_vendor}} {{inner}}")], "reqps",
              description="From the TLS ClientHello inside each tunnel. " + VENDOR_ONLY),
        panel("Meters up", "stat", [(zero_if_none(f"sum(job:up:sum{{{CLUSTER}}})"), "")], w=6, h=4),
        panel("Meters down", "stat", [(zero_if_none(f"sum(job:up:count{{{CLUSTER}}}) - sum(job:up:sum{{{CLUSTER}}})"), "")], w=6, h=4),
        panel("Open client connections", "stat", [(zero_if_none(f"sum(job:proxy_open_connections:sum{{{CLUSTER}}})"), "")], w=6, h=4),
        panel("Meter versions", "stat", [(f"sum by (version) (version:proxy_build_info:count{{{CLUSTER}}})", "{{version}}")], w=6, h=4),
    ],
)

SPEND = "vendor_workload:proxy_spend:rate5m"
SPEND_NOTE = ("Marginal spend: bytes and requests at the vendors' prices (vendors[].pricing). The monthly fee and the "
              "traffic it includes are per billing cycle: `proxy-telemetry report` applies them, exactly.")


def over_range(expr):
    """The total over the dashboard's range of a recorded per-second rate."""
    return f"{expr} * $__range_s"


COST = render(
    "pt-cost", "Cost",
    "What the vendors cost: spend by vendor, workload and destination, effective price per GB, and the budget. "
    + SPEND_NOTE,
    [
        panel("Spend over the range", "stat", [(over_range(
            f"sum by (proxy_vendor, currency) (avg_over_time({SPEND}{{{WORKLOAD}}}[$__range]))"),
            "{{proxy_vendor}} ({{currency}})")], w=8, h=5, description=SPEND_NOTE, instant=True),
        panel("Spend this month so far", "stat", [(over_range(
            f"sum by (proxy_vendor, currency) (avg_over_time({SPEND}{{{WORKLOAD}}}[$__range]))"),
            "{{proxy_vendor}} ({{currency}})")], w=8, h=5, time_from="now/M", instant=True,
              description="From the 1st of this month (UTC); for cycles starting on another day, and for the fee "
                          "and included traffic, use `proxy-telemetry report`."),
        panel("Budget used by a cycle at the last day's pace", "bargauge", [(
            f"sum by (proxy_vendor, currency) (vendor:proxy_spend:rate1d{{{VENDOR}}}) * 30 * 86400 "
            # One vendor account, one budget, whichever clusters spend it.
            f"/ on (proxy_vendor, currency) max by (proxy_vendor, currency) "
            f"(vendor:proxy_vendor_monthly_budget:max{{{VENDOR}}})", "{{proxy_vendor}}")],
              "percentunit", w=8, h=5, instant=True,
              description="Per vendor (budgets are per vendor: namespace and workload filters do not apply). Over "
                          "100%: ProxyVendorBudgetSlowBurn fires after an hour."),
        panel("Spend rate per vendor (per hour)", "timeseries", [(
            f"sum by (proxy_vendor, currency) ({SPEND}{{{WORKLOAD}}}) * 3600", "{{proxy_vendor}} ({{currency}})")],
              w=12, description=SPEND_NOTE),
        panel("Spend rate by what is billed (per hour)", "timeseries", [(
            f"vendor_item:proxy_spend:rate5m{{{VENDOR}}} * 3600", "{{proxy_vendor}} {{item}} ({{currency}})")],
              w=12, description="Sent bytes, received bytes, requests: which part of the price drives the bill."),
        panel("Spend per workload over the range", "table", [(
            "topk(20, " + over_range(
                f"sum by (proxy_vendor, currency, source_namespace, source_workload) "
                f"(avg_over_time({SPEND}{{{WORKLOAD}}}[$__range]))") + ")", "")], w=12, h=9),
        panel("Spend per destination over the range", "table", [(
            "topk(20, " + over_range(
                f"sum by (proxy_vendor, currency, destination) "
                f"(avg_over_time(vendor_destination:proxy_spend:rate5m{{{DESTINATION}}}[$__range]))") + ")", "")],
              w=12, h=9, description="Destination counters carry no pod: namespace and workload filters do not apply."),
        panel("Effective price per GB over the range", "stat", [(
            f"sum by (proxy_vendor, currency) (avg_over_time({SPEND}{{{WORKLOAD}}}[$__range])) "
            f"/ on (proxy_vendor) group_left () (sum by (proxy_vendor) ("
            f"avg_over_time({SENT}{{{WORKLOAD}}}[$__range]) + avg_over_time({RECEIVED}{{{WORKLOAD}}}[$__range])) / 1e9)",
            "{{proxy_vendor}} ({{currency}})")], w=12, h=5, instant=True,
              description="All spend (requests too) per decimal GB crossing the meter, both directions. " + SPEND_NOTE),
        panel("Spend rate per workload (per hour)", "timeseries", [(
            f"({top(10, f'{SPEND}{{{WORKLOAD}}}', f'currency, {WORKLOAD_LABELS}')}) * 3600",
            "{{source_namespace}}/{{source_workload}} via {{proxy_vendor}}")], w=12),
    ],
    extra_variables=[("destination", "Destination",
                      f"label_values(vendor_destination:proxy_destination_requests:rate5m{{{VENDOR}}}, destination)")],
)

DASHBOARDS = {
    "proxy-overview.json": OVERVIEW,
    "bandwidth-analytics.json": BANDWIDTH,
    "destination-tracking.json": DESTINATIONS,
    "performance-health.json": HEALTH,
    "cost.json": COST,
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
