"""The whole BinaryBERT method as one resumable pipeline of stages, each declared in the config.

``config.pipeline.stages`` lists the stages to run, in order; ``config.stages.<name>`` declares each
one (configs/pipeline.py has the paper's recipe). A stage is one of four kinds:

    train           ``train.train_and_evaluate`` with the stage's own training keys (``kd``,
                    ``student``, ``batch_size``, ``stage1``, ``stage2``) over the shared ones (task,
                    data, optimizer, seed, checkpoint selection and its cadence, ...); ``teacher`` and ``init`` name
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
import time
from typing import Optional

import ml_collections
import numpy as np
from etils import epath

from binarybert_jax import (adaptive, checkpoints, evaluate, flops, halfwidth, phase_time, resolve, size, train,
                            tws, workdirs)
from binarybert_jax.data import batching, tasks
from binarybert_jax.errors import UserError
from binarybert_jax.model import ModelSpec
from binarybert_jax.sharding import make_mesh, model_batch, replicate
from binarybert_jax.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

# The keys of a training run that belong to each training stage, never to the pipeline as a whole.
TRAIN_KEYS = ("kd", "student", "batch_size", "stage1", "stage2")
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
    checkpoint: str          # the model checkpoint the row reports (the selected one)
    final_checkpoint: str
    best: dict               # dev's scores at the selected checkpoint
    final: dict              # dev's scores at the final checkpoint
    spec: ModelSpec
    workdir: Optional[str] = None  # the training run's workdir, for the training curves
    selection: Optional[dict] = None  # the split, step and scores the checkpoint was selected by
    protocol: str = "dev"    # what selected it: heldout (a slice of the training set) or dev


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


def _train(config, workdir: epath.Path, name: str, outputs: dict, context: dict,
           label: str = "") -> StageResult:
    """Trains stage ``name`` (or takes its given checkpoint). ``context`` fills placeholders of its
    description, e.g. ``{budget_mb:.2f}`` after an adaptive split; ``label`` begins the training's
    progress lines."""
    section = config.stages[name]
    description = section.description.format(**context)
    if section.checkpoint:  # a trained model given instead of training one
        spec = checkpoints.load_model_spec(section.checkpoint)
        dev = checkpoints.read_model_meta(section.checkpoint).get("info", {}).get("dev", {})
        return StageResult(name, f"{description} (given)", section.checkpoint,
                           section.checkpoint, dev, dev, spec)
    c = stage_config(config, name, outputs.get(section.teacher, ""), outputs.get(section.init, ""))
    result = train.train_and_evaluate(c, workdir / name, progress_label=label)
    if result.get("interrupted"):
        raise _Interrupted(name)
    run = workdir / name
    best = run / result["best_checkpoint"]
    return StageResult(name, description, str(best), str(run / result["final_checkpoint"]),
                       result["best"], result["final"], checkpoints.load_model_spec(best), str(run),
                       result.get("selection"), result.get("protocol", "dev"))


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
    workdirs.check_workdir(workdir, workdirs.PIPELINE)
    workdir = workdirs.as_path(workdir)
    for name in config.pipeline.stages:  # a given checkpoint is read: never write over it
        workdirs.check_output("--workdir", workdir, {
            f"--config.stages.{name}.checkpoint": config.stages[name].get("checkpoint")})
    for key in ("pretrained", "data_dir"):
        workdirs.check_output("--workdir", workdir, {f"--config.{key}": config.get(key)})
    recorded = workdir / "pipeline_config.json"
    if recorded.is_file():  # each stage checks its own keys again when it runs
        resolve.check_resume(workdirs.read_json(recorded), config, workdir)
    workdirs.claim_workdir(workdir, workdirs.PIPELINE)
    workdirs.sync(f"workdir:{workdir}")
    with workdirs.WorkdirLock(workdir):
        workdirs.write_text(recorded, config.to_json_best_effort(indent=2, sort_keys=True))
        return _run_stages(config, workdir)


def _run_stages(config, workdir: epath.Path) -> dict:
    task = tasks.get_task(config.task)
    rows: list[StageResult] = []
    outputs: dict[str, str] = {}  # stage -> the model checkpoint later stages refer to
    adaptive_info = None
    order = tuple(config.pipeline.stages)
    started, compiled = time.perf_counter(), phase_time.compile_seconds()
    stage_seconds: dict[str, float] = {}
    try:
        for number, name in enumerate(order, 1):
            kind = config.stages[name].kind
            label = f"stage {number}/{len(order)} {name}"
            log.info("pipeline: %s (%s) starts, %s into the run", label, kind,
                     train.format_duration(time.perf_counter() - started))
            stage_started = time.perf_counter()
            if kind == "train":
                row = _train(config, workdir, name, outputs, adaptive_info or {}, label)
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
            stage_seconds[name] = time.perf_counter() - stage_started
            log.info("pipeline: %s done in %s", label, train.format_duration(stage_seconds[name]))
    except _Interrupted as e:
        log.info("pipeline: stage %s stopped early (stop_after_steps); rerun to resume", e)
        return {"interrupted": True, "stage": str(e)}
    report = write_report(workdir, task, rows, config, adaptive_info,
                          RunTime(started, compiled, stage_seconds))
    log.info("pipeline: %d stages and the report done in %s, %s of it compiling", len(order),
             train.format_duration(report["run_time"]["wall_seconds"]),
             train.format_duration(report["run_time"]["compile_seconds"]))
    return report


@dataclasses.dataclass
class RunTime:
    """Where this invocation's time went, for the report: its start (``time.perf_counter``), the
    process's compile seconds then (``phase_time.compile_seconds``), each stage's wall seconds."""
    started: float
    compiled_before: float
    stage_seconds: dict

    def summary(self) -> dict:
        """Wall and compile seconds from the start to now (the report included), and each stage's
        wall seconds. A rerun that finds stages complete counts only what it ran: theirs are the
        seconds it took to find them so."""
        return {"wall_seconds": round(time.perf_counter() - self.started, 1),
                "compile_seconds": round(phase_time.compile_seconds() - self.compiled_before, 1),
                "stage_seconds": {k: round(v, 1) for k, v in self.stage_seconds.items()}}


def run_time_sentence(run_time: dict) -> str:
    """The report's line on where the invocation's time went."""
    fmt = train.format_duration
    stages = ", ".join(f"{name} {fmt(s)}" for name, s in run_time["stage_seconds"].items())
    return (f"From the first stage to this report, this invocation took {fmt(run_time['wall_seconds'])} "
            f"(m:ss), {fmt(run_time['compile_seconds'])} of it compiling; by stage: {stages}; "
            "the rest writing the report.")


def _plan_adaptive(config, workdir: epath.Path, name: str, outputs: dict, task) -> dict:
    """Plans the mixed split of the ternary model under the budget (cached in ``<name>.json``) and
    writes the mixed binary model's initial checkpoint to ``workdir/<name>``."""
    section = config.stages[name]
    plan_file, init = workdir / f"{name}.json", workdir / name
    if plan_file.is_file() and checkpoints.is_model_checkpoint(init):
        return workdirs.read_json(plan_file)
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
    scored_on = "heldout" if resolve.heldout_slice(config) is not None else "dev"
    if section.baselines:
        # The paper's min / random / max orders at the same budget, compared right after
        # splitting (before any binary training), where the choice of matrices is all that differs.
        # Scored on the split checkpoints are selected on: a comparison that picks an order is a
        # selection too, and dev stays unread until the models are trained.
        _, sets = resolve.load_data(config, task, load_tokenizer(resolve.tokenizer_dir(config)))
        mesh = make_mesh()
        # Each split model is scored as the ternary model it equals (adaptive.as_ternary): the
        # orders share one compiled forward.
        predict_step = evaluate.make_predict_step(spec.without_axis().build(), mesh)
        for order, chosen in {"adaptive": plan.chosen, **plan.baselines}.items():
            scores = evaluate.evaluate(predict_step, replicate(adaptive.as_ternary(spec, params, chosen), mesh),
                                       task, sets, config.eval_batch_size, mesh)
            size_mb = size.model_size_bits(tws.split_spec(spec, set(chosen))).mebibytes
            baseline_scores[order] = {"split": len(chosen), scored_on: scores, "size_mb": size_mb}
    info = {"budget_mb": budget, "size_no_split_mb": none, "size_all_split_mb": full,
            "chosen": sorted(plan.chosen), "size_mb": plan.size_mb,
            "sensitivities": {k: float(v) for k, v in plan.sensitivities.items()},
            "costs_bits": {k: int(v) for k, v in plan.costs.items()},
            "orders_right_after_split": baseline_scores, "orders_scored_on": scored_on}
    workdirs.write_json(plan_file, info)
    return info


