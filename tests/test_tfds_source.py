"""Tests for binarybert_jax.data.tfds_source: the record mapping and split names, which need no
TensorFlow, and the clear error when tensorflow-datasets is not installed."""

import importlib.util

import numpy as np
import pytest

from binarybert_jax.data import glue, tasks, tfds_source


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is not None,
                    reason="tensorflow_datasets is installed")
def test_tfds_missing_raises_clear_import_error():
    with pytest.raises(ImportError, match="pip install tensorflow tensorflow-datasets"):
        tfds_source.read_examples_tfds(tasks.get_task("sst-2"), "dev")


def test_tfds_tables_cover_every_task():
    assert set(tfds_source.TFDS_CONFIGS) == set(glue.TASK_NAMES)
    assert set(tfds_source.TFDS_TEXT_FEATURES) == set(glue.TASK_NAMES)
    for task, names in tfds_source.TFDS_LABEL_NAMES.items():
        assert sorted(names) == sorted(tasks.get_task(task).labels)
    assert tfds_source.tfds_split(tasks.get_task("mnli"), "dev") == "validation_matched"
    assert tfds_source.tfds_split(tasks.get_task("mnli"), "test_mismatched") == "test_mismatched"
    assert tfds_source.tfds_split(tasks.get_task("rte"), "dev") == "validation"


@pytest.mark.parametrize("task", glue.TASK_NAMES)
def test_tfds_record_to_example(task):
    spec = tasks.get_task(task)
    first, second = tfds_source.TFDS_TEXT_FEATURES[task]
    record = {first: b"first text", "idx": np.int32(7),
              "label": np.float32(2.5) if spec.is_regression else np.int64(1)}
    if second is not None:
        record[second] = "second text".encode()
    example = tfds_source.record_to_example(spec, "train", record)
    assert example.guid == f"{spec.name}-train-7"
    assert example.text_a == "first text"
    assert example.text_b == ("second text" if spec.is_pair else None)
    assert spec.is_pair == (second is not None)
    if spec.is_regression:
        assert example.label == 2.5
    elif task == "mnli":
        assert spec.labels[example.label] == "neutral"  # tfds: entailment, neutral, contradiction.
    elif task in ("qnli", "rte"):
        assert spec.labels[example.label] == "not_entailment"
    else:
        assert example.label == 1
    record["label"] = np.float32(-1) if spec.is_regression else np.int64(-1)
    assert tfds_source.record_to_example(spec, "test", record).label is None
