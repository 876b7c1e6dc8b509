"""What a user needs to know about an accelerator before a long run, in one command (< 5 minutes).

    python -m benchmarks.accelerator_check --out runs/accel           # on a GPU/TPU machine
    python -m benchmarks.accelerator_check --tiny --out /tmp/accel    # a smoke run on the CPU

Writes ``accelerator_check.json`` and ``accelerator_check.md`` to ``--out`` (and, with ``--benchmarks
BENCHMARKS.md``, its section there):

* the devices (platform, kind, count, processes);
* the measured bfloat16 matmul rate (an n×n by n×n product, float32 accumulation, best of 10);
* the KD train step of ``benchmarks/train_step.py``'s cases at BERT-base dims, half width (the
  papers' ternary model), random weights, bfloat16 compute, batch 32 ×
  128: ternary W2A8 (TWN, stage-1 KD from a full-precision teacher) and split binary W1A8, with
  examples/s and MFU (model FLOPs of the step over the measured bf16 matmul rate);
* with more than one device, the sharding check: the same global batch stepped on one device and on
  all of them gives the same parameters (within float reduction order).

``--tiny`` shrinks every shape so the script runs in seconds on a CPU (what the test suite runs).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

from benchmarks import markdown, train_step

SECTION = "## Accelerator check"


def bf16_matmul_tflops(n: int, repeats: int = 10) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e12


def _case(case: str, tiny: bool):
    """``benchmarks/train_step.py``'s case at BERT-base dims (half width), or shrunk to one layer."""
    import dataclasses
    from binarybert_jax.model import ModelSpec

    student, teacher, objective, masked = train_step.case_setup(case, bert_base=not tiny)
    if tiny:
        small = dict(num_layers=1, vocab_size=2000, hidden_size=64, num_heads=2, head_dim=32)
        student = ModelSpec(dataclasses.replace(student.config, intermediate_size=128, **small), student.quant)
        teacher = ModelSpec(dataclasses.replace(teacher.config, intermediate_size=256, num_heads=2, **{
            k: v for k, v in small.items() if k != "num_heads"}))
    return student, teacher, objective, masked


def time_step(student, teacher, objective: str, masked: bool, mesh, batch: int, seq: int, steps: int,
              dtype) -> dict:
    """Compiles the sharded KD step in ``dtype`` and times ``steps`` of it on synthetic data."""
    import jax
    import jax.numpy as jnp
    from binarybert_jax import flops, kd, optim, sharding, train

    schedule = optim.Schedule.warmup_linear(2e-5, 1e-4, 1000)
    tx = optim.scheduled_bert_adam(schedule)
    objectives = kd.step_objectives(objective)  # the program training runs
    inputs = train.phase_inputs(schedule, objective, objectives)
    step = train.make_train_step(student.build(dtype), teacher.build(dtype), mesh, objectives=objectives,
                                 is_regression=False, ignore_padding=masked)
    ids = jnp.ones((1, seq), jnp.int32)
    params = jax.jit(student.without_axis().build().init)(jax.random.key(0), ids)["params"]
    state = sharding.replicate(train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), mesh)
    teacher_variables = sharding.replicate(
        {"params": jax.jit(teacher.build().init)(jax.random.key(1), ids)["params"]}, mesh)
    data = sharding.shard_batch(train_step.synthetic_batch(batch, seq, student.config.vocab_size), mesh)
    rng = jax.random.key(0)
    start = time.perf_counter()
    compiled = step.lower(state, teacher_variables, data, rng, inputs).compile()
    compile_s = time.perf_counter() - start
    for _ in range(2):
        state, measured = compiled(state, teacher_variables, data, rng, inputs)
    jax.block_until_ready(state)
    times, state = train_step.time_steps(compiled, state, teacher_variables, data, rng, inputs, steps)
    median = statistics.median(times)
    per_example = flops.kd_step_flops(student.config, teacher.config, seq)
    return {"compile_s": compile_s, "step_s_median": median, "examples_per_s": batch / median,
            "model_tflops": per_example * batch / median / 1e12, "loss": float(measured["total"]),
            "params": jax.device_get(state.params)}


