"""Hostile input to the mains: an output never destroys an input, workdirs of different kinds never
mix, a missing peer does not hang, and every user error is one line and exit 2 (a defect: one
line and exit 1, its traceback behind --verbose)."""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from binarybert_jax import checkpoints, errors, export, pipeline, resolve, squad_metrics, train, workdirs
from binarybert_jax import model as M
from binarybert_jax.data import squad, tasks
from conftest import run_config, tiny_config
from launch import common, evaluate_squad, predict, record, split
from launch import export as export_main

ROOT = pathlib.Path(__file__).resolve().parents[1]
SLICE = ROOT / "data" / "glue_slice"
DEV = SLICE / "SST-2" / "dev.tsv"


def _model(path, tiny_pretrained, task="sst-2", num_labels=2):
    spec = M.ModelSpec(tiny_config(2), num_labels=num_labels)
    params = spec.build().init(jax.random.key(0), np.ones((1, 8), np.int32))["params"]
    checkpoints.save_model(path, params, spec, {"task": task, "tokenizer": str(tiny_pretrained)})
    return path


def _main(args, cwd=ROOT, **extra_env):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    env.pop(common.VERBOSE_ENV, None)
    env.update(extra_env)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _one_line(run, code=2) -> str:
    """The single stderr line of a main that ended on bad input."""
    lines = run.stderr.strip().splitlines()
    assert run.returncode == code, run.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    return lines[0]


def _snapshot(path: pathlib.Path) -> dict:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in files}


# ---- an output that is an input ----------------------------------------------------------------

def test_outputs_that_are_or_lie_inside_or_contain_an_input_are_refused(tmp_path, tiny_pretrained):
    model = _model(tmp_path / "model", tiny_pretrained)
    data = tmp_path / "dev.tsv"
    shutil.copy(DEV, data)
    (tmp_path / "alias.tsv").symlink_to(data)  # the same file under another name
    before, model_before = {**_snapshot(model), **_snapshot(data)}, _snapshot(model)
    run = ["--model", str(model), "--task", "sst-2", "--input", str(data)]
    for out, message in [(tmp_path / "alias.tsv", "--out .*alias.tsv is the input --input"),
                         (data, "is the input --input"),
                         (model / "model.json", "lies inside the input --model"),
                         (tmp_path, "contains the input --input"),
                         (tmp_path / "model" / "..", "contains the input --input")]:
        with pytest.raises(errors.UserError, match=message):
            predict.main(run + ["--out", str(out)])
    with pytest.raises(errors.UserError, match="--na_prob_out .* is the input --out"):
        predict.main(["--model", str(model), "--task", "squad2", "--input", str(tmp_path / "s.json"),
                      "--out", str(tmp_path / "p.json"), "--na_prob_out", str(tmp_path / "p.json")])
    with pytest.raises(errors.UserError, match="lies inside the input --ckpt"):
        export_main.main(["--ckpt", str(model), "--out", str(model / "packed.safetensors")])
    with pytest.raises(errors.UserError, match="contains the input --ternary"):
        split.main(["--ternary", str(model), "--out", str(tmp_path)])
    with pytest.raises(errors.UserError, match="lies inside the input WORKDIR"):
        record.record(tmp_path, "r", results_dir=model)
    assert {**_snapshot(model), **_snapshot(data)} == before
    # A training run's workdir holding what it reads (its teacher) is refused before it is written.
    c = run_config(tiny_pretrained, SLICE, "sst-2", teacher=str(model), **{"kd.mode": "prediction"})
    with pytest.raises(errors.UserError, match="--workdir .* contains the input --config.teacher"):
        train.train_and_evaluate(c, tmp_path)
    assert not (tmp_path / "config.json").exists() and _snapshot(model) == model_before
    # From the command line: one line, exit 2, nothing written.
    line = _one_line(_main(["-m", "launch.export", "--ckpt", str(model), "--out",
                            str(model / "params" / "x.safetensors")]))
    assert "lies inside the input --ckpt" in line and not (model / "params" / "x.safetensors").exists()


# ---- workdirs of one kind ----------------------------------------------------------------------

