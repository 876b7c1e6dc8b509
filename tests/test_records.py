"""Records of finished runs (launch.record), the tables of README, BENCHMARKS.md and docs/ rebuilt from
them (launch.tables), and the parity figures (launch.parity), on two tiny real runs."""

import json
import statistics

import pytest

from binarybert_jax import phase_time, train
from configs import common as config_common
from launch import common, parity, record, tables
from figures import assert_readable_png

from conftest import write_mrpc_test_file

TEST_ROWS = 10


def _config(tiny_pretrained, glue_dir, seed):
    c = config_common.base_config("mrpc")
    config_common.shrink_for_local(c)
    c.pretrained, c.data_dir = str(tiny_pretrained), str(glue_dir)
    c.train_limit, c.eval_limit, c.batch_size, c.eval_batch_size = 16, 16, 4, 8
    c.max_seq_length, c.seed, c.progress_bar = 32, seed, False
    c.stage2.epochs, c.log_every_steps = 0.5, 1
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_pretrained, glue_dir):
    """Two seeds of a two-step fine-tune, run as launch.train runs them (provenance included)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for seed in (1, 2):
        workdir = root / f"s{seed}"
        with common.provenance(workdir, ["launch.train", f"seed={seed}"]):
            out[seed] = train.train_and_evaluate(_config(tiny_pretrained, glue_dir, seed), workdir)
    test = write_mrpc_test_file(glue_dir, root / "test_head.tsv", TEST_ROWS)
    return root, out, test


@pytest.fixture(scope="module")
def results(runs, tmp_path_factory):
    root, _, test = runs
    results_dir = tmp_path_factory.mktemp("results")
    for seed in (1, 2):
        record.main([str(root / f"s{seed}"), "--name", f"tiny/fp/s{seed}", "--setting", "full precision",
                     "--results-dir", str(results_dir), "--test-file", str(test)])
    return results_dir


def test_record_holds_what_outlives_the_run(runs, results):
    root, out, _ = runs
    rec = json.loads((results / "tiny" / "fp" / "s1" / "record.json").read_text())
    assert rec["setting"] == "full precision" and rec["seed"] == 1 and rec["task"] == "mrpc"
    assert rec["best"] == out[1]["best"] and rec["final"] == out[1]["final"]
    # Selected on the held-out slice: the record says so, with the held-out score at selection and
    # dev at the selected and at the final checkpoint.
    assert rec["protocol"] == "heldout" and rec["selection"] == out[1]["selection"]
    assert rec["selection"]["split"] == "heldout" and "accuracy" in rec["selection"]["scores"]
    assert rec["dev_selected"] == out[1]["dev_selected"] == rec["best"]
    assert rec["dev_final"] == out[1]["dev_final"] == rec["final"]
    assert rec["config"]["seed"] == 1 and rec["config"]["train_limit"] == 16
    assert rec["wall_seconds"] > 0 and rec["phases"][0]["wall_seconds"] > 0
    # How the wall time split: the first run of a phase compiles its steps; the parts add up to it.
    split = rec["phases"][0]["time_seconds"]
    assert set(split) == set(phase_time.CATEGORIES) and split["compiling"] > 0
    assert sum(split.values()) == pytest.approx(rec["phases"][0]["wall_seconds"], abs=0.5)
    assert rec["time_seconds"] == split  # one phase: the run's split is the phase's
    now = common.git_state()
    if now["git_commit"]:
        assert rec["git_commits"] == [now["git_commit"]]
    assert rec["provenance"]["invocations"][0]["outcome"] == "finished"
    assert rec["commands"] == [["launch.train", "seed=1"]]  # the command that made it
    # A refused invocation (bad input, exit 2) from other code is listed but not among the commits.
    with pytest.raises(SystemExit):
        with common.provenance(root / "s1", ["launch.train", "refused"]):
            common.fail("a changed config")
    invocations = json.loads((root / "s1" / common.PROVENANCE_FILE).read_text())
    assert invocations[-1]["outcome"] == "refused"
    invocations[-1]["git_commit"] = "0" * 40
    (root / "s1" / common.PROVENANCE_FILE).write_text(json.dumps(invocations))
    assert "0" * 40 not in record._provenance(root / "s1")["commits"]
    logged = (root / "s1" / "metrics.jsonl").read_text()
    assert (results / "tiny" / "fp" / "s1" / "metrics.jsonl").read_text() == logged
    assert any("heldout/accuracy" in json.loads(line) for line in logged.splitlines())
    # The GLUE submission of the best checkpoint: header, then index<TAB>label for every test row.
    assert rec["submission"]["file"] == "MRPC.tsv"
    rows = (results / "tiny" / "fp" / "s1" / "MRPC.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == TEST_ROWS + 1
    assert [r.split("\t")[0] for r in rows[1:]] == [str(i) for i in range(TEST_ROWS)]
    assert {r.split("\t")[1] for r in rows[1:]} <= {"0", "1"}


def test_provenance_survives_a_killed_invocation(tmp_path):
    """An invocation killed outright leaves its ``running`` entry: written at its start when the
    workdir existed, else as soon as the main claims the workdir it creates. A workdir made some
    other way gets the entry only at the end, and when that never came, the next entry's
    ``workdir_existed`` lets the record say that its commits may miss the code that trained the run."""
    from binarybert_jax import workdirs
    workdir, path = tmp_path / "run", tmp_path / "run" / common.PROVENANCE_FILE
    with common.provenance(workdir, ["launch.train", "first"]):
        assert not path.exists()  # no workdir yet: nothing to write into
        workdirs.claim_workdir(workdir, workdirs.TRAINING_RUN)
        (claimed,) = json.loads(path.read_text())  # what a SIGKILL right after creating it would leave
        assert claimed["outcome"] == "running" and claimed["workdir_existed"] is False
        workdirs.claim_workdir(tmp_path / "other", workdirs.TRAINING_RUN)  # another workdir: not this entry's
        assert not (tmp_path / "other" / common.PROVENANCE_FILE).exists()
    (first,) = json.loads(path.read_text())
    assert first["outcome"] == "finished" and first["workdir_existed"] is False
    assert "unrecorded" not in record._provenance(workdir)
    with common.provenance(workdir, ["launch.train", "resumed"]):
        during = json.loads(path.read_text())  # what a SIGKILL here would leave
        assert [e["outcome"] for e in during] == ["finished", "running"]
        assert during[1]["workdir_existed"] is True
    assert [e["outcome"] for e in json.loads(path.read_text())] == ["finished", "finished"]
    # The invocation that created this workdir was killed before writing: the first entry found
    # the workdir there.
    killed = tmp_path / "killed"
    killed.mkdir()
    with common.provenance(killed, ["launch.train", "resumed"]):
        pass
    found = record._provenance(killed)
    assert found["invocations"][0]["workdir_existed"] is True and "killed" in found["unrecorded"]


def test_tables_rebuild_marked_sections_from_records(runs, results, tmp_path, capsys):
    _, out, _ = runs
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results:tiny per_seed -->\n| typed | by hand |\n<!-- /results -->\n\nafter\n")
    assert tables.main(["--readme", str(readme), "--results-dir", str(results)]) == 0
    text = readme.read_text()
    assert "typed" not in text and text.endswith("\n\nafter\n")
    acc = [100 * out[s]["best"]["accuracy"] for s in (1, 2)]
    row = next(line for line in text.splitlines() if line.startswith("| full precision |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["held-out-selected", "2 (1, 2)"]  # protocol, seeds
    header = next(line for line in text.splitlines() if line.startswith("| setting |"))
    names = [c.strip() for c in header.strip("|").split("|")]
    column = names.index("accuracy (dev at selected)")
    assert cells[column] == (f"{statistics.mean(acc):.1f} ± {statistics.stdev(acc):.1f} "
                             f"({acc[0]:.1f}, {acc[1]:.1f})")
    # Dev at the final checkpoint beside it, and the held-out score the selection was made on.
    assert names[column + 1] == "accuracy (dev at final)"
    final = [100 * out[s]["dev_final"]["accuracy"] for s in (1, 2)]
    assert cells[column + 1].startswith(f"{statistics.mean(final):.1f} ± ")
    main = out[1]["main_metric"]
    held = [100 * out[s]["selection"]["scores"][main] for s in (1, 2)]
    assert cells[names.index(f"held-out {main} (at selection)")].startswith(f"{statistics.mean(held):.1f} ± ")
    assert tables.main(["--readme", str(readme), "--results-dir", str(results), "--check"]) == 0
    readme.write_text(text.replace(cells[column], "99.9 ± 0.1"))  # a number typed over the records
    assert tables.main(["--readme", str(readme), "--results-dir", str(results), "--check"]) == 1
    # Several folders in one table, in the order named, with the W-E-A column.
    import shutil
    shutil.copytree(results / "tiny" / "fp" / "s1", results / "other" / "s1")
    rec = json.loads((results / "other" / "s1" / "record.json").read_text())
    rec.update(setting="another setting", name="other/s1")
    (results / "other" / "s1" / "record.json").write_text(json.dumps(rec))
    readme.write_text("<!-- results:other+tiny bits -->\n<!-- /results -->\n")
    assert tables.main(["--readme", str(readme), "--results-dir", str(results)]) == 0
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    assert rows[0].startswith(f"| setting | W-E-A | protocol | n | held-out {main} (at selection) |")
    assert rows[1].startswith("| another setting | 32-32-32 | held-out-selected | 1 |"), rows
    assert rows[2].startswith("| full precision | 32-32-32 | held-out-selected | 2 |")
    # A record made before held-out selection (no protocol, no dev_selected / dev_final) is
    # tabulated as dev-selected, its best and final dev scores as dev at selected and at final.
    for key in ("protocol", "selection", "dev_selected", "dev_final"):
        del rec[key]
    rec["best"], rec["final"] = {"accuracy": 0.5, "f1": 0.25}, {"accuracy": 0.375, "f1": 0.125}
    (results / "other" / "s1" / "record.json").write_text(json.dumps(rec))
    readme.write_text("<!-- results:other metrics=accuracy,f1 -->\n<!-- /results -->\n")
    assert tables.main(["--readme", str(readme), "--results-dir", str(results)]) == 0
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    assert rows[0] == ("| setting | protocol | n | accuracy (dev at selected) | accuracy (dev at final) "
                       "| f1 (dev at selected) | f1 (dev at final) |")
    assert rows[1] == "| another setting | dev-selected | 1 | 50.0 | 37.5 | 25.0 | 12.5 |"
    # The wall minutes and their split; a record made before runs split their time shows dashes.
    readme.write_text("<!-- results:tiny+other time metrics=accuracy which=final -->\n<!-- /results -->\n")
    del rec["time_seconds"]
    (results / "other" / "s1" / "record.json").write_text(json.dumps(rec))
    assert tables.main(["--readme", str(readme), "--results-dir", str(results)]) == 0
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    assert rows[0] == ("| setting | n | accuracy (final) | wall min (mean) | of it compiling | of it steps "
                       "| of it evaluation | of it checkpoints | of it setup |")
    tiny = [json.loads((results / "tiny" / "fp" / f"s{s}" / "record.json").read_text()) for s in (1, 2)]
    compiling = statistics.mean(r["time_seconds"]["compiling"] for r in tiny) / 60
    assert rows[1].split(" | ")[4] == f"{compiling:.1f}"
    assert rows[2].endswith("| — | — | — | — | — |")
    readme.write_text("<!-- results:other which=best -->\n<!-- /results -->\n")
    with pytest.raises(ValueError, match="which='best'; allowed: both, selected, final"):
        tables.main(["--readme", str(readme), "--results-dir", str(results)])
    # order= puts the named record folders' rows first; a folder holding no record is an error.
    readme.write_text("<!-- results:other+tiny order=fp -->\n<!-- /results -->\n")
    assert tables.main(["--readme", str(readme), "--results-dir", str(results)]) == 0
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| full precision | held-out-selected | 2 |"), rows
    # Beside held-out-selected rows, the older record has no held-out score to show.
    assert rows[2].startswith("| another setting | dev-selected | 1 | — | 25.0 | 12.5 |"), rows
    readme.write_text("<!-- results:other+tiny order=fp,typo -->\n<!-- /results -->\n")
    with pytest.raises(ValueError, match="order names \\['typo'\\], which hold none"):
        tables.main(["--readme", str(readme), "--results-dir", str(results)])
    readme.write_text("<!-- results:tiny+missing -->\n<!-- /results -->\n")
    with pytest.raises(ValueError, match="results:tiny\\+missing, but .*missing holds no record.json"):
        tables.main(["--readme", str(readme), "--results-dir", str(results)])
    shutil.rmtree(results / "other")
    readme.write_text("<!-- results:nothing_here -->\n<!-- /results -->\n")
    with pytest.raises(ValueError, match="results:nothing_here, but .* holds no record.json"):
        tables.main(["--readme", str(readme), "--results-dir", str(results)])
    readme.write_text("<!-- results:tiny -->\nno end marker\n")
    with pytest.raises(ValueError, match="has no <!-- /results -->"):
        tables.main(["--readme", str(readme), "--results-dir", str(results)])


def test_tables_rebuild_every_document_and_check_each(results, tmp_path, capsys):
    """README, BENCHMARKS.md and docs/*.md are all rebuilt, and --check names each stale file."""
    (tmp_path / "docs").mkdir()
    for name in ("README.md", "BENCHMARKS.md", "docs/results.md", "docs/usage.md", "docs/notes.txt"):
        (tmp_path / name).write_text("<!-- results:tiny -->\n<!-- /results -->\n")
    files = tables.documents(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "README.md", "BENCHMARKS.md", "docs/results.md", "docs/usage.md"]
    args = [a for f in files for a in ("--file", str(f))] + ["--results-dir", str(results)]
    assert tables.main(args + ["--check"]) == 1  # every file still holds its empty section
    assert tables.main(args) == 0
    assert all("| full precision | held-out-selected | 2 |" in f.read_text() for f in files)
    capsys.readouterr()
    assert tables.main(args + ["--check"]) == 0
    docs = tmp_path / "docs" / "results.md"
    docs.write_text(docs.read_text().replace("| full precision | held-out-selected | 2 |",
                                             "| full precision | held-out-selected | 3 |"))
    assert tables.main(args + ["--check"]) == 1
    captured = capsys.readouterr()
    assert f"{docs}: 1 marked sections; out of date" in captured.err
    assert f"{tmp_path / 'README.md'}: 1 marked sections, up to date" in captured.out
    with pytest.raises(ValueError, match="no such file: .*missing.md"):
        tables.main(["--file", str(tmp_path / "missing.md"), "--results-dir", str(results)])


def test_tables_and_a_benchmark_section_share_one_file(results, tmp_path):
    """BENCHMARKS.md holds sections a benchmark writes whole and a marked table launch.tables
    rebuilds: neither writer touches the other's part."""
    from benchmarks import markdown
    out = tmp_path / "BENCHMARKS.md"
    markdown.write_section(out, "## Step", "## Step\n\nmeasured 1\n")
    out.write_text(out.read_text() + "\n## Notes\n\n<!-- results:tiny -->\n<!-- /results -->\n")
    assert tables.main(["--file", str(out), "--results-dir", str(results)]) == 0
    markdown.write_section(out, "## Step", "## Step\n\nmeasured 2\n")
    text = out.read_text()
    assert "measured 2" in text and "measured 1" not in text
    assert tables.main(["--file", str(out), "--results-dir", str(results), "--check"]) == 0


def test_the_repository_documents_are_in_step_with_its_records(capsys):
    """Every marked table of README, BENCHMARKS.md and docs/ equals what results/ gives (the
    check CI runs; a table typed over, or a record changed without rebuilding, fails here)."""
    assert tables.main(["--check"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    for name in ("README.md", "BENCHMARKS.md", "results.md"):
        assert name + ":" in printed


def test_tables_draw_the_training_curves_of_a_seed(results, tmp_path):
    import shutil
    # A quantized record of seed 1: the tiny full-precision one with a ternary spec.
    copy = tmp_path / "results"
    shutil.copytree(results / "tiny" / "fp" / "s1", copy / "q" / "twn" / "s1")
    rec_file = copy / "q" / "twn" / "s1" / "record.json"
    rec = json.loads(rec_file.read_text())
    rec["spec"]["quant"].update(weight_bits=2, embed_bits=2)
    rec["name"] = "q/twn/s1"
    rec_file.write_text(json.dumps(rec))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:q curves=1 -->\n<!-- /results -->\n")
    assert tables.main(["--readme", str(readme), "--results-dir", str(copy), "--check"]) == 1
    assert not (copy / "q" / "training_curves_s1.png").exists()  # --check draws nothing
    assert tables.main(["--readme", str(readme), "--results-dir", str(copy)]) == 0
    figure = copy / "q" / "training_curves_s1.png"
    assert_readable_png(figure)
    assert "![training curves, seed 1](results/q/training_curves_s1.png)" in readme.read_text()
    page = tmp_path / "docs" / "results.md"  # the same marker one folder down links up to it
    page.parent.mkdir()
    page.write_text("<!-- results:q curves=1 -->\n<!-- /results -->\n")
    assert tables.main(["--file", str(page), "--results-dir", str(copy)]) == 0
    assert "![training curves, seed 1](../results/q/training_curves_s1.png)" in page.read_text()
    readme.write_text("<!-- results:q curves=7 -->\n<!-- /results -->\n")
    with pytest.raises(SystemExit):  # no record of seed 7: an error naming it
        common.run_guarded(tables.main, ["--readme", str(readme), "--results-dir", str(copy)])


def test_parity_prints_and_records_the_readme_figures(fixtures_dir, tmp_path, capsys):
    out = tmp_path / "parity" / "parity.json"
    assert parity.main(["--fixture", str(fixtures_dir / "minilm_hf_parity.npz"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    errors = json.loads(out.read_text())["errors"]
    assert f"hidden_states    {errors['hidden_states']:.1e}" in printed
    assert 0 < errors["hidden_states"] < 1e-4 and 0 < errors["attention_probs"] < 1e-4
    assert errors["pooler"] < 1e-4
    readme = tmp_path / "README.md"
    readme.write_text("- parity:\n  <!-- results:parity -->\n  old\n  <!-- /results -->\n")
    tables.main(["--readme", str(readme), "--results-dir", str(tmp_path)])
    assert f"  Max abs error {errors['hidden_states']:.1e} over every hidden state" in readme.read_text()


def test_a_pipeline_stage_is_recorded_under_its_description(runs, tmp_path):
    import shutil
    root, _, test = runs
    pipe = tmp_path / "pipe"
    shutil.copytree(root / "s1", pipe / "adaptive")
    (pipe / "pipeline_config.json").write_text(json.dumps({
        "pipeline": {"stages": ["teacher", "ternary", "adaptive"]},
        "stages": {"adaptive": {"description": "adaptive split at {budget_mb:.2f} MiB"}}}))
    out = tmp_path / "results"
    rec = record.record(pipe / "adaptive", "t/adaptive/s1", results_dir=out, test_file=str(test))[0]
    assert (rec["setting"], rec["order"]) == ("adaptive split at {budget_mb:.2f} MiB", 2)
    # The pipeline's report fills the description in; an explicit --setting still wins.
    (pipe / "results.json").write_text(json.dumps({"rows": [
        {"model": "adaptive", "description": "adaptive split at 3.40 MiB"}]}))
    rec = record.record(pipe / "adaptive", "t/adaptive/s1", results_dir=out, test_file=str(test))[0]
    assert rec["setting"] == "adaptive split at 3.40 MiB"
    rec = record.record(pipe / "adaptive", "t/adaptive/s1", setting="mine", results_dir=out,
                        test_file=str(test))[0]
    assert rec["setting"] == "mine"


def test_git_state_is_dirty_for_code_not_for_records_or_readme(tmp_path):
    import subprocess
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    (tmp_path / "results" / "t").mkdir(parents=True)
    for name in ("code.py", "README.md", "results/t/record.json"):
        (tmp_path / name).write_text("0\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert common.git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "README.md").write_text("rebuilt\n")  # what a sweep writes between its runs
    (tmp_path / "results" / "t" / "record.json").write_text("re-recorded\n")
    (tmp_path / "untracked.py").write_text("x\n")
    (tmp_path / "shared").symlink_to(tmp_path / "results")  # untracked links do not count either
    assert common.git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "code.py").write_text("1\n")
    assert common.git_state(tmp_path)["git_dirty"] is True


def test_records_name_no_path_of_the_machine(tmp_path):
    root = tmp_path / "checkout"
    rec = {"workdir": str(root / "runs" / "x"), "config": {"data_dir": str(tmp_path / "shared" / "glue"),
                                                          "seed": 3, "task": "mrpc"},
           "argv": ["launch.train", "relative/path"]}
    assert record.portable(rec, root) == {
        "workdir": "runs/x", "config": {"data_dir": "../shared/glue", "seed": 3, "task": "mrpc"},
        "argv": ["launch.train", "relative/path"]}


def test_tables_print_the_adaptive_split_of_a_recorded_pipeline(tmp_path):
    adaptive = {"budget_mb": 3.403, "size_no_split_mb": 2.891, "size_all_split_mb": 4.939,
                "chosen": ["encoder/layer_0/ffn/output", "encoder/layer_1/ffn/output"],
                "orders_right_after_split": {
                    "adaptive": {"split": 2, "dev": {"accuracy": 0.774}, "size_mb": 3.401},
                    "min": {"split": 3, "dev": {"accuracy": 0.7626}, "size_mb": 3.401}}}
    run = tmp_path / "results" / "pipe" / "s42"
    run.mkdir(parents=True)
    (run / "pipeline.json").write_text(json.dumps({"task": "sst-2", "main_metric": "accuracy",
                                                   "rows": [], "adaptive": adaptive}))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:pipe/s42 adaptive -->\ntyped\n<!-- /results -->\n")
    assert tables.main(["--readme", str(readme), "--results-dir", str(tmp_path / "results")]) == 0
    text = readme.read_text()
    assert "typed" not in text
    assert "budget 3.40 MiB (no split 2.89, all split 4.94); 2 matrices split." in text
    assert "| adaptive | 2 | 3.40 | 77.4 |" in text and "| min | 3 | 3.40 | 76.3 |" in text
    (run / "pipeline.json").write_text(json.dumps({"task": "sst-2", "main_metric": "accuracy", "rows": [],
                                                   "adaptive": None}))
    with pytest.raises(ValueError, match="results:pipe/s42 adaptive, but .*pipeline.json holds no adaptive split"):
        tables.main(["--readme", str(readme), "--results-dir", str(tmp_path / "results")])
    # The invocation's time, as its report says it; a pipeline recorded before reports kept it is named.
    readme.write_text("<!-- results:pipe/s42 run_time -->\ntyped\n<!-- /results -->\n")
    with pytest.raises(ValueError, match="results:pipe/s42 run_time, but .*pipeline.json holds no run time"):
        tables.main(["--readme", str(readme), "--results-dir", str(tmp_path / "results")])
    (run / "pipeline.json").write_text(json.dumps({"task": "sst-2", "main_metric": "accuracy", "rows": [],
                                                   "run_time": {"wall_seconds": 739.2, "compile_seconds": 291.4,
                                                                "stage_seconds": {"teacher": 110.6, "tws": 128.0}}}))
    assert tables.main(["--readme", str(readme), "--results-dir", str(tmp_path / "results")]) == 0
    assert readme.read_text().splitlines()[1] == (
        "From the first stage to this report, this invocation took 12:19 (m:ss), 4:51 of it compiling; "
        "by stage: teacher 1:51, tws 2:08; the rest writing the report.")
