"""How close the float32 forward comes to a float64 forward, with the quantized products computed
on integer codes (``integer_dot``) and as today's float32 products of the values; and how far a
bfloat16 teacher's outputs move from its float32 ones.

    PYTHONPATH=. python -m benchmarks.integer_products --out BENCHMARKS.md

Model: the real all-MiniLM-L6-v2 checkpoint (its pretrained weights quantized as they are, with a
randomly initialised 2-label head), on MRPC dev pairs (``--examples``, max length 128, real
padding) tokenized by its tokenizer. Settings: TWN W2-E2-A8 (8-bit uniform activations, ranges
over the whole tensor: symmetric inputs, asymmetric attention probabilities and second FFN
input), the split binary W1-E1-A8 (``tws.split_params`` of it) and W2-E2-A4 (4-bit LSQ, steps
calibrated on the batch).

The reference is the same model run in float64 (``jax.enable_x64``, parameters and compute in
float64, float products), which is "the exact forward" up to float64's own rounding. Per output
(every hidden state and the logits): the largest absolute difference from it and the root mean
square of the differences over real tokens. Both float32 forwards compute the same quantizer
codes from slightly different inputs, so besides product rounding, the errors include codes that
flip at a rounding boundary (each flip moves an element by one quantization step, far above the
rounding of a product); the table counts them per forward (``flipped codes``, over the inputs of
the first layer's products, the rest follow from there).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import pathlib
import platform
import shlex
import sys
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.markdown import publish
from binarybert_jax import assets, hf_import, quant, tws
from binarybert_jax.data import glue, tasks
from binarybert_jax.model import BertModel, ModelSpec, QuantConfig, QuantDense, calibrate_act_quantizers
from binarybert_jax.tokenizer import load_tokenizer

HEADING = "## Integer-domain products: distance to a float64 forward"
SETTINGS = {
    "W2A8 (TWN)": QuantConfig(2, 2, 8),
    "W1A8 (TWS split)": QuantConfig(2, 2, 8),  # split below
    "W2A4 (TWN, LSQ)": QuantConfig(2, 2, 4, act_method="lsq"),
}


# The shared data folder beside the checkout (``../shared``).
DEFAULT_GLUE_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def mrpc_batch(tokenizer, examples: int, glue_dir, max_length: int = 128) -> dict:
    """The first ``examples`` MRPC dev pairs of ``glue_dir``, tokenized, padded to ``max_length``."""
    rows = glue.read_tsv(pathlib.Path(glue_dir) / "MRPC" / "dev.tsv", tasks.get_task("mrpc"), "dev").examples[:examples]
    enc = tokenizer([r.text_a for r in rows], [r.text_b for r in rows], max_length=max_length,
                    truncation=True, padding="max_length", return_tensors="np")
    return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"],
            "attention_mask": enc["attention_mask"]}


@functools.lru_cache(maxsize=2)
def _minilm(path: str):
    return hf_import.load_hf_checkpoint(path)


def pretrained_model(spec_quant: QuantConfig, split: bool, batch: dict, minilm=None,
                     layers: Optional[int] = None):
    """MiniLM's weights under ``spec_quant`` (split by TWS when asked), with LSQ steps calibrated
    on ``batch``; returns ``(spec, params)``. ``layers``: keep only the first ``layers``
    Transformer layers (a shorter program to compile; None keeps all six)."""
    config, imported = _minilm(str(minilm or assets.minilm_dir()))
    if layers is not None:
        config = dataclasses.replace(config, num_layers=layers)
        imported = {k: v for k, v in imported.items()
                    if not (k.startswith("encoder/layer_") and int(k.split("/")[1][len("layer_"):]) >= layers)}
    spec = ModelSpec(config, spec_quant)
    model = spec.build()
    init = jax.jit(model.init)(jax.random.key(0), batch["input_ids"][:1])["params"]
    params = hf_import.merge_pretrained(init, imported)
    if split:
        params, spec = tws.split_params(params, spec)
    if spec.quant.act_method == "lsq":
        params = calibrate_act_quantizers(spec.build(), params, batch["input_ids"], batch["token_type_ids"],
                                     batch["attention_mask"])
    return spec, params


def _outputs(model: BertModel, params, batch: dict) -> list[np.ndarray]:
    out = jax.jit(lambda p, b: model.apply({"params": p}, **b))(params, batch)
    return [np.asarray(h, np.float64) for h in out["hidden_states"]] + [np.asarray(out["logits"], np.float64)]


def forward_errors(spec: ModelSpec, params, batch: dict) -> dict:
    """Distance of each float32 forward (integer-domain products, and float products of the
    values) to the float64 forward, per output: ``{"integer"|"float": {"max": [...], "rms": [...]}}``
    with one entry per hidden state then the logits."""
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        batch64 = {k: np.asarray(v) for k, v in batch.items()}
        reference = _outputs(spec.build(jnp.float64, integer_products=False), params64, batch64)
    real = np.asarray(batch["attention_mask"], bool)
    result = {}
    for name, integer in (("integer", True), ("float", False)):
        outs = _outputs(spec.build(jnp.float32, integer_products=integer), params, batch)
        maxes, rmses = [], []
        for got, ref in zip(outs, reference):
            diff = got - ref
            if diff.ndim == 3:  # hidden states: real tokens only
                diff = diff[real]
            maxes.append(float(np.abs(diff).max()))
            rmses.append(float(np.sqrt(np.mean(diff ** 2))))
        result[name] = {"max": maxes, "rms": rmses}
    return result


def _values64(codes: quant.QuantizedCodes) -> np.ndarray:
    out = np.asarray(codes.codes, np.float64) * np.asarray(codes.scale, np.float64)
    return out if codes.zero is None else out + np.asarray(codes.zero, np.float64)


def dense_product_errors(spec: ModelSpec, params, batch: dict, integer: bool) -> dict:
    """Every dense layer of one float32 forward against the float64 product of its own quantized
    operands (the same codes and scales, so no code flips): ``{"max": .., "rms": .., "layers": ..}``
    over all their outputs. One jitted forward returns each dense layer's output and operands."""
    model = spec.build(jnp.float32, integer_products=integer)

    def forward(params, batch):
        records = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if (isinstance(context.module, QuantDense) and context.method_name == "__call__"
                    and context.module.quantized and not kwargs.get("return_operands")):
                layer = context.module
                products, bias = layer.clone(parent=None).apply(layer.variables, *args, **kwargs,
                                                                return_operands=True)
                records.append((out, [(x, w, groups) for _, x, _, w, groups in products], bias))
            return out

        with nn.intercept_methods(interceptor):
            model.apply({"params": params}, **batch)
        return records

    records = jax.jit(forward)(params, batch)
    sq_sum, count, worst = 0.0, 0, 0.0
    for out, products, bias in records:
        ref = np.asarray(bias, np.float64)
        for x_codes, w_codes, grouped in products:  # ``grouped``: a traced flag, now concrete
            w = _values64(w_codes)
            ref = ref + np.asarray(_values64(x_codes) @ (w.sum(0) if bool(grouped) else w))
        diff = np.asarray(out, np.float64) - ref
        sq_sum, count = sq_sum + float(np.sum(diff ** 2)), count + diff.size
        worst = max(worst, float(np.abs(diff).max()))
    return {"max": worst, "rms": float(np.sqrt(sq_sum / max(count, 1))), "layers": len(records)}


