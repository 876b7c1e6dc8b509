"""The whole BinaryBERT method as one resumable pipeline of stages, each declared in the config.

``config.pipeline.stages`` lists the stages to run, in order; ``config.stages.<name>`` declares each
one (configs/pipeline.py has the paper's recipe). A stage is one of four kinds:

    train           ``train.train_and_evaluate`` with the stage's own training keys (``kd``,
                    ``student``, ``batch_size``, ``stage1``, ``stage2``, ``eval_every_steps``) over the
                    shared ones (task, data, optimizer, seed, ...); ``teacher`` and ``init`` name
                    earlier stages; ``checkpoint`` gives a trained model instead of training one
    prune           a half-width model of ``source``: heads and FFN neurons ranked by importance on
                    ``batches`` training batches, the top ``width`` kept (halfwidth.py)
    split           ternary weight splitting of ``source`` into a binary model (tws.py)
    adaptive_split  per-matrix sensitivity of the ternary ``source``, an exact knapsack under a size
                    budget, the chosen matrices split and the rest binary (adaptive.py)

Every stage writes its outputs under ``workdir/<name>`` and is skipped when complete; a training
stage resumes inside itself (train.py). Rerun the same command after an interruption. The report
(``results.json``, ``results.md``, ``training_curves.png``) has one row per trained stage.
A key the pipeline would not honour is an error naming it: every setting a user can see takes effect.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

import ml_collections
import numpy as np
from etils import epath

from binarybert_jax import adaptive, checkpoints, evaluate, flops, halfwidth, metrics, resolve, size, train, tws
from binarybert_jax.data import batching, tasks
from binarybert_jax.errors import UserError
from binarybert_jax.model import ModelSpec
from binarybert_jax.sharding import make_mesh, model_batch
from binarybert_jax.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

# The keys of a training run that belong to each training stage, never to the pipeline as a whole.
TRAIN_KEYS = ("kd", "student", "batch_size", "stage1", "stage2", "eval_every_steps")
# Top-level base-schema keys the pipeline sets per stage (from ``teacher`` / ``init`` references).
RESOLVED_KEYS = ("teacher", "init_checkpoint")
STAGE_KEYS = {
    "train": ("kind", "description", "teacher", "init", "checkpoint") + TRAIN_KEYS,
    "prune": ("kind", "source", "width", "batches", "batch_size"),
    "split": ("kind", "source"),
    "adaptive_split": ("kind", "source", "budget_mb", "fraction", "sensitivity_batches", "batch_size",
                       "baselines"),
}
REFERENCE_KEYS = ("teacher", "init", "source")


@dataclasses.dataclass
class StageResult:
    """One trained (or given) model of the report."""

    name: str
    description: str
    checkpoint: str          # the model checkpoint the row reports (best on dev)
    final_checkpoint: str
    best: dict
    final: dict
    spec: ModelSpec
    workdir: Optional[str] = None  # the training run's workdir, for the training curves


class PipelineConfigError(UserError):
    """The pipeline config declares something the pipeline cannot run."""


# ==============================================================================================
# The recipe: checks, and one stage's training config.
# ==============================================================================================
def check_config(config) -> None:
    """Raises PipelineConfigError for anything the pipeline would not honour, before any work."""
    stray = [k for k in TRAIN_KEYS + RESOLVED_KEYS if k in config]
    if stray:
        raise PipelineConfigError(
            f"pipeline config has top-level {stray}: the pipeline sets these per stage; use "
            f"--config.stages.<name>.<key> (stages: {', '.join(config.stages.keys())})")
    order = tuple(config.pipeline.stages)
    seen: dict[str, str] = {}
    for name in order:
        if name not in config.stages:
            raise PipelineConfigError(f"config.pipeline.stages names {name!r}, which config.stages does "
                                      f"not declare; declared: {sorted(config.stages.keys())}")
        section = config.stages[name]
        kind = section.get("kind", "")
        if kind not in STAGE_KEYS:
            raise PipelineConfigError(f"config.stages.{name}.kind={kind!r}; allowed: {sorted(STAGE_KEYS)}")
        unknown = sorted(set(section.keys()) - set(STAGE_KEYS[kind]))
        missing = sorted(set(STAGE_KEYS[kind]) - set(section.keys()))
        if unknown or missing:
            raise PipelineConfigError(
                f"config.stages.{name} ({kind}): " + "; ".join(
                    ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else []))
                + f"; a {kind} stage has {list(STAGE_KEYS[kind])}")
        for ref in REFERENCE_KEYS:
            target = section.get(ref, "")
            if target and target not in seen:
                raise PipelineConfigError(
                    f"config.stages.{name}.{ref}={target!r} must name a stage that runs before it; "
                    f"before {name}: {list(seen) or 'none'}")
        seen[name] = kind


def stage_config(config, name: str, teacher: str, init: str) -> ml_collections.ConfigDict:
    """The base-schema training config of stage ``name``: the shared keys, the stage's training
    keys, and its resolved teacher and init checkpoints."""
    shared = {k: v for k, v in config.to_dict().items() if k not in ("pipeline", "stages")}
    section = config.stages[name].to_dict()
    c = ml_collections.ConfigDict({**shared, **{k: section[k] for k in TRAIN_KEYS}})
    c.teacher, c.init_checkpoint = teacher, init
    return c


# ==============================================================================================
# The stages.
# ==============================================================================================
class _Interrupted(Exception):
    pass


def _train(config, workdir: epath.Path, name: str, outputs: dict, context: dict) -> StageResult:
    """Trains stage ``name`` (or takes its given checkpoint). ``context`` fills placeholders of its
    description, e.g. ``{budget_mb:.2f}`` after an adaptive split."""
    section = config.stages[name]
    description = section.description.format(**context)
    if section.checkpoint:  # a trained model given instead of training one
        spec = checkpoints.load_model_spec(section.checkpoint)
        dev = checkpoints.read_model_meta(section.checkpoint).get("info", {}).get("dev", {})
        return StageResult(name, f"{description} (given)", section.checkpoint,
                           section.checkpoint, dev, dev, spec)
    c = stage_config(config, name, outputs.get(section.teacher, ""), outputs.get(section.init, ""))
    log.info("pipeline: stage %s", name)
    result = train.train_and_evaluate(c, workdir / name)
    if result.get("interrupted"):
        raise _Interrupted(name)
    run = workdir / name
    best = run / result["best_checkpoint"]
    return StageResult(name, description, str(best), str(run / result["final_checkpoint"]),
                       result["best"], result["final"], checkpoints.load_model_spec(best), str(run))


def _batches(config, task, count: int, batch_size: int, seed_offset: int) -> list[dict]:
    """``count`` training batches (for importance and sensitivity estimates)."""
    arrays, _ = resolve.load_data(config, task, load_tokenizer(resolve.tokenizer_dir(config)))
    it = batching.iterate_batches(arrays, batch_size, shuffle=True, seed=config.seed + seed_offset,
                                  process_index=0, process_count=1)
    out = []
    for batch in it:
        out.append({k: v for k, v in model_batch(batch).items() if k != "example_mask"})
        if len(out) == count:
            break
    return out


def _prune(config, workdir: epath.Path, name: str, outputs: dict, task) -> None:
    section, out = config.stages[name], workdir / name
    if not checkpoints.is_model_checkpoint(out):
        halfwidth.make_half_width_checkpoint(outputs[section.source], out,
                                             _batches(config, task, section.batches, section.batch_size, 1),
                                             width=section.width)


def _split(config, workdir: epath.Path, name: str, outputs: dict) -> None:
    out = workdir / name
    if not checkpoints.is_model_checkpoint(out):
        tws.split_checkpoint(outputs[config.stages[name].source], out)


def run_pipeline(config, workdir) -> dict:
    """Runs every stage of ``config.pipeline.stages`` (skipping completed ones) and writes the report.

    Returns:
      The report dict also written to ``workdir/results.json``, or ``{"interrupted": True,
      "stage": name}`` when a training stage stopped early (``stop_after_steps``).
    """
    check_config(config)
    checkpoints.check_workdir(workdir, checkpoints.PIPELINE)
    workdir = checkpoints.as_path(workdir)
    for name in config.pipeline.stages:  # a given checkpoint is read: never write over it
        checkpoints.check_output("--workdir", workdir, {
            f"--config.stages.{name}.checkpoint": config.stages[name].get("checkpoint")})
    for key in ("pretrained", "data_dir"):
        checkpoints.check_output("--workdir", workdir, {f"--config.{key}": config.get(key)})
    recorded = workdir / "pipeline_config.json"
    if recorded.is_file():  # each stage checks its own keys again when it runs
        resolve.check_resume(checkpoints.read_json(recorded), config, workdir)
    checkpoints.claim_workdir(workdir, checkpoints.PIPELINE)
    checkpoints.sync(f"workdir:{workdir}")
    with checkpoints.WorkdirLock(workdir):
        checkpoints.write_text(recorded, config.to_json_best_effort(indent=2, sort_keys=True))
        return _run_stages(config, workdir)


def _run_stages(config, workdir: epath.Path) -> dict:
    task = tasks.get_task(config.task)
    rows: list[StageResult] = []
    outputs: dict[str, str] = {}  # stage -> the model checkpoint later stages refer to
    adaptive_info = None
    try:
        for name in config.pipeline.stages:
            kind = config.stages[name].kind
            if kind == "train":
                row = _train(config, workdir, name, outputs, adaptive_info or {})
                rows.append(row)
                outputs[name] = row.checkpoint
            elif kind == "prune":
                _prune(config, workdir, name, outputs, task)
                outputs[name] = str(workdir / name)
            elif kind == "split":
                _split(config, workdir, name, outputs)
                outputs[name] = str(workdir / name)
            else:
                adaptive_info = _plan_adaptive(config, workdir, name, outputs, task)
                outputs[name] = str(workdir / name)
    except _Interrupted as e:
        log.info("pipeline: stage %s stopped early (stop_after_steps); rerun to resume", e)
        return {"interrupted": True, "stage": str(e)}
    return write_report(workdir, task, rows, config, adaptive_info)


def _plan_adaptive(config, workdir: epath.Path, name: str, outputs: dict, task) -> dict:
    """Plans the mixed split of the ternary model under the budget (cached in ``<name>.json``) and
    writes the mixed binary model's initial checkpoint to ``workdir/<name>``."""
    section = config.stages[name]
    plan_file, init = workdir / f"{name}.json", workdir / name
    if plan_file.is_file() and checkpoints.is_model_checkpoint(init):
        return checkpoints.read_json(plan_file)
    source = outputs[section.source]
    params, spec, _ = checkpoints.load_model(source)
    batches = _batches(config, task, section.sensitivity_batches, section.batch_size, 2)
    _, none_bits, full_bits = adaptive.split_costs(spec)
    none, full = none_bits / 8 / size.MIB, full_bits / 8 / size.MIB
    budget = section.budget_mb or none + section.fraction * (full - none)
    # Sensitivities against the ternary model's own outputs (adaptive.py's default): a
    # non-negative divergence with less variance on a few batches than the teacher's loss.
    plan = adaptive.plan_adaptive_split(spec, params, batches, budget, seed=config.seed)
    tws.split_checkpoint(source, init, only=set(plan.chosen))
    baseline_scores = {}
    if section.baselines:
        # The paper's min / random / max orders at the same budget, compared right after
        # splitting (before any binary training), where the choice of matrices is all that differs.
        _, dev = resolve.load_data(config, task, load_tokenizer(resolve.tokenizer_dir(config)))
        mesh = make_mesh()
        for order, chosen in {"adaptive": plan.chosen, **plan.baselines}.items():
            split_params, split_spec = tws.split_params(params, spec, only=set(chosen))
            scores = evaluate.evaluate_model(split_spec, split_params, task, dev, config.eval_batch_size, mesh)
            baseline_scores[order] = {"split": len(chosen), "dev": scores,
                                      "size_mb": size.model_size_bits(split_spec).mebibytes}
    info = {"budget_mb": budget, "size_no_split_mb": none, "size_all_split_mb": full,
            "chosen": sorted(plan.chosen), "size_mb": plan.size_mb,
            "sensitivities": {k: float(v) for k, v in plan.sensitivities.items()},
            "costs_bits": {k: int(v) for k, v in plan.costs.items()},
            "orders_right_after_split": baseline_scores}
    checkpoints.write_json(plan_file, info)
    return info


