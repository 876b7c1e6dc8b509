"""A run's data: its task's train split and evaluation splits as token arrays.

The one place a training run loads data. For GLUE, two sources give the same examples:

- ``tsv``: GLUE's TSV files under a GLUE root (``data_dir``, or ``$GLUE_DIR`` when it is empty),
  read by :mod:`~binarybert_jax.data.glue`;
- ``tfds``: TensorFlow Datasets' ``glue/<config>``, read by
  :mod:`~binarybert_jax.data.tfds_source`; ``data_dir`` is then tfds's data directory (empty:
  tfds's default). Its packages are optional (the ``[tfds]`` extra, not in requirements.txt); asking
  for this source without them fails at once, naming what to install.

Either way the examples are tokenized through :mod:`~binarybert_jax.data.encode`'s on-disk
cache, so a second run with the same data, tokenizer and length reads the arrays back.

SQuAD (``squad1``, ``squad2``) reads ``json`` (the official files under ``data_dir`` or
``$SQUAD_DIR``) or ``tfds`` (tensorflow-datasets' ``squad``), windowed by
:mod:`~binarybert_jax.data.squad` through the same cache; its evaluation split is a
``squad.SquadEvalSet`` (windows, questions and gold answers).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import numpy as np

from binarybert_jax.data import encode, glue, heldout as heldout_lib, squad, tasks, tfds_source

SOURCES = ("tsv", "json", "tfds")
# The sources each kind of task reads.
_TASK_SOURCES = {"classification": ("tsv", "tfds"), "span": ("json", "tfds")}

# (module, pip package) that source "tfds" imports: tfds reads GLUE through TensorFlow.
_TFDS_PACKAGES = (("tensorflow_datasets", "tensorflow-datasets"), ("tensorflow", "tensorflow"))
_TFDS_INSTALL = "pip install tensorflow-datasets tensorflow (the [tfds] extra)"


def resolve_data_dir(data_dir: str | os.PathLike) -> pathlib.Path:
    """The GLUE root of a run: ``data_dir``, or ``$GLUE_DIR`` when ``data_dir`` is empty.

    Raises:
      ValueError: both are empty; the message says how to point a run at the data.
    """
    d = data_dir or glue.glue_dir()
    if not d:
        raise ValueError("no GLUE data: set --config.data_dir=DIR or $GLUE_DIR (the official GLUE "
                         "layout, e.g. DIR/MRPC/train.tsv); binarybert_jax.data.download."
                         "download_glue fetches a task where the network allows, and "
                         "--config.data_source=tfds reads GLUE through TensorFlow Datasets")
    return pathlib.Path(d)


def eval_splits(task: glue.TaskSpec) -> tuple[str, ...]:
    """The splits a run evaluates on: MNLI's matched and mismatched dev sets, else ``dev``."""
    return ("dev_matched", "dev_mismatched") if task.name == "mnli" else ("dev",)


def check_source(source: str, task=None) -> None:
    """Checks that ``source`` is one of :data:`SOURCES` and that its packages are installed.

    Raises:
      ValueError: an unknown source, or one ``task`` cannot read (GLUE: tsv, tfds; SQuAD: json,
        tfds); the message lists the allowed ones.
      ImportError: ``tfds`` without tensorflow-datasets or TensorFlow; the message names the
        missing package and the pip command that installs both.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; expected one of "
                         f"{', '.join(repr(s) for s in SOURCES)}")
    if task is not None:
        allowed = _TASK_SOURCES[task.head]
        if source not in allowed:
            raise ValueError(f"{task.name} reads data source {' or '.join(map(repr, allowed))}, "
                             f"not {source!r}")
    if source == "tfds":
        missing = [pip for module, pip in _TFDS_PACKAGES
                   if importlib.util.find_spec(module) is None]
        if missing:
            raise ImportError(
                f"data source 'tfds' needs {' and '.join(missing)}, which "
                f"{'is' if len(missing) == 1 else 'are'} not installed (optional: the [tfds] "
                f"extra): {_TFDS_INSTALL}; or use source 'tsv' with the GLUE TSVs "
                f"(data_dir or ${glue.GLUE_DIR_ENV}).")


def _load_split(spec: glue.TaskSpec, split: str, tokenizer, source: str, data_dir,
                max_length: int, cache_dir, limit: int) -> dict[str, np.ndarray]:
    """One split's arrays from ``source`` (checked by the caller), through the encode cache."""
    if source == "tsv":
        return encode.load_encoded_split(tokenizer, spec, split, data_dir=data_dir,
                                         max_length=max_length, cache_dir=cache_dir,
                                         limit=limit or None)
    examples = tfds_source.read_examples_tfds(spec, split, data_dir or None)
    if limit:
        examples = examples[:limit]
    if cache_dir is None:
        return encode.encode_examples(tokenizer, examples, max_length,
                                      is_regression=spec.is_regression)
    # The cache key hashes the examples' content; naming the source as well keeps the two
    # sources' files apart (and readable) even where their texts agree.
    return encode.encode_cached(tokenizer, examples, max_length, cache_dir,
                                ("tfds", spec.name, split), is_regression=spec.is_regression)


