"""Speed of the distillation train step (``train.make_train_step``, the real one) and of one
stage-1 KD epoch over MRPC.

    PYTHONPATH=. python -m benchmarks.train_step --out BENCHMARKS.md

A full run (seven step cases, the matmul probe and the MRPC epoch) takes about 12-15 minutes on the
2 shared cores of the development machine; ``--cases w2a8 --no-epoch`` about 2.

Models: MiniLM dimensions by default (vocab 30522, hidden 384, 6 layers, 12 heads of 32, FFN 1536)
at half width (6 heads, FFN 768), teacher and student both half width, as BinaryBERT's released
scripts (the teacher is the half-width full-precision model); ``--bert-base`` gives hidden 768,
12 layers, 12 heads of 64, FFN 3072, halved likewise. Parameters are random (speed does not
depend on their values); the batch holds random token ids, every token real (no padding).

Cases (``--cases``), each the jitted ``train.make_train_step`` on a one-device ``data`` mesh:

* ``fp``: full-precision fine-tuning of the student, supervised objective (no teacher).
* ``w2a8``: ternary TWN weights and word embedding, 8-bit uniform activations (learnable clips),
  stage-1 KD (hidden-state + attention-score MSE) from a float32 teacher, in the program both
  stages run (it also computes stage 2's prediction loss, at weight 0); ranges over the whole
  tensor, as the released code.
* ``w2a8-masked``: ``w2a8`` with padding-independent ranges and losses (per-example ranges with
  padding masked out, ``kd.ignore_padding``): the configuration the MRPC epoch uses.
* ``w2a4``: ternary weights, 4-bit LSQ activations, student FFN in ReLU (released 4-bit scripts).
* ``w1a8`` / ``w1a4``: the split binary student after TWS (two BWN halves per matrix and word
  embedding), with 8-bit uniform / 4-bit LSQ activations; its integer-domain forward multiplies
  each half's codes (``split_forward='exact'``, twice the ternary step's forward FLOPs there).
* ``w1a8-summed``: ``w1a8`` with ``split_forward='summed'``: one product of the summed halves per
  matrix, as the released code runs (the gradients are the same).

For each case, in a fresh subprocess (so that the peak resident memory, ``ru_maxrss``, is the
case's own): the step is lowered and compiled ahead of time (*compile s*: ``lower`` + ``compile``),
run twice to warm up, then ``--steps`` times, each blocked on (``block_until_ready``) and timed.
*ex/s* is the batch over the median step time (the best step in brackets: on a shared machine the
best is the steadier figure).

With ``--interleave ROUNDS`` the run measures the cases (default products) in one subprocess
instead, their steps alternated: each round one step of every case in turn, after two warm-up
rounds. Each case's ratio to the first case's step is taken within its round, so both steps of a
ratio ran under the same load; its section's split targets read the ratio of the cases' best
steps (list ``w2a8`` first), load only ever adding time: on a machine whose other tenants come
and go, two medians taken minutes apart in different processes can differ by tens of percent, and
single steps within minutes by up to twice. It writes a section of its own.

FLOPs ("model GFLOP/s") are counted from the shapes by ``binarybert_jax.flops``: matrix products
only, 2·m·n·k each (Q, K, V, attention output, FFN in and out, QKᵀ, probabilities·V, pooler,
classifier); per example, one teacher forward plus one student forward and backward, the backward
counted as twice the forward (one product for the input gradient, one for the weight gradient):
``kd_step_flops = teacher_fwd + 3·student_fwd``, for ``fp`` ``3·student_fwd``. Embedding gathers,
softmax, LayerNorm, quantizers and the optimizer are work the count leaves out. The split binary
model is counted as the ternary model (both halves share the quantized input: x·Ŵ1 + x·Ŵ2 =
x·(Ŵ1 + Ŵ2), one product per matrix), which is what ``w1a8-summed`` runs; ``w1a8``'s exact
integer-domain forward multiplies each half's codes, twice the student's dense forward products. At MiniLM half width and sequence 128 this is
5.74 GFLOP per KD example.

The machine's matmul rate is measured in the same run, in its own subprocess: a jitted float32
2048×2048 by 2048×2048 product (17.2 GFLOP), best of 10 after warm-up. *of matmul* is the model
GFLOP/s over that rate.

The epoch: MRPC's 3,667 training pairs (``$GLUE_DIR`` or ``shared/data/glue`` beside the
checkout), tokenized with MiniLM's tokenizer to at most 128 tokens, batched 32 with length
bucketing (``--buckets``: each batch is cut to the smallest bucket holding its longest example;
similar lengths are grouped as ``train`` does), 114 steps (the remainder dropped, as training
does), stage-1 KD of the ``w2a8-masked`` student (products: ``--epoch-variant``); every bucket's
step is compiled before the clock starts (compile time reported apart) and the epoch is timed from the
first step to the last result, the batches built, placed and fed as ``train.train_phase`` does.
The reference (the authors' PyTorch code) is not run here (no torch in this project): the only
figures quoted are those measured side by side with this benchmark, in the same hour, by the author
of the speed targets (torch 2.14, 2 threads), per dimension set and machine kind (``REFERENCES``):
at MiniLM dimensions on an Intel Xeon with AVX-512 BF16/VNNI (2 cores) ternary W2A8 12.9 and 14.4
ex/s, split binary W1A8 8.8 and 8.4; at MiniLM dimensions on an AMD EPYC (2 cores) 11.8-11.9 and
8.1-8.2; at BERT-base dimensions on the AMD EPYC 2.16 and 1.33. Ratios are never taken across
machine kinds or dimensions: a run on another kind, or at dimensions not measured on its kind,
states that and takes none.

The measuring children run with transparent huge pages for XLA's buffers, as the mains do
(``binarybert_jax/host_memory.py``); the section names the glibc tunables they had.

The compiled step is also checked for host synchronisation: no infeed/outfeed/send/recv and no
host-callback custom calls in its optimized HLO (*host ops*, should be 0).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import resource
import shlex
import statistics
import sys
import time
from typing import NamedTuple, Optional, Sequence

from benchmarks import child, markdown

SECTION = "## Training step"  # at MiniLM dimensions; at BERT-base dimensions a section of its own


def section_heading(bert_base: bool, interleaved: bool = False) -> str:
    """The BENCHMARKS.md section a run writes: one per dimension set, so that a ``--bert-base``
    run never replaces the MiniLM figures, and an ``--interleave`` run's apart from the others."""
    return (SECTION + (", BERT-base dimensions" if bert_base else "")
            + (": cases interleaved in one process" if interleaved else ""))
