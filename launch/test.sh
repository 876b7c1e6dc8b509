#!/usr/bin/env bash
# Runs the test suite on the CPU (two virtual devices for the sharded-step tests), in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=2}"
py=python
[ -x .venv/bin/python ] && py=.venv/bin/python
exec "$py" -m pytest tests -q -p no:cacheprovider "$@"
