"""Tests for binarybert_jax.data.glue: task specs, the TSV reader on the shipped SST-2 slice and
the MRPC / STS-B test slices (tests/fixtures/glue), on the full GLUE files (skipped, naming the
file, where ../shared lacks them), on files at any path and on broken ones."""

import logging
import pathlib
import re
import shutil

import pytest

from binarybert_jax.data import glue, tasks

# The SST-2 slice shipped in the repository (2,000 train rows, the full 872-row dev set).
SLICE = pathlib.Path(__file__).resolve().parents[1] / "data" / "glue_slice"
# The full GLUE files sit beside the repository checkout, never inside it.
SHARED_GLUE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"

# Rows per split of the shared files (../shared/data/README.md beside the checkout); test labels
# are hidden.
# MRPC's train.tsv holds 3,667 data rows (3,668 lines with the header), one fewer than the
# README's table and the 3,668 of the GLUE release: the file is what it is (its SHA-256 matches
# data/SHA256SUMS), so the count asserted is the file's.
REAL_COUNTS = {
    "cola": {"train": 8551, "dev": 1043, "test": 1063},
    "sst-2": {"train": 67349, "dev": 872, "test": 1821},
    "mrpc": {"train": 3667, "dev": 408, "test": 1725},
    "sts-b": {"train": 5749, "dev": 1500, "test": 1379},
}


def shared_glue(*files: str) -> pathlib.Path:
    """The full GLUE root, or a skip naming the files (relative to it) that are missing."""
    missing = [str(SHARED_GLUE / f) for f in files if not (SHARED_GLUE / f).is_file()]
    if missing:
        pytest.skip(f"needs the full GLUE files, missing: {', '.join(missing)}")
    return SHARED_GLUE


def write_tsv(path: pathlib.Path, lines: list[str], *, bom: bool = False) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "".join(line + "\n" for line in lines),
                    encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# Task specs.
# ------------------------------------------------------------------------------------------

def test_task_specs_cover_glue():
    assert glue.TASK_NAMES == ("cola", "sst-2", "mrpc", "sts-b", "qqp", "mnli", "qnli", "rte",
                               "wnli")
    directories = {spec.name: spec.directory for spec in glue.all_tasks()}
    assert directories == {"cola": "CoLA", "sst-2": "SST-2", "mrpc": "MRPC", "sts-b": "STS-B",
                           "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE",
                           "wnli": "WNLI"}
    for spec in glue.all_tasks():
        assert spec.main_metric in spec.metric_names
        assert spec.max_seq_length == (64 if spec.name in ("cola", "sst-2") else 128)
        if spec.is_regression:
            assert spec.labels is None and spec.num_labels == 1
        else:
            assert len(spec.labels) == spec.num_labels
        assert spec.test_layout.label is None and spec.layout.label is not None
        for layout in (spec.layout, spec.test_layout):
            assert len(layout.column_names) == layout.num_columns[0]
    assert tasks.get_task("mnli").split_files["dev"] == "dev_matched"
    assert tasks.get_task("mnli").split_files["test_mismatched"] == "test_mismatched"


@pytest.mark.parametrize("alias, name", [
    ("SST-2", "sst-2"), ("sst2", "sst-2"), ("Sst_2", "sst-2"), ("stsb", "sts-b"),
    ("STS-B", "sts-b"), ("CoLA", "cola"), ("MNLI", "mnli"), ("qqp", "qqp")])
def test_get_task_aliases(alias, name):
    assert tasks.get_task(alias).name == name


def test_get_task_unknown_lists_names():
    with pytest.raises(ValueError, match="sst-2.*sts-b.*wnli"):
        tasks.get_task("squad")

# ------------------------------------------------------------------------------------------
# Reading the shipped slice and the full GLUE files.
# ------------------------------------------------------------------------------------------

def test_slice_row_counts():
    counts = {"train": 2000, "dev": 872}
    for split, count in counts.items():
        report = glue.read_split(SLICE, tasks.get_task("sst-2"), split)
        assert len(report.examples) == count, split
        assert report.num_skipped == 0 and report.header_found
        assert {ex.label for ex in report.examples} == {0, 1}
        assert all(ex.text_b is None and ex.text_a.strip() for ex in report.examples)
    assert glue.read_examples(SLICE, tasks.get_task("sst-2"), "dev")[0] == glue.Example(
        "sst-2-dev-0", "it 's a charming and often affecting journey . ", None, 1)