CASES = ("fp", "w2a8", "w2a8-masked", "w2a4", "w1a8", "w1a8-summed", "w1a4")
# How the quantized products are computed: (integer-domain forward, backward dtype, teacher dtype).
VARIANTS = {"integer": (True, "float32", "float32"),          # backward and teacher in float32
            "float": (False, "float32", "float32"),           # float32 products of the values
            "integer+bf16-grad": (True, "bfloat16", "float32"),
            "integer+bf16-grad+bf16-teacher": (True, "bfloat16", "bfloat16")}
# configs/common.py's defaults (integer_products, matmul_precision, teacher_dtype); a test keeps
# the two in step.
DEFAULT_VARIANT = "integer+bf16-grad+bf16-teacher"
DEFAULT_BUCKETS = (48, 64, 80, 112)
MIB = 2 ** 20


class Reference(NamedTuple):
    """The authors' PyTorch code measured side by side with this benchmark (ex/s; half width,
    batch 32 × 128, stage-1 KD, 8-bit activations, 2 threads), one figure per round: the speed
    targets are set against it."""

    w2a8: tuple[float, ...]
    w1a8: tuple[float, ...]
    date: str  # the figures came without a date: the latest day they can be from


# Per dimension set (``--bert-base`` or not) and machine kind (``machine_kind``): a ratio is only
# ever taken against the figures of this run's dimensions on this run's machine kind. Intel's
# predate the first commit that benchmarks against them (3833cdf, 2026-11-29 13:34 UTC); AMD's came
# with the speed targets of 2026-12-07.
REFERENCES = {
    ("MiniLM", "Intel Xeon"): Reference((12.9, 14.4), (8.8, 8.4), "on or before 2026-11-29"),
    ("MiniLM", "AMD EPYC"): Reference((11.8, 11.9), (8.1, 8.2), "on or before 2026-12-07"),
    ("BERT-base", "AMD EPYC"): Reference((2.16,), (1.33,), "on or before 2026-12-07"),
}
MACHINE_KINDS = {"AMD EPYC": "AMD EPYC", "Xeon": "Intel Xeon"}  # a substring of the CPU's name
EPOCH_TARGET_S = 60.0


def dimensions(bert_base: bool) -> str:
    return "BERT-base" if bert_base else "MiniLM"


def machine_kind(cpu: str) -> Optional[str]:
    """The machine kind a CPU model name belongs to (``MACHINE_KINDS``), None for another."""
    return next((kind for key, kind in MACHINE_KINDS.items() if key in cpu), None)


def reference_for(bert_base: bool, cpu: str) -> Optional[Reference]:
    """The authors' code's figures at these dimensions on this machine kind, None where it was
    not measured so."""
    return REFERENCES.get((dimensions(bert_base), machine_kind(cpu)))


# --------------------------------------------------------------------------------------------
# Models and cases (child processes only: these import JAX).
# --------------------------------------------------------------------------------------------
def architecture(bert_base: bool):
    from binarybert_jax.model import BertConfig

    if bert_base:
        full = BertConfig(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, head_dim=64,
                          intermediate_size=3072)
    else:
        full = BertConfig(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, head_dim=32,
                          intermediate_size=1536)
    return full.with_width(0.5)


def case_setup(case: str, bert_base: bool):
    """(student spec, teacher spec or None, objective, kd ignore_padding) of a case."""
    import dataclasses
    from binarybert_jax.model import ModelSpec, QuantConfig

    arch = architecture(bert_base)
    teacher = ModelSpec(arch)
    if case == "fp":
        return ModelSpec(arch), None, "supervised", False
    bits = {"w2a8": (2, 8), "w2a8-masked": (2, 8), "w2a4": (2, 4), "w1a8": (1, 8), "w1a8-summed": (1, 8),
            "w1a4": (1, 4)}
    if case not in bits:
        raise ValueError(f"unknown case {case!r}; allowed: {CASES}")
    wbits, abits = bits[case]
    method = "twn" if wbits == 2 else "bwn"
    masked = case == "w2a8-masked"
    q = QuantConfig(wbits, wbits, abits, method, method, "lsq" if abits == 4 else "uniform",
                    split=wbits == 1, act_scope="example" if masked else "tensor",
                    act_ignore_padding=masked,
                    split_forward="summed" if case == "w1a8-summed" else "exact")
    student = arch if abits == 8 else dataclasses.replace(arch, hidden_act="relu")
    return ModelSpec(student, q), teacher, "intermediate", masked


