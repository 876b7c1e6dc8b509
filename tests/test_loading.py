"""Tests for binarybert_jax.data.loading: a run's arrays from the shipped SST-2 slice through the
tokenized cache, the data directory and $GLUE_DIR, MNLI's two eval splits, bad sources, and the
tfds source (its clear error without the package; its arrays, through a stand-in
tensorflow_datasets package on sys.path, equal to the TSV source's)."""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

from binarybert_jax.data import encode, glue, loading, tasks

from conftest import CountingTokenizer

SLICE = pathlib.Path(__file__).resolve().parents[1] / "data" / "glue_slice"


def assert_arrays_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b) == set(encode.ARRAY_KEYS)
    for key in encode.ARRAY_KEYS:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(glue.GLUE_DIR_ENV, str(SLICE))
    assert loading.resolve_data_dir("") == SLICE
    assert loading.resolve_data_dir(str(tmp_path)) == tmp_path
    monkeypatch.delenv(glue.GLUE_DIR_ENV)
    with pytest.raises(ValueError) as info:
        loading.resolve_data_dir("")
    message = str(info.value)
    assert "--config.data_dir" in message and "$GLUE_DIR" in message
    assert "binarybert_jax.data.download.download_glue" in message


def test_eval_splits():
    assert loading.eval_splits(tasks.get_task("MNLI")) == ("dev_matched", "dev_mismatched")
    assert {loading.eval_splits(t) for t in glue.all_tasks() if t.name != "mnli"} == {("dev",)}


def test_tsv_on_the_slice_through_the_cache(tokenizer, tmp_path, monkeypatch):
    counting = CountingTokenizer(tokenizer)
    cache = tmp_path / "tokenized"
    train, evals = loading.load_task_data(tasks.get_task("sst2"), counting, data_dir=SLICE, max_length=0,
                                          cache_dir=cache, train_limit=300, eval_limit=100)
    assert list(evals) == ["dev"]
    assert train["input_ids"].shape == (300, 64)  # The task's default length.
    assert evals["dev"]["input_ids"].shape == (100, 64)
    assert train["labels"].dtype == np.int32
    # The arrays and cache files of encode.load_encoded_split, which train.load_data used.
    assert_arrays_equal(train, encode.load_encoded_split(tokenizer, tasks.get_task("sst-2"), "train",
                                                         data_dir=SLICE, limit=300))
    assert_arrays_equal(evals["dev"], encode.load_encoded_split(tokenizer, tasks.get_task("sst-2"), "dev",
                                                                data_dir=SLICE, limit=100))
    assert sorted(p.name.rsplit("-", 1)[0] for p in cache.glob("*.npz")) == [
        "sst-2-dev-L64", "sst-2-train-L64"]
    calls = counting.calls
    assert calls == 2  # One batch call per split.
    # Again, the GLUE root from $GLUE_DIR: served from the cache.
    monkeypatch.setenv(glue.GLUE_DIR_ENV, str(SLICE))
    again, again_evals = loading.load_task_data(tasks.get_task("sst-2"), counting, max_length=None,
                                                cache_dir=cache, train_limit=300, eval_limit=100)
    assert counting.calls == calls
    assert_arrays_equal(again, train)
    assert_arrays_equal(again_evals["dev"], evals["dev"])
    # No limits: the whole slice; another length: new arrays.
    train, evals = loading.load_task_data(tasks.get_task("sst-2"), counting, data_dir=SLICE, max_length=32,
                                          cache_dir=None)
    assert train["input_ids"].shape == (2000, 32) and evals["dev"]["input_ids"].shape == (872, 32)
    assert len(list(cache.glob("*.npz"))) == 2


def test_tsv_mnli_evaluates_matched_and_mismatched(tokenizer, tmp_path):
    spec = tasks.get_task("mnli")
    header = "\t".join(spec.layout.column_names)

    def rows(tag, n, columns):
        labels = spec.labels
        return [
            "\t".join([str(k)] + ["x"] * 7 + [f"{tag} premise {k}", f"hypothesis {k}"]
                      + ["y"] * (columns - 11) + [labels[k % 3]])
            for k in range(n)]

    (tmp_path / "MNLI").mkdir()
    for name, n, columns in (("train", 7, 12), ("dev_matched", 4, 16), ("dev_mismatched", 5, 16)):
        (tmp_path / "MNLI" / f"{name}.tsv").write_text(
            "\n".join([header] + rows(name, n, columns)) + "\n", encoding="utf-8")
    train, evals = loading.load_task_data(tasks.get_task("mnli"), tokenizer, data_dir=tmp_path, max_length=24,
                                          cache_dir=tmp_path / "cache", eval_limit=4)
    assert train["input_ids"].shape == (7, 24)
    assert list(evals) == ["dev_matched", "dev_mismatched"]
    assert [evals[s]["labels"].tolist() for s in evals] == [[0, 1, 2, 0], [0, 1, 2, 0]]
    # Each split read from its own file: the premises differ.
    assert not np.array_equal(evals["dev_matched"]["input_ids"],
                              evals["dev_mismatched"]["input_ids"])
    assert np.all(train["token_type_ids"].max(1) == 1)  # Pairs.


def test_tsv_missing_file_names_it(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="RTE/train.tsv"):
        loading.load_task_data(tasks.get_task("rte"), tokenizer, data_dir=tmp_path, max_length=0,
                               cache_dir=tmp_path / "cache")


