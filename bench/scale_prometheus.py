"""Part 2 of the scale harness: a real Prometheus (Debian's) holding the series of a fleet of
crawler pods with hourly churn, per topology the chart ships (gateway: two shared replicas;
sidecar: one meter per pod), with the chart's own scrape configuration and recording rules.

The meters are synthetic but faithful: `pt-bench fleet-serve` exports the meter's families (names
and labels from the meter's own table, checked against a real registry by a unit test) for every
pod, and keeps a file-based service discovery document standing in for the Kubernetes pod list;
the chart's relabelling applies to it unchanged.

1. Live: Prometheus scrapes the fleet with pods replaced every `lifetime` (compressed: hourly
   churn played in minutes). After three lifetimes the head holds what three hours of hourly churn
   leave in it at most (Prometheus compacts its head once it spans three hours): measured are
   head series, RSS, rule-group evaluation time and WAL bytes per sample.
2. History: `pt-bench fleet-history` writes the raw samples of the last `raw_hours` as scraped
   every 15 s (real lifetime: one hour), the recorded series (the label sets the live run's rules
   produced) for seven days at their groups' intervals; `promtool tsdb create-blocks-from
   openmetrics` turns them into blocks (2 h windows, in parallel). Measured: block bytes per day,
   extrapolated to 30 days against the chart's volume, and the latency of every dashboard panel
   query and variable over 1 h, 24 h and 7 d, as Grafana sends them.
"""

import concurrent.futures
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from procs import Proc, free_port
from run import wait_port

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/proxy-telemetry"
DASHBOARDS = CHART / "files/dashboards"
HOUR = 3600
DAY = 24 * HOUR
BLOCK = 2 * HOUR
# What the chart's Prometheus runs with (values.yaml: prometheus.bundled).
SCRAPE_INTERVAL = 15
# Grafana's default for a panel about 1,000 pixels wide: the query step is the range over
# this many points, never below the scrape interval, rounded to a round interval.
MAX_DATA_POINTS = 1000
ROUND_STEPS = [15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200]

# docs/metrics.md, "Series budget": the head series one pod adds in Prometheus, per generation
# (each replacement pod is new series) — a gateway pod's 6 per-pod series on 1.5 of the 2
# replicas on average (its connections are balanced one by one); a sidecar's 6 kept by
# `prometheus.sidecarSeries: lean`, one per vendor-error reason it saw (the fleet's pods see
# one: resets), and the 5 Prometheus writes for every target (up, scrape_duration_seconds,
# scrape_samples_scraped, scrape_samples_post_metric_relabeling, scrape_series_added). The
# harness measures it as the head's growth per replaced pod.
def per_pod_budget():
    """The series each new pod adds to Prometheus, per chart profile, as docs/metrics.md states
    them ("Series budget"): the harness measures against the documentation, not a copy of it."""
    budget = {}
    for line in (ROOT / "docs/metrics.md").read_text().splitlines():
        m = re.match(r"^\| `(gateway|sidecar)` \|[^|]*\| (\d+) \|", line)
        if m:
            budget[m.group(1)] = int(m.group(2))
    return budget


PER_POD_GENERATION = per_pod_budget()

PROFILES = {
    # The chart's shipped topologies (deploy/helm/proxy-telemetry/ci).
    "gateway": {"values": "gateway-only", "fleet": ["--profile", "gateway", "--replicas", "2"]},
    "sidecar": {"values": "sidecar-only", "fleet": ["--profile", "sidecar"]},
}