def teacher_bf16_shift(params, config, batch: dict) -> dict:
    """How far a full-precision model's outputs move when it computes in bfloat16: largest and
    RMS difference from its float32 outputs, per output (hidden states, attention scores of the
    last layer, logits)."""
    spec = ModelSpec(config)
    outs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = spec.build(dtype)
        o = jax.jit(lambda p, b: model.apply({"params": p}, **b))(params, batch)
        outs[dtype] = ([np.asarray(h, np.float64) for h in o["hidden_states"]]
                       + [np.asarray(o["attention_scores"][-1], np.float64), np.asarray(o["logits"], np.float64)])
    real = np.asarray(batch["attention_mask"], bool)
    pair = real[:, None, :, None] & real[:, None, None, :]
    shift = {"max": [], "rms": [], "scale": []}
    for got, ref in zip(outs[jnp.bfloat16], outs[jnp.float32]):
        diff, base = got - ref, ref
        if diff.ndim == 3:
            diff, base = diff[real], base[real]
        elif diff.ndim == 4:
            diff, base = diff[np.broadcast_to(pair, diff.shape)], base[np.broadcast_to(pair, base.shape)]
        shift["max"].append(float(np.abs(diff).max()))
        shift["rms"].append(float(np.sqrt(np.mean(diff ** 2))))
        shift["scale"].append(float(np.sqrt(np.mean(base ** 2))))
    return shift


def checkpoint_metrics(checkpoint, task: str, glue_dir, batch_size: int = 64) -> dict:
    """A trained checkpoint's dev metrics with the integer-domain products and with the float32
    products of the values, and how many dev predictions the two disagree on."""
    from binarybert_jax import checkpoints, metrics, sharding
    from binarybert_jax.data import encode
    from binarybert_jax.evaluate import make_predict_step, predict

    params, spec, _ = checkpoints.load_model(checkpoint)
    lat_diag = checkpoints.load_lat_diag(checkpoint)
    spec_task = tasks.get_task(task)
    arrays = encode.load_encoded_split(load_tokenizer(assets.minilm_dir()), spec_task, "dev", data_dir=glue_dir,
                                       cache_dir=assets.cache_dir() / "tokenized")
    mesh = sharding.make_mesh(1)
    out = {}
    for name, integer in (("integer", True), ("float", False)):
        model = spec.without_axis().build(integer_products=integer)
        logits = predict(make_predict_step(model, mesh), sharding.replicate(params, mesh), arrays,
                         batch_size, mesh, lat_diag=None if lat_diag is None else sharding.replicate(lat_diag, mesh))
        preds = logits[:, 0] if spec_task.is_regression else logits.argmax(-1)
        out[name] = {"logits": logits, "preds": preds,
                     "metrics": {k: float(v) for k, v in metrics.glue_metrics(spec_task, preds, arrays["labels"]).items()}}
    diff = np.abs(out["integer"]["logits"] - out["float"]["logits"])
    return {"integer": out["integer"]["metrics"], "float": out["float"]["metrics"],
            "flipped_predictions": int(np.sum(out["integer"]["preds"] != out["float"]["preds"])),
            "examples": int(len(diff)), "max_logit_difference": float(diff.max())}


