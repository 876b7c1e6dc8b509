"""The one I/O boundary of the package: every file it writes goes through here.

* Model checkpoints between stages (``save_model`` / ``load_model``) and, in ``TrainCheckpoints``,
  the periodic train-state checkpoints of a run: every Orbax call of the project.
* JSON records and reports (``write_json``, ``write_text``, ``write_figure``) and the metric log
  (``MetricWriter``: ``metrics.jsonl`` and TensorBoard).
* The workdir lock (``WorkdirLock``) that keeps two runs out of one workdir.

Every workdir path is an ``etils.epath.Path`` (``as_path``), the path type of Orbax and the JAX
ecosystem, so a workdir may be local or remote (``gs://bucket/run``, ``s3://``: ``is_remote``);
``pathlib`` would collapse ``gs://`` to ``gs:/``. What differs on a remote workdir (no atomic
rename, no ``flock``, no append) is decided here and nowhere else; see README, "Remote workdirs".

Safe on several processes (multi-host training): every process takes part in an Orbax save, as
Orbax requires, and only process 0 creates, renames or removes directories and writes JSON, text
and figures; processes meet at a barrier around each model save, so none reads a checkpoint
before it is in place.

A *model checkpoint* is a directory::

    <dir>/params/      Orbax StandardCheckpointer tree of float32 parameters
    <dir>/lat_diag/    LAT models only: the diagonal the model was trained with (the optimizer's
                       second moments of its kernels, ``model.LAT_DIAG``); ``load_lat_diag``
    <dir>/model.json   {"format": "binarybert-jax/model", "version": 1, "spec": ModelSpec, "info": {...}}

written complete, ``model.json`` last, to the sibling ``<dir>.tmp`` and then put in place of the
old one (locally two renames, the old one through ``<dir>.old``; on a remote workdir, where a
directory "rename" copies every object, the old one is removed and the new one copied, again
``model.json`` last). A directory without ``model.json`` is incomplete. So a crash at any point of
a save leaves one complete checkpoint: ``<dir>`` itself, or, in the moments when it is missing or
half-copied, ``<dir>.tmp`` (the new one) or ``<dir>.old`` (the one it replaces). Readers take the
first of the three that is complete (``complete_copy``), and the next save of ``<dir>`` puts it back
in place before it writes, so a crashed run's best model is never lost.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
import time
from typing import Any, Optional

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from binarybert_jax.errors import UserError
from binarybert_jax.model import ModelSpec

log = logging.getLogger(__name__)

MODEL_FORMAT = "binarybert-jax/model"
MODEL_FORMAT_VERSION = 1
LAT_DIAG_DIR = "lat_diag"


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


def _checkpointer():
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer()


def save_params(directory: str | os.PathLike, params: Any) -> None:
    """Saves a parameter pytree with Orbax at ``directory`` (which must not exist)."""
    ckptr = _checkpointer()
    with _disk_full_named(directory):
        ckptr.save(absolute(directory), jax.tree_util.tree_map(np.asarray, params))
        ckptr.wait_until_finished()


@contextlib.contextmanager
def _disk_full_named(directory):
    """A full disk (or quota) under an Orbax save, which arrives wrapped in TensorStore's and
    asyncio's errors, becomes one UserError naming the checkpoint being written."""
    try:
        yield
    except Exception as e:
        chain, c = [], e
        while c is not None and len(chain) < 20:
            chain.append(c)
            c = c.__cause__ or c.__context__
        if any(isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT) for c in chain) or any(
                "RESOURCE_EXHAUSTED" in str(c) or "No space left" in str(c) for c in chain):
            raise UserError(f"cannot write checkpoint {directory}: no space left on the device (free "
                            "space, or use a --workdir elsewhere; rerun to resume)") from e
        raise


