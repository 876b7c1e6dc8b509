"""Two processes on one machine, as two hosts of a slice: JAX's distributed runtime over 127.0.0.1
with the CPU backend's gloo collectives, one device each, through the real ``launch/train.py``.

A two-process run must compute what a one-process run over two devices computes (same global batch,
same seed): the gradient all-reduce and the evaluation's gather are the only things that differ, in
float reduction order. Tolerance: 1e-5 absolute on parameters after 8 steps (they match to ~1e-7).
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from binarybert_jax import checkpoints
from conftest import FAST_COMPILE

ROOT = pathlib.Path(__file__).resolve().parents[1]
SLICE = ROOT / "data" / "glue_slice"
TIMEOUT = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(workdir, tiny_pretrained, *extra):
    return ["-m", "launch.train", "--config", "configs/finetune.py:task=sst-2,tiny", "--workdir", str(workdir),
            f"--config.pretrained={tiny_pretrained}", f"--config.data_dir={SLICE}",
            "--config.train_limit=32", "--config.eval_limit=24", "--config.batch_size=4",
            "--config.eval_batch_size=8", "--config.max_seq_length=32", "--config.stage2.learning_rate=1e-3",
            "--config.progress_bar=False", "--config.log_every_steps=1", *extra]


def _env(devices: int) -> dict:
    # The test run's compilation cache (conftest.py) serves the processes too: the pair and
    # the rerun compile nothing the first run compiled.
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
                JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")


def _start_pair(workdir, tiny_pretrained, *extra) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen([sys.executable, *_train_args(workdir, tiny_pretrained, *extra),
                              f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                              f"--process_id={i}"], cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]


def _wait(procs) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, stdout, stderr))
    return out


def _final(workdir):
    return checkpoints.load_model(pathlib.Path(workdir) / "finetune" / "final")[0]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_pretrained):
    workdir = tmp_path_factory.mktemp("one_process")
    run = subprocess.run([sys.executable, *_train_args(workdir, tiny_pretrained)], cwd=ROOT, env=_env(2),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir


def _gloo_available() -> bool:
    return hasattr(jax.config, "jax_cpu_collectives_implementation")


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _gloo_available(), reason="this jaxlib has no cross-process CPU "
                                 "collectives (jax_cpu_collectives_implementation)")]


def test_two_processes_train_as_one(tmp_path, tiny_pretrained, one_process):
    results = _wait(_start_pair(tmp_path, tiny_pretrained))
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    # Process 0 alone writes records and reports; process 1 prints no results (gloo itself prints a
    # connection line on each).
    stdout0, stdout1 = results[0][1], results[1][1]
    assert json.loads(stdout0[stdout0.index("{"):])["final_checkpoint"] == "finetune/final"
    assert "{" not in stdout1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(l)["step"] for l in lines if "total" in json.loads(l)]
    # One writer, no duplicate lines; 32 examples less the 3 held out make 7 steps of 4.
    assert steps == sorted(set(steps)) == list(range(7))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5),
                           _final(tmp_path), _final(one_process))
    # Evaluation counts each held-out and dev example once across processes: the same metrics as
    # one process.
    two = json.loads((tmp_path / "results.json").read_text())
    one = json.loads((one_process / "results.json").read_text())
    assert two["selection"]["scores"] == pytest.approx(one["selection"]["scores"], abs=1e-6)
    assert two["dev_final"] == pytest.approx(one["dev_final"], abs=1e-6)
    assert two["dev_selected"] == pytest.approx(one["dev_selected"], abs=1e-6)


def test_two_processes_killed_mid_run_resume_to_the_same_parameters(tmp_path, tiny_pretrained, one_process):
    procs = _start_pair(tmp_path, tiny_pretrained, "--config.checkpoint_every_steps=2")
    ckpt = tmp_path / "finetune" / "ckpt"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not (ckpt / "4").is_dir():
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=TIMEOUT)
    assert not (tmp_path / "finetune" / "final").exists(), "the run ended before it could be killed"
    results = _wait(_start_pair(tmp_path, tiny_pretrained, "--config.checkpoint_every_steps=2"))
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    assert "resuming from step" in results[0][2]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5),
                           _final(tmp_path), _final(one_process))


@pytest.mark.skipif(os.environ.get("BINARYBERT_SLOW_TESTS") != "1",
                    reason="the tiny pipeline on two processes takes minutes on 2 cores; set "
                           "BINARYBERT_SLOW_TESTS=1 to run it")
def test_the_pipeline_on_two_processes_equals_one(tmp_path, tiny_pretrained_1layer):
    common = ["-m", "launch.pipeline", "--config", "configs/pipeline.py:task=sst-2,tiny,bwn=False",
              f"--config.pretrained={tiny_pretrained_1layer}", "--config.progress_bar=False"]
    one = subprocess.run([sys.executable, *common, "--workdir", str(tmp_path / "one")], cwd=ROOT, env=_env(2),
                         capture_output=True, text=True, timeout=3 * TIMEOUT)
    assert one.returncode == 0, one.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, *common, "--workdir", str(tmp_path / "two"),
                               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                               f"--process_id={i}"], cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for rc, _, err in _wait(procs):
        assert rc == 0, err[-3000:]
    assert (tmp_path / "two" / "results.md").read_text() == (tmp_path / "one" / "results.md").read_text()
    for stage in ("teacher/finetune", "half/joint", "ternary/stage2", "tws/stage2", "adaptive/stage2"):
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5),
                               checkpoints.load_model(tmp_path / "two" / stage / "final")[0],
                               checkpoints.load_model(tmp_path / "one" / stage / "final")[0])
