"""The series budget of docs/metrics.md, computed from each shipped profile's rendered values: the
head series of Prometheus at 5,000 crawler pods with hourly churn must stay within the 500 K the
original design promised.

    head ≈ G · P · s + F

P = 5,000 pods, G = 4 generations of them in the head (hourly churn; the head spans up to three
hours), s the series one pod adds (docs/metrics.md's table, which the scale harness measures and
tests/scale_smoke.rs keeps honest), F what does not grow with pods: every gateway replica's fixed
series and every recorded series. Worst case where the values leave a choice: an autoscaled
gateway at its maximum, every replica carrying some of every pod's connections (a crawler holds
many keep-alive connections, balanced one by one), every vendor at its destination cap.

The demo profile is left out: it meters seven pods with `sidecarSeries: full` on purpose."""

import re

import pytest
import yaml

from test_deploy import CHART, RULES, PROFILES, render

PODS = 5_000
GENERATIONS = 4
BUDGET = 500_000
# Crawler Deployments of ten pods each: the per-workload recordings' workloads.
WORKLOADS = PODS // 10
# docs/metrics.md, "Series budget": the per-pod families a pod shows on one meter (one vendor,
# two protocols, two or three status classes, two byte counters), the series Prometheus writes
# for every target (a sidecar is one: `up` and four `scrape_*`), and one vendor-error reason.
PER_POD_ON_A_METER = 6
PER_TARGET = 5
PER_POD_ERRORS = 1
# With sidecarSeries full a sidecar also exports its destination and latency families.
FULL_SIDECAR = 110
# The meter's defaults (docs/configuration.md) and its label ranges (docs/metrics.md).
DEFAULT_DESTINATIONS = 100
LABEL_VALUES = {"status_class": 7, "protocol": 4, "reason": 11, "inner": 3, "direction": 2, "requests": 2,
                "item": 3, "quantile": 3, "currency": 1, "job": 1, "version": 2}


def meter_fixed(vendors, destinations):
    """docs/metrics.md: 3·V·(K+1) + 97·V + 21 per meter beyond its per-pod series."""
    return 3 * vendors * (destinations + 1) + 97 * vendors + 21


def recorded_series(vendors, destinations):
    """Every recording rule's output: its grouping labels' value counts multiplied."""
    cardinality = {**LABEL_VALUES, "proxy_vendor": vendors, "destination": destinations + 1}
    total = 0
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "record" not in rule:
                continue
            expr = rule["expr"]
            if "topk" in expr:
                total += 20 * vendors
                continue
            labels = set()
            grouping = re.search(r"by \(([^)]*)\)", expr)
            labels |= {l.strip() for l in grouping.group(1).split(",")} if grouping else {"proxy_vendor"}
            labels |= set(rule.get("labels", {}))
            labels.discard("le")  # histogram_quantile consumes it
            series = 1
            for label in labels:
                if label == "source_namespace":
                    continue
                series *= WORKLOADS if label in ("source_workload", "source_pod") else cardinality[label]
            total += series
    return total


def worst_head(values):
    vendors = len(values.get("vendors", [])) or 3
    meter = values.get("meter", {}).get("config", {})
    destinations = meter.get("metrics", {}).get("max_destinations_per_vendor", DEFAULT_DESTINATIONS)
    gateway = values.get("gateway", {})
    per_pod, fixed = 0, recorded_series(vendors, destinations)
    if gateway.get("enabled", True):
        hpa = gateway.get("hpa", {})
        replicas = hpa.get("maxReplicas", 10) if hpa.get("enabled") else gateway.get("replicas", 2)
        per_pod = max(per_pod, PER_POD_ON_A_METER * replicas + PER_POD_ERRORS)
        fixed += replicas * (meter_fixed(vendors, destinations) + PER_TARGET)
    sidecars = (values.get("injector", {}).get("enabled")
                or (values.get("loadGenerator", {}).get("enabled") and values["loadGenerator"].get("via") == "sidecar"))
    if sidecars or not gateway.get("enabled", True):
        lean = values.get("prometheus", {}).get("sidecarSeries", "lean") == "lean"
        per_pod = max(per_pod, (PER_POD_ON_A_METER + PER_POD_ERRORS if lean else FULL_SIDECAR) + PER_TARGET)
    return GENERATIONS * PODS * per_pod + fixed


def merged(profile, extra=None):
    """The values the chart renders with: its defaults under the profile's (rendered, so the
    profile passes the schema)."""
    def deep(base, over):
        return {k: deep(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                for k, v in {**base, **over}.items()}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    values = {} if profile == "default" else yaml.safe_load((CHART / f"ci/{profile}-values.yaml").read_text())
    values = deep(values, extra or {})
    render(profile, extra)
    return deep(defaults, values)


@pytest.mark.parametrize("profile", [p for p in PROFILES if p != "demo"])
def test_every_shipped_profile_fits_5000_pods_in_the_series_budget(profile):
    head = worst_head(merged(profile))
    assert head <= BUDGET, f"{profile}: {head:,} head series at {PODS:,} pods, above {BUDGET:,}"


def test_the_budget_catches_what_multiplies_series():
    # An autoscaled gateway up to ten replicas: each pod's series on every one of them.
    assert worst_head(merged("gateway-only", {"gateway": {"hpa": {"enabled": True, "maxReplicas": 10}}})) > BUDGET
    # Every sidecar series kept.
    assert worst_head(merged("sidecar-only", {"prometheus": {"sidecarSeries": "full"}})) > BUDGET


def test_the_notes_warn_when_the_gateway_alone_exceeds_the_budget():
    _, notes = render("gateway-only", {"gateway": {"hpa": {"enabled": True, "minReplicas": 2, "maxReplicas": 10}}})
    assert "series budget" in notes and "1200 K head series" in notes, notes
    _, notes = render("gateway-only")
    assert "series budget" not in notes