def test_a_workdir_of_another_kind_is_refused_naming_what_is_there(tmp_path, tiny_pretrained):
    from configs import pipeline as pipeline_config
    c = run_config(tiny_pretrained, SLICE, "sst-2")
    done = tmp_path / "pipeline"
    workdirs.claim_workdir(done, workdirs.PIPELINE)
    (done / "results.json").write_text('{"rows": []}')
    before = _snapshot(done)
    with pytest.raises(errors.UserError, match=r"holds a pipeline \(made by launch.pipeline\), not a training run"):
        train.train_and_evaluate(c, done)
    assert _snapshot(done) == before
    line = _one_line(_main(["-m", "launch.train", "--config", "configs/finetune.py:task=sst-2,tiny",
                            "--workdir", str(done)]))
    assert "holds a pipeline (made by launch.pipeline), not a training run" in line
    assert _snapshot(done) == before  # not even a provenance entry
    # A workdir from before the marker is known by its files: config.json is a training run's.
    old_run = tmp_path / "run"
    old_run.mkdir()
    (old_run / "config.json").write_text(c.to_json())
    p = pipeline_config.get_config("task=sst-2,tiny,bwn=False")
    with pytest.raises(errors.UserError, match=r"holds a training run \(made by launch.train\), not a pipeline"):
        pipeline.run_pipeline(p, old_run)
    assert sorted(q.name for q in old_run.iterdir()) == ["config.json"]
    analysis = tmp_path / "analysis"
    workdirs.claim_workdir(analysis, workdirs.ANALYSIS, "--out")
    with pytest.raises(errors.UserError, match=r"analysis holds an analysis \(made by launch.analyze\), not a training run"):
        train.train_and_evaluate(c, analysis)
    # split replaces its --out whole: a training run there is refused, not deleted.
    model = _model(tmp_path / "model", tiny_pretrained)
    with pytest.raises(errors.UserError, match="holds a training run, not a model checkpoint"):
        split.main(["--ternary", str(model), "--out", str(old_run)])
    assert (old_run / "config.json").is_file()


def test_an_empty_workdir_is_refused_and_nothing_lands_in_the_current_directory(tmp_path, tiny_pretrained):
    with pytest.raises(errors.UserError, match="--workdir is empty"):
        train.train_and_evaluate(run_config(tiny_pretrained, SLICE, "sst-2"), "")
    line = _one_line(_main(["-m", "launch.train", "--config", str(ROOT / "configs" / "finetune.py") + ":task=sst-2,tiny",
                            "--workdir", ""], cwd=tmp_path))
    assert line == "error: --workdir is empty: give a directory"
    assert list(tmp_path.iterdir()) == []


# ---- distributed flags with a missing peer --------------------------------------------------------