def chart(values_name):
    """The chart's Prometheus configuration and rules, rendered with helm-python-sdk."""
    import helm_python as helm
    import yaml
    values = yaml.safe_load((CHART / f"ci/{values_name}-values.yaml").read_text())
    out = helm.Chart.load(str(CHART)).render(values, name="proxy-telemetry", namespace="monitoring",
                                             is_install=True)
    for path, text in out.items():
        if path.endswith(".txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc and doc.get("kind") == "ConfigMap" and "prometheus.yml" in doc.get("data", {}):
                rules = next((v for k, v in doc["data"].items() if k.endswith(".rules.yaml")), None)
                return yaml.safe_load(doc["data"]["prometheus.yml"]), rules, values
    raise RuntimeError("the chart rendered no Prometheus configuration")


def prometheus_config(config, sd_file, rules_file, self_port, interval=SCRAPE_INTERVAL):
    """The chart's configuration with Kubernetes discovery swapped for the fleet's file (and,
    for the smoke run only, a shorter scrape and evaluation interval)."""
    import yaml
    config = json.loads(json.dumps(config))
    if interval != SCRAPE_INTERVAL:
        config.setdefault("global", {}).update(scrape_interval=f"{interval}s", evaluation_interval=f"{interval}s")
    for job in config["scrape_configs"]:
        if job["job_name"] == "proxy-telemetry":
            job.pop("kubernetes_sd_configs", None)
            job["file_sd_configs"] = [{"files": [str(sd_file)], "refresh_interval": "5s"}]
        elif job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{self_port}"]}]
    if rules_file:
        config["rule_files"] = [str(rules_file)]
    return yaml.safe_dump(config)


class Prometheus:
    def __init__(self, work, name, config_text, data, port):
        self.port = port
        config = work / f"{name}.yml"
        config.write_text(config_text)
        self.proc = Proc(work, name, [
            "prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=30d",
            "--log.level=warn"])
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"Prometheus did not become ready; see {self.proc.log}")

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(url, timeout=300) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def value(self, expr):
        result = self.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def head_series(self):
        """The head's series now, from Prometheus' own /metrics: a query would read the last
        self-scrape, up to a scrape interval old, which at the smoke run's pace is hundreds of
        series off at each end of the measurement."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("prometheus_tsdb_head_series "):
                    return int(float(line.split()[1]))
        raise RuntimeError("Prometheus exports no prometheus_tsdb_head_series")

    def stop(self):
        self.proc.stop()


def live(profile, args, work, pt_bench):
    """Hourly churn played in minutes: head series, memory, rule evaluation, WAL."""
    spec = PROFILES[profile]
    config, rules, values = chart(spec["values"])
    rules_file = work / f"rules-{profile}.yaml"
    rules_file.write_text(rules or "groups: []\n")
    lifetime = args.live_lifetime
    # Time compressed: metrics.pod_series_ttl (10 min) in the same proportion to the pod's life
    # as in real time, and an hour's requests in the pod's life, so its series are those of a
    # pod that lived an hour.
    ttl = 600 * lifetime / HOUR
    rate = 0.4 * HOUR / lifetime
    sd_file = work / f"targets-{profile}.json"
    fleet_port, prom_port = free_port(), free_port()
    fleet = Proc(work, f"fleet-{profile}", [
        pt_bench, "fleet-serve", *spec["fleet"], "--pods", str(args.pods), "--lifetime", str(lifetime),
        "--series-ttl", str(ttl), "--rate", str(rate),
        "--final-scrape-delay", "15", "--epoch", str(time.time()), "--listen", f"127.0.0.1:{fleet_port}",
        "--file-sd", str(sd_file)])
    data = work / f"live-{profile}"
    shutil.rmtree(data, ignore_errors=True)
    prom = None
    try:
        wait_port(fleet_port)
        while not sd_file.exists():
            time.sleep(0.2)
        interval = args.scrape_interval
        prom = Prometheus(work, f"prometheus-live-{profile}",
                          prometheus_config(config, sd_file, rules_file, prom_port, interval), data, prom_port)
        started = time.time()
        timeline = []
        duration = 3 * lifetime + 2 * interval
        print(f"  {profile}: live for {duration:.0f} s (pods replaced every {lifetime:.0f} s)", flush=True)
        while time.time() - started < duration:
            time.sleep(interval)
            at = time.time() - started
            sample = {
                "t": round(at),
                "at": round(at, 3),
                "head_series": prom.head_series(),
                "rss_mib": round(prom.proc.rss_mib(), 1),
                "targets": int(prom.value('sum(prometheus_target_scrape_pool_targets{scrape_job="proxy-telemetry"})')),
                "scraped_series": int(prom.value('sum(scrape_samples_post_metric_relabeling{job="proxy-telemetry"})')),
            }
            timeline.append(sample)
            print(f"  {profile} t={sample['t']}s head={sample['head_series']} rss={sample['rss_mib']} MiB "
                  f"targets={sample['targets']} scraped={sample['scraped_series']}", flush=True)
        groups = {g["name"]: {"interval": g["interval"], "evaluation_ms": round(g["evaluationTime"] * 1000, 1),
                              "rules": len(g["rules"])}
                  for g in prom.api("rules")["groups"]}
        # Worst evaluation over the run, not only the last.
        for name in groups:
            worst = prom.value(f'max_over_time(prometheus_rule_group_last_duration_seconds{{rule_group=~".*;{name}"}}[1h])')
            groups[name]["worst_ms"] = round(worst * 1000, 1)
        recorded = prom.api("query", query='{__name__=~".+:.+"}')["result"]
        appended = prom.value("prometheus_tsdb_head_samples_appended_total")
        wal = sum(f.stat().st_size for f in (data / "wal").rglob("*") if f.is_file())
        families = prom.api("query", query='count by (__name__) ({job="proxy-telemetry"})')["result"]
        per_family = {r["metric"]["__name__"]: int(float(r["value"][1])) for r in families}
        alerts = {f'{r["metric"]["alertname"]} ({r["metric"]["alertstate"]})': int(float(r["value"][1]))
                  for r in prom.api("query", query="count by (alertname, alertstate) (ALERTS)")["result"]}
    finally:
        if prom:
            prom.stop()
        fleet.stop()
    shutil.rmtree(data, ignore_errors=True)
    # The head's growth while pods are replaced at a steady pace: series per new pod, as the
    # least-squares slope over every sample after the first generation (two end points alone
    # carry each one's jitter whole into the result).
    steady = [(x["at"], x["head_series"]) for x in timeline if x["at"] >= lifetime]
    per_pod = None
    if len(steady) >= 3:
        mean_t = sum(t for t, _ in steady) / len(steady)
        mean_h = sum(h for _, h in steady) / len(steady)
        slope = sum((t - mean_t) * (h - mean_h) for t, h in steady) / sum((t - mean_t) ** 2 for t, _ in steady)
        per_pod = round(slope * lifetime / args.pods, 2)
    return {
        "pods": args.pods, "lifetime_seconds": lifetime, "timeline": timeline, "per_pod_generation": per_pod,
        "per_pod_generation_budget": PER_POD_GENERATION[profile],
        "head_series": timeline[-1]["head_series"] if timeline else 0,
        "peak_rss_mib": max((s["rss_mib"] for s in timeline), default=0),
        "rule_groups": groups,
        "recorded": [{"labels": r["metric"], "value": float(r["value"][1])} for r in recorded],
        "wal_bytes_per_sample": round(wal / max(appended, 1), 3),
        "series_per_family": per_family, "alerts": alerts,
        "chart_volume": values.get("prometheus", {}).get("bundled", {}).get("persistence", {}).get("size")
        or default_volume(),
    }


def default_volume():
    import yaml
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return values["prometheus"]["bundled"]["persistence"]["size"]


def rule_intervals():
    """Each recording rule's evaluation interval, by the name it records."""
    import yaml
    intervals = {}
    for group in yaml.safe_load((CHART / "files/prometheus-rules.yaml").read_text())["groups"]:
        interval = parse_duration(group.get("interval", f"{SCRAPE_INTERVAL}s"))
        for rule in group["rules"]:
            if "record" in rule:
                intervals[rule["record"]] = interval
    return intervals


