"""Alerts travel end to end: a live meter whose vendor is down, Debian's Prometheus with the chart's
rendered configuration and rules, Debian's Alertmanager with the chart's rendered configuration, and
a webhook receiver on loopback that must get the ProxyVendorErrorRateHigh notification. Needs
prometheus and prometheus-alertmanager (scripts/test.sh installs them); fails without them."""

import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import yaml

from test_deploy import BINARY, RULES, kinds, render


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url, process, log, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not ready: {log.read_text()}")


class Receiver(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_alert_reaches_the_receiver_through_the_charts_alertmanager(tmp_path):
    for binary in ("prometheus", "prometheus-alertmanager", "amtool"):
        assert shutil.which(binary), f"{binary} is missing: scripts/test.sh installs Debian's packages"
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{hook.server_port}/hook"

    docs, _ = render("default", {
        "alertmanager": {"bundled": {"groupWait": "1s", "groupInterval": "1s",
                                     "receivers": {"webhook": {"url": hook_url}}}},
        "prometheus": {"bundled": {"scrapeInterval": "1s"}},
    })
    configs = {d["metadata"]["name"]: d["data"] for d in kinds(docs, "ConfigMap")}
    [alertmanager_yml] = [d["alertmanager.yml"] for name, d in configs.items() if name.endswith("-alertmanager")]
    [prometheus_data] = [d for name, d in configs.items() if name.endswith("-prometheus")]
    prometheus_yml = yaml.safe_load(prometheus_data["prometheus.yml"])
    [target] = prometheus_yml["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert target.endswith("-alertmanager:9093")

    (tmp_path / "alertmanager.yml").write_text(alertmanager_yml)
    subprocess.run(["amtool", "check-config", str(tmp_path / "alertmanager.yml")], check=True, capture_output=True)

    processes = []
    try:
        # A meter whose only vendor refuses connections: every request fails on the vendor leg.
        admin, proxy = free_port(), free_port()
        (tmp_path / "meter.yaml").write_text(
            f'listeners:\n  - address: "127.0.0.1:{proxy}"\nadmin:\n  address: "127.0.0.1:{admin}"\n'
            f'vendors:\n  - name: vendor-a\n    url: http://127.0.0.1:{free_port()}\n'
            'routing:\n  default_vendor: vendor-a\n'
            'security:\n  allowed_private_destinations: ["127.0.0.0/8"]\n')
        meter_log = tmp_path / "meter.log"
        meter = subprocess.Popen([str(BINARY), "meter", "--config", str(tmp_path / "meter.yaml")],
                                 stdout=subprocess.DEVNULL, stderr=meter_log.open("w"))
        processes.append(meter)
        wait_for(f"http://127.0.0.1:{admin}/readyz", meter, meter_log)

        am_port = free_port()
        am_log = tmp_path / "alertmanager.log"
        alertmanager = subprocess.Popen(
            ["prometheus-alertmanager", f"--config.file={tmp_path / 'alertmanager.yml'}",
             f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=am_log.open("w"))
        processes.append(alertmanager)
        wait_for(f"http://127.0.0.1:{am_port}/-/ready", alertmanager, am_log)

        # The chart's Prometheus configuration as rendered, with loopback addresses for the
        # Kubernetes ones, and its rules with every `for` at zero so the test takes seconds.
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules/proxy-telemetry.rules.yaml").write_text(
            re.sub(r"\bfor: \w+", "for: 0s", RULES.read_text()))
        prometheus_yml["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{am_port}"]
        prometheus_yml["rule_files"] = [str(tmp_path / "rules/*.yaml")]
        scrape = prometheus_yml["scrape_configs"][0]
        del scrape["kubernetes_sd_configs"]
        scrape["static_configs"] = [{"targets": [f"127.0.0.1:{admin}"]}]
        scrape["relabel_configs"] = []
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_yml))
        prom_port = free_port()
        prom_log = tmp_path / "prometheus.log"
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'prom-data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=prom_log.open("w"))
        processes.append(prometheus)
        wait_for(f"http://127.0.0.1:{prom_port}/-/ready", prometheus, prom_log)

        # Crawler requests through the meter, each failing at the vendor, until the alert arrives.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy}"}))
        deadline = time.time() + 90
        firing = []
        while not firing and time.time() < deadline:
            for _ in range(10):
                try:
                    opener.open(f"http://127.0.0.1:{free_port()}/", timeout=5)
                except urllib.error.HTTPError as e:
                    assert e.code == 502, e.code
            time.sleep(0.5)
            firing = [a for n in Receiver.received for a in n["alerts"]
                      if a["labels"]["alertname"] == "ProxyVendorErrorRateHigh" and a["status"] == "firing"]
        assert firing, f"no notification; Alertmanager log: {am_log.read_text()[-2000:]}"
        alert = firing[0]
        assert alert["labels"]["proxy_vendor"] == "vendor-a"
        assert alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["runbook_url"].endswith("docs/runbooks.md#proxyvendorerrorratehigh")
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        hook.shutdown()
