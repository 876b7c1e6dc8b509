"""The embedded default (README's first command) as a recorded run: the whole pipeline of
configs/pipeline.py on the shipped SST-2 slice, every trained stage recorded under
``results/embedded_default/s<seed>/<stage>`` with the pipeline's report (README's table of it).

    python -m launch.sweep configs/sweeps/embedded_default.py

Runs ``s<seed>``. ``arg`` keys: ``seed`` (42, the config's); ``root`` (runs/pipeline_default: the
workdir is <root>, with _s<seed> for a seed other than 42).
"""

from configs import common
from configs.sweeps import Record, Run

DEFAULT_SEED = 42


def get_runs(arg=None) -> list:
    a = common.parse_arg(arg, seed=DEFAULT_SEED, root="runs/pipeline_default")
    workdir = a.root if a.seed == DEFAULT_SEED else f"{a.root}_s{a.seed}"
    overrides = {} if a.seed == DEFAULT_SEED else {"seed": a.seed}
    return [Run(f"s{a.seed}", "launch.pipeline", workdir, "configs/pipeline.py", overrides,
                records=(Record(workdir, f"embedded_default/s{a.seed}"),))]
