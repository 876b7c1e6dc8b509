"""Rebuilds the results tables of README.md, BENCHMARKS.md and docs/*.md from the records under
``results/``: numbers are regenerated, never typed.

    python -m launch.tables                 # rewrite every marked section of every such file
    python -m launch.tables --per_seed      # ... with each seed's values beside the mean
    python -m launch.tables --check         # exit 1 if any of them differs from what results/ gives
    python -m launch.tables --file docs/results.md   # only the files named (repeat --file)

A marked section is everything between a line ``<!-- results:NAME [options] -->`` and the next
``<!-- /results -->`` line; the command replaces it with what the records say:

* ``NAME`` = ``parity``: the sentence of ``results/parity/parity.json`` (``launch.parity``).
* ``NAME`` a directory with ``analysis.json`` (``launch.analyze --out results/NAME`` with the
  ``clipping`` analysis): its activation-clipping table.
* any other ``NAME``: a table of every record under ``results/NAME/`` (``launch.record``), one row
  per ``setting`` (in the records' order): how its checkpoints were selected (``held-out-selected``:
  on a held-out slice of the training set, dev unseen until training ended; ``dev-selected``: on
  dev itself, as every record made before held-out selection, whose selected score is its best
  periodic dev evaluation), then per metric dev at the selected and dev at the final checkpoint side
  by side: the mean ± the sample standard deviation over the setting's records (its seeds), ×100,
  and ``n``; one record shows its value alone (no spread to show). Where a record was selected on
  the held-out slice, a column gives the main metric there at selection. ``NAME+NAME2+...`` puts
  the records of several folders in one table, in the order named (rows of one experiment beside
  the baselines another recorded). Options: ``which=both|selected|final`` (both dev columns, the
  default; or only dev at the selected checkpoint, or only at the final one),
  ``metrics=accuracy,f1`` (default: the task's metrics),
  ``per_seed`` (every seed's value after each mean, in the order of the seeds listed in the
  ``seeds`` column; ``--per_seed`` turns it on everywhere), ``wall`` (a column with the mean wall minutes),
  ``time`` (after it, the wall minutes' split: compiling, steps, evaluation, checkpoints and setup,
  from the records' ``time_seconds``; a dash for records made before runs split their time),
  ``bits`` (a ``W-E-A`` column: the bits of weights, word embedding and activations),
  ``order=FOLDER,FOLDER,...`` (the rows of the settings recorded in those folders, the ones holding
  each seed's record as in ``NAME/FOLDER/s<seed>``, first and in that order; the rest after them),
  ``curves=SEED`` (instead of a table: the paper's training curves of the quantized records of
  that seed, drawn from their ``metrics.jsonl`` into ``results/NAME/training_curves_s<SEED>.png``,
  and the image link), ``adaptive`` (instead of a table: the adaptive split's budget and the split
  orders' scores right after splitting, from ``results/NAME/pipeline.json``, as the pipeline's own
  report has them), ``run_time`` (instead of a table: the recorded pipeline invocation's wall time,
  its compiling and each stage's time, from ``results/NAME/pipeline.json``, as its report says).

A marker naming records that do not exist is an error naming it: a table is never left stale.
Figures are linked relative to the file that shows them, so a table moves between files unchanged.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import statistics
import sys
from typing import Optional, Sequence

from binarybert_jax.errors import UserError
from launch import arguments, common

DEFAULT_RESULTS = common.REPO_ROOT / "results"
# The files whose marked sections the command keeps in step with results/, relative to the checkout:
# the front door, the benchmarks page and everything under docs/.
DOCUMENTS = ("README.md", "BENCHMARKS.md", "docs/*.md")
BEGIN = re.compile(r"^(?P<indent>[ \t]*)<!-- results:(?P<name>[\w./+-]+)(?P<options>[^>]*?)\s*-->\s*$")
END = re.compile(r"^[ \t]*<!-- /results -->\s*$")
OPTIONS = ("which", "metrics", "per_seed", "wall", "time", "bits", "order", "curves", "adaptive", "run_time")
WHICH = ("both", "selected", "final")
# How a record's checkpoint was selected, as a table labels it (records without a protocol were
# made before held-out selection existed: they selected on dev).
PROTOCOL_LABELS = {"heldout": "held-out-selected", "dev": "dev-selected"}


def load_records(results_dir: pathlib.Path, name: str) -> list[dict]:
    """Every ``record.json`` under ``results_dir/name``, in (order, name) order; for
    ``NAME+NAME2+...``, each folder's records in that order, one folder after the other."""
    from binarybert_jax import workdirs
    records = []
    for part in name.split("+"):
        root = results_dir / part
        files = sorted(root.rglob("record.json")) if part and root.is_dir() else []
        if not files:
            raise UserError(f"a marker names results:{name}, but {root} holds no record.json; record runs "
                            f"with python -m launch.record WORKDIR --name {part}/...")
        records += sorted((workdirs.read_json(f) for f in files),
                          key=lambda r: (r.get("order", 0), r["name"]))
    return records


