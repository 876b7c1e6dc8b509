"""Distillation-aware quantization training: the sharded update step and the training loop.

``train_and_evaluate(config, workdir)`` runs one training job: a full-precision fine-tuning
(``kd.mode = supervised``), or a quantized student distilled from a teacher checkpoint (two-stage,
joint, or a single stage), resuming from the workdir when it holds a checkpoint. What the config
resolves to (phases, the student's spec, its starting point, the teacher, the data) is
``resolve.py``'s; evaluation is ``evaluate.py``'s; placement on devices ``sharding.py``'s; every
file is written through ``workdirs.py`` or ``checkpoints.py``.

Workdir layout (local, or remote: ``gs://bucket/run``, see ``workdirs.as_path``)::

    config.json                  the resolved config of the run
    <phase>/ckpt/<step>/         periodic train-state checkpoints (Orbax, atomic, last k kept)
    <phase>/best/, <phase>/final model checkpoints (checkpoints.save_model); best: the selected one,
                                 by the task's main metric on the selection split
    metrics.jsonl, tb/           measurements (JSON lines and TensorBoard)
    results.json                 per phase: the protocol, the selection split's scores at the selected
                                 checkpoint, dev at the selected and at the final checkpoint,
                                 checkpoint paths, wall seconds
    provenance.json              written by the mains (launch/): commit, command, wall time per invocation

Checkpoint selection (``config.select_on``): on ``heldout``, periodic evaluation, the best
checkpoint and early stopping read a slice of the training set kept out of training
(``resolve.load_data``), and no dev file is read until a phase's training has ended; dev is then
scored once at the selected checkpoint and once at the final one. On ``dev``, the periodic
evaluations are dev's, and the selected checkpoint's dev score is its best one. Evaluations come
every ``config.eval_every_examples`` training examples (every epoch when 0), the same for every
phase and model whatever its batch size.

Progress: every ``config.log_every_steps`` steps, process 0 logs one line per phase with the steps
done of the total, the examples per second of the last period and the time left at that rate
(``progress_line``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from jax import lax
from jax.sharding import PartitionSpec as P

from binarybert_jax import (checkpoints, evaluate, kd, model as M, optim, phase_time, resolve, squad_metrics,
                            workdirs)
from binarybert_jax.data import batching, tasks
from binarybert_jax.errors import ConfigError
from binarybert_jax.model import BertModel, ModelSpec, calibrate_act_quantizers
from binarybert_jax.sharding import (DATA_AXIS, make_mesh, model_batch, model_inputs, replicate,
                                     shard_batch)
from binarybert_jax.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step and the last good checkpoint."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after saving a checkpoint at ``step``."""

    def __init__(self, signum: int, phase: str, step: int, workdir):
        name = signal.Signals(signum).name
        super().__init__(f"interrupted ({name}) in phase {phase}; a checkpoint was saved at step {step}: "
                         f"resume with the same command (workdir {workdir})")
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as shells report them


class _StopSignals:
    """While active, the first SIGINT/SIGTERM only sets ``received`` (the loop checkpoints and
    stops at the end of the step); a second SIGINT exits at once.

    "At once" is the default SIGINT action, delivered again: not a KeyboardInterrupt, which Python
    swallows when the handler happens to run inside a callback (e.g. XLA's gc callback while a
    compile is in flight) and which ``except`` clauses can catch. Nothing written is lost by it:
    checkpoints are committed by a rename, and the workdir lock is an ``flock`` the OS releases."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            return
        self.received = signum
        log.warning("%s received: saving a checkpoint after this step (Ctrl-C again to exit at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def lat_diagonal(state: TrainState) -> Optional[dict]:
    """LAT's diagonal for the parameters of ``state``: the optimizer's second moments of the
    kernels (``model.lat_diag_from_moments``). The train step quantizes with it, and so do the
    evaluations, the saved model checkpoints and whatever loads them, so that the model scored and
    exported is the one trained."""
    return M.lat_diag_from_moments(optim.second_moments(state.opt_state))


# ==============================================================================================
# The update step.
# ==============================================================================================
class PhaseInputs(NamedTuple):
    """What a train step reads of its phase at run time: the learning-rate schedule, and the weight
    of each of the step's objectives in the loss it minimises (stage 1 of two-stage distillation
    weighs ``intermediate`` 1 and ``prediction`` 0, stage 2 the reverse). As arrays, not constants
    of the program, they let every phase of a run share one compiled step."""

    schedule: optim.Schedule
    loss_weights: dict


def phase_inputs(schedule: optim.Schedule, objective: str, objectives: Sequence[str]) -> PhaseInputs:
    """The inputs of a phase that minimises ``objective``, one of the step's ``objectives``."""
    if objective not in objectives:
        raise ValueError(f"objective {objective!r} is not one of the train step's {tuple(objectives)}")
    return PhaseInputs(schedule, {o: jnp.float32(o == objective) for o in objectives})


