"""Experiments as configuration: a sweep is a Python file here whose ``get_runs(arg)`` returns its
named runs, and ``python -m launch.sweep configs/sweeps/<name>.py[:arg]`` runs them.

Each ``Run`` is one command of the project's mains (``launch.pipeline``, ``launch.train``, ...): a
base config with its ``arg``, the overrides that make this run what it is, a workdir, and the
records it leaves under ``results/`` (``Record``: what ``launch.record`` is given). A run that
starts from another run's model names it with ``Best(workdir)``, resolved when the run starts, and
lists that run in ``needs``; a command that writes into the results directory names the path
``InResults(path)``. ``arg`` is parsed as the configs' own (``configs.common.parse_arg``);
a list in it is written with ``+`` (``seeds=1+2+3``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Mapping, Optional, Union


@dataclasses.dataclass(frozen=True)
class Best:
    """The best checkpoint of a finished ``launch.train`` workdir (a pipeline's stage directory is
    one): ``workdir/<its results.json's best_checkpoint>``, known only once that run has finished."""
    workdir: str

    def resolve(self) -> str:
        results = pathlib.Path(self.workdir) / "results.json"
        if not results.is_file():
            raise FileNotFoundError(f"{results}: missing; the run that trains {self.workdir} has "
                                    "not finished")
        return f"{self.workdir}/{json.loads(results.read_text())['best_checkpoint']}"

    def __str__(self) -> str:
        return f"{self.workdir}/<best>"


@dataclasses.dataclass(frozen=True)
class InResults:
    """A path under the results directory the sweep records into (``results/`` by default), for a
    run whose command writes a record itself."""
    path: str


Value = Union[str, int, float, bool, tuple, Best, InResults]


@dataclasses.dataclass(frozen=True)
class Record:
    """A record ``launch.record`` writes from a finished workdir: ``results/<name>`` (a pipeline
    workdir: one record a trained stage under it, and its report), its table row ``setting``
    (default: the stage's description)."""
    workdir: str
    name: str
    setting: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Run:
    """One named run of a sweep.

    ``main`` is the module run with ``python -m``. With a ``config`` it is called as the trainers
    are, ``--config CONFIG --workdir WORKDIR --config.KEY=VALUE...`` (``overrides``, in order), then
    ``args`` (an item that is a tuple is one argument, its parts joined); without one, with
    ``args`` alone. The run is finished when every file in ``outputs``
    exists (default: each record's ``results.json``; without records, the workdir's), and recorded
    when each of its records exists. A run without records (a shared teacher, say) runs only when a
    run that ``needs`` it, or ``--only``, asks for it.
    """
    name: str
    main: str
    workdir: str = ""
    config: str = ""
    overrides: Mapping[str, Value] = dataclasses.field(default_factory=dict)
    args: tuple = ()
    records: tuple = ()
    needs: tuple = ()
    outputs: tuple = ()

    def output_files(self) -> tuple:
        if self.outputs:
            return tuple(self.outputs)
        if self.records:
            return tuple(f"{r.workdir}/results.json" for r in self.records)
        return (f"{self.workdir}/results.json",)


def flag_value(value: Value) -> str:
    """``value`` as ml_collections' ``--config.KEY=`` flags parse it back."""
    if isinstance(value, Best):
        return value.resolve()
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        items = ",".join(json.dumps(v) if isinstance(v, str) else flag_value(v) for v in value)
        return f"({items}{',' if len(value) == 1 else ''})"
    return repr(value)


def words(value: str) -> list[str]:
    """A list written in a sweep's ``arg``: items split on ``+`` or spaces (``1+2+3``, ``"1 2 3"``)."""
    return [w for w in re.split(r"[+\s]+", value) if w]
