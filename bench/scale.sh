#!/usr/bin/env bash
# The scale harness, one command (not a test: figures depend on the machine). See bench/scale.py.
# Runs in the deployment tests' virtual environment (helm-python-sdk renders the chart), made here
# when missing; Prometheus and promtool come from Debian's `prometheus` package (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
if ! "$venv/bin/python" -c "import yaml, helm_python" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check pyyaml helm-python-sdk
fi
# 5,000 pods keep about 10,000 connections open through the meter, plus the vendors' side.
ulimit -n "$(ulimit -Hn)"
exec "$venv/bin/python" bench/scale.py "$@"
