"""Distillation-aware quantization training: the sharded step, evaluation, and the loop.

``train_and_evaluate(config, workdir)`` runs one training job: a full-precision fine-tuning
(``kd.mode = supervised``), or a quantized student distilled from a teacher checkpoint (two-stage,
joint, or a single stage), resuming from the workdir when it holds a checkpoint.

Workdir layout::

    config.json                  the resolved config of the run
    <phase>/ckpt/<step>/         periodic train-state checkpoints (Orbax, atomic, last k kept)
    <phase>/best/, <phase>/final model checkpoints (storage.save_model), best by the task's main metric
    metrics.jsonl, tb/           measurements (JSON lines and TensorBoard)
    results.json                 per phase: best and final dev metrics and checkpoint paths

Resume order for the student of a phase: the phase's latest train checkpoint, else the previous
phase's final model, else ``config.init_checkpoint``, else the teacher (the papers initialise the
student from the model it distils), else the pretrained Hugging Face weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from binarybert_jax import assets, checkpoints, kd, metrics, optim, storage
from binarybert_jax.data import batching, encode, glue
from binarybert_jax.model import BertConfig, BertModel, ModelSpec, QuantConfig, calibrate_lsq_steps
from binarybert_jax.tokenizer import load_tokenizer
from binarybert_jax.trees import flatten

log = logging.getLogger(__name__)

DATA_AXIS = "data"
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Phase:
    """One optimisation run with its own optimizer and schedule (e.g. stage 1 of two-stage KD)."""

    name: str
    objective: str
    epochs: float
    learning_rate: float


# ==============================================================================================
# Mesh and placement.
# ==============================================================================================
def make_mesh(num_devices: Optional[int] = None) -> jax.sharding.Mesh:
    """A 1-D ``data`` mesh over all (or the first ``num_devices``) devices of all hosts."""
    devices = jax.devices()[: num_devices or jax.device_count()]
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree, mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict, mesh) -> dict:
    """Places this host's slice of the global batch on its devices (global arrays over ``data``)."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


# ==============================================================================================
# The update step.
# ==============================================================================================
def make_train_step(student: BertModel, teacher: Optional[BertModel], tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh, *, objective: str, is_regression: bool,
                    temperature: float = 1.0, attention: bool = True, ignore_padding: bool = False,
                    teacher_dropout: bool = False) -> Callable:
    """Builds the jitted, sharded KD train step ``(state, teacher_params, batch, rng) -> (state, metrics)``.

    Written as a per-device program (``jax.shard_map``) with ``lax.pmean`` over ``data``: the
    gradient all-reduce and the cross-device reduction of activation ranges
    (``QuantConfig.act_axis_name``) are explicit collectives, exactly what pmap code did, and the
    same code runs on one CPU, several GPUs or a TPU slice. ``check_vma`` is off because the
    straight-through quantizers' custom VJPs return replicated cotangents for replicated inputs from
    device-varying data, which the pmean then makes identical, as pmap semantics assume.

    The state buffers are donated; the RNG is folded with the step and the device index; nothing
    inside syncs with the host.
    """
    lat = student.quant_cfg.weight_method == "lat" or student.quant_cfg.embed_method == "lat"

    def per_device(state: TrainState, teacher_params, batch, rng):
        rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(DATA_AXIS))
        student_rng, teacher_rng = jax.random.split(rng)
        inputs = [batch[k] for k in MODEL_INPUTS]
        teacher_out = None
        if teacher is not None:
            teacher_out = lax.stop_gradient(teacher.apply(
                {"params": teacher_params}, *inputs, deterministic=not teacher_dropout,
                rngs={"dropout": teacher_rng}))
        extra = {}
        if lat:
            extra["lat_diag"] = optim.second_moments(state.opt_state)

        def loss_fn(params):
            out = student.apply({"params": params, **extra}, *inputs, deterministic=False,
                                rngs={"dropout": student_rng})
            terms = kd.kd_losses(out, teacher_out, batch, objective=objective,
                                 is_regression=is_regression, temperature=temperature,
                                 attention=attention, ignore_padding=ignore_padding)
            return terms["total"], terms

        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = lax.pmean(grads, DATA_AXIS)
        terms = lax.pmean(terms, DATA_AXIS)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        measurements = dict(terms, grad_norm=optax.tree.norm(grads),
                            update_norm=optax.tree.norm(updates),
                            param_norm=optax.tree.norm(params),
                            learning_rate=jnp.asarray(schedule(state.step), jnp.float32))
        return TrainState(state.step + 1, params, opt_state), measurements

    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS), P()),
                            out_specs=(P(), P()), check_vma=False)
    return jax.jit(sharded, donate_argnums=(0,))