def build_step(student_spec, teacher_spec, objective: str, ignore_padding: bool, mesh,
               variant: str = DEFAULT_VARIANT):
    from binarybert_jax import kd, optim, resolve, train

    integer, grad, teacher_dtype = VARIANTS[variant]
    student = student_spec.build(integer_products=integer, grad_dtype=resolve.DTYPES[grad])
    teacher = teacher_spec.build(resolve.DTYPES[teacher_dtype]) if teacher_spec else None
    schedule = optim.Schedule.warmup_linear(2e-5, 1e-4, 1000)
    objectives = kd.step_objectives(objective)  # the program training runs
    step = train.make_train_step(student, teacher, mesh, objectives=objectives, is_regression=False,
                                 ignore_padding=ignore_padding)
    return step, optim.scheduled_bert_adam(schedule), train.phase_inputs(schedule, objective, objectives)


def init_state(student_spec, teacher_spec, tx, mesh, seq: int):
    import jax
    import jax.numpy as jnp
    from binarybert_jax import sharding, train

    ids = jnp.ones((1, seq), jnp.int32)
    params = jax.jit(student_spec.without_axis().build().init)(jax.random.key(0), ids)["params"]
    state = train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    state = sharding.replicate(state, mesh)
    teacher_variables = None  # what the train step's teacher.apply takes
    if teacher_spec is not None:
        teacher_variables = sharding.replicate(
            {"params": jax.jit(teacher_spec.build().init)(jax.random.key(1), ids)["params"]}, mesh)
    return state, teacher_variables


def time_steps(compiled, state, teacher_variables, data, rng, inputs, steps: int):
    """Runs ``steps`` compiled KD steps, each timed to its result; returns ``(seconds, state)``."""
    import jax

    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, measured = compiled(state, teacher_variables, data, rng, inputs)
        jax.block_until_ready((state, measured))
        times.append(time.perf_counter() - start)
    return times, state


def synthetic_batch(batch: int, seq: int, vocab: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, vocab, (batch, seq)).astype(np.int32)
    types = np.zeros_like(ids)
    types[:, seq // 2:] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": np.ones_like(ids),
            "labels": rng.integers(0, 2, batch).astype(np.int32),
            "example_mask": np.ones(batch, np.float32)}


HOST_OPS = re.compile(r"\b(infeed|outfeed|send|recv|send-done|recv-done)\(|custom_call_target=\"[^\"]*"
                      r"(callback|host)[^\"]*\"", re.I)


def hlo_summary(compiled) -> dict:
    """Host-synchronising ops and the top-level op mix of the optimized HLO."""
    text = compiled.as_text()
    entry = text[text.find("ENTRY"):]
    entry = entry[:entry.find("\n}\n")]
    lines = [l for l in entry.splitlines()[1:] if "=" in l]
    ops = [re.search(r"=\s*\S+\s+([\w-]+)\(", l) for l in lines]
    kinds = [m.group(1) for m in ops if m]
    return {"host_ops": len(HOST_OPS.findall(text)),
            "entry_ops": len(kinds),
            "entry_fusions": sum(k == "fusion" for k in kinds),
            "entry_dots": sum(k in ("dot", "convolution") for k in kinds),
            "entry_unfused_elementwise": sum(k not in ("fusion", "dot", "convolution", "parameter",
                                                      "tuple", "get-tuple-element", "constant",
                                                      "bitcast", "copy", "call", "custom-call",
                                                      "while", "conditional")
                                             for k in kinds)}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Program(NamedTuple):
    """A case's compiled KD step with its arguments: ``compiled(*args)`` runs one step and
    returns ``(state, metrics)``; ``args`` with the state replaced runs the next."""
    compiled: object
    args: tuple
    student_spec: object
    teacher_spec: object
    objective: str
    compile_s: float

    def run(self, state):
        """One step from ``state``, waited for; returns ``(seconds, state, metrics)``."""
        import jax
        start = time.perf_counter()
        state, measured = self.compiled(state, *self.args[1:])
        jax.block_until_ready((state, measured))
        return time.perf_counter() - start, state, measured


def prepare_case(case: str, bert_base: bool, batch: int, seq: int, variant: str = DEFAULT_VARIANT,
                 shrink: Optional[dict] = None, before_compile=None) -> Program:
    """A case's step, compiled ahead of time (*compile s*: ``lower`` + ``compile``) for a batch of
    random token ids; ``shrink``: BertConfig fields to override in both models (tests);
    ``before_compile()`` runs once everything else is in place."""
    import dataclasses
    import jax
    from binarybert_jax import sharding
    from binarybert_jax.model import ModelSpec

    student_spec, teacher_spec, objective, ignore_padding = case_setup(case, bert_base)
    if shrink:
        student_spec = ModelSpec(dataclasses.replace(student_spec.config, **shrink), student_spec.quant)
        teacher_spec = teacher_spec and ModelSpec(dataclasses.replace(teacher_spec.config, **shrink))
    mesh = sharding.make_mesh(1)
    step, tx, inputs = build_step(student_spec, teacher_spec, objective, ignore_padding, mesh, variant)
    state, teacher_variables = init_state(student_spec, teacher_spec, tx, mesh, seq)
    data = sharding.shard_batch(synthetic_batch(batch, seq, student_spec.config.vocab_size), mesh)
    rng = jax.random.key(0)
    jax.block_until_ready((state, teacher_variables, data))
    if before_compile:
        before_compile()
    start = time.perf_counter()
    compiled = step.lower(state, teacher_variables, data, rng, inputs).compile()
    return Program(compiled, (state, teacher_variables, data, rng, inputs), student_spec, teacher_spec,
                   objective, time.perf_counter() - start)


