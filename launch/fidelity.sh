#!/usr/bin/env bash
# The seed tables (part 2) and the quantization ablation (part 1), from ONE teacher and ONE
# half-width model, every finished run recorded under results/ (launch.record) so that README's tables
# (launch.tables) are rebuilt from them. Parts, in the order they run (PARTS picks and orders them):
#
#   seeds     the pipeline's ternary and binary rows per seed: TWN 0.5x, split, TWS 1x, and the
#             binary baselines BINARY names: BWN 0.5x (bwn) and/or BWN 1.0x (bwn_full), binarized
#             from the full-width teacher (the papers' pairing with TWS 1x)
#             (-> results/<task>_w1a<bits>_seeds/{ternary,tws,bwn,bwn_full}/s<seed>)
#   ablation  TWN 0.5x with one thing varied (-> results/<task>_quant_ablation/<setting>/s<seed>):
#               both          W2A8, the pipeline's ternary stage as it is (the seeds part's run)
#               no_clip       W2A8 without the released code's ±2.5 activation clip: clip_init 1e4,
#                             which no activation reaches (max |x| < 30 on MiniLM), so the ranges
#                             are min-max (TernaryBERT's choice)
#               per_token     W2A8 with min-max ranges per token instead of per example (no clip)
#               percentile    W2A8 with each clip started at the 99.9th percentile of its input
#                             on the first training batch (clip_percentile), then learned
#               acts_only     W32A8: full-precision weights, quantized activations
#               weights_only  W2A32: ternary weights, full-precision activations
#               hidden_only   stage 1 distils hidden states only (no attention scores)
#               full_teacher  the full-width teacher instead of the half-width model (hidden
#                             states only: attention scores cannot pair 12 heads with 6)
#               joint         one joint KD stage (hidden states, attention, logits) for the two
#                             stages' epochs together, at stage 1's learning rate
#               epochs2       twice the epochs in each KD stage
#               lat           LAT (loss-aware) ternary weights instead of TWN
#               bf16          the quantized products' backward and the teacher's forward in
#                             bfloat16 (matmul_precision, teacher_dtype; the speed options of BENCHMARKS.md)
#             (ABLATIONS picks and orders the settings other than both; default
#             "no_clip percentile acts_only weights_only", what README's table ran)
#   half      the full-precision 0.5x row over seeds: the half-width model's KD from the teacher
#             (-> results/<task>_w1a<bits>_seeds/half/s<seed>)
#   adaptive  the adaptive split at the first seed (-> results/<task>_w1a<bits>_seeds/adaptive/s<seed>)
#
#   bash launch/fidelity.sh GLUE_DIR                  # MRPC W1A8, 1 epoch a KD stage, seeds 1 2 3
#   ACT_BITS=4 EPOCHS=0.5 bash launch/fidelity.sh GLUE_DIR
#   PARTS=ablation SEEDS="4 5" bash launch/fidelity.sh GLUE_DIR
#   TASK=sst-2 BASE="configs/pipeline.py:task=sst-2,tiny" SEEDS=1 TAG=smoke \
#       bash launch/fidelity.sh data/glue_slice       # a minutes-long smoke run
#
# Environment: TASK (mrpc), ACT_BITS (8), EPOCHS (1, per KD stage; the released scripts use 2),
# SEEDS ("1 2 3"), PARTS ("seeds ablation half adaptive"), ROOT (runs/fidelity_<task>_a<bits>),
# TAG (the records' prefix, default <task>), RESULTS (results), PYTHON (.venv/bin/python), BASE (the
# pipeline config and arg; default the released scripts' hyperparameters on the whole task),
# OVERRIDES (config overrides for every run, the base included: e.g. the float32 products that
# README's MRPC W1A8 tables trained with, "--config.matmul_precision=float32 --config.teacher_dtype="),
# BINARY ("bwn"; the seeds part's binary baselines, words among bwn and bwn_full; empty: none, TWN
# and TWS only), BASE_DIR (the finished teacher and half-width model to start from, default
# ROOT/base, trained here when missing; another root's base is only read, e.g. a float32 base under
# bfloat16 runs: the full-precision stages' products do not use matmul_precision), CLIP (the
# pipeline's activation-clip preset for every quantized stage: released (default), none or
# percentile; any other than released suffixes the run folders and the seed and ablation tables
# with _clip_<CLIP>, e.g. results/mrpc_w1a8_clip_none_seeds, and names the preset in the ablation
# rows' settings, which a table can then set beside the released clip's; the half part records to the
# unsuffixed seed table whatever CLIP is, as the full-precision half-width model has no clip).
# launch/device.sh runs this script on a GPU machine at the released schedule.
# Rerunning resumes: finished stages are skipped, finished runs recorded again (the same records).
set -euo pipefail
GLUE_DIR=${1:?usage: bash launch/fidelity.sh GLUE_DIR}
TASK=${TASK:-mrpc}
ACT_BITS=${ACT_BITS:-8}
EPOCHS=${EPOCHS:-1}
SEEDS=${SEEDS:-1 2 3}
PARTS=${PARTS:-seeds ablation half adaptive}
ABLATIONS=${ABLATIONS:-no_clip percentile acts_only weights_only}
ROOT=${ROOT:-runs/fidelity_${TASK}_a${ACT_BITS}}
TAG=${TAG:-${TASK}}
RESULTS=${RESULTS:-results}
PY=${PYTHON:-.venv/bin/python}
OVERRIDES=${OVERRIDES:-}
CLIP=${CLIP:-released}
BINARY=${BINARY-bwn}  # set but empty: no binary baseline
binary_stages=""  # BINARY as the pipeline's tuple items: "bwn","bwn_full"
for stage in $BINARY; do
  case $stage in
    bwn|bwn_full) binary_stages="$binary_stages,\"$stage\"" ;;
    *) echo "unknown BINARY stage $stage (bwn, bwn_full)" >&2; exit 2 ;;
  esac