def _fmt(x: float) -> str:
    return f"{x:.2e}"


def report(examples: int, glue_dir=DEFAULT_GLUE_DIR,
           command: str = "PYTHONPATH=. python -m benchmarks.integer_products --out BENCHMARKS.md") -> str:
    tokenizer = load_tokenizer(assets.minilm_dir())
    batch = mrpc_batch(tokenizer, examples, glue_dir)
    lines = [HEADING, "",
             "The float32 forward with the quantized products on integer codes (`integer_dot.py`, "
             "the default) and as float32 products of the quantized values (before), each against "
             "the same model in float64; how each figure is taken: the docstring of "
             "`benchmarks/integer_products.py`.", "",
             "```", command, "```", "",
             f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on "
             f"{platform.processor() or platform.machine()}, jax {jax.__version__}; real "
             f"all-MiniLM-L6-v2 weights (6 layers, hidden 384), the first {examples} MRPC dev pairs "
             "at length 128.", "",
             "*Dense products*: every quantized dense layer of the forward (Q, K, V, attention output, "
             "FFN in and out, pooler) against the float64 product of its own quantized operands "
             "(same codes: rounding alone). *Whole forward*: each float32 forward against the "
             "float64 forward; there both float32 forwards also flip codes at rounding boundaries "
             "(an 8-bit step is ~1e-2, a product's rounding ~1e-7), which is most of what they show.",
             "",
             "| setting | products | dense products: max abs error | dense products: RMS error | "
             "whole forward, hidden states: max abs (worst layer) | RMS (worst layer) | logits max abs |",
             "|---|---|---|---|---|---|---|"]
    for name, q in SETTINGS.items():
        spec, params = pretrained_model(q, "split" in name, batch)
        errs = forward_errors(spec, params, batch)
        for path in ("integer", "float"):
            e, d = errs[path], dense_product_errors(spec, params, batch, path == "integer")
            lines.append(f"| {name} | {'integer (bf16, exact)' if path == 'integer' else 'float32 values'} | "
                         f"{_fmt(d['max'])} | {_fmt(d['rms'])} | "
                         f"{_fmt(max(e['max'][:-1]))} | {_fmt(max(e['rms'][:-1]))} | {_fmt(e['max'][-1])} |")
    config, imported = hf_import.load_hf_checkpoint(assets.minilm_dir())
    init = ModelSpec(config).build().init(jax.random.key(0), batch["input_ids"][:1])["params"]
    shift = teacher_bf16_shift(hf_import.merge_pretrained(init, imported), config, batch)
    names = [f"hidden {i}" for i in range(len(shift["max"]) - 2)] + ["scores (last layer)", "logits"]
    lines += ["", "A full-precision teacher computing in bfloat16 (`--config.teacher_dtype=bfloat16`) "
              "against its float32 outputs (its outputs are the students' targets):", "",
              "| output | max abs shift | RMS shift | RMS of the output |", "|---|---|---|---|"]
    for n, mx, rms, sc in zip(names, shift["max"], shift["rms"], shift["scale"]):
        lines.append(f"| {n} | {_fmt(mx)} | {_fmt(rms)} | {_fmt(sc)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--glue-dir", default=str(DEFAULT_GLUE_DIR), help="GLUE data (MRPC/dev.tsv)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                        help="trained model checkpoint(s): also compare their dev metrics both ways")
    parser.add_argument("--task", default="mrpc", help="the checkpoints' GLUE task")
    parser.add_argument("--out", default="", help="Markdown file to write the section into")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "PYTHONPATH=. python -m benchmarks.integer_products " + " ".join(map(shlex.quote, argv))
    text = report(args.examples, args.glue_dir, command)
    if args.checkpoint:
        text += checkpoint_section(args.checkpoint, args.task, args.glue_dir)
    publish(text, args.out, HEADING)


def checkpoint_section(paths, task: str, glue_dir) -> str:
    lines = ["", f"Trained checkpoints' {task.upper()} dev metrics with each kind of product "
             "(`--checkpoint DIR`):", "",
             "| checkpoint | integer products | float32 products | predictions that differ | "
             "largest logit difference |", "|---|---|---|---|---|"]
    for path in paths:
        r = checkpoint_metrics(path, task, glue_dir)
        fmt = lambda m: ", ".join(f"{k} {100 * v:.2f}" for k, v in m.items())  # noqa: E731
        lines.append(f"| `{pathlib.Path(path).as_posix()}` | {fmt(r['integer'])} | {fmt(r['float'])} | "
                     f"{r['flipped_predictions']} of {r['examples']} | {r['max_logit_difference']:.2e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
