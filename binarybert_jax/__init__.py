"""binarybert-jax: BinaryBERT and TernaryBERT in JAX/Flax.

Layering (lower layers never import higher ones)::

    launch/ (thin mains) -> pipeline -> train (sharded step, loop, eval)
    train -> model, kd, data, metrics, checkpoints, storage
    model, tws, export -> quant
"""

__version__ = "0.1.0"