done
# The seeds part's stages, as the pipeline's tuple items (the adaptive part runs them before its own)
seed_stages="\"teacher\",\"half\",\"ternary\",\"tws_init\",\"tws\"$binary_stages"
BASE_DIR=${BASE_DIR:-$ROOT/base}
BASE=${BASE:-configs/pipeline.py:task=${TASK},full,act_bits=${ACT_BITS},epochs=${EPOCHS},bwn=False,adaptive=False,clip=${CLIP}}
case $CLIP in
  released) SUFFIX= CLIP_LABEL= ;;
  none|percentile) SUFFIX=_clip_$CLIP CLIP_LABEL=", on the clip=$CLIP preset" ;;
  *) echo "unknown CLIP $CLIP (released, none, percentile)" >&2; exit 2 ;;
esac
HALF_TABLE="${TAG}_w1a${ACT_BITS}_seeds"
SEED_TABLE="${TAG}_w1a${ACT_BITS}${SUFFIX}_seeds"
ABLATION_TABLE="${TAG}${SUFFIX}_quant_ablation"

pipeline() {  # pipeline WORKDIR STAGES [OVERRIDES...]: the base config from the shared teacher/half
  local workdir=$1 stages=$2
  shift 2
  "$PY" -m launch.pipeline --config "$BASE" --config.data_dir="$GLUE_DIR" $OVERRIDES --workdir "$workdir" \
      "--config.pipeline.stages=$stages" \
      --config.stages.teacher.checkpoint="$BASE_DIR/teacher/$teacher" \
      --config.stages.half.checkpoint="$BASE_DIR/half/$half" --config.stages.half.init= "$@"
}
record() {  # record STAGE_DIR NAME [SETTING]
  if [ $# -gt 2 ]; then
    "$PY" -m launch.record "$1" --name "$2" --setting "$3" --results_dir "$RESULTS"
  else
    "$PY" -m launch.record "$1" --name "$2" --results_dir "$RESULTS"
  fi
}
ternary() {  # ternary RUN EXPR: EXPR of RUN's ternary stage (e1, e2 epochs; lr1, lr2): RUN is the
  # "both" run, i.e. this script's BASE and OVERRIDES (not BASE_DIR's config, maybe another root's)
  "$PY" -c 'import json, sys; t = json.load(open(sys.argv[1]))["stages"]["ternary"]
print(eval(sys.argv[2], {"e1": t["stage1"]["epochs"], "e2": t["stage2"]["epochs"],
                         "lr1": t["stage1"]["learning_rate"], "lr2": t["stage2"]["learning_rate"]}))' \
      "$1/pipeline_config.json" "$2"
}
best() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["best_checkpoint"])' "$1/results.json"; }

# The teacher and the half-width model, once (the pipeline's first three stages, its own seed).
if [ "$BASE_DIR" = "$ROOT/base" ]; then
  "$PY" -m launch.pipeline --config "$BASE" --config.data_dir="$GLUE_DIR" $OVERRIDES --workdir "$BASE_DIR" \
      '--config.pipeline.stages=("teacher","half_pruned","half")'
elif [ ! -f "$BASE_DIR/half/results.json" ]; then
  echo "BASE_DIR $BASE_DIR holds no finished half-width model (half/results.json); train it with" \
       "the ROOT it belongs to, or leave BASE_DIR unset" >&2
  exit 2
fi
teacher=$(best "$BASE_DIR/teacher")
half=$(best "$BASE_DIR/half")
first_seed=${SEEDS%% *}

