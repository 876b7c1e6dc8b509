"""The sharded KD step and the training loop, on a tiny real-format checkpoint and real GLUE slices."""

import dataclasses
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import (checkpoints, evaluate, export, hf_import, inference, kd, model as M, optim,
                            resolve, sharding, train, trees)
from binarybert_jax.data import glue, tasks
from binarybert_jax.tokenizer import load_tokenizer
from configs import common

from conftest import run_config, tiny_config

TINY = tiny_config(2)


def _config(tiny_pretrained, glue_dir, **overrides):
    return run_config(tiny_pretrained, glue_dir, "mrpc",
                      **{"checkpoint_every_steps": 100, "log_every_steps": 2, **overrides})


def test_hf_writer_roundtrip(tiny_pretrained):
    config, flat = hf_import.load_hf_checkpoint(tiny_pretrained)
    assert config == dataclasses.replace(TINY, hidden_dropout=0.0, attention_dropout=0.0)
    assert flat["encoder/layer_1/ffn/intermediate/kernel"].shape == (32, 64)


# ---- the step: 2 devices == 1 device ---------------------------------------------------------

ONE_LAYER = dataclasses.replace(TINY, vocab_size=1000, num_layers=1).with_width(0.5)


def _step_outputs(num_devices, quant_cfg, objective, objectives=None):
    assert jax.device_count() >= 2, "conftest sets two host devices"
    mesh = sharding.make_mesh(num_devices)
    student = M.BertModel(ONE_LAYER, quant_cfg, num_labels=2)
    teacher = M.BertModel(ONE_LAYER, num_labels=2)
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(1, 1000, (4, 16)).astype(np.int32),
             "token_type_ids": np.zeros((4, 16), np.int32),
             "attention_mask": (np.arange(16)[None] < np.array([[16], [12], [9], [14]])).astype(np.int32),
             "labels": np.array([0, 1, 1, 0], np.int32), "example_mask": np.ones(4, np.float32)}
    host = M.ModelSpec(student.config, quant_cfg).without_axis().build()
    # Initialised under jit: one program each, where eager init compiles every op on its own.
    s_params = jax.jit(host.init)(jax.random.key(1), batch["input_ids"][:1])["params"]
    t_params = jax.jit(teacher.init)(jax.random.key(2), batch["input_ids"][:1])["params"]
    schedule = optim.Schedule.warmup_linear(1e-3, 1e-3, 10)
    tx = optim.scheduled_bert_adam(schedule)
    state = sharding.replicate(train.TrainState(jnp.zeros((), jnp.int32), s_params, tx.init(s_params)), mesh)
    objectives = objectives or (objective,)
    step = train.make_train_step(student, teacher, mesh, objectives=objectives, is_regression=False)
    teacher_variables = sharding.replicate({"params": t_params}, mesh)
    inputs = train.phase_inputs(schedule, objective, objectives)
    for _ in range(2):
        state, measured = step(state, teacher_variables, sharding.shard_batch(batch, mesh), jax.random.key(3),
                               inputs)
    return jax.device_get(state.params), jax.device_get(measured)


@pytest.mark.parametrize("act_method,objective", [("uniform", "joint"), ("lsq", "intermediate")])
def test_two_device_step_equals_one_device(act_method, objective):
    q = M.QuantConfig(2, 2, 8 if act_method == "uniform" else 4, act_method=act_method,
                      act_axis_name="data")
    p1, m1 = _step_outputs(1, q, objective)
    p2, m2 = _step_outputs(2, q, objective)
    for k in m1:
        np.testing.assert_allclose(m2[k], m1[k], rtol=2e-4, atol=1e-6, err_msg=k)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), p2, p1)


