"""Zero code changes, offline: the chart's sidecar injector and a gateway attributing by pod IP.

The webhook runs here as the chart would run it (its rendered configuration, its generated
certificate) and is called over HTTPS as the API server calls it, trusting the caBundle of the
rendered MutatingWebhookConfiguration; the pods it patches validate with kubernetes-validate
--strict. Run through scripts/test.sh (it builds the binary first).
"""

import base64
import http.client
import json
import re
import socket
import ssl
import subprocess
import time

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from test_deploy import BINARY, KUBERNETES, kinds, render

NAMESPACE = "monitoring"


@pytest.fixture(scope="module")
def chart():
    docs, notes = render("injector")
    return docs, notes


def named(docs, kind, suffix):
    found = [d for d in kinds(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in kinds(docs, kind)]}"
    return found[0]


@pytest.fixture(scope="module")
def webhook_files(chart, tmp_path_factory):
    docs, _ = chart
    directory = tmp_path_factory.mktemp("injector")
    config = named(docs, "ConfigMap", "-injector")["data"]["injector.yaml"]
    (directory / "injector.yaml").write_text(config)
    secret = named(docs, "Secret", "-injector-tls")
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (directory / key).write_bytes(base64.b64decode(secret["data"][key]))
    return directory


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def webhook(chart, webhook_files):
    """The injector process on loopback, and an HTTPS client that trusts the chart's caBundle."""
    docs, _ = chart
    configuration = named(docs, "MutatingWebhookConfiguration", "-injector")
    hook = configuration["webhooks"][0]
    service = hook["clientConfig"]["service"]
    host = f"{service['name']}.{service['namespace']}.svc"
    port = free_port()
    process = subprocess.Popen(
        [str(BINARY), "inject-webhook", "--config", str(webhook_files / "injector.yaml"),
         "--listen", f"127.0.0.1:{port}", "--tls-cert", str(webhook_files / "tls.crt"),
         "--tls-key", str(webhook_files / "tls.key")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    context = ssl.create_default_context(cadata=base64.b64decode(hook["clientConfig"]["caBundle"]).decode())

    def call(path, body, method="POST"):
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        # The API server connects to the Service and verifies the name it dialled.
        connection.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), 10),
                                              server_hostname=host)
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()

    deadline = time.monotonic() + 20
    while True:
        try:
            if call(service["path"].replace("mutate", "healthz"), None, "GET")[0] == 200:
                break
        except OSError:
            pass
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, "the webhook did not come up"
        time.sleep(0.1)
    yield call, service["path"]
    process.terminate()
    process.wait(timeout=10)


def crawler_pod(**metadata):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "crawler-6b8f7d9c4-",
            "namespace": "crawlers",
            "labels": {"app": "crawler", "pod-template-hash": "6b8f7d9c4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "crawler-6b8f7d9c4",
                                 "uid": "2f0c1c5e-1111-4a4a-9a9a-000000000001", "controller": True}],
        },
        "spec": {"containers": [{"name": "crawler", "image": "example/crawler:1",
                                 "env": [{"name": "HTTPS_PROXY", "value": "http://user:pw@gate.vendor-b.example:7777"}]}]},
    }
    pod["metadata"].update(metadata)
    return pod


def review(pod, operation="CREATE"):
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "8d7c1b2a-0000-4000-8000-000000000042",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "crawlers",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": False,
        },
    })


def admit(webhook, pod, operation="CREATE"):
    """The webhook's answer, and the pod as the API server would store it."""
    call, path = webhook
    status, body = call(path, review(pod, operation))
    assert status == 200, body
    answer = json.loads(body)
    response = answer["response"]
    assert answer["kind"] == "AdmissionReview" and response["uid"] == "8d7c1b2a-0000-4000-8000-000000000042"
    assert response["allowed"] is True
    if "patch" not in response:
        return None
    assert response["patchType"] == "JSONPatch"
    patch = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"])))
    return patch.apply(pod)