def parse_duration(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": HOUR, "d": DAY, "w": 7 * DAY}
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|s|m|h|d|w)", text):
        total += int(number) * units[unit]
    return total


def history(profile, live_result, args, work, pt_bench):
    """Seven days of recorded series and `raw_hours` of raw ones, as blocks; then every
    dashboard query over 1 h, 24 h and 7 d."""
    spec = PROFILES[profile]
    data = work / f"history-{profile}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    end = math.floor(time.time() / BLOCK) * BLOCK - BLOCK
    raw_start = end - args.raw_hours * HOUR
    recorded_start = end - int(args.history_days * DAY)
    raw_dir, recorded_dir = work / f"blocks-raw-{profile}", work / f"blocks-recorded-{profile}"
    for d in (raw_dir, recorded_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    intervals = rule_intervals()
    started = time.time()

    # What the chart's relabelling kept of the meters' families in the live run.
    kept = sorted(name for name in live_result["series_per_family"] if name.startswith("proxy_"))

    def raw_window(start):
        om = work / f"raw-{profile}-{start}.om"
        out = subprocess.run([pt_bench, "fleet-history", *spec["fleet"], "--pods", str(args.pods),
                              "--keep", ",".join(kept),
                              "--lifetime", str(HOUR), "--series-ttl", "600", "--epoch", str(end - 30 * DAY),
                              "--from", str(start), "--to", str(min(start + BLOCK, end)), "--step", str(SCRAPE_INTERVAL),
                              "--out", str(om)], check=True, capture_output=True, text=True)
        samples = json.loads(out.stdout)["samples"]
        promtool(om, raw_dir)
        om.unlink()
        return samples

    def recorded_window(start):
        om = work / f"recorded-{profile}-{start}.om"
        samples = write_recorded(om, live_result["recorded"], intervals, start, min(start + BLOCK, end))
        promtool(om, recorded_dir)
        om.unlink()
        return samples

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        raw_samples = sum(pool.map(raw_window, range(raw_start, end, BLOCK)))
        recorded_samples = sum(pool.map(recorded_window, range(recorded_start, end, BLOCK)))
    backfill_seconds = time.time() - started
    raw_bytes = dir_bytes(raw_dir)
    recorded_bytes = dir_bytes(recorded_dir)
    for d in (raw_dir, recorded_dir):
        for block in d.iterdir():
            block.rename(data / f"{block.name}")
    print(f"  {profile}: backfilled {raw_samples} raw and {recorded_samples} recorded samples "
          f"in {backfill_seconds:.0f} s", flush=True)

    port = free_port()
    prom = Prometheus(work, f"prometheus-history-{profile}",
                      prometheus_config({"global": {"scrape_interval": f"{SCRAPE_INTERVAL}s"}, "scrape_configs": []},
                                        work / "none.json", None, port), data, port)
    try:
        queries = dashboard_queries(prom, end)
        daily = daily_rules(prom, end)
        rss = prom.proc.rss_mib()
    finally:
        prom.stop()
    shutil.rmtree(data, ignore_errors=True)
    raw_per_day = raw_bytes / args.raw_hours * 24
    recorded_per_day = recorded_bytes / args.history_days
    return {
        "raw_hours": args.raw_hours, "history_days": args.history_days,
        "raw_samples": raw_samples, "recorded_samples": recorded_samples,
        "backfill_seconds": round(backfill_seconds),
        "raw_bytes_per_day": round(raw_per_day), "recorded_bytes_per_day": round(recorded_per_day),
        "bytes_per_raw_sample": round(raw_bytes / max(raw_samples, 1), 3),
        "queries": queries, "daily_rules": daily, "query_rss_mib": round(rss, 1),
    }


def dir_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def promtool(om, out_dir):
    done = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(out_dir)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"promtool on {om}: {done.stderr.strip()[-2000:]}")