# ==============================================================================================
# The report.
# ==============================================================================================
def _bits_label(spec: ModelSpec) -> str:
    q = spec.quant
    return f"{q.weight_bits}-{q.embed_bits}-{q.act_bits}"


def relative_to_workdir(path: str, workdir: epath.Path) -> str:
    """A stage's checkpoint as the report stores it: relative to the pipeline workdir when inside
    it (a copied or moved workdir still names its own models; ``row_checkpoint`` reads it back),
    a given checkpoint elsewhere as given."""
    try:
        return os.fspath(checkpoints.as_path(path).relative_to(workdir))
    except ValueError:
        return path


def row_checkpoint(workdir: str | os.PathLike, row: dict) -> str:
    """The checkpoint of a row of a pipeline's ``results.json``, wherever the workdir is now."""
    path = row["checkpoint"]
    return path if os.path.isabs(path) or checkpoints.is_remote(path) else os.fspath(
        checkpoints.as_path(workdir) / path)


def write_report(workdir: epath.Path, task, rows: list[StageResult], config, adaptive_info) -> dict:
    """Writes results.json, results.md and training_curves.png; returns the report dict."""
    seq = config.max_seq_length or task.max_seq_length
    main = metrics.main_metric(task)
    table = []
    for r in rows:
        report = size.model_size_bits(r.spec)
        table.append({
            "model": r.name, "description": r.description, "bits": _bits_label(r.spec),
            "width": f"{r.spec.config.num_heads}/{rows[0].spec.config.num_heads} heads",
            "split": r.spec.quant.split,
            "size_mib": round(report.mebibytes, 3), "size_bits": report.total_bits,
            "gflops": round(flops.forward_flops(r.spec.config, seq, r.spec.num_labels) / 1e9, 3),
            "best": r.best, "final": r.final, "checkpoint": relative_to_workdir(r.checkpoint, workdir)})
    out = {"task": task.name, "main_metric": main, "seq_len_for_flops": seq, "rows": table,
           "adaptive": adaptive_info}
    checkpoints.write_json(workdir / "results.json", out)
    names = [k for k in (rows[0].best or {}) if "/" not in k] or [main]
    protocol = "dev"
    if "squad" in config and config.squad.dev_split:
        protocol = (f"the dev-split protocol: the first {config.squad.dev_split:g} of the dev file's "
                    "articles train, the rest evaluate; not the official dev score")
    lines = [f"# BinaryBERT pipeline on {task.name} ({protocol})", "",
             f"Sizes count 1 bit per binary weight, 2 per ternary, 32 per full-precision parameter, in "
             f"MiB (the papers' \"MB\"; see binarybert_jax/size.py). GFLOPs: matrix products of one "
             f"example's forward at {seq} tokens. Metrics: best periodic evaluation on dev / final "
             f"checkpoint, ×100.", "",
             "| model | W-E-A | width | size (MiB) | GFLOPs | " + " | ".join(f"{m} best / final" for m in names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names)]
    for t in table:
        cells = [f"{100 * t['best'].get(m, float('nan')):.1f} / {100 * t['final'].get(m, float('nan')):.1f}"
                 for m in names]
        lines.append(f"| {t['description']} | {t['bits']} | {t['width']} | {t['size_mib']:.2f} | "
                     f"{t['gflops']:.2f} | " + " | ".join(cells) + " |")
    if adaptive_info:
        lines += [""] + adaptive_report(adaptive_info, main)
    checkpoints.write_text(workdir / "results.md", "\n".join(lines) + "\n")
    plot_training_curves(workdir / "training_curves.png", rows, main)
    print("\n".join(lines))
    return out