def sharding_check(student, teacher, objective, masked, batch, seq, dtype) -> dict:
    """One step on one device against one step on all devices, same global batch: max |Δparam|."""
    import jax
    import numpy as np
    from binarybert_jax import sharding

    one = time_step(student, teacher, objective, masked, sharding.make_mesh(1), batch, seq, 1, dtype)
    every = time_step(student, teacher, objective, masked, sharding.make_mesh(), batch, seq, 1, dtype)
    diffs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)))),
        one["params"], every["params"]))
    return {"devices": jax.device_count(), "max_abs_param_diff": max(diffs)}


def run(tiny: bool, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    from binarybert_jax import sharding

    dtype = jnp.bfloat16
    batch, seq = (4, 16) if tiny else (32, 128)
    devices = jax.devices()
    out = {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
           "device_count": jax.device_count(), "process_count": jax.process_count(),
           "jax": jax.__version__, "tiny": tiny, "batch": batch, "seq": seq, "width": 0.5,
           "compute_dtype": "bfloat16"}
    out["bf16_matmul_tflops"] = bf16_matmul_tflops(256 if tiny else 8192, 3 if tiny else 10)
    mesh = sharding.make_mesh(1)  # the per-device step; the sharded one is the check below
    out["steps"] = {}
    for case in ("w2a8", "w1a8"):
        student, teacher, objective, masked = _case(case, tiny)
        measured = time_step(student, teacher, objective, masked, mesh, batch, seq, steps, dtype)
        measured.pop("params")
        measured["mfu"] = measured["model_tflops"] / out["bf16_matmul_tflops"]
        out["steps"][case] = measured
    if jax.device_count() > 1:
        student, teacher, objective, masked = _case("w2a8", tiny)
        out["sharding"] = sharding_check(student, teacher, objective, masked,
                                         batch * jax.device_count(), seq, dtype)
    return out


def render(result: dict) -> str:
    names = {"w2a8": "ternary W2A8 (TWN)", "w1a8": "split binary W1A8 (TWS)"}
    lines = [SECTION, "",
             f"`python -m benchmarks.accelerator_check --out DIR --benchmarks BENCHMARKS.md`"
             f"{' --tiny' if result['tiny'] else ''}: {result['device_count']} × {result['device_kind']} "
             f"({result['platform']}), JAX {result['jax']}; bf16 matmul {result['bf16_matmul_tflops']:.1f} "
             f"TFLOP/s measured. KD step (stage 1, teacher forward + student forward and backward), "
             f"bfloat16 compute, batch {result['batch']} × {result['seq']}, random weights"
             f"{', tiny shapes (a smoke run, not a measurement)' if result['tiny'] else ', BERT-base dims, half width'}.",
             "", "| step | examples/s | model TFLOP/s | MFU (of measured bf16 matmul) | compile s |",
             "|---|---|---|---|---|"]
    for case, m in result["steps"].items():
        lines.append(f"| {names[case]} | {m['examples_per_s']:.1f} | {m['model_tflops']:.2f} | "
                     f"{100 * m['mfu']:.1f}% | {m['compile_s']:.1f} |")
    if "sharding" in result:
        s = result["sharding"]
        lines += ["", f"Sharding check over {s['devices']} devices: max |Δparameter| after one step "
                      f"{s['max_abs_param_diff']:.2e} against one device (same global batch)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accelerator_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for accelerator_check.json and .md")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke run for CPUs and tests")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--benchmarks", default="", help="also write the section into this BENCHMARKS.md")
    args = parser.parse_args(argv)
    result = run(args.tiny, args.steps)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accelerator_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "accelerator_check.md").write_text(render(result))
    if args.benchmarks:
        markdown.write_section(pathlib.Path(args.benchmarks), SECTION, render(result))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