def write_recorded(path, recorded, intervals, start, end):
    """The recorded series the live run produced, over [start, end), at their rules' intervals,
    with a daily swing. Per-pod recorded series (a `source_pod` label) churn every hour, as the
    pods they follow do."""
    samples = 0
    with open(path, "w") as out:
        for series in recorded:
            labels = dict(series["labels"])
            name = labels.pop("__name__")
            step = intervals.get(name, SCRAPE_INTERVAL)
            t = math.ceil(start / step) * step
            base = series["value"]
            lines = []
            while t < end:
                if "source_pod" in labels:
                    labels_now = {**labels, "source_pod": f"{labels['source_pod']}-h{int(t // HOUR)}"}
                else:
                    labels_now = labels
                text = ",".join(f'{k}="{v}"' for k, v in sorted(labels_now.items()))
                value = base * (1 + 0.3 * math.sin(2 * math.pi * t / DAY))
                lines.append(f"{name}{{{text}}} {value:.6g} {t}\n")
                t += step
            out.writelines(lines)
            samples += len(lines)
        out.write("# EOF\n")
    return samples


def grafana_step(range_seconds):
    wanted = max(range_seconds / MAX_DATA_POINTS, SCRAPE_INTERVAL)
    return next((s for s in ROUND_STEPS if s >= wanted), ROUND_STEPS[-1])


