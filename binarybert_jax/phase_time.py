"""Where a training phase's wall time goes: compiling, training steps, evaluation, checkpoints.

On a CPU the short runs (the embedded default, the tests' slices) spend as long compiling as
training: one train-step program per bucket length per run (its phases share it), each some
seconds of XLA. JAX reports every
trace, lowering and XLA compilation as a time span through ``jax.monitoring``; ``compile_seconds``
adds them up (nested spans, a jitted function traced inside another, once), and ``PhaseClock``
splits a phase's wall time into what the loop names (evaluation, checkpoints, setup) and what it
compiled, the rest being the training steps and their batches. ``train.train_phase`` logs the
split and writes it into ``results.json`` (``time_seconds``), whence it reaches the records.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from typing import Iterable, Iterator

import jax

# The spans of one compilation: tracing to a jaxpr, lowering to StableHLO, XLA's compile.
COMPILE_EVENTS = frozenset({
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
})

# The categories of ``PhaseClock.seconds``, in the order they are printed.
CATEGORIES = ("setup", "compiling", "steps", "evaluation", "checkpoints")


class _CompileSpans:
    """The union of the compile spans reported so far, as disjoint sorted intervals, and its length."""

    def __init__(self):
        self._lock = threading.Lock()
        self._starts: list[float] = []
        self._ends: list[float] = []
        self.total = 0.0

    def add(self, event: str, start_time: float, end_time: float, **_) -> None:
        if event not in COMPILE_EVENTS or end_time <= start_time:
            return
        with self._lock:
            # Merge with every interval it touches: an outer trace span contains the spans of the
            # functions traced inside it, which ended (and were added) before it.
            lo = bisect.bisect_left(self._ends, start_time)
            hi = bisect.bisect_right(self._starts, end_time)
            if lo < hi:
                start_time = min(start_time, self._starts[lo])
                end_time = max(end_time, self._ends[hi - 1])
                self.total -= sum(e - s for s, e in zip(self._starts[lo:hi], self._ends[lo:hi]))
            self._starts[lo:hi] = [start_time]
            self._ends[lo:hi] = [end_time]
            self.total += end_time - start_time


_spans = _CompileSpans()
_listening = False
_listening_lock = threading.Lock()


def compile_seconds() -> float:
    """Seconds this process has spent tracing, lowering and compiling since the first call here
    (the first call starts listening; every compilation after it counts)."""
    global _listening
    with _listening_lock:
        if not _listening:
            jax.monitoring.register_event_time_span_listener(_spans.add)
            _listening = True
    return _spans.total


class PhaseClock:
    """Splits the wall time since it was made into ``CATEGORIES``: ``section(name)`` times what
    the loop does by name, less the compilation inside it; ``compiling`` is every compilation; the
    remainder is ``steps`` (the train steps, their batches and the logging between them)."""

    def __init__(self):
        self._started = time.perf_counter()
        self._compile_at_start = compile_seconds()
        self._named = {name: 0.0 for name in CATEGORIES if name not in ("compiling", "steps")}

    def elapsed(self) -> float:
        """Wall seconds since the clock was made."""
        return time.perf_counter() - self._started

    def _check(self, name: str) -> None:
        if name not in self._named:
            raise ValueError(f"unknown time section {name!r}; allowed: {sorted(self._named)}")

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self._check(name)
        started, compiled = time.perf_counter(), compile_seconds()
        try:
            yield
        finally:
            self._named[name] += (time.perf_counter() - started) - (compile_seconds() - compiled)

    def attribute_elapsed(self, name: str) -> None:
        """Everything since the clock was made that no section and no compilation holds counts as
        ``name`` (the phase's setup, ended when its loop starts)."""
        self._check(name)
        self._named[name] += self.seconds(rounded=False)["steps"]

    def seconds(self, rounded: bool = True) -> dict[str, float]:
        """Seconds per category, adding up to the wall time since the clock was made."""
        wall = self.elapsed()
        compiling = compile_seconds() - self._compile_at_start
        steps = wall - compiling - sum(self._named.values())
        split = {**self._named, "compiling": compiling, "steps": steps}
        return {name: round(max(value, 0.0), 1) for name, value in split.items()} if rounded else split


def add_up(splits: Iterable[dict[str, float]]) -> dict[str, float]:
    """The category-wise sum of several phases' splits (``PhaseClock.seconds``)."""
    total: dict[str, float] = {}
    for split in splits:
        for name, value in split.items():
            total[name] = round(total.get(name, 0.0) + value, 1)
    return total


def describe(seconds: dict[str, float]) -> str:
    """``setup 1.2 s, compiling 31.2 s, steps 20.1 s, ...``: the categories in ``CATEGORIES`` order,
    then a resumed phase's ``earlier_runs``."""
    names = [n for n in CATEGORIES if n in seconds] + [n for n in seconds if n not in CATEGORIES]
    return ", ".join(f"{name.replace('_', ' ')} {seconds[name]:.1f} s" for name in names)