@pytest.mark.parametrize("task", sorted(REAL_COUNTS))
def test_real_row_counts(task):
    spec = tasks.get_task(task)
    root = shared_glue(*(f"{spec.directory}/{split}.tsv" for split in REAL_COUNTS[task]))
    for split, count in REAL_COUNTS[task].items():
        report = glue.read_split(root, spec, split)
        assert len(report.examples) == count, (task, split)
        assert report.num_skipped == 0
        assert report.header_found == spec.layout_for(split).has_header
        labels = [ex.label for ex in report.examples]
        if split == "test":
            assert all(label is None for label in labels)
        elif task == "sts-b":
            assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
        else:
            assert set(labels) == {0, 1}


def test_mrpc_bom_and_quotes(glue_dir):
    # The shipped slices keep the files' first lines byte for byte: the byte-order mark, and
    # quotes opening fields in both splits.
    train = glue.read_examples(glue_dir, tasks.get_task("mrpc"), "train")
    first = train[0]
    assert first.label == 1 and first.guid == "mrpc-train-0"
    assert first.text_a.startswith('Amrozi accused his brother , whom he called " the witness "')
    assert first.text_b.startswith('Referring to him as only " the witness " , Amrozi')
    # A quote opening a field must not swallow the tab after it (csv's default dialect would).
    assert train[0].text_b.endswith("distorting his evidence .")
    assert not any("\ufeff" in ex.text_a or "\t" in ex.text_a or "\t" in ex.text_b
                   for ex in train)
    dev = glue.read_examples(glue_dir, tasks.get_task("MRPC"), "dev")
    assert dev[0].text_b.startswith('" The foodservice pie business')


def test_mrpc_test_file():
    test = glue.read_examples(shared_glue("MRPC/test.tsv"), tasks.get_task("mrpc"), "test")
    assert test[0].guid == "mrpc-test-0" and test[0].text_b.startswith("Current Chief")


def test_cola_has_no_header():
    report = glue.read_split(shared_glue("CoLA/train.tsv"), tasks.get_task("cola"), "train")
    assert not report.header_found
    first = report.examples[0]
    assert first.text_a == "Our friends won't buy this analysis, let alone the next one we propose."
    assert first.label == 1 and first.text_b is None
    assert sum('"' in ex.text_a for ex in report.examples) == 2


def test_stsb_columns(glue_dir):
    dev = glue.read_examples(glue_dir, tasks.get_task("stsb"), "dev")
    assert dev[0] == glue.Example("sts-b-dev-0", "A man with a hard hat is dancing.",
                                  "A man wearing a hard hat is dancing.", 5.0)
    assert dev[1].label == pytest.approx(4.75)


def test_task_directory_accepted_as_data_dir():
    assert len(glue.read_examples(SLICE / "SST-2", tasks.get_task("sst-2"), "dev")) == 872


def test_glue_dir_env(monkeypatch):
    monkeypatch.delenv(glue.GLUE_DIR_ENV, raising=False)
    assert glue.glue_dir() is None
    with pytest.raises(FileNotFoundError, match="GLUE_DIR"):
        glue.read_examples(None, tasks.get_task("sst-2"), "dev")
    monkeypatch.setenv(glue.GLUE_DIR_ENV, str(SLICE))
    assert glue.glue_dir() == SLICE
    assert len(glue.read_examples(None, tasks.get_task("sst-2"), "dev")) == 872


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        glue.read_examples(tmp_path, tasks.get_task("rte"), "train")
    assert str(tmp_path / "RTE" / "train.tsv") in str(info.value)
    assert "GLUE_DIR" in str(info.value)
    assert "binarybert_jax.data.download.download_glue" in str(info.value)


def test_unknown_split():
    with pytest.raises(ValueError, match="dev_mismatched"):
        glue.split_path("/nonexistent", tasks.get_task("mnli"), "valid")


# ------------------------------------------------------------------------------------------
# Layouts of the tasks not in shared data, and broken files.
# ------------------------------------------------------------------------------------------

def _synthetic_rows(spec: glue.TaskSpec, layout: glue.TsvLayout, n_columns: int, n: int
                    ) -> tuple[list[str], list[tuple]]:
    """Rows in ``layout`` with known texts and labels, and the (text_a, text_b, label) expected."""
    rows, expected = [], []
    for k in range(n):
        fields = [f"x{k}"] * n_columns
        if layout.index is not None:
            fields[layout.index] = str(k)
        fields[layout.text_a] = f'first "sentence" {k}'
        text_b = None
        if layout.text_b is not None:
            text_b = fields[layout.text_b] = f"second sentence {k}"
        label = None
        if layout.label is not None:
            if spec.is_regression:
                fields[layout.label], label = f"{k + 0.5}", k + 0.5
            else:
                label = k % spec.num_labels
                fields[layout.label] = spec.labels[label]
        rows.append("\t".join(fields))
        expected.append((f'first "sentence" {k}', text_b, label))
    return rows, expected