@pytest.mark.parametrize("objective", kd.TWO_STAGE)
def test_the_two_stage_step_in_one_stage_trains_as_that_stage_alone(objective):
    """The one program both stages run (weights 1 and 0 on their objectives) updates the model as a
    step of the stage's objective alone, and measures that objective's terms the same."""
    q = M.QuantConfig(2, 2, 8)
    p_alone, m_alone = _step_outputs(1, q, objective)
    p_both, m_both = _step_outputs(1, q, objective, kd.TWO_STAGE)
    assert set(m_both) == set(m_alone) | {t for o in kd.TWO_STAGE if o != objective for t in kd.TERMS[o]}
    for k in m_alone:
        np.testing.assert_allclose(m_both[k], m_alone[k], rtol=1e-5, atol=1e-7, err_msg=k)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p_both, p_alone)


def test_lat_step_uses_second_moment():
    """The step's LAT weights take Adam's second moment ν as their diagonal: the loss the step
    measures (computed before its update) is the model's loss with ``lat_diag`` = ν, not the
    identity-diagonal one."""
    q = M.QuantConfig(2, 2, 8, "lat", "lat")
    student = M.BertModel(ONE_LAYER, q, num_labels=2)
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(1, 1000, (4, 16)).astype(np.int32),
             "token_type_ids": np.zeros((4, 16), np.int32),
             "attention_mask": (np.arange(16)[None] < np.array([[16], [12], [9], [14]])).astype(np.int32),
             "labels": np.array([0, 1, 1, 0], np.int32), "example_mask": np.ones(4, np.float32)}
    # On the host: the step donates its state, and the reference losses below reuse the parameters.
    params = jax.device_get(jax.jit(student.init)(jax.random.key(1), batch["input_ids"][:1])["params"])
    schedule = optim.Schedule.warmup_linear(1e-3, 1e-3, 10)
    tx = optim.scheduled_bert_adam(schedule)
    # A ν that varies within each kernel (spread over four decades): a uniform ν scales D = √ν by a
    # constant, which leaves LAT's values unchanged, so only a non-uniform one shows the wiring.
    nu = {k: (10.0 ** rng.uniform(-6, -2, v.shape)).astype(np.float32)
          for k, v in trees.flatten(params).items()}

    def with_nu(state):
        if not isinstance(state, optim.BertAdamState):
            return state
        return state._replace(nu=jax.tree_util.tree_map_with_path(
            lambda path, _: jnp.asarray(nu["/".join(str(p.key) for p in path)]), state.nu))

    opt_state = jax.tree_util.tree_map(with_nu, tx.init(params),
                                       is_leaf=lambda s: isinstance(s, optim.BertAdamState))
    mesh = sharding.make_mesh(1)
    step = train.make_train_step(student, None, mesh, objectives=("supervised",), is_regression=False)
    state = sharding.replicate(train.TrainState(jnp.zeros((), jnp.int32), params, opt_state), mesh)
    _, measured = step(state, sharding.replicate({}, mesh), sharding.shard_batch(batch, mesh), jax.random.key(3),
                       train.phase_inputs(schedule, "supervised", ("supervised",)))
    measured_loss = float(jax.device_get(measured["total"]))

    @jax.jit  # eagerly, LAT's refit loop would compile anew for every kernel
    def loss(variables):  # dropout is off in ONE_LAYER, so the deterministic forward is the step's
        out = student.apply(variables, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        return kd.kd_losses(out, None, batch, objective="supervised", is_regression=False)["total"]

    with_diag = float(loss({"params": params, "lat_diag": trees.unflatten(nu)}))
    identity = float(loss({"params": params}))
    gap = abs(with_diag - identity)
    assert gap > 1e-4 * abs(identity), (with_diag, identity)  # the diagonal matters for this ν
    assert abs(measured_loss - with_diag) < 0.01 * gap, (measured_loss, with_diag, identity)


# ---- the loop ---------------------------------------------------------------------------------

def _init(spec):
    """Random parameters of ``spec``'s model, initialised under jit: one program, not one per op."""
    return jax.jit(spec.build().init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]


def _final_params(workdir, phase):
    return checkpoints.load_model(pathlib.Path(workdir) / phase / "final")[0]


def test_interrupted_run_resumes_to_the_same_parameters(tmp_path, tiny_pretrained, glue_dir):
    straight = train.train_and_evaluate(_config(tiny_pretrained, glue_dir), tmp_path / "straight")
    assert straight["final_checkpoint"] == "finetune/final" and 0 <= straight["final"]["accuracy"] <= 1
    cfg = _config(tiny_pretrained, glue_dir, stop_after_steps=3)
    first = train.train_and_evaluate(cfg, tmp_path / "resumed")
    assert first == {"interrupted": True, "phase": "finetune", "step": 3}
    resumed = train.train_and_evaluate(_config(tiny_pretrained, glue_dir), tmp_path / "resumed")
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                           _final_params(tmp_path / "resumed", "finetune"),
                           _final_params(tmp_path / "straight", "finetune"))
    assert resumed["final"] == pytest.approx(straight["final"])
    # The resumed phase's wall time: this run's split plus the interrupted run's work as one sum.
    split, wall = resumed["phases"][0]["time_seconds"], resumed["phases"][0]["wall_seconds"]
    assert split["earlier_runs"] > 0 and "earlier_runs" not in straight["phases"][0]["time_seconds"]
    assert sum(split.values()) == pytest.approx(wall, abs=0.5)
    lines = [json.loads(l) for l in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert any("label_loss" in l and "grad_norm" in l and "learning_rate" in l for l in lines)
    assert any("heldout/accuracy" in l for l in lines)
    # A rerun of a finished run is a no-op that reports the same results.
    again = train.train_and_evaluate(_config(tiny_pretrained, glue_dir), tmp_path / "straight")
    assert again["final"] == straight["final"]


def test_a_resumed_phase_keeps_the_best_model_saved_after_its_checkpoint(tmp_path):
    # A best saved after the train checkpoint a run resumes from may not be saved again by a
    # replay that is not bit for bit the same; results.json must still describe what best/ holds.
    spec = M.ModelSpec(TINY, num_labels=2)
    params = _init(spec)
    best = tmp_path / "stage2" / "best"
    recorded = {"best": {"accuracy": 0.7, "f1": 0.8}, "best_step": 50}
    assert train._best_on_disk(best, recorded, "accuracy") == recorded  # nothing on disk
    checkpoints.save_model(best, params, spec, {"step": 120, "dev": {"accuracy": 0.75, "f1": 0.7}})
    assert train._best_on_disk(best, recorded, "accuracy") == {
        "best": {"accuracy": 0.75, "f1": 0.7}, "best_step": 120}  # the main metric decides
    assert train._best_on_disk(best, {"best": None, "best_step": None}, "accuracy")["best_step"] == 120
    higher = {"best": {"accuracy": 0.8, "f1": 0.8}, "best_step": 50}
    assert train._best_on_disk(best, higher, "accuracy") == higher
    assert train._best_on_disk(best, recorded, "pearson") == recorded  # scored on another metric


def test_two_stage_kd_from_teacher_with_lsq_student(tmp_path, tiny_pretrained, glue_dir, caplog):
    teacher = train.train_and_evaluate(_config(tiny_pretrained, glue_dir, **{"stage2.epochs": 0.5}),
                                       tmp_path / "teacher")
    cfg = _config(tiny_pretrained, glue_dir, **{"kd.mode": "two_stage", "stage1.epochs": 0.5,
                                                 "stage2.epochs": 0.5, "student.hidden_act": "relu"})
    cfg.teacher = str(tmp_path / "teacher" / teacher["best_checkpoint"])
    cfg.student.quant = common.quant_config(2, 2, 4, act_method="lsq")
    # The bfloat16 options: the backward of the quantized products, and the teacher's forward.
    cfg.matmul_precision, cfg.teacher_dtype = "bfloat16", "bfloat16"
    caplog.set_level(logging.WARNING, logger="jax")
    with jax.log_compiles(True):
        result = train.train_and_evaluate(cfg, tmp_path / "student")
    assert 0 <= result["final"]["accuracy"] <= 1
    assert [p["phase"] for p in result["phases"]] == ["stage1", "stage2"]
    # Both stages run one program: the train step compiles once per batch shape, in stage 1.
    compiled = [r.getMessage().split(" with ")[1] for r in caplog.records
                if r.getMessage().startswith("Compiling jit(kd_train_step)")]
    assert compiled and len(compiled) == len(set(compiled)), compiled
    # Each stage logs its own objective's terms.
    logged = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    for phase, own, other in (("stage1", "hidden_loss", "prediction_loss"),
                              ("stage2", "prediction_loss", "hidden_loss")):
        losses = [m for m in logged if m["phase"] == phase and "total" in m]
        assert losses and all(own in m and other not in m for m in losses), phase
    params, spec, info = checkpoints.load_model(tmp_path / "student" / result["final_checkpoint"])
    assert spec.quant.act_method == "lsq" and spec.config.hidden_act == "relu"
    steps = [v for k, v in hf_import.flatten(params).items() if k.endswith("_step")]
    assert steps and all(float(s) != 1.0 for s in steps)  # calibrated from data, then trained


def test_percentile_clips_are_calibrated_before_training(tmp_path, tiny_pretrained, glue_dir):
    cfg = _config(tiny_pretrained, glue_dir, **{"stage2.epochs": 0.25, "quant_learning_rate": 0.0})
    cfg.student.quant = common.quant_config(2, 2, 8, clip_percentile=99.9)
    result = train.train_and_evaluate(cfg, tmp_path / "run")
    params, spec, _ = checkpoints.load_model(tmp_path / "run" / result["final_checkpoint"])
    assert spec.quant.clip_percentile == 99.9
    clips = {k: np.asarray(v) for k, v in hf_import.flatten(params).items() if k.endswith("_clip")}
    query = clips["encoder/layer_0/attention/query/input_clip"]
    # From the first batch's embedding output (no learning rate on clips: as calibrated).
    assert query[0] == -query[1] and 0 < query[1] != 2.5
    assert all(not np.allclose(c, [-2.5, 2.5]) for c in clips.values())


def test_lat_model_is_scored_saved_predicted_and_exported_as_trained(tmp_path, tiny_pretrained, glue_dir):
    """LAT quantizes with the optimizer's second moments in training; the scores of the loop, the
    saved checkpoint, the predictor and the packed file must all be that model's, not the
    identity-diagonal one's. STS-B: its correlations move with any change of a logit."""
    cfg = _config(tiny_pretrained, glue_dir, task="sts-b", **{"stage2.epochs": 1.0})
    cfg.student.quant = common.quant_config(2, 32, 32, weight_method="lat")
    result = train.train_and_evaluate(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / result["final_checkpoint"]
    params, spec, info = checkpoints.load_model(ckpt)
    diag = checkpoints.load_lat_diag(ckpt)

    # The saved diagonal is the final train state's second moments, kernels only.
    phase = resolve.phases_for(cfg)[-1]
    tx = train.optimizer_for(cfg)(train._schedule(cfg, phase, 1))
    abstract = jax.eval_shape(lambda p: train.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), params)
    _, state, _ = checkpoints.TrainCheckpoints(tmp_path / "run" / phase.name / "ckpt").restore_latest(abstract)
    trained = hf_import.flatten(train.lat_diagonal(state))
    saved = hf_import.flatten(diag)
    assert sorted(saved) == sorted(trained) and all(k.endswith("/kernel") for k in saved)
    for k in saved:
        np.testing.assert_array_equal(saved[k], trained[k], err_msg=k)

    # Scored again from the checkpoint on the loop's path: the loop's final scores exactly.
    task = tasks.get_task("sts-b")
    dev = resolve.load_dev(cfg, task, load_tokenizer(resolve.tokenizer_dir(cfg)))
    mesh = sharding.make_mesh()
    rescored = evaluate.evaluate_model(spec, params, task, dev, cfg.eval_batch_size, mesh, None, diag)
    assert rescored == result["final"] == info["dev"]
    identity = evaluate.evaluate_model(spec, params, task, dev, cfg.eval_batch_size, mesh)
    assert identity["pearson"] != rescored["pearson"]  # the test would see a dropped diagonal

    # The predictor of the checkpoint and of its packed export (launch.export) give that model.
    from launch import export as export_main
    assert export_main.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "lat.safetensors")]) == 0
    examples = glue.read_tsv(glue_dir / "STS-B" / "dev.tsv", task, "dev").examples[:cfg.eval_limit]
    tokenizer = load_tokenizer(resolve.tokenizer_dir(cfg))
    from_ckpt = inference.predict_examples(inference.load_predictor(ckpt), tokenizer, examples, 32, 8)
    packed = inference.predict_examples(inference.load_predictor(tmp_path / "lat.safetensors"),
                                        tokenizer, examples, 32, 8)
    np.testing.assert_array_equal(packed, from_ckpt)
    # Against the loop's own forward (two devices, four rows each, where the predictor runs eight
    # rows on one): float rounding apart, while the identity diagonal is a different model.
    step = evaluate.make_predict_step(spec.build(), mesh)
    replicated = sharding.replicate(params, mesh)
    loop = evaluate.predict(step, replicated, dev["dev"], cfg.eval_batch_size, mesh,
                            lat_diag=sharding.replicate(diag, mesh))
    unscaled = evaluate.predict(step, replicated, dev["dev"], cfg.eval_batch_size, mesh)
    np.testing.assert_allclose(from_ckpt, loop, rtol=0, atol=1e-6)
    assert np.abs(unscaled - loop).max() > 1e-3
    # As a teacher it teaches as trained: its variables carry the diagonal, which moves its logits.
    teacher_cfg = _config(tiny_pretrained, glue_dir, task="sts-b")
    teacher_cfg.teacher = str(ckpt)
    teacher_model, variables, _ = resolve.load_teacher(teacher_cfg, spec)
    taught = hf_import.flatten(variables[M.LAT_DIAG])
    assert sorted(taught) == sorted(saved) and all(np.array_equal(taught[k], saved[k]) for k in saved)
    ids = jnp.asarray(np.random.default_rng(0).integers(1000, 3000, (2, 8)), jnp.int32)
    apply = jax.jit(teacher_model.apply)
    assert np.abs(apply(variables, ids)["logits"] - apply({"params": params}, ids)["logits"]).max() > 1e-4
    plain, _, _ = export.load_packed(export.export_packed(params, spec, tmp_path / "plain.safetensors").path)
    assert not np.array_equal(hf_import.flatten(plain)["encoder/layer_0/ffn/intermediate/kernel"],
                              hf_import.flatten(export.load_packed(tmp_path / "lat.safetensors")[0])[
                                  "encoder/layer_0/ffn/intermediate/kernel"])


