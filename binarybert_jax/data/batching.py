"""Deterministic, host-sharded batches of encoded examples, with optional length bucketing.

Every process computes the same plan of global batches from ``(seed, epoch)`` and keeps its
contiguous slice of each, so the global batch does not depend on how many hosts there are.
Devices are the caller's business: it feeds each host's slice to ``jax.jit``/``jax.shard_map``
sharded on the leading axis over a ``data`` mesh axis.

Evaluation counts every example exactly once: the last partial batch is filled up to full size
with copies of one of its real rows (real, so the model sees ordinary inputs and never an
all-masked row), and ``example_mask`` is 0 on those copies. Training drops the remainder by
default.

With ``bucket_lengths``, each batch is cut to the smallest allowed length that holds its
longest example, so short batches cost less while the set of shapes (and of compilations) stays
as small as the set of buckets. With ``group_by_length``, examples of similar length are also
grouped within windows of shuffled examples and the batches then shuffled, so batches are
shorter still, though no longer i.i.d.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

# The arrays a BERT forward takes, in its positional order (``BertModel.__call__``): the (N, L)
# arrays that bucketing cuts to the batch's length; everything else is per example.
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")

# Batches whose examples are sorted by length together when bucketing a shuffled epoch: large
# enough that similar lengths meet, small enough that the epoch stays well mixed.
DEFAULT_SORT_WINDOW = 50


def default_bucket_lengths(max_length: int, step: int = 16) -> tuple[int, ...]:
    """Multiples of ``step`` up to ``max_length``, which is always the last bucket.

    E.g. ``default_bucket_lengths(128) == (16, 32, 48, 64, 80, 96, 112, 128)``; 16 keeps the
    lengths friendly to accelerator tiling while bounding padding to under 16 tokens a row.
    """
    if max_length < 1 or step < 1:
        raise ValueError(f"max_length and step must be positive, got {max_length}, {step}.")
    return tuple(range(step, max_length, step)) + (max_length,)


def _resolve_buckets(bucket_lengths: Sequence[int], max_length: int) -> np.ndarray:
    buckets = {int(b) for b in bucket_lengths}
    if not buckets or min(buckets) < 1:
        raise ValueError(f"bucket_lengths must be positive integers, got {bucket_lengths}.")
    # Lengths beyond the arrays' width are capped; the full width is always allowed so that
    # every batch fits in some bucket.
    return np.array(sorted({min(b, max_length) for b in buckets} | {max_length}))


def num_batches(num_examples: int, batch_size: int, *, drop_remainder: bool) -> int:
    """The number of (global) batches :func:`iterate_batches` yields for an epoch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if drop_remainder:
        return num_examples // batch_size
    return -(-num_examples // batch_size)


def batch_plan(num_examples: int, batch_size: int, *, shuffle: bool, seed: int = 0,
               epoch: int = 0, drop_remainder: bool = False,
               lengths: np.ndarray | None = None, group_by_length: bool = False,
               sort_window: int = DEFAULT_SORT_WINDOW) -> list[np.ndarray]:
    """The example indices of each global batch of an epoch (no padding yet).

    Args:
      num_examples: N.
      batch_size: global batch size B.
      shuffle: permute the examples with a generator seeded by ``(seed, epoch)``; otherwise
        keep file order.
      seed, epoch: the shuffle's seed; the same pair gives the same plan on every run and host.
      drop_remainder: drop the last ``N % B`` examples (of the shuffled order, so a different
        set each epoch).
      lengths: (N,) real token counts; needed for ``group_by_length``.
      group_by_length: when shuffling, sort by length within windows of ``sort_window``
        batches, then shuffle the order of the full batches; without shuffling, sort the
        whole set by length (fewest padded tokens for evaluation). Sorting is stable.
      sort_window: window size in batches for shuffled grouping.

    Returns:
      A list of int64 index arrays, each of length B except possibly the last.
    """
    if shuffle and (seed < 0 or epoch < 0):
        raise ValueError(f"seed and epoch must be non-negative, got {seed}, {epoch}.")
    n_batches = num_batches(num_examples, batch_size, drop_remainder=drop_remainder)
    if group_by_length and lengths is None:
        raise ValueError("group_by_length needs the examples' lengths.")
    rng = np.random.default_rng([seed, epoch]) if shuffle else None
    order = rng.permutation(num_examples) if shuffle else np.arange(num_examples)
    if drop_remainder:
        order = order[:n_batches * batch_size]
    if group_by_length:
        lengths = np.asarray(lengths)
        if shuffle:
            window = max(1, sort_window) * batch_size
            order = np.concatenate([
                chunk[np.argsort(lengths[chunk], kind="stable")]
                for chunk in np.split(order, range(window, len(order), window))
            ]) if len(order) else order
        else:
            order = order[np.argsort(lengths[order], kind="stable")]
    batches = np.split(order, range(batch_size, len(order), batch_size)) if len(order) else []
    if shuffle and group_by_length and batches:
        # Sorting made neighbouring batches alike; shuffle their order. A short last batch stays
        # last, where a consumer expects it.
        n_full = len(order) // batch_size
        batches[:n_full] = [batches[i] for i in rng.permutation(n_full)]
    return batches


def iterate_batches(arrays: Mapping[str, np.ndarray], batch_size: int, *, shuffle: bool,
                    seed: int = 0, epoch: int = 0, drop_remainder: bool | None = None,
                    bucket_lengths: Sequence[int] | None = None,
                    group_by_length: bool = False,
                    sort_window: int = DEFAULT_SORT_WINDOW, start_batch: int = 0,
                    process_index: int | None = None, process_count: int | None = None,
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Yields this host's part of each global batch of one epoch.

    Args:
      arrays: per-example arrays with a common leading size N, e.g. the output of
        ``encode.encode_examples``: ``input_ids``, ``token_type_ids``, ``attention_mask``
        (N, L), ``labels`` and ``lengths`` (N,). Every key is batched.
      batch_size: the global batch size B; must be divisible by ``process_count``.
      shuffle: shuffle with ``(seed, epoch)`` (training) or keep file order (evaluation).
      seed, epoch: see :func:`batch_plan`.
      drop_remainder: drop the last partial batch; None means ``shuffle`` (training drops it,
        evaluation pads it).
      bucket_lengths: allowed sequence lengths (see :func:`default_bucket_lengths`); each
        batch's ``MODEL_INPUTS`` are cut to the smallest one >= its longest real example,
        chosen over the global batch so all hosts agree. Needs ``arrays["lengths"]``. None keeps
        the full length L.
      group_by_length: group similar lengths (see :func:`batch_plan`): fewer padded tokens with
        buckets, but shuffled batches are no longer i.i.d. samples. Off, bucketing only cuts each
        batch. Evaluation order stays the file order unless set; ``example_index`` maps rows
        back either way.
      sort_window: window, in batches, for grouping a shuffled epoch.
      start_batch: skip this many global batches without building them (resuming mid-epoch).
      process_index, process_count: this host and the number of hosts; default to
        ``jax.process_index()`` / ``jax.process_count()``.

    Yields:
      Dicts with every key of ``arrays`` sliced to this host's ``B / process_count`` rows
      (sequence arrays to the chosen length), plus ``example_mask`` (float32, 1 for real rows,
      0 for padding) and ``example_index`` (int32, the row's index in ``arrays``, -1 for
      padding).

    Raises:
      ValueError: inconsistent leading sizes, a batch size the hosts cannot split, or bucketing
        without lengths.
    """
    if process_index is None or process_count is None:
        import jax  # Imported only here: the rest of the data code runs without JAX.
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count}).")
    if batch_size % process_count:
        raise ValueError(f"Global batch size {batch_size} is not divisible by the "
                         f"{process_count} processes.")
    sizes = {key: len(value) for key, value in arrays.items()}
    if not sizes:
        raise ValueError("No arrays to batch.")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"Arrays differ in leading size: {sizes}.")
    n = next(iter(sizes.values()))
    if drop_remainder is None:
        drop_remainder = shuffle
    lengths = arrays.get("lengths")
    buckets = None
    if bucket_lengths is not None:
        if lengths is None:
            raise ValueError("Bucketing needs arrays['lengths'] (real token counts).")
        buckets = _resolve_buckets(bucket_lengths, arrays["input_ids"].shape[1])
    plan = batch_plan(n, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                      drop_remainder=drop_remainder, lengths=lengths,
                      group_by_length=group_by_length, sort_window=sort_window)
    return _generate(arrays, plan[start_batch:], batch_size, buckets,
                     batch_size // process_count, process_index)


def _generate(arrays: Mapping[str, np.ndarray], plan: list[np.ndarray], batch_size: int,
              buckets: np.ndarray | None, per_host: int, process_index: int
              ) -> Iterator[dict[str, np.ndarray]]:
    """Builds the batches of a validated plan (kept apart so that argument errors surface when
    :func:`iterate_batches` is called, not at the first ``next``)."""
    host_rows = slice(process_index * per_host, (process_index + 1) * per_host)
    lengths = arrays.get("lengths")
    for indices in plan:
        real = len(indices)
        # Fill a short batch with copies of its first row; the mask zeroes their weight.
        padded = np.concatenate([indices, np.full(batch_size - real, indices[0])])
        mask = np.arange(batch_size) < real
        seq_len = None
        if buckets is not None:
            longest = int(lengths[indices].max())
            if longest > buckets[-1]:
                raise ValueError(f"A length of {longest} exceeds the arrays' width "
                                 f"{buckets[-1]}: lengths do not match the arrays.")
            seq_len = int(buckets[np.searchsorted(buckets, longest)])
        rows = padded[host_rows]
        batch = {}
        for key, value in arrays.items():
            if seq_len is not None and key in MODEL_INPUTS:
                batch[key] = value[rows, :seq_len]
            else:
                batch[key] = value[rows]
        batch["example_mask"] = mask[host_rows].astype(np.float32)
        batch["example_index"] = np.where(mask, padded, -1)[host_rows].astype(np.int32)
        yield batch


__all__ = ["DEFAULT_SORT_WINDOW", "MODEL_INPUTS", "batch_plan", "default_bucket_lengths",
           "iterate_batches", "num_batches"]
