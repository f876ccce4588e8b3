#!/usr/bin/env bash
# The project's tests, one command (README). Installs what they need when it is missing:
# Debian packages (curl, tmux, prometheus/promtool, prometheus-alertmanager, victoria-metrics, kubectl, iproute2, iptables, strace, squid, tinyproxy, microsocks, openssl, nginx, wrk, haproxy, valgrind, podman, buildah) when run as root or with sudo,
# and the Python packages of the deployment tests into target/venv.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v curl >/dev/null || packages+=(curl)
command -v tmux >/dev/null || packages+=(tmux)
command -v promtool >/dev/null || packages+=(prometheus)
command -v prometheus-alertmanager >/dev/null || packages+=(prometheus-alertmanager)
command -v kubectl >/dev/null || packages+=(kubectl)
# The transparent-capture tests build network namespaces and install iptables rules (as root).
command -v ip >/dev/null || packages+=(iproute2)
command -v iptables-restore >/dev/null || packages+=(iptables)
command -v setpriv >/dev/null || packages+=(util-linux)
# Syscall counts of the meter (tests/cli.rs) and bench/syscalls.sh.
command -v strace >/dev/null || packages+=(strace)
# Real vendors for tests/real_vendors.rs and tests/transparent.rs (openssl makes Squid's password file).
command -v tinyproxy >/dev/null || packages+=(tinyproxy)
command -v microsocks >/dev/null || packages+=(microsocks)
command -v squid >/dev/null || packages+=(squid)
command -v openssl >/dev/null || packages+=(openssl)
# The benchmark's smoke test (tests/bench_smoke.rs): its origin, its HTTP load, HAProxy beside the meter, and callgrind.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || packages+=(nginx)
command -v wrk >/dev/null || packages+=(wrk)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || packages+=(haproxy)
command -v valgrind >/dev/null || packages+=(valgrind)
# A remote_write store for deploy/tests/test_remote_write.py.
command -v victoria-metrics >/dev/null || packages+=(victoria-metrics)
# deploy/tests/test_images.py builds the images without a Docker engine (scripts/build-images.sh).
command -v podman >/dev/null || packages+=(podman)
command -v buildah >/dev/null || packages+=(buildah)
# The meter image carries the CA bundle (scripts/build-images.sh).
[ -f /etc/ssl/certs/ca-certificates.crt ] || packages+=(ca-certificates)
if ((${#packages[@]})); then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${packages[*]} (Debian packages)"
  $sudo apt-get update -qq
  # Installed for their binaries: keep their services from starting.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

venv=target/venv
if ! "$venv/bin/python" -c "import pytest, yaml, helm_python, kubernetes_validate, jsonpatch" 2>/dev/null; then
  echo "preparing $venv for the deployment tests"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    pytest pyyaml helm-python-sdk kubernetes-validate check-jsonschema yamllint jsonpatch
fi

# The scale harness' smoke test (tests/scale_smoke.rs) runs pt-bench, which no test builds.
cargo build -p pt-bench --locked
cargo test --workspace --locked
# The deployment tests run the meter binary built above (meter --check-config).
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/pytest" -q deploy/tests
