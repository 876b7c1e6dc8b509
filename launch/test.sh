#!/usr/bin/env bash
# Runs the test suite on the CPU (two virtual devices for the sharded-step tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=2}"
exec python -m pytest tests -q "$@"