def make_train_step(student: BertModel, teacher: Optional[BertModel], mesh, *, objectives: Sequence[str],
                    is_regression: bool,
                    optimizer: Callable[[optim.Schedule], optax.GradientTransformation] = optim.scheduled_bert_adam,
                    temperature: float = 1.0, attention: bool = True, ignore_padding: bool = False,
                    teacher_dropout: bool = False, span: bool = False) -> Callable:
    """Builds the jitted, sharded KD train step
    ``(state, teacher_variables, batch, rng, inputs: PhaseInputs) -> (state, metrics)``.

    The loss is Σ over ``objectives`` (``kd.kd_losses``) of the objective's weight in
    ``inputs.loss_weights`` times its total; the metrics hold every objective's terms. The update
    is ``optimizer(inputs.schedule)``'s (``optim.scheduled_bert_adam`` by default), so the state's
    optimizer part is ``optimizer(any schedule).init(params)``. Two-stage distillation passes both
    of its objectives and weighs one per phase: the two phases then run one compiled program, where
    a program per objective compiles every bucket's step twice. The objective weighed 0 is still
    computed: its activations are those stage 1 keeps anyway (the run's peak memory is unchanged),
    and its terms are finite wherever the model's outputs are.

    Written as a per-device program (``jax.shard_map``) with ``lax.pmean`` over ``data``: the
    gradient all-reduce and the cross-device reduction of activation ranges
    (``QuantConfig.act_axis_name``) are explicit collectives, exactly what pmap code did, and the
    same code runs on one CPU, several GPUs or a TPU slice. ``check_vma`` is off because the
    straight-through quantizers' custom VJPs return replicated cotangents for replicated inputs from
    device-varying data, which the pmean then makes identical, as pmap semantics assume.

    The state buffers are donated; the RNG is folded with the step and the device index; nothing
    inside syncs with the host.
    """
    objectives = tuple(objectives)
    lat = M.uses_lat_diag(student.quant_cfg)
    qkv = "dmd" in objectives  # Q, K, V before binarization: only direction matching reads them
    replicas = mesh.shape[DATA_AXIS]

    def kd_train_step(state: TrainState, teacher_variables, batch, rng, inputs: PhaseInputs):
        rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(DATA_AXIS))
        student_rng, teacher_rng = jax.random.split(rng)
        model_in = model_inputs(batch)
        teacher_out = None
        if teacher is not None:
            teacher_out = lax.stop_gradient(teacher.apply(
                teacher_variables, *model_in, deterministic=not teacher_dropout,
                rngs={"dropout": teacher_rng}, output_qkv=qkv))
        lat_diag = lat_diagonal(state) if lat else None

        def loss_fn(params):
            out = student.apply(M.model_variables(params, lat_diag), *model_in, deterministic=False,
                                rngs={"dropout": student_rng}, output_qkv=qkv)
            terms, total = {}, 0.0
            for objective in objectives:
                objective_terms = kd.kd_losses(out, teacher_out, batch, objective=objective,
                                               is_regression=is_regression, temperature=temperature,
                                               attention=attention, ignore_padding=ignore_padding,
                                               span=span)
                total = total + inputs.loss_weights[objective] * objective_terms.pop("total")
                terms.update(objective_terms)
            return total, dict(terms, total=total)

        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if replicas > 1:  # on one device the mean is the identity, yet XLA:CPU copies the 17M
            # gradients through an all-reduce (10 ms of a 1.1 s step, profiled)
            grads = lax.pmean(grads, DATA_AXIS)
            terms = lax.pmean(terms, DATA_AXIS)
        updates, opt_state = optimizer(inputs.schedule).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        measurements = dict(terms, grad_norm=optax.tree.norm(grads),
                            update_norm=optax.tree.norm(updates),
                            param_norm=optax.tree.norm(params),
                            learning_rate=inputs.schedule.learning_rate(state.step))
        return TrainState(state.step + 1, params, opt_state), measurements

    sharded = jax.shard_map(kd_train_step, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS), P(), P()),
                            out_specs=(P(), P()), check_vma=False)
    return jax.jit(sharded, donate_argnums=(0,))


def _epoch_batches(arrays, config, epoch, start_batch) -> Iterator[dict]:
    buckets = tuple(config.bucket_lengths) or None
    if config.group_by_length and buckets is None:
        raise ConfigError("--config.group_by_length=True needs --config.bucket_lengths: grouping "
                         "similar lengths only saves work when batches are cut to a bucket")
    return batching.iterate_batches(arrays, config.batch_size, shuffle=True, seed=config.seed,
                                    epoch=epoch, start_batch=start_batch, bucket_lengths=buckets,
                                    group_by_length=config.group_by_length)


