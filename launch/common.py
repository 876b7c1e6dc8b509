"""Shared set-up of the mains: logging, flag parsing and the one-line handling of bad input.

Every main's ``__main__`` block is ``common.run_main(main, ...)``. Bad input a person can fix (a
``UserError``, a missing file, a full disk, a missing client package for ``gs://``, wherever in a
chain of wrapped exceptions it is) ends the main with one line on stderr and exit 2; a non-finite
loss with exit 3; an interrupt with its signal's status after saving. Any other exception is a
defect: one line naming it and exit 1, its traceback printed with ``--verbose`` or
``$BINARYBERT_JAX_VERBOSE=1``.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import importlib.util
import logging
import os
import pathlib
import subprocess
import sys
import time
from typing import Callable, Sequence

EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3
EXIT_BUG = 1
DEFAULT_DISTRIBUTED_TIMEOUT_S = 60
# Set (to anything but 0/empty) or ``--verbose`` on a main's command line: a defect's traceback is
# printed in full; without it a defect is one line too.
VERBOSE_ENV = "BINARYBERT_JAX_VERBOSE"


def setup_logging() -> None:
    """Our package logs at INFO to stderr; absl (through which Orbax logs every file operation
    at INFO) stays at WARNING."""
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("absl").addFilter(_rethrown_by_orbax)
    ours = logging.getLogger("binarybert_jax")
    ours.setLevel(logging.INFO)
    if not ours.handlers:
        ours.addHandler(logging.StreamHandler())
    ours.propagate = False


def _rethrown_by_orbax(record: logging.LogRecord) -> bool:
    """Drops the log of an error in one of Orbax's worker threads: Orbax raises the same error
    again in the main thread, whose one line (``run_main``) says it; logged too, with its
    traceback, it would print each cause several times over above that line."""
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname
                and "raised an exception" in str(record.msg))


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
    flags.DEFINE_integer("distributed_timeout", DEFAULT_DISTRIBUTED_TIMEOUT_S,
                         "Seconds to wait for every process to join before giving up, naming the "
                         "coordinator and the processes missing (raise it for slow-starting hosts).")


def initialize_distributed(flag_values) -> None:
    """Calls ``jax.distributed.initialize`` as the distributed flags say (nothing without them).

    On the CPU backend the cross-process collectives are JAX's gloo implementation, which must be
    chosen before the backend starts.

    A process whose peers never come would otherwise wait silently for minutes and then abort
    inside the runtime (no Python exception to catch): a line says what it waits for, and a
    watchdog ends it after ``--distributed_timeout`` seconds with one line naming the coordinator
    and the processes that did not join (JAX's own timeout is set later, so the watchdog speaks
    first).
    """
    import threading
    import jax
    explicit = flag_values.coordinator_address is not None
    if not (flag_values.distributed or explicit):
        return
    if explicit and (flag_values.num_processes is None or flag_values.process_id is None):
        fail("--coordinator_address needs --num_processes and --process_id")
    timeout = flag_values.distributed_timeout
    if timeout is None or timeout < 1:
        fail(f"--distributed_timeout={timeout}: must be at least 1 second")
    if explicit and not 0 <= flag_values.process_id < flag_values.num_processes:
        fail(f"--process_id={flag_values.process_id}: must be in 0..{flag_values.num_processes - 1} "
             f"(--num_processes={flag_values.num_processes})")
    platforms = (jax.config.jax_platforms or "").split(",")
    if "cpu" in platforms[:1]:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        me, n, address = flag_values.process_id, flag_values.num_processes, flag_values.coordinator_address
        others = [i for i in range(n) if i != me]
        peers = [i for i in others if i != 0]
        waiting = (f"process {me} of {n}: coordinator at {address}, waiting up to {timeout} s for "
                   + (f"{_processes(others)} to join" if me == 0 else
                      "process 0 (the coordinator)" + (f" and {_processes(peers)}" if peers else "")
                      + " to join"))
        missing = (f"missing process id{'s' if len(others) > 1 else ''} {_id_list(others)}"
                   + (" (all or some of them)" if len(others) > 1 else "") if me == 0 else
                   f"missing process id 0 (the coordinator, nothing answered at {address})"
                   + (f" or some of {_id_list(peers)}" if peers else ""))
        where = f"coordinator {address}"
        kwargs = dict(coordinator_address=address, num_processes=n, process_id=me)
    else:
        waiting = (f"joining a multi-process run found from the environment, waiting up to "
                   f"{timeout} s for every process")
        missing, where, kwargs = "not every process joined", "the coordinator found from the environment", {}
    print(waiting + " (--distributed_timeout raises it)", file=sys.stderr, flush=True)

    def give_up():
        print(f"error: distributed initialization timed out after {timeout} s at {where}: {missing}; "
              "start every process with the same --coordinator_address and --num_processes and its "
              "own --process_id, or raise --distributed_timeout", file=sys.stderr, flush=True)
        os._exit(EXIT_USER_ERROR)

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(initialization_timeout=timeout + 60, **kwargs)
    finally:
        watchdog.cancel()


def _processes(ids: Sequence[int]) -> str:
    return f"process{'es' if len(ids) > 1 else ''} {_id_list(ids)}"


def _id_list(ids: Sequence[int]) -> str:
    if len(ids) > 6:
        return f"{ids[0]}..{ids[-1]}"
    return ", ".join(map(str, ids))


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


# The kind of workdir each main that records provenance makes (workdirs.workdir_kind).
_MAIN_KINDS = {"train": "training run", "pipeline": "pipeline"}


@contextlib.contextmanager
def provenance(workdir, argv: Sequence[str]):
    """Appends this invocation (command, commit, start, wall seconds, outcome: finished,
    interrupted, refused, failed or exit N) to the workdir's ``provenance.json`` when the block
    ends, however it ends, if the workdir exists by then: what ``launch.record`` reads to say which
    code produced a run and how long it took.

    A process killed outright (SIGKILL, a machine taken away) runs no ``finally``, so the entry is
    written at the start too, as ``running``, and replaced at the end: at once when the workdir is
    already there, else as soon as the main creates it (``workdirs.claim_workdir``). Each entry
    says whether the workdir existed when it started (``workdir_existed``), so that a first entry
    saying so tells that the invocation which created the workdir left no entry (one made by code
    older than these early entries), and its commit is unknown (``launch.record`` says so).

    A directory of another kind than the main makes (``workdirs.workdir_kind``: a pipeline's
    for ``launch.train``, a model), where the main is refused, gets no entry: it is left as it is."""
    from binarybert_jax import workdirs
    from binarybert_jax.errors import UserError
    if not str(workdir).strip():  # "" would be read as the current directory
        fail("--workdir is empty: give a directory")
    # The main's name, however it was started: launch/train.py, launch.train, binarybert-train.
    main = (pathlib.Path(str(argv[0]) if argv else "").name.removesuffix(".py").split(".")[-1]
            .removeprefix("binarybert-"))
    found = workdirs.workdir_kind(workdir)
    if found is not None and found != _MAIN_KINDS.get(main, found):
        # A directory of another kind (the run will be refused there): its files are left alone.
        yield
        return
    started, outcome = time.time(), "interrupted"
    path = workdirs.as_path(workdir) / PROVENANCE_FILE
    entry = {"argv": list(argv), **git_state(),
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
             "workdir_existed": path.parent.is_dir()}

    def write(outcome: str) -> None:
        if not path.parent.is_dir():
            return
        # Re-read: the entry of a concurrent invocation (refused on the workdir's lock) stays.
        others = [e for e in read_provenance(path, set_aside=True)
                  if not (e.get("started") == entry["started"] and e.get("argv") == entry["argv"]
                          and e.get("outcome") == "running")]
        workdirs.write_json(path, others + [
            dict(entry, wall_seconds=round(time.time() - started, 1), outcome=outcome)])

    def created(claimed) -> None:  # the main has just made (or confirmed) a workdir: this one?
        if os.fspath(claimed) == os.fspath(path.parent):
            write("running")  # replaces this invocation's own running entry, if there is one

    write("running")
    try:
        with workdirs.on_claim(created):
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
        try:
            write(outcome)
        except (OSError, UserError):
            if outcome == "finished":
                raise
            # The invocation already failed (a full disk, most likely) and says why: its entry
            # cannot be written either, and a second error would only hide the first.


def read_provenance(path, set_aside: bool = False) -> list[dict]:
    """The entries of a ``provenance.json`` ([] when there is none). One that cannot be read (cut
    short by a full disk, edited by hand) is skipped with a warning rather than blocking a run or
    a report; with ``set_aside`` it is kept beside as ``provenance.json.unreadable`` (the
    invocation then starts a fresh file)."""
    from binarybert_jax import workdirs
    from binarybert_jax.errors import UserError
    path = workdirs.as_path(path)
    if not path.is_file():
        return []
    try:
        entries = workdirs.read_json(path)
    except UserError as e:
        entries = e
    if isinstance(entries, list) and all(isinstance(e, dict) for e in entries):
        return entries
    why = entries if isinstance(entries, UserError) else f"{path}: not a list of invocations"
    kept = ""
    if set_aside and workdirs.is_writer():
        aside = path.with_name(path.name + ".unreadable")
        path.replace(aside)
        kept = f"; kept as {aside}, a new one is started"
    logging.getLogger("binarybert_jax.provenance").warning(
        "warning: %s; its invocations are skipped%s", why, kept)
    return []


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


# Operating-system errors a person fixes (space, permissions, a path), wherever in a chain of
# exceptions (Orbax and asyncio wrap them several times over) they are.
_USER_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.ENOENT: "no such file or directory",
                errno.ENOTDIR: "not a directory", errno.EISDIR: "is a directory",
                errno.ENAMETOOLONG: "file name too long"}
# The client packages of the remote file systems a workdir may be on.
_REMOTE_CLIENTS = {"gcsfs": "gs:// paths need the Google Cloud Storage client: pip install gcsfs",
                   "s3fs": "s3:// paths need the S3 client: pip install s3fs"}


def _chain(e: BaseException) -> list[BaseException]:
    seen, out = set(), []
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def user_error_message(e: BaseException) -> str | None:
    """The one line to show for ``e`` when it is bad input or a fault of the environment (a full
    disk, a missing package), else None (a defect). The cause deepest in the chain that says what
    a person can fix wins over the wrappers around it."""
    from binarybert_jax.errors import UserError
    chain = _chain(e)
    for c in chain:
        if isinstance(c, UserError):
            return str(c)
    for c in chain:
        text = str(c)
        for package, message in _REMOTE_CLIENTS.items():
            if isinstance(c, ImportError) and package in text:
                return message
    for c in reversed(chain):  # the root cause first
        if isinstance(c, OSError) and c.errno in _USER_ERRNOS:
            where = " ".join(str(f) for f in (c.filename, c.filename2) if f)
            if isinstance(c, FileNotFoundError) and not c.filename:
                return str(c)  # our own messages: the path and what was expected
            return f"{where + ': ' if where else ''}{c.strerror or _USER_ERRNOS[c.errno]}"
    for c in chain:
        if isinstance(c, ValueError) and _raised_by_project(c):
            # The data readers and checks describe bad input (a TSV row, a --bits string) with a
            # ValueError naming it; one raised inside numpy or JAX is a defect.
            return str(c)
    for c in chain:
        if isinstance(c, FileNotFoundError):
            return str(c)
        if isinstance(c, ModuleNotFoundError):
            return f"{c}: a package is missing from this environment (pip install -r requirements.txt)"
    return None


_PROJECT_DIRS = tuple(str(REPO_ROOT / d) + os.sep for d in ("binarybert_jax", "launch", "configs"))


def _raised_by_project(e: BaseException) -> bool:
    """Whether ``e`` was raised by a ``raise`` in the project's own code (its innermost frame)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PROJECT_DIRS)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def run_guarded(fn: Callable, *args, **kwargs):
    """Calls ``fn``; bad input, a non-finite loss and an interrupt end the process with one line
    (a ``SystemExit``, so that an enclosing ``provenance`` records the outcome); a defect is raised
    on, for ``run_main`` to report."""
    from binarybert_jax.train import Interrupted, NonFiniteLossError
    try:
        return fn(*args, **kwargs)
    except NonFiniteLossError as e:
        fail(str(e), EXIT_NONFINITE)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        if verbose():
            import traceback
            traceback.print_exc()
        fail(message)


