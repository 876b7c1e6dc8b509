#!/usr/bin/env bash
# The SQuAD v1.1 runs of results/squad (dev-split protocol), from the repository root, with the
# official dev-v1.1.json in $SQUAD_DIR. Teacher: 0.3 epoch of the 24 training articles (124 steps of
# 16 windows); pipeline stages: a few steps each (fractions of an epoch below). Evaluation: the first
# 500 questions of the 24 held-out articles. 256-token windows (BERT's recipe: 384) for CPU time.
set -euo pipefail
python -m launch.train --config configs/finetune.py:task=squad1 --workdir runs/squad1_teacher \
  --config.squad.dev_split=0.5 --config.max_seq_length=256 --config.batch_size=16 --config.stage2.epochs=0.3 \
  --config.stage2.learning_rate=1e-4 --config.eval_limit=500 --config.eval_batch_size=32 \
  --config.log_every_steps=5 --config.checkpoint_every_steps=40 --config.progress_bar=False
# Stage-1 and stage-2 loss terms of a fresh TWN W2A8 student against the teacher (loss_scale.json).
PYTHONPATH=. python results/squad/loss_scale.py runs/squad1_teacher/finetune/best > runs/loss_scale.json
python -m launch.pipeline --config configs/pipeline.py:task=squad1,bwn=False,adaptive=False \
  --workdir runs/squad1_pipeline --config.stages.teacher.checkpoint=runs/squad1_teacher/finetune/best \
  --config.squad.dev_split=0.5 --config.max_seq_length=256 --config.eval_limit=500 --config.eval_batch_size=32 \
  --config.stages.half_pruned.batches=2 --config.stages.half_pruned.batch_size=16 \
  --config.stages.half.batch_size=16 --config.stages.half.stage2.epochs=0.04 \
  --config.stages.ternary.batch_size=16 --config.stages.ternary.stage1.epochs=0.02 --config.stages.ternary.stage2.epochs=0.02 \
  --config.stages.tws.batch_size=16 --config.stages.tws.stage1.epochs=0.02 --config.stages.tws.stage2.epochs=0.02 \
  --config.log_every_steps=2 --config.progress_bar=False
cp runs/squad1_pipeline/results.md results/squad/results.md
