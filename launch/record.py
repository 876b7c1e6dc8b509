"""A small record of a finished run under ``results/``, to commit: results that outlive the machine.

    python -m launch.record runs/mrpc_twn_s1 --name mrpc_ablation/w2a8/s1 --setting "W2A8"
    python -m launch.record runs/mrpc_w1a8_s1 --name mrpc_w1a8/s1          # a pipeline: one record a stage
    python -m launch.tables                                                  # README's tables from results/

``WORKDIR`` is a finished ``launch.train`` workdir (``results.json``; a pipeline's stage directory
is one), or a ``launch.pipeline`` workdir, whose every trained stage becomes a record ``results/NAME/<stage>/`` with the stage's
description as its setting (plus ``results/NAME/pipeline.json``, the pipeline's report).
A record directory holds:

    record.json     the setting, task, seed, the protocol (``heldout``: checkpoints selected on a
                    held-out slice of the training set; ``dev``: on dev itself), the selection
                    split's scores at the selected checkpoint (and its step), dev's at the selected
                    checkpoint (``dev_selected``, also ``best``) and at the final one (``dev_final``,
                    also ``final``), per phase the same and its wall seconds, the run's wall
                    seconds and how they split (``time_seconds``: setup, compiling, steps,
                    evaluation, checkpoints; ``binarybert_jax.phase_time``), the git commit(s) that ran it (from the workdir's provenance.json, else
                    the checkout's commit now, marked so), whether tracked files differed from it
                    (untracked ones do not count), the commands that ran it (each invocation's
                    argv; none known without provenance.json), the resolved config and the model's
                    spec
    metrics.jsonl   the run's measurements over training, as it logged them
    <TASK>.tsv      the GLUE submission (``index<TAB>prediction``, launch.predict) for the task's
                    test file, predicted with the run's selected checkpoint; where a test file exists
                    (``--test_file``, default ``<data_dir or $GLUE_DIR>/<TASK>/test.tsv``);
                    never for SQuAD (no test file to submit)

Records group into README tables by ``setting`` (``launch.tables``: mean ± sample std over the
seeds of a setting). Checkpoints stay in the workdir, out of git. Every file is written through
``workdirs.py`` (checkpoints through ``checkpoints.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Optional, Sequence

from binarybert_jax.errors import UserError
from launch import arguments, common

RECORD_FORMAT, RECORD_VERSION = "binarybert-jax/record", 1
RECORD_FILE = "record.json"
DEFAULT_RESULTS = common.REPO_ROOT / "results"


def _read_json(path: os.PathLike):
    from binarybert_jax import workdirs
    return workdirs.read_json(path)


def _provenance(workdir: os.PathLike, fallback: Optional[os.PathLike] = None) -> dict:
    """The invocations that ran the workdir (``provenance.json``) and the commit(s) among them."""
    for d in (workdir, fallback):
        if d is not None and (d / common.PROVENANCE_FILE).is_file():
            runs = common.read_provenance(d / common.PROVENANCE_FILE)
            worked = [r for r in runs if r.get("outcome") != "refused"]  # refused: changed nothing
            commits = sorted({r.get("git_commit") for r in worked if r.get("git_commit")})
            found = {"commits": commits, "dirty": any(r.get("git_dirty") for r in worked),
                     "commands": [r["argv"] for r in worked if r.get("argv")],
                     "source": str(d / common.PROVENANCE_FILE), "invocations": runs}
            if runs and runs[0].get("workdir_existed"):  # (entries before the flag have no say)
                found["unrecorded"] = ("the workdir existed before the first invocation listed: the "
                                       "invocation(s) that created it were killed before writing an "
                                       "entry, so the commits above may miss the code that trained it")
            return found
    now = common.git_state()
    return {"commits": [now["git_commit"]] if now["git_commit"] else [], "dirty": now["git_dirty"],
            "commands": [],
            "source": "the checkout's commit when recorded (the workdir has no provenance.json)",
            "invocations": []}


def portable(obj, root: pathlib.Path = common.REPO_ROOT):
    """``obj`` with every absolute path inside the checkout or beside it (``../shared``) made
    relative to the checkout, and the home directory written ``~``: a committed record names no
    path of the machine that made it."""
    if isinstance(obj, dict):
        return {k: portable(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, root) for v in obj]
    if not isinstance(obj, str) or not obj.startswith("/"):
        return obj
    path = pathlib.Path(obj)
    for base, prefix in ((root, ""), (root.parent, "../")):
        try:
            return prefix + str(path.relative_to(base))
        except ValueError:
            pass
    home = pathlib.Path.home()
    return "~/" + str(path.relative_to(home)) if path.is_relative_to(home) else obj


def default_test_file(config: dict, task) -> Optional[pathlib.Path]:
    """``<data_dir or $GLUE_DIR>/<TASK>/test.tsv`` when it exists (the data the run trained on);
    None for SQuAD, which has no test file to submit."""
    root = config.get("data_dir") or os.environ.get("GLUE_DIR", "")
    if task.head == "span" or config.get("data_source", "tsv") != "tsv" or not root:
        return None
    path = pathlib.Path(root) / task.directory / "test.tsv"
    return path if path.is_file() else None


def record_run(workdir: os.PathLike, out: pathlib.Path, name: str, setting: str, *, order: int = 0,
               test_file: Optional[pathlib.Path] = None, find_test_file: bool = True,
               provenance_dir: Optional[os.PathLike] = None) -> dict:
    """Writes the record of one finished ``launch.train`` workdir into ``out``; returns it."""
    from binarybert_jax import workdirs
    from binarybert_jax.data import tasks
    from launch import predict
    results_file = workdir / "results.json"
    if not results_file.is_file():
        raise FileNotFoundError(f"{workdir}: no results.json; the run has not finished (or this is "
                                "not a launch.train or launch.pipeline workdir)")
    results = _read_json(results_file)
    if results.get("interrupted") or "phases" not in results:
        raise UserError(f"{results_file}: not a finished run's results (no phases)")
    config = _read_json(workdir / "config.json")
    task = tasks.get_task(results["task"])
    if test_file is not None and task.head == "span":
        raise UserError(f"--test_file {test_file}: {task.name} has no GLUE submission to write; "
                        "record SQuAD runs with --no_test (or without --test_file)")
    if find_test_file and test_file is None:
        test_file = default_test_file(config, task)
    provenance = _provenance(workdir, provenance_dir)
    phases = [{k: p.get(k) for k in ("phase", "objective", "steps", "protocol", "selection",
                                       "dev_selected", "dev_final", "best", "best_step", "final",
                                       "wall_seconds", "time_seconds")} for p in results["phases"]]
    record = {
        "format": RECORD_FORMAT, "version": RECORD_VERSION, "name": name, "setting": setting,
        "order": order, "task": task.name, "seed": config.get("seed"),
        "main_metric": results["main_metric"],
        # Runs from before held-out selection have no protocol: they selected on dev.
        "protocol": results.get("protocol", "dev"), "selection": results.get("selection"),
        "dev_selected": results.get("dev_selected", results["best"]),
        "dev_final": results.get("dev_final", results["final"]),
        "best": results["best"], "best_step": results["phases"][-1].get("best_step"),
        "final": results["final"],
        "wall_seconds": results.get("wall_seconds",
                                    sum(p.get("wall_seconds") or 0.0 for p in results["phases"])),
        "time_seconds": results.get("time_seconds"),
        "phases": phases, "git_commits": provenance["commits"], "git_dirty": provenance["dirty"],
        "commands": provenance["commands"], "provenance": provenance, "workdir": str(workdir), "spec": results.get("spec"),
        "config": config, "submission": None}
    if test_file is not None:
        submission = out / f"{task.directory}.tsv"
        best = workdir / results["best_checkpoint"]
        predict.main(["--model", str(best), "--task", task.name, "--input", str(test_file), "--split", "test",
                      "--out", str(submission),
                      "--max_length", str(config.get("max_seq_length") or task.max_seq_length),
                      "--batch_size", str(config.get("eval_batch_size") or 32)])
        record["submission"] = {"file": submission.name, "test_file": str(test_file),
                                "checkpoint": results["best_checkpoint"]}
    metrics_file = workdir / "metrics.jsonl"
    if metrics_file.is_file():
        workdirs.write_text(out / "metrics.jsonl", metrics_file.read_text())
    record = portable(record)
    workdirs.write_json(out / RECORD_FILE, record)
    return record


def record(workdir: str | os.PathLike, name: str, *, setting: Optional[str] = None,
           results_dir: str | os.PathLike = DEFAULT_RESULTS, test_file: Optional[str] = None,
           find_test_file: bool = True) -> list[dict]:
    """Records a train workdir as ``results_dir/name``, or a pipeline workdir as one record per
    trained stage under it; returns the records written."""
    from binarybert_jax import workdirs
    # The workdir may be remote (gs://...); the records go to a local checkout.
    workdir, out = workdirs.as_path(workdir), pathlib.Path(results_dir) / name
    workdirs.check_output("--results-dir/--name", out, {"WORKDIR": workdir, "--test-file": test_file})
    test = pathlib.Path(test_file) if test_file else None
    if test is not None and not test.is_file():
        raise FileNotFoundError(f"--test_file {test}: no such file")
    if (workdir / "pipeline_config.json").is_file():
        report_file = workdir / "results.json"
        if not report_file.is_file():
            raise FileNotFoundError(f"{workdir}: a pipeline workdir without results.json; the "
                                    "pipeline has not finished")
        report = _read_json(report_file)
        written = []
        for order, row in enumerate(report["rows"]):
            stage = workdir / row["model"]
            if not (stage / "results.json").is_file():
                continue  # a given checkpoint (e.g. --config.stages.teacher.checkpoint): no run here
            label = f"{setting}: {row['description']}" if setting else row["description"]
            written.append(record_run(stage, out / row["model"], f"{name}/{row['model']}", label,
                                      order=order, test_file=test, find_test_file=find_test_file,
                                      provenance_dir=workdir))
        workdirs.write_json(out / "pipeline.json", portable(report))
        return written
    # A pipeline's stage: its invocations are in the pipeline's provenance.json, its setting is
    # the stage's description (as the pipeline's report gives it) and its row the stage's order.
    parent = workdir.parent if (workdir.parent / "pipeline_config.json").is_file() else None
    order = 0
    if parent is not None:
        description, order = _stage_description(parent, workdir.name)
        setting = setting or description
    return [record_run(workdir, out, name, setting or name, order=order, test_file=test,
                       find_test_file=find_test_file, provenance_dir=parent)]


def _stage_description(pipeline_dir, stage: str) -> tuple[Optional[str], int]:
    """A pipeline stage's description and position: its row of the pipeline's report when there
    is one (descriptions filled in, e.g. the adaptive budget), else its config section."""
    config = _read_json(pipeline_dir / "pipeline_config.json")
    stages = list(config.get("pipeline", {}).get("stages", []))
    order = stages.index(stage) if stage in stages else 0
    report = pipeline_dir / "results.json"
    if report.is_file():
        for row in _read_json(report).get("rows", []):
            if row.get("model") == stage:
                return row.get("description"), order
    return config.get("stages", {}).get(stage, {}).get("description"), order


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.ArgumentParser(prog="python -m launch.record", epilog=arguments.examples_from(__doc__),
                                     description="Record a finished run under results/.")
    parser.add_argument("workdir", help="a finished launch.train or launch.pipeline workdir")
    parser.add_argument("--name", required=True,
                        help="the record's path under results/, e.g. mrpc_ablation/w2a8/s1; a README "
                             "section <!-- results:mrpc_ablation --> tabulates everything under it")
    parser.add_argument("--setting", default=None,
                        help="the row this run belongs to in its table (seeds of one setting are "
                             "averaged); default the name (a pipeline: each stage's description)")
    parser.add_argument("--results_dir", default=str(DEFAULT_RESULTS),
                        help="where records go (default: results/ of the checkout)")
    parser.add_argument("--test_file", default=None,
                        help="GLUE test TSV to predict with the best checkpoint (default "
                             "<data_dir or $GLUE_DIR>/<TASK>/test.tsv when it exists)")
    parser.add_argument("--no_test", action="store_true", help="write no GLUE submission file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if os.path.isabs(args.name) or ".." in pathlib.PurePath(args.name).parts:
        raise UserError(f"--name {args.name!r} must be a relative path inside the results directory")
    written = record(args.workdir, args.name, setting=args.setting, results_dir=args.results_dir,
                     test_file=None if args.no_test else args.test_file,
                     find_test_file=not args.no_test)
    for r in written:
        def scores(d):
            return ", ".join(f"{k} {100 * v:.1f}" for k, v in d.items() if "/" not in k)
        print(f"recorded {r['name']} ({r['setting']}, seed {r['seed']}, selected on {r['protocol']}): "
              f"dev at the selected checkpoint {scores(r['dev_selected'])}; at the final one "
              f"{scores(r['dev_final'])}"
              + (f"; submission {r['submission']['file']}" if r["submission"] else ""))
    print(json.dumps({"records": [r["name"] for r in written]}))
    return 0


if __name__ == "__main__":
    common.run_main(main)
