"""Offline tests of deploy/: the Helm chart rendered with every values file, Prometheus rules and
config, dashboards, the kustomize component and the Dockerfile.

No cluster, no helm binary: the chart is rendered and linted with helm-python-sdk (the Helm v4
SDK), manifests are validated with kubernetes-validate --strict, Prometheus files with promtool
(Debian's prometheus package). Run through scripts/test.sh.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/proxy-telemetry"
RULES = CHART / "files/prometheus-rules.yaml"
KUBERNETES = "1.30.0"
PROFILES = ["default", "demo", "kube-prometheus-stack", "gateway-only", "sidecar-only", "injector"]
BINARY = ROOT / "target/debug/proxy-telemetry"


def values(profile):
    return {} if profile == "default" else yaml.safe_load((CHART / f"ci/{profile}-values.yaml").read_text())


def render(profile, extra=None):
    chart = helm.Chart.load(str(CHART))
    merged = values(profile)
    if extra:
        merged = {**merged, **extra}
    out = chart.render(merged, name="proxy-telemetry", namespace="monitoring", is_install=True)
    docs = [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]
    notes = next((text for path, text in out.items() if path.endswith("NOTES.txt")), "")
    return docs, notes


@pytest.fixture(scope="module", params=PROFILES)
def rendered(request):
    docs, notes = render(request.param)
    return request.param, docs, notes


def kinds(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def pod_spec(doc):
    return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]["template"]["spec"]


def all_containers(spec):
    return spec.get("initContainers", []) + spec.get("containers", [])


def test_the_chart_lints_strictly(rendered):
    profile, _, _ = rendered
    report = helm.lint(str(CHART), values(profile), strict=True, namespace="monitoring", kube_version=f"v{KUBERNETES}")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


def test_every_manifest_validates_strictly(rendered):
    profile, docs, _ = rendered
    crds = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    for doc in docs:
        if doc["kind"] in crds:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{profile}: {doc['kind']}/{doc['metadata']['name']}: {error}")


def test_labels_and_selectors_follow_the_conventions(rendered):
    profile, docs, _ = rendered
    required = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by", "helm.sh/chart", "app.kubernetes.io/component"}
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert required <= labels.keys(), f"{profile}: {doc['kind']}/{doc['metadata']['name']} lacks {required - labels.keys()}"
    for doc in kinds(docs, "Deployment"):
        selector = doc["spec"]["selector"]["matchLabels"]
        # Selectors are immutable: only name, instance and component, never version or chart.
        assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
        template_labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template_labels.items(), doc["metadata"]["name"]
    for doc in kinds(docs, "Service"):
        name = doc["metadata"]["name"]
        selected = [d for d in kinds(docs, "Deployment")
                    if doc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"{profile}: Service {name} selects {len(selected)} Deployments"


def meters(docs):
    """(pod owner, container) of every meter container."""
    found = []
    for doc in kinds(docs, "Deployment"):
        for c in all_containers(pod_spec(doc)):
            if c.get("args", [None])[0] == "meter":
                found.append((doc, c))
    return found


def test_meters_run_where_the_values_ask(rendered):
    profile, docs, _ = rendered
    by_component = {}
    for doc, container in meters(docs):
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        by_component[component] = (doc, container)
    load = {c for c in by_component if c.startswith("load-")}
    expected_gateway = profile != "sidecar-only"
    assert ("gateway" in by_component) == expected_gateway
    if profile in ("demo", "sidecar-only"):
        assert load == {"load-vendor-a", "load-vendor-b", "load-vendor-c"}
        for component in load:
            doc, container = by_component[component]
            spec = pod_spec(doc)
            native = profile == "demo"
            assert (container in spec.get("initContainers", [])) == native
            if native:
                assert container["restartPolicy"] == "Always"
            crawler = next(c for c in spec["containers"] if c["name"] == "crawler")
            env = {e["name"]: e.get("value") for e in crawler["env"]}
            assert env["PROXY_TELEMETRY_PROXY_URL"] == "http://127.0.0.1:3128"
            assert env["PROXY_TELEMETRY_VENDOR"] == component.removeprefix("load-")
            assert doc["spec"]["template"]["metadata"]["labels"]["proxy-telemetry.io/meter"] == "true"
    else:
        assert load == set()
    for doc, container in meters(docs):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["pt-metrics"] == 9464, "Prometheus discovers meters by this port name"
        security = container["securityContext"]
        assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
        assert security["allowPrivilegeEscalation"] is False
        env = {e["name"]: e for e in container["env"]}
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_vendor_secrets_are_referenced_never_inlined(rendered):
    profile, docs, _ = rendered
    text = yaml.safe_dump_all(docs)
    secret = values(profile).get("credentials", {}).get("secretName", "proxy-vendor-credentials")
    for _, container in meters(docs):
        passwords = [e for e in container["env"] if e["name"].endswith("_PASSWORD")]
        assert len(passwords) == 3
        for e in passwords:
            assert e["valueFrom"]["secretKeyRef"]["name"] == secret
            assert "value" not in e
    if profile != "demo":
        # Only the demo creates a (fake) credentials Secret; real passwords never pass through values.
        assert not [d for d in kinds(docs, "Secret") if d["metadata"]["name"] == secret]
        assert "password: " not in text.replace("admin-password", "")


def test_network_policies_restrict_meters_to_vendors_and_dns(rendered):
    profile, docs, _ = rendered
    policies = kinds(docs, "NetworkPolicy")
    assert policies, profile
    for policy in policies:
        spec = policy["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        dns = [r for r in spec["egress"] if {p["port"] for p in r.get("ports", [])} == {53}]
        assert dns, f"{policy['metadata']['name']} allows DNS"
        metrics = [r for r in spec["ingress"] if {p["port"] for p in r["ports"]} == {9464}]
        assert metrics, "the metrics port is open to Prometheus"
        sources = metrics[0]["from"]
        assert any("podSelector" in s and s["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "prometheus"
                   for s in sources)
        if profile != "demo":
            internet = [r for r in spec["egress"] if r.get("to") and "ipBlock" in r["to"][0]]
            assert internet and "10.0.0.0/8" in internet[0]["to"][0]["ipBlock"]["except"]


def test_the_validation_job_is_a_post_install_hook_in_the_demo():
    docs, _ = render("demo")
    jobs = kinds(docs, "Job")
    assert len(jobs) == 1
    annotations = jobs[0]["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    args = pod_spec(jobs[0])["containers"][0]["args"]
    assert args[:3] == ["check", "--prometheus", "http://pt-prometheus:9090"]
    assert args.count("--vendor") == 3
    assert not kinds(render("default")[0], "Job")


def test_kube_prometheus_stack_mode_uses_the_operator_resources():
    docs, _ = render("kube-prometheus-stack")
    assert not [d for d in kinds(docs, "Deployment") if "prometheus" in d["metadata"]["name"] or "grafana" in d["metadata"]["name"]]
    for kind in ("PodMonitor", "PrometheusRule"):
        [doc] = kinds(docs, kind)
        assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [monitor] = kinds(docs, "PodMonitor")
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "pt-metrics"
    assert {"targetLabel": "job", "replacement": "proxy-telemetry"} in endpoint["relabelings"]
    [rule] = kinds(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    dashboards = [d for d in kinds(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(dashboards) == 1 and len(dashboards[0]["data"]) == 5


def test_the_bundled_grafana_never_uses_a_default_password():
    docs, notes = render("default")
    [secret] = [d for d in kinds(docs, "Secret") if d["metadata"]["name"].endswith("-grafana")]
    import base64
    password = base64.b64decode(secret["data"]["admin-password"]).decode()
    assert len(password) == 24 and password != "admin"
    [grafana] = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"].endswith("-grafana")]
    env = {e["name"]: e for e in pod_spec(grafana)["containers"][0]["env"]}
    assert env["GF_SECURITY_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "admin-password"
    assert "port-forward svc/proxy-telemetry-grafana 3000" in notes


def test_the_schema_rejects_mistakes():
    chart = helm.Chart.load(str(CHART))
    for bad in ({"gatway": {"enabled": True}}, {"vendors": [{"name": "Bad Name"}]},
                {"prometheus": {"bundled": {"retention": "a month"}}}, {"loadGenerator": {"via": "carrier-pigeon"}}):
        with pytest.raises(helm.HelmError):
            chart.validate_schema(bad)


def promtool(*args, cwd=None):
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_rendered_prometheus_config_and_rules_pass_promtool(tmp_path):
    docs, _ = render("default")
    [config] = [d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"].endswith("-prometheus")]
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules/proxy-telemetry.rules.yaml").write_text(config["data"]["proxy-telemetry.rules.yaml"])
    text = config["data"]["prometheus.yml"].replace("/etc/prometheus/rules", str(tmp_path / "rules"))
    parsed = yaml.safe_load(text)
    scrape = parsed["scrape_configs"][0]
    assert scrape["job_name"] == "proxy-telemetry"
    assert scrape["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "pt-metrics", "action": "keep"} in scrape["relabel_configs"]
    # Debian's Prometheus is built without Kubernetes discovery, so promtool checks a copy whose
    # discovery is static; everything else (relabelling, rule files, intervals) is checked as is.
    del scrape["kubernetes_sd_configs"]
    scrape["static_configs"] = [{"targets": ["10.0.0.1:9464"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(parsed))
    out = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert "SUCCESS: 1 rule files found" in out


def test_every_rule_and_alert_has_a_passing_unit_test():
    promtool("check", "rules", str(RULES))
    out = promtool("test", "rules", "rules-test.yaml", cwd=ROOT / "deploy/prometheus/tests")
    assert "SUCCESS" in out
    rules = yaml.safe_load(RULES.read_text())
    tests = (ROOT / "deploy/prometheus/tests/rules-test.yaml").read_text()
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule["alert"]
            assert name in tests, f"{name} has no unit test"
            if "alert" in rule:
                assert {"severity"} <= rule["labels"].keys()
                assert {"summary", "description"} <= rule["annotations"].keys()
                assert re.fullmatch(r"[A-Z][A-Za-z]+", name)
            else:
                assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), name


DASHBOARDS = sorted((CHART / "files/dashboards").glob("*.json"))


def test_dashboards_are_generated_and_checked_in():
    subprocess.run(["python3", str(ROOT / "deploy/grafana/generate.py"), "--check"], check=True)
    assert [d.name for d in DASHBOARDS] == ["bandwidth-analytics.json", "cost.json", "destination-tracking.json",
                                            "performance-health.json", "proxy-overview.json"]


def panel_expressions():
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                yield path.name, panel["title"], target["expr"]


def substitute(expr):
    """Grafana variables replaced the way the all-values selection does."""
    for variable in ("cluster", "vendor", "namespace", "workload", "pod", "destination"):
        expr = expr.replace(f'"${variable}"', '".*"')
    return expr.replace("$__rate_interval", "1m").replace("$__range_s", "3600").replace("$__range", "1h")


def test_dashboards_have_the_required_structure():
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert {"datasource", "cluster", "vendor", "namespace", "pod"} <= variables.keys(), path.name
        assert variables["datasource"]["type"] == "datasource"
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                expr = target["expr"]
                raw_rates = re.findall(r"rate\(proxy_[a-z_]+(?:\{[^}]*\})?\[([^\]]+)\]", expr)
                # Many clusters' Prometheus write to one store: every series a panel reads is
                # selected by cluster (a recorded one's name has a colon).
                selections = re.findall(r"\b([a-z_]+(?::[a-z0-9_]+)+)(\{[^}]*\})?", expr)
                selections += re.findall(r"\b(proxy_[a-z_]+_(?:total|bucket))(\{[^}]*\})?", expr)
                for name, matchers in selections:
                    assert 'cluster=~"$cluster"' in matchers, (path.name, panel["title"], name, expr)
                assert all(window == "$__rate_interval" for window in raw_rates), (path.name, panel["title"])
    assert len(uids) == 5


def test_every_panel_query_parses(tmp_path):
    rules = [{"record": f"panel_{i}", "expr": substitute(expr)} for i, (_, _, expr) in enumerate(panel_expressions())]
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    out = promtool("check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in out


def test_the_kustomize_component_adds_a_valid_sidecar(tmp_path):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy/kustomize/example")],
                         capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    [deployment] = kinds(docs, "Deployment")
    spec = pod_spec(deployment)
    [meter] = spec["initContainers"]
    assert meter["restartPolicy"] == "Always"
    # What Pod Security "restricted" requires of the container it adds (a crawler namespace may
    # enforce it).
    context = meter["securityContext"]
    assert context["runAsNonRoot"] and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    [config_map] = kinds(docs, "ConfigMap")
    assert spec["volumes"][0]["configMap"]["name"] == config_map["metadata"]["name"]
    (tmp_path / "meter.yaml").write_text(config_map["data"]["meter.yaml"])
    check_meter_config(tmp_path / "meter.yaml")


def check_meter_config(path):
    env = {**os.environ, "VENDOR_A_PASSWORD": "a", "VENDOR_B_PASSWORD": "b", "VENDOR_C_PASSWORD": "c"}
    result = subprocess.run([str(BINARY), "meter", "--check-config", "--config", str(path)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_every_rendered_meter_configuration_is_valid(rendered, tmp_path):
    _, docs, _ = rendered
    configs = [d for d in kinds(docs, "ConfigMap") if "meter.yaml" in d.get("data", {})]
    assert configs
    for doc in configs:
        path = tmp_path / f"{doc['metadata']['name']}.yaml"
        path.write_text(doc["data"]["meter.yaml"])
        check_meter_config(path)


def test_vendor_prices_reach_every_meter_configuration():
    docs, _ = render("demo")
    configs = [yaml.safe_load(d["data"]["meter.yaml"]) for d in kinds(docs, "ConfigMap") if "meter.yaml" in d.get("data", {})]
    assert configs
    for config in configs:
        prices = {v["name"]: v.get("pricing") for v in config["vendors"]}
        assert prices["vendor-b"] == {"currency": "USD", "per_gb": 3, "unit": "GiB", "billed_bytes": "received",
                                      "monthly_fee": 50, "included_gb": 0.01, "monthly_budget": 100}
        assert prices["vendor-c"] == {"currency": "USD", "per_1k_requests": 1.5}
    with pytest.raises(Exception, match="pricing"):
        render("demo", {"vendors": [{"name": "a", "url": "http://a:1", "pricing": {"currency": "usd", "per_gb": 1}}]})


def test_without_a_gateway_prometheus_records_the_prices_from_the_values(tmp_path):
    vendors = [
        {"name": "vendor-a", "url": "http://a:1", "pricing": {"currency": "USD", "per_gb": 4, "monthly_budget": 1000}},
        {"name": "vendor-b", "url": "http://b:1", "pricing": {
            "currency": "EUR", "per_gb": 8.5, "unit": "GiB", "billed_bytes": "received", "per_1k_requests": 1.2,
            "billed_requests": "successful", "monthly_fee": 100, "included_gb": 0.01, "cycle_start_day": 15}},
        {"name": "vendor-c", "url": "http://c:1"},
    ]
    docs, _ = render("sidecar-only", {"vendors": vendors})
    [config] = [d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"].endswith("-prometheus")]
    (tmp_path / "prices.yaml").write_text(config["data"]["proxy-telemetry.prices.yaml"])
    promtool("check", "rules", str(tmp_path / "prices.yaml"))
    # The chart's cost rules read them exactly as they read the meters' own price series.
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({
        "rule_files": [str(tmp_path / "prices.yaml"), str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [], "promql_expr_test": [
            {"expr": "vendor_direction:proxy_vendor_price_per_byte:max", "eval_time": "2m", "exp_samples": [
                {"labels": 'vendor_direction:proxy_vendor_price_per_byte:max{proxy_vendor="vendor-a",currency="USD",direction="sent"}', "value": 4e-09},
                {"labels": 'vendor_direction:proxy_vendor_price_per_byte:max{proxy_vendor="vendor-a",currency="USD",direction="received"}', "value": 4e-09},
                {"labels": 'vendor_direction:proxy_vendor_price_per_byte:max{proxy_vendor="vendor-b",currency="EUR",direction="sent"}', "value": 0},
                {"labels": 'vendor_direction:proxy_vendor_price_per_byte:max{proxy_vendor="vendor-b",currency="EUR",direction="received"}', "value": 8.5 / 2**30},
            ]},
            {"expr": "vendor_requests:proxy_vendor_price_per_request:max", "eval_time": "2m", "exp_samples": [
                {"labels": 'vendor_requests:proxy_vendor_price_per_request:max{proxy_vendor="vendor-a",currency="USD",requests="all"}', "value": 0},
                {"labels": 'vendor_requests:proxy_vendor_price_per_request:max{proxy_vendor="vendor-b",currency="EUR",requests="successful"}', "value": 0.0012},
            ]},
            {"expr": "vendor:proxy_budget:rate30d", "eval_time": "2m", "exp_samples": [
                {"labels": 'vendor:proxy_budget:rate30d{proxy_vendor="vendor-a",currency="USD"}', "value": 1000 / 2592000},
            ]},
            {"expr": "proxy_vendor_included_bytes", "eval_time": "2m", "exp_samples": [
                {"labels": 'proxy_vendor_included_bytes{proxy_vendor="vendor-a"}', "value": 0},
                {"labels": 'proxy_vendor_included_bytes{proxy_vendor="vendor-b"}', "value": 10737418},
            ]},
            {"expr": "proxy_vendor_billing_cycle_start_day", "eval_time": "2m", "exp_samples": [
                {"labels": 'proxy_vendor_billing_cycle_start_day{proxy_vendor="vendor-a"}', "value": 1},
                {"labels": 'proxy_vendor_billing_cycle_start_day{proxy_vendor="vendor-b"}', "value": 15},
            ]},
        ]}],
    }))
    assert "SUCCESS" in promtool("test", "rules", str(tmp_path / "test.yaml"))
    # With a gateway, its meters export the prices: no second source.
    docs, _ = render("default", {"vendors": vendors})
    [config] = [d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"].endswith("-prometheus")]
    assert "proxy-telemetry.prices.yaml" not in config["data"]


def test_a_full_volume_deletes_old_blocks_instead_of_stopping_prometheus():
    def args(extra=None):
        docs, _ = render("default", extra)
        [deployment] = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"].endswith("-prometheus")]
        return pod_spec(deployment)["containers"][0]["args"]
    assert "--storage.tsdb.retention.size=45GB" in args()
    assert not [a for a in args({"prometheus": {"bundled": {"retentionSize": ""}}}) if "retention.size" in a]


def test_dedicated_ports_of_long_vendor_names_get_distinct_port_names():
    vendors = [{"name": "vendor-alpha-1", "url": "http://a:1"}, {"name": "vendor-alpha-2", "url": "http://b:1"}]
    docs, _ = render("default", {"vendors": vendors,
                                 "meter": {"dedicatedPorts": {"vendor-alpha-1": 8001, "vendor-alpha-2": 8002}}})
    [service] = [d for d in kinds(docs, "Service") if d["metadata"]["name"].endswith("-gateway")]
    [deployment] = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"].endswith("-gateway")]
    for ports in (service["spec"]["ports"], pod_spec(deployment)["containers"][0]["ports"]):
        names = [p["name"] for p in ports]
        assert len(set(names)) == len(names) == 4, names
        assert all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?", n) for n in names), names


def test_a_single_gateway_replica_gets_no_budget_that_blocks_node_drains():
    def budgets(gateway):
        docs, _ = render("default", {"gateway": gateway})
        return kinds(docs, "PodDisruptionBudget")
    assert budgets({"replicas": 2})[0]["spec"]["minAvailable"] == 1
    assert budgets({"replicas": 1}) == []
    assert budgets({"replicas": 1, "hpa": {"enabled": True, "minReplicas": 3}})


def test_the_notes_say_which_namespaces_the_injector_skips():
    _, notes = render("injector")
    assert "Pod Security level is baseline or restricted are skipped" in notes, notes
    assert "kubectl get namespaces -l proxy-telemetry.io/inject=enabled -L pod-security.kubernetes.io/enforce" in notes
    _, strict = render("injector", {"injector": {**values("injector")["injector"], "requirePrivilegedNamespace": True}})
    assert "Only namespaces labelled pod-security.kubernetes.io/enforce=privileged are injected" in strict, strict
    _, without = render("default")
    assert "skipped" not in without and "are injected" not in without


def test_the_notes_keep_their_paragraphs_with_and_without_the_injector():
    for profile in ("default", "injector"):
        _, notes = render(profile)
        assert re.search(r"sidecar-config\.\n\n(Sidecar injection|Vendor passwords)", notes), notes
        assert "\n\nVendor passwords are read" in notes, notes


def test_the_metrics_history_survives_an_uninstall_by_default():
    def claim(extra=None):
        docs, _ = render("default", extra)
        [pvc] = kinds(docs, "PersistentVolumeClaim")
        return pvc["metadata"].get("annotations", {})
    assert claim()["helm.sh/resource-policy"] == "keep"
    assert "helm.sh/resource-policy" not in claim({"prometheus": {"bundled": {"persistence": {"keepOnUninstall": False}}}})


def test_a_changed_scrape_configuration_restarts_the_bundled_prometheus():
    def checksum(extra=None):
        docs, _ = render("default", extra)
        [deployment] = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"].endswith("-prometheus")]
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum() == checksum()
    assert checksum() != checksum({"prometheus": {"bundled": {"scrapeInterval": "30s"}}})
    assert checksum() != checksum({"prometheus": {"sidecarSeries": "full"}})


def annotations(docs, suffix):
    [deployment] = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"].endswith(suffix)]
    return deployment["spec"]["template"]["metadata"].get("annotations", {})


def test_rotated_vendor_passwords_restart_the_meters():
    def checksum(passwords):
        docs, _ = render("demo", {"credentials": {**values("demo")["credentials"], "demoPasswords": passwords}})
        return annotations(docs, "-gateway")["checksum/credentials"]
    passwords = values("demo")["credentials"]["demoPasswords"]
    assert checksum(passwords) == checksum(dict(passwords))
    assert checksum(passwords) != checksum({**passwords, "vendor-a-password": "rotated"})


def test_a_changed_grafana_provisioning_restarts_grafana():
    def checksum(extra=None):
        docs, _ = render("default", extra)
        return annotations(docs, "-grafana")["checksum/provisioning"]
    assert checksum() == checksum()
    assert checksum() != checksum({"prometheus": {"bundled": {"service": {"port": 9091}}}})


def test_the_injector_takes_a_certificate_made_outside_the_chart():
    injector = values("injector")["injector"]
    docs, _ = render("injector", {"injector": {**injector, "tls": {
        "mode": "existingSecret", "existingSecret": {"name": "injector-tls", "caBundle": "Q0EgUEVN"}}}})
    assert not [d for d in docs if d["kind"] in ("Secret", "Certificate", "Issuer") and "injector" in d["metadata"]["name"]]
    [webhook] = kinds(docs, "MutatingWebhookConfiguration")
    assert webhook["webhooks"][0]["clientConfig"]["caBundle"] == "Q0EgUEVN"
    assert "annotations" not in webhook["metadata"]
    [deployment] = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"].endswith("-injector")]
    assert {"name": "tls", "secret": {"secretName": "injector-tls"}} in pod_spec(deployment)["volumes"]
    with pytest.raises(Exception, match="existingSecret.name is required"):
        render("injector", {"injector": {**injector, "tls": {"mode": "existingSecret"}}})
    # Generated: a new certificate restarts the webhook with it.
    assert annotations(render("injector")[0], "-injector")["checksum/tls"]


def test_a_drain_leaves_one_injector_serving():
    docs, _ = render("injector")
    [budget] = [d for d in kinds(docs, "PodDisruptionBudget") if d["metadata"]["name"].endswith("-injector")]
    assert budget["spec"]["minAvailable"] == 1
    [deployment] = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"].endswith("-injector")]
    assert budget["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    docs, _ = render("injector", {"injector": {**values("injector")["injector"], "replicas": 1}})
    assert not [d for d in kinds(docs, "PodDisruptionBudget") if d["metadata"]["name"].endswith("-injector")]


def test_every_alert_says_how_bad_what_and_what_to_do():
    runbooks = (ROOT / "docs/runbooks.md").read_text()
    anchors = {re.sub(r"[^a-z0-9]", "", line[3:].lower()) for line in runbooks.splitlines() if line.startswith("## ")}
    alerts = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 9
    for alert in alerts:
        assert alert.get("for"), alert["alert"]
        assert alert["labels"]["severity"] in ("critical", "warning", "info"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]
        url = alert["annotations"]["runbook_url"]
        assert url.endswith("docs/runbooks.md#" + alert["alert"].lower()), url
        assert alert["alert"].lower() in anchors, f"docs/runbooks.md has no section for {alert['alert']}"


def test_the_image_builds_as_non_root_from_a_multi_stage_dockerfile():
    # The images themselves are built and checked from the inside by test_images.py.
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?: AS (\S+))?$", text, re.M)
    # Rust, the dependency layer, the root filesystems from Debian packages (iptables for the
    # injected init container), then the init target and the default meter target, from scratch.
    assert stages[-2:] == [("scratch", "init"), ("scratch", "meter")]
    assert ("toolchain", "deps") in stages and "iptables" in text
    assert re.search(r"^USER 65532:65532$", text, re.M)
    assert "--locked" in text and "COPY .cargo .cargo" in text
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    cargo = (ROOT / "Cargo.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in cargo, "the chart's appVersion names the image built from this version"


def test_yaml_files_are_lint_clean():
    files = [str(p) for p in [CHART / "values.yaml", CHART / "Chart.yaml", RULES, *sorted((CHART / "ci").glob("*.yaml")),
                              *sorted((ROOT / "deploy/kustomize").rglob("*.yaml"))]]
    rules = "document-start: disable, truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}, braces: {max-spaces-inside: 1}"
    for paths, length in ((files, "{max: 120}"), ([str(ROOT / "deploy/prometheus/tests/rules-test.yaml")], "disable")):
        # Test series selectors are long by nature; everything else stays readable.
        config = f"{{extends: default, rules: {{line-length: {length}, {rules}}}}}"
        result = subprocess.run(["yamllint", "-d", config, *paths], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_the_gateway_and_the_injector_can_be_placed_prioritised_and_labelled():
    placement = {"priorityClassName": "crawl-critical", "podLabels": {"team": "crawl"},
                 "tolerations": [{"key": "dedicated", "operator": "Exists"}]}
    injector = values("injector")["injector"]
    docs, _ = render("injector", {
        "gateway": {"extraEnv": [{"name": "PROXY_TELEMETRY__LIMITS__MAX_CONNECTIONS", "value": "20000"}],
                    "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "meter@p.iam"}},
                    **placement},
        "injector": {**injector, **placement}})
    for suffix in ("-gateway", "-injector"):
        [deployment] = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"].endswith(suffix)]
        spec, labels = pod_spec(deployment), deployment["spec"]["template"]["metadata"]["labels"]
        assert spec["priorityClassName"] == "crawl-critical" and labels["team"] == "crawl"
        assert spec["tolerations"] == placement["tolerations"]
        # The default spread prefers one replica per node, selecting the component's own pods.
        [spread] = spec["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
        assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    [gateway] = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"].endswith("-gateway")]
    env = pod_spec(gateway)["containers"][0]["env"]
    assert {"name": "PROXY_TELEMETRY__LIMITS__MAX_CONNECTIONS", "value": "20000"} in env
    [account] = [d for d in kinds(docs, "ServiceAccount") if d["metadata"]["name"].endswith("-gateway")]
    assert account["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": "meter@p.iam"}
    assert pod_spec(gateway)["serviceAccountName"] == account["metadata"]["name"]
    assert pod_spec(gateway)["automountServiceAccountToken"] is False


def test_scrapes_take_a_sample_limit_and_extra_relabelling_in_every_prometheus_mode():
    extra = {"sampleLimit": 40000, "metricRelabelings": [
        {"source_labels": ["__name__"], "regex": "proxy_request_duration_seconds_bucket", "action": "drop"}]}
    lean_keep = "gateway;.*"

    docs, _ = render("default", {"prometheus": {**extra}})
    [config] = [d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"].endswith("-prometheus")]
    [scrape] = [j for j in yaml.safe_load(config["data"]["prometheus.yml"])["scrape_configs"]
                if j["job_name"] == "proxy-telemetry"]
    assert scrape["sample_limit"] == 40000
    assert [r["regex"].split("|")[0] for r in scrape["metric_relabel_configs"]] == [
        lean_keep, "proxy_request_duration_seconds_bucket"]

    operator = values("kube-prometheus-stack")
    for pod_monitor in (True, False):
        docs, _ = render("kube-prometheus-stack", {"prometheus": {
            **operator["prometheus"], **extra,
            "operator": {**operator["prometheus"]["operator"], "podMonitor": pod_monitor}}})
        [monitor] = [d for d in docs if d["kind"] in ("PodMonitor", "ServiceMonitor")]
        assert monitor["spec"]["sampleLimit"] == 40000
        [endpoint] = monitor["spec"].get("podMetricsEndpoints") or monitor["spec"]["endpoints"]
        rules = endpoint["metricRelabelings"]
        assert rules[-1] == {"sourceLabels": ["__name__"], "regex": "proxy_request_duration_seconds_bucket",
                             "action": "drop"}
        # The lean profile keeps a gateway's series by its component label, which only the
        # PodMonitor sets: the gateway's ServiceMonitor keeps everything.
        assert (rules[0]["regex"].startswith(lean_keep)) == pod_monitor, rules


def test_sidecars_in_crawler_namespaces_find_their_configuration_there():
    docs, notes = render("demo", {"sidecar": {"namespaces": ["crawl-a", "crawl-b"]}})
    def where(kind, suffix):
        return sorted(d["metadata"].get("namespace", "") for d in kinds(docs, kind)
                      if d["metadata"]["name"].endswith(suffix))
    assert where("ConfigMap", "-sidecar-config") == ["crawl-a", "crawl-b", "monitoring"]
    assert where("Secret", values("demo")["credentials"]["secretName"]) == ["crawl-a", "crawl-b", "monitoring"]
    docs, notes = render("default", {"sidecar": {"namespaces": ["crawl-a"]}})
    assert "kubectl -n crawl-a create secret generic proxy-vendor-credentials --from-literal=vendor-a-password=" in notes
    with pytest.raises(Exception, match='"crawl-b", which prometheus.bundled.namespaces leaves out'):
        render("default", {"sidecar": {"namespaces": ["crawl-a", "crawl-b"]},
                           "prometheus": {"bundled": {"namespaces": ["monitoring", "crawl-a"]}}})


def test_injection_skips_namespaces_whose_pod_security_would_reject_the_init_container():
    docs, _ = render("injector")
    [webhook] = kinds(docs, "MutatingWebhookConfiguration")
    selector = webhook["webhooks"][0]["namespaceSelector"]
    assert selector["matchLabels"] == {"proxy-telemetry.io/inject": "enabled"}
    assert {"key": "pod-security.kubernetes.io/enforce", "operator": "NotIn",
            "values": ["baseline", "restricted"]} in selector["matchExpressions"]


# Pod Security Standards, "restricted" (Kubernetes 1.25+), as the API server enforces it.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_violations(spec):
    found = []
    if any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")):
        found.append("host namespaces")
    for volume in spec.get("volumes", []):
        kinds_of = set(volume) - {"name"}
        if not kinds_of <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {kinds_of}")
    pod = spec.get("securityContext", {})
    for c in all_containers(spec):
        ctx = c.get("securityContext", {})
        name = c["name"]
        if not (ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is True):
            found.append(f"{name}: runAsNonRoot")
        if ctx.get("runAsUser", pod.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation")
        if ctx.get("privileged"):
            found.append(f"{name}: privileged")
        caps = ctx.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities")
        seccomp = ctx.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{name}: hostPort")
    return found


def test_every_pod_the_chart_makes_runs_under_pod_security_restricted(rendered):
    profile, docs, _ = rendered
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"):
            assert restricted_violations(pod_spec(doc)) == [], (profile, doc["metadata"]["name"])


def test_the_kustomize_sidecar_runs_under_pod_security_restricted():
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy/kustomize/example")],
                         capture_output=True, text=True, check=True).stdout
    crawlers = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    assert crawlers
    for crawler in crawlers:
        # The crawler container is the user's; what the component adds must not cost them the level.
        spec = pod_spec(crawler)
        added = {**spec, "containers": [], "initContainers": [c for c in all_containers(spec) if c["name"] == "meter"]}
        assert added["initContainers"]
        assert restricted_violations(added) == [], crawler["metadata"]["name"]


def test_native_sidecars_are_refused_on_clusters_older_than_1_29():
    """helm lint renders with the cluster version given; the SDK reports a template's `fail` only
    in its log, so the lint runs in a child process whose log is read."""
    def failures(profile, kube_version, extra=None):
        script = ("import helm_python, json, sys; helm_python.lint(sys.argv[1], json.loads(sys.argv[2]), "
                  "kube_version=sys.argv[3])")
        merged = {**values(profile), **(extra or {})}
        result = subprocess.run([sys.executable, "-c", script, str(CHART), json.dumps(merged), kube_version],
                                capture_output=True, text=True, check=True)
        return [line for line in (result.stdout + result.stderr).splitlines() if "fail message=" in line]
    assert "injector.enabled needs Kubernetes 1.29" in " ".join(failures("injector", "v1.28.9"))
    assert failures("injector", "v1.29.0") == []
    native = {"sidecar": {"native": True}}
    assert "sidecar.native needs Kubernetes 1.29" in " ".join(failures("sidecar-only", "v1.28.9", native))
    assert failures("sidecar-only", "v1.28.9") == []  # its sidecars are regular containers
    assert failures("default", "v1.25.0") == []


@pytest.mark.parametrize("extra, message", [
    ({"gateway": {"hpa": {"enabled": True, "minReplicas": 4, "maxReplicas": 3}}}, "minReplicas (4) is above"),
    ({"gateway": {"extraEnv": [{"name": "POD_NAME", "value": "x"}]}}, "extraEnv sets POD_NAME"),
    ({"prometheus": {"bundled": {"remoteWrite": [{"url": "http://a/", "name": "lts"},
                                                 {"url": "http://b/", "name": "lts"}]}}}, 'two entries named "lts"'),
], ids=["hpa-min-above-max", "extra-env-duplicate", "remote-write-names"])
def test_values_the_api_server_or_prometheus_would_refuse_are_refused_at_render(extra, message):
    with pytest.raises(Exception, match=re.escape(message)):
        render("default", extra)


def test_a_missing_remote_write_secret_never_stops_prometheus():
    docs, _ = render("default", {"prometheus": {"bundled": {"remoteWrite": [
        {"url": "http://a/", "bearerToken": {"secret": {"name": "lts-token", "key": "token"}}}]}}})
    [deployment] = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"].endswith("-prometheus")]
    [volume] = [v for v in pod_spec(deployment)["volumes"] if v.get("secret", {}).get("secretName") == "lts-token"]
    assert volume["secret"]["optional"] is True


def test_injection_can_require_privileged_namespaces_and_survives_a_cleared_selector():
    injector = values("injector")["injector"]
    def selector(**overrides):
        docs, _ = render("injector", {"injector": {**injector, **overrides}})
        [webhook] = kinds(docs, "MutatingWebhookConfiguration")
        return webhook["webhooks"][0]["namespaceSelector"]
    assert {"key": "pod-security.kubernetes.io/enforce", "operator": "In", "values": ["privileged"]} \
        in selector(requirePrivilegedNamespace=True)["matchExpressions"]
    assert selector(namespaceSelector=None) == {"matchExpressions": [
        {"key": "pod-security.kubernetes.io/enforce", "operator": "NotIn", "values": ["baseline", "restricted"]}]}


def test_the_demo_credentials_checksum_is_the_one_an_upgrade_computes_from_the_secret():
    """Rendered without a cluster the checksum hashes the demo passwords in the Secret's own form
    (base64 values), so the first upgrade, which reads the Secret, restarts nothing."""
    import base64
    import hashlib
    passwords = values("demo")["credentials"]["demoPasswords"]
    docs, _ = render("demo")
    data = {k: base64.b64encode(v.encode()).decode() for k, v in sorted(passwords.items())}
    expected = hashlib.sha256(json.dumps(data, separators=(",", ":")).encode()).hexdigest()
    assert annotations(docs, "-gateway")["checksum/credentials"] == expected
