"""The whole BinaryBERT method as one resumable pipeline of stages.

    teacher      full-precision fine-tuning of the pretrained backbone (or a given checkpoint)
    half         a half-width model: heads and FFN neurons ranked by importance on task data, the
                 top half kept (halfwidth.py), then distilled from the teacher (hidden states and
                 logits; attention scores cannot be matched across head counts)
    ternary      TWN 0.5× (W2-E2-A8/A4) trained with two-stage KD; teacher = init = the half model
    tws          ternary weight splitting of the ternary model (tws.py), then BWN 1.0× two-stage KD
    bwn          the baseline: the half model binarized directly, same KD schedule
    bwn_full     the paper's BWN rows: the full-width teacher binarized, same KD schedule
    adaptive     sensitivity of each matrix, an exact knapsack under a size budget (adaptive.py),
                 the chosen matrices split and the rest binary, same KD schedule
    report       results.json / results.md (one row per model) and a plot of the dev metric

Every stage writes its outputs under the workdir and is skipped when complete; a training stage
resumes inside itself (train.py). Rerun the same command after an interruption.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Optional

import ml_collections
import numpy as np

from binarybert_jax import adaptive, flops, halfwidth, metrics, size, storage, train, tws
from binarybert_jax.data import batching, glue
from binarybert_jax.model import ModelSpec
from binarybert_jax.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


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
    workdir: Optional[str] = None  # the training run's workdir, for the learning-curve plot


def _fresh(config) -> ml_collections.ConfigDict:
    """An unlocked deep copy of the pipeline config to specialise for one training stage."""
    return ml_collections.ConfigDict(config.to_dict())


def _quant(config, weight_bits: int, method: str, **extra) -> dict:
    """The pipeline's quantization for a stage: W-E bits with ``method``, activations from
    ``config.act_bits`` (8: uniform with learnable clips; ≤4: LSQ)."""
    q = dict(config.student.quant.to_dict())
    lsq = config.act_bits <= 4
    q.update(weight_bits=weight_bits, embed_bits=weight_bits, act_bits=config.act_bits,
             weight_method=method, embed_method=method, act_method="lsq" if lsq else "uniform")
    q.update(extra)
    return q


def _train_stage(config, workdir: pathlib.Path, name: str, *, mode: str, hyper, teacher: str,
                 init: str, quant: Optional[dict] = None, attention: bool = True) -> dict:
    """Runs one training stage with ``train.train_and_evaluate`` in ``workdir/name``."""
    c = _fresh(config)
    c.kd.mode = mode
    c.kd.attention = attention
    c.teacher = teacher
    c.init_checkpoint = init
    c.batch_size = hyper.batch_size
    c.stage1.epochs, c.stage1.learning_rate = hyper.stage1_epochs, hyper.stage1_learning_rate
    c.stage2.epochs, c.stage2.learning_rate = hyper.stage2_epochs, hyper.stage2_learning_rate
    c.eval_every_steps = hyper.eval_every_steps
    if quant is not None:
        c.student.quant = ml_collections.ConfigDict(quant)
        if quant["act_method"] == "lsq" and quant["act_bits"] < 32:
            c.student.hidden_act = "relu"  # the released 4-bit scripts' student
    log.info("pipeline: stage %s", name)
    result = train.train_and_evaluate(c, workdir / name)
    if result.get("interrupted"):
        raise _Interrupted(name)
    return result


class _Interrupted(Exception):
    pass


def _row(name: str, description: str, workdir: pathlib.Path, result: dict) -> StageResult:
    run = workdir / name
    best = run / result["best_checkpoint"]
    return StageResult(name, description, str(best), str(run / result["final_checkpoint"]),
                       result["best"], result["final"], storage.load_model_spec(best), str(run))


def _batches(config, task, count: int, seed_offset: int) -> list[dict]:
    """``count`` training batches (for importance and sensitivity estimates)."""
    arrays, _ = train.load_data(config, task, load_tokenizer(train.tokenizer_dir(config)))
    it = batching.iterate_batches(arrays, config.batch_size, shuffle=True, seed=config.seed + seed_offset,
                                  process_index=0, process_count=1)
    out = []
    for batch in it:
        out.append({k: v for k, v in batch.items() if k in train.MODEL_INPUTS + ("labels",)})
        if len(out) == count:
            break
    return out


def run_pipeline(config, workdir) -> dict:
    """Runs every stage of the method (skipping completed ones) and writes the report.

    Returns:
      The report dict also written to ``workdir/results.json``.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "pipeline_config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    task = glue.get_task(config.task)
    p, s = config.pipeline, config.stages
    rows: list[StageResult] = []
    try:
        # -- teacher --------------------------------------------------------------------------
        if p.teacher:
            spec = storage.load_model_spec(p.teacher)
            info = storage.load_model(p.teacher)[2]
            dev = info.get("dev", {})
            teacher = StageResult("teacher", "full precision (given)", p.teacher, p.teacher, dev, dev, spec)
        else:
            teacher = _row("teacher", "full precision", workdir, _train_stage(
                config, workdir, "teacher", mode="supervised", hyper=s.teacher, teacher="", init=""))
        rows.append(teacher)

        # -- half-width full-precision model -------------------------------------------------
        pruned = workdir / "half_pruned"
        if not storage.is_model_checkpoint(pruned):
            halfwidth.make_half_width_checkpoint(teacher.checkpoint, pruned,
                                                 _batches(config, task, p.prune_batches, 1),
                                                 width=p.width)
        half = _row("half", f"full precision {p.width}×", workdir, _train_stage(
            config, workdir, "half", mode="joint", hyper=s.half, teacher=teacher.checkpoint,
            init=str(pruned), attention=False))
        rows.append(half)

        # -- ternary (TWN) half-width --------------------------------------------------------
        ternary = _row("ternary", f"TWN {p.width}×", workdir, _train_stage(
            config, workdir, "ternary", mode="two_stage", hyper=s.ternary, teacher=half.checkpoint,
            init=half.checkpoint, quant=_quant(config, 2, "twn")))
        rows.append(ternary)

        # -- ternary weight splitting, then binary KD ----------------------------------------
        split_init = workdir / "tws_init"
        if not storage.is_model_checkpoint(split_init):
            tws.split_checkpoint(ternary.checkpoint, split_init)
        split_spec = storage.load_model_spec(split_init)
        rows.append(_row("tws", f"TWS {2 * p.width:g}× (split from TWN {p.width}×)", workdir, _train_stage(
            config, workdir, "tws", mode="two_stage", hyper=s.binary, teacher=half.checkpoint,
            init=str(split_init), quant=split_spec.quant.to_dict())))

        # -- baselines ----------------------------------------------------------------------
        if p.bwn:
            rows.append(_row("bwn", f"BWN {p.width}×", workdir, _train_stage(
                config, workdir, "bwn", mode="two_stage", hyper=s.binary, teacher=half.checkpoint,
                init=half.checkpoint, quant=_quant(config, 1, "bwn"))))
        if p.bwn_full:
            rows.append(_row("bwn_full", "BWN 1.0× (from the full-width teacher)", workdir, _train_stage(
                config, workdir, "bwn_full", mode="two_stage", hyper=s.binary, teacher=teacher.checkpoint,
                init=teacher.checkpoint, quant=_quant(config, 1, "bwn"))))

        # -- adaptive splitting -------------------------------------------------------------
        adaptive_info = None
        if p.adaptive:
            adaptive_info, adaptive_init = _plan_adaptive(config, workdir, task, ternary)
            rows.append(_row("adaptive", f"adaptive split at {adaptive_info['budget_mb']:.2f} MiB",
                             workdir, _train_stage(
                                 config, workdir, "adaptive", mode="two_stage", hyper=s.binary,
                                 teacher=half.checkpoint, init=str(adaptive_init),
                                 quant=storage.load_model_spec(adaptive_init).quant.to_dict())))
    except _Interrupted as e:
        log.info("pipeline: stage %s stopped early (stop_after_steps); rerun to resume", e)
        return {"interrupted": True, "stage": str(e)}

    report = write_report(workdir, task, rows, config, adaptive_info)
    return report