# ==============================================================================================
# The loop.
# ==============================================================================================
def _check_finite(fetched: list, phase: str) -> None:
    """Raises NonFiniteLossError at the first non-finite loss of ``fetched`` ``[(step, measurements)]``
    (``step`` counts the updates before it: the loss of the parameters checkpointed at ``step``)."""
    for step, m in fetched:
        if not np.isfinite(m["total"]):
            raise NonFiniteLossError(f"phase {phase}: the loss is {m['total']} at step {step}", step)


def _stop_on_nonfinite(e: NonFiniteLossError, ckpts: checkpoints.TrainCheckpoints) -> NonFiniteLossError:
    """Sets aside every checkpoint whose parameters gave (or followed) the non-finite loss, so a rerun
    resumes from the last good one, and returns the error naming it."""
    poisoned = [s for s in ckpts.all_steps() if s >= e.step]
    for s in poisoned:
        ckpts.set_aside(s, "nonfinite")
    good = ckpts.latest_step()
    aside = (f" Checkpoints {poisoned} hold those parameters; they were moved to "
             f"{ckpts.directory.name}_nonfinite/." if poisoned else "")
    if good is None:
        where = ("no good checkpoint yet: a rerun starts this phase again from its initial parameters "
                 "(e.g. with a lower learning rate).")
    else:
        where = (f"the last good checkpoint is step {good} in {ckpts.directory}: a rerun resumes from it "
                 "(e.g. with a lower learning rate).")
    return NonFiniteLossError(f"{e}; stopped, nothing saved from it.{aside} {where}", e.step)


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``m:ss`` under an hour)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(phase: str, step: int, total_steps: int, examples_per_s: float,
                  batch_size: int, later_steps: int = 0, label: str = "") -> str:
    """A phase's progress in one line: steps done of the total, the rate of the last log period
    (evaluations and checkpoints in it included, so the time left counts them too) and the time
    the remaining steps take at that rate. ``later_steps``: the steps of the run's phases after
    this one, whose time at the same rate the line adds (``in the run``, or in ``label``'s
    first word: a pipeline names its stage, e.g. ``stage 4/9 ternary``); their compilation is not
    in it."""
    def time_for(steps: int) -> float:
        return (steps * batch_size / examples_per_s if examples_per_s > 0
                else (0.0 if steps <= 0 else math.inf))

    line = (f"phase {phase}: step {step}/{total_steps} ({100 * step / total_steps:.0f}%), "
            f"{examples_per_s:.1f} examples/s, {format_duration(time_for(total_steps - step))} left")
    if label or later_steps:
        whole = (label.split() or ["run"])[0]
        line += f" in the phase, {format_duration(time_for(total_steps - step + later_steps))} in the {whole}"
    return f"{label}, {line}" if label else line


def _log_mean(writer: workdirs.MetricWriter, phase: str, fetched: list) -> None:
    last_step, last = fetched[-1]
    writer.write(phase, last_step, {k: float(np.mean([m[k] for _, m in fetched])) for k in last})


def _schedule(config, phase: resolve.Phase, total_steps: int) -> optim.Schedule:
    return optim.Schedule.warmup_linear(phase.learning_rate, config.quant_learning_rate, total_steps,
                                        config.warmup_proportion)


def optimizer_for(config) -> Callable[[optim.Schedule], optax.GradientTransformation]:
    """The run's optimizer on a phase's schedule: BertAdam with the config's decay, ε, clipping."""
    return functools.partial(optim.scheduled_bert_adam, weight_decay=config.weight_decay,
                             eps=config.adam_eps, clip_grad_norm=config.clip_grad_norm or None,
                             bias_correction=config.adam_bias_correction)


def _check_teacher(config, teacher) -> None:
    if teacher is None:
        raise ConfigError(f"kd.mode {config.kd.mode!r} distils from a teacher: set --config.teacher=CKPT "
                          "(a model checkpoint, e.g. the fine-tuned full-precision model)")


