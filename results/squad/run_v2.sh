#!/usr/bin/env bash
# The SQuAD v2.0 runs of results/squad (dev-split protocol), from the repository root, with the
# official dev-v2.0.json in $SQUAD_DIR: the first 17 articles train (5,448 questions, 6,547 windows),
# the first 500 questions of the other 18 evaluate (268 answerable, 232 unanswerable; 574 windows).
# 256-token windows (BERT's recipe: 384) for CPU time. Teacher: 0.5 epoch (205 steps of 16
# windows, lr 1e-4); pipeline stages: fractions of an epoch (half width 0.2; TWN 0.5x and TWS 1x
# 0.1 per KD stage). About an hour on 2 shared CPU cores; every command under nice.
set -euo pipefail
nice -n 19 python -m launch.train --config configs/finetune.py:task=squad2 --workdir runs/squad2_teacher \
  --config.squad.dev_split=0.5 --config.max_seq_length=256 --config.batch_size=16 --config.stage2.epochs=0.5 \
  --config.stage2.learning_rate=1e-4 --config.eval_limit=500 --config.eval_batch_size=32 \
  --config.log_every_steps=5 --config.checkpoint_every_steps=80 --config.progress_bar=False
nice -n 19 python -m launch.pipeline --config configs/pipeline.py:task=squad2,bwn=False,adaptive=False \
  --workdir runs/squad2_pipeline --config.stages.teacher.checkpoint=runs/squad2_teacher/finetune/best \
  --config.squad.dev_split=0.5 --config.max_seq_length=256 --config.eval_limit=500 --config.eval_batch_size=32 \
  --config.stages.half_pruned.batches=2 --config.stages.half_pruned.batch_size=16 \
  --config.stages.half.batch_size=16 --config.stages.half.stage2.epochs=0.2 \
  --config.stages.ternary.batch_size=16 --config.stages.ternary.stage1.epochs=0.1 --config.stages.ternary.stage2.epochs=0.1 \
  --config.stages.tws.batch_size=16 --config.stages.tws.stage1.epochs=0.1 --config.stages.tws.stage2.epochs=0.1 \
  --config.log_every_steps=5 --config.progress_bar=False
cp runs/squad2_pipeline/results.md results/squad/results_v2.md
# Records (results/squad/v2/) and README's tables from them.
python -m launch.record runs/squad2_teacher --name squad/v2/teacher --setting "full precision (teacher)"
python -m launch.record runs/squad2_pipeline --name squad/v2/pipeline
python -m launch.tables
# The same questions with the null threshold tuned on them, and the answerable ones always answered.
PYTHONPATH=. nice -n 19 python results/squad/v2_null_threshold.py results/squad/v2 \
  "full precision (teacher)=runs/squad2_teacher/finetune/best" \
  "full precision 0.5×=runs/squad2_pipeline/half/joint/best" \
  "TWN 0.5×=runs/squad2_pipeline/ternary/stage2/best" \
  "TWS 1× (split from TWN 0.5×)=runs/squad2_pipeline/tws/stage2/best"