def restore_params(directory: str | os.PathLike) -> Any:
    """Restores a parameter pytree saved by ``save_params`` as numpy arrays.

    Raises:
      UserError: the directory is not a readable Orbax checkpoint (truncated, its metadata
        missing), with the deepest cause Orbax's layers of wrapping give, in one line.
    """
    path = absolute(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"no Orbax checkpoint at {path}")
    try:
        tree = _checkpointer().restore(path)
    except Exception as e:  # Orbax/TensorStore raise many types, each wrapping the next
        raise UserError(f"{path}: not a readable checkpoint ({_deepest_cause(e)}): the files are "
                        "truncated or incomplete; save or copy the checkpoint again") from e
    return jax.tree_util.tree_map(np.asarray, tree)


def _deepest_cause(e: BaseException) -> str:
    """The first line of the last exception in ``e``'s chain of causes (what actually failed)."""
    seen = set()
    while (e.__cause__ or e.__context__) is not None and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


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


def _siblings(final: epath.Path) -> tuple[epath.Path, epath.Path]:
    """A model checkpoint's save sibling (the new copy being written) and its old copy."""
    return final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")


def complete_copy(directory: str | os.PathLike) -> Optional[epath.Path]:
    """Where the model checkpoint ``directory`` is complete: ``directory`` itself or, when a save
    was interrupted while it was missing or half-copied, the copy that save left (``<dir>.tmp``, the
    newer, then ``<dir>.old``); None when there is none."""
    final = as_path(directory)
    tmp, old = _siblings(final)
    for candidate in (final, tmp, old):
        if (candidate / "model.json").is_file():
            return candidate
    return None


def _restore_interrupted_save(final: epath.Path) -> None:
    """Puts the complete copy an interrupted save left back at ``final`` (process 0)."""
    copy = complete_copy(final)
    if copy is None or copy == final:
        return
    log.warning("model checkpoint %s was left incomplete by an interrupted save; restoring it from %s",
                final, copy)
    if final.exists():
        final.rmtree()
    _move(copy, final)


def save_model(directory: str | os.PathLike, params: Any, spec: ModelSpec,
               info: Optional[dict] = None, lat_diag: Optional[Any] = None) -> epath.Path:
    """Writes a model checkpoint; replaces an existing one at ``directory`` with no moment in
    which a crash leaves neither (the module docstring says how).

    Call it on every process with the same arguments (Orbax's save is collective).

    Args:
      directory: target directory, local or remote (``gs://...``).
      params: the model's ``params`` tree.
      spec: how to rebuild the model.
      info: free-form JSON metadata (stage, task, metrics, source checkpoint...).
      lat_diag: a LAT model's diagonal (``train.lat_diagonal``), saved beside the parameters so
        that evaluation, prediction and export quantize as training did; None for other models.
    """
    final = absolute(directory)
    target, old = _siblings(final)
    if is_writer():
        _restore_interrupted_save(final)  # before its siblings, which may hold the only copy, go
        for leftover in (target, old):
            if leftover.exists():
                leftover.rmtree()
        target.mkdir(parents=True, exist_ok=True)
    sync(f"save_model:start:{final}")
    save_params(target / "params", params)
    if lat_diag is not None:
        save_params(target / LAT_DIAG_DIR, lat_diag)
    if is_writer():
        meta = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION, "spec": spec.to_dict(),
                "info": info or {}}
        (target / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if is_remote(final):
            if final.exists():
                (final / "model.json").unlink(missing_ok=True)  # first: what is left is incomplete
                final.rmtree()
            _move(target, final)  # model.json last: complete only once every file is in place
        else:
            if final.exists():
                final.replace(old)
            target.replace(final)
            if old.exists():
                old.rmtree()
    sync(f"save_model:done:{final}")
    return final


def _readable(directory: str | os.PathLike) -> epath.Path:
    """The complete copy of model checkpoint ``directory``; FileNotFoundError naming it if none."""
    copy = complete_copy(directory)
    if copy is None:
        raise FileNotFoundError(f"{as_path(directory) / 'model.json'} not found: {directory} is not a "
                                "binarybert-jax model checkpoint")
    return copy


def read_model_meta(directory: str | os.PathLike) -> dict:
    """Reads and validates ``model.json`` of a model checkpoint."""
    return _read_meta(_readable(directory))


def _read_meta(copy: epath.Path) -> dict:
    """``model.json`` of the complete copy ``copy`` (a ``_readable`` result), validated."""
    path = copy / "model.json"
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: format {meta.get('format') if isinstance(meta, dict) else None!r} "
                        f"is not {MODEL_FORMAT!r}")
    if meta.get("version") != MODEL_FORMAT_VERSION:
        raise UserError(f"{path}: version {meta.get('version')!r} is not supported "
                         f"(this code reads version {MODEL_FORMAT_VERSION})")
    return meta