@dataclasses.dataclass(frozen=True)
class RunPrograms:
    """What every phase of a run computes with, built once so the phases share the compiled
    programs: the train step over all the run's objectives (``make_train_step``), the predictor of
    the model's exact forward, and the teacher's variables (None when supervised)."""

    host_student: BertModel  # outside shard_map: no cross-device axis (initialisation, calibration)
    exact_spec: ModelSpec
    objectives: tuple
    optimizer: Callable[[optim.Schedule], optax.GradientTransformation]
    train_step: Callable
    predict_step: Callable
    teacher_variables: Any

    @classmethod
    def build(cls, config, task: tasks.TaskSpec, spec: ModelSpec, phases: Sequence[resolve.Phase],
              teacher, mesh) -> "RunPrograms":
        objectives = tuple(dict.fromkeys(p.objective for p in phases))
        teacher_model, teacher_variables = teacher if teacher is not None else (None, None)
        if objectives == ("supervised",):
            teacher_model, teacher_variables = None, None
        else:
            _check_teacher(config, teacher_model)
        student = resolve.build_student(spec, config)
        optimizer = optimizer_for(config)
        train_step = make_train_step(student, teacher_model, mesh, objectives=objectives,
                                     is_regression=task.is_regression, optimizer=optimizer,
                                     temperature=config.kd.temperature, attention=config.kd.attention,
                                     ignore_padding=config.kd.ignore_padding,
                                     teacher_dropout=config.kd.teacher_dropout, span=task.head == "span")
        # Evaluation and the saved checkpoints compute the model's exact forward, whatever forward
        # training takes (``QuantConfig.split_forward``).
        exact_spec = spec.for_evaluation()
        predict_step = evaluate.make_predict_step(
            student if exact_spec is spec else resolve.build_student(exact_spec, config), mesh)
        return cls(resolve.build_student(spec.without_axis(), config), exact_spec, objectives,
                   optimizer, train_step, predict_step, teacher_variables)


def train_phase(config, workdir: epath.Path, phase: resolve.Phase, spec: ModelSpec, task: tasks.TaskSpec,
                train_arrays: dict, eval_sets: dict, programs: RunPrograms, mesh, writer: workdirs.MetricWriter,
                previous: Optional[epath.Path], dev_sets: Optional[Callable[[], dict]] = None,
                later_steps: int = 0, progress_label: str = "") -> dict:
    """Runs (or resumes, or skips when complete) one phase; returns its results entry.

    ``eval_sets`` are the splits checkpoints are selected on (the held-out slice, or dev);
    ``dev_sets`` returns the dev splits, called only after training has ended (None: ``eval_sets``
    are dev). ``later_steps`` and ``progress_label`` go into the progress lines
    (``progress_line``).

    SIGINT and SIGTERM are held from here on: the step in flight finishes, a checkpoint is saved
    and ``Interrupted`` raised (a second SIGINT exits at once).
    """
    with _StopSignals() as signals:
        return _train_phase(config, workdir, phase, spec, task, train_arrays, eval_sets, programs, mesh,
                            writer, previous, signals, dev_sets, later_steps, progress_label)


def _best_on_disk(best_dir: epath.Path, meta: dict, main_metric: str) -> dict:
    """A resumed phase's best so far: the train checkpoint's record of it, unless the best model
    on disk scores higher. That one was saved after the checkpoint the run resumes from, and a
    replay that is not bit for bit the same (GPU reductions) may not save it again; taking it keeps
    ``results.json``'s best the model that ``best/`` holds."""
    if not checkpoints.is_model_checkpoint(best_dir):
        return meta
    info = checkpoints.read_model_meta(best_dir).get("info", {})
    dev, step = info.get("selection") or info.get("dev") or {}, info.get("step")
    if step is None or main_metric not in dev:
        return meta
    if meta["best"] is None or dev[main_metric] > meta["best"][main_metric]:
        log.info("best model on disk (step %s, %s %.4f) is newer than the checkpoint's record; "
                 "keeping it as the best so far", step, main_metric, dev[main_metric])
        return {**meta, "best": dev, "best_step": step}
    return meta


def eval_due(step: int, total_steps: int, steps_per_epoch: int, batch_size: int,
              every_examples: int) -> bool:
    """Whether the loop evaluates after update ``step`` (1-based): when the examples seen cross a
    multiple of ``every_examples`` (every epoch when 0), and at the last step."""
    if step >= total_steps:
        return True
    if every_examples:
        return step * batch_size // every_examples > (step - 1) * batch_size // every_examples
    return step % steps_per_epoch == 0


def _null_threshold(predict_step, params, selection_set, batch_size: int, mesh, buckets,
                    lat_diag) -> float:
    """SQuAD v2.0: the null-score threshold that maximises F1 on the held-out articles for these
    parameters (the official script's best threshold), so dev's answers use one chosen without dev."""
    never_null = dataclasses.replace(selection_set, answer_options={**selection_set.answer_options,
                                                            "null_threshold": float("inf")})
    answers, null_diffs = evaluate.squad_answers(predict_step, params, never_null, batch_size, mesh,
                                                 buckets, lat_diag)
    scores = squad_metrics.evaluate(selection_set.version, selection_set.data, answers, null_diffs)
    return float(scores["best_f1_thresh"])


