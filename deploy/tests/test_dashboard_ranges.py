"""Dashboard queries as Grafana runs them: range queries over an hour of history, in a real
Prometheus (Debian's; history backfilled with `promtool tsdb create-blocks-from openmetrics`).

A "top 10" time-series panel must draw at most ten series over the whole range even when the
leaders change during it (a bare `topk` picks ten at every step, so a panel over a day showed
dozens), and a stat that counts what did not happen must read 0, not "No data"."""

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from test_alerting import free_port, wait_for
from test_deploy import CHART

START = 1_767_225_600  # 2026-01-01T00:00:00Z: any fixed hour works
HOUR = 3600
STEP = 15
WORKLOADS = 30


def panels():
    for path in sorted((CHART / "files/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                yield path.name, panel, target["expr"]


def grafana(expr):
    """The variables at "All", an hour's range, the rate interval of a 15 s scrape."""
    for variable in ("cluster", "vendor", "namespace", "workload", "pod", "destination"):
        expr = expr.replace(f'"${variable}"', '".*"')
    return (expr.replace("$__rate_interval", "1m").replace("$__range_s", str(HOUR))
            .replace("$__range", "1h"))


def history(path):
    """An hour of the workload series, whose ten leaders at the start are not the ten at the end:
    workload i's rate climbs with i in the first half hour and falls with i in the second."""
    lines = ["# TYPE vendor_workload:proxy_received_bytes:rate5m gauge"]
    for i in range(WORKLOADS):
        for t in range(START, START + HOUR + 1, STEP):
            early = t < START + HOUR / 2
            value = (1000 + i) if early else (2000 - 10 * i)
            lines.append(f'vendor_workload:proxy_received_bytes:rate5m{{proxy_vendor="vendor-a",'
                         f'source_namespace="crawlers",source_workload="crawler-{i:02}"}} {value} {t}')
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n")


def test_top_10_panels_draw_ten_series_over_the_range_and_empty_totals_read_zero(tmp_path):
    for binary in ("prometheus", "promtool"):
        assert shutil.which(binary), f"{binary} is missing: scripts/test.sh installs Debian's prometheus"
    history(tmp_path / "history.om")
    data = tmp_path / "data"
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "history.om"), str(data)],
                   check=True, capture_output=True)
    (tmp_path / "prometheus.yml").write_text("global: {}\n")
    port = free_port()
    log = tmp_path / "prometheus.log"
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={data}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=100y"],
        stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        wait_for(f"http://127.0.0.1:{port}/-/ready", prometheus, log)

        def query_range(expr):
            params = {"query": expr, "start": START, "end": START + HOUR, "step": 60}
            url = f"http://127.0.0.1:{port}/api/v1/query_range?" + urllib.parse.urlencode(params)
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.loads(response.read())["data"]["result"]

        def query(expr):
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": START + HOUR})
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.loads(response.read())["data"]["result"]

        [(name, panel, expr)] = [(n, p, e) for n, p, e in panels() if p["title"] == "Received per workload"]
        assert panel["type"] == "timeseries"
        expr = grafana(expr)
        drawn = {r["metric"]["source_workload"] for r in query_range(expr)}
        assert len(drawn) == 10, sorted(drawn)
        # The ten with the highest average over the hour: the low-numbered ones (the second half
        # hour's leaders by far), each drawn over the whole range.
        assert drawn == {f"crawler-{i:02}" for i in range(10)}
        # What the panel drew before: ten per step, twenty over the hour.
        bare = {r["metric"]["source_workload"] for r in query_range(
            "topk(10, vendor_workload:proxy_received_bytes:rate5m)")}
        assert len(bare) == 20, sorted(bare)

        # Every time-series panel that ranks does so over the range, not per step.
        for name, panel, expr in panels():
            if panel["type"] == "timeseries" and "topk(" in expr:
                assert "@ end()" in expr, (name, panel["title"])

        # Totals of things that did not happen read 0 on an empty Prometheus.
        for title in ("Requests folded into other", "Meters down", "Request rate", "Distinct destinations"):
            [expr] = [e for _, p, e in panels() if p["title"] == title]
            assert [r["value"][1] for r in query(grafana(expr))] == ["0"], title
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=10)