def test_unknown_source_names_the_allowed_ones(tokenizer, tmp_path, monkeypatch):
    monkeypatch.delenv(glue.GLUE_DIR_ENV, raising=False)
    assert loading.SOURCES == ("tsv", "json", "tfds")
    counting = CountingTokenizer(tokenizer)
    with pytest.raises(ValueError, match="data source 'csv'; expected one of 'tsv', 'json', 'tfds'"):
        loading.load_task_data(tasks.get_task("sst-2"), counting, source="csv", max_length=0,
                               cache_dir=tmp_path / "cache")
    # Each kind of task names the sources it reads: GLUE's TSVs are not SQuAD's JSON.
    with pytest.raises(ValueError, match="sst-2 reads data source 'tsv' or 'tfds', not 'json'"):
        loading.load_task_data(tasks.get_task("sst-2"), counting, source="json", max_length=0,
                               cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="squad1 reads data source 'json' or 'tfds', not 'tsv'"):
        loading.load_task_data(tasks.get_task("squad1"), counting, source="tsv", max_length=0,
                               cache_dir=tmp_path / "cache")
    assert counting.calls == 0 and not (tmp_path / "cache").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is not None,
                    reason="tensorflow_datasets is installed")
def test_tfds_without_the_package_fails_before_any_work(tokenizer, tmp_path, monkeypatch):
    monkeypatch.delenv(glue.GLUE_DIR_ENV, raising=False)
    counting = CountingTokenizer(tokenizer)
    with pytest.raises(ImportError) as info:
        loading.load_task_data(tasks.get_task("sst-2"), counting, source="tfds", max_length=0,
                               cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "data source 'tfds' needs tensorflow-datasets" in message
    assert "pip install tensorflow-datasets tensorflow" in message
    assert counting.calls == 0 and not (tmp_path / "cache").exists()
    with pytest.raises(ImportError, match="needs tensorflow-datasets"):
        loading.check_source("tfds")
    loading.check_source("tsv")


# A stand-in for tensorflow_datasets with the two calls tfds_source makes: load() returns the
# records the test wrote as JSON (strings where tfds has bytes), as_numpy() yields them as bytes.
_FAKE_TFDS = '''
import json, os

def load(name, split, data_dir=None, shuffle_files=False):
    path = os.path.join(data_dir, name.replace("/", "_") + "." + split + ".json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)

def as_numpy(dataset):
    for record in dataset:
        yield {k: v.encode() if isinstance(v, str) else v for k, v in record.items()}
'''


@pytest.fixture
def stand_in_tfds(tmp_path, monkeypatch):
    """A directory put first on sys.path holding a ``tensorflow_datasets`` stand-in; the test
    adds ``tensorflow`` beside it where it wants it. Real modules of those names are hidden for
    the test and restored after it."""
    root = tmp_path / "site"
    (root / "tensorflow_datasets").mkdir(parents=True)
    (root / "tensorflow_datasets" / "__init__.py").write_text(_FAKE_TFDS)
    names = ("tensorflow_datasets", "tensorflow")
    for name in names:
        if name in sys.modules:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in names:
        sys.modules.pop(name, None)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="tensorflow is installed")
def test_tfds_without_tensorflow_names_it(stand_in_tfds, tokenizer, tmp_path):
    with pytest.raises(ImportError) as info:
        loading.load_task_data(tasks.get_task("sst-2"), tokenizer, source="tfds", max_length=0,
                               cache_dir=tmp_path / "cache")
    assert str(info.value).startswith("data source 'tfds' needs tensorflow, which is not installed")


def test_tfds_source_matches_the_tsv_source(stand_in_tfds, tokenizer, tmp_path):
    (stand_in_tfds / "tensorflow").mkdir()
    (stand_in_tfds / "tensorflow" / "__init__.py").write_text("")
    tfds_dir = tmp_path / "tfds"
    tfds_dir.mkdir()
    for split, tfds_split in (("train", "train"), ("dev", "validation")):
        examples = glue.read_examples(SLICE, tasks.get_task("sst-2"), split)
        records = [{"sentence": ex.text_a, "label": ex.label, "idx": i}
                   for i, ex in enumerate(examples)]
        # Stored out of order: tfds_source sorts by idx, the TSV's row order.
        (tfds_dir / f"glue_sst2.{tfds_split}.json").write_text(json.dumps(records[::-1]))

    counting = CountingTokenizer(tokenizer)
    cache = tmp_path / "cache"
    limits = dict(train_limit=300, eval_limit=100)
    train, evals = loading.load_task_data(tasks.get_task("sst-2"), counting, source="tfds", data_dir=tfds_dir,
                                          max_length=0, cache_dir=cache, **limits)
    tsv_train, tsv_evals = loading.load_task_data(tasks.get_task("sst-2"), tokenizer, data_dir=SLICE,
                                                  max_length=0, cache_dir=None, **limits)
    assert_arrays_equal(train, tsv_train)
    assert list(evals) == ["dev"]
    assert_arrays_equal(evals["dev"], tsv_evals["dev"])
    # Its own cache files, named for the source, read back on the next run.
    assert sorted(p.name.rsplit("-", 1)[0] for p in cache.glob("*.npz")) == [
        "tfds-sst-2-dev-L64", "tfds-sst-2-train-L64"]
    calls = counting.calls
    loading.load_task_data(tasks.get_task("sst-2"), counting, source="tfds", data_dir=tfds_dir, max_length=0,
                           cache_dir=cache, **limits)
    assert counting.calls == calls