def _score_dev(config, task, predict_step, params, lat_diag, eval_sets: dict, dev: dict, mesh,
               buckets) -> tuple[dict, dict]:
    """Dev's scores of one checkpoint, and what was chosen on the held-out slice to get them
    (``null_threshold`` for SQuAD v2.0)."""
    chosen = {}
    if task.head == "span" and getattr(task, "version", "") == "2.0" and "heldout" in eval_sets:
        threshold = _null_threshold(predict_step, params, eval_sets["heldout"], config.eval_batch_size,
                                    mesh, buckets, lat_diag)
        chosen["null_threshold"] = threshold
        dev = {k: dataclasses.replace(v, answer_options={**v.answer_options, "null_threshold": threshold})
               for k, v in dev.items()}
    return evaluate.evaluate(predict_step, params, task, dev, config.eval_batch_size, mesh, buckets,
                             lat_diag), chosen


def phase_steps(phase: resolve.Phase, steps_per_epoch: int) -> int:
    """The updates of a phase: its epochs of ``steps_per_epoch`` (fractions round up), at least one."""
    return max(1, int(math.ceil(phase.epochs * steps_per_epoch)))


def _steps_per_epoch(train_arrays: dict, batch_size: int) -> int:
    return batching.num_batches(len(train_arrays["input_ids"]), batch_size, drop_remainder=True)


