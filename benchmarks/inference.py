"""Inference cost of the saved forms of one model: full precision, bit-packed, quantized on the fly.

    PYTHONPATH=. python -m benchmarks.inference --repeats 5 --out BENCHMARKS.md

The model is all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M parameters) with a fresh 2-label head:
the numbers are about cost, not accuracy, so no fine-tuning is needed. Saved forms, each loaded
with ``inference.load_predictor`` as a user would:

* ``fp32``: the float32 model as a model checkpoint (``checkpoints.save_model``, Orbax), no
  quantization at all.
* ``bwn-packed``: its weights quantized BWN 1-1-8 (1-bit weights and word embedding, 8-bit
  activations) and written by ``export.export_packed``; unpacked to float32 once at load.
* ``tws-packed``: the ternary-weight-split 1-1-8 model (``tws.split_params`` of the TWN 2-2-8
  quantization of the same weights: two binary planes per matrix) packed likewise; it loads as a
  plain model holding the planes' sum (``export.inference_spec``).
* ``bwn-ckpt``: the BWN 1-1-8 model as a training checkpoint (float32 latent weights), which
  re-quantizes every weight in every forward pass, as training and evaluation do.
* ``bibert-bitwise``: the same weights quantized to BiBERT's 1-1-1 (mean-centred sign weights
  and embedding, sign activations, Bi-Attention), packed; the predictor runs it bitwise
  (``bitwise.py``: XNOR-popcount on 32-bit words, weights resident as words).
* ``bibert-ckpt``: that 1-1-1 model as a training checkpoint: simulated in float32, as training
  and evaluation run it (the same logits, bit for bit).

Each form is measured in a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its
own: ``base`` after importing and starting JAX, ``load`` after loading (file read, unpacking,
device transfer), ``peak`` at the end (compiled programs and batch-32 activations included).
Times are wall-clock and blocked on (``block_until_ready``); the first call of each shape
(compilation plus one run) is reported apart and excluded from the timed runs, whose median is
reported (and the best run beside it: on a shared machine the best is the steadier figure).
Latency is batch 1, throughput batch ``--batch``, both at ``--seq`` real tokens (no
padding). There is no device flag: JAX picks its default backend (a GPU when one is present;
``JAX_PLATFORMS=cpu`` forces the CPU), and on a GPU the JSON also holds the device's peak memory.
On the 2 shared cores of the development machine a full run takes about 2-3 minutes.
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
import tempfile
import time
from typing import Optional, Sequence

from benchmarks import child, markdown

SECTION = "## Inference: packed vs full precision"
VARIANTS = ("fp32", "bwn-packed", "tws-packed", "bwn-ckpt", "bibert-bitwise", "bibert-ckpt")
MIB = 2 ** 20
MB = 10 ** 6


# --------------------------------------------------------------------------------------------
# Preparation (parent process): the saved forms of MiniLM.
# --------------------------------------------------------------------------------------------
def _fresh_params(spec, seed: int = 0) -> dict:
    """Parameters of ``spec``'s model from shapes alone (no compiled ``init``): N(0, 0.02) like
    the model's initialisers, activation clips at the model's ±clip_init."""
    import numpy as np
    from binarybert_jax import hf_import, size

    rng = np.random.default_rng(seed)
    clip = spec.quant.clip_init
    flat = {}
    for path, shape in size.param_shapes(spec).items():
        if path.endswith("_clip"):
            flat[path] = np.broadcast_to(np.array([-clip, clip], np.float32), shape).copy()
        else:
            flat[path] = rng.normal(0.0, 0.02, shape).astype(np.float32)
    return hf_import.unflatten(flat)


def prepare(workdir: pathlib.Path, variants: Sequence[str]) -> dict[str, dict]:
    """Writes the saved forms ``variants`` into ``workdir``; returns {variant: {path, seconds to
    write}}."""
    from binarybert_jax import assets, hf_import, export, checkpoints, tws
    from binarybert_jax.model import ModelSpec, QuantConfig

    config, imported = hf_import.load_hf_checkpoint(assets.minilm_dir())

    def spec_for(quant=None):
        return ModelSpec(config, quant or QuantConfig(), "classification", 2)

    def params_for(spec):
        return hf_import.merge_pretrained(_fresh_params(spec), imported, "MiniLM")

    out = {}

    def timed(name, path, fn):
        start = time.perf_counter()
        fn()
        out[name] = {"path": str(path), "write_s": time.perf_counter() - start}

    if "fp32" in variants:
        fp32 = spec_for()
        fp32_params = params_for(fp32)
        timed("fp32", workdir / "fp32",
              lambda: checkpoints.save_model(workdir / "fp32", fp32_params, fp32))
    bwn = spec_for(QuantConfig(1, 1, 8, "bwn", "bwn"))
    bwn_params = params_for(bwn)
    if "bwn-packed" in variants:
        timed("bwn-packed", workdir / "bwn.safetensors",
              lambda: export.export_packed(bwn_params, bwn, workdir / "bwn.safetensors"))
    if "tws-packed" in variants:
        twn = spec_for(QuantConfig(2, 2, 8, "twn", "twn"))
        split_params, split_spec = tws.split_params(params_for(twn), twn)
        timed("tws-packed", workdir / "tws.safetensors",
              lambda: export.export_packed(split_params, split_spec, workdir / "tws.safetensors"))
    if "bwn-ckpt" in variants:
        timed("bwn-ckpt", workdir / "bwn_ckpt",
              lambda: checkpoints.save_model(workdir / "bwn_ckpt", bwn_params, bwn))
    bibert = spec_for(QuantConfig(1, 1, 1, "bibert", "bibert", "sign", weight_granularity="row",
                                  embed_granularity="row", attention="bool"))
    bibert_params = params_for(bibert)
    if "bibert-bitwise" in variants:
        timed("bibert-bitwise", workdir / "bibert.safetensors",
              lambda: export.export_packed(bibert_params, bibert, workdir / "bibert.safetensors"))
    if "bibert-ckpt" in variants:
        timed("bibert-ckpt", workdir / "bibert_ckpt",
              lambda: checkpoints.save_model(workdir / "bibert_ckpt", bibert_params, bibert))
    for r in out.values():
        r["disk_bytes"] = disk_bytes(pathlib.Path(r["path"]))
    return out


def disk_bytes(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# Measurement (one subprocess per saved form).
# --------------------------------------------------------------------------------------------
def _rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: str, seq: int, batch: int, repeats: int) -> dict:
    """Load, compile, latency and throughput of one saved model, in this process."""
    import jax
    import numpy as np
    from binarybert_jax import inference

    jax.block_until_ready(jax.numpy.zeros(()))  # start the backend before the baseline
    result = {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
              "rss_base_mib": _rss_mib()}

    start = time.perf_counter()
    predictor = inference.load_predictor(path)
    jax.block_until_ready(predictor.params)
    result["load_s"] = time.perf_counter() - start
    result["rss_load_mib"] = _rss_mib()
    result["kind"] = predictor.kind
    result["params_mib"] = sum(x.nbytes for x in jax.tree_util.tree_leaves(predictor.params)) / MIB

    rng = np.random.default_rng(0)
    vocab = predictor.spec.config.vocab_size
    # Real tokens everywhere (ids past BERT's special tokens), two segments like a pair task.
    ids = rng.integers(1000, vocab, (batch, seq)).astype(np.int32)
    types = np.zeros_like(ids)
    types[:, seq // 2:] = 1
    inputs = {"input_ids": ids, "token_type_ids": types, "attention_mask": np.ones_like(ids)}
    single = {k: jax.device_put(v[:1]) for k, v in inputs.items()}
    full = {k: jax.device_put(v) for k, v in inputs.items()}

    def run_times(batch_inputs):
        start = time.perf_counter()
        jax.block_until_ready(predictor.logits(batch_inputs))
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(predictor.logits(batch_inputs))
            times.append(time.perf_counter() - start)
        return first, times

    result["first_b1_s"], lat = run_times(single)
    result["first_batch_s"], thr = run_times(full)
    result["latency_ms"] = 1000 * statistics.median(lat)
    result["latency_ms_min"] = 1000 * min(lat)
    result["throughput_seq_s"] = batch / statistics.median(thr)
    result["throughput_seq_s_max"] = batch / min(thr)
    result["rss_peak_mib"] = _rss_mib()
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and "peak_bytes_in_use" in stats:
        result["device_peak_mib"] = stats["peak_bytes_in_use"] / MIB
    return result


def _subprocess(args: list[str]) -> dict:
    """This module's measuring part in a fresh interpreter (``child.run_module``)."""
    return child.run_module("benchmarks.inference", args)


