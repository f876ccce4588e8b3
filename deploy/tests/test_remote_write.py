"""Beyond one Prometheus: the chart's Prometheus configuration, rendered with an external `cluster`
label and a remote_write entry whose basic-auth password comes from a mounted Secret, scrapes a
live meter under load and writes into a real VictoriaMetrics (Debian's package; scripts/test.sh
installs it). Through an authenticating hop, so the Secret's password must arrive. Then `check
--prometheus` pointed at VictoriaMetrics' Prometheus-compatible API must pass requirements a–d with
exactly the meter's own figures and the load generator's ledger, every series must carry the
cluster label, and the recorded series must arrive too. Fails, never skips, without the binaries."""

import base64
import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import yaml

from test_alerting import free_port, wait_for
from test_deploy import BINARY, RULES, render

CLUSTER = "ci-cluster"
PASSWORD = "s3cret-from-a-Secret"


class AuthenticatingHop(http.server.BaseHTTPRequestHandler):
    """A remote_write endpoint that wants basic auth, as a hosted store does, in front of
    VictoriaMetrics (whose own auth would also guard the query API)."""
    upstream = ""
    refused = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        expected = "Basic " + base64.b64encode(f"fleet:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            AuthenticatingHop.refused += 1
            self.send_response(401)
            self.end_headers()
            return
        forwarded = urllib.request.Request(AuthenticatingHop.upstream, data=body, method="POST", headers={
            k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host", "content-length")})
        try:
            with urllib.request.urlopen(forwarded, timeout=10) as response:
                self.send_response(response.status)
        except urllib.error.HTTPError as e:
            self.send_response(e.code)
        except OSError:
            self.send_response(503)  # the store is gone (the test is ending): Prometheus retries
        self.end_headers()

    def log_message(self, *args):
        pass


def check(*args):
    result = subprocess.run([str(BINARY), "check", "--format", "json", *args], capture_output=True, text=True)
    return result.returncode, result.stdout, result.stderr


def figures(report):
    """What requirements a–d say, without where they were read."""
    return {k: v for k, v in report.items() if k not in ("source",)}


def test_remote_write_carries_exact_counts_and_the_cluster_label_into_victoria_metrics(tmp_path):
    for binary in ("prometheus", "victoria-metrics"):
        assert shutil.which(binary), f"{binary} is missing: scripts/test.sh installs Debian's packages"

    docs, _ = render("default", {"prometheus": {"bundled": {
        "scrapeInterval": "1s",
        "externalLabels": {"cluster": CLUSTER},
        "remoteWrite": [{"url": "http://remote-store.example/api/v1/write", "name": "long-term",
                         "basicAuth": {"username": "fleet", "secret": {"name": "remote-write", "key": "password"}},
                         "queueConfig": {"batch_send_deadline": "1s"}}],
    }}})
    [prometheus_data] = [d["data"] for d in docs
                         if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-prometheus")]
    config = yaml.safe_load(prometheus_data["prometheus.yml"])
    assert config["global"]["external_labels"] == {"cluster": CLUSTER}
    [remote] = config["remote_write"]
    assert remote["basic_auth"] == {"username": "fleet", "password_file": "/etc/prometheus/secrets/remote-write/password"}
    [deployment] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-prometheus")]
    spec = deployment["spec"]["template"]["spec"]
    [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/etc/prometheus/secrets/remote-write"]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "remote-write" and "subPath" not in mount

    processes = []

    def start(name, args):
        log = tmp_path / f"{name}.log"
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        processes.append(process)
        return process, log

    hop = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AuthenticatingHop)
    threading.Thread(target=hop.serve_forever, daemon=True).start()
    try:
        # Websites, a vendor, and a meter that knows pods by their proxy username.
        origin_http, origin_https, vendor, proxy, admin = (free_port() for _ in range(5))
        origin, origin_log = start("origin", [str(BINARY), "fake-origin", "--http", f"127.0.0.1:{origin_http}",
                                              "--https", f"127.0.0.1:{origin_https}"])
        fake_vendor, vendor_log = start("vendor", [
            str(BINARY), "fake-vendor", "--listen", f"127.0.0.1:{vendor}", "--username", "meter",
            "--password", "pw", "--origin-http", f"127.0.0.1:{origin_http}",
            "--origin-https", f"127.0.0.1:{origin_https}"])
        (tmp_path / "meter.yaml").write_text(
            f'listeners:\n  - address: "127.0.0.1:{proxy}"\nadmin:\n  address: "127.0.0.1:{admin}"\n'
            f'vendors:\n  - name: vendor-a\n    url: http://127.0.0.1:{vendor}\n    username: meter\n'
            '    password_env: VENDOR_A_PASSWORD\n'
            'routing:\n  default_vendor: vendor-a\nidentity:\n  from: proxy_username\n'
            'security:\n  allowed_private_destinations: ["127.0.0.0/8"]\n')
        meter_log = tmp_path / "meter.log"
        meter = subprocess.Popen([str(BINARY), "meter", "--config", str(tmp_path / "meter.yaml")],
                                 stdout=subprocess.DEVNULL, stderr=meter_log.open("w"),
                                 env={"VENDOR_A_PASSWORD": "pw", "PATH": "/usr/bin:/bin"})
        processes.append(meter)
        wait_for(f"http://127.0.0.1:{admin}/readyz", meter, meter_log)

        vm_port = free_port()
        # Queries see samples as soon as they arrive (the default hides the last 30 s).
        vm, vm_log = start("victoria-metrics", [
            "victoria-metrics", f"-httpListenAddr=127.0.0.1:{vm_port}",
            f"-storageDataPath={tmp_path / 'vm-data'}", "-retentionPeriod=1d", "-search.latencyOffset=0s",
            "-search.disableCache"])
        wait_for(f"http://127.0.0.1:{vm_port}/health", vm, vm_log)
        AuthenticatingHop.upstream = f"http://127.0.0.1:{vm_port}/api/v1/write"

        # The rendered configuration with loopback for Kubernetes: the meter as a static target,
        # the hop as the store, the Secret's key as a file where the volume would put it.
        secret = tmp_path / "secrets/remote-write/password"
        secret.parent.mkdir(parents=True)
        secret.write_text(PASSWORD + "\n")
        remote["url"] = f"http://127.0.0.1:{hop.server_port}/api/v1/write"
        remote["basic_auth"]["password_file"] = str(secret)
        del config["alerting"]
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules/proxy-telemetry.rules.yaml").write_text(RULES.read_text())
        config["rule_files"] = [str(tmp_path / "rules/*.yaml")]
        scrape = config["scrape_configs"][0]
        del scrape["kubernetes_sd_configs"]
        scrape["static_configs"] = [{"targets": [f"127.0.0.1:{admin}"],
                                     "labels": {"namespace": "proxy-telemetry", "pod": "gateway-0",
                                                "component": "gateway"}}]
        scrape["relabel_configs"] = []
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_port = free_port()
        prometheus, prom_log = start("prometheus", [
            "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}", f"--web.listen-address=127.0.0.1:{prom_port}"])
        wait_for(f"http://127.0.0.1:{prom_port}/-/ready", prometheus, prom_log)

        # Three crawler pods' traffic: plain HTTP/1.1, h2c and uploads, with a ledger of truth.
        ledger = tmp_path / "ledger.json"
        subprocess.run([
            str(BINARY), "load", "--proxy", f"http://127.0.0.1:{proxy}", "--vendor", "vendor-a", "--pods", "3",
            "--namespace", "crawlers", "--pod-name", "crawler", "--rate", "40", "--requests", "240",
            "--target", "GET http://shop-a.test/bytes/2000 h1 x2", "--target", "GET http://news-b.test/bytes/500 h2",
            "--target", "POST http://api.data-c.test/upload body=100-2000 h1", "--ledger", str(ledger)],
            check=True, capture_output=True, timeout=120)

        # The meter's own figures, then the same through Prometheus and remote_write.
        code, at_meter, err = check("--metrics-url", f"http://127.0.0.1:{admin}/metrics", "--expect", str(ledger),
                                    "--vendor", "vendor-a")
        assert code == 0, at_meter + err
        deadline, report = time.time() + 60, None
        while time.time() < deadline:
            code, out, err = check("--prometheus", f"http://127.0.0.1:{vm_port}", "--expect", str(ledger),
                                   "--vendor", "vendor-a")
            if code == 0 and figures(json.loads(out)) == figures(json.loads(at_meter)):
                report = out
                break
            time.sleep(1)
        assert report, (f"VictoriaMetrics never agreed with the meter.\nmeter: {at_meter}\nvictoria-metrics: "
                        f"{out}{err}\nprometheus log: {prom_log.read_text()[-2000:]}")
        assert AuthenticatingHop.refused == 0

        def vm_query(expr):
            url = f"http://127.0.0.1:{vm_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())["data"]["result"]

        # Every series arrived with the cluster label, raw and recorded alike.
        assert vm_query('count({__name__=~"proxy_.+", cluster!="%s"})' % CLUSTER) == []
        recorded = vm_query('count by (cluster) ({__name__="vendor:proxy_requests:rate5m"})')
        assert [r["metric"] for r in recorded] == [{"cluster": CLUSTER}], recorded
    finally:
        # Prometheus first: it flushes to the store on the way out.
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=10)
        hop.shutdown()
