#!/usr/bin/env bash
# The 1-1-1 comparison: BiBERT 1-1-1 and BinaryBERT's recipe forced to 1-1-1, one seed each, from
# one full-precision teacher, every run recorded under results/ (launch.record) for README's table
# (launch.tables: results:<...>+bibert_<task>).
#
#   bash launch/bibert_compare.sh GLUE_DIR TEACHER_CHECKPOINT
#   EPOCHS=0.25 bash launch/bibert_compare.sh ../shared/data/glue runs/fidelity_mrpc_a8/base/teacher/finetune/best
#   TASK=sst-2 EPOCHS=0.2 TRAIN="--config.max_seq_length=64 --config.bucket_lengths=(16,32,48,64)" \
#       bash launch/bibert_compare.sh GLUE_DIR TEACHER_CHECKPOINT
#
# Environment: TASK (mrpc), EPOCHS (the fraction of the released epochs, configs/bibert.py; 1),
# SEED (42), ROOT (runs/bibert_<task>), TAG (bibert_<task>: the records go to
# results/TAG/{bibert,binarybert111}/s<seed>), TRAIN (further launch.train overrides, split on
# spaces), PYTHON (.venv/bin/python). The BinaryBERT recipe splits the same epochs over its two
# stages. Rerunning resumes: a finished run is skipped by launch.train, and recorded again.
set -euo pipefail
GLUE_DIR=${1:?usage: bash launch/bibert_compare.sh GLUE_DIR TEACHER_CHECKPOINT}
TEACHER=${2:?usage: bash launch/bibert_compare.sh GLUE_DIR TEACHER_CHECKPOINT}
TASK=${TASK:-mrpc}
EPOCHS=${EPOCHS:-1}
SEED=${SEED:-42}
ROOT=${ROOT:-runs/bibert_${TASK}}
TAG=${TAG:-bibert_${TASK}}
TRAIN=${TRAIN:-"--config.bucket_lengths=(32,64,96,128)"}
PY=${PYTHON:-.venv/bin/python}

# "5 epochs (0.25 of the released 20)": the rows' settings, from the released schedule.
read -r released fraction total half < <("$PY" -c 'import sys; from configs import bibert
e, f = bibert.RELEASED[sys.argv[1]][0], float(sys.argv[2])
print(e, f"{f:g}", f"{e * f:g}", f"{e * f / 2:g}")' "$TASK" "$EPOCHS")
of="($fraction of the released $released)"

for recipe in bibert binarybert; do
  # shellcheck disable=SC2086  # TRAIN holds separate overrides
  "$PY" -m launch.train --config "configs/bibert.py:task=$TASK,recipe=$recipe,epochs=$EPOCHS" \
      --workdir "$ROOT/$recipe" --config.teacher="$TEACHER" --config.data_dir="$GLUE_DIR" \
      --config.seed="$SEED" --config.progress_bar=False $TRAIN
done
"$PY" -m launch.record "$ROOT/bibert" --name "$TAG/bibert/s$SEED" \
    --setting "BiBERT 1-1-1 (Bi-Attention, DMD), $total epochs $of"
"$PY" -m launch.record "$ROOT/binarybert" --name "$TAG/binarybert111/s$SEED" \
    --setting "BinaryBERT's recipe forced to 1-1-1 (BWN, sign activations, two-stage KD), $half + $half epochs $of"
