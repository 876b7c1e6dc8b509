"""Input pipeline: GLUE/SQuAD files -> examples -> fixed-length token arrays -> sharded batches.

- ``glue``: task specifications (columns, labels, metrics) and the TSV reader.
- ``download``: fetching a task's TSVs into the GLUE layout.
- ``encode``: tokenization to fixed-length arrays, cached on disk.
- ``batching``: deterministic, host-sharded batches with padding masks and length buckets.
- ``tfds_source``: the same examples through TensorFlow Datasets (optional dependency).
- ``squad``: SQuAD v1.1/v2.0 files, the dev-split protocol, windowed span features, answers from logits.
- ``tasks``: one lookup over GLUE's and SQuAD's task specs.
- ``loading``: a run's train and eval arrays from either source, the one place a run loads data.

The package imports neither JAX nor the model: batching asks JAX for the process index only
when the caller does not pass it.
"""

from binarybert_jax.data.batching import (
    default_bucket_lengths,
    iterate_batches,
    num_batches,
)
from binarybert_jax.data.download import download_glue
from binarybert_jax.data.encode import encode_cached, encode_examples, load_encoded_split
from binarybert_jax.data.glue import (
    TASK_NAMES,
    Example,
    ReadReport,
    TaskSpec,
    all_tasks,
    glue_dir,
    read_examples,
    read_split,
    read_tsv,
)
from binarybert_jax.data.loading import load_task_data
from binarybert_jax.data.tasks import get_task

__all__ = [
    "TASK_NAMES", "Example", "ReadReport", "TaskSpec", "all_tasks", "default_bucket_lengths",
    "download_glue", "encode_cached", "encode_examples", "get_task", "glue_dir",
    "iterate_batches", "load_encoded_split", "load_task_data", "num_batches", "read_examples",
    "read_split", "read_tsv",
]
