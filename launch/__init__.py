"""The command-line mains: ``python -m launch.<name>``, or the ``binarybert-*`` console scripts.

A process started as one of them starts again at once, before it imports anything heavy, with
transparent huge pages for XLA's large buffers (``binarybert_jax/host_memory.py``: a quarter of a
CPU train step's time). Importing this package from anywhere else changes nothing.
"""

from __future__ import annotations

import os
import sys

from binarybert_jax import host_memory


def started_as_a_main(orig_argv: list[str]) -> bool:
    """Whether a process with this command line (``sys.orig_argv``) is one of the mains:
    ``python [options] -m launch.<name> ...`` or ``python [options] .../binarybert-<name> ...``
    (how a console script runs)."""
    args = iter(orig_argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, "").startswith("launch.")
        if arg in ("-X", "-W", "--check-hash-based-pycs"):  # options with a separate value
            next(args, None)
        elif arg == "-c" or arg == "-" or not arg.startswith("-"):
            return os.path.basename(arg).startswith("binarybert-")
    return False

if started_as_a_main(list(sys.orig_argv)):
    host_memory.restart_with_huge_pages()
