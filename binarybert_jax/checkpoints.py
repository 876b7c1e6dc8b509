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
    <dir>/model.json   {"format": "binarybert-jax/model", "version": 1, "spec": ModelSpec, "info": {...}}

written to a temporary sibling and renamed into place, so a crash never leaves a half-written
checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from binarybert_jax.model import ModelSpec

MODEL_FORMAT = "binarybert-jax/model"
MODEL_FORMAT_VERSION = 1


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
        raise ValueError(f"{path}: not valid JSON ({e}); was the file cut short?") from None


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
               info: Optional[dict] = None) -> pathlib.Path:
    """Writes a model checkpoint atomically; replaces an existing one at ``directory``.

    Call it on every process with the same arguments (Orbax's save is collective).

    Args:
      directory: target directory.
      params: the model's ``params`` tree.
      spec: how to rebuild the model.
      info: free-form JSON metadata (stage, task, metrics, source checkpoint...).
    """
    final = pathlib.Path(directory).absolute()
    tmp = final.with_name(final.name + ".tmp")
    if is_writer():
        if tmp.exists():
            shutil.rmtree(tmp)  # a save that died before its rename; never the checkpoint itself
        tmp.mkdir(parents=True)
    sync(f"save_model:start:{final}")
    save_params(tmp / "params", params)
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
    meta = json.loads(path.read_text())
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r} is not {MODEL_FORMAT!r}")
    if meta.get("version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{path}: version {meta.get('version')!r} is not supported "
                         f"(this code reads version {MODEL_FORMAT_VERSION})")
    return meta


def load_model(directory: str | os.PathLike) -> tuple[Any, ModelSpec, dict]:
    """Loads a model checkpoint: (params, spec, info)."""
    meta = read_model_meta(directory)
    params = restore_params(pathlib.Path(directory) / "params")
    return params, ModelSpec.from_dict(meta["spec"]), meta.get("info", {})


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
    the latest one.
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

    def close(self) -> None:
        self._manager.close()


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