for part in $PARTS; do
  for seed in $SEEDS; do
    case $part in
      seeds)
        run="$ROOT/w1a${ACT_BITS}${SUFFIX}_s$seed"
        pipeline "$run" "($seed_stages)" --config.seed="$seed"
        for stage in ternary tws $BINARY; do record "$run/$stage" "$SEED_TABLE/$stage/s$seed"; done ;;
      ablation)
        both="$ROOT/w1a${ACT_BITS}${SUFFIX}_s$seed"  # "both" is the seeds part's ternary stage
        # (run alone only when that part has not: a pipeline rewrites its report for the stages named)
        [ -f "$both/ternary/results.json" ] || pipeline "$both" '("teacher","half","ternary")' --config.seed="$seed"
        record "$both/ternary" "$ABLATION_TABLE/both/s$seed" "TWN 0.5× W2A${ACT_BITS} (weights and activations)$CLIP_LABEL"
        t=--config.stages.ternary
        q=$t.student.quant
        for key in $ABLATIONS; do
          case $key in
            no_clip) label="TWN 0.5× W2A${ACT_BITS}, no activation clip (min-max)"; overrides="$q.clip_init=1e4" ;;
            per_token) label="TWN 0.5× W2A${ACT_BITS}, per-token min-max ranges (no clip)"
                       overrides="$q.clip_init=1e4 $q.act_scope=token" ;;
            percentile) label="TWN 0.5× W2A${ACT_BITS}, clips from the data (99.9th percentile)"
                        overrides="$q.clip_percentile=99.9" ;;
            acts_only) label="W32A${ACT_BITS} (activations only)"; overrides="$q.weight_bits=32 $q.embed_bits=32" ;;
            weights_only) label="TWN 0.5× W2A32 (weights only)"; overrides="$q.act_bits=32" ;;
            hidden_only) label="TWN 0.5× W2A${ACT_BITS}, stage 1 on hidden states only"
                         overrides="$t.kd.attention=False" ;;
            full_teacher) label="TWN 0.5× W2A${ACT_BITS}, full-width teacher (hidden states only)"
                          overrides="$t.teacher=teacher $t.kd.attention=False" ;;
            joint) label="TWN 0.5× W2A${ACT_BITS}, one joint KD stage"
                   overrides="$t.kd.mode=joint $t.stage2.epochs=$(ternary "$both" 'e1 + e2') $t.stage2.learning_rate=$(ternary "$both" lr1)" ;;
            epochs2) label="TWN 0.5× W2A${ACT_BITS}, twice the epochs a KD stage"
                     overrides="$t.stage1.epochs=$(ternary "$both" '2 * e1') $t.stage2.epochs=$(ternary "$both" '2 * e2')" ;;
            lat) label="LAT 0.5× W2A${ACT_BITS} (loss-aware ternary weights)"; overrides="$q.weight_method=lat" ;;
            bf16) label="TWN 0.5× W2A${ACT_BITS}, bfloat16 backward products and teacher"
                  overrides="--config.matmul_precision=bfloat16 --config.teacher_dtype=bfloat16" ;;
            *) echo "unknown ablation $key (no_clip, per_token, percentile, acts_only, weights_only," \
                    "hidden_only, full_teacher, joint, epochs2, lat, bf16)" >&2; exit 2 ;;
          esac
          run="$ROOT/${key}${SUFFIX}_s$seed"
          # shellcheck disable=SC2086  # the overrides are separate words
          pipeline "$run" '("teacher","half","ternary")' --config.seed="$seed" $overrides
          record "$run/ternary" "$ABLATION_TABLE/$key/s$seed" "$label$CLIP_LABEL"
        done ;;
      half)
        run="$ROOT/half_s$seed"  # the half-width stage itself at this seed, from the same teacher
        "$PY" -m launch.pipeline --config "$BASE" --config.data_dir="$GLUE_DIR" $OVERRIDES --workdir "$run" \
            '--config.pipeline.stages=("teacher","half_pruned","half")' \
            --config.stages.teacher.checkpoint="$BASE_DIR/teacher/$teacher" --config.seed="$seed"
        record "$run/half" "$HALF_TABLE/half/s$seed" ;;
      adaptive)
        [ "$seed" = "$first_seed" ] || continue
        run="$ROOT/w1a${ACT_BITS}${SUFFIX}_s$seed"
        # the seeds part's stages (finished there, so skipped), then the adaptive split
        pipeline "$run" "(${seed_stages},\"adaptive_init\",\"adaptive\")" --config.seed="$seed"
        record "$run/adaptive" "$SEED_TABLE/adaptive/s$seed" ;;
      *) echo "unknown part $part (seeds, ablation, half, adaptive)" >&2; exit 2 ;;
    esac
  done
done
if [ "$RESULTS" = results ]; then
  "$PY" -m launch.tables   # README's sections, <!-- results:$SEED_TABLE per_seed --> among them
else
  echo "records in $RESULTS/$SEED_TABLE and $RESULTS/$ABLATION_TABLE; README's tables read results/"
fi
