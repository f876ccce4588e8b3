#!/usr/bin/env bash
# The scale harness, one command (not a test: figures depend on the machine). See bench/scale.py.
set -euo pipefail
exec python3 "$(dirname "$0")/scale.py" "$@"
