#!/usr/bin/env bash
# Runs the test suite on the CPU (XLA_FLAGS, unless set: tests/conftest.py's), in .venv, in
# TEST_WORKERS processes (default 2, pytest-xdist; TEST_WORKERS=0 runs in this process). Tests
# are compile-bound and XLA compiles on one thread, so a second worker keeps the second core busy.
# --fast leaves out the tests marked slow (multi-process runs, whole pipelines), which CI runs.
# Other arguments go to pytest: bash launch/test.sh -k bitwise; naming test files or folders runs
# just those (bash launch/test.sh tests/test_records.py), otherwise the whole of tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
# XLA's large per-run buffers on transparent huge pages, as every main runs them
# (binarybert_jax/host_memory.py); glibc reads this only when a process starts.
case ":${GLIBC_TUNABLES:-}:" in
  *:glibc.malloc.hugetlb=*) ;;
  *) export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1" ;;
esac
py=python
[ -x .venv/bin/python ] && py=.venv/bin/python
paths=tests
select=()
args=()
for arg in "$@"; do
  case $arg in
    --fast) select=(-m "not slow"); continue ;;
    tests|tests/*) paths= ;;
  esac
  args+=("$arg")
done
exec "$py" -m pytest $paths -q -p no:cacheprovider --numprocesses="${TEST_WORKERS:-2}" \
  "${select[@]}" "${args[@]}"
