"""Launch scripts: the commands their dry runs print, and the train main's flag handling."""

import json
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
    assert "jax[cuda12]" in setup and "--no-deps -r requirements-backbone.txt" in setup
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


def _finished_run(path: pathlib.Path, seed: int, accuracy: float, f1: float, task: str = "mrpc"):
    import json
    path.mkdir()
    metrics = {"accuracy": accuracy, "f1": f1}
    (path / "results.json").write_text(json.dumps({"task": task, "final": metrics,
                                                   "best": {"accuracy": 1.0, "f1": 1.0}}))
    (path / "config.json").write_text(json.dumps({"seed": seed}))
    return str(path)


def test_summarize_prints_runs_mean_std_and_range(tmp_path, capsys):
    from launch import summarize
    runs = [_finished_run(tmp_path / f"s{s}", s, a, f)
            for s, a, f in ((1, 0.77, 0.85), (2, 0.79, 0.86), (3, 0.81, 0.87))]
    assert summarize.main(runs) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | seed | accuracy | f1 |"
    assert lines[2] == f"| {runs[0]} | 1 | 77.0 | 85.0 |"
    assert lines[-2] == "| mean ± std of 3 | | 79.0 ± 2.0 | 86.0 ± 1.0 |"
    assert lines[-1] == "| min – max | | 77.0 – 81.0 | 85.0 – 87.0 |"
    assert summarize.main(runs[:1] + ["--which", "best"]) == 0
    assert "| 100.0 | 100.0 |" in capsys.readouterr().out
    # selected: dev at the selected checkpoint (a run from before held-out selection: its best).
    assert summarize.main(runs[:1] + ["--which", "selected"]) == 0
    assert "| 100.0 | 100.0 |" in capsys.readouterr().out
    results = json.loads((tmp_path / "s1" / "results.json").read_text())
    results["dev_selected"] = {"accuracy": 0.5, "f1": 0.25}
    (tmp_path / "s1" / "results.json").write_text(json.dumps(results))
    assert summarize.main(runs[:1] + ["--which", "selected"]) == 0
    assert "| 50.0 | 25.0 |" in capsys.readouterr().out


def test_summarize_names_unfinished_runs_and_mixed_tasks(tmp_path, capsys):
    from launch import summarize
    done = _finished_run(tmp_path / "done", 1, 0.8, 0.8)
    (tmp_path / "running").mkdir()
    assert summarize.main([done, str(tmp_path / "running")]) == 2
    assert f"{tmp_path / 'running'}: no results.json" in capsys.readouterr().err
    other = _finished_run(tmp_path / "rte", 1, 0.6, 0.6, task="rte")
    assert summarize.main([done, other]) == 2
    assert "different tasks" in capsys.readouterr().err
