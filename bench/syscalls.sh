#!/usr/bin/env bash
# Syscalls per request and per tunnel, the meter beside HAProxy (not a test). See bench/syscalls.py.
set -euo pipefail
exec python3 "$(dirname "$0")/syscalls.py" "$@"
