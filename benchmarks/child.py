"""Runs a benchmark's measuring part in a fresh interpreter and reads back its result."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from binarybert_jax import host_memory


def run_module(module: str, args: list[str]) -> dict:
    """Runs ``python -m module *args`` from the repository root; returns its last stdout line's JSON.

    Linux carries ``ru_maxrss`` over ``fork`` and ``exec``: a child starts with its parent's peak.
    The benchmark parents therefore never import JAX or load a model, so each measuring child's
    peak is its own, give or take the parent's few tens of MiB of bare Python.

    The child runs with transparent huge pages for its large buffers, as the mains do
    (``host_memory.environment``).
    """
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(host_memory.environment(), PYTHONPATH=os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, "-m", module] + args,
                          capture_output=True, text=True, env=env, cwd=root)
    if proc.returncode:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
