"""The split of a phase's wall time (binarybert_jax.phase_time): compile spans counted once, and
the categories adding up to the wall time."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import phase_time


def _union_length(spans):
    """Brute force: the length of the union of ``spans`` on a 1 ms grid (endpoints on the grid)."""
    covered = set()
    for start, end in spans:
        covered.update(range(round(start * 1000), round(end * 1000)))
    return len(covered) / 1000


@pytest.mark.parametrize("seed", range(5))
def test_compile_spans_count_the_union(seed):
    """Nested spans (a function traced inside another), overlapping and disjoint ones, added in any
    order: the total is the union's length."""
    rng = np.random.default_rng(seed)
    spans = phase_time._CompileSpans()
    added = []
    for _ in range(60):
        start = int(rng.integers(0, 2000)) / 1000
        end = start + int(rng.integers(1, 300)) / 1000
        spans.add("/jax/core/compile/backend_compile_duration", start, end)
        added.append((start, end))
        assert spans.total == pytest.approx(_union_length(added), abs=1e-6)
    # Disjoint and sorted inside.
    assert all(e < s for e, s in zip(spans._ends, spans._starts[1:]))


def test_compile_spans_ignore_other_events():
    spans = phase_time._CompileSpans()
    spans.add("/jax/compilation_cache/cache_retrieval_time_sec", 0.0, 5.0)
    spans.add("/jax/core/compile/jaxpr_trace_duration", 1.0, 2.0)
    spans.add("/jax/core/compile/jaxpr_trace_duration", 1.2, 1.5, fun_name="inner")  # inside: no more
    assert spans.total == pytest.approx(1.0)


def test_compile_seconds_grow_with_a_compilation_not_a_cache_hit():
    phase_time.compile_seconds()  # listening from here on

    @jax.jit
    def f(x):
        return jnp.tanh(x @ x.T).sum()

    x = jnp.ones((64, 64))
    before = phase_time.compile_seconds()
    f(x).block_until_ready()
    compiled = phase_time.compile_seconds()
    assert compiled > before
    f(x).block_until_ready()  # the same shapes: the cached executable
    assert phase_time.compile_seconds() == compiled


def test_clock_splits_the_wall_time():
    clock = phase_time.PhaseClock()
    time.sleep(0.05)
    clock.attribute_elapsed("setup")
    with clock.section("evaluation"):
        time.sleep(0.1)
        # A compilation inside a section counts as compiling, not as the section.
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.ones(17)).block_until_ready()
    with clock.section("checkpoints"):
        time.sleep(0.03)
    time.sleep(0.08)  # what no section holds: the steps
    split = clock.seconds(rounded=False)
    wall = clock.elapsed()
    assert sum(split.values()) == pytest.approx(wall, abs=0.01)
    assert split["compiling"] > 0
    assert split["setup"] == pytest.approx(0.05, abs=0.03)
    assert split["evaluation"] == pytest.approx(0.1, abs=0.03)
    assert split["checkpoints"] == pytest.approx(0.03, abs=0.02)
    assert split["steps"] == pytest.approx(0.08, abs=0.03)
    with pytest.raises(ValueError, match="unknown time section 'eval'"):
        with clock.section("eval"):
            pass


def test_add_up_and_describe():
    total = phase_time.add_up([{"setup": 1.0, "compiling": 2.5}, {"setup": 0.5, "steps": 4.0},
                               {"earlier_runs": 3.0}])
    assert total == {"setup": 1.5, "compiling": 2.5, "steps": 4.0, "earlier_runs": 3.0}
    assert phase_time.describe(total) == "setup 1.5 s, compiling 2.5 s, steps 4.0 s, earlier runs 3.0 s"
