"""Every task a run can name: the GLUE tasks (``glue.TaskSpec``) and SQuAD (``squad.SquadTask``).

Both specs carry what the training loop reads: ``name``, ``head`` (``classification`` or
``span``), ``num_labels``, ``is_regression``, ``max_seq_length``, ``metric_names`` and
``main_metric``.
"""

from __future__ import annotations

from binarybert_jax.data import glue, squad

TaskSpec = glue.TaskSpec | squad.SquadTask
TASK_NAMES: tuple[str, ...] = glue.TASK_NAMES + tuple(squad.TASKS)


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The spec of a GLUE or SQuAD task (names as ``glue.get_task`` and ``squad.get_task`` take).

    Raises:
      ValueError: unknown task; the message lists every known one.
    """
    if isinstance(name, (glue.TaskSpec, squad.SquadTask)):
        return name
    if squad.is_squad_task(name):
        return squad.get_task(name)
    try:
        return glue.get_task(name)
    except ValueError:
        raise ValueError(f"Unknown task {name!r}; expected one of {', '.join(TASK_NAMES)} "
                         "(case-insensitive; 'sst2', 'stsb' also work)") from None


def is_span(task: str | TaskSpec) -> bool:
    """Whether the task trains a span head (SQuAD)."""
    return get_task(task).head == "span"


__all__ = ["TASK_NAMES", "TaskSpec", "get_task", "is_span"]