def test_head_mismatch_for_attention_distillation_is_clear(tmp_path, tiny_pretrained, glue_dir):
    spec = M.ModelSpec(TINY)
    params = _init(spec)
    checkpoints.save_model(tmp_path / "teacher", params, spec)
    cfg = _config(tiny_pretrained, glue_dir, **{"kd.mode": "two_stage"})
    cfg.teacher = str(tmp_path / "teacher")
    half = M.ModelSpec(TINY.with_width(0.5))
    checkpoints.save_model(tmp_path / "half", _init(half), half)
    cfg.init_checkpoint = str(tmp_path / "half")
    with pytest.raises(ValueError, match="matching head counts: teacher .* has 4 heads, the student 2"):
        train.train_and_evaluate(cfg, tmp_path / "run")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_pretrained, glue_dir):
    cfg = _config(tiny_pretrained, glue_dir, task="sts-b", checkpoint_every_steps=2, stop_after_steps=2)
    train.train_and_evaluate(cfg, tmp_path / "run")
    ckpt_dir = tmp_path / "run" / "finetune" / "ckpt"
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.isdigit()) == ["2"]
    # Resume with an absurd learning rate: the parameters overflow and the loss turns NaN/Inf.
    cfg = _config(tiny_pretrained, glue_dir, task="sts-b", checkpoint_every_steps=2,
                  **{"stage2.learning_rate": 1e30})
    with pytest.raises(train.NonFiniteLossError, match=r"last good checkpoint is step 2"):
        train.train_and_evaluate(cfg, tmp_path / "run")
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.isdigit()) == ["2"]
    assert not (tmp_path / "run" / "finetune" / "final").exists()


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown config argument 'tsk'"):
        common.parse_arg("tsk=mrpc", task="mrpc")
    with pytest.raises(ValueError, match="not a int"):
        common.parse_arg("act_bits=four", act_bits=8)
    c = common.base_config("mrpc")
    c.kd.mode = "distill"
    with pytest.raises(ValueError, match="allowed"):
        resolve.phases_for(c)
    with pytest.raises(ValueError, match="Unknown task 'squad'; expected one of cola.*squad1, squad2"):
        common.base_config("squad")
    c = common.base_config("mrpc")
    c.matmul_precision = "fp16"
    with pytest.raises(ValueError, match="matmul_precision.*float32.*bfloat16"):
        resolve.validate(c)
    c.matmul_precision, c.teacher_dtype = "float32", "half"
    with pytest.raises(ValueError, match="teacher_dtype"):
        resolve.validate(c)


