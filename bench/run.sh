#!/usr/bin/env bash
# The proxy benchmark, one command (not a test: figures depend on the machine). See bench/run.py.
set -euo pipefail
exec python3 "$(dirname "$0")/run.py" "$@"