def _plan_adaptive(config, workdir: pathlib.Path, task, ternary: StageResult):
    """Plans the mixed split of the ternary model under the budget (cached in adaptive.json) and
    writes the mixed binary model's initial checkpoint."""
    plan_file = workdir / "adaptive.json"
    init = workdir / "adaptive_init"
    if plan_file.is_file() and storage.is_model_checkpoint(init):
        return json.loads(plan_file.read_text()), init
    p = config.pipeline
    params, spec, _ = storage.load_model(ternary.checkpoint)
    batches = _batches(config, task, p.sensitivity_batches, 2)
    _, none_bits, full_bits = adaptive.split_costs(spec)
    none, full = none_bits / 8 / size.MIB, full_bits / 8 / size.MIB
    budget = p.adaptive_budget_mb or none + p.adaptive_fraction * (full - none)
    # Sensitivities against the ternary model's own outputs (adaptive.py's default): a
    # non-negative divergence with less variance on a few batches than the teacher's loss.
    plan = adaptive.plan_adaptive_split(spec, params, batches, budget, seed=config.seed)
    tws.split_checkpoint(ternary.checkpoint, init, only=set(plan.chosen))
    baseline_scores = {}
    if p.adaptive_baselines:
        # The paper's min / random / max orders at the same budget, compared right after
        # splitting (before any binary training), where the choice of matrices is all that differs.
        _, dev = train.load_data(config, task, load_tokenizer(train.tokenizer_dir(config)))
        mesh = train.make_mesh()
        for name, chosen in {"adaptive": plan.chosen, **plan.baselines}.items():
            split_params, split_spec = tws.split_params(params, spec, only=set(chosen))
            model = split_spec.without_axis().build()
            scores = train.evaluate(train.make_predict_step(model, mesh), train.replicate(split_params, mesh),
                                    task, dev, config.eval_batch_size, mesh)
            baseline_scores[name] = {"split": len(chosen), "dev": scores,
                                     "size_mb": size.model_size_bits(split_spec).mebibytes}
    info = {"budget_mb": budget, "size_no_split_mb": none, "size_all_split_mb": full,
            "chosen": sorted(plan.chosen), "size_mb": plan.size_mb,
            "sensitivities": {k: float(v) for k, v in plan.sensitivities.items()},
            "costs_bits": {k: int(v) for k, v in plan.costs.items()},
            "orders_right_after_split": baseline_scores}
    plan_file.write_text(json.dumps(info, indent=2))
    return info, init