def test_distillation_without_a_teacher_is_refused_before_anything_is_written(tmp_path, tiny_pretrained,
                                                                              glue_dir):
    cfg = _config(tiny_pretrained, glue_dir, **{"kd.mode": "two_stage"})
    cfg.teacher = ""
    with pytest.raises(ValueError, match="distils from a teacher: set --config.teacher"):
        train.train_and_evaluate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_buckets_cut_training_batches_without_regrouping_them_unless_asked():
    rng = np.random.default_rng(0)
    n, width = 96, 64
    lengths = rng.integers(3, width + 1, n).astype(np.int32)
    mask = (np.arange(width) < lengths[:, None]).astype(np.int32)
    arrays = {"input_ids": (np.arange(n, dtype=np.int32)[:, None] + 1000) * mask,
              "token_type_ids": np.zeros((n, width), np.int32), "attention_mask": mask,
              "labels": rng.integers(0, 2, n).astype(np.int32), "lengths": lengths}
    c = common.base_config("mrpc")
    c.batch_size = 8

    def epoch(**overrides):
        c.update(overrides)
        return list(train._epoch_batches(arrays, c, epoch=1, start_batch=0))

    padded = epoch(bucket_lengths=(), group_by_length=False)
    bucketed = epoch(bucket_lengths=(16, 32, 48, 64))
    # Bucketing alone keeps the i.i.d. batches of the padded run, each cut to its longest row.
    for p, b in zip(padded, bucketed, strict=True):
        np.testing.assert_array_equal(p["example_index"], b["example_index"])
        assert b["input_ids"].shape[1] == min(x for x in (16, 32, 48, 64) if x >= b["lengths"].max())
    grouped = epoch(group_by_length=True)
    assert sum(b["input_ids"].size for b in grouped) < sum(b["input_ids"].size for b in bucketed)
    assert any(not np.array_equal(g["example_index"], p["example_index"])
               for g, p in zip(grouped, padded))
    with pytest.raises(ValueError, match="group_by_length=True needs --config.bucket_lengths"):
        epoch(bucket_lengths=(), group_by_length=True)