def test_a_missing_peer_ends_the_wait_naming_the_coordinator_and_the_missing_process(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = _main(["-m", "launch.train", "--config", "configs/finetune.py:task=sst-2,tiny",
                 "--workdir", str(tmp_path / "w"), f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", "--process_id=0", "--distributed_timeout=3"])
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr
    assert lines[0].startswith(f"process 0 of 2: coordinator at 127.0.0.1:{port}, waiting up to 3 s "
                               "for process 1 to join")
    assert lines[-1].startswith(f"error: distributed initialization timed out after 3 s at coordinator "
                                f"127.0.0.1:{port}: missing process id 1;")
    assert len(lines) == 2 and not (tmp_path / "w").exists()


# ---- one line, exit 2 ----------------------------------------------------------------------------

@pytest.mark.parametrize("args,expected", [
    (["--config", "configs/finetune.py:task=foo"], "Unknown task 'foo'"),
    (["--config", "configs/finetune.py:task=sst-2,bogus"], "unknown config argument 'bogus'"),
    (["--config", "configs/missing.py"], "--config configs/missing.py: no such config file"),
    (["--config", "configs/finetune.py:task=sst-2,tiny", "extra"], "unexpected arguments ['extra']"),
    (["--config", "configs/finetune.py:task=sst-2,tiny", "--distributed_timeout=soon"],
     "flag --distributed_timeout=soon: invalid literal for int()"),
    (["--config", "configs/finetune.py:task=sst-2,tiny", "--config.max_seq_length=4096"],
     "--config.max_seq_length=4096 is above the model's 512 position embeddings"),
])
def test_early_config_errors_are_one_line(tmp_path, args, expected):
    line = _one_line(_main(["-m", "launch.train", *args, "--workdir", str(tmp_path / "w")]))
    assert expected in line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args,expected", [
    (["-m", "launch.predict", "--model", "m"], "the following arguments are required: --task, --input, --out"),
    (["-m", "launch.size", "--ckpt", "/nonexistent"], "/nonexistent is not a binarybert-jax model checkpoint"),
    (["-m", "launch.size", "--preset", "bert-base", "--bits", "3-x-8"], "bits must look like W-E-A"),
    (["-m", "launch.split", "--ternary", "/nonexistent", "--out", "OUT"], "not a binarybert-jax model checkpoint"),
    (["-m", "launch.export", "--ckpt", "/nonexistent", "--out", "OUT"], "not a binarybert-jax model"),
    (["-m", "launch.analyze", "--config", "configs/analyze.py:task=sst-2", f"--config.data_dir={SLICE}",
      "--out", "OUT"], "give exactly one of --config.checkpoint"),
    (["-m", "launch.analyze", "--config", "configs/analyze.py:task=sst-2", "--config.checkpoint=/nonexistent",
      "--out", ""], "--out is empty"),
])
def test_argparse_mains_and_analyze_end_with_one_line(tmp_path, args, expected):
    args = [str(tmp_path / "a") if a == "OUT" else a for a in args]
    assert expected in _one_line(_main(args))


def test_a_defect_is_one_line_and_exit_1_with_its_traceback_behind_verbose():
    code = ("from launch import common\n"
            "def broken():\n    return {}['missing']\n"
            "common.run_main(broken)\n")
    quiet = _one_line(_main(["-c", code]), code=1)
    assert quiet.startswith("error: internal error (KeyError: 'missing'): this is a bug; rerun with --verbose")
    for loud in (_main(["-c", code, "--verbose"]), _main(["-c", code], **{common.VERBOSE_ENV: "1"})):
        assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
        assert loud.stderr.strip().splitlines()[-1] == quiet
    # A ValueError raised inside a library (not by the project's own checks) is a defect too.
    numpy_bug = _one_line(_main(["-c", "from launch import common\nimport numpy as np\n"
                                       "common.run_main(lambda: np.zeros(3).reshape(2, 2))\n"]), code=1)
    assert numpy_bug.startswith("error: internal error (ValueError: cannot reshape array")


def test_unreadable_checkpoints_and_a_full_disk_are_one_line(tmp_path, tiny_pretrained):
    model = _model(tmp_path / "model", tiny_pretrained)
    truncated = tmp_path / "truncated"
    shutil.copytree(model, truncated)
    for f in (truncated / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[:100])
    no_meta = tmp_path / "no_meta"
    shutil.copytree(model, no_meta)
    (no_meta / "params" / "_METADATA").unlink()
    for bad in (truncated, no_meta):
        with pytest.raises(errors.UserError, match=rf"{bad.name}/params: not a readable checkpoint \("):
            checkpoints.load_model(bad)
        run = _main(["-m", "launch.predict", "--model", str(bad), "--task", "sst-2", "--input", str(DEV),
                     "--out", str(tmp_path / "p.tsv")])
        assert "not a readable checkpoint" in _one_line(run) and "Event loop is closed" not in run.stderr
    if os.path.exists("/dev/full") and not os.path.isfile("/dev/full"):  # writes fail with ENOSPC
        run = _main(["-m", "launch.predict", "--model", str(model), "--task", "sst-2", "--input", str(DEV),
                     "--out", "/dev/full"])
        assert _one_line(run) == "error: cannot write /dev/full: No space left on device"
        assert not os.path.isfile("/dev/full")  # written into, never replaced by a file


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="the GCS client is installed")
def test_gs_without_the_gcs_client_is_one_line_naming_the_package(tmp_path):
    line = _one_line(_main(["-m", "launch.train", "--config", "configs/finetune.py:task=sst-2,tiny",
                            "--workdir", "gs://some-bucket/run"]))
    assert line == "error: gs:// paths need the Google Cloud Storage client: pip install gcsfs"


# ---- SQuAD input checked at load -----------------------------------------------------------------