def _train_phase(config, workdir, phase, spec, task, train_arrays, eval_sets, programs, mesh, writer,
                 previous, signals: _StopSignals, dev_sets=None, later_steps: int = 0,
                 progress_label: str = "") -> dict:
    phase_dir = workdir / phase.name
    final_dir, best_dir = phase_dir / "final", phase_dir / "best"
    results_file = phase_dir / "results.json"
    if checkpoints.is_model_checkpoint(final_dir) and results_file.is_file():
        log.info("phase %s already complete in %s; skipping", phase.name, phase_dir)
        return workdirs.read_json(results_file)

    clock = phase_time.PhaseClock()  # this run's wall time of the phase, and how it splits

    # ---- Optimizer and schedule ------------------------------------------------------------
    steps_per_epoch = _steps_per_epoch(train_arrays, config.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(train_arrays['input_ids'])} training examples cannot fill one batch "
                         f"of {config.batch_size}")
    total_steps = phase_steps(phase, steps_per_epoch)
    inputs = phase_inputs(_schedule(config, phase, total_steps), phase.objective, programs.objectives)
    tx = programs.optimizer(inputs.schedule)
    # Terms of the step's other objectives (weighed 0 in this phase) are left out of the log.
    unlogged = {name for o in programs.objectives if o != phase.objective for name in kd.TERMS.get(o, ())}

    # ---- Student and its initial state -----------------------------------------------------
    first = next(_epoch_batches(train_arrays, config, 0, 0))
    example = [jnp.asarray(x[:1]) for x in model_inputs(first)]
    host_model = programs.host_student

    def initialize():
        return jax.jit(host_model.init)(jax.random.key(config.seed), *example)["params"]

    # Shapes only: the initialiser is compiled and run only for a start that lacks some parameters.
    param_shapes = jax.eval_shape(initialize)
    abstract_state = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                                    param_shapes)

    # ---- Restore or initialise -------------------------------------------------------------
    ckpts = checkpoints.TrainCheckpoints(phase_dir / "ckpt", max_to_keep=config.max_to_keep)
    restored = ckpts.restore_latest(abstract_state)
    latest = restored[0] if restored else None
    if restored is not None:
        _, state, meta = restored
        # Wall time of the work the checkpoint holds (what a killed run did after it is redone).
        elapsed_before = float(meta.pop("elapsed_s", 0.0))
        log.info("phase %s: resuming from step %d in %s", phase.name, latest, ckpts.directory)
    else:
        meta = {"best": None, "best_step": None}
        elapsed_before = 0.0
        params, source, has_quant = resolve.load_init_params(config, param_shapes, previous, initialize)
        log.info("phase %s: student initialised from %s", phase.name, source)
        if spec.quant.calibrates_acts and not has_quant:
            params = calibrate_act_quantizers(host_model, params, *[jnp.asarray(x) for x in model_inputs(first)])
        state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    state = replicate(jax.tree_util.tree_map(jnp.asarray, state), mesh)

    teacher_variables, train_step = programs.teacher_variables, programs.train_step
    exact_spec, predict_step = programs.exact_spec, programs.predict_step
    lat = M.uses_lat_diag(spec.quant)
    buckets = tuple(config.bucket_lengths) or None
    rng = jax.random.key(config.seed + 1)
    main_metric = task.main_metric
    selected_on = "heldout" if dev_sets is not None else "dev"
    eval_prefix = "heldout" if dev_sets is not None else "eval"  # metrics.jsonl keys of the evaluations
    evaluates = phase.objective != "intermediate"  # stage 1 trains no logits worth scoring
    record = {"phase": phase.name, "task": task.name, "tokenizer": resolve.tokenizer_dir(config)}
    if latest is not None:
        meta = _best_on_disk(best_dir, meta, main_metric)

    # ---- Loop ------------------------------------------------------------------------------
    step = int(jax.device_get(state.step))
    run_steps = 0
    pending: list = []  # device-side measurements not yet checked on the host (no sync per step)
    last_saved = latest
    last_eval: Optional[tuple[int, dict]] = None  # (step, scores) of the latest evaluation
    stopped_early = False   # stop_after_steps or a signal: the phase resumes on a rerun
    # early_stop_evals evaluations without a better selection score: the phase is done (also when
    # a run that stopped so was killed before writing its results, and is rerun).
    early_stop = bool(config.early_stop_evals and step < total_steps
                      and meta.get("evals_since_best", 0) >= config.early_stop_evals)
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm
    bar = tqdm(total=total_steps, initial=step, desc=phase.name, unit="step",
               disable=not workdirs.is_writer() or not config.progress_bar)
    # The package's log lines (the progress line among them) printed above the bar, not into it,
    # where the mains gave the package a console handler.
    logging_beside_bar, ours = contextlib.ExitStack(), logging.getLogger("binarybert_jax")
    if not bar.disable and ours.handlers:
        logging_beside_bar.enter_context(logging_redirect_tqdm([ours]))
    window_start, window_examples = time.perf_counter(), 0
    clock.attribute_elapsed("setup")
    try:
        while step < total_steps and not stopped_early and not early_stop:
            epoch, start = divmod(step, steps_per_epoch)
            for batch in _epoch_batches(train_arrays, config, epoch, start):
                if step >= total_steps:
                    break
                state, measured = train_step(state, teacher_variables, shard_batch(model_batch(batch), mesh),
                                             rng, inputs)
                pending.append((step, {k: v for k, v in measured.items() if k not in unlogged}))
                step += 1
                run_steps += 1
                window_examples += config.batch_size
                bar.update(1)

                # ---- Log ----
                if step % config.log_every_steps == 0 or step == total_steps:
                    fetched, pending = jax.device_get(pending), []
                    _check_finite(fetched, phase.name)
                    _log_mean(writer, phase.name, fetched)
                    now = time.perf_counter()
                    rate = window_examples / max(now - window_start, 1e-9)
                    writer.write(phase.name, step, {"examples_per_second": rate})
                    bar.set_postfix(examples_per_s=f"{rate:.1f}")
                    if workdirs.is_writer():
                        log.info(progress_line(phase.name, step, total_steps, rate, config.batch_size,
                                               later_steps, progress_label))
                    window_start, window_examples = now, 0

                # ---- Evaluate ----
                if evaluates and eval_due(step, total_steps, steps_per_epoch, config.batch_size,
                                          config.eval_every_examples):
                    fetched, pending = jax.device_get(pending), []  # never score a non-finite model
                    _check_finite(fetched, phase.name)
                    if fetched:
                        _log_mean(writer, phase.name, fetched)
                    lat_diag = lat_diagonal(state) if lat else None
                    with clock.section("evaluation"):
                        scores = evaluate.evaluate(predict_step, state.params, task, eval_sets,
                                                   config.eval_batch_size, mesh, buckets, lat_diag)
                    last_eval = (step, scores)
                    writer.write(phase.name, step, {f"{eval_prefix}/{k}": v for k, v in scores.items()})
                    log.info("phase %s step %d (%s): %s", phase.name, step, selected_on, scores)
                    if meta["best"] is None or scores[main_metric] > meta["best"][main_metric]:
                        meta = {"best": scores, "best_step": step, "evals_since_best": 0}
                        info = {**record, "step": step, "selected_on": selected_on, "selection": scores}
                        if dev_sets is None:
                            info["dev"] = scores
                        with clock.section("checkpoints"):
                            checkpoints.save_model(best_dir, jax.device_get(state.params), exact_spec, info,
                                                   lat_diag=jax.device_get(lat_diag))
                    else:
                        meta = {**meta, "evals_since_best": meta.get("evals_since_best", 0) + 1}
                        early_stop = bool(config.early_stop_evals and step < total_steps and
                                          meta["evals_since_best"] >= config.early_stop_evals)
                        if early_stop:
                            log.info("phase %s: %d evaluations on %s without a better %s; stopping "
                                     "at step %d (early_stop_evals)", phase.name,
                                     meta["evals_since_best"], selected_on, main_metric, step)

                # ---- Checkpoint ----
                stopped_early = bool(config.stop_after_steps and run_steps >= config.stop_after_steps
                                     and step < total_steps) or signals.received is not None
                periodic = config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
                if (periodic and step < total_steps) or stopped_early:
                    # Never checkpoint parameters produced by a non-finite loss.
                    fetched, pending = jax.device_get(pending), []
                    _check_finite(fetched, phase.name)
                    if fetched:
                        _log_mean(writer, phase.name, fetched)
                    elapsed = elapsed_before + clock.elapsed()
                    with clock.section("checkpoints"):
                        ckpts.save(step, state, {**meta, "elapsed_s": elapsed})
                    last_saved = step
                if signals.received is not None:
                    raise Interrupted(signals.received, phase.name, step, workdir)
                if stopped_early:
                    log.info("phase %s: stopping after %d steps of this run (stop_after_steps); "
                             "rerun to resume", phase.name, run_steps)
                    break
                if early_stop:
                    break
        fetched = jax.device_get(pending)
        _check_finite(fetched, phase.name)
        if fetched:
            _log_mean(writer, phase.name, fetched)

        # ---- Final evaluation and checkpoints ----------------------------------------------
        if stopped_early:
            return {"interrupted": True, "step": step}
        lat_diag = lat_diagonal(state) if lat else None
        if not evaluates:
            final_scores = {}
        elif last_eval is not None and last_eval[0] == step:
            final_scores = last_eval[1]  # the loop scored these very parameters at its last step
        else:
            with clock.section("evaluation"):
                final_scores = evaluate.evaluate(predict_step, state.params, task, eval_sets,
                                                 config.eval_batch_size, mesh, buckets, lat_diag)
        if step != last_saved:
            with clock.section("checkpoints"):
                ckpts.save(step, state, {**meta, "elapsed_s": elapsed_before + clock.elapsed()})
        # ---- Dev: read only now that training has ended ------------------------------------
        dev_selected, dev_final, chosen = meta["best"] or final_scores, final_scores, {}
        if evaluates and dev_sets is not None:
            with clock.section("evaluation"):
                dev = dev_sets()
                dev_final, chosen_final = _score_dev(config, task, predict_step, state.params, lat_diag,
                                                     eval_sets, dev, mesh, buckets)
            chosen = {"final": chosen_final} if chosen_final else {}
            dev_selected, chosen_best = dev_final, chosen_final
            if meta["best"] is not None:
                if meta["best_step"] != step:
                    with clock.section("checkpoints"):
                        best_params, _, _ = checkpoints.load_model(best_dir)
                        best_lat = checkpoints.load_lat_diag(best_dir) if lat else None
                    with clock.section("evaluation"):
                        dev_selected, chosen_best = _score_dev(
                            config, task, predict_step, replicate(best_params, mesh),
                            None if best_lat is None else replicate(best_lat, mesh), eval_sets, dev, mesh,
                            buckets)
                # The selected model carries its dev score, as the final one does.
                with clock.section("checkpoints"):
                    checkpoints.update_model_info(best_dir, {"dev": dev_selected})
            if chosen_best:
                chosen["selected"] = chosen_best
            log.info("phase %s: dev at the selected checkpoint (step %s) %s; at the final one %s",
                     phase.name, meta["best_step"] or step, dev_selected, dev_final)
        final_info = {**record, "step": step, "selected_on": selected_on, "selection": final_scores}
        if evaluates:
            final_info["dev"] = dev_final
        with clock.section("checkpoints"):
            checkpoints.save_model(final_dir, jax.device_get(state.params), exact_spec, final_info,
                                   lat_diag=jax.device_get(lat_diag))
        wall_seconds = elapsed_before + clock.elapsed()
        # This run's part of the wall time, split; a resumed phase's earlier runs as one sum.
        time_seconds = clock.seconds()
        if elapsed_before:
            time_seconds["earlier_runs"] = round(elapsed_before, 1)
        log.info("phase %s: %s in this run (%s)", phase.name,
                 format_duration(clock.elapsed()), phase_time.describe(time_seconds))
    except NonFiniteLossError as e:
        raise _stop_on_nonfinite(e, ckpts) from None
    finally:
        logging_beside_bar.close()
        bar.close()
        ckpts.close()
    # ``best`` and ``final`` are dev's scores at the selected and at the final checkpoint (on
    # ``select_on=dev`` the selected one is dev's best); ``selection`` is the selection split's.
    result = {"phase": phase.name, "objective": phase.objective, "steps": step,
              "protocol": selected_on,
              "selection": {"split": selected_on, "metric": main_metric,
                            "step": meta["best_step"] if meta["best"] else step,
                            "scores": meta["best"] or final_scores, "final_scores": final_scores,
                            **({"chosen": chosen} if chosen else {}),
                            **({"stopped_early_at": step} if early_stop else {})},
              "dev_selected": dev_selected, "dev_final": dev_final,
              "final": dev_final, "best": dev_selected,
              "best_step": meta["best_step"] if meta["best"] else step,
              "final_checkpoint": str(final_dir.relative_to(workdir)),
              "best_checkpoint": str((best_dir if meta["best"] else final_dir).relative_to(workdir)),
              "main_metric": main_metric, "wall_seconds": round(wall_seconds, 1),
              "time_seconds": time_seconds}
    workdirs.write_json(results_file, result)
    return result


