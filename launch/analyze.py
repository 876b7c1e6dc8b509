"""Loss landscapes and top Hessian eigenvalues of FP, ternary and binary models (the paper's §2),
and how much of each quantized activation the quantizers' clips cut.

    python -m launch.analyze --config configs/analyze.py:task=mrpc --config.checkpoint=runs/mrpc_teacher/finetune/best --config.data_dir=$GLUE_DIR --out results/analysis_mrpc
    python -m launch.analyze --config configs/analyze.py:task=mrpc --config.pipeline_workdir=runs/mrpc_w1a8 --config.data_dir=$GLUE_DIR "--config.analyses=('clipping',)" --out results/clipping_mrpc

configs/analyze.py has the keys (``analyses`` picks the parts). Writes to ``--out``:
``analysis.md`` (the tables), ``analysis.json`` (everything, with the config, the git commit and
the wall time) and, with the landscape, ``landscape.png`` (every model, on one loss scale),
``landscape_<model>.csv`` and ``landscape.json`` (the grids). The logic lives in
``binarybert_jax.analysis``.
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import app, flags
from ml_collections import config_flags

from binarybert_jax.errors import UserError
from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with :arg.", lock_config=True)
flags.DEFINE_string("out", None, "Directory for the figures, tables and grids.")
flags.mark_flags_as_required(["config", "out"])

QUANT_LABELS = {"fp": "FP", "twn": "TWN", "bwn": "BWN"}


def _pipeline_rows(config) -> list[dict]:
    """The results.json rows of ``config.pipeline_models`` (each with its ``checkpoint``)."""
    from binarybert_jax import pipeline, workdirs
    workdir = workdirs.as_path(config.pipeline_workdir)  # local or gs://
    results = workdir / "results.json"
    if not results.is_file():
        raise UserError(f"{results} not found: is {workdir} a finished pipeline workdir?")
    rows = {r["model"]: dict(r, checkpoint=pipeline.row_checkpoint(workdir, r))
            for r in workdirs.read_json(results)["rows"]}
    missing = [m for m in config.pipeline_models if m not in rows]
    if missing:
        raise UserError(f"{results} has no rows {missing}; it has {sorted(rows)}")
    return [rows[m] for m in config.pipeline_models]


def _tokenizer_dir(config) -> str:
    """--config.tokenizer, else the one the (first) checkpoint names, else the pretrained dir."""
    from binarybert_jax import assets, checkpoints
    if bool(config.checkpoint) == bool(config.pipeline_workdir):
        raise UserError("give exactly one of --config.checkpoint (a model quantized without "
                         "training) and --config.pipeline_workdir (its trained models)")
    first = config.checkpoint or _pipeline_rows(config)[0]["checkpoint"]
    named = checkpoints.read_model_meta(first).get("info", {}).get("tokenizer", "")
    return config.tokenizer or named or config.pretrained or str(assets.minilm_dir())


def _models(config, first_batch, analyses):
    """[(name, label, spec, params)] and a sentence saying where they come from."""
    from binarybert_jax import analysis, checkpoints
    if config.checkpoint:
        params, spec, _ = checkpoints.load_model(config.checkpoint)
        act_bits = None if config.act_bits < 0 else config.act_bits
        models = []
        for method in ("fp", "twn", "bwn"):
            s, p = analysis.quantize_without_training(spec, params, method, act_bits, first_batch)
            models.append((method, f"{QUANT_LABELS[method]} {s.quant.wea(letters=True)}", s, p))
        protocol = (f"The paper's §2 protocol: the fine-tuned model `{config.checkpoint}` in full "
                    f"precision and quantized *without training* to TWN (W-E 2-2) and BWN (W-E 1-1), "
                    f"activations at {models[0][2].quant.act_bits} bits"
                    f"{' (not quantized)' if models[0][2].quant.act_bits >= 32 else ''}; every "
                    "model has the same latent weights.")
        return models, protocol
    models = []
    for row in _pipeline_rows(config):
        params, spec, _ = checkpoints.load_model(row["checkpoint"])
        if set(analyses) - {"clipping"}:  # the landscape and the Hessian need one latent matrix
            analysis.check_unsplit(spec)
        models.append((row["model"], f"{row['description']} {spec.quant.wea(letters=True)}", spec, params))
    protocol = (f"The trained models of the pipeline workdir `{config.pipeline_workdir}` "
                f"({', '.join(config.pipeline_models)}), each at its own bits.")
    return models, protocol


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.setup_logging()
    start = time.perf_counter()
    import itertools

    from binarybert_jax import analysis, assets, workdirs
    from binarybert_jax.data import batching, encode, glue, tasks
    from binarybert_jax.tokenizer import load_tokenizer

    config = FLAGS.config
    # What is read (checkpoints, a pipeline workdir and the models it names, the data) is never
    # written over, and --out holds analyses only.
    inputs = {"--config.checkpoint": config.checkpoint, "--config.pipeline_workdir": config.pipeline_workdir,
              "--config.data_dir": config.data_dir, "--config.tokenizer": config.tokenizer,
              "--config.pretrained": config.pretrained}
    if config.pipeline_workdir:
        inputs.update({f"the pipeline's {r['model']} model": r["checkpoint"] for r in _pipeline_rows(config)})
    for flag, path in inputs.items():
        workdirs.check_output("--out", FLAGS.out, {flag: path})
    workdirs.check_workdir(FLAGS.out, workdirs.ANALYSIS, "--out")
    out = pathlib.Path(FLAGS.out)
    try:
        task = tasks.get_glue_task(config.task)
    except ValueError as e:
        raise UserError(f"--config.task: {e}") from None

    # ---- Data: a fixed list of training batches ----
    data_dir = config.data_dir or glue.glue_dir()
    if not data_dir:
        raise UserError("no GLUE data: set --config.data_dir=DIR or $GLUE_DIR")
    tokenizer = load_tokenizer(_tokenizer_dir(config))
    max_len = config.max_seq_length or task.max_seq_length
    arrays = encode.load_encoded_split(tokenizer, task, "train", data_dir=data_dir, max_length=max_len,
                                       cache_dir=assets.cache_dir() / "tokenized",
                                       limit=config.train_limit or None)
    analyses = tuple(config.analyses)
    unknown = sorted(set(analyses) - set(analysis.ANALYSES))
    if unknown or not analyses:
        raise UserError(f"--config.analyses {analyses}: allowed (one or more) {analysis.ANALYSES}")
    wanted = max([config.landscape_batches] * ("landscape" in analyses)
                 + [config.hessian_batches] * ("hessian" in analyses)
                 + [config.clipping_batches] * ("clipping" in analyses))
    batches = list(itertools.islice(batching.iterate_batches(
        arrays, config.batch_size, shuffle=True, seed=config.seed,
        bucket_lengths=tuple(config.bucket_lengths) or None), wanted))
    if len(batches) < wanted:
        raise UserError(f"{len(arrays['labels'])} training examples make {len(batches)} batches of "
                         f"{config.batch_size}; the analysis asks for {wanted}")
    landscape_batches, hessian_batches = batches[:config.landscape_batches], batches[:config.hessian_batches]
    clipping_batches = batches[:config.clipping_batches]
    if config.hessian_examples:
        # The first rows of the first batch: a Hessian-vector product costs far more than a loss.
        hessian_batches = [{k: v[:config.hessian_examples] for k, v in batches[0].items()}]

    def describe(bs):
        return (f"{sum(len(b['labels']) for b in bs)} examples in {len(bs)} batches of lengths "
                f"{[b['input_ids'].shape[1] for b in bs]}")

    # ---- Models ----
    models, protocol = _models(config, batches[0], analyses)
    workdirs.claim_workdir(out, workdirs.ANALYSIS, "--out")
    labels = {name: label for name, label, _, _ in models}
    data = []
    if "landscape" in analyses:
        data.append(f"landscape on {describe(landscape_batches)}")
    if "hessian" in analyses:
        data.append(f"Hessian on {describe(hessian_batches)} (the first of the same)")
    if "clipping" in analyses:
        data.append(f"clipping on {describe(clipping_batches)}")
    report = {
        "task": task.name, "protocol": protocol, **common.git_state(), "analyses": list(analyses),
        "models": [{"name": n, "label": l, "spec": s.to_dict()} for n, l, s, _ in models],
        "data": {"description": f"{'; '.join(data)}; training batches, shuffle seed {config.seed}; "
                                "eval mode"},
    }
    timing = {}

    # ---- Landscape and eigenvalues, model by model ----
    if "landscape" in analyses:
        matrices = tuple(config.landscape.matrices)
        coords = analysis.grid_coords(config.landscape.steps, config.landscape.step)
        landscapes, timing["landscape_s"] = {}, {}
        for name, label, spec, params in models:
            t = time.perf_counter()
            landscapes[name] = analysis.landscape_grid(spec, params, landscape_batches, matrices, coords,
                                                       progress=config.progress_bar,
                                                       desc=f"landscape {name}")
            timing["landscape_s"][name] = round(time.perf_counter() - t, 1)
        analysis.plot_landscapes(out / "landscape.png", {labels[n]: l for n, l in landscapes.items()})
        for name, land in landscapes.items():
            workdirs.write_text(out / f"landscape_{name}.csv", analysis.landscape_csv(land))
        workdirs.write_text(out / "landscape.json",
                               json.dumps({n: l.to_dict() for n, l in landscapes.items()}))
        report.update({
            "landscape_matrices": list(matrices), "landscape_coords": [float(c) for c in coords],
            "landscape": {n: {"summary": analysis.landscape_summary(l), "scales": list(l.scales)}
                          for n, l in landscapes.items()}})
    if "hessian" in analyses:
        parts = tuple(config.hessian.parts)
        layers = tuple(config.hessian.layers) or None
        eigen, timing["hessian_s"] = {}, {}
        for name, label, spec, params in models:
            t = time.perf_counter()
            eigen[name] = analysis.top_eigenvalues(
                spec, params, hessian_batches, layers=layers, parts=parts, method=config.hessian.method,
                iterations=config.hessian.iterations, tol=config.hessian.tol, seed=config.seed,
                progress=config.progress_bar, desc=f"hessian {name}")
            timing["hessian_s"][name] = round(time.perf_counter() - t, 1)
        rows = []
        for part, layer in eigen[models[0][0]]:
            row = {"part": part, "layer": layer}
            for name, _, spec, params in models:
                e = eigen[name][(part, layer)]
                row[name] = {"lambda_max": e.value, "iterations": e.iterations, "converged": e.converged,
                             "history": e.history,
                             "quant_error": analysis.quantization_error(
                                 spec, params, analysis.part_kernels(part, layer))}
            rows.append(row)
        report.update({
            "eigen_method": f"{config.hessian.method}, at most {config.hessian.iterations} "
                            f"Hessian-vector products, relative tolerance {config.hessian.tol:g}",
            "eigenvalues": rows})
    if "clipping" in analyses:
        # Models without uniform activation quantizers (full precision at 32 bits) have no clip.
        clipping, timing["clipping_s"] = {}, {}
        for name, label, spec, params in models:
            if spec.quant.act_method != "uniform" or not spec.quant.quantizes_acts:
                continue
            t = time.perf_counter()
            totals = analysis.activation_clipping(spec, params, clipping_batches)
            clipping[name] = {"by_site": analysis.clipping_by_site(totals), "per_quantizer": totals}
            timing["clipping_s"][name] = round(time.perf_counter() - t, 1)
        if not clipping:
            raise UserError("--config.analyses has clipping, but no model has uniform activation "
                             "quantizers: set --config.act_bits=8 (a checkpoint quantized without "
                             "training), or analyse trained W-A8 models")
        report["clipping"] = clipping

    total = time.perf_counter() - start
    import jax
    report.update({
        "timing": {**timing, "total_s": round(total, 1),
                   "description": f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
                                  f"including compilation and data loading"},
        "config": json.loads(config.to_json_best_effort()),
    })
    workdirs.write_json(out / "analysis.json", report)
    workdirs.write_text(out / "config.json", config.to_json_best_effort(indent=2, sort_keys=True))
    workdirs.write_text(out / "analysis.md", analysis.markdown_report(report))
    print(f"wrote {out / 'analysis.md'} ({total:.0f} s)")


if __name__ == "__main__":
    common.run_main(app.run, main, flags_parser=common.parse_flags)
