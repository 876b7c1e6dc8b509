#!/usr/bin/env bash
# Runs the test suite on the CPU (XLA_FLAGS, unless set: tests/conftest.py's), in .venv, in
# TEST_WORKERS processes (default 2, pytest-xdist; TEST_WORKERS=0 runs in this process). Tests
# are compile-bound and XLA compiles on one thread, so a second worker keeps the second core busy.
# Extra arguments go to pytest: bash launch/test.sh -k bitwise
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
py=python
[ -x .venv/bin/python ] && py=.venv/bin/python
exec "$py" -m pytest tests -q -p no:cacheprovider --numprocesses="${TEST_WORKERS:-2}" "$@"
