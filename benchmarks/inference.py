"""Inference cost of the saved forms of one model: full precision, bit-packed, quantized on the fly.

    PYTHONPATH=. python -m benchmarks.inference --repeats 5 --out BENCHMARKS.md

The model is all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M parameters) with a fresh 2-label head:
the numbers are about cost, not accuracy, so no fine-tuning is needed. Saved forms, each loaded
with ``inference.load_predictor`` as a user would:

* ``fp32``: the float32 model as a model checkpoint (``checkpoints.save_model``, Orbax), no
  quantization at all.
* ``bwn-packed``: its weights quantized BWN 1-1-8 (1-bit weights and word embedding, 8-bit
  activations) and written by ``export.export_packed``; run on its integer codes (weights
  resident as bit planes, ``weight_planes``). ``twn-packed`` (TernaryBERT's 2-2-8) and
  ``bwn4-packed`` (1-1-4) likewise.
* ``tws-packed``: the ternary-weight-split 1-1-8 model (``tws.split_params`` of the TWN 2-2-8
  quantization of the same weights: two binary planes per matrix) packed likewise. Its halves'
  scales are those of a model just split (equal in most layers): such a layer runs as one product
  of the halves' summed codes (the same bits as the two products), the others as two products.
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

Packed files run on integer codes by default (``inference.load_predictor``: weights resident as
bit planes, products on codes). ``--interleaved`` compares them with the float32 checkpoint in ONE
process, the forms' timed calls interleaved (fp32, then each packed form, round after round), so
that a machine's load falls on every form alike, and prints each form's ratios to fp32:
throughput at ``--batch`` × ``--seq``, batch-1 latency, resident parameter bytes::

    PYTHONPATH=. python -m benchmarks.inference --interleaved --repeats 20 --out BENCHMARKS.md

Its forms: ``fp32`` (checkpoint), ``bwn-packed`` (1-1-8), ``twn-packed`` (TernaryBERT's 2-2-8),
``bwn4-packed`` (1-1-4), ``tws-packed`` (split 1-1-8) on codes, and ``bwn-packed-float`` (the
1-1-8 file with ``compute="float"``, weights unpacked to float32).
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
INTERLEAVED_SECTION = "## Inference on integer codes: packed vs float32, interleaved"
VARIANTS = ("fp32", "bwn-packed", "tws-packed", "bwn-ckpt", "bibert-bitwise", "bibert-ckpt",
            "twn-packed", "bwn4-packed")
# The interleaved comparison's forms: (saved form, compute) by row name; fp32 first, the baseline.
INTERLEAVED = {"fp32": ("fp32", "integer"), "bwn-packed": ("bwn-packed", "integer"),
               "twn-packed": ("twn-packed", "integer"), "bwn4-packed": ("bwn4-packed", "integer"),
               "tws-packed": ("tws-packed", "integer"),
               "bwn-packed-float": ("bwn-packed", "float")}
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
    twn = spec_for(QuantConfig(2, 2, 8, "twn", "twn"))
    if "twn-packed" in variants:
        timed("twn-packed", workdir / "twn.safetensors",
              lambda: export.export_packed(params_for(twn), twn, workdir / "twn.safetensors"))
    if "bwn4-packed" in variants:
        bwn4 = spec_for(QuantConfig(1, 1, 4, "bwn", "bwn"))
        timed("bwn4-packed", workdir / "bwn4.safetensors",
              lambda: export.export_packed(params_for(bwn4), bwn4, workdir / "bwn4.safetensors"))
    if "tws-packed" in variants:
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
    from binarybert_jax import inference

    jax.block_until_ready(jax.numpy.zeros(()))  # start the backend before the baseline
    result = {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
              "rss_base_mib": _rss_mib()}

    start = time.perf_counter()
    predictor = inference.load_predictor(path)
    jax.block_until_ready((predictor.params, predictor.weight_codes))
    result["load_s"] = time.perf_counter() - start
    result["rss_load_mib"] = _rss_mib()
    result["kind"] = predictor.kind
    result["params_mib"] = predictor.resident_bytes / MIB

    inputs = _inputs(predictor.spec.config.vocab_size, batch, seq)
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


def _inputs(vocab: int, batch: int, seq: int) -> dict:
    """Real tokens everywhere (ids past BERT's special tokens, the first 1000, in a vocabulary
    that has them), two segments like a pair task."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(1000 if vocab > 2000 else 1, vocab, (batch, seq)).astype(np.int32)
    types = np.zeros_like(ids)
    types[:, seq // 2:] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": np.ones_like(ids)}


def interleaved(forms: dict[str, tuple[str, str]], seq: int, batch: int, repeats: int) -> dict:
    """Throughput, latency and resident parameter bytes of several saved forms in this process,
    their timed calls interleaved, and each form's ratios to the first one's.

    Args:
      forms: row name -> (path, compute), the baseline first (``inference.load_predictor``).
      seq, batch: the throughput batch is ``batch`` × ``seq``, the latency one 1 × ``seq``.
      repeats: timed rounds; each round times every form once at each batch shape.
    Returns:
      {row name: {kind, compute, params_bytes, latency_ms, throughput_seq_s, and the ratios
      ``throughput_x``, ``latency_x`` (baseline's latency / this one's: above 1 is faster),
      ``params_fraction``}}.
    """
    import jax
    from binarybert_jax import inference

    predictors = {name: inference.load_predictor(path, compute=compute)
                  for name, (path, compute) in forms.items()}
    vocab = min(p.spec.config.vocab_size for p in predictors.values())
    full = {k: jax.device_put(v) for k, v in _inputs(vocab, batch, seq).items()}
    single = {k: v[:1] for k, v in full.items()}
    times = {name: {"b1": [], "batch": []} for name in predictors}
    for p in predictors.values():  # compile both shapes first, outside the timings
        jax.block_until_ready((p.logits(single), p.logits(full)))
    for _ in range(repeats):
        for name, p in predictors.items():
            for shape, inputs in (("batch", full), ("b1", single)):
                start = time.perf_counter()
                jax.block_until_ready(p.logits(inputs))
                times[name][shape].append(time.perf_counter() - start)
    rows = {}
    for name, p in predictors.items():
        rows[name] = {"kind": p.kind, "compute": p.compute, "params_bytes": p.resident_bytes,
                      "latency_ms": 1000 * statistics.median(times[name]["b1"]),
                      "throughput_seq_s": batch / statistics.median(times[name]["batch"])}
    base = rows[next(iter(rows))]
    for r in rows.values():
        r["throughput_x"] = r["throughput_seq_s"] / base["throughput_seq_s"]
        r["latency_x"] = base["latency_ms"] / r["latency_ms"]
        r["params_fraction"] = r["params_bytes"] / base["params_bytes"]
    return rows


def interleaved_table(rows: dict[str, dict], batch: int, seq: int) -> str:
    lines = [f"| form | runs as | resident params MiB (× fp32) | throughput b{batch}×{seq} seq/s "
             f"(× fp32) | latency b1 ms (× fp32 speed) |", "|" + "---|" * 5]
    for name, r in rows.items():
        runs_as = r["kind"] if r["kind"] != "packed" else f"packed, {r['compute']}"
        lines.append(f"| {name} | {runs_as} | {r['params_bytes'] / MIB:.2f} "
                     f"({r['params_fraction']:.3f}) | {r['throughput_seq_s']:.1f} "
                     f"({r['throughput_x']:.2f}×) | {r['latency_ms']:.1f} ({r['latency_x']:.2f}×) |")
    return "\n".join(lines)


def interleaved_section(rows: dict[str, dict], info: dict, command: str, args) -> str:
    load = ", ".join(f"{x:.2f}" for x in info["loadavg"])
    return "\n".join([
        INTERLEAVED_SECTION, "",
        "all-MiniLM-L6-v2 with a 2-label head: the float32 checkpoint and the packed forms "
        "loaded by `inference.load_predictor` in one process, their timed calls interleaved "
        "(`benchmarks/inference.py`'s docstring).", "",
        "```", command, "```", "",
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores visible), jax "
        f"{info['jax']}; load average at the start {load}. Median of {args.repeats} rounds; "
        "ratios to fp32 measured in the same process.", "",
        interleaved_table(rows, args.batch, args.seq), ""])


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
        "- *load s*: `load_predictor` (read, check, lay the codes out as resident bit planes, "
        "move to the device). A packed model runs on its integer codes: its weights stay "
        "resident as 1- or 2-bit planes, expanded a layer at a time in the forward, and its "
        "products are the bfloat16 integer ones of the training forward. The 1-1-1 file "
        "(`bibert-bitwise`) runs bitwise: its planes become 32-bit words and every binarized "
        "product is XNOR-popcount (`bitwise.py`). `--interleaved` (and `benchmarks/bitwise.py` "
        "for 1-1-1) compares them with float32 in one process, interleaved, the fairer speed "
        "comparison on a shared machine.",
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
    parser.add_argument("--interleaved", action="store_true",
                        help="packed forms on integer codes against the float32 checkpoint in "
                             "one process, interleaved, with ratios")
    # Internal: the subprocesses' entry points.
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--interleaved-child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.seq, args.batch, args.repeats)))
        return 0
    if args.prepare:
        print(json.dumps(prepare(pathlib.Path(args.prepare), args.variants)))
        return 0
    if args.interleaved_child:
        forms = {k: tuple(v) for k, v in json.loads(args.interleaved_child).items()}
        print(json.dumps(interleaved(forms, args.seq, args.batch, args.repeats)))
        return 0
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "PYTHONPATH=. python -m benchmarks.inference " + " ".join(map(shlex.quote, argv))
    info = machine()  # first: the load average before this run adds its own
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.interleaved:
            needed = sorted({form for form, _ in INTERLEAVED.values()})
            saved = _subprocess(["--prepare", str(workdir), "--variants", *needed])
            forms = {name: (saved[form]["path"], compute)
                     for name, (form, compute) in INTERLEAVED.items()}
            rows = _subprocess(["--interleaved-child", json.dumps(forms), "--seq", str(args.seq),
                                "--batch", str(args.batch), "--repeats", str(args.repeats)])
            print(interleaved_table(rows, args.batch, args.seq))
            if args.json:
                pathlib.Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2))
            if args.out:
                markdown.write_section(pathlib.Path(args.out), INTERLEAVED_SECTION,
                                       interleaved_section(rows, info, command, args))
            return 0
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
