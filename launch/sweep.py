"""Runs a sweep: the named runs a ``configs/sweeps/<name>.py`` declares, one after the other, each
recorded under ``results/`` as it finishes, then README's tables rebuilt from the records.

    python -m launch.sweep configs/sweeps/fidelity.py --dry_run          # the runs, their commands, records
    python -m launch.sweep configs/sweeps/fidelity.py:act_bits=4,seeds=1+2
    python -m launch.sweep fidelity --only seeds --only 'ablation/*/s1'  # some of the runs
    bash launch/gpu.sh --main sweep -- fidelity:epochs=2                 # on a GPU host

Run from the repository root (the runs' workdirs and configs are relative to it). Rerunning
resumes: a run whose records all exist is skipped, one whose training finished is only recorded,
and an interrupted one continues from its workdir (the trainers resume). ``--force`` runs every
selected run's command again (its trainers still skip what they finished) and records it again.
``--only PATTERN`` (repeatable) selects runs by name: a glob (``ablation/*/s1``) or a name and
everything under it (``seeds`` selects ``seeds/s1``, ...); the runs they need come along.
``--override KEY=VALUE`` (repeatable) adds ``--config.KEY=VALUE`` to every run that takes a
config, e.g. ``--override pretrained=DIR`` for a local copy of the backbone.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import pathlib
import shlex
import signal
import subprocess
import sys
from typing import Optional, Sequence

from binarybert_jax.errors import UserError
from launch import arguments, common

DEFAULT_RESULTS = common.REPO_ROOT / "results"
SWEEPS_DIR = common.REPO_ROOT / "configs" / "sweeps"


def load_sweep(spec: str) -> list:
    """The runs of ``FILE.py[:ARG]`` or ``NAME[:ARG]`` (a file of configs/sweeps)."""
    if ".py:" in spec:
        path, arg = spec.split(".py:", 1)
        path += ".py"
    else:
        path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.suffix:
        file = SWEEPS_DIR / f"{path}.py"
    if not file.is_file():
        known = sorted(p.stem for p in SWEEPS_DIR.glob("*.py") if p.stem != "__init__")
        raise UserError(f"sweep {spec!r}: no file {file} (sweeps in configs/sweeps: {', '.join(known)})")
    module_spec = importlib.util.spec_from_file_location(f"sweep_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_runs"):
        raise UserError(f"sweep {file}: defines no get_runs(arg)")
    try:
        runs = list(module.get_runs(arg or None))
    except ValueError as e:
        raise UserError(f"sweep {spec!r}: {e}") from None
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"sweep {file}: run names {duplicates} are declared more than once")
    missing = sorted({n for r in runs for n in r.needs if n not in names})
    if missing:
        raise UserError(f"sweep {file}: runs need {missing}, which it does not declare")
    return runs


def select(runs: list, patterns: Sequence[str]) -> list:
    """The runs ``--only`` names (all without patterns), in the sweep's order."""
    if not patterns:
        return list(runs)
    chosen = set()
    for pattern in patterns:
        hits = {r.name for r in runs if fnmatch.fnmatchcase(r.name, pattern)
                or r.name.startswith(pattern.rstrip("/") + "/")}
        if not hits:
            raise UserError(f"--only {pattern!r} matches no run; the runs: {', '.join(r.name for r in runs)}")
        chosen |= hits
    return [r for r in runs if r.name in chosen]


def is_recorded(record, results_dir: pathlib.Path) -> bool:
    out = results_dir / record.name
    return (out / "record.json").is_file() or (out / "pipeline.json").is_file()


def is_finished(run, results_dir: pathlib.Path) -> bool:
    from configs.sweeps import InResults
    return all((results_dir / f.path if isinstance(f, InResults) else pathlib.Path(f)).is_file()
               for f in run.output_files())


def is_done(run, results_dir: pathlib.Path) -> Optional[bool]:
    """Whether what the run leaves in the results directory (its records, the outputs it writes
    there) is all there; None for a run that leaves nothing there (a model other runs start from)."""
    from configs.sweeps import InResults
    in_results = [f for f in run.outputs if isinstance(f, InResults)]
    if not (run.records or in_results):
        return None
    return (all(is_recorded(r, results_dir) for r in run.records)
            and all((results_dir / f.path).is_file() for f in in_results))


def plan(runs: list, patterns: Sequence[str], results_dir: pathlib.Path, force: bool = False) -> list:
    """The runs to run, in the sweep's order: the selected ones whose results are not all there
    (all with ``force``), a selected run that leaves no results when ``--only`` names it and it
    has not finished, and every run one of those needs that has not finished."""
    by_name = {r.name: r for r in runs}
    todo = set()
    for run in select(runs, patterns):
        done = is_done(run, results_dir)
        if done is not None:
            if force or not done:
                todo.add(run.name)
        elif patterns and (force or not is_finished(run, results_dir)):
            todo.add(run.name)
    stack = list(todo)
    while stack:
        for need in by_name[stack.pop()].needs:
            if need not in todo and not is_finished(by_name[need], results_dir):
                todo.add(need)
                stack.append(need)
    return [r for r in runs if r.name in todo]