def measure_interleaved(cases: Sequence[str], bert_base: bool, batch: int, seq: int, rounds: int,
                        shrink: Optional[dict] = None) -> dict:
    """The cases' steps in one process, alternated: each round runs one step of every case in
    turn, so that each case's time and its ratio to the first case's are taken under the same
    load, round by round (a shared machine's other tenants come and go between rounds, not
    within one). Two warm-up rounds first."""
    programs = {case: prepare_case(case, bert_base, batch, seq, shrink=shrink) for case in cases}
    states = {case: p.args[0] for case, p in programs.items()}
    times = {case: [] for case in cases}
    for round_ in range(rounds + 2):
        for case, program in programs.items():
            seconds, states[case], _ = program.run(states[case])
            if round_ >= 2:
                times[case].append(seconds)
    first = cases[0]
    ratios = {case: [t / b for t, b in zip(times[case], times[first])] for case in cases[1:]}
    costs = {}
    for case, program in programs.items():
        cost = program.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        costs[case] = {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0))}
    return {"cases": list(cases), "rounds": rounds, "batch": batch, "step_s_all": times, "xla_cost": costs,
            "step_s_median": {c: statistics.median(t) for c, t in times.items()},
            "step_s_min": {c: min(t) for c, t in times.items()},
            "ratio_of_best_to_first": {c: min(times[c]) / min(times[first]) for c in cases[1:]},
            "ratio_to_first_all": ratios,
            "ratio_to_first_median": {c: statistics.median(r) for c, r in ratios.items()},
            "loadavg": os.getloadavg()}


def measure_case(case: str, bert_base: bool, batch: int, seq: int, steps: int,
                 hlo_dir: Optional[str], variant: str = DEFAULT_VARIANT) -> dict:
    import jax
    from binarybert_jax import flops

    rss_before = []  # the resident memory before compiling: what the compiler adds shows apart
    program = prepare_case(case, bert_base, batch, seq, variant,
                           before_compile=lambda: rss_before.append(_rss_mib()))
    compiled, (state, teacher_variables, data, rng, inputs) = program.compiled, program.args
    student_spec, teacher_spec, objective = program.student_spec, program.teacher_spec, program.objective
    rss_before, compile_s = rss_before[0], program.compile_s
    summary = hlo_summary(compiled)
    if hlo_dir:
        pathlib.Path(hlo_dir).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(hlo_dir) / f"{case}.{variant}.hlo.txt").write_text(compiled.as_text())

    for _ in range(2):
        state, measured = compiled(state, teacher_variables, data, rng, inputs)
    jax.block_until_ready((state, measured))
    probe = MatmulProbe()
    times, cpu_times, probe_rates = [], [], []
    for _ in range(steps):
        probe_rates.append(probe.rate())  # the machine's matmul rate right now (shared machine)
        start, cpu_start = time.perf_counter(), time.process_time()
        state, measured = compiled(state, teacher_variables, data, rng, inputs)
        jax.block_until_ready((state, measured))
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    per_example = flops.kd_step_flops(student_spec.config, teacher_spec.config if teacher_spec else None,
                                      seq)
    median = statistics.median(times)
    loss = float(measured["total"])
    # Each step's model FLOP rate over the matmul rate measured just before it: steadier than
    # either alone while other jobs come and go.
    fractions = [per_example * batch / t / 1e9 / r for t, r in zip(times, probe_rates)]
    return {"case": case, "variant": variant, "objective": objective, "compile_s": compile_s,
            "step_s_median": median, "step_s_min": min(times), "step_s_all": times,
            "cpu_s_median": statistics.median(cpu_times), "probe_gflops": probe_rates,
            "fraction_of_probe_median": statistics.median(fractions),
            "fraction_of_probe_best": max(fractions),
            "examples_per_s": batch / median, "examples_per_s_best": batch / min(times),
            "gflop_per_example": per_example / 1e9,
            "model_gflops": per_example * batch / median / 1e9,
            "model_gflops_best": per_example * batch / min(times) / 1e9,
            "rss_before_compile_mib": rss_before, "rss_peak_mib": _rss_mib(),
            "loss": loss, "loadavg": os.getloadavg(), **summary}


class MatmulProbe:
    """The machine's matmul rate through XLA: one jitted n×n by n×n product, float32 or bfloat16
    operands with float32 accumulation and result."""

    def __init__(self, n: int = 2048, dtype: str = "float32"):
        import jax
        import jax.numpy as jnp

        self.n = n
        self._a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
        self._b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
        self._f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
        jax.block_until_ready(self._f(self._a, self._b))

    def rate(self) -> float:
        """GFLOP/s of one product, now."""
        import jax

        start = time.perf_counter()
        jax.block_until_ready(self._f(self._a, self._b))
        return 2 * self.n ** 3 / (time.perf_counter() - start) / 1e9


def measure_matmul(repeats: int = 10) -> dict:
    """Best and median GFLOP/s of the float32 and the bfloat16 probe, alternating."""
    probes = {"": MatmulProbe(), "bf16_": MatmulProbe(dtype="bfloat16")}
    rates = {k: [] for k in probes}
    for _ in range(repeats):
        for k, probe in probes.items():
            rates[k].append(probe.rate())
    out = {"n": probes[""].n, "loadavg": os.getloadavg()}
    for k, r in rates.items():
        out[f"{k}gflops_best"], out[f"{k}gflops_median"] = max(r), statistics.median(r)
    return out