def test_the_webhook_configuration_is_what_the_api_server_needs(chart):
    docs, _ = chart
    hook = named(docs, "MutatingWebhookConfiguration", "-injector")["webhooks"][0]
    assert hook["sideEffects"] == "None" and hook["failurePolicy"] == "Ignore"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    assert hook["namespaceSelector"]["matchLabels"] == {"proxy-telemetry.io/inject": "enabled"}
    assert hook["objectSelector"]["matchExpressions"][0]["operator"] == "NotIn"
    service = named(docs, "Service", "-injector")
    assert hook["clientConfig"]["service"] == {"name": service["metadata"]["name"], "namespace": NAMESPACE,
                                               "path": "/mutate", "port": 443}
    deployment = named(docs, "Deployment", "-injector")
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["proxy-telemetry.io/inject"] == "false", "the injector never injects itself"
    container = template["spec"]["containers"][0]
    assert container["args"][0] == "inject-webhook"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_cert_manager_mode_uses_a_certificate_and_ca_injection():
    docs, _ = render("injector", {"injector": {"enabled": True, "tls": {"mode": "certManager"}}})
    configuration = named(docs, "MutatingWebhookConfiguration", "-injector")
    assert configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        f"{NAMESPACE}/{configuration['metadata']['name']}"
    assert "caBundle" not in configuration["webhooks"][0]["clientConfig"]
    certificate = named(docs, "Certificate", "-injector")
    assert certificate["spec"]["secretName"] == named(docs, "Deployment", "-injector")["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"]
    assert named(docs, "Issuer", "-injector")["spec"] == {"selfSigned": {}}
    assert not [d for d in kinds(docs, "Secret") if d["metadata"]["name"].endswith("-injector-tls")]


def test_the_rendered_injector_configuration_and_certificate_are_accepted(webhook_files):
    result = subprocess.run(
        [str(BINARY), "inject-webhook", "--check-config", "--config", str(webhook_files / "injector.yaml"),
         "--tls-cert", str(webhook_files / "tls.crt"), "--tls-key", str(webhook_files / "tls.key")],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_crawler_pod_is_injected_over_https_and_validates_strictly(webhook):
    pod = admit(webhook, crawler_pod())
    assert pod is not None, "a patch"
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)
    init = [c["name"] for c in pod["spec"]["initContainers"]]
    assert init == ["proxy-telemetry-init", "proxy-telemetry-meter"]
    meter = pod["spec"]["initContainers"][1]
    assert meter["restartPolicy"] == "Always"
    env = {e["name"]: e for e in meter["env"]}
    assert env["POD_WORKLOAD"]["value"] == "crawler"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The injected meter is a valid transparent meter, and the crawler's own settings (its
    # vendor URL with credentials) are untouched.
    config = yaml.safe_load(env["PROXY_TELEMETRY_CONFIG_YAML"]["value"])
    assert config["transparent"]["listeners"] == ["127.0.0.1:15129"]
    assert all("username" not in v and "password_env" not in v for v in config["vendors"])
    assert pod["spec"]["containers"] == crawler_pod()["spec"]["containers"]
    assert pod["metadata"]["labels"]["proxy-telemetry.io/meter"] == "true"
    ports = pod["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeOutboundPorts"]
    assert ports.split(",") == ["3128", "7777", "8000"]


def test_the_injected_meter_and_rules_accept_their_configuration(webhook, tmp_path):
    pod = admit(webhook, crawler_pod())
    init, meter = pod["spec"]["initContainers"][:2]
    text = {e["name"]: e.get("value") for e in meter["env"]}["PROXY_TELEMETRY_CONFIG_YAML"]
    env = {"PATH": "/usr/bin:/bin", "PROXY_TELEMETRY_CONFIG_YAML": text}
    checked = subprocess.run([str(BINARY), "meter", "--check-config"], capture_output=True, text=True, env=env)
    assert checked.returncode == 0, checked.stderr
    # The init container's arguments, as a dry run: the vendor ports go to the transparent port,
    # the meter's uid returns first.
    rules = subprocess.run([str(BINARY), *init["args"], "--dry-run", "--ipv6", "off"],
                           capture_output=True, text=True, env=env)
    assert rules.returncode == 0, rules.stderr
    assert "-m owner --uid-owner 2102 -j RETURN" in rules.stdout
    for port in (8000, 7777, 3128):
        assert f"--dport {port} -j REDIRECT --to-ports 15129" in rules.stdout