def adaptive_report(adaptive_info: dict, main: str) -> list[str]:
    """Markdown lines on the adaptive split (``results.json``'s ``adaptive``): the budget, and
    the split orders' dev scores right after splitting. The pipeline's report and README's
    tables (``launch.tables``) print it."""
    lines = [f"Adaptive splitting: budget {adaptive_info['budget_mb']:.2f} MiB (no split "
             f"{adaptive_info['size_no_split_mb']:.2f}, all split {adaptive_info['size_all_split_mb']:.2f}); "
             f"{len(adaptive_info['chosen'])} matrices split."]
    if adaptive_info.get("orders_right_after_split"):
        lines += ["", "Right after splitting, before binary training (same budget):", "",
                  f"| order | matrices split | size (MiB) | {main} |", "|---|---|---|---|"]
        for name, b in adaptive_info["orders_right_after_split"].items():
            lines.append(f"| {name} | {b['split']} | {b['size_mb']:.2f} | {100 * b['dev'][main]:.1f} |")
    return lines


def training_curves(workdir: str | os.PathLike, main: str) -> dict[str, dict[str, list]]:
    """Per phase of a training run, from its ``metrics.jsonl``: ``loss`` ``[(step, total loss)]``
    as logged (means over the logging window) and ``dev`` ``[(step, dev main metric)]`` at each
    evaluation. A resumed run logs some steps twice; the last value of a step wins."""
    curves: dict[str, dict[str, dict]] = {}
    for m in checkpoints.read_metrics(checkpoints.as_path(workdir) / "metrics.jsonl"):
        if "phase" not in m or "step" not in m:
            continue
        phase = curves.setdefault(m["phase"], {"loss": {}, "dev": {}})
        if "total" in m:
            phase["loss"][m["step"]] = m["total"]
        if f"eval/{main}" in m:
            phase["dev"][m["step"]] = m[f"eval/{main}"]
    return {p: {k: sorted(v.items()) for k, v in c.items()} for p, c in curves.items()}


