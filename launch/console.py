"""Console scripts (``binarybert-train``, ``binarybert-pipeline``, ...; pyproject.toml lists them).

Each runs its main exactly as ``python -m launch.<name>`` does: the module executed as
``__main__``, so the flags, help and error handling are the main's own.
"""

from __future__ import annotations

import runpy


def _run(name: str) -> None:
    runpy.run_module(f"launch.{name}", run_name="__main__", alter_sys=True)


def train() -> None:
    _run("train")


def pipeline() -> None:
    _run("pipeline")


def analyze() -> None:
    _run("analyze")


def split() -> None:
    _run("split")


def export() -> None:
    _run("export")


def size() -> None:
    _run("size")


def predict() -> None:
    _run("predict")


def evaluate_squad() -> None:
    _run("evaluate_squad")


def record() -> None:
    _run("record")


def summarize() -> None:
    _run("summarize")


def tables() -> None:
    _run("tables")


def parity() -> None:
    _run("parity")


def sweep() -> None:
    _run("sweep")


def squad_loss_scale() -> None:
    _run("squad_loss_scale")


def squad_null_threshold() -> None:
    _run("squad_null_threshold")