# ==============================================================================================
# The report.
# ==============================================================================================
def relative_to_workdir(path: str, workdir: epath.Path) -> str:
    """A stage's checkpoint as the report stores it: relative to the pipeline workdir when inside
    it (a copied or moved workdir still names its own models; ``row_checkpoint`` reads it back),
    a given checkpoint elsewhere as given."""
    try:
        return os.fspath(workdirs.as_path(path).relative_to(workdir))
    except ValueError:
        return path


def row_checkpoint(workdir: str | os.PathLike, row: dict) -> str:
    """The checkpoint of a row of a pipeline's ``results.json``, wherever the workdir is now."""
    path = row["checkpoint"]
    return path if os.path.isabs(path) or workdirs.is_remote(path) else os.fspath(
        workdirs.as_path(workdir) / path)


def write_report(workdir: epath.Path, task, rows: list[StageResult], config, adaptive_info,
                 run_time: RunTime) -> dict:
    """Writes results.json, results.md and training_curves.png; returns the report dict."""
    seq = config.max_seq_length or task.max_seq_length
    main = task.main_metric
    table = []
    for r in rows:
        report = size.model_size_bits(r.spec)
        table.append({
            "model": r.name, "description": r.description, "bits": r.spec.quant.wea(),
            "width": f"{r.spec.config.num_heads}/{rows[0].spec.config.num_heads} heads",
            "split": r.spec.quant.split,
            "size_mib": round(report.mebibytes, 3), "size_bits": report.total_bits,
            "gflops": round(flops.forward_flops(r.spec.config, seq, r.spec.num_labels) / 1e9, 3),
            "protocol": r.protocol, "selection": r.selection,
            "dev_selected": r.best, "dev_final": r.final,
            "best": r.best, "final": r.final, "checkpoint": relative_to_workdir(r.checkpoint, workdir)})
    selected_on = resolve.heldout_slice(config) is not None
    out = {"task": task.name, "main_metric": main, "seq_len_for_flops": seq,
           "protocol": "heldout" if selected_on else "dev", "rows": table, "adaptive": adaptive_info}
    names = [k for k in (rows[0].best or {}) if "/" not in k] or [main]
    dev_name = "dev"
    if "squad" in config and config.squad.dev_split:
        dev_name = (f"the dev-split protocol: the first {config.squad.dev_split:g} of the dev file's "
                    "articles train, the rest evaluate; not the official dev score")
    if selected_on:
        h = config.heldout
        how = (f"Checkpoints selected on a held-out slice of the training set ({h.fraction:g} of it, at "
               f"most {h.max_examples}, seed {h.seed}), never on dev; dev scored once at the selected "
               "and once at the final checkpoint, ×100.")
    else:
        how = ("Checkpoints selected on dev itself (select_on=dev): the selected checkpoint's dev "
               "score is its best periodic evaluation, which overstates unseen data; ×100.")
    lines = [f"# BinaryBERT pipeline on {task.name} ({dev_name})", "",
             f"Sizes count 1 bit per binary weight, 2 per ternary, 32 per full-precision parameter, in "
             f"MiB (the papers' \"MB\"; see binarybert_jax/size.py). GFLOPs: matrix products of one "
             f"example's forward at {seq} tokens. {how}", "",
             "| model | W-E-A | width | size (MiB) | GFLOPs | "
             + (f"held-out {main} at selection | " if selected_on else "")
             + " | ".join(f"{m} dev: selected / final" for m in names) + " |",
             "|---|---|---|---|---|" + "---|" * (len(names) + selected_on)]
    for t in table:
        cells = [f"{100 * t['best'].get(m, float('nan')):.1f} / {100 * t['final'].get(m, float('nan')):.1f}"
                 for m in names]
        if selected_on:
            held = ((t["selection"] or {}).get("scores") or {}).get(main, float("nan"))
            cells.insert(0, f"{100 * held:.1f}")
        lines.append(f"| {t['description']} | {t['bits']} | {t['width']} | {t['size_mib']:.2f} | "
                     f"{t['gflops']:.2f} | " + " | ".join(cells) + " |")
    if adaptive_info:
        lines += [""] + adaptive_report(adaptive_info, main)
    plot_training_curves(workdir / "training_curves.png", rows, main)
    out["run_time"] = run_time.summary()
    workdirs.write_json(workdir / "results.json", out)
    lines += ["", run_time_sentence(out["run_time"])]
    workdirs.write_text(workdir / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


def adaptive_report(adaptive_info: dict, main: str) -> list[str]:
    """Markdown lines on the adaptive split (``results.json``'s ``adaptive``): the budget, and
    the split orders' dev scores right after splitting. The pipeline's report and the docs'
    tables (``launch.tables``) print it."""
    lines = [f"Adaptive splitting: budget {adaptive_info['budget_mb']:.2f} MiB (no split "
             f"{adaptive_info['size_no_split_mb']:.2f}, all split {adaptive_info['size_all_split_mb']:.2f}); "
             f"{len(adaptive_info['chosen'])} matrices split."]
    if adaptive_info.get("orders_right_after_split"):
        # Plans made before selection moved to the held-out slice scored the orders on dev.
        on = adaptive_info.get("orders_scored_on", "dev")
        column = f"{main} (held-out)" if on == "heldout" else main
        lines += ["", "Right after splitting, before binary training (same budget):", "",
                  f"| order | matrices split | size (MiB) | {column} |", "|---|---|---|---|"]
        for name, b in adaptive_info["orders_right_after_split"].items():
            lines.append(f"| {name} | {b['split']} | {b['size_mb']:.2f} | {100 * b[on][main]:.1f} |")
    return lines


def training_curves(workdir: str | os.PathLike, main: str) -> dict[str, dict[str, list]]:
    """Per phase of a training run, from its ``metrics.jsonl``: ``loss`` ``[(step, total loss)]``
    as logged (means over the logging window) and ``eval`` ``[(step, main metric)]`` at each
    periodic evaluation, on the split checkpoints were selected on (``heldout``: held-out slice,
    logged as ``heldout/<metric>``; ``dev`` for runs selected on dev, logged as ``eval/<metric>``).
    A resumed run logs some steps twice; the last value of a step wins."""
    curves: dict[str, dict[str, dict]] = {}
    for m in workdirs.read_metrics(workdirs.as_path(workdir) / "metrics.jsonl"):
        if "phase" not in m or "step" not in m:
            continue
        phase = curves.setdefault(m["phase"], {"loss": {}, "eval": {}, "split": "dev"})
        if "total" in m:
            phase["loss"][m["step"]] = m["total"]
        for prefix, split in (("heldout", "heldout"), ("eval", "dev")):
            if f"{prefix}/{main}" in m:
                phase["eval"][m["step"]] = m[f"{prefix}/{main}"]
                phase["split"] = split
    return {p: {k: (sorted(v.items()) if isinstance(v, dict) else v) for k, v in c.items()}
            for p, c in curves.items()}


PHASE_TITLES = {"stage1": "stage 1: intermediate-layer KD", "stage2": "stage 2: prediction-layer KD",
                "joint": "joint KD", "dmd": "direction-matching KD", "finetune": "fine-tuning"}


def plot_training_curves(path: epath.Path, rows: list[StageResult], main: str, dpi: int = 120):
    """The papers' training curves: the training loss of every quantized model (TWS against BWN,
    and TWN 0.5×, ...) over its steps, one panel per KD phase (stage 1: intermediate-layer
    distillation, stage 2: prediction-layer), and below each the selection metric at every
    evaluation (held-out, or dev for runs selected on dev) in a panel of its own (stage 1 trains
    no logits, so it has none). One colour per model in
    every panel; the legend sits below the panels, off the data. Returns the figure (closed; for
    tests to inspect)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatter

    class _PlainLogFormatter(LogFormatter):
        """Which log ticks to label as matplotlib chooses, each as a plain number (0.3, 20)."""

        def _num_to_string(self, x, vmin, vmax):
            return f"{x:.3g}"

    runs = [(r, training_curves(r.workdir, main)) for r in rows
            if r.workdir and r.spec.quant.weight_bits < 32
            and (workdirs.as_path(r.workdir) / "metrics.jsonl").is_file()]
    phases = sorted({p for _, curves in runs for p in curves}) or ["(no quantized training runs)"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    with plt.rc_context({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11,
                         "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10}):
        fig, axes = plt.subplots(2, len(phases), figsize=(5.2 * len(phases), 7.0), squeeze=False,
                                 sharex="col", gridspec_kw={"height_ratios": [1.6, 1]})
        for col, phase in enumerate(phases):
            loss_ax, dev_ax = axes[0, col], axes[1, col]
            dev_values, split = [], "dev"
            for i, (r, curves) in enumerate(runs):
                if phase not in curves:
                    continue
                style = dict(color=colors[i % len(colors)], label=r.description)
                if curves[phase]["loss"]:
                    steps, loss = zip(*curves[phase]["loss"])
                    loss_ax.plot(steps, loss, **style)
                if curves[phase]["eval"]:
                    split = "held-out" if curves[phase]["split"] == "heldout" else "dev"
                    steps, dev = zip(*curves[phase]["eval"])
                    dev_values += [100 * v for v in dev]
                    dev_ax.plot(steps, np.asarray(dev) * 100, marker="o", **style)
            loss_ax.set_title(PHASE_TITLES.get(phase, phase))
            loss_ax.set_ylabel("training loss (KD objective, log scale)")
            loss_ax.set_yscale("log")
            loss_ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
            loss_ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
            loss_ax.grid(alpha=0.3, which="both")
            dev_ax.set_xlabel("training step")
            if dev_values:
                # At least a 5-point span, so a one-point difference does not fill the panel.
                centre, span = (max(dev_values) + min(dev_values)) / 2, max(dev_values) - min(dev_values)
                half = max(span * 0.6, 2.5)
                dev_ax.set_ylim(centre - half, centre + half)
                dev_ax.set_ylabel(f"{split} {main} (%)")
                dev_ax.grid(alpha=0.3)
            else:
                dev_ax.set_ylabel(f"{main} (%)")
                dev_ax.set_yticks([])
                dev_ax.text(0.5, 0.5, "no evaluation in this phase", transform=dev_ax.transAxes,
                            ha="center", va="center", color="0.4")
        handles = {}
        for ax in axes.ravel():
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(handles) - 1) // 3), 1, 1))
        if handles:
            fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(3, len(handles)),
                       frameon=False)
        workdirs.write_figure(path, fig, dpi=dpi)
        plt.close(fig)
    return fig