def test_progress_line_reads_steps_rate_and_time_left():
    assert train.progress_line("stage1", 20, 114, 32.0, 32) == \
        "phase stage1: step 20/114 (18%), 32.0 examples/s, 1:34 left"
    assert train.progress_line("stage2", 100, 10100, 2.5, 16).endswith("2.5 examples/s, 17:46:40 left")
    assert train.progress_line("stage2", 7, 7, 0.0, 4).endswith("(100%), 0.0 examples/s, 0:00 left")
    # The phases after this one count at the same rate; a pipeline's stage names itself first.
    assert train.progress_line("stage1", 20, 56, 32.0, 32, later_steps=56, label="stage 4/9 ternary") == \
        "stage 4/9 ternary, phase stage1: step 20/56 (36%), 32.0 examples/s, 0:36 left in the phase, 1:32 in the stage"
    assert train.progress_line("stage1", 56, 56, 64.0, 32, later_steps=60).endswith(
        "0:00 left in the phase, 0:30 in the run")


def test_the_initialiser_runs_only_for_parameters_the_start_lacks(tmp_path, tiny_pretrained, glue_dir):
    c = _config(tiny_pretrained, glue_dir)
    model = resolve.student_spec(c, tasks.get_task("mrpc")).without_axis().build()
    ids = np.ones((1, 8), np.int32)
    calls = []

    def initialize():
        calls.append(1)
        return jax.jit(model.init)(jax.random.key(3), ids)["params"]

    shapes = jax.eval_shape(initialize)
    calls.clear()  # tracing for the shapes ran nothing
    # The backbone has no classifier: the fresh one comes from the initialiser, run once.
    params, _, _ = resolve.load_init_params(c, shapes, None, initialize)
    assert len(calls) == 1
    fresh = initialize()
    np.testing.assert_array_equal(params["classifier"]["kernel"], fresh["classifier"]["kernel"])
    # A checkpoint with every parameter: nothing initialised, every value the checkpoint's.
    spec = resolve.student_spec(c, tasks.get_task("mrpc"))
    saved = jax.tree_util.tree_map(lambda x: np.asarray(x) + 1.0, params)
    checkpoints.save_model(tmp_path / "complete", saved, spec, {"task": "mrpc"})
    loaded, _, _ = resolve.load_init_params(c, shapes, tmp_path / "complete", initialize)
    assert len(calls) == 2
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(saved)):
        np.testing.assert_array_equal(a, b)


