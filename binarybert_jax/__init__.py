"""binarybert-jax: BinaryBERT and TernaryBERT in JAX/Flax.

Layering (lower layers never import higher ones; ../shared/docs/style.md has the picture)::

    launch/ (thin mains) -> pipeline (walks the stages its config declares)
    pipeline -> train, tws, halfwidth, adaptive, evaluate, resolve
    train (flat loop, sharded step) -> resolve, evaluate, kd, optim, sharding, checkpoints, data
    evaluate (one predict/eval path) -> model, sharding, metrics, data
    checkpoints (the one I/O boundary: Orbax, JSON records, reports, metric logs) -> model
    model, tws, export, adaptive -> quant
"""

__version__ = "0.1.0"