def substitute(expr, step, span):
    """The query Grafana sends with every variable at "All" (the dashboards' default), over a
    range of `span` seconds."""
    rate_interval = max(step + SCRAPE_INTERVAL, 4 * SCRAPE_INTERVAL)
    expr = expr.replace("$__rate_interval", f"{rate_interval}s").replace("$__interval", f"{step}s")
    expr = expr.replace("$__range_s", f"{int(span)}").replace("$__range", f"{int(span)}s")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def panels():
    """Every panel query of the shipped dashboards, with the panel's own time override."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append({"dashboard": path.stem, "panel": panel.get("title", ""), "expr": target["expr"],
                                "time_from": panel.get("timeFrom"), "instant": target.get("instant", False)})
        for variable in board.get("templating", {}).get("list", []):
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            if variable.get("type") == "query" and query:
                out.append({"dashboard": path.stem, "panel": f"variable {variable['name']}", "expr": query,
                            "variable": True})
    return out


def timed(call, repeat=3):
    """The median of `repeat` runs, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def dashboard_queries(prom, end):
    results = []
    for p in panels():
        row = {k: p[k] for k in ("dashboard", "panel", "expr")}
        if p.get("variable"):
            match = re.match(r"label_values\((.*),\s*(\w+)\)\s*$", p["expr"].strip())
            if not match:
                continue
        for label, range_seconds in (("1h", HOUR), ("24h", DAY), ("7d", 7 * DAY)):
            span = range_seconds
            # A calendar override ("now/M": this month so far) is measured over the whole range.
            if p.get("time_from") and not p["time_from"].startswith("now"):
                span = min(span, parse_duration(p["time_from"]))
            start = end - span
            step = grafana_step(span)
            if p.get("variable"):
                selector, label_name = substitute(match.group(1), step, span), match.group(2)
                call = lambda: prom.api(f"label/{label_name}/values", **{"match[]": selector, "start": start, "end": end})
            elif p.get("instant"):
                query = substitute(p["expr"], step, span)
                call = lambda: prom.api("query", query=query, time=end)
            else:
                query = substitute(p["expr"], step, span)
                call = lambda: prom.api("query_range", query=query, start=start, end=end, step=step)
            row[label] = round(timed(call) * 1000, 1)
        results.append(row)
    return results


def daily_rules(prom, end):
    """The expressions of rules with long windows, evaluated once at the end of the history."""
    import yaml
    out = []
    for group in yaml.safe_load((CHART / "files/prometheus-rules.yaml").read_text())["groups"]:
        if parse_duration(group.get("interval", "15s")) < 300:
            continue
        for rule in group["rules"]:
            if "record" in rule:
                seconds = timed(lambda: prom.api("query", query=rule["expr"], time=end), repeat=1)
                out.append({"record": rule["record"], "ms": round(seconds * 1000, 1)})
    return out


def run(args, work):
    pt_bench = str(Path(args.pt_bench).resolve()) if args.pt_bench else None
    if not pt_bench:
        print("building pt-bench (release)")
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "pt-bench"], cwd=ROOT, check=True)
        pt_bench = str(ROOT / "target/release/pt-bench")
    results = {}
    for profile in args.profiles:
        print(f"part 2: Prometheus, {profile} topology, {args.pods} pods, hourly churn", flush=True)
        live_result = live(profile, args, work, pt_bench)
        results[profile] = {"live": live_result}
        if not args.skip_history:
            results[profile]["history"] = history(profile, live_result, args, work, pt_bench)
    return results