def glue_root() -> pathlib.Path:
    env = os.environ.get("GLUE_DIR")
    return pathlib.Path(env) if env else pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def measure_epoch(bert_base: bool, batch: int, buckets: Sequence[int],
                  variant: str = DEFAULT_VARIANT) -> dict:
    import jax
    import numpy as np
    from binarybert_jax import assets, flops, sharding
    from binarybert_jax.data import batching, encode, tasks
    from binarybert_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(assets.minilm_dir())
    arrays = encode.load_encoded_split(tokenizer, tasks.get_task("mrpc"), "train", data_dir=glue_root(), max_length=128,
                                       cache_dir=assets.cache_dir() / "tokenized")
    student_spec, teacher_spec, objective, ignore_padding = case_setup("w2a8-masked", bert_base)
    mesh = sharding.make_mesh(1)
    step, tx, inputs = build_step(student_spec, teacher_spec, objective, ignore_padding, mesh, variant)
    state, teacher_variables = init_state(student_spec, teacher_spec, tx, mesh, 128)
    rng = jax.random.key(0)

    def batches():
        for b in batching.iterate_batches(arrays, batch, shuffle=True, seed=42, epoch=0,
                                          bucket_lengths=tuple(buckets), group_by_length=True):
            yield {k: b[k] for k in sharding.MODEL_INPUTS + ("labels", "example_mask")}

    lengths = [b["input_ids"].shape[1] for b in batches()]
    compiled, compile_s = {}, {}
    for length in sorted(set(lengths)):
        example = sharding.shard_batch(next(b for b in batches() if b["input_ids"].shape[1] == length), mesh)
        start = time.perf_counter()
        compiled[length] = step.lower(state, teacher_variables, example, rng, inputs).compile()
        compile_s[length] = time.perf_counter() - start
    # One warm-up step per shape (first-run allocations), on a copy so the timed epoch starts fresh.
    for length, fn in compiled.items():
        example = sharding.shard_batch(next(b for b in batches() if b["input_ids"].shape[1] == length), mesh)
        warm = jax.tree_util.tree_map(lambda x: x.copy(), state)
        jax.block_until_ready(fn(warm, teacher_variables, example, rng, inputs))
    load_start = os.getloadavg()
    start = time.perf_counter()
    pending = []
    for b in batches():
        state, measured = compiled[b["input_ids"].shape[1]](state, teacher_variables,
                                                            sharding.shard_batch(b, mesh), rng, inputs)
        pending.append(measured["total"])
    jax.block_until_ready((state, pending))
    epoch_s = time.perf_counter() - start
    work = sum(flops.kd_step_flops(student_spec.config, teacher_spec.config, L) * batch for L in lengths)
    losses = np.asarray(jax.device_get(pending))
    return {"variant": variant, "steps": len(lengths), "examples": len(lengths) * batch, "epoch_s": epoch_s,
            "examples_per_s": len(lengths) * batch / epoch_s, "buckets": list(buckets),
            "bucket_counts": {int(L): lengths.count(L) for L in sorted(set(lengths))},
            "mean_padded_length": float(np.mean(lengths)),
            "mean_real_length": float(np.mean(arrays["lengths"])),
            "compile_s": {int(k): v for k, v in compile_s.items()}, "compile_s_total": sum(compile_s.values()),
            "model_gflops": work / epoch_s / 1e9, "loss_first": float(losses[0]),
            "loss_last": float(losses[-1]), "all_finite": bool(np.isfinite(losses).all()),
            "rss_peak_mib": _rss_mib(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()}


# --------------------------------------------------------------------------------------------
# Parent: subprocesses and the report (no JAX imported here, see ``_subprocess``).
# --------------------------------------------------------------------------------------------
def _subprocess(args: list[str]) -> dict:
    """This module's measuring part in a fresh interpreter (``child.run_module``)."""
    return child.run_module("benchmarks.train_step", args)


def machine() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", pathlib.Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    from importlib import metadata
    from binarybert_jax import host_memory
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "jax": metadata.version("jax"),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "loadavg": os.getloadavg(),
            # what the measuring children run with (``child.run_module``)
            "glibc_tunables": host_memory.environment().get(host_memory.ENV, ""),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def row_name(key: str) -> str:
    case, _, variant = key.partition("/")
    name = CASE_NAMES.get(case, case)
    return f"{name}, {variant}" if variant else name


CASE_NAMES = {"fp": "full precision, supervised", "w2a8": "ternary W2A8 (TWN, uniform 8-bit)",
              "w2a8-masked": "ternary W2A8, per-example masked ranges",
              "w2a4": "ternary W2A4 (TWN, LSQ 4-bit)", "w1a8": "split binary W1A8 (TWS, BWN)",
              "w1a8-summed": "split binary W1A8, one product of the summed halves",
              "w1a4": "split binary W1A4 (TWS, BWN, LSQ)"}


def table(rows: dict, matmul: dict, batch: int) -> str:
    lines = ["| case, products | ex/s median (best) | step s median (best) | CPU s per step | model GFLOP/s median "
             "(best) | of f32 probe: best / step by step | of bf16 probe (best) | compile s | peak RSS MiB | "
             "host ops | load avg |", "|" + "---|" * 11]
    rate = matmul["gflops_best"]
    bf16 = matmul.get("bf16_gflops_best")
    for name, r in rows.items():
        lines.append(
            f"| {row_name(name)} | {r['examples_per_s']:.1f} ({r['examples_per_s_best']:.1f}) | "
            f"{r['step_s_median']:.2f} ({r['step_s_min']:.2f}) | {r['cpu_s_median']:.2f} | "
            f"{r['model_gflops']:.0f} ({r['model_gflops_best']:.0f}) | "
            f"{r['model_gflops_best'] / rate:.0%} / {r['fraction_of_probe_median']:.0%} | "
            f"{'' if not bf16 else format(r['model_gflops_best'] / bf16, '.0%')} | "
            f"{r['compile_s']:.1f} | {r['rss_peak_mib']:.0f} | {r['host_ops']} | "
            f"{r['loadavg'][0]:.1f} |")
    return "\n".join(lines)


def epoch_text(e: dict) -> str:
    counts = ", ".join(f"{L}: {n}" for L, n in e["bucket_counts"].items())
    return (f"MRPC stage-1 KD epoch (ternary W2A8, per-example masked ranges, `kd.ignore_padding`, "
            f"products *{e.get('variant', 'integer')}*): "
            f"**{e['epoch_s']:.1f} s** for {e['steps']} steps of {e['examples'] // e['steps']} "
            f"({e['examples_per_s']:.1f} ex/s, {e['model_gflops']:.0f} model GFLOP/s on the padded "
            f"shapes; target ≤ {EPOCH_TARGET_S:.0f} s). "
            f"Buckets {tuple(e['buckets'])}; batches per length: {counts}; mean padded length "
            f"{e['mean_padded_length']:.1f} (real tokens {e['mean_real_length']:.1f}). Compiling the "
            f"{len(e['compile_s'])} shapes beforehand: {e['compile_s_total']:.0f} s in all. Load average "
            f"{e['loadavg_start'][0]:.1f} at the start, {e['loadavg_end'][0]:.1f} at the end; stage-1 loss "
            f"{e['loss_first']:.2f} → {e['loss_last']:.2f}, finite throughout: {e['all_finite']}.")


def _row(rows: dict, case: str, variant: str = DEFAULT_VARIANT) -> Optional[dict]:
    return rows.get(f"{case}/{variant}") or (rows.get(case) if variant == DEFAULT_VARIANT else None)


def _span(lo: float, hi: float, digits: int) -> str:
    return f"{lo:.{digits}f}" if round(lo, digits) == round(hi, digits) else f"{lo:.{digits}f}–{hi:.{digits}f}"


def _split_ratio(rows: dict, interleaved: Optional[dict], case: str) -> Optional[tuple[float, str]]:
    """``case``'s step over the ternary W2A8 step, and how it was taken: round by round when the
    interleaved run measured both (the first case there being ``w2a8``), else the two medians."""
    if interleaved and interleaved["cases"][0] == "w2a8" and case in interleaved["ratio_to_first_median"]:
        all_ = interleaved["ratio_to_first_all"][case]
        return (interleaved["ratio_of_best_to_first"][case],
                f"best steps of {len(all_)} interleaved rounds; round by round "
                f"{interleaved['ratio_to_first_median'][case]:.2f}× median, {min(all_):.2f}–{max(all_):.2f}")
    w2a8, row = _row(rows, "w2a8"), _row(rows, case)
    if not (w2a8 and row):
        return None
    return (row["step_s_median"] / w2a8["step_s_median"],
            f"{row['step_s_median']:.2f} s vs {w2a8['step_s_median']:.2f} s median")


def targets_table(rows: dict, matmul: dict, epoch: Optional[dict],
                  reference: Optional[Reference] = None, interleaved: Optional[dict] = None) -> str:
    """The speed targets against this run's figures (only those this run measured); the targets
    against the authors' code only where ``reference`` holds its figures for this run's
    dimensions and machine kind; the split step's ratios to the ternary step from the
    ``interleaved`` run where it measured them."""
    lines = []
    w2a8 = _row(rows, "w2a8")
    if w2a8 and reference:
        lo, hi = min(reference.w2a8), max(reference.w2a8)
        rate = w2a8["examples_per_s"]
        lines.append(f"| ternary W2A8 step ≥ 2.5× the authors' code ({_span(2.5 * lo, 2.5 * hi, 1)} ex/s) | "
                     f"{rate:.1f} ex/s, {_span(rate / hi, rate / lo, 2)}× | "
                     f"{'yes' if rate >= 2.5 * hi else 'no'} |")
    if w2a8:
        if matmul.get("bf16_gflops_best"):
            mfu = w2a8["model_gflops_best"] / matmul["bf16_gflops_best"]
            lines.append(f"| ≥ 50% of the bf16 probe in model FLOP/s (stretch) | {mfu:.0%} | "
                         f"{'yes' if mfu >= 0.5 else 'no'} |")
    for case, target in (("w1a8", "split W1A8 step ≤ 1.0× the ternary step"),
                         ("w1a8-summed", "split W1A8 step, summed halves (`split_forward=summed`), "
                                         "≤ 1.0× the ternary step")):
        found = _split_ratio(rows, interleaved, case)
        if found:
            ratio, how = found
            lines.append(f"| {target} | {ratio:.2f}× ({how}) | {'yes' if ratio <= 1.0 else 'no'} |")
    if epoch:
        lines.append(f"| MRPC stage-1 KD epoch ≤ {EPOCH_TARGET_S:.0f} s | {epoch['epoch_s']:.1f} s "
                     f"(products *{epoch.get('variant', 'integer')}*) | "
                     f"{'yes' if epoch['epoch_s'] <= EPOCH_TARGET_S else 'no'} |")
    if not lines:
        return ""
    return "\n".join(["The speed targets, from this run (default products unless said):", "",
                      "| target | measured | met |", "|---|---|---|"] + lines)


def reference_ratios(rows: dict, bert_base: bool, cpu: str) -> str:
    """This run's default-product steps over the authors' code's figures at this run's dimensions
    on this machine kind (or a line saying there are none)."""
    reference = reference_for(bert_base, cpu)
    if reference is None:
        measured = "; ".join(f"{dims} on {kind}" for dims, kind in REFERENCES)
        return (f"No figures of the authors' code at {dimensions(bert_base)} dimensions on this machine "
                f"kind ({cpu}): no ratio to it is taken (they were measured at {measured}).")
    parts = []
    for case in ("w2a8", "w1a8"):
        row, figures = _row(rows, case), getattr(reference, case)
        if row:
            lo, hi = min(figures), max(figures)
            parts.append(f"{CASE_NAMES[case]} {row['examples_per_s']:.1f} ex/s median: "
                         f"{_span(row['examples_per_s'] / hi, row['examples_per_s'] / lo, 2)}× the "
                         f"reference's {_span(lo, hi, 2 if lo < 10 else 1)}")
    if not parts:
        return ""
    return (f"Against the authors' code at {dimensions(bert_base)} dimensions as measured side by side on "
            f"this machine kind ({machine_kind(cpu)}), {reference.date} (not rerun here): "
            + "; ".join(parts) + ".")


def interleaved_text(il: dict) -> str:
    """The interleaved run: each case's median step and its ratios to the first case's."""
    first = il["cases"][0]
    lines = [f"The same cases in one process, their steps alternated: {il['rounds']} rounds of one step "
             f"of each, after two of warm-up (load average at the end {il['loadavg'][0]:.1f}). Each "
             f"case's best step over the {CASE_NAMES.get(first, first)} one's best: load from other "
             "tenants only adds time, so the best steps are the steadier ratio (the targets read it); "
             "beside it the median and range of the ratios taken round by round:", "",
             "| case | step s median (best) | ex/s median | over the first case's step: best / round by "
             "round, median (range) | XLA's cost analysis: GFLOP, GB accessed a step |",
             "|---|---|---|---|---|"]
    for case in il["cases"]:
        median = il["step_s_median"][case]
        ratio = ("1 (the reference)" if case == first else
                 f"{il['ratio_of_best_to_first'][case]:.2f}× / {il['ratio_to_first_median'][case]:.2f}× "
                 f"({min(il['ratio_to_first_all'][case]):.2f}–{max(il['ratio_to_first_all'][case]):.2f})")
        cost = il["xla_cost"][case]
        lines.append(f"| {CASE_NAMES.get(case, case)} | {median:.2f} ({il['step_s_min'][case]:.2f}) | "
                     f"{il['batch'] / median:.1f} | {ratio} | {cost['flops'] / 1e9:.1f}, "
                     f"{cost['bytes'] / 1e9:.1f} |")
    return "\n".join(lines)


def section(rows: dict, matmul: dict, epoch: Optional[dict], info: dict, command: str, args) -> str:
    dims = dimensions(args.bert_base)
    load = ", ".join(f"{x:.2f}" for x in info["loadavg"])
    parts = [
        section_heading(args.bert_base), "",
        f"The jitted KD train step (`train.make_train_step`), {dims} dimensions at half width (teacher "
        f"and student), batch {args.batch}, sequence {args.seq}, one CPU device; how each number is "
        "taken and how FLOPs are counted: the docstring of `benchmarks/train_step.py`.", "",
        "```", command, "```", "",
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores visible), jax {info['jax']}"
        + (f", XLA_FLAGS `{info['xla_flags']}`" if info["xla_flags"] else "")
        + (f", GLIBC_TUNABLES `{info['glibc_tunables']}`" if info.get("glibc_tunables") else "")
        + f"; load average at the start {load} (where other jobs share the machine, times vary by "
        "tens of percent between runs; the load average column is each case's at its end). "
        f"Matmul probe ({matmul['n']}², XLA): float32 {matmul['gflops_best']:.0f} GFLOP/s best, "
        f"{matmul['gflops_median']:.0f} median"
        + (f"; bfloat16 with float32 accumulation {matmul['bf16_gflops_best']:.0f} best, "
           f"{matmul['bf16_gflops_median']:.0f} median" if "bf16_gflops_best" in matmul else "")
        + f". Median (best) of {args.steps} timed steps. Products (`benchmarks/train_step.py` "
        "VARIANTS): *integer* the forward on integer codes (exact, bfloat16 or float32 sums), its "
        "backward and the teacher in float32; *float* the float32 products of the quantized values; "
        "*bf16-grad* the backward in bfloat16 with float32 accumulation (`--config.matmul_precision`), "
        "*bf16-teacher* the teacher in bfloat16 (`--config.teacher_dtype`). The configs' default, "
        f"and the row named without products: *{DEFAULT_VARIANT}*.", "",
        table(rows, matmul, args.batch), ""]
    ratios = reference_ratios(rows, args.bert_base, info["cpu"]) if rows else ""
    if ratios:
        parts += [ratios, ""]
    if epoch:
        parts += [epoch_text(epoch), ""]
    targets = targets_table(rows, matmul, epoch, reference_for(args.bert_base, info["cpu"]))
    if targets:
        parts += [targets, ""]
    return "\n".join(parts)


