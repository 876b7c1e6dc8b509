"""Dev metrics of finished runs side by side, with their mean, spread and range: for seed sweeps.

    python -m launch.summarize runs/mrpc_hf_s*                 # final checkpoints (the default)
    python -m launch.summarize runs/mrpc_hf_s* --which selected  # the selected checkpoints

Reads each workdir's ``results.json`` (written by ``launch.train`` when a run completes) and its
``config.json`` (for the seed), and prints a Markdown table: one row per run, then the mean with
the sample standard deviation, and the minimum and maximum, of every metric ×100. GLUE tasks on
small dev sets (MRPC's 408 pairs, RTE, CoLA) move by a point or two between seeds, so one run says
little about a setting; compare distributions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Optional, Sequence

from launch import arguments, common


def load_run(workdir: str | os.PathLike, which: str) -> dict:
    """``{"run", "task", "seed", "metrics"}`` of one finished run: dev at its ``final`` or at its
    ``selected`` checkpoint (``best`` is the older name of the latter: for runs selected on dev,
    their best periodic dev evaluation)."""
    from binarybert_jax import workdirs
    workdir = workdirs.as_path(workdir)  # local or gs://
    results_file = workdir / "results.json"
    if not results_file.is_file():
        raise ValueError(f"{workdir}: no results.json; the run has not finished (or this is not a "
                         "launch.train workdir)")
    results = json.loads(results_file.read_text())
    which = {"selected": "dev_selected" if "dev_selected" in results else "best"}.get(which, which)
    if which not in results:
        raise ValueError(f"{results_file}: no {which!r} metrics; has {sorted(results)}")
    config_file = workdir / "config.json"
    seed = json.loads(config_file.read_text()).get("seed") if config_file.is_file() else None
    return {"run": str(workdir), "task": results.get("task"), "seed": seed,
            "metrics": dict(results[which])}


def summarize(runs: Sequence[dict]) -> str:
    """The Markdown table of ``runs`` (as :func:`load_run` returns them), metrics ×100."""
    if not runs:
        raise ValueError("no runs to summarize")
    tasks = sorted({str(r["task"]) for r in runs})
    if len(tasks) > 1:
        raise ValueError(f"runs of different tasks cannot be summarized together: {tasks}")
    names = sorted(set.intersection(*(set(r["metrics"]) for r in runs)))
    if not names:
        raise ValueError("the runs share no metric")
    lines = ["| run | seed | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in runs:
        cells = [f"{100 * r['metrics'][n]:.1f}" for n in names]
        lines.append(f"| {r['run']} | {r['seed']} | " + " | ".join(cells) + " |")
    values = {n: [100 * r["metrics"][n] for r in runs] for n in names}
    # Sample standard deviation; 0 for a single run.
    std = {n: statistics.stdev(v) if len(v) > 1 else 0.0 for n, v in values.items()}
    lines.append(f"| mean ± std of {len(runs)} | | "
                 + " | ".join(f"{statistics.mean(values[n]):.1f} ± {std[n]:.1f}" for n in names) + " |")
    lines.append("| min – max | | "
                 + " | ".join(f"{min(values[n]):.1f} – {max(values[n]):.1f}" for n in names) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.ArgumentParser(prog="python -m launch.summarize", epilog=arguments.examples_from(__doc__),
                                     description="Dev metrics of finished runs, with mean and spread.")
    parser.add_argument("workdirs", nargs="+", help="launch.train workdirs (each with results.json)")
    parser.add_argument("--which", choices=("final", "selected", "best"), default="final",
                        help="dev at the final checkpoint, or at the selected one (on the held-out "
                             "slice; a run selected on dev: its best periodic dev evaluation); best: "
                             "the older name of selected")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(summarize([load_run(w, args.which) for w in args.workdirs]))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    common.run_main(main)