def _squad(qas, version="1.1"):
    return {"version": version, "data": [{"title": "t", "paragraphs": [
        {"context": "Paris is the capital of France.", "qas": qas}]}]}


def _qa(qid, text="Paris", start=0, **extra):
    return {"id": qid, "question": "?", "answers": [{"text": text, "answer_start": start}] if text else [],
            **extra}


def test_squad_files_are_validated_at_load_naming_file_and_question(tmp_path):
    for data, message in [
        (_squad([_qa("q1"), _qa("q2", "France", 3)]), "question q2: answer 'France' is not the text at its "
                                                       "answer_start 3"),
        (_squad([_qa("q1"), _qa("q1", "France", 24)]), "question id 'q1' appears twice"),
        (_squad([_qa("q1"), _qa("q2", None, is_impossible=True)]), "question q2 has no answer .*a SQuAD v2.0 file"),
    ]:
        with pytest.raises(ValueError, match=message):
            squad.examples_from_dataset(data["data"], where="x.json", version="1.1")
    # A v2.0 file given as squad1 fails at load, naming the file, before anything is tokenized.
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(_squad([_qa("q1"), _qa("q2", None, is_impossible=True)],
                                                              "v2.0")))
    with pytest.raises(ValueError, match=r"dev-v1.1.json: a SQuAD v2.0 file, but the task is v1.1"):
        squad.load_squad_data(tasks.get_task("squad1"), None, data_dir=tmp_path, dev_split=0.5)
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(_squad([_qa("q1"), _qa("q2", None, is_impossible=True)], "")))
    with pytest.raises(ValueError, match=r"dev-v1.1.json: question q2 has no answer"):
        squad.load_squad_data(tasks.get_task("squad1"), None, data_dir=tmp_path, dev_split=0.5)


