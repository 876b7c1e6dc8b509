"""Shared set-up of the mains: logging, flag parsing and the one-line handling of bad input.

A ``UserError`` (bad input a person can fix), a non-finite loss and an interrupt end a main with
one line on stderr and a distinct exit status; any other exception is a defect and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging
import pathlib
import subprocess
import sys
import time
from typing import Callable, Sequence

EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3


def setup_logging() -> None:
    """Our package logs at INFO to stderr; absl (through which Orbax logs every file operation
    at INFO) stays at WARNING."""
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    ours = logging.getLogger("binarybert_jax")
    ours.setLevel(logging.INFO)
    if not ours.handlers:
        ours.addHandler(logging.StreamHandler())
    ours.propagate = False


def define_distributed_flags() -> None:
    """The flags that join a multi-process run (every host of a TPU slice, a GPU cluster, or several
    processes on one machine): ``--distributed`` lets JAX find the cluster itself (TPU VMs, SLURM,
    ...); ``--coordinator_address`` with ``--num_processes`` and ``--process_id`` gives it explicitly."""
    from absl import flags
    flags.DEFINE_bool("distributed", False, "Join a multi-process run: jax.distributed.initialize() "
                      "with the cluster found from the environment (TPU VM slices, SLURM, ...).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs "
                        "without automatic discovery, e.g. GPU hosts or CPU processes on one machine).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def initialize_distributed(flag_values) -> None:
    """Calls ``jax.distributed.initialize`` as the distributed flags say (nothing without them).

    On the CPU backend the cross-process collectives are JAX's gloo implementation, which must be
    chosen before the backend starts.
    """
    import jax
    explicit = flag_values.coordinator_address is not None
    if not (flag_values.distributed or explicit):
        return
    if explicit and (flag_values.num_processes is None or flag_values.process_id is None):
        fail("--coordinator_address needs --num_processes and --process_id")
    platforms = (jax.config.jax_platforms or "").split(",")
    if "cpu" in platforms[:1]:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address=flag_values.coordinator_address,
                                   num_processes=flag_values.num_processes,
                                   process_id=flag_values.process_id)
    else:
        jax.distributed.initialize()


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PROVENANCE_FILE = "provenance.json"


# What a run writes into the checkout itself (records, README's rebuilt tables), which says nothing
# about the code that ran: left out of "dirty", or every run of a sweep after the first that
# recorded would count as run from modified code.
NOT_CODE = (":(exclude)results", ":(exclude)*.md")


def git_state(root: pathlib.Path = REPO_ROOT) -> dict:
    """``{"git_commit": sha, "git_dirty": bool}`` of the code at ``root`` (dirty: tracked files
    other than ``NOT_CODE``'s differ from the commit); both None where ``root`` is not a git
    checkout or git is missing."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                 "--", ".", *NOT_CODE],
                                capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}


@contextlib.contextmanager
def provenance(workdir, argv: Sequence[str]):
    """Appends this invocation (command, commit, start, wall seconds, outcome: finished,
    interrupted, refused, failed or exit N) to the workdir's ``provenance.json`` when the block
    ends, however it ends, if the workdir exists by then: what ``launch.record`` reads to say which
    code produced a run and how long it took.

    A process killed outright (SIGKILL, a machine taken away) runs no ``finally``, so an invocation
    that finds the workdir already there is written at its start too, as ``running``, and replaced
    at its end; and each entry says whether the workdir existed when it started
    (``workdir_existed``), so that a first entry saying so tells that the invocation which created
    the workdir left no entry, and its commit is unknown (``launch.record`` says so)."""
    from binarybert_jax import checkpoints
    started, outcome = time.time(), "interrupted"
    path = checkpoints.as_path(workdir) / PROVENANCE_FILE
    entry = {"argv": list(argv), **git_state(),
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
             "workdir_existed": path.parent.is_dir()}

    def write(outcome: str) -> None:
        if not path.parent.is_dir():
            return
        # Re-read: the entry of a concurrent invocation (refused on the workdir's lock) stays.
        others = [e for e in (checkpoints.read_json(path) if path.is_file() else [])
                  if not (e.get("started") == entry["started"] and e.get("argv") == entry["argv"]
                          and e.get("outcome") == "running")]
        checkpoints.write_json(path, others + [
            dict(entry, wall_seconds=round(time.time() - started, 1), outcome=outcome)])

    write("running")
    try:
        yield
        outcome = "finished"
    except SystemExit as e:
        # Bad input (a changed config on resume, a held lock, a missing file) ends a run before it
        # changes the workdir: "refused", which launch.record does not count among the commits.
        outcome = ("finished" if not e.code else "refused" if e.code == EXIT_USER_ERROR
                   else f"exit {e.code}")
        raise
    except BaseException as e:
        outcome = f"failed: {type(e).__name__}"
        raise
    finally:
        write(outcome)


