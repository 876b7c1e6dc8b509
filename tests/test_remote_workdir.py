"""Workdirs given as strings and as remote URIs (``gs://``): every workdir path goes through
``workdirs.as_path`` (``etils.epath``), so a URI is never mangled and every write works there.

The remote scheme is faked without network by etils' own test hook (``epath.testing.mock_epath``):
every ``epath`` call sees ``gs://bucket/...`` and the bytes land in a local directory. Orbax writes
its arrays to ``gs://`` through TensorStore's native GCS driver, which that hook cannot reach, so
Orbax is exercised on local workdirs (the training runs here and in test_train.py, test_faults.py)
and everything else the workdir holds (records, reports, figures, model.json, metrics, provenance,
the lock, set-aside checkpoints) on the fake ``gs://``.
"""

import contextlib
import json
import logging
import os
import pathlib
import time

import numpy as np
import pytest
from etils import epath

from binarybert_jax import checkpoints, model as M, pipeline, train, workdirs
from binarybert_jax.data import tasks
from binarybert_jax.errors import UserError
from conftest import run_config, tiny_config
from launch import common, record

SLICE = pathlib.Path(__file__).resolve().parents[1] / "data" / "glue_slice"


@contextlib.contextmanager
def fake_gcs(root: pathlib.Path, copy_fails=lambda src: False):
    """Serves ``gs://BUCKET/...`` from ``root/BUCKET/...`` for every ``epath`` call; local paths
    pass through unchanged. ``copy_fails(src)`` True makes that object's copy raise (a crash)."""
    prefix = "gs://"

    def local(p):
        s = os.fspath(p)
        return os.path.join(root, s[len(prefix):]) if s.startswith(prefix) else s

    def remote(s):
        s = os.fspath(s)
        return prefix + os.path.relpath(s, root) if s.startswith(f"{root}{os.sep}") else s

    def one(orig, p, *a, **k):
        return orig(local(p), *a, **k)

    def two(orig, p, dst, *a, **k):
        return orig(local(p), local(dst), *a, **k)

    def copy(orig, p, dst, *a, **k):
        if copy_fails(os.fspath(p)):
            raise OSError(f"connection lost copying {p}")
        return two(orig, p, dst, *a, **k)

    def open_(orig, p, mode):
        if "r" not in mode:  # an object store needs no parent "directory" to write an object
            os.makedirs(os.path.dirname(local(p)), exist_ok=True)
        return orig(local(p), mode)

    def glob(orig, p):
        return [remote(x) for x in orig(local(p))]

    def walk(orig, top, **k):
        for r, dirs, files in orig(local(top), **k):
            yield remote(r), dirs, files

    with epath.testing.mock_epath(open=open_, exists=one, isdir=one, listdir=one, makedirs=one,
                                  mkdir=one, remove=one, rmtree=one, stat=one, glob=glob,
                                  walk=walk, rename=two, replace=two, copy=copy):
        yield


def test_a_uri_survives_the_path_helper():
    run = workdirs.as_path("gs://bucket/run")
    assert str(run / "x") == "gs://bucket/run/x"
    assert str(workdirs.absolute("gs://bucket/run/x")) == "gs://bucket/run/x"
    assert str((run / "stage2" / "best").relative_to(run)) == "stage2/best"
    assert str((run / "ckpt").with_name("ckpt_unreadable")) == "gs://bucket/run/ckpt_unreadable"
    assert workdirs.is_remote(run / "x") and not workdirs.is_remote("runs/x")
    assert str(pathlib.Path("gs://bucket/run")) == "gs:/bucket/run"  # what as_path spares us


def test_a_string_workdir_trains_and_resumes(tmp_path, tiny_pretrained, monkeypatch):
    """A relative string workdir: Orbax gets it absolute, the records keep it relative."""
    monkeypatch.chdir(tmp_path)
    cfg = run_config(tiny_pretrained, SLICE, "sst-2", log_every_steps=1, checkpoint_every_steps=2,
                     stop_after_steps=3)
    first = train.train_and_evaluate(cfg, "runs/r1")
    assert first == {"interrupted": True, "phase": "finetune", "step": 3}
    assert (tmp_path / "runs/r1/finetune/ckpt/3").is_dir()
    cfg.stop_after_steps = 0
    done = train.train_and_evaluate(cfg, "runs/r1")
    assert done["final_checkpoint"] == "finetune/final" and np.isfinite(done["final"]["accuracy"])
    assert checkpoints.is_model_checkpoint("runs/r1/finetune/final")
    steps = [json.loads(line)["step"] for line in (tmp_path / "runs/r1/metrics.jsonl").read_text().splitlines()]
    assert min(steps) < 3 < max(steps) == done["phases"][0]["steps"]  # both runs logged here
    assert list((tmp_path / "runs/r1/tb").iterdir())  # TensorBoard events, locally


