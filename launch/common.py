"""Shared set-up of the absl mains."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    """Our package logs at INFO to stderr; absl (through which Orbax logs every file operation
    at INFO) stays at WARNING."""
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    ours = logging.getLogger("binarybert_jax")
    ours.setLevel(logging.INFO)
    if not ours.handlers:
        ours.addHandler(logging.StreamHandler())
    ours.propagate = False