def command(run, overrides: Sequence[str] = (), results_dir: pathlib.Path = DEFAULT_RESULTS,
            resolve: bool = True) -> list[str]:
    """The run's command line; ``Best`` checkpoints resolved (``resolve``) or shown as ``<best>``,
    ``InResults`` paths under ``results_dir``, an ``args`` item that is a tuple joined into one."""
    from configs.sweeps import Best, InResults, flag_value

    def value(v) -> str:
        if isinstance(v, Best) and not resolve:
            return str(v)
        if isinstance(v, InResults):
            return str(results_dir / v.path)
        return flag_value(v)

    argv = [sys.executable, "-m", run.main]
    if run.config:
        argv += ["--config", run.config, "--workdir", run.workdir]
        argv += [f"--config.{k}={value(v)}" for k, v in run.overrides.items()]
        argv += [f"--config.{o}" for o in overrides]
    return argv + ["".join(map(value, a)) if isinstance(a, tuple) else value(a) for a in run.args]


def record_command(record, results_dir: pathlib.Path) -> list[str]:
    argv = [sys.executable, "-m", "launch.record", record.workdir, "--name", record.name,
            "--results_dir", str(results_dir)]
    return argv + (["--setting", record.setting] if record.setting else [])


def _show(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in ["python", *argv[1:]])


def _call(argv: list[str], what: str) -> None:
    """Runs one command to its end. Ctrl-C in a terminal reaches the command too, which saves a
    checkpoint and stops (the trainers resume from it), so it is waited for, never killed; a
    SIGTERM to the sweep is passed on to it."""
    print(f"+ {_show(argv)}", flush=True)
    proc = subprocess.Popen(argv)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    interrupted = False
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    if interrupted:
        raise UserError(f"{what}: interrupted; rerun the same sweep command to resume")
    if code != 0:
        raise UserError(f"{what}: exited with status {code}; rerun the same sweep command to resume")


def dry_run(runs: list, todo: list, patterns: Sequence[str], results_dir: pathlib.Path,
            overrides: Sequence[str]) -> None:
    """Prints every selected run (and each run they need): its state, command and records."""
    shown = {r.name for r in select(runs, patterns)} | {r.name for r in todo}
    pending = {r.name for r in todo}
    for run in runs:
        if run.name not in shown:
            continue
        finished = is_finished(run, results_dir)
        state = ("to run" if not finished else "to record") if run.name in pending else (
            "recorded" if is_done(run, results_dir) else ("finished" if finished else "not needed"))
        print(f"{run.name}  [{state}]")
        print(f"  {_show(command(run, overrides, results_dir, resolve=False))}")
        for rec in run.records:
            print(f"  record {rec.name}" + (f"  ({rec.setting})" if rec.setting else ""))
    to_run = sum(not is_finished(r, results_dir) for r in todo)
    print(f"{len(todo)} of {len(shown)} runs pending ({to_run} to run, {len(todo) - to_run} only to record)")


def run_sweep(runs: list, patterns: Sequence[str] = (), *, results_dir: pathlib.Path = DEFAULT_RESULTS,
              overrides: Sequence[str] = (), force: bool = False) -> list[str]:
    """Runs and records what ``plan`` says, in order; returns the record names written."""
    written = []
    for run in plan(runs, patterns, results_dir, force):
        if force or not is_finished(run, results_dir):
            print(f"sweep: run {run.name}", flush=True)
            _call(command(run, overrides, results_dir), f"run {run.name}")
        elif run.records:
            print(f"sweep: run {run.name} finished; recording it", flush=True)
        for rec in run.records:
            if force or not is_recorded(rec, results_dir):
                _call(record_command(rec, results_dir), f"recording {rec.name} (run {run.name})")
                written.append(rec.name)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.ArgumentParser(prog="python -m launch.sweep", description=__doc__.split("\n\n")[0],
                                      epilog=arguments.examples_from(__doc__))
    parser.add_argument("sweep", help="configs/sweeps/NAME.py[:ARG] or NAME[:ARG]")
    parser.add_argument("--dry_run", action="store_true", help="list the runs, commands and records; run nothing")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run these runs (a glob, or a name and the runs under it); repeatable")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="--config.KEY=VALUE for every run that takes a config; repeatable")
    parser.add_argument("--results_dir", default=str(DEFAULT_RESULTS),
                        help="where records go (default: results/ of the checkout, whose tables are then rebuilt)")
    parser.add_argument("--force", action="store_true", help="run and record the selected runs again")
    parser.add_argument("--no_tables", action="store_true", help="do not rebuild README's tables afterwards")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    bad = [o for o in args.override if "=" not in o or not o.partition("=")[0]]
    if bad:
        raise UserError(f"--override {bad[0]!r}: give KEY=VALUE (a config key, e.g. pretrained=DIR)")
    runs = load_sweep(args.sweep)
    results_dir = pathlib.Path(args.results_dir).absolute()
    if results_dir.is_relative_to(pathlib.Path.cwd()):  # the commands shown name no machine's path
        results_dir = results_dir.relative_to(pathlib.Path.cwd())
    todo = plan(runs, args.only, results_dir, args.force)
    if args.dry_run:
        dry_run(runs, todo, args.only, results_dir, args.override)
        return 0
    written = run_sweep(runs, args.only, results_dir=results_dir, overrides=args.override, force=args.force)
    print(f"sweep: {len(written)} record(s) written under {results_dir}", flush=True)
    if written and not args.no_tables:
        if results_dir.resolve() == DEFAULT_RESULTS.resolve():
            _call([sys.executable, "-m", "launch.tables"], "rebuilding the tables")
        else:
            print(f"sweep: README's tables read {DEFAULT_RESULTS}; these records are in {results_dir}")
    return 0


if __name__ == "__main__":
    common.run_main(main)