def load_task_data(task: tasks.TaskSpec, tokenizer, *, source: str = "tsv",
                   data_dir: str | os.PathLike = "", max_length: int | None,
                   cache_dir: str | os.PathLike | None, train_limit: int = 0,
                   eval_limit: int = 0, squad_options=None,
                   heldout: heldout_lib.HeldOut | None = None, train: bool = True, dev: bool = True
                   ) -> tuple[dict[str, np.ndarray] | None, dict]:
    """A run's tokenized train split and evaluation splits.

    Args:
      task: the task's spec (``tasks.get_task``).
      tokenizer: the model's tokenizer (``binarybert_jax.tokenizer.load_tokenizer``).
      source: one of :data:`SOURCES`.
      data_dir: for ``tsv`` the GLUE root ("" means ``$GLUE_DIR``); for ``tfds`` tfds's data
        directory ("" means tfds's default, ``~/tensorflow_datasets``).
      max_length: padded sequence length; 0 or None means the task's default (64 or 128).
      cache_dir: directory of the tokenized-array cache; None tokenizes without caching.
      train_limit: keep only the first ``train_limit`` training examples (0: all).
      eval_limit: keep only the first ``eval_limit`` examples of each eval split (0: all).
      squad_options: for SQuAD, ``squad.load_squad_data``'s ``doc_stride``, ``max_query_length``
        and ``dev_split`` (defaults: 128, 64, 0: the official train and dev files).
      heldout: take a held-out slice out of the training examples (after ``train_limit``;
        :mod:`~binarybert_jax.data.heldout`): it is the first evaluation split, ``heldout``.
      train: read the train split (False: only the dev splits; ``heldout`` must then be None).
      dev: read the dev splits. False reads no dev file at all (while a run selects its
        checkpoints on the held-out slice, dev stays unread until training ends).

    Returns:
      ``(train, evals)``: the train split's arrays (None when not ``train``) and
      ``{split: arrays}``: ``heldout`` first when asked for, then each of :func:`eval_splits` when
      ``dev``, each as :func:`encode.encode_examples` returns them (``input_ids``,
      ``token_type_ids``, ``attention_mask`` (N, L), ``labels``, ``lengths`` (N,)).

    Raises:
      ValueError: unknown source, or (``tsv``) no data directory given.
      ImportError: ``tfds`` without its packages; raised before anything is read.
      FileNotFoundError: (``tsv``) a split's file is missing; the message names it.
    """
    check_source(source, task)
    if heldout is not None and not train:
        raise ValueError("a held-out slice is taken out of the train split: load it with train=True")
    if task.head == "span":
        return squad.load_squad_data(task, tokenizer, data_dir=data_dir, source=source,
                                     max_length=max_length or 0, cache_dir=cache_dir,
                                     train_limit=train_limit, eval_limit=eval_limit,
                                     heldout=heldout, train=train, dev=dev,
                                     **dict(squad_options or {}))
    if source == "tsv":
        data_dir = resolve_data_dir(data_dir)
    max_length = max_length or task.max_seq_length
    train_arrays, evals = None, {}
    if train:
        train_arrays = _load_split(task, "train", tokenizer, source, data_dir, max_length,
                                   cache_dir, train_limit)
        if heldout is not None:
            kept, held = heldout_lib.split_indices(train_arrays["labels"], task.is_regression, heldout)
            train_arrays, evals["heldout"] = (heldout_lib.take(train_arrays, kept),
                                              heldout_lib.take(train_arrays, held))
    if dev:
        evals.update({split: _load_split(task, split, tokenizer, source, data_dir, max_length,
                                         cache_dir, eval_limit)
                      for split in eval_splits(task)})
    return train_arrays, evals


__all__ = ["SOURCES", "check_source", "eval_splits", "load_task_data", "resolve_data_dir"]
