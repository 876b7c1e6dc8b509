"""Bitwise (XNOR-popcount) against float32: the binarized products alone, and the whole 1-1-1 model.

    PYTHONPATH=. python -m benchmarks.bitwise --out BENCHMARKS.md

Everything is measured in ONE process, interleaved (each round runs every contender once, in
turn, ``--reps`` times, for ``--rounds`` rounds), and reported as the ratio of medians: on a
shared machine the load moves every contender alike, which a ratio cancels and an absolute time
does not (the absolute medians are printed beside for reference).

Products (MiniLM's three shapes at 32 × 128 = 4096 tokens: 384→384 for Q, K, V and the attention
output, 384→1536 and 1536→384 for the FFN): the float32 ``jnp.dot`` of the ±1 matrices (the
activations already signed, as the simulated model holds them) against ``bitwise.binary_matmul``
of the packed words (activations already packed), and both again with the binarization of the
float activations included (sign for float32, ``pack_signs`` for the bitwise one). Every pair is
checked equal before it is timed.

The model: all-MiniLM-L6-v2 quantized to BiBERT's 1-1-1 (real weights, a fresh 2-label head),
exported with ``export.export_packed`` and run three ways on the same batch of 32 × 128 real
tokens: ``bitwise`` (``inference.load_predictor`` of the packed file: XNOR-popcount on words),
``float32, weights pre-quantized`` (the same file through ``export.load_packed``: float32 weights
holding the quantized values, sign activations simulated in float32) and ``float32, checkpoint``
(``evaluate.forward_fn`` of the quantized spec on the latent weights: the forward that training
and evaluation run, re-binarizing every weight each call). The bitwise logits are checked equal to
the checkpoint forward's before timing. Resident weight memory is the bytes of each one's
parameter arrays.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shlex
import statistics
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

from benchmarks import markdown

SECTION = "## Bitwise inference: BiBERT 1-1-1, XNOR-popcount vs float32"
SHAPES = ((384, 384), (384, 1536), (1536, 384))
MIB = 2 ** 20


def interleaved(fns: dict[str, Callable], reps: int, rounds: int) -> dict[str, float]:
    """Median seconds of each callable (blocked on), timed in turn ``reps`` × ``rounds`` times."""
    import jax
    for f in fns.values():
        jax.block_until_ready(f())  # compile and warm up
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for _ in range(reps):
            for name, f in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(f())
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def products(tokens: int, reps: int, rounds: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from binarybert_jax import bitwise

    rng = np.random.default_rng(0)
    rows = []
    for k, n in SHAPES:
        x = jnp.asarray(rng.standard_normal((tokens, k)).astype(np.float32))
        signs = jnp.where(x >= 0, 1.0, -1.0)
        w = rng.choice([-1.0, 1.0], (k, n)).astype(np.float32)
        w_float, w_words = jnp.asarray(w), jnp.asarray(bitwise.pack_weight_codes((w > 0).astype(np.uint8)))
        x_words = jax.jit(bitwise.pack_signs)(x >= 0)
        dot = jax.jit(jnp.dot)
        popcount = jax.jit(bitwise.binary_matmul, static_argnums=2)
        sign_dot = jax.jit(lambda x, w: jnp.dot(jnp.where(x >= 0, 1.0, -1.0), w))
        pack_popcount = jax.jit(lambda x, w: bitwise.binary_matmul(
            bitwise.pack_signs(x >= 0), w, k))
        expected = np.asarray(dot(signs, w_float))
        for got in (popcount(x_words, w_words, k), pack_popcount(x, w_words), sign_dot(x, w_float)):
            if not np.array_equal(np.asarray(got).astype(np.float32), expected):
                raise AssertionError(f"{k}x{n}: the bit product differs from the float32 one")
        t = interleaved({"float": lambda: dot(signs, w_float),
                         "bitwise": lambda: popcount(x_words, w_words, k),
                         "float_sign": lambda: sign_dot(x, w_float),
                         "bitwise_pack": lambda: pack_popcount(x, w_words)}, reps, rounds)
        rows.append({"shape": f"{tokens}×{k} · {k}×{n}", **{f"{key}_ms": 1000 * v for key, v in t.items()}})
    return rows


def model(batch: int, seq: int, reps: int, rounds: int, workdir: pathlib.Path) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from binarybert_jax import assets, bitwise, evaluate, export, hf_import, inference
    from binarybert_jax.model import ModelSpec, QuantConfig

    config, imported = hf_import.load_hf_checkpoint(assets.minilm_dir())
    spec = ModelSpec(config, QuantConfig(1, 1, 1, "bibert", "bibert", "sign", weight_granularity="row",
                                         embed_granularity="row", attention="bool"))
    params = spec.build().init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    params = hf_import.merge_pretrained(params, imported, "MiniLM")
    path = workdir / "bibert.safetensors"
    export.export_packed(params, spec, path)

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, config.vocab_size, (batch, seq)).astype(np.int32)
    types = np.zeros_like(ids)
    types[:, seq // 2:] = 1
    inputs = {k: jax.device_put(v) for k, v in
              {"input_ids": ids, "token_type_ids": types, "attention_mask": np.ones_like(ids)}.items()}

    predictor = inference.load_predictor(path)
    assert predictor.kind == inference.BITWISE
    float_params, float_spec, _ = export.load_packed(path)
    float_params = jax.device_put(float_params)
    float_fn, ckpt_fn = evaluate.forward_fn(float_spec), evaluate.forward_fn(spec)
    params = jax.device_put(params)
    equal = bool(np.array_equal(np.asarray(predictor.logits(inputs)),
                                np.asarray(ckpt_fn(params, inputs)["logits"])))
    if not equal:
        raise AssertionError("bitwise logits differ from the simulated float32 forward")
    t = interleaved({"bitwise": lambda: predictor.logits(inputs),
                     "float_prequantized": lambda: float_fn(float_params, inputs)["logits"],
                     "float_checkpoint": lambda: ckpt_fn(params, inputs)["logits"]}, reps, rounds)
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))
    resident = bitwise.resident_bytes(predictor.params)
    return {"ms": {k: 1000 * v for k, v in t.items()}, "logits_equal": equal,
            "resident": {"bitwise_words": resident.packed_words, "bitwise_scales": resident.scales,
                         "bitwise_float": resident.float_params, "bitwise_total": resident.total,
                         "float32": nbytes(float_params)},
            "file_bytes": path.stat().st_size}


def section(prod: list[dict], whole: dict, args, command: str) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [SECTION, "",
             "One process, contenders interleaved, ratios of medians (how each number is taken: "
             "the docstring of `benchmarks/bitwise.py`).", "", "```", command, "```", "",
             f"Measured {date}, {os.cpu_count()} cores visible, {args.rounds} rounds × {args.reps} "
             f"repetitions; load average at the end {load} (the benchmark itself keeps the cores "
             "busy; other jobs move the absolute times, which is why the ratios are the result).", "",
             "Binarized products, 4096 tokens (float32 `jnp.dot` of ±1 matrices vs "
             "`bitwise.binary_matmul` of packed words; bit-exact):", "",
             "| product | float32 ms | bitwise ms | speed-up | with binarizing the input: float32 ms | "
             "bitwise ms (packing incl.) | speed-up |", "|" + "---|" * 7]
    for r in prod:
        lines.append(f"| {r['shape']} | {r['float_ms']:.2f} | {r['bitwise_ms']:.2f} | "
                     f"{r['float_ms'] / r['bitwise_ms']:.1f}× | {r['float_sign_ms']:.2f} | "
                     f"{r['bitwise_pack_ms']:.2f} | {r['float_sign_ms'] / r['bitwise_pack_ms']:.1f}× |")
    ms, res = whole["ms"], whole["resident"]
    lines += ["", f"The whole model, all-MiniLM-L6-v2 at 1-1-1, batch {args.batch} × {args.seq} "
              f"tokens (bitwise logits equal to the simulated float32 forward's: "
              f"{'yes' if whole['logits_equal'] else 'NO'}):", "",
              "| forward | ms per batch | bitwise speed-up | resident parameters MiB |", "|---|---|---|---|",
              f"| bitwise (packed file, XNOR-popcount) | {ms['bitwise']:.1f} | 1.0× | "
              f"{res['bitwise_total'] / MIB:.2f} (words {res['bitwise_words'] / MIB:.2f}, scales "
              f"{res['bitwise_scales'] / MIB:.2f}, float32 {res['bitwise_float'] / MIB:.2f}) |",
              f"| float32, weights pre-quantized (`export.load_packed`) | {ms['float_prequantized']:.1f} | "
              f"{ms['float_prequantized'] / ms['bitwise']:.1f}× | {res['float32'] / MIB:.2f} |",
              f"| float32, checkpoint (re-binarizes weights each call) | {ms['float_checkpoint']:.1f} | "
              f"{ms['float_checkpoint'] / ms['bitwise']:.1f}× | {res['float32'] / MIB:.2f} |",
              "", f"Packed file: {whole['file_bytes'] / MIB:.2f} MiB.", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bitwise",
                                     description="XNOR-popcount vs float32, products and the 1-1-1 model.")
    parser.add_argument("--reps", type=int, default=10, help="repetitions per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--out", default=None, help="Markdown file to write the section into")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.reps < 1 or args.rounds < 1:
        raise SystemExit("--reps and --rounds must be at least 1")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "PYTHONPATH=. python -m benchmarks.bitwise " + " ".join(map(shlex.quote, argv))
    prod = products(args.batch * args.seq, args.reps, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        whole = model(args.batch, args.seq, args.reps, args.rounds, pathlib.Path(tmp))
    markdown.publish(section(prod, whole, args, command), args.out, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
