"""Where arrays live: the ``data`` mesh, replicated parameters, and this host's slice of a batch.

Data parallelism only: one mesh axis, ``data``, over every device of every host. Parameters and
optimizer state are replicated; batches are split along their first axis. The per-device programs
(the train step, the predict step) are ``jax.shard_map`` functions over this mesh with
``lax.pmean`` collectives, as pmap code had.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from binarybert_jax.data.batching import MODEL_INPUTS

DATA_AXIS = "data"
# What the loss and metrics read besides the inputs.
LOSS_INPUTS = ("labels", "example_mask")


def make_mesh(num_devices: Optional[int] = None) -> jax.sharding.Mesh:
    """A 1-D ``data`` mesh over all (or the first ``num_devices``) devices of all hosts."""
    devices = jax.devices()[: num_devices or jax.device_count()]
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """``tree`` on every device of ``mesh`` (parameters, optimizer state, the teacher)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Mapping[str, Any], mesh: jax.sharding.Mesh) -> dict:
    """Places this host's slice of the global batch on its devices (global arrays over ``data``)."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def model_inputs(batch: Mapping[str, Any]) -> list:
    """The forward's positional inputs of ``batch``, in order."""
    return [batch[k] for k in MODEL_INPUTS]


def model_batch(batch: Mapping[str, Any], *, labels: bool = False) -> dict:
    """The keys of a host batch that the model and its losses read (drops bookkeeping such as
    ``example_index``, which is not sharded onto devices); ``labels=True`` requires labels."""
    required = MODEL_INPUTS + (("labels",) if labels else ())
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"a model batch needs {required}; missing {missing}")
    return {k: batch[k] for k in MODEL_INPUTS + LOSS_INPUTS if k in batch}


def device_batch(batch: Mapping[str, Any], *, labels: bool = False) -> dict:
    """``model_batch`` on the default device, with ``example_mask`` float32 (1 for every row where
    the batch has none): the batch of a single-device forward or loss outside the sharded train
    and predict steps (``shard_batch``), e.g. the analyses, importance scores and sensitivities."""
    out = {k: jnp.asarray(v) for k, v in model_batch(batch, labels=labels).items()}
    mask = batch.get("example_mask", np.ones(np.shape(batch["input_ids"])[0]))
    return {**out, "example_mask": jnp.asarray(mask, jnp.float32)}


def gather_to_host(x: Any) -> np.ndarray:
    """A sharded global array as one numpy array on every host (all-gathered across processes)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
