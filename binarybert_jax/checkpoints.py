"""The one I/O boundary of the package: every file it writes goes through here.

* Model checkpoints between stages (``save_model`` / ``load_model``) and, in ``TrainCheckpoints``,
  the periodic train-state checkpoints of a run: every Orbax call of the project.
* JSON records and reports (``write_json``, ``write_text``, ``write_figure``) and the metric log
  (``MetricWriter``: ``metrics.jsonl`` and TensorBoard).

Safe on several processes (multi-host training): every process takes part in an Orbax save, as
Orbax requires, and only process 0 creates, renames or removes directories and writes JSON, text
and figures; processes meet at a barrier around each model save, so none reads a checkpoint
before it is in place.

A *model checkpoint* is a directory::

    <dir>/params/      Orbax StandardCheckpointer tree of float32 parameters
    <dir>/lat_diag/    LAT models only: the diagonal the model was trained with (the optimizer's
                       second moments of its kernels, ``model.LAT_DIAG``); ``load_lat_diag``
    <dir>/model.json   {"format": "binarybert-jax/model", "version": 1, "spec": ModelSpec, "info": {...}}

written to a temporary sibling and renamed into place, so a crash never leaves a half-written
checkpoint under the final name.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import time
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from binarybert_jax.errors import UserError
from binarybert_jax.model import ModelSpec

log = logging.getLogger(__name__)

MODEL_FORMAT = "binarybert-jax/model"
MODEL_FORMAT_VERSION = 1
LAT_DIAG_DIR = "lat_diag"


def _checkpointer():
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer()


def save_params(directory: str | os.PathLike, params: Any) -> None:
    """Saves a parameter pytree with Orbax at ``directory`` (which must not exist)."""
    ckptr = _checkpointer()
    ckptr.save(pathlib.Path(directory).absolute(), jax.tree_util.tree_map(np.asarray, params))
    ckptr.wait_until_finished()


def restore_params(directory: str | os.PathLike) -> Any:
    """Restores a parameter pytree saved by ``save_params`` as numpy arrays."""
    path = pathlib.Path(directory).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no Orbax checkpoint at {path}")
    tree = _checkpointer().restore(path)
    return jax.tree_util.tree_map(np.asarray, tree)


def is_writer() -> bool:
    """Whether this process writes shared files (process 0; the only one on a single host)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (a no-op on one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` atomically (temporary sibling, then rename), on process 0 only."""
    if is_writer():
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs) -> None:
    """Writes ``obj`` as indented JSON, atomically, on process 0 only."""
    write_text(path, json.dumps(obj, indent=2, **dumps_kwargs) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Reads a JSON record; a malformed file is an error naming it."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); was the file cut short?") from None


def write_figure(path: str | os.PathLike, fig, dpi: int = 120) -> None:
    """Saves a matplotlib figure as PNG, atomically, on process 0 only."""
    if is_writer():
        import io
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        _atomic_write(path, buf.getvalue())


def save_model(directory: str | os.PathLike, params: Any, spec: ModelSpec,
               info: Optional[dict] = None, lat_diag: Optional[Any] = None) -> pathlib.Path:
    """Writes a model checkpoint atomically; replaces an existing one at ``directory``.

    Call it on every process with the same arguments (Orbax's save is collective).

    Args:
      directory: target directory.
      params: the model's ``params`` tree.
      spec: how to rebuild the model.
      info: free-form JSON metadata (stage, task, metrics, source checkpoint...).
      lat_diag: a LAT model's diagonal (``train.lat_diagonal``), saved beside the parameters so
        that evaluation, prediction and export quantize as training did; None for other models.
    """
    final = pathlib.Path(directory).absolute()
    tmp = final.with_name(final.name + ".tmp")
    if is_writer():
        if tmp.exists():
            shutil.rmtree(tmp)  # a save that died before its rename; never the checkpoint itself
        tmp.mkdir(parents=True)
    sync(f"save_model:start:{final}")
    save_params(tmp / "params", params)
    if lat_diag is not None:
        save_params(tmp / LAT_DIAG_DIR, lat_diag)
    if is_writer():
        meta = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION, "spec": spec.to_dict(),
                "info": info or {}}
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if final.exists():
            old = final.with_name(final.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    sync(f"save_model:done:{final}")
    return final


def read_model_meta(directory: str | os.PathLike) -> dict:
    """Reads and validates ``model.json`` of a model checkpoint."""
    path = pathlib.Path(directory) / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a binarybert-jax model checkpoint")
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
    meta = read_model_meta(directory)
    params = restore_params(pathlib.Path(directory) / "params")
    return params, ModelSpec.from_dict(meta["spec"]), meta.get("info", {})


def load_lat_diag(directory: str | os.PathLike) -> Optional[Any]:
    """The LAT diagonal saved with a model checkpoint, or None when it has none (not a LAT model,
    or a LAT checkpoint written before diagonals were saved: it then quantizes with the identity)."""
    path = pathlib.Path(directory) / LAT_DIAG_DIR
    return restore_params(path) if path.is_dir() else None


def load_model_spec(directory: str | os.PathLike) -> ModelSpec:
    """The ModelSpec of a model checkpoint, without reading its parameters."""
    return ModelSpec.from_dict(read_model_meta(directory)["spec"])


def is_model_checkpoint(directory: str | os.PathLike) -> bool:
    return (pathlib.Path(directory) / "model.json").is_file()


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
        self.directory = pathlib.Path(directory).absolute()
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

    def set_aside(self, step: int, why: str) -> Optional[pathlib.Path]:
        """Moves step ``step`` out of the manager's view into ``<directory>_<why>/`` (kept, not
        deleted); returns where it went (None on processes other than 0)."""
        where = None
        if is_writer():
            src = self.directory / str(step)
            aside = self.directory.with_name(f"{self.directory.name}_{why}")
            aside.mkdir(parents=True, exist_ok=True)
            where = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(src, where)
        sync(f"set_aside:{self.directory}:{step}")
        self._manager.reload()
        return where

    def close(self) -> None:
        self._manager.close()


class WorkdirLock:
    """An exclusive lock on a workdir for one run (process 0): a second run in the same workdir is
    refused with a message naming the holder. The operating system releases it when the process
    exits, however it exits, so a lock is never stale."""

    FILE = ".lock"

    def __init__(self, workdir: str | os.PathLike):
        self.path = pathlib.Path(workdir) / self.FILE
        self._fd: Optional[int] = None

    def acquire(self) -> "WorkdirLock":
        if not is_writer():
            return self
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

    def release(self) -> None:
        if self._fd is not None:
            import fcntl
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class MetricWriter:
    """Writes scalars to ``metrics.jsonl`` and TensorBoard (tensorboardX), on process 0 only."""

    def __init__(self, workdir: str | os.PathLike):
        self._active = is_writer()
        if not self._active:
            return
        workdir = pathlib.Path(workdir)
        self._jsonl = open(workdir / "metrics.jsonl", "a")
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(workdir / "tb"))

    def write(self, phase: str, step: int, scalars: dict) -> None:
        if not self._active:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"phase": phase, "step": step, **clean}) + "\n")
        self._jsonl.flush()
        for k, v in clean.items():
            self._tb.add_scalar(f"{phase}/{k}", v, step)

    def close(self) -> None:
        if self._active:
            self._jsonl.close()
            self._tb.close()
            self._active = False
