"""Tokenizes GLUE examples into fixed-length integer arrays, with an on-disk cache.

Arrays follow BERT's GLUE inputs: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` padded on the
right to ``max_length``, segment ids 0 for the first sentence and 1 for the second, pairs
truncated ``longest_first`` (one token at a time from the longer sentence), as the BERT and
BinaryBERT GLUE scripts do.

The cache stores one ``.npz`` per (examples, tokenizer, max_length) and is written atomically,
so a second run reads the arrays instead of tokenizing again and an interrupted run never leaves
a half-written file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from binarybert_jax.data import glue
from binarybert_jax.data.batching import MODEL_INPUTS

logger = logging.getLogger(__name__)

# Bump when the arrays' meaning or layout changes, so old cache files are not reused.
CACHE_FORMAT_VERSION = 1

ARRAY_KEYS = MODEL_INPUTS + ("labels", "lengths")

# Tokenizing in chunks bounds the memory of the Python lists the tokenizer returns (QQP's 364k
# pairs at 128 tokens would be ~50M Python ints at once).
_CHUNK = 8192

_CACHE_KEY_ENTRY = "_cache_key"


def _is_regression(examples: Sequence[glue.Example], is_regression: bool | None) -> bool:
    if is_regression is not None:
        return is_regression
    return any(isinstance(ex.label, float) for ex in examples)


def encode_examples(tokenizer, examples: Sequence[glue.Example], max_length: int, *,
                    is_regression: bool | None = None) -> dict[str, np.ndarray]:
    """Tokenizes examples to fixed-length arrays with the tokenizer's (fast) batch call.

    Args:
      tokenizer: a Hugging Face BERT tokenizer (``binarybert_jax.tokenizer.load_tokenizer``).
      examples: N examples, all single sentences or all pairs.
      max_length: padded length L, including ``[CLS]`` and ``[SEP]``.
      is_regression: whether labels are scores; None infers it from the labels (any float
        label), which cannot tell for an unlabeled split: pass it for STS-B's test set.

    Returns:
      ``input_ids``, ``token_type_ids``, ``attention_mask``: int32 (N, L);
      ``labels``: (N,) int32 class ids (-1 when unlabeled) or float32 scores (NaN when
      unlabeled); ``lengths``: int32 (N,) number of real tokens (the attention mask's sum).

    Raises:
      ValueError: examples mix single sentences and pairs, or ``max_length`` is too small.
    """
    if max_length < 3:
        raise ValueError(f"max_length must be at least 3 ([CLS] x [SEP]), got {max_length}.")
    pairs = {ex.text_b is not None for ex in examples}
    if len(pairs) > 1:
        raise ValueError("Examples mix single sentences and sentence pairs.")
    is_pair = pairs == {True}
    n = len(examples)
    out = {key: np.zeros((n, max_length), np.int32) for key in MODEL_INPUTS}
    for start in range(0, n, _CHUNK):
        chunk = examples[start:start + _CHUNK]
        encoded = tokenizer(
            [ex.text_a for ex in chunk],
            [ex.text_b for ex in chunk] if is_pair else None,
            max_length=max_length, truncation="longest_first", padding="max_length",
            return_token_type_ids=True, return_attention_mask=True)
        for key in out:
            out[key][start:start + len(chunk)] = np.asarray(encoded[key], np.int32)
    if _is_regression(examples, is_regression):
        out["labels"] = np.array([np.nan if ex.label is None else ex.label for ex in examples],
                                 np.float32)
    else:
        out["labels"] = np.array([-1 if ex.label is None else ex.label for ex in examples],
                                 np.int32)
    out["lengths"] = out["attention_mask"].sum(axis=1, dtype=np.int32)
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the tokenizer's output.

    For a fast tokenizer this is its serialized ``tokenizer.json`` (vocabulary, normalizer with
    its lower-casing, pre-tokenizer, post-processor) less the ``truncation`` and ``padding``
    entries, which each call overwrites with its own arguments; otherwise the sorted vocabulary
    and the lower-casing flag. The tokenizer's location on disk is deliberately left out, so a
    cache stays valid when the model directory moves.
    """
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(repr(getattr(tokenizer, "do_lower_case", None)).encode())
    h.update(repr((getattr(tokenizer, "padding_side", "right"),
                   getattr(tokenizer, "truncation_side", "right"))).encode())
    return h.hexdigest()


def examples_fingerprint(examples: Iterable[glue.Example]) -> str:
    """A hash of the examples' texts and labels (their content, not their file's metadata)."""
    h = hashlib.sha256()
    for ex in examples:
        # Unit/record separators cannot occur in GLUE text, so fields cannot run together.
        h.update(f"{ex.text_a}\x1f{ex.text_b}\x1f{ex.label!r}\x1e".encode())
    return h.hexdigest()


def cache_path(tokenizer, examples: Sequence[glue.Example], max_length: int,
               cache_dir: str | os.PathLike, key_parts: Sequence[object], *,
               is_regression: bool | None = None) -> pathlib.Path:
    """The cache file :func:`encode_cached` uses for these arguments.

    The name is ``<key_parts joined>-L<max_length>-<16 hex digits>.npz``; the digits hash the
    format version, ``key_parts``, ``max_length``, the label kind, the tokenizer fingerprint
    and the examples' content.
    """
    return _cache_location(tokenizer, examples, max_length, cache_dir, key_parts,
                           _is_regression(examples, is_regression))[0]


def _cache_location(tokenizer, examples, max_length, cache_dir, key_parts, regression
                    ) -> tuple[pathlib.Path, str]:
    return cache_location(cache_dir, key_parts, max_length, {
        "regression": bool(regression),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "examples": examples_fingerprint(examples),
    })


def cache_location(cache_dir: str | os.PathLike, key_parts: Sequence[object], max_length: int,
                   payload: dict) -> tuple[pathlib.Path, str]:
    """The file and key of a cache entry: ``<key_parts joined>-L<max_length>-<16 hex>.npz``, the
    hex digits hashing the format version, ``key_parts``, ``max_length`` and ``payload`` (every
    other input that decides the arrays: tokenizer fingerprint, content hash, settings)."""
    text = json.dumps({"version": CACHE_FORMAT_VERSION, "key_parts": [str(p) for p in key_parts],
                       "max_length": int(max_length), **payload}, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()
    slug = "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", str(p)) for p in key_parts)[:80]
    return pathlib.Path(cache_dir) / f"{slug or 'encoded'}-L{max_length}-{key[:16]}.npz", key


