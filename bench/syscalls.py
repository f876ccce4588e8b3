#!/usr/bin/env python3
"""Syscalls per request and per tunnel: `strace -c -f` of the meter (and of HAProxy) while one
client drives one path. Not a test: the counts depend on timing (a read that finds nothing is a
syscall too), so they are averages over a few seconds.

Paths: keep-alive GET 10 KiB (wrk, 64 connections), a new connection per request (wrk with
`Connection: close`, 8 connections), 1,000 requests/s paced (pt-bench, 64 connections), and a
CONNECT tunnel carrying one small request (pt-bench churn, 8 workers; HAProxy L4 for HAProxy).
Uses bench/run.py's set-up (the same origin, configurations and pinning).

Usage: bench/syscalls.sh [--seconds N] [--proxies meter,haproxy] [--binary B --pt-bench P --work DIR]
(tests/bench_smoke.rs runs it for a second with debug binaries: that it runs.)
"""

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402


def paths(name, bench_binary):
    """(label, client command, how to read the count from its output) for `name`."""
    port = bench.PORTS[name]
    origin = f"127.0.0.1:{bench.HTTP}"
    script = str(bench.WORK / "absolute.lua")
    wrk_count = lambda out: int(re.search(r"(\d+) requests in", out).group(1))
    json_count = lambda key: lambda out: json.loads(out.strip().splitlines()[-1])[key]
    tunnel = (["--l4", f"127.0.0.1:{bench.HAPROXY_L4_HTTP}"] if name == "haproxy"
              else ["--proxy", f"127.0.0.1:{port}"])
    return [
        ("keep-alive GET 10 KiB, per request",
         ["wrk", "-t1", "-c64", "-d{s}s", "-s", script, f"http://127.0.0.1:{port}/"], wrk_count),
        ("new connection per request, per request",
         ["wrk", "-t1", "-c8", "-d{s}s", "-H", "Connection: close", "-s", script, f"http://127.0.0.1:{port}/"],
         wrk_count),
        ("paced 1,000 req/s, per request",
         [str(bench_binary), "paced", "--proxy", f"127.0.0.1:{port}", "--target", origin, "--path", "/10k",
          "--rate", "1000", "--duration", "{s}s"], json_count("requests")),
        ("tunnel with one small request, per tunnel",
         [str(bench_binary), "churn", *tunnel, "--target", origin, "--concurrency", "8", "--duration", "{s}s"],
         json_count("tunnels")),
    ]


def counted(pid, command, count):
    """Runs `command` on the clients' core under `strace -c -f -p pid`; syscalls per unit."""
    report = bench.WORK / "strace.txt"
    strace = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(report)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    out = subprocess.run(["taskset", "-c", bench.CLIENT_CORE] + command, check=True, text=True,
                         capture_output=True).stdout
    strace.send_signal(signal.SIGINT)
    strace.wait(timeout=30)
    units = count(out)
    calls = {}
    for line in report.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return units, {name: n / units for name, n in sorted(calls.items(), key=lambda c: -c[1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--proxies", default="meter,haproxy")
    parser.add_argument("--binary", type=Path, help="the proxy-telemetry binary (default: build release)")
    parser.add_argument("--pt-bench", type=Path, help="the pt-bench binary (default: build release)")
    parser.add_argument("--work", type=Path, help="scratch directory (default: bench/run.py's)")
    args = parser.parse_args()
    bench.WORK = args.work or bench.WORK
    if not shutil.which("strace"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "strace"], check=True)
    bench.ensure_tools(args.proxies.split(","))
    meter_binary, bench_binary = ((args.binary.resolve(), args.pt_bench.resolve()) if args.binary and args.pt_bench
                                  else bench.build())
    bench.prepare()
    nginx = bench.Proc("nginx", ["/usr/sbin/nginx", "-c", str(bench.WORK / "nginx.conf"), "-p", str(bench.WORK)],
                       bench.CLIENT_CORE)
    try:
        bench.wait_port(bench.HTTP)
        for name in args.proxies.split(","):
            proc = bench.start_proxy(name, meter_binary)
            try:
                for label, command, count in paths(name, bench_binary):
                    if name == "haproxy" and "paced" in label:
                        continue  # HAProxy L7 takes origin-form requests only; wrk covers it
                    command = [part.replace("{s}", str(args.seconds)) for part in command]
                    units, per_unit = counted(proc.pid, command, count)
                    top = ", ".join(f"{call} {n:.2f}" for call, n in per_unit.items() if n >= 0.01)
                    print(f"{name:8s} {label}: {sum(per_unit.values()):.2f} over {units} ({top})")
            finally:
                proc.stop()
    finally:
        nginx.stop()


if __name__ == "__main__":
    main()