# ==============================================================================================
# The report.
# ==============================================================================================
def _bits_label(spec: ModelSpec) -> str:
    q = spec.quant
    return f"{q.weight_bits}-{q.embed_bits}-{q.act_bits}"


def write_report(workdir: pathlib.Path, task, rows: list[StageResult], config, adaptive_info) -> dict:
    """Writes results.json, results.md and learning_curves.png; returns the report dict."""
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
            "best": r.best, "final": r.final, "checkpoint": r.checkpoint})
    out = {"task": task.name, "main_metric": main, "seq_len_for_flops": seq, "rows": table,
           "adaptive": adaptive_info}
    (workdir / "results.json").write_text(json.dumps(out, indent=2))
    names = [k for k in (rows[0].best or {}) if "/" not in k] or [main]
    lines = [f"# BinaryBERT pipeline on {task.name} (dev)", "",
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
        lines += ["", f"Adaptive splitting: budget {adaptive_info['budget_mb']:.2f} MiB (no split "
                      f"{adaptive_info['size_no_split_mb']:.2f}, all split {adaptive_info['size_all_split_mb']:.2f}); "
                      f"{len(adaptive_info['chosen'])} matrices split."]
        if adaptive_info.get("orders_right_after_split"):
            lines += ["", "Right after splitting, before binary training (same budget):", "",
                      f"| order | matrices split | size (MiB) | {main} |", "|---|---|---|---|"]
            for name, b in adaptive_info["orders_right_after_split"].items():
                lines.append(f"| {name} | {b['split']} | {b['size_mb']:.2f} | {100 * b['dev'][main]:.1f} |")
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    plot_learning_curves(workdir / "learning_curves.png", rows, main)
    print("\n".join(lines))
    return out


def plot_learning_curves(path: pathlib.Path, rows: list[StageResult], main: str) -> None:
    """The dev metric over training steps for every stage's evaluated phases."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        if not r.workdir or not (pathlib.Path(r.workdir) / "metrics.jsonl").is_file():
            continue
        points = {}
        for line in (pathlib.Path(r.workdir) / "metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            if f"eval/{main}" in m:
                points.setdefault(m["phase"], []).append((m["step"], m[f"eval/{main}"]))
        for phase, pts in points.items():
            steps, values = zip(*sorted(pts))
            ax.plot(steps, np.asarray(values) * 100, marker="o", label=f"{r.name} ({phase})")
    ax.set_xlabel("step")
    ax.set_ylabel(f"dev {main} ×100")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