def run_main(fn: Callable, *args, **kwargs):
    """What every main's ``__main__`` block calls: runs ``fn`` and ends the process.

    Bad input ends it with one line and exit 2 (``run_guarded``); a defect (any other exception)
    with one line naming it and exit 1, its traceback printed only with ``--verbose`` on the
    command line (taken out before the main parses its flags) or ``$BINARYBERT_JAX_VERBOSE`` set.
    The process ends at once after the line: thread pools and event loops of a failed Orbax save
    would otherwise print pages of shutdown noise (``Event loop is closed``) below it.
    """
    if "--verbose" in sys.argv[1:]:
        sys.argv.remove("--verbose")
        args = tuple([a for a in arg if a != "--verbose"] if isinstance(arg, list) else arg
                     for arg in args)
        os.environ[VERBOSE_ENV] = "1"
    show_warnings()
    import argparse
    argparse.ArgumentParser.error = _one_line_usage_error
    try:
        code = run_guarded(fn, *args, **kwargs)
    except SystemExit as e:
        if isinstance(e.code, str):  # sys.exit("message"): bad input described by a main
            print(f"error: {e.code}" if not e.code.startswith("error:") else e.code, file=sys.stderr)
            _exit_now(EXIT_USER_ERROR)
        if e.code in (EXIT_USER_ERROR, EXIT_BUG):
            _exit_now(e.code)
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        _exit_now(130)
    except Exception as e:
        if verbose():
            import traceback
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: internal error ({type(e).__name__}: {first}): this is a bug; rerun with "
              f"--verbose or {VERBOSE_ENV}=1 for the traceback", file=sys.stderr)
        _exit_now(EXIT_BUG)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line_usage_error(parser, message: str):
    """argparse's ``error`` in one line (its own prints the whole usage block above it)."""
    parser.exit(EXIT_USER_ERROR, f"error: {message} ({parser.prog} --help lists the flags)\n")


