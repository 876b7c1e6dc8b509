"""Transparent huge pages for XLA:CPU's buffers: the process setting that makes a CPU step fast.

XLA:CPU allocates the temporaries of every run of a compiled computation as one block, through
glibc's ``malloc``: 1.2 GiB for the KD train step at MiniLM half width, batch 32 × 128. A block
that large is mapped afresh by each run and unmapped at its end, so every run first touches
all of it again in 4 KiB pages: about 320,000 page faults a step, and as many TLB entries to
walk. With glibc's tunable ``glibc.malloc.hugetlb=1`` (glibc 2.35 and later), ``malloc`` advises
transparent huge pages on what it maps (it takes effect where the kernel's THP mode is
``madvise`` or ``always``): the same step faults about 1,300 times and runs in three quarters of
the time (AMD EPYC, 2 cores: 1.06-1.13 s against 1.40-1.60 s, ``benchmarks/train_step.py``).
Nothing computed changes.

glibc reads its tunables when the process starts, so a process that did not start with it sets
it by starting again: ``restart_with_huge_pages`` (every main, as the ``launch`` package is
imported, before anything else) and ``environment`` (the environment a child process is given).
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Optional

ENV = "GLIBC_TUNABLES"
TUNABLE = "glibc.malloc.hugetlb"
SETTING = f"{TUNABLE}=1"


def environment(env: Optional[Mapping[str, str]] = None) -> dict:
    """``env`` (default ``os.environ``) with ``glibc.malloc.hugetlb=1`` among its glibc tunables:
    added to those already there, unless a value of that tunable is already set (which is kept)."""
    out = dict(os.environ if env is None else env)
    tunables = [t for t in out.get(ENV, "").split(":") if t]
    if not any(t.split("=", 1)[0] == TUNABLE for t in tunables):
        out[ENV] = ":".join(tunables + [SETTING])
    return out


def started_with_huge_pages() -> bool:
    """Whether this process started with ``glibc.malloc.hugetlb`` set (to any value)."""
    return environment() == dict(os.environ)


def restart_with_huge_pages() -> None:
    """On Linux, when this process did not start with the tunable set: replaces it with the same
    command line (interpreter options included) in ``environment()``; it returns only where
    there is nothing to do. Call it before anything is written, read or started: the process
    begins again from its first line (same process id, same open standard streams)."""
    if sys.platform != "linux" or started_with_huge_pages() or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, list(sys.orig_argv), environment())
    except OSError:
        return  # it runs on as it is: slower, the same numbers
