"""Every task a run can name: the GLUE tasks (``glue.TaskSpec``) and SQuAD (``squad.SquadTask``),
and the one lookup from a name to its spec.

Both specs carry what the training loop reads: ``name``, ``head`` (``classification`` or
``span``), ``num_labels``, ``is_regression``, ``max_seq_length``, ``metric_names`` and
``main_metric``. Entry points (commands, configs, a record's task) resolve a name here once; the
functions they call take the spec.
"""

from __future__ import annotations

from binarybert_jax.data import glue, squad

TaskSpec = glue.TaskSpec | squad.SquadTask
TASK_NAMES: tuple[str, ...] = glue.TASK_NAMES + tuple(squad.TASKS)


def _squash(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(".", "")


_SPECS = {t.name: t for t in (*glue.all_tasks(), *squad.TASKS.values())}
# Spellings other than the name with its case, dashes, underscores and dots dropped.
_ALIASES = {"sst": "sst-2", "sts": "sts-b", "squad11": "squad1", "squadv11": "squad1",
            "squad20": "squad2", "squadv20": "squad2"}
_BY_KEY = {**{_squash(name): spec for name, spec in _SPECS.items()},
           **{alias: _SPECS[name] for alias, name in _ALIASES.items()}}


def get_task(name: str) -> TaskSpec:
    """The spec of a GLUE or SQuAD task.

    Args:
      name: a task name in any case, with or without dashes, underscores and dots (``"SST-2"``,
        ``"sst2"``, ``"STS_B"``, ``"squad-v2.0"``).
    Raises:
      ValueError: unknown task; the message lists every known one.
    """
    spec = _BY_KEY.get(_squash(name)) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"Unknown task {name!r}; expected one of {', '.join(TASK_NAMES)} "
                         "(case-insensitive; 'sst2', 'stsb' also work)")
    return spec


def get_glue_task(name: str) -> glue.TaskSpec:
    """``get_task`` for what reads GLUE only (its TSVs, its downloads, the analyses)."""
    spec = get_task(name)
    if not isinstance(spec, glue.TaskSpec):
        raise ValueError(f"{name!r} is not a GLUE task; expected one of {', '.join(glue.TASK_NAMES)}")
    return spec


__all__ = ["TASK_NAMES", "TaskSpec", "get_glue_task", "get_task"]