def train_and_evaluate(config, workdir: str | os.PathLike, progress_label: str = "") -> dict:
    """Runs every phase of ``config`` in ``workdir`` (resuming what is there) and returns the
    results: ``{"phases": [...], "best": ..., "final": ..., "best_checkpoint", "final_checkpoint"}``,
    or ``{"interrupted": True, "phase", "step"}`` after ``config.stop_after_steps``.
    ``progress_label`` begins every progress line (a pipeline's stage, ``progress_line``)."""
    # ---- Config and workdir: everything checkable is checked before anything is written ---
    resolve.validate(config)
    if config.kd.mode != "supervised":
        _check_teacher(config, config.teacher or None)
    workdirs.check_workdir(workdir, workdirs.TRAINING_RUN)
    workdir = workdirs.as_path(workdir)
    workdirs.check_output("--workdir", workdir, {f"--config.{key}": config.get(key) for key in
                                                 ("teacher", "init_checkpoint", "pretrained", "data_dir")})
    task = tasks.get_task(config.task)
    mesh = make_mesh()
    if config.batch_size % mesh.size or config.eval_batch_size % mesh.size:
        raise ConfigError(f"batch_size {config.batch_size} and eval_batch_size {config.eval_batch_size} "
                          f"must be multiples of the {mesh.size} devices")
    spec = resolve.student_spec(config, task)
    resolve.check_lengths(config, task, spec)
    if (workdir / "config.json").is_file():
        resolve.check_resume(workdirs.read_json(workdir / "config.json"), config, workdir)
    workdirs.claim_workdir(workdir, workdirs.TRAINING_RUN)
    workdirs.sync(f"workdir:{workdir}")
    with workdirs.WorkdirLock(workdir):
        workdirs.write_text(workdir / "config.json", config.to_json_best_effort(indent=2, sort_keys=True))
        return _run_phases(config, workdir, task, mesh, spec, progress_label)