def make_predict_step(model: BertModel, mesh) -> Callable:
    """``(params, batch) -> logits``, sharded over ``data`` like the train step."""

    def per_device(params, batch):
        return model.apply({"params": params}, *[batch[k] for k in MODEL_INPUTS])["logits"]

    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                                 out_specs=P(DATA_AXIS), check_vma=False))


# ==============================================================================================
# Evaluation.
# ==============================================================================================
def predict(predict_step, params, arrays: dict, batch_size: int, mesh,
            bucket_lengths=None) -> np.ndarray:
    """Logits for every example of ``arrays`` in file order (padding rows dropped)."""
    n = len(arrays["input_ids"])
    out = None
    for batch in batching.iterate_batches(arrays, batch_size, shuffle=False,
                                          bucket_lengths=bucket_lengths):
        index = batch["example_index"]
        logits = predict_step(params, shard_batch(_model_batch(batch), mesh))
        logits = np.asarray(jax.experimental.multihost_utils.process_allgather(logits, tiled=True)) \
            if jax.process_count() > 1 else np.asarray(logits)
        index = np.asarray(jax.experimental.multihost_utils.process_allgather(index, tiled=True)) \
            if jax.process_count() > 1 else index
        if out is None:
            out = np.zeros((n,) + logits.shape[1:], np.float32)
        keep = index >= 0
        out[index[keep]] = logits[keep]
    return out


def evaluate(predict_step, params, task: glue.TaskSpec, eval_sets: dict, batch_size: int, mesh,
             bucket_lengths=None) -> dict[str, float]:
    """GLUE metrics on each evaluation split; keys ``<metric>`` for the first split and
    ``<split>/<metric>`` for the others (MNLI mismatched)."""
    results = {}
    for i, (split, arrays) in enumerate(eval_sets.items()):
        logits = predict(predict_step, params, arrays, batch_size, mesh, bucket_lengths)
        preds = logits[:, 0] if task.is_regression else logits.argmax(-1)
        scores = metrics.glue_metrics(task, preds, arrays["labels"])
        results.update({(k if i == 0 else f"{split}/{k}"): float(v) for k, v in scores.items()})
    return results


def _model_batch(batch: dict) -> dict:
    keep = MODEL_INPUTS + ("labels", "example_mask")
    return {k: batch[k] for k in keep if k in batch}


# ==============================================================================================
# Config resolution.
# ==============================================================================================
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


def student_spec(config, backbone: BertConfig, task: glue.TaskSpec) -> ModelSpec:
    """The student's ModelSpec from the backbone config and ``config.student``."""
    arch = backbone
    if config.student.width != 1.0:
        arch = arch.with_width(config.student.width)
    if config.student.hidden_act:
        arch = dataclasses.replace(arch, hidden_act=config.student.hidden_act)
    if config.student.dropout >= 0:
        arch = dataclasses.replace(arch, hidden_dropout=config.student.dropout,
                                   attention_dropout=config.student.dropout)
    q = dict(config.student.quant)
    q["unsplit"] = tuple(q.get("unsplit", ()))
    if q.get("act_axis_name") == "":
        q["act_axis_name"] = None
    quant_cfg = QuantConfig.from_dict(q)
    return ModelSpec(arch, quant_cfg, "classification", task.num_labels)


def resolve_data_dir(config) -> pathlib.Path:
    d = config.data_dir or glue.glue_dir()
    if not d:
        raise ValueError("no GLUE data: set --config.data_dir=DIR or $GLUE_DIR (the official GLUE "
                         "layout, e.g. DIR/MRPC/train.tsv); binarybert_jax.data.glue.download_glue "
                         "fetches a task where the network allows")
    return pathlib.Path(d)


def init_source(config) -> str:
    """The model checkpoint a fresh student starts from ("" for the pretrained weights)."""
    if config.init_checkpoint:
        return config.init_checkpoint
    if config.teacher and config.kd.mode != "supervised" and config.student.width == 1.0:
        return config.teacher
    return ""


def _backbone(config) -> BertConfig:
    """The architecture the student starts from: its init checkpoint's (which fixes the width),
    else the pretrained checkpoint's (scaled by ``student.width``)."""
    source = init_source(config)
    if not source:
        return checkpoints.read_hf_config(resolve_pretrained(config))
    if config.student.width != 1.0:
        raise ValueError(f"--config.student.width={config.student.width} with an init checkpoint: "
                         f"{source} fixes the architecture; leave width at 1.0")
    return storage.load_model_spec(source).config


