"""Input pipeline: GLUE files -> examples -> fixed-length token arrays -> sharded batches.

- ``glue``: task specifications (columns, labels, metrics), the TSV reader, the download.
- ``encode``: tokenization to fixed-length arrays, cached on disk.
- ``batching``: deterministic, host-sharded batches with padding masks and length buckets.
- ``tfds_source``: the same examples through TensorFlow Datasets (optional dependency).

The package imports neither JAX nor the model: batching asks JAX for the process index only
when the caller does not pass it.
"""

from binarybert_jax.data.batching import (
    default_bucket_lengths,
    iterate_batches,
    num_batches,
)
from binarybert_jax.data.encode import encode_cached, encode_examples, load_encoded_split
from binarybert_jax.data.glue import (
    TASK_NAMES,
    Example,
    ReadReport,
    TaskSpec,
    all_tasks,
    download_glue,
    get_task,
    glue_dir,
    read_examples,
    read_split,
)

__all__ = [
    "TASK_NAMES", "Example", "ReadReport", "TaskSpec", "all_tasks", "default_bucket_lengths",
    "download_glue", "encode_cached", "encode_examples", "get_task", "glue_dir",
    "iterate_batches", "load_encoded_split", "num_batches", "read_examples", "read_split",
]
