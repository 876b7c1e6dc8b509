"""Does the hand-written Threefry dropout (``dropout.Dropout``) pay against ``flax.linen.Dropout``?

    PYTHONPATH=. python -m benchmarks.dropout

About 10 minutes on 2 shared CPU cores with the defaults (two compiles, then 4 rounds of 2 × 10
steps of ~2-4 s). Everything runs in one process, so the figures are ratios between two steps
timed side by side, which hold on a machine other jobs share, where absolute times do not.

*Train step.* The jitted KD train step of ``benchmarks/train_step.py`` (``--case``, default
``w2a8``: MiniLM dimensions at half width, batch 32, sequence 128, dropout 0.1 on hidden states and
attention probabilities of the student), compiled twice: as the model is, and with
``binarybert_jax.model.Dropout`` replaced by ``flax.linen.Dropout`` while the step is traced.
Both modules draw the same masks for the same keys (``test_fast_dropout_masks_equal_flax``), so
the two steps compute the same thing; the first step's losses of the two are printed as a check.
Each of ``--rounds`` rounds times ``--steps`` steps of one, then of the other (which goes first
alternates), each step blocked on; the round's ratio is the median step time of the hand-written
over the Flax one. Below 1 means the hand-written dropout is faster.

*Mask alone.* Dropout of a tensor the size of the student's attention probabilities (batch ×
heads × seq × seq), jitted forward, the two alternating step by step (``--mask-steps`` each):
the ratio of median times, same convention.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from typing import Optional, Sequence

from benchmarks import train_step


@contextlib.contextmanager
def flax_dropout():
    """Traces the model with ``flax.linen.Dropout`` in place of the hand-written one."""
    import flax.linen as nn
    from binarybert_jax import model

    saved = model.Dropout
    model.Dropout = nn.Dropout
    try:
        yield
    finally:
        model.Dropout = saved


def compiled_steps(case: str, batch: int, seq: int):
    """{"threefry": (compiled step, state), "flax": (...)}, the teacher's params, the batch, the RNG
    and the phase's inputs."""
    import jax
    from binarybert_jax import sharding

    student_spec, teacher_spec, objective, ignore_padding = train_step.case_setup(case, False)
    mesh = sharding.make_mesh(1)
    data = sharding.shard_batch(train_step.synthetic_batch(batch, seq, student_spec.config.vocab_size), mesh)
    rng = jax.random.key(0)
    out, teacher_variables = {}, None
    for name in ("threefry", "flax"):
        # A fresh state each: the step donates it.
        step, tx, inputs = train_step.build_step(student_spec, teacher_spec, objective, ignore_padding, mesh)
        state, teacher_variables = train_step.init_state(student_spec, teacher_spec, tx, mesh, seq)
        with flax_dropout() if name == "flax" else contextlib.nullcontext():
            start = time.perf_counter()
            compiled = step.lower(state, teacher_variables, data, rng, inputs).compile()
        print(f"{name}: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        out[name] = [compiled, state]
    return out, teacher_variables, data, rng, inputs


def time_train_step(case: str, batch: int, seq: int, steps: int, rounds: int) -> list[float]:
    import jax

    steps_by_name, teacher_variables, data, rng, inputs = compiled_steps(case, batch, seq)
    losses = {}
    for name, entry in steps_by_name.items():  # warm-up, and the equality check
        for i in range(2):
            entry[1], measured = entry[0](entry[1], teacher_variables, data, rng, inputs)
            if i == 0:
                losses[name] = float(measured["total"])
        jax.block_until_ready(entry[1])
    print(f"first-step loss: hand-written {losses['threefry']:.6f}, flax {losses['flax']:.6f}")

    def run(name: str) -> float:
        compiled, state = steps_by_name[name]
        times, state = train_step.time_steps(compiled, state, teacher_variables, data, rng, inputs, steps)
        steps_by_name[name][1] = state
        return statistics.median(times)

    ratios = []
    for r in range(rounds):
        order = ("threefry", "flax") if r % 2 == 0 else ("flax", "threefry")
        median = {name: run(name) for name in order}
        ratios.append(median["threefry"] / median["flax"])
        print(f"round {r + 1} ({order[0]} first): hand-written / flax = {ratios[-1]:.3f}")
    return ratios


def time_mask(batch: int, heads: int, seq: int, steps: int) -> float:
    import flax.linen as nn
    import jax
    from binarybert_jax import model

    x = jax.random.normal(jax.random.key(0), (batch, heads, seq, seq))
    fns = {name: jax.jit(lambda x, key, module=module: module(0.1).apply(
        {}, x, deterministic=False, rngs={"dropout": key}))
        for name, module in (("threefry", model.Dropout), ("flax", nn.Dropout))}
    times = {name: [] for name in fns}
    for name, fn in fns.items():
        jax.block_until_ready(fn(x, jax.random.key(1)))
    for i in range(steps):
        for name in (("threefry", "flax") if i % 2 == 0 else ("flax", "threefry")):
            key = jax.random.key(i)
            start = time.perf_counter()
            jax.block_until_ready(fns[name](x, key))
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["threefry"]) / statistics.median(times["flax"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dropout", description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="w2a8", choices=train_step.CASES)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--mask-steps", type=int, default=20)
    parser.add_argument("--no-step", action="store_true", help="time the mask alone")
    args = parser.parse_args(argv)

    heads = train_step.architecture(False).num_heads
    mask = time_mask(args.batch, heads, args.seq, args.mask_steps)
    print(f"mask alone ({args.batch}×{heads}×{args.seq}×{args.seq}): hand-written / flax = {mask:.3f}")
    if not args.no_step:
        ratios = time_train_step(args.case, args.batch, args.seq, args.steps, args.rounds)
        print(f"train step ({args.case}): hand-written / flax, median of {len(ratios)} rounds = "
              f"{statistics.median(ratios):.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
