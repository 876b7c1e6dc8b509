"""Checkpoints: every Orbax call of the project.

* Model checkpoints between stages (``save_model`` / ``load_model``), and in ``TrainCheckpoints``
  the periodic train-state checkpoints of a run.
* Everything else a workdir holds (records, reports, figures, the metric log, the lock, its kind) is
  ``workdirs.py``'s, which also decides what differs on a remote workdir.

Safe on several processes (multi-host training): every process takes part in an Orbax save, as
Orbax requires, and only process 0 creates, renames or removes directories; processes meet at a
barrier around each model save, so none reads a checkpoint before it is in place.

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
import time
from typing import Any, Optional

import jax
import numpy as np
from etils import epath

from binarybert_jax import workdirs
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
    with _disk_full_named(directory):
        ckptr.save(workdirs.absolute(directory), jax.tree_util.tree_map(np.asarray, params))
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
    path = workdirs.absolute(directory)
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


def _siblings(final: epath.Path) -> tuple[epath.Path, epath.Path]:
    """A model checkpoint's save sibling (the new copy being written) and its old copy."""
    return final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")


def complete_copy(directory: str | os.PathLike) -> Optional[epath.Path]:
    """Where the model checkpoint ``directory`` is complete: ``directory`` itself or, when a save
    was interrupted while it was missing or half-copied, the copy that save left (``<dir>.tmp``, the
    newer, then ``<dir>.old``); None when there is none."""
    final = workdirs.as_path(directory)
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
    workdirs.move_dir(copy, final)


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
    final = workdirs.absolute(directory)
    target, old = _siblings(final)
    if workdirs.is_writer():
        _restore_interrupted_save(final)  # before its siblings, which may hold the only copy, go
        for leftover in (target, old):
            if leftover.exists():
                leftover.rmtree()
        target.mkdir(parents=True, exist_ok=True)
    workdirs.sync(f"save_model:start:{final}")
    save_params(target / "params", params)
    if lat_diag is not None:
        save_params(target / LAT_DIAG_DIR, lat_diag)
    if workdirs.is_writer():
        meta = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION, "spec": spec.to_dict(),
                "info": info or {}}
        (target / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if workdirs.is_remote(final):
            if final.exists():
                (final / "model.json").unlink(missing_ok=True)  # first: what is left is incomplete
                final.rmtree()
            workdirs.move_dir(target, final)  # model.json last: complete only once every file is in place
        else:
            if final.exists():
                final.replace(old)
            target.replace(final)
            if old.exists():
                old.rmtree()
    workdirs.sync(f"save_model:done:{final}")
    return final


def update_model_info(directory: str | os.PathLike, changes: dict) -> None:
    """Sets the keys ``changes`` names in the ``info`` of the model checkpoint at ``directory``;
    its parameters stay as they are. ``model.json`` is rewritten in one step (a rename; one upload
    on an object store), so the checkpoint is complete at every moment. Call it on every process,
    as ``save_model``."""
    final = workdirs.absolute(directory)
    if workdirs.is_writer():
        _restore_interrupted_save(final)
        meta = _read_meta(_readable(final))
        meta["info"] = {**meta.get("info", {}), **changes}
        workdirs.write_text(final / "model.json", json.dumps(meta, indent=2, sort_keys=True))
    workdirs.sync(f"update_model_info:{final}")


def _readable(directory: str | os.PathLike) -> epath.Path:
    """The complete copy of model checkpoint ``directory``; FileNotFoundError naming it if none."""
    copy = complete_copy(directory)
    if copy is None:
        raise FileNotFoundError(f"{workdirs.as_path(directory) / 'model.json'} not found: {directory} is not a "
                                "binarybert-jax model checkpoint")
    return copy


def read_model_meta(directory: str | os.PathLike) -> dict:
    """Reads and validates ``model.json`` of a model checkpoint."""
    return _read_meta(_readable(directory))


def _read_meta(copy: epath.Path) -> dict:
    """``model.json`` of the complete copy ``copy`` (a ``_readable`` result), validated."""
    path = copy / "model.json"
    meta = workdirs.read_json(path)
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
        self.directory = workdirs.absolute(directory)
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
        if workdirs.is_writer():
            src = self.directory / str(step)
            aside = self.directory.with_name(f"{self.directory.name}_{why}")
            aside.mkdir(parents=True, exist_ok=True)
            where = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            workdirs.move_dir(src, where)
        workdirs.sync(f"set_aside:{self.directory}:{step}")
        self._manager.reload()
        return where

    def close(self) -> None:
        self._manager.close()


