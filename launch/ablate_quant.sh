#!/usr/bin/env bash
# Issue 11, part 1, its smallest useful ablation: where TWN 0.5x W2A8 loses its points. Three
# settings of the pipeline's ternary stage, one thing varied at a time, from ONE teacher and ONE
# half-width model, several seeds; every finished run recorded under results/ (launch.record):
#
#   both          W2A8, the pipeline's ternary stage as it is
#   weights_only  W2A32: ternary weights, full-precision activations
#   acts_only     W32A8: full-precision weights, 8-bit activations
#
#   bash launch/ablate_quant.sh GLUE_DIR                       # MRPC, 1 epoch a KD stage, seeds 1 2 3
#   SEEDS="1 2 3 4 5" EPOCHS=2 bash launch/ablate_quant.sh GLUE_DIR
#   TASK=sst-2 BASE="configs/pipeline.py:task=sst-2,tiny" SEEDS=1 NAME=smoke \
#       bash launch/ablate_quant.sh data/glue_slice            # a minutes-long smoke run
#
# Environment: TASK (mrpc), EPOCHS (1, per KD stage), SEEDS ("1 2 3"), ROOT (runs/ablate_<task>),
# NAME (the records' table: results/<NAME>/, default <task>_quant_ablation; README renders it with
# <!-- results:<NAME> per_seed -->), RESULTS (results, the records' root), PYTHON (.venv/bin/python), BASE (the pipeline config and arg;
# default the released scripts' hyperparameters on the full task). Rerunning resumes: finished
# stages are skipped, finished runs recorded again (the records are rewritten the same).
set -euo pipefail
GLUE_DIR=${1:?usage: bash launch/ablate_quant.sh GLUE_DIR}
TASK=${TASK:-mrpc}
EPOCHS=${EPOCHS:-1}
SEEDS=${SEEDS:-1 2 3}
ROOT=${ROOT:-runs/ablate_${TASK}}
NAME=${NAME:-${TASK}_quant_ablation}
RESULTS=${RESULTS:-results}
PY=${PYTHON:-.venv/bin/python}
BASE=${BASE:-configs/pipeline.py:task=${TASK},full,epochs=${EPOCHS},bwn=False,adaptive=False}

# The teacher and the half-width model, once (the pipeline's first three stages).
"$PY" -m launch.pipeline --config "$BASE" --config.data_dir="$GLUE_DIR" --workdir "$ROOT/base" \
    '--config.pipeline.stages=("teacher","half_pruned","half")'
teacher=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["best_checkpoint"])' "$ROOT/base/teacher/results.json")
half=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["best_checkpoint"])' "$ROOT/base/half/results.json")

declare -A SETTINGS=(
  [both]="W2A8 (weights and activations)|"
  [weights_only]="W2A32 (weights only)|--config.stages.ternary.student.quant.act_bits=32"
  [acts_only]="W32A8 (activations only)|--config.stages.ternary.student.quant.weight_bits=32 --config.stages.ternary.student.quant.embed_bits=32"
)
for seed in $SEEDS; do
  for key in both weights_only acts_only; do
    label=${SETTINGS[$key]%%|*}
    overrides=${SETTINGS[$key]#*|}
    run="$ROOT/${key}_s${seed}"
    # shellcheck disable=SC2086  # the overrides are separate words
    "$PY" -m launch.pipeline --config "$BASE" --config.data_dir="$GLUE_DIR" --workdir "$run" \
        '--config.pipeline.stages=("teacher","half","ternary")' \
        --config.stages.teacher.checkpoint="$ROOT/base/teacher/$teacher" \
        --config.stages.half.checkpoint="$ROOT/base/half/$half" --config.stages.half.init= \
        --config.seed="$seed" $overrides
    "$PY" -m launch.record "$run/ternary" --name "$NAME/$key/s$seed" --setting "TWN 0.5× $label" \
        --results-dir "$RESULTS"
  done
done
if [ "$RESULTS" = results ]; then
  "$PY" -m launch.tables   # README's sections, <!-- results:$NAME per_seed --> among them
else
  echo "records in $RESULTS/$NAME; README's tables read results/ (python -m launch.tables)"
fi