def test_reports_records_metrics_and_provenance_on_gs(tmp_path, tiny_pretrained, caplog):
    bucket = tmp_path / "bucket"
    run = "gs://bucket/pipe/stage"
    spec = M.ModelSpec(tiny_config(1), M.QuantConfig(2, 2, 8), num_labels=2)
    with fake_gcs(tmp_path):
        with common.provenance("gs://bucket/pipe", ["launch.pipeline", "--workdir", "gs://bucket/pipe"]):
            workdirs.as_path("gs://bucket/pipe").mkdir(parents=True, exist_ok=True)
            with caplog.at_level(logging.WARNING):
                for steps in ((1, 2), (3,)):  # a run and its resume: the log goes on
                    writer = workdirs.MetricWriter(run, upload_every_s=3600)
                    for s in steps:
                        writer.write("stage2", s, {"total": 1.0 / s, "eval/accuracy": 0.5})
                    writer.close()
            row = pipeline.StageResult("stage", "TWN", f"{run}/stage2/best", f"{run}/stage2/final",
                                       {"accuracy": 0.5}, {"accuracy": 0.5}, spec, run)
            config = run_config(tiny_pretrained, SLICE, "sst-2")
            pipeline.write_report(workdirs.as_path("gs://bucket/pipe"), tasks.get_task("sst-2"),
                                  [row], config, None,
                                  pipeline.RunTime(time.perf_counter() - 2.0, 0.0, {"stage": 1.5}))
            report = workdirs.read_json("gs://bucket/pipe/results.json")
            curves = pipeline.training_curves(run, "accuracy")
        # A launch.train record made from the remote workdir, into a local results directory.
        workdirs.write_json(f"{run}/results.json", {
            "task": "sst-2", "main_metric": "accuracy", "best": {"accuracy": 0.5},
            "final": {"accuracy": 0.5}, "best_checkpoint": "stage2/best",
            "final_checkpoint": "stage2/final", "phases": [{"phase": "stage2", "steps": 3}]})
        workdirs.write_json(f"{run}/config.json", config.to_dict())
        written = record.record(run, "remote", results_dir=tmp_path / "results", find_test_file=False)
    # Stored relative to the pipeline workdir, read back wherever the workdir is.
    assert report["rows"][0]["checkpoint"] == "stage/stage2/best"
    assert report["run_time"]["stage_seconds"] == {"stage": 1.5} and report["run_time"]["wall_seconds"] >= 2.0
    assert pipeline.row_checkpoint("gs://bucket/pipe", report["rows"][0]) == f"{run}/stage2/best"
    assert curves == {"stage2": {"loss": [(1, 1.0), (2, 0.5), (3, 1 / 3)],
                                 "eval": [(1, 0.5), (2, 0.5), (3, 0.5)], "split": "dev"}}
    for name in ("results.json", "results.md", "training_curves.png", "provenance.json"):
        assert (bucket / "pipe" / name).is_file(), name
    assert (bucket / "pipe" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(bucket.rglob("*.tmp*"))  # written directly, no temporary siblings
    assert len((bucket / "pipe/stage/metrics.jsonl").read_text().splitlines()) == 3
    assert not (bucket / "pipe/stage/tb").exists()  # no google-cloud-storage here: said so
    assert "no TensorBoard events in gs://bucket/pipe/stage" in caplog.text
    provenance = json.loads((bucket / "pipe/provenance.json").read_text())
    assert provenance[0]["outcome"] == "finished"
    assert written[0]["workdir"] == run and written[0]["best"] == {"accuracy": 0.5}
    assert (tmp_path / "results/remote/record.json").is_file()
    assert len((tmp_path / "results/remote/metrics.jsonl").read_text().splitlines()) == 3


def test_model_meta_and_set_aside_on_gs(tmp_path):
    """model.json decides what counts as a model checkpoint; a set-aside step keeps every file."""
    spec = M.ModelSpec(tiny_config(1), num_labels=2)
    with fake_gcs(tmp_path):
        target = "gs://bucket/run/stage2/best"
        assert not checkpoints.is_model_checkpoint(target)
        workdirs.write_json(f"{target}/model.json", {"format": checkpoints.MODEL_FORMAT,
                                                         "version": checkpoints.MODEL_FORMAT_VERSION,
                                                         "spec": spec.to_dict(), "info": {}})
        assert checkpoints.is_model_checkpoint(target)
        assert checkpoints.load_model_spec(target) == spec
        workdirs.write_text("gs://bucket/run/ckpt/4/state/a", "A")
        workdirs.write_text("gs://bucket/run/ckpt/4/meta/b", "B")
        workdirs.move_dir(workdirs.as_path("gs://bucket/run/ckpt/4"),
                          workdirs.as_path("gs://bucket/run/ckpt_unreadable/4-x"))
    assert not (tmp_path / "bucket/run/ckpt/4").exists()
    aside = tmp_path / "bucket/run/ckpt_unreadable/4-x"
    assert (aside / "state/a").read_text() == "A" and (aside / "meta/b").read_text() == "B"


def test_a_save_cut_short_on_gs_leaves_a_complete_model(tmp_path):
    """On an object store a save removes the old checkpoint and copies the new one from its
    sibling ``.tmp``, model.json last; cut short there, the checkpoint reads from ``.tmp`` and the
    next save puts that copy in place: the run's best model is never lost."""
    spec = M.ModelSpec(tiny_config(1), num_labels=2)

    def write(where, step):
        workdirs.write_text(f"{where}/params/weights", f"weights of step {step}")
        workdirs.write_json(f"{where}/model.json", {
            "format": checkpoints.MODEL_FORMAT, "version": checkpoints.MODEL_FORMAT_VERSION,
            "spec": spec.to_dict(), "info": {"step": step}})

    best = "gs://bucket/run/stage2/best"
    with fake_gcs(tmp_path, copy_fails=lambda src: src.endswith("params/weights")):
        write(best, 1)
        write(best + ".tmp", 2)  # the new model, complete: what save_model writes first
        workdirs.as_path(best).rmtree()  # what it does next on gs, then the copy, cut short
        with pytest.raises(OSError, match="connection lost"):
            workdirs.move_dir(workdirs.as_path(best + ".tmp"), workdirs.as_path(best))
    local_best = tmp_path / "bucket/run/stage2/best"
    assert not (local_best / "model.json").exists()  # model.json is copied last, so not yet
    with fake_gcs(tmp_path):
        assert checkpoints.is_model_checkpoint(best)
        assert checkpoints.read_model_meta(best)["info"] == {"step": 2}
        assert str(checkpoints.complete_copy(best)) == best + ".tmp"
        checkpoints._restore_interrupted_save(workdirs.as_path(best))  # the next save's first act
        assert checkpoints.complete_copy(best) == workdirs.as_path(best)
    assert (local_best / "params/weights").read_text() == "weights of step 2"
    assert sorted(p.name for p in local_best.parent.iterdir()) == ["best"]


def test_remote_lock_is_a_lease(tmp_path, caplog):
    with fake_gcs(tmp_path):
        lock_file = tmp_path / "bucket/run/.lock"
        lock = workdirs.WorkdirLock("gs://bucket/run", heartbeat_s=0.05).acquire()
        first = json.loads(lock_file.read_text())
        with pytest.raises(UserError, match=r"gs://bucket/run is in use by process \d+ on .*"
                                            r"delete gs://bucket/run/\.lock"):
            workdirs.WorkdirLock("gs://bucket/run").acquire()
        deadline = time.time() + 5
        while json.loads(lock_file.read_text())["heartbeat"] == first["heartbeat"] and time.time() < deadline:
            time.sleep(0.02)
        assert json.loads(lock_file.read_text())["heartbeat"] > first["heartbeat"]  # refreshed
        lock.release()
        assert not lock_file.exists()
        # A lease its run left behind: refused while fresh, taken over once stale, and taken over
        # at once when its process was on this host and is gone.
        lease = dict(first, pid=os.getpid(), heartbeat=time.time())
        lock_file.write_text(json.dumps(lease))
        with pytest.raises(UserError, match="in use by"):
            workdirs.WorkdirLock("gs://bucket/run", stale_after_s=600).acquire()
        with caplog.at_level(logging.WARNING):
            with workdirs.WorkdirLock("gs://bucket/run", stale_after_s=0.0):
                assert json.loads(lock_file.read_text())["token"] != first["token"]
        assert "taking over the lock gs://bucket/run/.lock" in caplog.text
        assert not lock_file.exists()
        lock_file.write_text(json.dumps(dict(lease, pid=2 ** 22 + 12345)))  # beyond pid_max
        with workdirs.WorkdirLock("gs://bucket/run"):
            pass


def test_local_lock_still_uses_flock(tmp_path):
    with workdirs.WorkdirLock(str(tmp_path)):
        with pytest.raises(UserError, match=f"{tmp_path} is in use by process {os.getpid()}"):
            workdirs.WorkdirLock(tmp_path).acquire()
    with workdirs.WorkdirLock(tmp_path):  # released
        pass