def order_records(records: list[dict], folders: Sequence[str], where: str) -> list[dict]:
    """``records`` with those whose record folder (the one holding ``s<seed>``: ``both`` of
    ``mrpc_quant_ablation/both/s1``) is in ``folders`` first, in that order, the rest after them in
    their order. A folder that holds none of the records is an error naming it (a typo would
    otherwise leave a row out of place silently)."""
    def folder(r: dict) -> str:
        parts = r["name"].split("/")
        return parts[-2] if len(parts) >= 2 else ""
    present = {folder(r) for r in records}
    missing = [f for f in folders if f not in present]
    if missing:
        raise UserError(f"{where}: order names {missing}, which hold none of the table's records; "
                        f"its folders: {sorted(present)}")
    rank = {f: i for i, f in enumerate(folders)}
    return sorted(records, key=lambda r: rank.get(folder(r), len(folders)))  # stable: the rest keep their order


def _bits(record: dict) -> str:
    """``W-E-A`` of a record's model: the bits of weights, word embedding and activations."""
    from binarybert_jax.model import wea_label
    q = (record.get("spec") or {}).get("quant") or {}
    bits = [q.get(k) for k in ("weight_bits", "embed_bits", "act_bits")]
    return wea_label(*bits) if all(b is not None for b in bits) else "?"


def _parse_options(text: str, where: str) -> dict:
    options = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if key not in OPTIONS:
            raise UserError(f"{where}: unknown option {key!r}; allowed: {', '.join(OPTIONS)}")
        options[key] = value or True
    if options.get("which", "both") not in WHICH:
        raise UserError(f"{where}: which={options['which']!r}; allowed: {', '.join(WHICH)}")
    return options


def _cell(values: list[float], per_seed: bool) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    cell = f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
    return cell + (" (" + ", ".join(f"{v:.1f}" for v in values) + ")" if per_seed else "")


def dev_scores(record: dict, which: str) -> dict:
    """A record's dev scores at its ``selected`` or ``final`` checkpoint (older records: ``best``
    and ``final``, the selected one being their best periodic dev evaluation)."""
    if which == "selected":
        return record.get("dev_selected", record["best"])
    return record.get("dev_final", record["final"])


def protocol_label(record: dict) -> str:
    return PROTOCOL_LABELS.get(record.get("protocol", "dev"), record.get("protocol", "dev"))