def interleaved_section(interleaved: dict, info: dict, command: str, args) -> str:
    """The section of an ``--interleave`` run."""
    load = ", ".join(f"{x:.2f}" for x in info["loadavg"])
    return "\n".join([
        section_heading(args.bert_base, interleaved=True), "",
        f"The KD train steps of the training-step section's cases (`train.make_train_step`, default products), "
        f"{dimensions(args.bert_base)} dimensions at half width, batch {args.batch}, sequence {args.seq}, "
        "compiled in one process and timed alternately (`benchmarks/train_step.py`'s docstring, "
        "`--interleave`).", "",
        "```", command, "```", "",
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores visible), jax {info['jax']}"
        + (f", XLA_FLAGS `{info['xla_flags']}`" if info["xla_flags"] else "")
        + (f", GLIBC_TUNABLES `{info['glibc_tunables']}`" if info.get("glibc_tunables") else "")
        + f"; load average at the start {load}.", "",
        interleaved_text(interleaved), "",
        targets_table({}, {}, None, None, interleaved), ""])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step",
                                     description="Speed of the KD train step and of an MRPC epoch.")
    parser.add_argument("--bert-base", action="store_true", help="BERT-base dimensions (half width)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=[DEFAULT_VARIANT],
                        help="how the quantized products are computed; each case runs with each")
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="instead, run the --cases (default products) in one process, their steps "
                             "alternated for ROUNDS rounds: each case's ratio to the first one's under "
                             "the same load (list w2a8 first); writes a section of its own")
    parser.add_argument("--no-epoch", action="store_true", help="skip the MRPC epoch")
    parser.add_argument("--epoch-variant", choices=tuple(VARIANTS), default=DEFAULT_VARIANT,
                        help="how the MRPC epoch's products are computed")
    parser.add_argument("--epoch-only", action="store_true", help="only the MRPC epoch")
    parser.add_argument("--buckets", type=int, nargs="+", default=list(DEFAULT_BUCKETS),
                        help="bucket lengths for the MRPC epoch")
    parser.add_argument("--out", default=None, help="Markdown file to write the section into")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="measure nothing: rewrite the --out section from a --json file of an "
                             "earlier run (e.g. after a change to how the section is written)")
    parser.add_argument("--hlo-dir", default=None, help="write each case's optimized HLO here")
    # Internal: the subprocesses' entry points.
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def _without_json(argv: list[str]) -> list[str]:
    """The command line less ``--json PATH`` (where the raw results went is no part of the method)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--json":
            skip = True
        elif not a.startswith("--json="):
            out.append(a)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child == "matmul":
        print(json.dumps(measure_matmul()))
        return 0
    if args.child == "interleaved":
        print(json.dumps(measure_interleaved(args.cases, args.bert_base, args.batch, args.seq, args.interleave)))
        return 0
    if args.child == "epoch":
        print(json.dumps(measure_epoch(args.bert_base, args.batch, args.buckets, args.epoch_variant)))
        return 0
    if args.child:
        print(json.dumps(measure_case(args.child, args.bert_base, args.batch, args.seq, args.steps,
                                      args.hlo_dir, args.variants[0])))
        return 0
    if args.render:
        saved = json.loads(pathlib.Path(args.render).read_text())
        run_args = argparse.Namespace(**saved["args"])
        if saved.get("interleaved"):
            text = interleaved_section(saved["interleaved"], saved["info"], saved["command"], run_args)
        else:
            text = section(saved["rows"], saved["matmul"], saved["epoch"], saved["info"], saved["command"],
                           run_args)
        if args.out:
            markdown.write_section(pathlib.Path(args.out),
                                   section_heading(run_args.bert_base, bool(saved.get("interleaved"))), text)
        print(text)
        return 0
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "PYTHONPATH=. python -m benchmarks.train_step " + " ".join(map(shlex.quote, _without_json(argv)))
    info = machine()
    common = ["--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
    if args.bert_base:
        common.append("--bert-base")
    if args.interleave:
        return _main_interleaved(args, info, command, common)
    matmul = _subprocess(["--child", "matmul"])
    print(f"matmul: {json.dumps(matmul)}", file=sys.stderr)
    rows = {}
    if not args.epoch_only:
        for case in args.cases:
            for variant in args.variants:
                if case == "fp" and variant != args.variants[0]:
                    continue  # nothing quantized: the variants differ in nothing
                extra = ["--hlo-dir", args.hlo_dir] if args.hlo_dir else []
                # Rows are named by case alone for the default products (and the full-precision case)
                key = case if variant == DEFAULT_VARIANT or case == "fp" else f"{case}/{variant}"
                rows[key] = _subprocess(["--child", case, "--variants", variant] + common + extra)
                print(f"{key}: {json.dumps(rows[key])}", file=sys.stderr)
    epoch = None
    if not args.no_epoch:
        epoch = _subprocess(["--child", "epoch", "--batch", str(args.batch), "--epoch-variant",
                             args.epoch_variant, "--buckets", *map(str, args.buckets)]
                            + (["--bert-base"] if args.bert_base else []))
        print(f"epoch: {json.dumps(epoch)}", file=sys.stderr)
    if rows:
        print(table(rows, matmul, args.batch))
        print(reference_ratios(rows, args.bert_base, info["cpu"]))
    if epoch:
        print(epoch_text(epoch))
    print(targets_table(rows, matmul, epoch, reference_for(args.bert_base, info["cpu"])))
    if args.json:
        run_args = {k: getattr(args, k) for k in ("bert_base", "batch", "seq", "steps")}
        pathlib.Path(args.json).write_text(json.dumps({"command": command, "args": run_args,
                                                       "info": info, "matmul": matmul, "rows": rows,
                                                       "epoch": epoch}, indent=2))
    if args.out:
        markdown.write_section(pathlib.Path(args.out), section_heading(args.bert_base),
                               section(rows, matmul, epoch, info, command, args))
    return 0


def _main_interleaved(args, info: dict, command: str, common: list[str]) -> int:
    """An ``--interleave`` run: the cases in one subprocess, their steps alternated."""
    interleaved = _subprocess(["--child", "interleaved", "--cases", *args.cases,
                               "--interleave", str(args.interleave)] + common)
    text = interleaved_section(interleaved, info, command, args)
    print(text)
    if args.json:
        run_args = {k: getattr(args, k) for k in ("bert_base", "batch", "seq", "steps")}
        pathlib.Path(args.json).write_text(json.dumps({"command": command, "args": run_args, "info": info,
                                                       "interleaved": interleaved}, indent=2))
    if args.out:
        markdown.write_section(pathlib.Path(args.out), section_heading(args.bert_base, interleaved=True), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