def report(results):
    lines = ["## Prometheus", ""]
    for profile, r in results.items():
        live_result = r["live"]
        lines += [f"### {profile}", "", f"Measured {r.get('when', '?')}, {live_result.get('pods', '?')} pods.", "",
                  f"Live: pods replaced every {live_result['lifetime_seconds']:.0f} s, measured after three lifetimes "
                  "(what three hours of hourly churn leave in the head).", "",
                  "| measure | result | target | met |", "|---|---|---|---|",
                  f"| head series | {live_result['head_series']} | ≤ 250,000 | {yes(live_result['head_series'] <= 250_000)} |",
                  f"| head series per new pod | {live_result['per_pod_generation']} | the budget's "
                  f"{live_result['per_pod_generation_budget']} (docs/metrics.md) | "
                  f"{yes(within(live_result['per_pod_generation'], live_result['per_pod_generation_budget']))} |",
                  f"| RSS, peak | {live_result['peak_rss_mib']:.0f} MiB | ≤ 4 GiB | {yes(live_result['peak_rss_mib'] <= 4096)} |"]
        for name, g in live_result["rule_groups"].items():
            lines.append(f"| rule group `{name}` ({g['rules']} rules, every {g['interval']:.0f} s) | worst {g['worst_ms']} ms | "
                         f"under its interval | {yes(g['worst_ms'] < g['interval'] * 1000)} |")
        lines += ["", "Series by family (live, at the end):", "",
                  "| family | series |", "|---|---|"]
        lines += [f"| `{k}` | {v} |" for k, v in sorted(live_result["series_per_family"].items(), key=lambda kv: -kv[1])]
        h = r.get("history")
        if h:
            per_day = h["raw_bytes_per_day"] + h["recorded_bytes_per_day"]
            thirty = per_day * 30
            volume = parse_size(live_result["chart_volume"])
            lines += ["", f"History: {h['raw_hours']} h of raw samples and {h['history_days']} d of recorded series "
                      f"backfilled ({h['raw_samples']} + {h['recorded_samples']} samples, {h['backfill_seconds']} s).", "",
                      "| measure | result | target | met |", "|---|---|---|---|",
                      f"| TSDB bytes per day | {per_day / 2**30:.2f} GiB (raw {h['raw_bytes_per_day'] / 2**30:.2f}, "
                      f"recorded {h['recorded_bytes_per_day'] / 2**30:.3f}; {h['bytes_per_raw_sample']} B per raw sample) | | |",
                      f"| 30 days | {thirty / 2**30:.1f} GiB | within the chart's volume ({live_result['chart_volume']}) | "
                      f"{yes(thirty <= volume)} |"]
            worst = {label: max((q.get(label, 0) for q in h["queries"]), default=0) for label in ("1h", "24h", "7d")}
            lines += [f"| slowest dashboard query, 24 h | {worst['24h']:.0f} ms | ≤ 1,000 ms | {yes(worst['24h'] <= 1000)} |",
                      f"| slowest dashboard query, 7 d | {worst['7d']:.0f} ms | ≤ 3,000 ms | {yes(worst['7d'] <= 3000)} |",
                      "", "Every dashboard query (ms, median of three):", "",
                      "| dashboard | panel | 1 h | 24 h | 7 d |", "|---|---|---|---|---|"]
            lines += [f"| {q['dashboard']} | {q['panel']} | {q.get('1h', '')} | {q.get('24h', '')} | {q.get('7d', '')} |"
                      for q in h["queries"]]
            if h["daily_rules"]:
                lines += ["", f"Long-window rules evaluated at the end of the history (over {h['raw_hours']} h of raw samples):", "",
                          "| rule | ms |", "|---|---|"]
                lines += [f"| `{d['record']}` | {d['ms']} |" for d in h["daily_rules"]]
        lines.append("")
    return lines


def parse_size(text):
    match = re.match(r"(\d+)(Ki|Mi|Gi|Ti)?", str(text))
    factor = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, None: 1}[match.group(2)]
    return int(match.group(1)) * factor


def within(measured, budget, tolerance=0.15):
    return measured is not None and abs(measured - budget) <= tolerance * budget


def yes(ok):
    return "yes" if ok else "**no**"