def _exit_now(code: int):
    """Ends the process after a failure's one line without running the interpreter's shutdown,
    where the worker threads and event loops of an interrupted Orbax operation print pages of
    noise; the files a main writes are written through complete-or-nothing renames, so nothing
    is left half-written by skipping it."""
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def show_warnings() -> None:
    """Warnings of our package (an unverified packed file, a skipped corrupt record) reach stderr
    in every main, also in those that do not turn on INFO logging."""
    ours = logging.getLogger("binarybert_jax")
    if not ours.handlers:
        ours.addHandler(logging.StreamHandler())
    ours.propagate = False


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
    """absl's flag parsing, every failure reported in one line: an unknown ``--config.key`` with
    close keys (ml_collections raises it as a chained AttributeError deep inside its override
    code), a missing config file, and an error of the config file's own arguments (an unknown
    task, an unknown ``:argument``) without the traceback absl folds into its message.
    ``--help`` prints the main's flags and its config's keys (launch.config_help), exit 0."""
    from absl import flags
    from launch import config_help
    if config_help.wants_help(argv):
        config_help.print_help_and_exit(argv)
    found = _config_file(list(argv))
    if found is not None and found[0] and not pathlib.Path(found[0]).is_file():
        shipped = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.py") if p.name != "__init__.py")
        fail(f"--config {found[0]}: no such config file (the shipped ones: configs/"
             + ", configs/".join(shipped) + ")")
    try:
        rest = flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError) as e:
        try:
            message = _unknown_override(list(argv))
        except Exception:  # the config file itself fails: the flag error below says why
            message = None
        fail(message or f"bad --config override: {_root_message(e)}")
    except flags.Error as e:
        first, cause = str(e).strip().splitlines()[0], _root_message(e)
        flag = first.split(": Error whilst parsing")[0] if ": Error whilst parsing" in first else ""
        fail(f"{flag}: {cause}" if flag else cause)
    except Exception as e:
        message = user_error_message(e)
        fail(message or _root_message(e))
    if len(rest) > 1:  # absl would print its whole usage text above the reason
        fail(f"unexpected arguments {rest[1:]}: every setting is a flag (--name=value); "
             f"python -m launch.{pathlib.Path(rest[0]).stem} --help lists them")
    return rest


def _root_message(e: BaseException) -> str:
    """The first line of the first exception in ``e``'s chain that says something itself (not
    a wrapper whose message is a traceback of another)."""
    for c in _chain(e):
        text = str(c).strip()
        if text and "Traceback (most recent call last)" not in text and not text.startswith(
                ("Error whilst parsing", "Configuration is not available")):
            return text.splitlines()[0]
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