def load_model(directory: str | os.PathLike) -> tuple[Any, ModelSpec, dict]:
    """Loads a model checkpoint: (params, spec, info)."""
    # One resolution for both reads: the metadata and the parameters come from the same copy even
    # if a save swaps the copies in between, and an object store is asked once, not twice.
    copy = _readable(directory)
    meta = _read_meta(copy)
    params = restore_params(copy / "params")
    return params, ModelSpec.from_dict(meta["spec"]), meta.get("info", {})


def load_lat_diag(directory: str | os.PathLike) -> Optional[Any]:
    """The LAT diagonal saved with a model checkpoint, or None when it has none (not a LAT model,
    or a LAT checkpoint written before diagonals were saved: it then quantizes with the identity)."""
    path = _readable(directory) / LAT_DIAG_DIR
    return restore_params(path) if path.is_dir() else None


def load_model_spec(directory: str | os.PathLike) -> ModelSpec:
    """The ModelSpec of a model checkpoint, without reading its parameters."""
    return ModelSpec.from_dict(read_model_meta(directory)["spec"])


def is_model_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a complete model checkpoint (``complete_copy``)."""
    return complete_copy(directory) is not None


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
    return "model checkpoint" if is_model_checkpoint(workdir) else None


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


def _move(src: epath.Path, dst: epath.Path) -> None:
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


class TrainCheckpoints:
    """Periodic, atomic train-state checkpoints of one training phase (Orbax CheckpointManager).

    Each step directory holds ``state`` (params, optimizer state, step) and ``meta`` (JSON: the
    phase's progress and anything the loop wants back on resume). Orbax writes to a temporary
    directory and renames it when complete, so a crash mid-save leaves the previous checkpoint as
    the latest one. A step that cannot be restored, or whose parameters gave a non-finite loss, is
    moved aside (``set_aside``) into a sibling directory, never deleted, and the one before it used.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        import orbax.checkpoint as ocp
        self._ocp = ocp
        self.directory = absolute(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False),
            item_names=("state", "meta"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        ocp = self._ocp
        with _disk_full_named(self.directory / str(step)):
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(jax.tree_util.tree_map(np.asarray, state)),
                meta=ocp.args.JsonSave(meta)), force=True)
            self._manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores the state at ``step`` into the structure of ``abstract_state``."""
        ocp = self._ocp
        target = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) if not isinstance(
                x, jax.ShapeDtypeStruct) else x, abstract_state)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any, dict]]:
        """The newest readable checkpoint as ``(step, state, meta)``, or None when there is none.

        An unreadable step (a truncated array file, missing metadata, a tree that does not fit the
        model) is moved aside with a warning naming it and the reason, and the previous one tried.
        """
        for step in reversed(self.all_steps()):
            try:
                state, meta = self.restore(step, abstract_state)
                return step, state, meta
            except Exception as e:  # noqa: BLE001 - any failure to read means: not usable
                reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                where = self.set_aside(step, "unreadable")
                log.warning("checkpoint step %d in %s is unreadable (%s: %s); moved it to %s and "
                            "falling back to the previous one", step, self.directory,
                            type(e).__name__, reason, where)
        return None

    def set_aside(self, step: int, why: str) -> Optional[epath.Path]:
        """Moves step ``step`` out of the manager's view into ``<directory>_<why>/`` (kept, not
        deleted); returns where it went (None on processes other than 0)."""
        where = None
        if is_writer():
            src = self.directory / str(step)
            aside = self.directory.with_name(f"{self.directory.name}_{why}")
            aside.mkdir(parents=True, exist_ok=True)
            where = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            _move(src, where)
        sync(f"set_aside:{self.directory}:{step}")
        self._manager.reload()
        return where

    def close(self) -> None:
        self._manager.close()


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
