"""Where the time of the KD train step goes: a per-op profile and ablations.

    PYTHONPATH=. python -m benchmarks.step_profile --out BENCHMARKS.md

About 6 minutes on 2 idle CPU cores. The step is the one ``benchmarks/train_step.py`` times (MiniLM
dimensions at half width, batch 32, sequence 128, stage-1 KD, ``--case`` default ``w2a8``).

*Profile.* The compiled step runs ``--steps`` times under ``jax.profiler.trace``; every trace
event named after an instruction of the compiled module is one executed op (a fusion, a library
matmul, a copy). Each op is put in a category from the ``op_name`` metadata XLA keeps for it:
the quantizers run under ``jax.named_scope("act_quant" / "weight_quant")``, the softmax under
``softmax``, Flax modules under their names (``Dropout_0``, ``LayerNorm``); a matmul op is one
whose event name is a library fusion or dot (on XLA:CPU these carry the producers and epilogues
fused into them, e.g. bias, residual and LayerNorm). The phase comes from the name stack:
``transpose(jvp(...))`` is the student's backward, ``jvp(...)`` its forward, the rest of the
model the teacher's forward, and what is outside the model (losses, optimizer) "outside".
Figures are op time per step summed over the executor's threads (*thread ms*), so with two
cores they add up to more than the step; *alone* is the part of the step during which exactly
one op was running, which shows how much of the step ran without the two cores both busy.

*Ablations.* The same step with one ingredient removed at a time (activation quantization,
weight quantization, both, dropout, the teacher), each timed over ``--ablation-steps`` steps:
what each ingredient costs, and the floor of this model on this machine.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from typing import Optional, Sequence

from benchmarks import child, markdown, train_step

SECTION = "## Training step: where the time goes"
CATEGORIES = ("dense matmuls (+ fused epilogues)", "attention matmuls", "activation quantizers",
              "weight quantizers", "dropout", "LayerNorm", "softmax and mask", "GELU",
              "other model ops (reshapes, transposes, residuals)", "losses, optimizer, rest")
PHASES = ("teacher forward", "student forward", "student backward", "outside the model")
ABLATIONS = {
    "as is": {},
    "no activation quantization": {"act_bits": 32},
    "no weight quantization": {"weight_bits": 32, "embed_bits": 32},
    "full-precision student": {"act_bits": 32, "weight_bits": 32, "embed_bits": 32},
    "no dropout": {"dropout": 0.0},
    "no teacher (supervised)": {"teacher": None},
    "full-precision student, no dropout": {"act_bits": 32, "weight_bits": 32, "embed_bits": 32,
                                           "dropout": 0.0},
}


def _is_matmul(event_name: str) -> bool:
    return event_name.startswith(("ynn_fusion", "xnn_fusion", "dot", "onednn"))


def categorize(event_name: str, op_name: str) -> tuple[str, str]:
    """(category, phase) of one executed op from its event name and ``op_name`` metadata."""
    if "transpose(jvp(" in op_name:
        phase = "student backward"
    elif "jvp(" in op_name:
        phase = "student forward"
    elif "BertModel" in op_name:
        phase = "teacher forward"
    else:
        phase = "outside the model"
    if _is_matmul(event_name):
        attention = re.search(r"attention_(scores|context)", op_name)  # model.SelfAttention's scopes
        return ("attention matmuls" if attention else "dense matmuls (+ fused epilogues)"), phase
    for key, category in (("act_quant", "activation quantizers"), ("weight_quant", "weight quantizers"),
                          ("Dropout", "dropout"), ("LayerNorm", "LayerNorm"),
                          ("softmax", "softmax and mask")):
        if key in op_name:
            return category, phase
    if "/ffn/" in op_name and re.search(r"erf|/ffn/(mul|add)", op_name):
        return "GELU", phase
    if "BertModel" in op_name:
        return "other model ops (reshapes, transposes, residuals)", phase
    return "losses, optimizer, rest", phase


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its ``op_name`` metadata ("" where it has none). A fusion XLA built
    without metadata (library matmul fusions often are) takes that of the computation it calls:
    its product's, else its root's, else the first one found there; failing that (XLA rewrote the
    product and dropped it), that of its last operand that has one."""
    names, calls, inner, operands = {}, {}, {}, {}
    computation = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(.*\{$", line)
        if header:
            computation = header.group(1)
            continue
        m = re.match(r"^\s*(ROOT )?%([\w.\-]+) = (.*)$", line)
        if not m:
            continue
        meta = re.search(r'op_name="([^"]*)"', line)
        names[m.group(2)] = meta.group(1) if meta else ""
        called = re.search(r"calls=%([\w.\-]+)", line)
        if called:
            calls[m.group(2)] = called.group(1)
            args = re.search(r"fusion\(([^)]*)\)", m.group(3))
            operands[m.group(2)] = re.findall(r"%([\w.\-]+)", args.group(1)) if args else []
        if meta and computation:
            rank = 0 if re.search(r"\bdot\(", m.group(3)) else 1 if m.group(1) else 2
            best = inner.get(computation)
            if best is None or rank < best[0]:
                inner[computation] = (rank, meta.group(1))
    for name, computation in calls.items():
        if not names[name] and computation in inner:
            names[name] = inner[computation][1]
        if not names[name]:
            names[name] = next((names[o] for o in reversed(operands[name]) if names.get(o)), "")
    return names


def trace_events(trace_dir: str) -> list[dict]:
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise RuntimeError(f"no *.trace.json.gz under {trace_dir}: jax.profiler wrote no Perfetto trace")
    with gzip.open(files[0]) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def concurrency(ops: list[dict]) -> tuple[float, float, float]:
    """Time (µs) during which 0, 1 and 2 or more of ``ops`` ran, between the first start and the
    last end."""
    points = sorted([(e["ts"], 1) for e in ops] + [(e["ts"] + e["dur"], -1) for e in ops])
    spans = [0.0, 0.0, 0.0]
    active, last = 0, points[0][0]
    for t, delta in points:
        spans[min(active, 2)] += t - last
        active += delta
        last = t
    return tuple(spans)


def _warm_step(student, teacher, objective: str, ignore_padding: bool, variant: str):
    """The compiled KD step at batch 32 × 128 and its inputs, after two warm-up steps."""
    import jax
    from binarybert_jax import sharding

    mesh = sharding.make_mesh(1)
    step, tx, inputs = train_step.build_step(student, teacher, objective, ignore_padding, mesh, variant)
    state, teacher_variables = train_step.init_state(student, teacher, tx, mesh, 128)
    data = sharding.shard_batch(train_step.synthetic_batch(32, 128, student.config.vocab_size), mesh)
    rng = jax.random.key(0)
    compiled = step.lower(state, teacher_variables, data, rng, inputs).compile()
    for _ in range(2):
        state, measured = compiled(state, teacher_variables, data, rng, inputs)
    jax.block_until_ready((state, measured))
    return compiled, (state, teacher_variables, data, rng, inputs)


def profile(case: str, steps: int, variant: str) -> dict:
    import jax

    compiled, (state, teacher_variables, data, rng, inputs) = _warm_step(*train_step.case_setup(case, False), variant)
    op_names = hlo_op_names(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(steps):
                state, measured = compiled(state, teacher_variables, data, rng, inputs)
                jax.block_until_ready((state, measured))
            wall = (time.perf_counter() - start) / steps
        events = trace_events(trace_dir)
    ops = [e for e in events if e.get("ph") == "X" and e.get("name") in op_names]
    if not ops:
        raise RuntimeError("the trace holds no events named after the compiled module's instructions")
    by_category, by_phase = collections.Counter(), collections.Counter()
    alone_by_category = collections.Counter()
    for e in ops:
        category, phase = categorize(e["name"], op_names[e["name"]])
        by_category[category] += e["dur"]
        by_phase[phase] += e["dur"]
    # Which categories ran alone: sweep once, charging single-op spans to that op's category.
    points = sorted([(e["ts"], 1, i) for i, e in enumerate(ops)] +
                    [(e["ts"] + e["dur"], -1, i) for i, e in enumerate(ops)])
    active: set[int] = set()
    last = points[0][0]
    for t, delta, i in points:
        if len(active) == 1:
            (j,) = active
            alone_by_category[categorize(ops[j]["name"], op_names[ops[j]["name"]])[0]] += t - last
        if delta > 0:
            active.add(i)
        else:
            active.discard(i)
        last = t
    idle, one, more = concurrency(ops)
    per_step = lambda us: us / steps / 1e3  # noqa: E731  (µs over all steps -> ms per step)
    return {"case": case, "variant": variant, "steps": steps, "wall_ms": wall * 1e3, "ops_per_step": len(ops) / steps,
            "thread_ms": {k: per_step(v) for k, v in by_category.items()},
            "alone_ms": {k: per_step(v) for k, v in alone_by_category.items()},
            "phase_ms": {k: per_step(v) for k, v in by_phase.items()},
            "span_ms": {"no op": per_step(idle), "one op": per_step(one), "two or more": per_step(more)}}


def ablate(case: str, changes: dict, steps: int, variant: str) -> dict:
    """Best and median step seconds of ``case`` with ``changes`` applied to the student (or the
    teacher left out)."""
    from binarybert_jax.model import ModelSpec

    student, teacher, objective, ignore_padding = train_step.case_setup(case, False)
    config, quant = student.config, student.quant
    bits = {k: v for k, v in changes.items() if k.endswith("_bits")}
    if bits:
        quant = dataclasses.replace(quant, **bits)
    if "dropout" in changes:
        config = dataclasses.replace(config, hidden_dropout=changes["dropout"],
                                     attention_dropout=changes["dropout"])
    student = ModelSpec(config, quant)
    if "teacher" in changes:
        teacher, objective = None, "supervised"
    compiled, (state, teacher_variables, data, rng, inputs) = _warm_step(student, teacher, objective, ignore_padding,
                                                                 variant)
    times, _ = train_step.time_steps(compiled, state, teacher_variables, data, rng, inputs, steps)
    return {"best_s": min(times), "median_s": statistics.median(times)}


def _child(args: list[str]) -> dict:
    """This module's measuring part in a fresh interpreter (``child.run_module``)."""
    return child.run_module("benchmarks.step_profile", args)


def render(prof: dict, ablations: dict, info: dict, command: str) -> str:
    total = sum(prof["thread_ms"].values())
    spans = prof["span_ms"]
    window = sum(spans.values())
    lines = [SECTION, "",
             "The KD step of the table above broken down by op, and timed again with one ingredient "
             "removed at a time; how ops are classified: the docstring of `benchmarks/step_profile.py`.",
             "", "```", command, "```", "",
             f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores visible), jax {info['jax']}; "
             f"load average at the start {info['loadavg'][0]:.2f}. Case `{prof['case']}`, products "
             f"`{prof['variant']}`, "
             f"{prof['steps']} profiled steps: {prof['wall_ms']:.0f} ms a step under the profiler, "
             f"{prof['ops_per_step']:.0f} ops executed a step. Of the span from the first op to the "
             f"last, {spans['two or more'] / window:.0%} had two or more ops running, "
             f"{spans['one op'] / window:.0%} one, {spans['no op'] / window:.0%} none.", "",
             "| category | thread ms / step | share of op time | ms / step running alone |",
             "|---|---|---|---|"]
    for category in CATEGORIES:
        ms = prof["thread_ms"].get(category, 0.0)
        lines.append(f"| {category} | {ms:.0f} | {ms / total:.0%} | {prof['alone_ms'].get(category, 0.0):.0f} |")
    lines += ["", "By phase (thread ms / step): " + ", ".join(
        f"{p} {prof['phase_ms'].get(p, 0.0):.0f}" for p in PHASES) + ".", ""]
    if ablations:
        base = ablations["as is"]["best_s"]
        lines += ["The step with one ingredient removed (best of the timed steps: on a machine whose other "
                  "tenants come and go the best step is the steadier figure; the median beside it):", "",
                  "| variant | step s best (median) | best vs as is |", "|---|---|---|"]
        for name, r in ablations.items():
            lines.append(f"| {name} | {r['best_s']:.3f} ({r['median_s']:.3f}) | {r['best_s'] / base - 1:+.0%} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_profile",
                                     description="Per-op profile and ablations of the KD train step.")
    parser.add_argument("--case", default="w2a8", choices=train_step.CASES)
    parser.add_argument("--variant", default=train_step.DEFAULT_VARIANT, choices=tuple(train_step.VARIANTS),
                        help="how the products are computed (benchmarks/train_step.py VARIANTS)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--ablation-steps", type=int, default=10, help="timed steps per ablation")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--out", default=None, help="Markdown file to write the section into")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "profile":
        print(json.dumps(profile(args.case, args.steps, args.variant)))
        return 0
    if args.child:
        print(json.dumps(ablate(args.case, ABLATIONS[args.child], args.ablation_steps, args.variant)))
        return 0
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "PYTHONPATH=. python -m benchmarks.step_profile " + " ".join(map(shlex.quote, argv))
    info = train_step.machine()
    prof = _child(["--child", "profile", "--case", args.case, "--variant", args.variant,
                   "--steps", str(args.steps)])
    ablations = {}
    if not args.no_ablations:
        for name in ABLATIONS:
            ablations[name] = _child(["--child", name, "--case", args.case, "--variant", args.variant,
                                      "--ablation-steps", str(args.ablation_steps)])
            print(f"{name}: {ablations[name]}", file=sys.stderr)
    markdown.publish(render(prof, ablations, info, command), args.out, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