@pytest.mark.parametrize("task", glue.TASK_NAMES)
@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_every_task_layout(tmp_path, task, split):
    spec = tasks.get_task(task)
    layout = spec.layout_for(split)
    rows, expected = _synthetic_rows(spec, layout, layout.num_columns[0], 5)
    header = ["\t".join(layout.column_names)] if layout.has_header else []
    write_tsv(tmp_path / spec.directory / (spec.split_files[split] + ".tsv"), header + rows)
    examples = glue.read_examples(tmp_path, spec, split)
    assert [(ex.text_a, ex.text_b, ex.label) for ex in examples] == expected
    assert examples[3].guid == f"{spec.name}-{split}-3"


def test_mnli_dev_rows_are_longer(tmp_path):
    # MNLI dev rows carry five annotator labels before the gold label: 16 columns, not 12.
    spec = tasks.get_task("mnli")
    header = "\t".join(spec.layout.column_names[:10] + tuple(f"label{i}" for i in range(1, 6))
                       + ("gold_label",))
    rows, expected = _synthetic_rows(spec, spec.layout, 16, 4)
    write_tsv(tmp_path / "MNLI" / "dev_mismatched.tsv", [header] + rows)
    examples = glue.read_examples(tmp_path, tasks.get_task("mnli"), "dev_mismatched")
    assert [(ex.text_a, ex.text_b, ex.label) for ex in examples] == expected
    assert [ex.label for ex in examples] == [0, 1, 2, 0]  # contradiction, entailment, neutral
    with pytest.raises(FileNotFoundError, match="dev_matched.tsv"):
        glue.read_examples(tmp_path, tasks.get_task("mnli"), "dev")


def test_header_missing_or_unexpected(tmp_path):
    # SST-2 without its header row: no data row is lost.
    write_tsv(tmp_path / "SST-2" / "dev.tsv", ["good movie\t1", "bad movie\t0"])
    report = glue.read_split(tmp_path, tasks.get_task("sst-2"), "dev")
    assert not report.header_found
    assert [ex.label for ex in report.examples] == [1, 0]
    # CoLA with a header it normally lacks, and Windows line ends.
    path = tmp_path / "CoLA" / "dev.tsv"
    path.parent.mkdir()
    path.write_bytes(b"source\tlabel\tmark\tsentence\r\nx\t0\t*\tBad sentence.\r\n\r\n")
    report = glue.read_split(tmp_path, tasks.get_task("cola"), "dev")
    assert report.header_found
    assert report.examples == [glue.Example("cola-dev-0", "Bad sentence.", None, 0)]


def test_malformed_rows_raise_with_file_and_line(tmp_path):
    path = write_tsv(tmp_path / "SST-2" / "train.tsv", [
        "sentence\tlabel", "fine\t1", "a row with no label", "unknown label\t7", "also fine\t0",
    ])
    with pytest.raises(ValueError) as info:
        glue.read_examples(tmp_path, tasks.get_task("sst-2"), "train")
    assert f"{path}:3:" in str(info.value)
    assert "expected 2 tab-separated columns, found 1" in str(info.value)


def test_malformed_rows_skipped_and_counted(tmp_path, caplog):
    write_tsv(tmp_path / "SST-2" / "train.tsv", [
        "sentence\tlabel", "fine\t1", "a row with no label", "unknown label\t7", "also fine\t0",
    ])
    report = glue.read_split(tmp_path, tasks.get_task("sst-2"), "train", skip_malformed=True)
    assert [ex.text_a for ex in report.examples] == ["fine", "also fine"]
    assert [row.line for row in report.skipped] == [3, 4]
    assert "unknown label '7'" in report.skipped[1].reason
    assert report.num_skipped == 2
    with caplog.at_level(logging.WARNING, logger="binarybert_jax.data.glue"):
        examples = glue.read_examples(tmp_path, tasks.get_task("sst-2"), "train", skip_malformed=True)
    assert len(examples) == 2
    assert "skipped 2 malformed row(s)" in caplog.text


def test_bad_score_and_bad_utf8(tmp_path):
    header = "\t".join(tasks.get_task("sts-b").layout.column_names)
    path = write_tsv(tmp_path / "STS-B" / "dev.tsv",
                     [header, "0\tg\tf\ty\t0\tn\tn\tA.\tB.\tfive"])
    with pytest.raises(ValueError, match=f"{path}:2: score 'five' is not a number"):
        glue.read_examples(tmp_path, tasks.get_task("sts-b"), "dev")
    path.write_bytes(header.encode() + b"\n0\tg\tf\ty\t0\tn\tn\t\xff\tB.\t1.0\n")
    with pytest.raises(ValueError, match=f"{path}:2: not valid UTF-8"):
        glue.read_examples(tmp_path, tasks.get_task("sts-b"), "dev")




