#!/usr/bin/env bash
# The seed tables at the released schedule on a borrowed accelerator machine: one
# GPU, no network, a copy of this checkout plus the folders a call carries. A 2-core CPU takes half an
# hour or more a seed (README's MRPC tables at 2 epochs); one GPU should run a setting in minutes.
#
#   bash launch/device.sh pack [GLUE_DIR]   # here: .device/ (about 50 MiB) with what that machine lacks
#   bash launch/device.sh part2 SETTING     # there, in the checkout's root, with .device carried
#   tar xzf FETCHED/part2_SETTING.tgz -C results && .venv/bin/python -m launch.tables   # here again
#
# SETTING, one a call, in the order of the issue's targets (not yet timed on a GPU: a call stopped at
# its 10-minute limit keeps what it finished, and rerunning on the still-warm machine resumes; the
# persistent compilation cache, ~/.cache/binarybert_jax/jax there, spares the second call most compiling):
#   mrpc_a8   MRPC W1A8, the released clip (at 2 epochs a stage clip=none gains nothing: README's
#             clip x epochs table)
#   mrpc_a4   MRPC W1A4 (LSQ activations, which have no clip to choose)
#   stsb_a8   STS-B W1A8, the released clip
#   smoke     the whole path on the embedded SST-2 slice with the tiny pipeline (seconds a stage; what
#             tests and a CPU can check before device time is spent)
# Each runs launch/fidelity.sh with the released schedule (EPOCHS 2 a KD stage, the scripts' learning
# rates), the default bfloat16 products, BWN 1.0x beside BWN 0.5x, seeds 1 2 3, parts seeds, half and
# adaptive; records go to .device/results/<task>_device_e<EPOCHS>_... (their own tables: these runs
# train their own teacher and half-width model) and are tarred into $OUT/part2_SETTING.tgz (the device
# tool brings back at most 8 files), the log beside them. EPOCHS, SEEDS, PARTS, PYTHON (python3) and
# LIMIT (540 seconds, after which the run is stopped resumably) override.
#
# pack: MiniLM's weights as float16 safetensors (the import reads them back as float32, so this
# backbone differs from the float32 one by float16 rounding of its weights only, below 1e-3
# relative), its config and tokenizer; the GLUE tasks above from GLUE_DIR (../shared/data/glue);
# wheels of the two requirements that machine's Python lacks (ml-collections, tensorboardX).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=.device
verb=${1:?usage: bash launch/device.sh pack [GLUE_DIR] | part2 SETTING}

case $verb in
  pack)
    glue=${2:-../shared/data/glue}
    PY=${PYTHON:-.venv/bin/python}
    rm -rf "$DEVICE" && mkdir -p "$DEVICE/minilm" "$DEVICE/glue" "$DEVICE/wheels"
    "$PY" - "$DEVICE/minilm" <<'EOF'
import shutil, sys
import numpy as np
from safetensors.numpy import load_file, save_file
from binarybert_jax import assets
src, dst = assets.minilm_dir(), sys.argv[1]
weights = load_file(str(src / "model.safetensors"))
save_file({k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in weights.items()},
          f"{dst}/model.safetensors")
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    if (src / name).is_file():
        shutil.copy(src / name, dst)
EOF
    for task in MRPC STS-B; do cp -r "$glue/$task" "$DEVICE/glue/"; done
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEVICE/wheels" \
        "ml-collections==$("$PY" -c 'import importlib.metadata as m; print(m.version("ml-collections"))')" \
        "tensorboardX==$("$PY" -c 'import importlib.metadata as m; print(m.version("tensorboardX"))')"
    du -sh "$DEVICE" ;;

  part2)
    setting=${2:?give a SETTING: mrpc_a8, mrpc_a4, stsb_a8 or smoke}
    export PYTHON=${PYTHON:-python3} RESULTS=$DEVICE/results BINARY="bwn bwn_full"
    export EPOCHS=${EPOCHS:-2} SEEDS=${SEEDS:-1 2 3} PARTS=${PARTS:-seeds half adaptive}
    export OVERRIDES="--config.pretrained=$DEVICE/minilm"
    glue=$DEVICE/glue
    case $setting in
      mrpc_a8) export TASK=mrpc ACT_BITS=8 CLIP=released ;;
      mrpc_a4) export TASK=mrpc ACT_BITS=4 CLIP=released ;;
      stsb_a8) export TASK=sts-b ACT_BITS=8 CLIP=released ;;
      smoke) export TASK=sst-2 ACT_BITS=8 CLIP=none TAG=smoke SEEDS=1 EPOCHS=0 \
                    BASE="configs/pipeline.py:task=sst-2,tiny,adaptive=False,clip=none"
             glue=data/glue_slice ;;
      *) echo "unknown SETTING $setting (mrpc_a8, mrpc_a4, stsb_a8, smoke)" >&2; exit 2 ;;
    esac
    export TAG=${TAG:-${TASK}_device_e${EPOCHS}}  # not the CPU tables' folders (another teacher)
    [ -f "$DEVICE/minilm/model.safetensors" ] || { echo "$DEVICE/minilm is missing: run 'bash launch/device.sh pack' here and carry $DEVICE" >&2; exit 2; }
    out=${OUT:?OUT: the folder whose files come back}
    if ! "$PYTHON" -c 'import ml_collections, tensorboardX' 2>/dev/null; then
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
          --target /tmp/site "$DEVICE"/wheels/*.whl
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export ROOT=runs/device_${setting}
    log=$out/part2_$setting.log
    # In its own process group, so that at LIMIT seconds (540: inside the device tool's 600-second
    # command) SIGINT reaches the training process, which saves a checkpoint and stops (resumable),
    # and this script still packs what finished before the tool's limit kills everything.
    set -m
    bash launch/fidelity.sh "$glue" > "$log" 2>&1 &
    job=$!
    set +m
    deadline=$((SECONDS + ${LIMIT:-540}))
    while kill -0 "$job" 2>/dev/null && (( SECONDS < deadline )); do sleep 2; done
    if kill -0 "$job" 2>/dev/null; then
      echo "part2 $setting: stopping at the ${LIMIT:-540}-second limit (rerun to resume)" | tee -a "$log"
      kill -INT -- "-$job"
    fi
    status=0
    wait "$job" || status=$?
    tail -n 40 "$log"
    # The records made so far come back even when a run failed or was stopped.
    if [ -d "$RESULTS" ]; then tar czf "$out/part2_$setting.tgz" -C "$RESULTS" .; fi
    exit "$status" ;;

  *) echo "unknown verb $verb (pack, part2)" >&2; exit 2 ;;
esac