def tokenizer_dir(config) -> str:
    """The tokenizer the run uses, recorded with its checkpoints so prediction uses it too."""
    return str(pathlib.Path(config.tokenizer or resolve_pretrained(config)).absolute())


def resolve_pretrained(config) -> pathlib.Path:
    return pathlib.Path(config.pretrained) if config.pretrained else assets.minilm_dir()


# ==============================================================================================
# Measurements.
# ==============================================================================================
class MetricWriter:
    """Writes scalars to ``metrics.jsonl`` and TensorBoard (tensorboardX), on process 0 only."""

    def __init__(self, workdir: pathlib.Path):
        self._active = jax.process_index() == 0
        if not self._active:
            return
        self._jsonl = open(workdir / "metrics.jsonl", "a")
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(workdir / "tb"))

    def write(self, phase: str, step: int, scalars: dict) -> None:
        if not self._active:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"phase": phase, "step": step, **clean}) + "\n")
        self._jsonl.flush()
        for k, v in clean.items():
            self._tb.add_scalar(f"{phase}/{k}", v, step)

    def close(self) -> None:
        if self._active:
            self._jsonl.close()
            self._tb.close()


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step and the last good checkpoint."""


# ==============================================================================================
# The loop.
# ==============================================================================================
def _load_init_params(config, init_params, previous: Optional[pathlib.Path]):
    """Student parameters for a phase's first step (see the module docstring for the order).

    Returns:
      (params, source description, whether activation quantizer params came with them).
    """
    if previous is not None or init_source(config):
        source = str(previous if previous is not None else init_source(config))
        params, _, _ = storage.load_model(source)
        flat = flatten(params)
    else:
        pretrained = resolve_pretrained(config)
        if config.student.width != 1.0:
            raise ValueError(
                f"the student has width {config.student.width} but would start from the full-width "
                f"pretrained checkpoint {pretrained}: give --config.init_checkpoint a half-width "
                "model (made by the half-width stage of the pipeline)")
        source = str(pretrained)
        _, flat = checkpoints.load_hf_checkpoint(pretrained)
    has_quant = any(k.endswith(("_clip", "_step")) for k in flat)
    return checkpoints.merge_pretrained(init_params, flat, source), source, has_quant


def _epoch_batches(arrays, config, epoch, start_batch) -> Iterator[dict]:
    buckets = tuple(config.bucket_lengths) or None
    if config.group_by_length and buckets is None:
        raise ValueError("--config.group_by_length=True needs --config.bucket_lengths: grouping "
                         "similar lengths only saves work when batches are cut to a bucket")
    return batching.iterate_batches(arrays, config.batch_size, shuffle=True, seed=config.seed,
                                    epoch=epoch, start_batch=start_batch, bucket_lengths=buckets,
                                    group_by_length=config.group_by_length)


def train_phase(config, workdir: pathlib.Path, phase: Phase, spec: ModelSpec, task: glue.TaskSpec,
                train_arrays: dict, eval_sets: dict, teacher, mesh, writer: MetricWriter,
                previous: Optional[pathlib.Path]) -> dict:
    """Runs (or resumes, or skips when complete) one phase; returns its results entry."""
    phase_dir = workdir / phase.name
    final_dir, best_dir = phase_dir / "final", phase_dir / "best"
    results_file = phase_dir / "results.json"
    if storage.is_model_checkpoint(final_dir) and results_file.is_file():
        log.info("phase %s already complete in %s; skipping", phase.name, phase_dir)
        return json.loads(results_file.read_text())

    dtype = DTYPES[config.dtype]
    student = spec.build(dtype)
    steps_per_epoch = batching.num_batches(len(train_arrays["input_ids"]), config.batch_size,
                                           drop_remainder=True)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_arrays['input_ids'])} training examples cannot fill one batch "
                         f"of {config.batch_size}")
    total_steps = max(1, int(math.ceil(phase.epochs * steps_per_epoch)))
    schedule = optim.warmup_linear_schedule(phase.learning_rate, total_steps, config.warmup_proportion)
    quant_schedule = optim.warmup_linear_schedule(config.quant_learning_rate, total_steps,
                                                  config.warmup_proportion)
    tx = optim.bert_adam(schedule, quant_schedule, config.weight_decay, config.adam_eps,
                         clip_grad_norm=config.clip_grad_norm or None,
                         bias_correction=config.adam_bias_correction)

    first = next(_epoch_batches(train_arrays, config, 0, 0))
    example = {k: jnp.asarray(first[k][:1]) for k in MODEL_INPUTS}
    host_model = spec.without_axis().build(dtype)  # outside shard_map: no cross-device axis
    init_params = jax.jit(host_model.init)(jax.random.key(config.seed),
                                           *[example[k] for k in MODEL_INPUTS])["params"]
    abstract_state = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                                    init_params)

    ckpts = storage.TrainCheckpoints(phase_dir / "ckpt", max_to_keep=config.max_to_keep)
    meta = {"best": None, "best_step": None}
    latest = ckpts.latest_step()
    if latest is not None:
        state, meta = ckpts.restore(latest, abstract_state)
        log.info("phase %s: resuming from step %d in %s", phase.name, latest, ckpts.directory)
    else:
        params, source, has_quant = _load_init_params(config, init_params, previous)
        log.info("phase %s: student initialised from %s", phase.name, source)
        if spec.quant.act_method == "lsq" and spec.quant.quantizes_acts and not has_quant:
            params = calibrate_lsq_steps(host_model, params, *[jnp.asarray(first[k]) for k in MODEL_INPUTS])
        state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    state = replicate(jax.tree_util.tree_map(jnp.asarray, state), mesh)

    teacher_model, teacher_params = teacher if teacher is not None else (None, None)
    if phase.objective == "supervised":
        teacher_model, teacher_params = None, None
    elif teacher_model is None:
        raise ValueError(f"kd.mode {config.kd.mode!r} distils from a teacher: set --config.teacher=CKPT "
                         "(a model checkpoint, e.g. the fine-tuned full-precision model)")
    train_step = make_train_step(student, teacher_model, tx, schedule, mesh,
                                 objective=phase.objective, is_regression=task.is_regression,
                                 temperature=config.kd.temperature, attention=config.kd.attention,
                                 ignore_padding=config.kd.ignore_padding,
                                 teacher_dropout=config.kd.teacher_dropout)
    predict_step = make_predict_step(student, mesh)
    rng = jax.random.key(config.seed + 1)
    eval_every = config.eval_every_steps or steps_per_epoch
    main_metric = metrics.main_metric(task)
    evaluates = phase.objective != "intermediate"  # stage 1 trains no logits worth scoring

    step = int(jax.device_get(state.step))
    run_steps = 0
    pending: list = []  # device-side measurements not yet checked on the host
    last_saved = latest

    def drain() -> None:
        """Pulls pending measurements, stops on a non-finite loss, logs the averages."""
        if not pending:
            return
        fetched = jax.device_get(pending)
        pending.clear()
        for offset, m in fetched:
            if not np.isfinite(m["total"]):
                raise NonFiniteLossError(
                    f"phase {phase.name}: the loss is {m['total']} at step {offset}; stopped. The last "
                    f"good checkpoint is step {last_saved} in {ckpts.directory} (rerun to resume "
                    "from it, e.g. with a lower learning rate)")
        last_step, last = fetched[-1]
        mean = {k: float(np.mean([m[k] for _, m in fetched])) for k in last}
        writer.write(phase.name, last_step, mean)

    def save(at_step: int) -> None:
        nonlocal last_saved
        drain()  # never checkpoint parameters produced by a non-finite loss
        if at_step != last_saved:
            ckpts.save(at_step, state, meta)
            last_saved = at_step

    from tqdm.auto import tqdm
    bar = tqdm(total=total_steps, initial=step, desc=phase.name, unit="step",
               disable=jax.process_index() != 0 or not config.progress_bar)
    window_start, window_examples = time.perf_counter(), 0
    try:
        while step < total_steps:
            epoch, start = divmod(step, steps_per_epoch)
            for batch in _epoch_batches(train_arrays, config, epoch, start):
                if step >= total_steps:
                    break
                state, measured = train_step(state, teacher_params, shard_batch(_model_batch(batch), mesh), rng)
                pending.append((step, measured))
                step += 1
                run_steps += 1
                window_examples += config.batch_size
                bar.update(1)
                if step % config.log_every_steps == 0 or step == total_steps:
                    drain()
                    now = time.perf_counter()
                    rate = window_examples / max(now - window_start, 1e-9)
                    writer.write(phase.name, step, {"examples_per_second": rate})
                    bar.set_postfix(examples_per_s=f"{rate:.1f}")
                    window_start, window_examples = now, 0
                if evaluates and (step % eval_every == 0 or step == total_steps):
                    drain()
                    scores = evaluate(predict_step, state.params, task, eval_sets, config.eval_batch_size,
                                      mesh, tuple(config.bucket_lengths) or None)
                    writer.write(phase.name, step, {f"eval/{k}": v for k, v in scores.items()})
                    log.info("phase %s step %d: %s", phase.name, step, scores)
                    if meta["best"] is None or scores[main_metric] > meta["best"][main_metric]:
                        meta = {"best": scores, "best_step": step}
                        storage.save_model(best_dir, jax.device_get(state.params), spec,
                                           {"phase": phase.name, "step": step, "dev": scores,
                                            "task": task.name, "tokenizer": tokenizer_dir(config)})
                if step % config.checkpoint_every_steps == 0 and step < total_steps:
                    save(step)
                if config.stop_after_steps and run_steps >= config.stop_after_steps and step < total_steps:
                    save(step)
                    log.info("phase %s: stopping after %d steps of this run (stop_after_steps); "
                             "rerun to resume", phase.name, run_steps)
                    return {"interrupted": True, "step": step}
        drain()
    finally:
        bar.close()
    params = jax.device_get(state.params)
    final_scores = (evaluate(predict_step, state.params, task, eval_sets, config.eval_batch_size, mesh,
                             tuple(config.bucket_lengths) or None) if evaluates else {})
    save(step)
    storage.save_model(final_dir, params, spec, {"phase": phase.name, "step": step, "dev": final_scores,
                                                 "task": task.name, "tokenizer": tokenizer_dir(config)})
    ckpts.close()
    result = {"phase": phase.name, "objective": phase.objective, "steps": step,
              "final": final_scores, "best": meta["best"] or final_scores,
              "best_step": meta["best_step"] if meta["best"] else step,
              "final_checkpoint": str(final_dir.relative_to(workdir)),
              "best_checkpoint": str((best_dir if meta["best"] else final_dir).relative_to(workdir)),
              "main_metric": main_metric}
    if jax.process_index() == 0:
        results_file.write_text(json.dumps(result, indent=2))
    return result


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


def load_teacher(path: str, dtype) -> tuple[BertModel, Any, ModelSpec]:
    params, spec, _ = storage.load_model(path)
    return spec.build(dtype), params, spec


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
    """Runs every phase of ``config`` in ``workdir`` (resuming what is there) and returns the
    results: ``{"phases": [...], "best": ..., "final": ..., "best_checkpoint", "final_checkpoint"}``."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    task = glue.get_task(config.task)
    mesh = make_mesh()
    if config.batch_size % mesh.size or config.eval_batch_size % mesh.size:
        raise ValueError(f"batch_size {config.batch_size} and eval_batch_size {config.eval_batch_size} "
                         f"must be multiples of the {mesh.size} devices")
    spec = student_spec(config, _backbone(config), task)
    tokenizer = load_tokenizer(tokenizer_dir(config))
    train_arrays, eval_sets = load_data(config, task, tokenizer)

    teacher = None
    if config.teacher:
        teacher_model, teacher_params, teacher_spec = load_teacher(config.teacher, DTYPES[config.dtype])
        uses_attention = config.kd.attention and config.kd.mode in ("two_stage", "joint", "intermediate")
        if uses_attention and teacher_spec.config.num_heads != spec.config.num_heads:
            raise ValueError(
                f"attention-score distillation needs matching head counts: teacher {config.teacher} has "
                f"{teacher_spec.config.num_heads} heads, the student {spec.config.num_heads}; use a "
                "teacher of the student's width or --config.kd.attention=False")
        teacher = (teacher_model, replicate(teacher_params, mesh))

    writer = MetricWriter(workdir)
    results, previous = [], None
    try:
        for phase in phases_for(config):
            result = train_phase(config, workdir, phase, spec, task, train_arrays, eval_sets, teacher,
                                 mesh, writer, previous)
            if result.get("interrupted"):
                return {"interrupted": True, "phase": phase.name, "step": result["step"]}
            results.append(result)
            previous = workdir / result["final_checkpoint"]
    finally:
        writer.close()
    last = results[-1]
    summary = {"task": task.name, "phases": results, "best": last["best"], "final": last["final"],
               "best_checkpoint": last["best_checkpoint"], "final_checkpoint": last["final_checkpoint"],
               "main_metric": last["main_metric"], "spec": spec.to_dict()}
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(summary, indent=2))
    return summary