def _run_phases(config, workdir: epath.Path, task: tasks.TaskSpec, mesh, spec: ModelSpec,
                progress_label: str = "") -> dict:
    # ---- Data ------------------------------------------------------------------------------
    tokenizer = load_tokenizer(resolve.tokenizer_dir(config))
    train_arrays, eval_sets = resolve.load_data(config, task, tokenizer)
    dev_sets = None
    if resolve.heldout_slice(config) is not None:
        loaded: dict = {}

        def dev_sets() -> dict:  # read once, by the first phase that ends with an evaluation
            if not loaded:
                loaded.update(resolve.load_dev(config, task, tokenizer))
            return loaded

    # ---- Teacher (frozen, loaded once, never checkpointed) ---------------------------------
    teacher = resolve.load_teacher(config, spec)
    if teacher is not None:
        teacher = (teacher[0], replicate(teacher[1], mesh))

    # ---- Phases ----------------------------------------------------------------------------
    phases = resolve.phases_for(config)
    programs = RunPrograms.build(config, task, spec, phases, teacher, mesh)
    writer = workdirs.MetricWriter(workdir)
    results, previous = [], None
    steps = [phase_steps(p, _steps_per_epoch(train_arrays, config.batch_size)) for p in phases]
    try:
        for i, phase in enumerate(phases):
            result = train_phase(config, workdir, phase, spec, task, train_arrays, eval_sets, programs,
                                 mesh, writer, previous, dev_sets, sum(steps[i + 1:]), progress_label)
            if result.get("interrupted"):
                return {"interrupted": True, "phase": phase.name, "step": result["step"]}
            results.append(result)
            previous = workdir / result["final_checkpoint"]
    finally:
        writer.close()
    last = results[-1]
    summary = {"task": task.name, "phases": results, "best": last["best"], "final": last["final"],
               "protocol": last.get("protocol", "dev"), "selection": last.get("selection"),
               "dev_selected": last.get("dev_selected", last["best"]),
               "dev_final": last.get("dev_final", last["final"]),
               "wall_seconds": round(sum(r.get("wall_seconds", 0.0) for r in results), 1),
               "time_seconds": phase_time.add_up(r.get("time_seconds", {}) for r in results),
               "best_checkpoint": last["best_checkpoint"], "final_checkpoint": last["final_checkpoint"],
               "main_metric": last["main_metric"], "spec": spec.to_dict()}
    workdirs.write_json(workdir / "results.json", summary)
    return summary
