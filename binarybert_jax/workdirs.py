"""Workdirs: their paths, their lock, and every file a run writes into them besides checkpoints.

* Paths (``as_path``, ``is_remote``, ``absolute``): every workdir path is an ``etils.epath.Path``, the
  path type of Orbax and the JAX ecosystem, so a workdir may be local or remote (``gs://bucket/run``,
  ``s3://``); ``pathlib`` would collapse ``gs://`` to ``gs:/``. What differs on a remote workdir (no
  atomic rename, no ``flock``, no append) is decided here and in ``checkpoints.py``, nowhere else;
  see docs/usage.md, "Remote workdirs".
* Records and reports (``write_json``, ``write_text``, ``write_figure``, ``read_json``), written
  whole: locally to a temporary file renamed over the old one, so a crash never leaves half a file.
* The metric log (``MetricWriter``: ``metrics.jsonl`` and TensorBoard; ``read_metrics``).
* What a workdir is (``claim_workdir``, ``check_workdir``: a training run, a pipeline or an analysis,
  recorded in ``workdir.json``; other mains are refused there) and outputs that would overwrite an
  input (``check_output``).
* The workdir lock (``WorkdirLock``) that keeps two runs out of one workdir.

Safe on several processes (multi-host training): only process 0 (``is_writer``) creates, renames
or removes directories and writes JSON, text and figures; ``sync`` is the barrier between them.
Model and train-state checkpoints are ``checkpoints.py``'s.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Optional

import jax
from etils import epath
from jax.experimental import multihost_utils

from binarybert_jax.errors import UserError

log = logging.getLogger(__name__)


def as_path(path: str | os.PathLike) -> epath.Path:
    """The path type of every workdir path: local paths and ``gs://``/``s3://`` URIs alike."""
    return epath.Path(path)


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URI (``gs://bucket/run``) rather than a local path."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> epath.Path:
    """``path`` as an absolute ``epath.Path`` (what Orbax needs); a URI is already absolute."""
    path = as_path(path)
    return path if is_remote(path) else path.absolute()


def is_writer() -> bool:
    """Whether this process writes shared files (process 0; the only one on a single host)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (a no-op on one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _atomic_write(path: epath.Path, data: bytes) -> None:
    try:
        _write_replacing(path, data)
    except OSError as e:  # a full disk, a read-only place: named, with the file
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise UserError(f"cannot write {path}: {e.strerror}") from e
        raise


def _write_replacing(path: epath.Path, data: bytes) -> None:
    if not is_remote(path):
        local = os.fspath(path)  # os.path: epath's is_file() is True for a device
        special = os.path.realpath(local).startswith(("/dev/", "/proc/"))  # /dev/stdout -> /proc/self/fd/1
        if special or (os.path.exists(local) and not os.path.isfile(local) and not os.path.isdir(local)):
            # A device or a pipe (/dev/stdout, a FIFO): written into; a rename would replace the
            # device node itself with a regular file.
            with open(local, "wb") as f:
                f.write(data)
            return
        # Through a symlink to the file it names: a rename onto the link would replace the link.
        path = epath.Path(os.path.realpath(local))
    if is_remote(path):
        # An object store makes an object visible only once its upload completes, so a direct
        # write is already all-or-nothing; a "rename" there would be a second, non-atomic copy.
        path.write_bytes(data)
        return
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        if os.path.exists(tmp):  # a failed write (a full disk) leaves nothing behind
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` atomically (temporary sibling, then rename; a direct upload on a remote
    path), on process 0 only."""
    if is_writer():
        path = as_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs) -> None:
    """Writes ``obj`` as indented JSON, atomically, on process 0 only."""
    write_text(path, json.dumps(obj, indent=2, **dumps_kwargs) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Reads a JSON record; a malformed file is an error naming it."""
    path = as_path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); was the file cut short?") from None


def write_figure(path: str | os.PathLike, fig, dpi: int = 120) -> None:
    """Saves a matplotlib figure as PNG, atomically, on process 0 only."""
    if is_writer():
        import io
        path = as_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        _atomic_write(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Outputs that would destroy inputs, and workdirs of one kind only.
# ---------------------------------------------------------------------------------------------
def _resolved(path: str | os.PathLike) -> epath.Path:
    """``path`` absolute with symlinks resolved (a URI as it is): two names of one place compare equal."""
    path = as_path(path)
    return path if is_remote(path) else epath.Path(os.path.realpath(os.fspath(path)))


def check_output(flag: str, out: str | os.PathLike, inputs: dict) -> None:
    """Refuses output ``out`` (given as ``flag``) when it is empty, or is, contains or lies inside
    one of ``inputs`` (``{flag: path}``; empty ones are skipped), symlinks resolved: writing it
    would overwrite or delete what is read. Call before anything is written.

    Raises:
      UserError: naming both flags and paths.
    """
    if not os.fspath(out).strip():
        raise UserError(f"{flag} is empty: give a path")
    target = _resolved(out)
    for name, path in inputs.items():
        if path is None or not os.fspath(path).strip() or os.fspath(path) == "-":
            continue
        source = _resolved(path)
        if target == source:
            how = "is"
        elif source in target.parents:
            how = "lies inside"
        elif target in source.parents:
            how = "contains"
        else:
            continue
        raise UserError(f"{flag} {out} {how} the input {name} {path}: writing it would overwrite what "
                        "is read; write the output elsewhere")


WORKDIR_FILE = "workdir.json"


TRAINING_RUN, PIPELINE, ANALYSIS = "training run", "pipeline", "analysis"


# How a workdir made before it recorded its kind shows it: the files only that kind writes.
_KIND_MARKS = ((PIPELINE, "pipeline_config.json"), (ANALYSIS, "analysis.json"),
               ("Hugging Face model", "model.safetensors"), ("Hugging Face model", "pytorch_model.bin"),
               (TRAINING_RUN, "config.json"))


_MADE_BY = {TRAINING_RUN: "launch.train", PIPELINE: "launch.pipeline", ANALYSIS: "launch.analyze"}


def workdir_kind(workdir: str | os.PathLike) -> Optional[str]:
    """What made ``workdir``: ``TRAINING_RUN``, ``PIPELINE``, ``ANALYSIS``, ``"model checkpoint"``,
    ``"Hugging Face model"`` (whose config.json a training run's would replace), or None (missing
    or empty, or nothing of ours)."""
    workdir = as_path(workdir)
    if not workdir.is_dir():
        return None
    kind = _read_marker(workdir).get("kind")
    if kind:
        return kind
    for kind, mark in _KIND_MARKS:
        if (workdir / mark).is_file():
            return kind
    # A model checkpoint is defined by checkpoints.py, which writes through this module.
    from binarybert_jax import checkpoints
    return "model checkpoint" if checkpoints.is_model_checkpoint(workdir) else None


def check_workdir(workdir: str | os.PathLike, kind: str, flag: str = "--workdir") -> None:
    """Refuses ``workdir`` when it is empty, a file, or holds something of another kind than
    ``kind`` (a pipeline's results would be overwritten by a training run, and the reverse)."""
    if not os.fspath(workdir).strip():  # before as_path, which reads "" as the current directory
        raise UserError(f"{flag} is empty: give a directory")
    workdir = as_path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"{flag} {workdir} is a file, not a directory: pick another path")
    found = workdir_kind(workdir)
    if found is not None and found != kind:
        by = f" (made by {_MADE_BY[found]})" if found in _MADE_BY else ""
        article = "an" if found[0] in "aeiou" else "a"
        raise UserError(f"{flag} {workdir} holds {article} {found}{by}, not a {kind}: writing the {kind} "
                        "there would overwrite it; use another directory")


# Called with each workdir ``claim_workdir`` has just made or confirmed (process 0): how the
# invocation's provenance entry (launch/common.py) reaches a workdir the invocation itself creates,
# before anything can kill it there.
_claim_listeners: list[Callable[[epath.Path], None]] = []


@contextlib.contextmanager
def on_claim(listener: Callable[[epath.Path], None]):
    """Calls ``listener(workdir)`` after every ``claim_workdir`` inside the block."""
    _claim_listeners.append(listener)
    try:
        yield
    finally:
        _claim_listeners.remove(listener)


def claim_workdir(workdir: str | os.PathLike, kind: str, flag: str = "--workdir") -> None:
    """``check_workdir``, then creates ``workdir`` and records its ``kind`` there (process 0).
    Call before anything else is written into it."""
    check_workdir(workdir, kind, flag)
    workdir = as_path(workdir)
    marker = {"kind": kind, "made_by": _MADE_BY.get(kind), "location": os.fspath(_resolved(workdir))}
    if is_writer():
        workdir.mkdir(parents=True, exist_ok=True)
        if _read_marker(workdir) != marker:
            write_json(workdir / WORKDIR_FILE, marker)
        for listener in list(_claim_listeners):
            listener(workdir)


def _read_marker(workdir: epath.Path) -> dict:
    try:
        marker = json.loads((workdir / WORKDIR_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return marker if isinstance(marker, dict) else {}


def workdir_location(workdir: str | os.PathLike) -> Optional[str]:
    """Where ``workdir`` was when its config was last recorded (``claim_workdir``), or None: differs
    from where it is now when the workdir was copied or moved since."""
    return _read_marker(as_path(workdir)).get("location")


def move_dir(src: epath.Path, dst: epath.Path) -> None:
    """Moves directory ``src`` to ``dst``: a rename locally; on an object store, which has no
    directories to rename (and whose "rename" insists on an existing parent "folder"), a copy of
    every file and then the removal of ``src``."""
    if not is_remote(src):
        src.rename(dst)
        return
    files = [(root / name).relative_to(src) for root, _, names in src.walk() for name in names]
    # A model checkpoint's model.json last: the copy is complete only once everything is there.
    for rel in sorted(files, key=lambda rel: str(rel) == "model.json"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).copy(dst / rel)
    src.rmtree()


class WorkdirLock:
    """An exclusive lock on a workdir for one run (process 0): a second run in the same workdir is
    refused with a message naming the holder.

    Local workdir: ``flock`` on ``<workdir>/.lock``. The operating system releases it when the
    process exits, however it exits, so a lock is never stale.

    Remote workdir (``gs://``): an object store has no ``flock``, so the lock is a *lease*: a JSON
    file naming host, process and start time, whose ``heartbeat`` a background thread refreshes
    every ``heartbeat_s`` seconds and which ``release`` deletes. A lease refreshed less than
    ``stale_after_s`` ago refuses the new run; an older one (its run died without releasing it,
    e.g. a preempted TPU VM) is taken over with a warning, as is one held by a process of this host
    that no longer exists. Deleting the file by hand overrides it. Best effort: it keeps a second
    run from being started by mistake, not two started within the same second.
    """

    FILE = ".lock"

    def __init__(self, workdir: str | os.PathLike, *, heartbeat_s: float = 60.0,
                 stale_after_s: float = 600.0):
        self.path = as_path(workdir) / self.FILE
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self._fd: Optional[int] = None
        self._lease: Optional[dict] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def acquire(self) -> "WorkdirLock":
        if not is_writer():
            return self
        if is_remote(self.path):
            return self._acquire_lease()
        import fcntl
        import socket
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.path.parent} is in use by {holder} (lock {self.path}); wait for that "
                            "run to finish or stop it, or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._fd = fd
        return self

    # ---- Remote: a lease with a heartbeat --------------------------------------------------
    def _acquire_lease(self) -> "WorkdirLock":
        import socket
        import uuid
        held = self._read_lease()
        if held is not None:
            age = time.time() - float(held.get("heartbeat", 0.0))
            holder = f"process {held.get('pid')} on {held.get('host')} since {held.get('since')}"
            if self._alive(held) and age < self.stale_after_s:
                raise UserError(
                    f"{self.path.parent} is in use by {holder} (lock {self.path}, refreshed {age:.0f} s "
                    f"ago); wait for that run to finish or stop it, or use another --workdir. If that "
                    f"run is gone (e.g. a preempted VM), its lease expires {self.stale_after_s - age:.0f} s "
                    f"from now, or delete {self.path} to take the workdir at once")
            log.warning("taking over the lock %s of %s (last refreshed %.0f s ago): that run is gone",
                        self.path, holder, age)
        self._lease = {"host": socket.gethostname(), "pid": os.getpid(),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S"), "token": uuid.uuid4().hex}
        self._write_lease()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="workdir-lock-heartbeat",
                                        daemon=True)
        self._thread.start()
        return self

    def _read_lease(self) -> Optional[dict]:
        try:
            lease = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("lock %s is not a lease this code wrote; treating it as stale", self.path)
            return {}
        return lease if isinstance(lease, dict) else {}

    @staticmethod
    def _alive(lease: dict) -> bool:
        """False when the lease's process was on this host and no longer exists."""
        import socket
        if lease.get("host") != socket.gethostname() or not isinstance(lease.get("pid"), int):
            return True
        try:
            os.kill(lease["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _write_lease(self) -> None:
        self.path.write_text(json.dumps({**self._lease, "heartbeat": time.time()}))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write_lease()
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is retried at the next one
                log.warning("could not refresh the lock %s: %s", self.path, e)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._lease is not None:
            self._stop.set()
            self._thread.join()
            held = self._read_lease()
            if held and held.get("token") == self._lease["token"]:  # never another run's lease
                self.path.unlink(missing_ok=True)
            self._lease = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# tensorboardX writes ``gs://`` and ``s3://`` event files itself, with these client libraries.
_TENSORBOARD_REMOTE_CLIENTS = {"gs": "google.cloud.storage", "s3": "boto3"}


def _summary_writer(directory: epath.Path):
    """A tensorboardX SummaryWriter for ``directory``, or None (with a warning) for a remote
    directory whose client library is not installed: the run goes on, ``metrics.jsonl`` holds
    the same scalars."""
    import importlib.util
    if is_remote(directory):
        scheme = os.fspath(directory).split("://", 1)[0]
        client = _TENSORBOARD_REMOTE_CLIENTS.get(scheme)
        try:
            found = client is not None and importlib.util.find_spec(client) is not None
        except ModuleNotFoundError:  # a missing parent package (google.cloud)
            found = False
        if not found:
            log.warning("no TensorBoard events in %s: tensorboardX writes %s:// only with %s "
                        "installed; the scalars are in metrics.jsonl", directory, scheme,
                        client or "(no client: unsupported scheme)")
            return None
    from tensorboardX import SummaryWriter
    return SummaryWriter(os.fspath(directory))


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl``; a line that is not a JSON object (cut short when the
    process was killed mid-write) is skipped with a warning naming the file and line."""
    path = as_path(path)
    records, bad = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        log.warning("warning: %s: skipped %d unreadable line(s) (%s), e.g. cut short by a kill",
                    path, len(bad), ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else ""))
    return records


class MetricWriter:
    """Writes scalars to ``metrics.jsonl`` and TensorBoard (tensorboardX), on process 0 only.

    On a remote workdir, where objects cannot be appended to, the log is kept in memory and the
    whole ``metrics.jsonl`` uploaded again at most every ``upload_every_s`` seconds and on close
    (a run that dies loses at most that much of its log, none of its checkpoints).
    """

    def __init__(self, workdir: str | os.PathLike, upload_every_s: float = 60.0):
        self._active = is_writer()
        if not self._active:
            return
        workdir = as_path(workdir)
        self._path = workdir / "metrics.jsonl"
        self._remote = is_remote(workdir)
        self._upload_every_s = upload_every_s
        if self._remote:
            self._text = self._path.read_text() if self._path.exists() else ""
            self._uploaded = time.monotonic()
        else:
            self._jsonl = self._path.open("a")
            if self._jsonl.tell() and not self._path.read_bytes().endswith(b"\n"):
                # A line cut short by a kill: ended here, so the next one is not glued to it
                # (readers skip the cut line, ``read_metrics``).
                self._jsonl.write("\n")
        self._tb = _summary_writer(workdir / "tb")

    def write(self, phase: str, step: int, scalars: dict) -> None:
        if not self._active:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        line = json.dumps({"phase": phase, "step": step, **clean}) + "\n"
        if self._remote:
            self._text += line
            if time.monotonic() - self._uploaded >= self._upload_every_s:
                self._upload()
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(f"{phase}/{k}", v, step)

    def _upload(self) -> None:
        self._path.write_text(self._text)
        self._uploaded = time.monotonic()

    def close(self) -> None:
        if self._active:
            if self._remote:
                self._upload()
            else:
                self._jsonl.close()
            if self._tb is not None:
                self._tb.close()
            self._active = False