def render_table(records: list[dict], which: str = "both", metrics: Optional[Sequence[str]] = None,
                 per_seed: bool = False, wall: bool = False, bits: bool = False,
                 time_split: bool = False) -> list[str]:
    """The Markdown lines of one table: one row per setting, mean ± sample std over its records;
    dev at the selected and at the final checkpoint side by side (``which=both``), or one of them."""
    from binarybert_jax.data import tasks as task_specs
    columns = ("selected", "final") if which == "both" else (which,)
    tasks = sorted({r["task"] for r in records})
    first = columns[0]
    if metrics is None:
        metrics = [m for m in task_specs.get_task(tasks[0]).metric_names
                   if all(m in dev_scores(r, first) for r in records)] if len(tasks) == 1 else []
        metrics = metrics or sorted(set.intersection(*(set(k for k in dev_scores(r, first) if "/" not in k)
                                                       for r in records)))
    settings: dict[str, list[dict]] = {}
    for r in records:
        settings.setdefault(r["setting"], []).append(r)
    heldout = which != "final" and any(r.get("protocol") == "heldout" for r in records)
    header = ["setting"] + (["W-E-A"] if bits else []) + (["protocol"] if which != "final" else [])
    header.append("seeds" if per_seed else "n")
    if heldout:
        mains = "/".join(sorted({r["main_metric"] for r in records}))
        header.append(f"held-out {mains} (at selection)")
    # which=final keeps the heading it always had: the final checkpoint involves no selection.
    names = {"selected": "dev at selected", "final": "dev at final" if which == "both" else "final"}
    header += [f"{m} ({names[c]})" for m in metrics for c in columns]
    if wall or time_split:
        header.append("wall min (mean)")
    split_names = ("compiling", "steps", "evaluation", "checkpoints", "setup") if time_split else ()
    header += [f"of it {name}" for name in split_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting, runs in settings.items():
        missing = [(r["name"], c, m) for r in runs for m in metrics for c in columns
                   if m not in dev_scores(r, c)]
        if missing:
            raise UserError(f"records without the metric: {missing}")
        runs = sorted(runs, key=lambda r: (r["seed"] is None, r["seed"]))
        seeds = ", ".join(str(r["seed"]) for r in runs)
        cells = [setting] + (["/".join(sorted({_bits(r) for r in runs}))] if bits else [])
        if which != "final":
            cells.append("/".join(sorted({protocol_label(r) for r in runs})))
        cells.append(f"{len(runs)} ({seeds})" if per_seed else str(len(runs)))
        if heldout:
            held = [100 * r["selection"]["scores"][r["main_metric"]] for r in runs
                    if r.get("protocol") == "heldout"]
            cells.append(_cell(held, per_seed) if len(held) == len(runs) else "—")
        cells += [_cell([100 * dev_scores(r, c)[m] for r in runs], per_seed)
                  for m in metrics for c in columns]
        if wall or time_split:
            cells.append(f"{statistics.mean(r['wall_seconds'] for r in runs) / 60:.1f}")
        for part in split_names:
            splits = [r.get("time_seconds") or {} for r in runs]
            cells.append(f"{statistics.mean(t[part] for t in splits) / 60:.1f}"
                         if all(part in t for t in splits) else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_curves(results_dir: pathlib.Path, name: str, records: list[dict], seed: str,
                  readme_dir: pathlib.Path, draw: bool = True) -> list[str]:
    """Draws (with ``draw``) the training curves of the quantized records of ``seed`` under
    ``results/NAME`` (the pipeline's figure: ``pipeline.plot_training_curves``, the training loss
    per KD stage, the dev metric beneath) into ``results/NAME/training_curves_s<seed>.png``; returns the Markdown image line, the
    path relative to ``readme_dir``."""
    from binarybert_jax import pipeline
    from binarybert_jax.model import ModelSpec
    chosen = [r for r in records if str(r["seed"]) == seed and r["spec"]["quant"]["weight_bits"] < 32]
    if not chosen:
        raise UserError(f"results:{name} curves={seed}: no quantized record of seed {seed}")
    rows = [pipeline.StageResult(r["name"], r["setting"], "", "", r["best"], r["final"],
                                 ModelSpec.from_dict(r["spec"]), str(results_dir / r["name"]))
            for r in chosen]
    figure = results_dir / name.split("+")[0] / f"training_curves_s{seed}.png"  # the first folder's
    if draw:
        pipeline.plot_training_curves(figure, rows, chosen[0]["main_metric"])
    link = pathlib.Path(os.path.relpath(figure.resolve(), readme_dir.resolve())).as_posix()
    return [f"![training curves, seed {seed}]({link})"]


def render_parity(results_dir: pathlib.Path) -> list[str]:
    from binarybert_jax import workdirs
    path = results_dir / "parity" / "parity.json"
    if not path.is_file():
        raise UserError(f"a marker names results:parity, but {path} does not exist: run python -m launch.parity")
    e = workdirs.read_json(path)["errors"]
    return [f"Max abs error {e['hidden_states']:.1e} over every hidden state at real tokens, "
            f"{e['attention_probs']:.1e} over attention probabilities, {e['pooler']:.1e} on the "
            f"pooler output."]


def _pipeline_report(results_dir: pathlib.Path, name: str, key: str, missing: str) -> dict:
    """``results/NAME/pipeline.json`` (a pipeline recorded by ``launch.record``), which must hold
    ``key`` (the marker's option of that name reads it); ``missing`` says what else to record."""
    from binarybert_jax import workdirs
    path = results_dir / name / "pipeline.json"
    report = workdirs.read_json(path) if path.is_file() else {}
    if not report.get(key):
        raise UserError(f"a marker names results:{name} {key}, but {path} holds no {missing} (launch.record)")
    return report


def render_adaptive(results_dir: pathlib.Path, name: str) -> list[str]:
    """The adaptive split's budget and split orders of a recorded pipeline, as the pipeline's own
    report prints them."""
    from binarybert_jax import pipeline
    report = _pipeline_report(results_dir, name, "adaptive",
                              "adaptive split: record a pipeline run with the adaptive stages")
    return pipeline.adaptive_report(report["adaptive"], report["main_metric"])


def render_run_time(results_dir: pathlib.Path, name: str) -> list[str]:
    """Where a recorded pipeline invocation's time went, as the pipeline's own report says it."""
    from binarybert_jax import pipeline
    report = _pipeline_report(results_dir, name, "run_time",
                              "run time (a report written before reports kept it): record a new run")
    return [pipeline.run_time_sentence(report["run_time"])]


def render_clipping(results_dir: pathlib.Path, name: str) -> list[str]:
    """The activation-clipping table of ``results/NAME/analysis.json`` (``launch.analyze`` with
    ``--config.analyses`` naming ``clipping``, ``--out results/NAME``)."""
    from binarybert_jax import analysis, workdirs
    report = workdirs.read_json(results_dir / name / "analysis.json")
    if "clipping" not in report:
        raise UserError(f"a marker names results:{name}, but {results_dir / name / 'analysis.json'} has no "
                        "clipping statistics: rerun launch.analyze with --config.analyses=('clipping',)")
    labels = {m["name"]: m["label"] for m in report["models"]}
    return analysis.clipping_table(report["clipping"], labels)


def rebuild(text: str, results_dir: pathlib.Path, per_seed: bool = False, where: str = "README",
            readme_dir: Optional[pathlib.Path] = None, draw: bool = True) -> str:
    """``text`` with every marked section re-rendered from ``results_dir`` (figures drawn only with
    ``draw``; their links relative to ``readme_dir``, default the checkout)."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        out.append(lines[i])
        i += 1
        if not m:
            continue
        start = i
        while i < len(lines) and not END.match(lines[i]):
            if BEGIN.match(lines[i]):
                break
            i += 1
        if i == len(lines) or not END.match(lines[i]):
            raise UserError(f"{where}:{start}: <!-- results:{m['name']} --> has no <!-- /results --> "
                            "before the next marker or the end")
        name, indent = m["name"], m["indent"]
        options = _parse_options(m["options"], f"{where}:{start}")
        if name == "parity":
            body = render_parity(results_dir)
        elif options.get("adaptive"):
            body = render_adaptive(results_dir, name)
        elif options.get("run_time"):
            body = render_run_time(results_dir, name)
        elif (results_dir / name / "analysis.json").is_file():
            body = render_clipping(results_dir, name)
        elif isinstance(options.get("curves"), str):
            body = render_curves(results_dir, name, load_records(results_dir, name), options["curves"],
                                 readme_dir or common.REPO_ROOT, draw)
        else:
            metrics = options["metrics"].split(",") if isinstance(options.get("metrics"), str) else None
            records = load_records(results_dir, name)
            if isinstance(options.get("order"), str):
                records = order_records(records, options["order"].split(","), f"{where}:{start}")
            body = render_table(records, options.get("which", "both"), metrics,
                                per_seed=per_seed or bool(options.get("per_seed")),
                                wall=bool(options.get("wall")), bits=bool(options.get("bits")),
                                time_split=bool(options.get("time")))
        out += [indent + b for b in body]
        out.append(lines[i])  # the end marker
        i += 1
    return "\n".join(out)


def documents(root: pathlib.Path = common.REPO_ROOT) -> list[pathlib.Path]:
    """The files of ``DOCUMENTS`` that exist under ``root``, in that order (docs/ sorted by name)."""
    found = []
    for pattern in DOCUMENTS:
        found += sorted(p for p in root.glob(pattern) if p.is_file())
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.ArgumentParser(prog="python -m launch.tables", epilog=arguments.examples_from(__doc__),
                                      description="The results tables of README.md, BENCHMARKS.md and "
                                                  "docs/*.md from results/.")
    parser.add_argument("--file", "--readme", dest="files", action="append", default=None,
                        metavar="PATH", help="a Markdown file to rebuild (repeat for several; default: "
                                             + ", ".join(DOCUMENTS) + ")")
    parser.add_argument("--results_dir", default=str(DEFAULT_RESULTS))
    parser.add_argument("--per_seed", action="store_true", help="each seed's value in every table")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a file differs from what results/ gives")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from binarybert_jax import workdirs
    args = build_parser().parse_args(argv)
    files = [pathlib.Path(f) for f in args.files] if args.files else documents()
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"no such file: {', '.join(missing)} (--file names a Markdown file to rebuild)")
    stale = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        new = rebuild(text, pathlib.Path(args.results_dir), args.per_seed, str(path), path.parent,
                      draw=not args.check)
        sections = sum(1 for line in text.split("\n") if BEGIN.match(line))
        if args.check:
            if new != text:
                stale.append(path)
                print(f"{path}: {sections} marked sections; out of date with {args.results_dir} "
                      "(run python -m launch.tables)", file=sys.stderr)
            else:
                print(f"{path}: {sections} marked sections, up to date")
            continue
        if new != text:
            workdirs.write_text(path, new)
        print(f"{path}: {sections} marked sections rebuilt from {args.results_dir}"
              + ("" if new != text else " (no change)"))
    return 1 if stale else 0


if __name__ == "__main__":
    common.run_main(main)