def _load_cache(path: pathlib.Path, key: str, names: Sequence[str],
                shapes_ok: Callable[[dict], bool]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable or not for this key."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in names}
            stored_key = str(data[_CACHE_KEY_ENTRY])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        logger.warning("Cache file %s is unreadable (%s); tokenizing again.", path, e)
        return None
    if stored_key != key or not shapes_ok(arrays):
        logger.warning("Cache file %s does not match its key or shapes; tokenizing again.", path)
        return None
    return arrays


def _save_atomically(path: pathlib.Path, arrays: dict[str, np.ndarray], key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_CACHE_KEY_ENTRY: np.array(key)})
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def cached_arrays(path: pathlib.Path, key: str, names: Sequence[str],
                  compute: Callable[[], dict[str, np.ndarray]],
                  shapes_ok: Callable[[dict], bool] = lambda arrays: True) -> dict[str, np.ndarray]:
    """The arrays ``names`` stored at ``path`` under ``key`` (from :func:`cache_location`), else
    ``compute()``'s, written there atomically (an interrupted run never leaves a file a later run
    would trust). A file that cannot be read, holds another key or fails ``shapes_ok`` is
    recomputed and overwritten."""
    arrays = _load_cache(path, key, names, shapes_ok)
    if arrays is not None:
        logger.info("Loaded encoded arrays from %s.", path)
        return arrays
    arrays = compute()
    _save_atomically(path, arrays, key)
    logger.info("Tokenized into %s.", path)
    return arrays


def encode_cached(tokenizer, examples: Sequence[glue.Example], max_length: int,
                  cache_dir: str | os.PathLike, key_parts: Sequence[object], *,
                  is_regression: bool | None = None) -> dict[str, np.ndarray]:
    """:func:`encode_examples`, reusing an earlier run's arrays when the key matches.

    The key hashes ``key_parts`` (e.g. task and split), ``max_length``, the tokenizer
    fingerprint and the examples' content (texts and labels), so changing any of them (a
    different vocabulary, an edited TSV, skipped rows, a slice) tokenizes again, while merely
    touching or moving the TSV does not. A cache file that cannot be read or does not match its
    key is recomputed and overwritten.

    Args:
      tokenizer, examples, max_length, is_regression: as for :func:`encode_examples`.
      cache_dir: directory for the ``.npz`` files (created if needed).
      key_parts: short strings naming the data; they also make the file name readable.

    Returns:
      The arrays of :func:`encode_examples`.
    """
    regression = _is_regression(examples, is_regression)
    path, key = _cache_location(tokenizer, examples, max_length, cache_dir, key_parts,
                                regression)
    n = len(examples)

    def shapes_ok(arrays):
        return (all(arrays[k].shape == (n, max_length) for k in MODEL_INPUTS)
                and arrays["labels"].shape == (n,) and arrays["lengths"].shape == (n,))

    return cached_arrays(path, key, ARRAY_KEYS,
                         lambda: encode_examples(tokenizer, examples, max_length,
                                                 is_regression=regression), shapes_ok)


def load_encoded_split(tokenizer, task: glue.TaskSpec, split: str, *,
                       data_dir: str | os.PathLike | None = None, max_length: int | None = None,
                       cache_dir: str | os.PathLike | None = None, skip_malformed: bool = False,
                       limit: int | None = None) -> dict[str, np.ndarray]:
    """Reads a GLUE split and encodes it, through the cache when ``cache_dir`` is given.

    Args:
      tokenizer: the checkpoint's tokenizer.
      task: the task's spec (``tasks.get_task``).
      split: split name (``train``, ``dev``, ``test``, MNLI's ``dev_mismatched`` ...).
      data_dir: the GLUE root; None means ``$GLUE_DIR``.
      max_length: padded length; None means the task's default (64 or 128).
      cache_dir: where to cache the arrays; None tokenizes without caching.
      skip_malformed: passed to :func:`glue.read_examples`.
      limit: keep only the first ``limit`` examples (smoke tests, tiny configs).

    Returns:
      The arrays of :func:`encode_examples` (labels are float32 exactly for STS-B).
    """
    max_length = max_length or task.max_seq_length
    examples = glue.read_examples(data_dir, task, split, skip_malformed=skip_malformed)
    if limit is not None:
        examples = examples[:limit]
    if cache_dir is None:
        return encode_examples(tokenizer, examples, max_length, is_regression=task.is_regression)
    return encode_cached(tokenizer, examples, max_length, cache_dir, (task.name, split),
                         is_regression=task.is_regression)


__all__ = ["ARRAY_KEYS", "CACHE_FORMAT_VERSION", "cache_location", "cache_path", "cached_arrays",
           "encode_cached",
           "encode_examples", "examples_fingerprint", "load_encoded_split",
           "tokenizer_fingerprint"]
