#!/usr/bin/env python3
"""The scale harness: a shared meter carrying a fleet of thousands of churning crawler pods, and
Prometheus holding their series. One command, not a test (figures depend on the machine); a
small version runs in the test suite (tests/scale_smoke.rs, `--smoke`).

Part 1, the meter (gateway topology, identities by proxy username): three fake vendors and a
fake origin (the demo's own, as processes), the meter, and `proxy-telemetry load`:
  - the same total rate from 21 pods, then from the full fleet with churn (a share of the pods
    replaced by new ones every minute), in the same run, so the CPU per request compares;
  - RSS over time, `/metrics` size, series and encode time, refusals, the load's own outcome;
  - after the load: how long departed pods' series stay (`metrics.pod_series_ttl`).
Part 2, Prometheus (bench/scale_prometheus.py): see there.

Usage: bench/scale.sh [--pods 5000] [--rate 2000] [--minutes 5] [--churn 10] [--smoke]
                      [--binary PATH] [--skip-prometheus] [--skip-meter]
Writes bench/results/scale.md and scale.json (a smoke run writes under its work directory).
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from procs import Proc, free_port  # bench/procs.py: shared with scale_prometheus.py
from run import wait_port  # bench/run.py: the benchmark's own, same loopback wait

ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def scrape(admin):
    """`/metrics`: its text, its size and how long the meter took to serve it."""
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=30) as response:
        text = response.read().decode()
    took = time.perf_counter() - started
    return text, took


def families(text):
    """Samples by name, and the distinct pods in the per-pod families."""
    samples = {}
    pods = set()
    series = 0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series += 1
        name = line.split("{", 1)[0].split(" ", 1)[0]
        value = float(line.rsplit(" ", 1)[1])
        samples.setdefault(name, []).append((line, value))
        if 'source_pod="' in line:
            pods.add(line.split('source_pod="', 1)[1].split('"', 1)[0])
    return samples, pods, series


def total(samples, name, match=""):
    return sum(v for line, v in samples.get(name, []) if match in line)


def pki(work):
    """A CA and a certificate for the fake origin's host names, made with openssl."""
    hosts = ["shop-a.test", "news-b.test", "api.data-c.test"]
    ca_key, ca, key, csr, cert = (work / n for n in ("ca.key", "ca.pem", "origin.key", "origin.csr", "origin.pem"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=scale-harness-ca")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=shop-a.test")
    ext = work / "san.ext"
    ext.write_text("subjectAltName=" + ",".join(f"DNS:{h}" for h in hosts) + "\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)
    return ca, cert, key


def meter_part(args, binary, work):
    print(f"part 1: a shared meter, {args.pods} pods at {args.rate} requests/s, {args.churn}% churn per minute")
    ca, cert, key = pki(work)
    procs = []
    try:
        http, https = free_port(), free_port()
        procs.append(Proc(work, "origin", [binary, "fake-origin", "--http", f"127.0.0.1:{http}",
                                            "--https", f"127.0.0.1:{https}", "--cert", str(cert), "--key", str(key)]))
        vendors = {}
        for name in ("vendor-a", "vendor-b", "vendor-c"):
            port = free_port()
            vendors[name] = port
            procs.append(Proc(work, name, [binary, "fake-vendor", "--listen", f"127.0.0.1:{port}",
                                            "--origin-http", f"127.0.0.1:{http}", "--origin-https", f"127.0.0.1:{https}",
                                            "--username", "meter", "--password", "scale-secret"]))
        for port in [http, https, *vendors.values()]:
            wait_port(port)
        proxy, admin = free_port(), free_port()
        config = work / "meter.yaml"
        config.write_text(
            f"listeners:\n  - address: \"127.0.0.1:{proxy}\"\nadmin:\n  address: \"127.0.0.1:{admin}\"\n"
            "vendors:\n" + "".join(
                f"  - name: {n}\n    url: http://127.0.0.1:{p}\n    username: meter\n    password_env: SCALE_VENDOR_PASSWORD\n"
                for n, p in vendors.items())
            + "identity:\n  from: proxy_username\n  default_namespace: crawlers\n"
            f"metrics:\n  max_pods: 10000\n  pod_series_ttl: {args.ttl}s\n"
            "access_log:\n  enabled: false\n")
        meter = Proc(work, "meter", [binary, "meter", "--config", str(config)],
                     env={"SCALE_VENDOR_PASSWORD": "scale-secret", "RUST_LOG": "warn"})
        procs.append(meter)
        wait_port(proxy)
        wait_port(admin)
        idle_rss = meter.rss_mib()
        # A crawler pod as fleets run them: one vendor per pod (a vendor's session), plain HTTP
        # and HTTPS through a CONNECT tunnel it keeps open (HTTP/2 inside), one connection each.
        targets = ["GET http://shop-a.test/bytes/2048 x1", "GET https://api.data-c.test/bytes/8192 h2 x1"]

        def load(name, pods, seconds, churn):
            cmd = [binary, "load", "--proxy", f"http://127.0.0.1:{proxy}", "--pods", str(pods),
                   "--rate", f"{args.rate / pods:.6f}", "--duration", f"{seconds}s", "--ca-file", str(ca),
                   "--churn-per-minute", str(churn), "--vendor-per-pod", "--concurrency", "4", "--timeout", "20s",
                   "--output", "json"]
            for t in targets:
                cmd += ["--target", t]
            out = work / f"{name}.json"
            with open(out, "w") as stdout, open(work / f"{name}.log", "w") as stderr:
                proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=work,
                                        env={**os.environ, "RUST_LOG": "warn,pt_load=debug"})
            return proc, out

        def measured(name, pods, seconds, churn, sample_every):
            before_cpu = meter.cpu_seconds()
            text, _ = scrape(admin)
            samples, _, _ = families(text)
            before_requests = total(samples, "proxy_requests_total")
            before_overloaded = total(samples, "proxy_rejected_requests_total", 'reason="overloaded"')
            proc, out = load(name, pods, seconds, churn)
            timeline = []
            started = time.time()
            while proc.poll() is None:
                time.sleep(sample_every)
                text, took = scrape(admin)
                _, live_pods, series = families(text)
                timeline.append({"t": round(time.time() - started), "rss_mib": round(meter.rss_mib(), 1),
                                 "metrics_bytes": len(text), "series": series, "pods": len(live_pods),
                                 "scrape_ms": round(took * 1000, 1)})
                print(f"  {name} t={timeline[-1]['t']}s rss={timeline[-1]['rss_mib']} MiB "
                      f"series={series} pods={len(live_pods)} scrape={timeline[-1]['scrape_ms']} ms", flush=True)
            report = json.loads(out.read_text())
            text, _ = scrape(admin)
            samples, _, _ = families(text)
            requests = total(samples, "proxy_requests_total") - before_requests
            cpu = meter.cpu_seconds() - before_cpu
            return {
                "pods": pods, "seconds": seconds, "churn_per_minute": churn,
                "load": {k: report[k] for k in ("scheduled", "completed", "failed", "retried", "requests_per_second", "errors", "statuses", "pods")},
                "latency_ms": report["latency_ms"],
                "meter_requests": requests,
                "overloaded": total(samples, "proxy_rejected_requests_total", 'reason="overloaded"') - before_overloaded,
                "cpu_us_per_request": round(cpu / max(requests, 1) * 1e6, 2),
                "timeline": timeline,
            }

        small = measured("21-pods", 21, args.baseline_seconds, 0, max(args.sample // 2, 2))
        fleet = measured(f"{args.pods}-pods", args.pods, args.minutes * 60, args.churn, args.sample)
        # After the fleet is gone: how long its pods' series stay.
        released = []
        started = time.time()
        if not args.smoke:
            print(f"  waiting for departed pods' series (ttl {args.ttl}s)")
        # The smoke run does not wait the TTL out (two minutes at least); the unit tests of
        # pt-metrics and pt-meter cover the release itself.
        while time.time() - started < (args.ttl + 90 if not args.smoke else 0):
            text, took = scrape(admin)
            _, live_pods, series = families(text)
            released.append({"t": round(time.time() - started), "pods": len(live_pods), "series": series,
                             "rss_mib": round(meter.rss_mib(), 1)})
            if not live_pods - {"unknown", "other"}:
                break
            time.sleep(10)
        return {"idle_rss_mib": round(idle_rss, 1), "small": small, "fleet": fleet, "released": released,
                "rate": args.rate, "churn": args.churn, "minutes": args.minutes,
                "ttl_seconds": args.ttl,
                "cpu_ratio": round(fleet["cpu_us_per_request"] / max(small["cpu_us_per_request"], 1e-9), 3)}
    finally:
        for p in reversed(procs):
            p.stop()


def meter_summary(m):
    fleet, small = m["fleet"], m["small"]
    peak_rss = max((s["rss_mib"] for s in fleet["timeline"]), default=0)
    peak_scrape = max((s["scrape_ms"] for s in fleet["timeline"]), default=0)
    peak_bytes = max((s["metrics_bytes"] for s in fleet["timeline"]), default=0)
    peak_series = max((s["series"] for s in fleet["timeline"]), default=0)
    released = m["released"][-1] if m["released"] else {}
    gone = released.get("pods", 1) <= 2
    rows = [
        ("requests refused (`overloaded`)", f"{fleet['overloaded']}", "0", fleet["overloaded"] == 0),
        ("requests completed by the fleet", f"{fleet['load']['completed']} of {fleet['load']['scheduled']} ({fleet['load']['failed']} failed)", "all", fleet["load"]["failed"] == 0),
        ("meter RSS, peak", f"{peak_rss:.1f} MiB (idle {m['idle_rss_mib']} MiB)", "≤ 64 MiB", peak_rss <= 64),
        ("`/metrics` served, slowest", f"{peak_scrape:.0f} ms for {peak_bytes / 1e6:.2f} MB, {peak_series} series", "≤ 100 ms", peak_scrape <= 100),
        ("CPU per request, fleet vs 21 pods", f"{fleet['cpu_us_per_request']} µs vs {small['cpu_us_per_request']} µs: ×{m['cpu_ratio']}", "within 10%", m["cpu_ratio"] <= 1.10),
        ("departed pods' series", f"{released.get('pods', '?')} pods exported {released.get('t', '?')} s after the load (ttl {m['ttl_seconds']} s)", "released after the ttl", gone),
    ]
    lines = ["| measure | result | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {'yes' if ok else '**no**'} |" for a, b, c, ok in rows]
    return "\n".join(lines), all(ok for *_, ok in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=2000, help="requests per second over the fleet")
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--churn", type=float, default=10, help="percent of pods replaced per minute")
    parser.add_argument("--ttl", type=int, default=120, help="metrics.pod_series_ttl, seconds")
    parser.add_argument("--baseline-seconds", type=int, default=60)
    parser.add_argument("--sample", type=int, default=10, help="seconds between samples")
    parser.add_argument("--binary", help="the proxy-telemetry binary (default: build the release one)")
    parser.add_argument("--pt-bench", help="the pt-bench binary (default: build the release one)")
    parser.add_argument("--smoke", action="store_true", help="a small run for the test suite")
    parser.add_argument("--skip-prometheus", action="store_true")
    parser.add_argument("--skip-meter", action="store_true")
    parser.add_argument("--profiles", default="gateway,sidecar", help="Prometheus part: topologies")
    parser.add_argument("--live-lifetime", type=float, default=150,
                        help="Prometheus part: seconds a pod lives in the live run (hourly churn, compressed)")
    parser.add_argument("--raw-hours", type=int, default=6,
                        help="Prometheus part: hours of raw samples backfilled (the per-pod panels show 6 h; "
                             "a 2-hour block of the gateway's raw samples is 8 GB of OpenMetrics text)")
    parser.add_argument("--history-days", type=float, default=7, help="Prometheus part: days of recorded series backfilled")
    parser.add_argument("--scrape-interval", type=float, default=15,
                        help="Prometheus part: seconds (the chart's 15; the smoke run's shorter)")
    parser.add_argument("--skip-history", action="store_true", help="Prometheus part: the live run only")
    parser.add_argument("--work", default=os.environ.get("SCALE_WORK", "/tmp/pt-scale"))
    args = parser.parse_args()
    args.profiles = [p for p in args.profiles.split(",") if p]
    if args.smoke:
        args.pods, args.rate, args.minutes, args.churn = 300, 200, 0.25, 60
        args.baseline_seconds, args.sample, args.ttl = 5, 3, 120
        args.live_lifetime, args.raw_hours, args.history_days, args.scrape_interval = 12, 2, 0.25, 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    binary = str(Path(args.binary).resolve()) if args.binary else None
    if not binary:
        print("building the meter (release)")
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "proxy-telemetry"], cwd=ROOT, check=True)
        binary = str(ROOT / "target/release/proxy-telemetry")
    out_dir = work if args.smoke else ROOT / "bench/results"
    # A part skipped keeps its last report: each part can be rerun on its own.
    previous = out_dir / "scale.json"
    results = json.loads(previous.read_text()) if previous.exists() and not args.smoke else {}
    results["machine"] = machine()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if not args.skip_meter:
        results["meter"] = meter_part(args, binary, work)
        results["meter"]["when"], results["meter"]["args"] = stamp, meter_args(args)
    if not args.skip_prometheus:
        sys.path.insert(0, str(Path(__file__).parent))
        import scale_prometheus
        results.setdefault("prometheus", {}).update(scale_prometheus.run(args, work))
        for profile in args.profiles:
            results["prometheus"][profile]["when"] = stamp
    for part in results.get("prometheus", {}).values():
        # The live label sets the history was made from: large, and only an input.
        part.get("live", {}).pop("recorded", None)
    (out_dir / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, out_dir / "scale.md", args)
    print(f"wrote {out_dir / 'scale.md'}")


def meter_args(args):
    return f"--pods {args.pods} --rate {args.rate:g} --minutes {args.minutes:g} --churn {args.churn:g}"


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    return f"{os.cpu_count()} cores ({cpu}), {round(os.sysconf('SC_PHYS_PAGES') * PAGE / 2**30)} GiB"


def write_report(results, path, args):
    lines = ["# Scale report", "", f"Measured on {results['machine']} by `bench/scale.sh` (one command: both parts; "
             "`--skip-meter` or `--skip-prometheus` reruns one and keeps the other's last report).", ""]
    if "meter" in results:
        m = results["meter"]
        table, _ = meter_summary(m)
        lines += ["## A shared meter", "", f"Measured {m.get('when', '?')} (`{m.get('args', '')}`).", "",
                  f"One meter (gateway topology, identities by proxy username, three vendors, access log off, "
                  f"default limits) carrying {m['fleet']['pods']} pods at {m['rate']:g} requests/s in total, "
                  f"{m['churn']:g}% of the pods replaced every minute, for {m['minutes']:g} minutes; the same rate "
                  f"from 21 pods first, in the same run.", "", table, "",
                  "Timeline of the fleet run (every sample):", "",
                  "| t (s) | RSS (MiB) | `/metrics` (bytes) | series | pods | served in (ms) |", "|---|---|---|---|---|---|"]
        lines += [f"| {s['t']} | {s['rss_mib']} | {s['metrics_bytes']} | {s['series']} | {s['pods']} | {s['scrape_ms']} |"
                  for s in m["fleet"]["timeline"]]
        lines += ["", "After the load (departed pods' series, `metrics.pod_series_ttl`):", "",
                  "| t (s) after the load | pods exported | series | RSS (MiB) |", "|---|---|---|---|"]
        lines += [f"| {s['t']} | {s['pods']} | {s['series']} | {s['rss_mib']} |" for s in m["released"]]
        lines.append("")
    if "prometheus" in results:
        import scale_prometheus
        lines += scale_prometheus.report(results["prometheus"])
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