def test_opted_out_injected_and_non_create_requests_are_left_alone(webhook):
    assert admit(webhook, crawler_pod(annotations={"proxy-telemetry.io/inject": "false"})) is None
    once = admit(webhook, crawler_pod())
    assert admit(webhook, once) is None, "idempotent"
    assert admit(webhook, crawler_pod(), operation="UPDATE") is None


def test_a_malformed_review_gets_a_clear_400(webhook):
    call, path = webhook
    status, body = call(path, b"{\"apiVersion\": ")
    assert status == 400 and body.startswith(b"not an AdmissionReview"), body
    status, body = call(path, json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}))
    assert status == 400 and b"no request" in body, body


def test_inject_adds_the_sidecar_to_a_deployment_manifest(webhook_files, tmp_path):
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "crawler", "namespace": "crawlers"},
        "spec": {"selector": {"matchLabels": {"app": "crawler"}},
                 "template": {"metadata": {"labels": {"app": "crawler"}},
                              "spec": {"containers": [{"name": "crawler", "image": "example/crawler:1"}]}}},
    }
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    result = subprocess.run([str(BINARY), "inject", "--config", str(webhook_files / "injector.yaml"),
                             "--file", str(tmp_path / "deployment.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    injected = json.loads(result.stdout)
    kubernetes_validate.validate(injected, KUBERNETES, strict=True)
    meter = injected["spec"]["template"]["spec"]["initContainers"][1]
    assert {e["name"]: e.get("value") for e in meter["env"]}["POD_WORKLOAD"] == "crawler"


def test_a_gateway_attributing_by_pod_ip_may_watch_pods_and_nothing_else(chart, tmp_path):
    docs, _ = chart
    gateway = named(docs, "Deployment", "-gateway")
    spec = gateway["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is True
    role = named(docs, "ClusterRole", "-gateway")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    binding = named(docs, "ClusterRoleBinding", "-gateway")
    assert binding["subjects"][0]["name"] == spec["serviceAccountName"]
    config = yaml.safe_load(named(docs, "ConfigMap", "-gateway-config")["data"]["meter.yaml"])
    assert config["identity"] == {"from": "kubernetes", "kubernetes": {"max_pods": 20000}}
    policy = named(docs, "NetworkPolicy", "-gateway")
    assert {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]} in policy["spec"]["egress"]


def test_injected_pods_are_scraped_by_both_prometheus_modes(chart, webhook):
    """The last step to the dashboards: both discovery modes select what the injector adds."""
    pod = admit(webhook, crawler_pod())
    meter = pod["spec"]["initContainers"][1]
    port_names = [p["name"] for p in meter["ports"]]
    docs, _ = chart
    config = yaml.safe_load(named(docs, "ConfigMap", "-prometheus")["data"]["prometheus.yml"])
    scrape = next(s for s in config["scrape_configs"] if s["job_name"] == "proxy-telemetry")
    keep = next(r for r in scrape["relabel_configs"]
                if r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"])
    assert keep["action"] == "keep" and any(re.fullmatch(keep["regex"], name) for name in port_names)
    assert scrape["kubernetes_sd_configs"] == [{"role": "pod"}], "every namespace, so injected ones too"

    operator, _ = render("kube-prometheus-stack", {"injector": {"enabled": True}})
    monitor = named(operator, "PodMonitor", "-meters")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in port_names


def test_the_nodes_iptables_backend_reaches_the_injected_init_container():
    from test_deploy import values
    injector = values("injector")["injector"]
    docs, _ = render("injector", {"injector": {**injector, "capture": {"iptables": "iptables-legacy"}}})
    [config] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-injector")]
    assert yaml.safe_load(config["data"]["injector.yaml"])["capture"]["iptables"] == "iptables-legacy"