# --------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    from importlib import metadata  # not ``import jax``: the parent stays small (_subprocess)
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "jax": metadata.version("jax"),
            "loadavg": os.getloadavg(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def table(rows: dict[str, dict], batch: int) -> str:
    head = ("| saved form | runs as | on disk MiB | resident params MiB | write s | load s | "
            f"first call s (b1 / b{batch}) | RSS MiB base / load / peak | latency b1 ms median (min) | "
            f"throughput b{batch} seq/s median (max) |")
    lines = [head, "|" + "---|" * 10]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r.get('kind', '')} | {r['disk_bytes'] / MIB:.2f} | "
            f"{r['params_mib']:.2f} | {r['write_s']:.1f} | {r['load_s']:.2f} | "
            f"{r['first_b1_s']:.1f} / {r['first_batch_s']:.1f} | {r['rss_base_mib']:.0f} / "
            f"{r['rss_load_mib']:.0f} / {r['rss_peak_mib']:.0f} | {r['latency_ms']:.1f} "
            f"({r['latency_ms_min']:.1f}) | {r['throughput_seq_s']:.1f} "
            f"({r['throughput_seq_s_max']:.1f}) |")
    return "\n".join(lines)


def section(rows: dict[str, dict], info: dict, command: str, args) -> str:
    backend = {r["backend"] for r in rows.values()}
    load = ", ".join(f"{x:.2f}" for x in info["loadavg"])
    device_peak = [f"{n} {r['device_peak_mib']:.0f} MiB" for n, r in rows.items()
                   if "device_peak_mib" in r]
    return "\n".join([
        SECTION, "",
        f"all-MiniLM-L6-v2 (22.7M parameters) with a 2-label head, in {len(rows)} saved forms, "
        "each loaded by `inference.load_predictor` in a fresh process (the docstring of "
        "`benchmarks/inference.py` says what each form is and how each number is taken).", "",
        "```", command, "```", "",
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores visible), jax "
        f"{info['jax']}, backend {', '.join(sorted(backend))}; load average at the start {load} "
        f"(above {info['cores']}, other jobs were competing for the cores, and times vary "
        f"between runs accordingly). Sequence length {args.seq}; median of {args.repeats} timed "
        "runs, the best one in parentheses.", "",
        table(rows, args.batch), "",
        *([f"Device peak memory: {'; '.join(device_peak)}.", ""] if device_peak else []),
        "Reading the table:",
        "- *on disk*: the packed file, or the checkpoint directory (Orbax float32 tree and "
        "`model.json`). *write s*: export or save time, for reference.",
        "- *runs as*: how `load_predictor` runs the saved form. *resident params*: the bytes of "
        "the parameter arrays the forward pass reads.",
        "- *load s*: `load_predictor` (read, unpack the bit planes to float32, move to the "
        "device). A packed 1-1-8 model is unpacked once, so it runs as a float32 model: its "
        "resident memory and speed are those of float32 weights; the packed format saves disk "
        "and transfer, not compute. The 1-1-1 file (`bibert-bitwise`) is the exception: its "
        "planes become 32-bit words and every binarized product is XNOR-popcount "
        "(`bitwise.py`); `benchmarks/bitwise.py` compares it with float32 in one process, "
        "interleaved (the section below), which is the fairer speed comparison on a shared machine.",
        "- *first call*: compilation plus one run, per batch shape; excluded from the timings.",
        "- The three 1-1-8 forms quantize activations to 8 bits (simulated in float32, "
        "ranges taken over the batch as in the released code), which `fp32` does not do; "
        "`bwn-ckpt` also re-quantizes every weight in every forward pass. Beyond noise, those two "
        "costs are what separates the rows.",
        ""])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference",
                                     description="Inference cost of packed vs float32 models.")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--seq", type=int, default=128, help="sequence length")
    parser.add_argument("--batch", type=int, default=32, help="batch size for throughput")
    parser.add_argument("--out", default=None, help="Markdown file to write the section into")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--workdir", default=None,
                        help="where to write the saved forms (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    # Internal: the subprocesses' entry points.
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.seq, args.batch, args.repeats)))
        return 0
    if args.prepare:
        print(json.dumps(prepare(pathlib.Path(args.prepare), args.variants)))
        return 0
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "PYTHONPATH=. python -m benchmarks.inference " + " ".join(map(shlex.quote, argv))
    info = machine()  # first: the load average before this run adds its own
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        saved = _subprocess(["--prepare", str(workdir), "--variants", *args.variants])
        rows = {}
        for name in args.variants:
            r = _subprocess(["--child", saved[name]["path"], "--seq", str(args.seq),
                             "--batch", str(args.batch), "--repeats", str(args.repeats)])
            rows[name] = dict(r, **saved[name])
            print(f"{name}: {json.dumps(r)}", file=sys.stderr)
    print(table(rows, args.batch))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    if args.out:
        markdown.write_section(pathlib.Path(args.out), SECTION, section(rows, info, command, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