def plot_training_curves(path: epath.Path, rows: list[StageResult], main: str) -> None:
    """The paper's training curves: the training loss of every quantized model (TWN 0.5×, TWS 1×,
    BWN, ...) over its steps, one panel per KD phase (stage 1: intermediate-layer distillation,
    stage 2: prediction-layer), with the dev metric at each evaluation on a second axis (stage 1
    trains no logits, so it has none). The paper's point, TWS reaching a lower loss than BWN,
    reads off the panels directly."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [(r, training_curves(r.workdir, main)) for r in rows
            if r.workdir and r.spec.quant.weight_bits < 32
            and (checkpoints.as_path(r.workdir) / "metrics.jsonl").is_file()]
    phases = sorted({p for _, curves in runs for p in curves}) or ["(no quantized training runs)"]
    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, phase in zip(axes[0], phases):
        dev_ax = None
        for i, (r, curves) in enumerate(runs):
            if phase not in curves:
                continue
            color = colors[i % len(colors)]
            if curves[phase]["loss"]:
                steps, loss = zip(*curves[phase]["loss"])
                ax.plot(steps, loss, color=color, label=r.description)
            if curves[phase]["dev"]:
                dev_ax = dev_ax or ax.twinx()
                steps, dev = zip(*curves[phase]["dev"])
                dev_ax.plot(steps, np.asarray(dev) * 100, color=color, linestyle="--", marker="o",
                            label=f"{r.description}: dev {main}")
        ax.set_title({"stage1": "stage 1: intermediate-layer KD", "stage2": "stage 2: prediction-layer KD"}
                     .get(phase, phase))
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (solid)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if runs:
            ax.legend(fontsize=7, loc="upper right")
        if dev_ax is not None:
            dev_ax.set_ylabel(f"dev {main} ×100 (dashed, at each evaluation)")
    fig.tight_layout()
    checkpoints.write_figure(path, fig)
    plt.close(fig)