def test_split_student_trains_on_summed_halves_and_is_scored_and_saved_exact(tmp_path, tiny_pretrained,
                                                                            glue_dir, caplog):
    """A split W1A8 student trained with ``split_forward=summed``: the run records it, its saved
    checkpoints (what evaluation computed, what export and prediction load) hold the exact
    forward, and the loop prints one progress line per log period, process 0 only."""
    import logging
    import re
    from binarybert_jax import tws

    ternary = M.ModelSpec(TINY, M.QuantConfig(2, 2, 8), num_labels=2)
    params = jax.jit(ternary.build().init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    checkpoints.save_model(tmp_path / "ternary", params, ternary)
    tws.split_checkpoint(tmp_path / "ternary", tmp_path / "split")
    cfg = _config(tiny_pretrained, glue_dir, **{"stage2.epochs": 1.0})
    cfg.init_checkpoint = str(tmp_path / "split")
    cfg.student.quant = common.quant_config(1, 1, 8, "bwn", "bwn", split_forward="summed")
    ours = logging.getLogger("binarybert_jax")
    ours.addHandler(caplog.handler)  # also where a main has stopped it propagating to the root
    try:
        with caplog.at_level(logging.INFO, logger="binarybert_jax"):
            result = train.train_and_evaluate(cfg, tmp_path / "run")
    finally:
        ours.removeHandler(caplog.handler)
    assert result["spec"]["quant"]["split"] and result["spec"]["quant"]["split_forward"] == "summed"
    for checkpoint in (result["final_checkpoint"], result["best_checkpoint"]):
        _, spec, _ = checkpoints.load_model(tmp_path / "run" / checkpoint)
        assert spec.quant.split and spec.quant.split_forward == "exact"
    assert 0 <= result["final"]["accuracy"] <= 1

    pattern = re.compile(r"phase finetune: step (\d+)/(\d+) \((\d+)%\), (\d+\.\d) examples/s, "
                         r"(\d+:\d\d(:\d\d)?) left$")
    records = list({id(r): r for r in caplog.records}.values())  # one record reaches it twice when propagated
    lines = [r.getMessage() for r in records if r.getMessage().startswith("phase finetune: step")]
    matches = [pattern.match(line) for line in lines]
    assert lines and all(matches), lines
    total = int(matches[0].group(2))
    steps = [int(m.group(1)) for m in matches]
    assert steps == sorted(set(list(range(2, total + 1, 2)) + [total]))  # log_every_steps=2, and the last
    assert all(float(m.group(4)) > 0 for m in matches)
    assert matches[-1].group(3) == "100" and matches[-1].group(5) == "0:00"