def test_evaluate_squad_counts_missing_ids_and_refuses_malformed_files(tmp_path, capsys):
    def write(name, obj):
        (tmp_path / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return str(tmp_path / name)

    v1 = write("v1.json", _squad([_qa("a"), _qa("b", "France", 24)]))
    assert evaluate_squad.main([v1, write("p.json", {"a": "Paris"})]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"exact_match": 50.0, "f1": 50.0}
    assert err.strip() == (f"warning: 1 of 2 questions of {v1} have no prediction in {tmp_path / 'p.json'} "
                           "(e.g. b); they score 0")
    # v2.0 keeps the missing question in its total (its official script would leave it out).
    v2 = write("v2.json", _squad([_qa("a"), _qa("n", None, is_impossible=True)], "v2.0"))
    assert evaluate_squad.main([v2, write("p2.json", {"a": "Paris"})]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["total"] == 2 and scores["exact"] == 50.0 and scores["NoAns_total"] == 1
    assert squad_metrics.evaluate_v2(_squad([_qa("a"), _qa("n", None)])["data"], {"a": "Paris"})["total"] == 1
    for args, message in [
        ([v1, write("empty.json", "")], "predictions file .*empty.json: the file is empty"),
        ([v1, write("list.json", ["Paris"])], "expected an object mapping question ids to an answer text"),
        ([v1, write("num.json", {"a": 3})], r"question a: 3 is not an answer text \(a string\)"),
        ([v2, write("p3.json", {"a": "Paris", "n": ""}), "--na_prob_file", write("na.json", {"a": "high", "n": 0.1})],
         "na-prob file .*na.json: question a: 'high' is not a number"),
    ]:
        with pytest.raises(errors.UserError, match=message):
            evaluate_squad.main(args)


# ---- leftovers and blockers ---------------------------------------------------------------------

def test_an_export_killed_before_its_rename_leaves_nothing_the_next_export_keeps(tmp_path, tiny_pretrained):
    model = _model(tmp_path / "model", tiny_pretrained)
    out = tmp_path / "m.safetensors"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that is free now: a killed export's
    stale = tmp_path / f"m.safetensors.tmp{gone.pid}"
    stale.write_bytes(b"\0" * 1000)
    live = tmp_path / f"m.safetensors.tmp{os.getppid()}"  # a running process's: a concurrent export
    live.write_bytes(b"\0")
    export_main.main(["--ckpt", str(model), "--out", str(out)])
    assert out.is_file() and not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", "m.safetensors", live.name])


def test_a_stripped_checksum_is_printed_by_predict(tmp_path, tiny_pretrained):
    from safetensors import safe_open
    from safetensors.numpy import save_file
    model = _model(tmp_path / "model", tiny_pretrained)
    export_main.main(["--ckpt", str(model), "--out", str(tmp_path / "m.safetensors")])
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as f:
        manifest = json.loads(f.metadata()[export.MANIFEST_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for entry in manifest["tensors"].values():
        entry.pop("crc32")
    save_file(tensors, str(tmp_path / "stripped.safetensors"), metadata={export.MANIFEST_KEY: json.dumps(manifest)})
    run = _main(["-m", "launch.predict", "--model", str(tmp_path / "stripped.safetensors"), "--task", "sst-2",
                 "--input", str(DEV), "--out", str(tmp_path / "p.tsv")])
    assert run.returncode == 0, run.stderr
    assert f"stripped.safetensors: {len(manifest['tensors'])} of {len(manifest['tensors'])} tensors have no " \
           "checksum" in run.stderr and "they load unverified" in run.stderr


def test_a_corrupt_provenance_and_a_cut_metrics_line_are_skipped_with_a_warning(tmp_path, caplog, monkeypatch):
    import logging
    monkeypatch.setattr(logging.getLogger("binarybert_jax"), "propagate", True)  # to caplog
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / common.PROVENANCE_FILE).write_text('[{"argv": ["launch.train"], "outc')
    with caplog.at_level("WARNING", logger="binarybert_jax"):
        assert record._provenance(workdir)["invocations"] == []
        with common.provenance(workdir, ["launch.train", "again"]):
            pass
    assert "not valid JSON" in caplog.text and "its invocations are skipped" in caplog.text
    entries = json.loads((workdir / common.PROVENANCE_FILE).read_text())
    assert [e["outcome"] for e in entries] == ["finished"]
    assert (workdir / "provenance.json.unreadable").read_text().endswith('"outc')
    # A metrics line cut short by a kill: the next run's first line starts on a line of its own,
    # and the curves skip the cut one.
    (workdir / "metrics.jsonl").write_text('{"phase": "stage2", "step": 1, "total": 2.0}\n{"phase": "sta')
    writer = workdirs.MetricWriter(workdir)
    writer.write("stage2", 2, {"total": 1.0, "eval/accuracy": 0.5})
    writer.close()
    caplog.clear()
    with caplog.at_level("WARNING", logger="binarybert_jax"):
        curves = pipeline.training_curves(workdir, "accuracy")
    assert curves == {"stage2": {"loss": [(1, 2.0), (2, 1.0)], "eval": [(2, 0.5)], "split": "dev"}}
    assert "metrics.jsonl: skipped 1 unreadable line(s) (2)" in caplog.text


def test_a_moved_workdir_keeps_its_stage_references(tmp_path, tiny_pretrained):
    # A pipeline stage records the earlier stage it learns from; moved together, it is the same.
    first = tmp_path / "p" / "ternary"
    c = run_config(tiny_pretrained, SLICE, "sst-2", teacher=str(tmp_path / "p" / "teacher" / "finetune" / "best"))
    workdirs.claim_workdir(first, workdirs.TRAINING_RUN)
    recorded = json.loads(c.to_json())
    shutil.move(tmp_path / "p", tmp_path / "q")
    moved = run_config(tiny_pretrained, SLICE, "sst-2", teacher=str(tmp_path / "q" / "teacher" / "finetune" / "best"))
    resolve.check_resume(recorded, moved, tmp_path / "q" / "ternary")
    elsewhere = run_config(tiny_pretrained, SLICE, "sst-2", teacher=str(tmp_path / "other" / "best"))
    with pytest.raises(errors.ConfigError, match="teacher: .* -> .*other/best"):
        resolve.check_resume(recorded, elsewhere, tmp_path / "q" / "ternary")
    assert pipeline.row_checkpoint(tmp_path / "q", {"checkpoint": "teacher/finetune/best"}) == \
        str(tmp_path / "q" / "teacher" / "finetune" / "best")
    assert pipeline.relative_to_workdir(str(tmp_path / "q" / "tws" / "finetune" / "best"),
                                        workdirs.as_path(tmp_path / "q")) == "tws/finetune/best"