# ------------------------------------------------------------------------------------------
# read_tsv: a file at any path, its layout from the split argument.
# ------------------------------------------------------------------------------------------

def test_read_tsv_reads_a_renamed_slice_file(tmp_path):
    renamed = tmp_path / "held out" / "reviews.txt"
    renamed.parent.mkdir()
    shutil.copyfile(SLICE / "SST-2" / "dev.tsv", renamed)
    report = glue.read_tsv(renamed, tasks.get_task("sst2"), "dev")
    assert report.path == renamed and report.header_found and report.num_skipped == 0
    assert report.examples == glue.read_examples(SLICE, tasks.get_task("sst-2"), "dev")
    assert len(report.examples) == 872
    # "validation" is the dev split under tfds's and Hugging Face's name.
    assert glue.read_tsv(renamed, tasks.get_task("sst-2"), "validation").examples == report.examples


def test_read_tsv_renamed_mrpc_files(tmp_path):
    root = shared_glue("MRPC/dev.tsv", "MRPC/test.tsv")
    dev, test = tmp_path / "paraphrases.tsv", tmp_path / "unlabelled_pairs.tsv"
    shutil.copyfile(root / "MRPC" / "dev.tsv", dev)
    shutil.copyfile(root / "MRPC" / "test.tsv", test)
    examples = glue.read_tsv(dev, tasks.get_task("mrpc"), "dev").examples
    assert len(examples) == 408 and examples == glue.read_examples(root, tasks.get_task("mrpc"), "dev")
    unlabelled = glue.read_tsv(test, tasks.get_task("mrpc"), "test").examples
    assert len(unlabelled) == 1725 and all(ex.label is None for ex in unlabelled)
    # MRPC's dev and test layouts differ (quality label vs index in the first column): the
    # split argument picks the layout, and the other file's header is refused by name.
    with pytest.raises(ValueError, match=re.escape(f"{test}:1: this is the header of a mrpc test")):
        glue.read_tsv(test, tasks.get_task("mrpc"), "dev")
    with pytest.raises(ValueError, match=re.escape(f"{dev}:1: this is the header of a mrpc train")):
        glue.read_tsv(dev, tasks.get_task("mrpc"), "test", skip_malformed=True)


def test_read_tsv_split_picks_the_layout(tmp_path):
    spec = tasks.get_task("mrpc")
    dev_rows, dev_expected = _synthetic_rows(spec, spec.layout, 5, 4)
    test_rows, test_expected = _synthetic_rows(spec, spec.test_layout, 5, 4)
    dev = write_tsv(tmp_path / "a.tsv", ["\t".join(spec.layout.column_names)] + dev_rows,
                    bom=True)
    test = write_tsv(tmp_path / "b", ["\t".join(spec.test_layout.column_names)] + test_rows)
    assert [(ex.text_a, ex.text_b, ex.label) for ex in glue.read_tsv(dev, spec, "dev").examples
            ] == dev_expected
    report = glue.read_tsv(test, spec, "test")
    assert [(ex.text_a, ex.text_b, ex.label) for ex in report.examples] == test_expected
    assert [ex.guid for ex in report.examples] == [f"mrpc-test-{k}" for k in range(4)]
    with pytest.raises(ValueError, match="header of a mrpc test file.*read as 'dev'"):
        glue.read_tsv(test, spec, "dev")
    with pytest.raises(ValueError, match="header of a mrpc train/dev file.*read as 'test'"):
        glue.read_tsv(dev, spec, "test")
    # Without a header the reader cannot tell: test rows' indices 0 and 1 pass for labels, and
    # only the third row's index fails as one.
    headerless = write_tsv(tmp_path / "c.tsv", test_rows)
    with pytest.raises(ValueError, match=re.escape(f"{headerless}:3: unknown label '2'")):
        glue.read_tsv(headerless, spec, "dev")


def test_read_tsv_errors_name_the_file(tmp_path):
    absent = tmp_path / "absent.tsv"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{absent}: no such sst-2 dev TSV")):
        glue.read_tsv(tmp_path / "absent.tsv", tasks.get_task("sst-2"), "dev")
    path = write_tsv(tmp_path / "x.txt", ["sentence\tlabel", "fine\t1", "no label here"])
    with pytest.raises(ValueError, match="dev_matched"):
        glue.read_tsv(path, tasks.get_task("mnli"), "valid")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: expected 2 tab-separated columns")):
        glue.read_tsv(path, tasks.get_task("sst-2"), "train")
    report = glue.read_tsv(path, tasks.get_task("sst-2"), "train", skip_malformed=True)
    assert [ex.text_a for ex in report.examples] == ["fine"]
    assert report.skipped == (glue.MalformedRow(3, "expected 2 tab-separated columns, found 1"),)