COMPILATION_CACHE_ENV = "BINARYBERT_JAX_CACHE"


def enable_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache, so that the programs a run compiles (the train
    step, the evaluation forward per bucket length) are compiled once across stages, reruns and
    runs, then read from disk. Directory: ``$BINARYBERT_JAX_CACHE``, else ``<assets.cache_dir()>/jax``;
    ``BINARYBERT_JAX_CACHE=off`` leaves it off. Returns the directory (None when off)."""
    import os
    import jax
    from binarybert_jax import assets
    where = os.environ.get(COMPILATION_CACHE_ENV, str(assets.cache_dir() / "jax"))
    if where.lower() in ("off", "0", "none", ""):
        return None
    jax.config.update("jax_compilation_cache_dir", where)
    # Seconds: the train steps take several to compile, the evaluation forwards about one; smaller
    # programs are cheaper to compile than to look up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return where


def fail(message: str, code: int = EXIT_USER_ERROR):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def run_guarded(fn: Callable, *args, **kwargs):
    """Calls ``fn``; bad input, a non-finite loss and an interrupt end the process with one line."""
    from binarybert_jax.errors import UserError
    from binarybert_jax.train import Interrupted, NonFiniteLossError
    try:
        return fn(*args, **kwargs)
    except (UserError, FileNotFoundError) as e:  # bad input: a path, a value, a file's content
        fail(str(e))
    except NonFiniteLossError as e:
        fail(str(e), EXIT_NONFINITE)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)


def _config_file(argv: Sequence[str]) -> tuple[str, str] | None:
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--config=") else (
            argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
        if value is not None:
            path, _, arg = value.partition(":")
            return path, arg
    return None


def _unknown_override(argv: Sequence[str]) -> str | None:
    """For the first ``--config.a.b=v`` naming no key of the config file, a message with close keys."""
    found = _config_file(argv)
    if found is None:
        return None
    path, arg = found
    spec = importlib.util.spec_from_file_location("_config_for_message", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    for a in argv:
        if not a.startswith("--config."):
            continue
        dotted = a[len("--config."):].split("=", 1)[0]
        node, walked = config, []
        for part in dotted.split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                close = difflib.get_close_matches(part, keys, n=3)
                where = ".".join(walked) or "the config"
                hint = f"; did you mean {', '.join('--config.' + '.'.join(walked + [c]) for c in close)}?" if close else ""
                return (f"{a}: {where} has no key {part!r} ({path}{':' + arg if arg else ''}){hint}")
            node, walked = node[part], walked + [part]
    return None


def parse_flags(argv: Sequence[str]):
    """absl's flag parsing, with an unknown ``--config.key`` reported in one line with close keys
    (ml_collections raises it as a chained AttributeError deep inside its override code).
    ``--help`` prints the main's flags and its config's keys (launch.config_help), exit 0."""
    from absl import flags
    from launch import config_help
    if config_help.wants_help(argv):
        config_help.print_help_and_exit(argv)
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError) as e:
        message = _unknown_override(list(argv)) or f"bad --config override: {e}"
        fail(message)
    except flags.Error as e:
        fail(str(e))
