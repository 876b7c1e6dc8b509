"""Bad input and faults: each is refused with one readable message before doing harm, or recovered
from, and nothing that was there is lost or overwritten."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from binarybert_jax import checkpoints, errors, model as M, resolve, train, tws, workdirs
from conftest import run_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SLICE = ROOT / "data" / "glue_slice"


def _config(tiny_pretrained, **overrides):
    return run_config(tiny_pretrained, SLICE, "sst-2", **{"log_every_steps": 1, **overrides})


def _steps(ckpt_dir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) if ckpt_dir.is_dir() else []


# ---- silent wrong results become errors -----------------------------------------------------

def test_nan_stop_names_a_checkpoint_worth_resuming_and_a_sane_rerun_finishes(tmp_path, tiny_pretrained):
    bad = _config(tiny_pretrained, **{"stage2.learning_rate": 1e6, "checkpoint_every_steps": 1,
                                      "max_to_keep": 10})
    with pytest.raises(train.NonFiniteLossError) as info:
        train.train_and_evaluate(bad, tmp_path)
    message, first_bad = str(info.value), info.value.step
    ckpt = tmp_path / "finetune" / "ckpt"
    kept = _steps(ckpt)
    # Every checkpoint left in place holds parameters whose loss was finite; the rest are set aside.
    assert all(s < first_bad for s in kept)
    if kept:
        assert f"the last good checkpoint is step {kept[-1]}" in message
    else:
        assert "no good checkpoint yet" in message
    # The rerun at a sane learning rate resumes from the good checkpoint (or starts over) and ends.
    done = train.train_and_evaluate(_config(tiny_pretrained, **{"checkpoint_every_steps": 1}), tmp_path)
    assert np.isfinite(done["final"]["accuracy"]) and done["final_checkpoint"] == "finetune/final"


def _fake_checkpoint(path, task, num_labels, tiny_pretrained):
    from conftest import tiny_config
    spec = M.ModelSpec(tiny_config(2), num_labels=num_labels)
    params = spec.build().init(jax.random.key(0), np.ones((1, 8), np.int32))["params"]
    checkpoints.save_model(path, params, spec, {"task": task, "tokenizer": str(tiny_pretrained)})
    return path


def test_a_teacher_of_another_task_is_refused(tmp_path, tiny_pretrained):
    teacher = _fake_checkpoint(tmp_path / "stsb_teacher", "sts-b", 1, tiny_pretrained)
    c = _config(tiny_pretrained, teacher=str(teacher), **{"kd.mode": "prediction"})
    with pytest.raises(errors.ConfigError, match=r"teacher .*stsb_teacher was trained on sts-b, but this run is sst-2"):
        train.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written before the check
    init = _fake_checkpoint(tmp_path / "mrpc_model", "mrpc", 2, tiny_pretrained)
    with pytest.raises(errors.ConfigError, match="init checkpoint .*mrpc_model was trained on mrpc"):
        resolve.init_spec(_config(tiny_pretrained, init_checkpoint=str(init)))


def test_a_workdir_is_not_resumed_with_another_task_or_model(tmp_path, tiny_pretrained):
    workdir = tmp_path / "run"
    done = train.train_and_evaluate(_config(tiny_pretrained), workdir)
    recorded = (workdir / "config.json").read_text()
    results = (workdir / "results.json").read_text()
    other = _config(tiny_pretrained, **{"student.quant.weight_bits": 2, "student.quant.embed_bits": 2})
    with pytest.raises(errors.ConfigError, match=r"another config \(student.quant.embed_bits: 32 -> 2; "
                                                 r"student.quant.weight_bits: 32 -> 2\)"):
        train.train_and_evaluate(other, workdir)
    assert (workdir / "config.json").read_text() == recorded
    assert (workdir / "results.json").read_text() == results
    # A change that does not mix runs (evaluation cadence, learning rate) is a normal rerun.
    again = train.train_and_evaluate(_config(tiny_pretrained, eval_every_examples=12), workdir)
    assert again["final"] == done["final"]


@pytest.mark.parametrize("key,value,allowed", [
    ("stage2.learning_rate", -1e-3, "> 0"),
    ("stage2.epochs", -1.0, "> 0"),
    ("train_limit", -5, "≥ 0"),
    ("warmup_proportion", 1.5, "in [0, 1]"),
    ("dtype", "float16", "one of ('float32', 'bfloat16')"),
    ("log_every_steps", 0, "≥ 1"),
    ("kd.mode", "distil", "one of"),
    ("student.quant.act_bits", 1, "act_bits must be in 2..16 or 32"),
    ("select_on", "test", "one of ('heldout', 'dev')"),
    ("heldout.fraction", 1.0, "in (0, 1)"),
    ("eval_every_examples", -1, "≥ 0"),
])
def test_values_out_of_range_are_refused_naming_the_key(tmp_path, tiny_pretrained, key, value, allowed):
    with pytest.raises(errors.ConfigError) as info:
        train.train_and_evaluate(_config(tiny_pretrained, **{key: value}), tmp_path / "run")
    named = "student.quant" if key.startswith("student.quant.") else key  # QuantConfig names the field
    assert f"--config.{named}" in str(info.value) and allowed in str(info.value)
    assert not (tmp_path / "run").exists()


def test_checkpoint_every_steps_zero_means_only_the_final_checkpoint(tmp_path, tiny_pretrained):
    done = train.train_and_evaluate(_config(tiny_pretrained, checkpoint_every_steps=0), tmp_path)
    assert _steps(tmp_path / "finetune" / "ckpt") == [done["phases"][0]["steps"]]


def test_split_refuses_to_write_into_its_source(tmp_path, tiny_pretrained):
    src = _fake_checkpoint(tmp_path / "ternary", "sst-2", 2, tiny_pretrained)
    before = sorted(p.name for p in src.rglob("*"))
    for out in (src, src / "inside", tmp_path):
        with pytest.raises(errors.UserError, match="overlaps the source checkpoint"):
            tws.split_checkpoint(src, out)
    assert sorted(p.name for p in src.rglob("*")) == before


# ---- errors a person can read --------------------------------------------------------------

def test_truncated_model_json_names_the_file(tmp_path, tiny_pretrained):
    ckpt = _fake_checkpoint(tmp_path / "m", "sst-2", 2, tiny_pretrained)
    (ckpt / "model.json").write_text((ckpt / "model.json").read_text()[:40])
    with pytest.raises(errors.UserError, match=r"m/model.json: not valid JSON .*cut short"):
        checkpoints.load_model(ckpt)


def test_a_workdir_that_is_a_file_and_an_empty_dev_file_are_refused(tmp_path, tiny_pretrained):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(errors.UserError, match="is a file, not a directory"):
        train.train_and_evaluate(_config(tiny_pretrained), afile)
    data = tmp_path / "glue" / "SST-2"
    data.mkdir(parents=True)
    (data / "train.tsv").write_text((SLICE / "SST-2" / "train.tsv").read_text())
    (data / "dev.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(errors.UserError, match="the dev split of sst-2 .* has no examples"):
        train.train_and_evaluate(_config(tiny_pretrained, data_dir=str(tmp_path / "glue")), tmp_path / "run")


def _main(args, **kwargs):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


def test_mains_print_one_line_for_bad_input(tmp_path):
    run = _main(["launch.train", "--config", "configs/finetune.py:task=sst-2,tiny", "--workdir",
                 str(tmp_path / "w"), "--config.stage2.epoch=1"])
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: --config.stage2.epoch=1: stage2 has no key 'epoch' (configs/finetune.py:task=sst-2,tiny); "
        "did you mean --config.stage2.epochs?"]
    run = _main(["launch.train", "--config", "configs/finetune.py:task=sst-2,tiny", "--workdir",
                 str(tmp_path / "w"), "--config.warmup_proportion=2.0"])
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "--config.warmup_proportion=2.0 (allowed: in [0, 1])" in run.stderr.strip().splitlines()[-1]


# ---- faults ---------------------------------------------------------------------------------

def test_a_corrupt_latest_checkpoint_is_set_aside_and_the_previous_one_used(tmp_path, tiny_pretrained):
    c = _config(tiny_pretrained, checkpoint_every_steps=2, stop_after_steps=4, max_to_keep=5)
    assert train.train_and_evaluate(c, tmp_path)["interrupted"]
    ckpt = tmp_path / "finetune" / "ckpt"
    assert _steps(ckpt) == [2, 4]
    # Truncate every array file of the latest step.
    for f in (ckpt / "4").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[:100])
    done = train.train_and_evaluate(_config(tiny_pretrained, checkpoint_every_steps=2, max_to_keep=5), tmp_path)
    assert np.isfinite(done["final"]["accuracy"])
    aside = list((tmp_path / "finetune" / "ckpt_unreadable").iterdir())
    assert [p.name.split("-")[0] for p in aside] == ["4"]  # kept aside, not deleted
    straight = train.train_and_evaluate(_config(tiny_pretrained, checkpoint_every_steps=2), tmp_path / "straight")
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                           checkpoints.load_model(tmp_path / "finetune" / "final")[0],
                           checkpoints.load_model(tmp_path / "straight" / "finetune" / "final")[0])
    assert done["final"] == pytest.approx(straight["final"])


def test_a_second_run_in_a_held_workdir_is_refused_naming_the_holder(tmp_path, tiny_pretrained):
    tmp_path.mkdir(exist_ok=True)
    with workdirs.WorkdirLock(tmp_path):
        with pytest.raises(errors.UserError, match=rf"in use by process {os.getpid()} on .* \(lock "):
            train.train_and_evaluate(_config(tiny_pretrained), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()
    # Released on exit: the same workdir is usable again.
    assert np.isfinite(train.train_and_evaluate(_config(tiny_pretrained), tmp_path)["final"]["accuracy"])


def test_sigint_saves_a_checkpoint_and_exits_130_then_the_rerun_resumes(tmp_path, tiny_pretrained):
    args = ["launch.train", "--config", "configs/finetune.py:task=sst-2,tiny", "--workdir", str(tmp_path),
            f"--config.pretrained={tiny_pretrained}", f"--config.data_dir={SLICE}",
            "--config.train_limit=2000", "--config.batch_size=4", "--config.max_seq_length=32",
            "--config.progress_bar=False", "--config.checkpoint_every_steps=0"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    for line in proc.stderr:  # held from the start of the phase: the first signal never loses work
        if "student initialised" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "interrupted (SIGINT) in phase finetune; a checkpoint was saved at step" in err
    assert "Traceback" not in err
    saved = _steps(tmp_path / "finetune" / "ckpt")
    assert len(saved) == 1 and saved[0] >= 1
    assert not (tmp_path / "finetune" / "final").exists()


def test_a_second_sigint_exits_at_once_even_where_keyboardinterrupt_would_be_caught():
    # A KeyboardInterrupt raised by the handler can be swallowed (a handler running inside XLA's gc
    # callback during a compile, an ``except`` in library code): the second Ctrl-C must not be.
    code = """if True:
        import os, signal, sys
        from binarybert_jax import train
        with train._StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.received == signal.SIGINT, stop.received  # the first one is only recorded
            try:
                os.kill(os.getpid(), signal.SIGINT)
                sum(range(1000))
            except KeyboardInterrupt:
                print("caught")
        print("survived")
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGINT, (proc.returncode, proc.stdout, proc.stderr)
    assert "caught" not in proc.stdout and "survived" not in proc.stdout


def test_an_sts_b_score_outside_0_to_5_names_the_row(tmp_path):
    from binarybert_jax.data import glue, tasks
    rows = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA man.\tA man.\t5.000",
            "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA dog.\tA cat.\t7.5"]
    path = tmp_path / "dev.tsv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"score '7.5' is outside sts-b's range \[0, 5\]"):
        glue.read_tsv(path, tasks.get_task("sts-b"), "dev")


def test_predict_refuses_a_model_of_another_task(tmp_path, tiny_pretrained):
    from launch import predict
    model = _fake_checkpoint(tmp_path / "mrpc_model", "mrpc", 2, tiny_pretrained)
    out = tmp_path / "SST-2.tsv"
    with pytest.raises(errors.UserError, match="mrpc_model is a mrpc model, not a sst-2 one: pass --task mrpc"):
        predict.main(["--model", str(model), "--task", "sst-2", "--input", str(SLICE / "SST-2" / "dev.tsv"),
                      "--out", str(out)])
    assert not out.exists()
