"""GLUE and SQuAD through TensorFlow Datasets, for machines where the TSVs/JSON files are not at hand.

Optional: needs ``tensorflow`` and ``tensorflow-datasets``, which the project does not depend on.
Records become the same :class:`~binarybert_jax.data.glue.Example` objects the TSV reader gives,
with labels in the TSV's class order (tfds orders MNLI's classes differently, so labels are
mapped by name, not copied). SQuAD records become the official JSON layout that
``squad.examples_from_dataset`` and the official metrics read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType

from binarybert_jax.data import glue

# Our task name -> tfds builder config, text features and (for named labels) tfds class names.
TFDS_CONFIGS: Mapping[str, str] = MappingProxyType({
    "cola": "cola", "sst-2": "sst2", "mrpc": "mrpc", "sts-b": "stsb", "qqp": "qqp",
    "mnli": "mnli", "qnli": "qnli", "rte": "rte", "wnli": "wnli",
})

TFDS_TEXT_FEATURES: Mapping[str, tuple[str, str | None]] = MappingProxyType({
    "cola": ("sentence", None),
    "sst-2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "sts-b": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
})

# tfds class names where the TSVs use words; the other tasks' classes are 0/1 in both, same
# order (e.g. WNLI: 0 not_entailment, 1 entailment).
TFDS_LABEL_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
})

# Our split names -> tfds split names.
_TFDS_SPLITS = {
    "train": "train", "dev": "validation", "test": "test",
    "dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched",
    "test_matched": "test_matched", "test_mismatched": "test_mismatched",
}


def tfds_split(task: glue.TaskSpec, split: str) -> str:
    """The tfds split name of one of our splits (MNLI's ``dev`` is ``validation_matched``)."""
    split = {"validation": "dev"}.get(split, split)
    if split not in task.split_files:
        raise ValueError(f"Unknown split {split!r} for {task.name}; expected one of "
                         f"{', '.join(task.splits)}.")
    if task.name == "mnli" and split in ("dev", "test"):
        split += "_matched"
    return _TFDS_SPLITS[split]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def record_to_example(task: glue.TaskSpec, split: str, record: Mapping[str, object]
                      ) -> glue.Example:
    """Converts one tfds GLUE record (as from ``tfds.as_numpy``) to an Example.

    Args:
      task: the task's spec (``tasks.get_task``).
      split: our split name, used in the guid.
      record: a dict with the task's text features (bytes or str), ``label`` (int, or float for
        STS-B; -1 on test splits) and ``idx``.

    Returns:
      The Example, label None where tfds has -1.

    Raises:
      ValueError: a label outside the task's classes.
    """
    first, second = TFDS_TEXT_FEATURES[task.name]
    raw_label = record["label"]
    label: int | float | None
    if task.is_regression:
        label = float(raw_label)
        # STS-B scores lie in [0, 5]; tfds marks the hidden test scores with -1.
        if label == -1.0:
            label = None
    else:
        label = int(raw_label)
        if label == -1:
            label = None
        else:
            names = TFDS_LABEL_NAMES.get(task.name)
            if not 0 <= label < (len(names) if names else task.num_labels):
                raise ValueError(f"Label {label} out of range for {task.name}.")
            if names is not None:
                label = task.labels.index(names[label])
    return glue.Example(
        guid=f"{task.name}-{split}-{int(record['idx'])}",
        text_a=_text(record[first]),
        text_b=_text(record[second]) if second is not None else None,
        label=label)


def read_examples_tfds(task: glue.TaskSpec, split: str,
                       data_dir: str | os.PathLike | None = None) -> list[glue.Example]:
    """Reads ``glue/<config>`` with tensorflow_datasets (downloading it if needed).

    Args:
      task: the task's spec (``tasks.get_task``).
      split: our split name (``train``, ``dev``, ``test``, MNLI's ``dev_mismatched`` ...).
      data_dir: tfds data directory; None means tfds's default (``~/tensorflow_datasets``).

    Returns:
      The examples in tfds's order (sorted by ``idx``, which is the TSV's row order).

    Raises:
      ImportError: tensorflow-datasets (or TensorFlow) is not installed.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "Reading GLUE through TensorFlow Datasets needs TensorFlow and tensorflow-datasets: "
            "pip install tensorflow tensorflow-datasets (or use the GLUE TSVs via "
            "$GLUE_DIR).") from e
    dataset = tfds.load(f"glue/{TFDS_CONFIGS[task.name]}", split=tfds_split(task, split),
                        data_dir=None if data_dir is None else os.fspath(data_dir),
                        shuffle_files=False)
    examples = [record_to_example(task, split, record) for record in tfds.as_numpy(dataset)]
    examples.sort(key=lambda ex: int(ex.guid.rsplit("-", 1)[1]))
    return examples




# ---- SQuAD --------------------------------------------------------------------------------------
SQUAD_TFDS_CONFIGS: Mapping[str, str] = MappingProxyType({"1.1": "squad/v1.1", "2.0": "squad/v2.0"})


def squad_records_to_data(records) -> list[dict]:
    """tfds ``squad`` records (``id``, ``title``, ``context``, ``question``, ``answers`` with
    ``text`` and ``answer_start`` lists, v2.0's ``is_impossible``) as the official JSON's ``data``
    list: articles by title and paragraphs by context, in first-seen order."""
    articles: dict[str, dict] = {}
    for r in records:
        title, context = _text(r.get("title", "")), _text(r["context"])
        article = articles.setdefault(title, {"title": title, "paragraphs": [], "_by_context": {}})
        paragraph = article["_by_context"].get(context)
        if paragraph is None:
            paragraph = article["_by_context"][context] = {"context": context, "qas": []}
            article["paragraphs"].append(paragraph)
        answers = r.get("answers", {})
        qa = {"id": _text(r["id"]), "question": _text(r["question"]),
              "answers": [{"text": _text(t), "answer_start": int(s)}
                          for t, s in zip(answers.get("text", ()), answers.get("answer_start", ()))]}
        if "is_impossible" in r:
            qa["is_impossible"] = bool(r["is_impossible"])
        paragraph["qas"].append(qa)
    for article in articles.values():
        del article["_by_context"]
    return list(articles.values())


def read_squad_tfds(version: str, split: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """SQuAD ``version``'s ``train`` or ``dev`` split through tensorflow-datasets, in the official
    layout (``squad_records_to_data``).

    Raises:
      ImportError: tensorflow-datasets (or TensorFlow) is not installed; the message names them.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "Reading SQuAD through TensorFlow Datasets needs TensorFlow and tensorflow-datasets: "
            "pip install tensorflow tensorflow-datasets (or use the official JSON files via "
            "--config.data_dir or $SQUAD_DIR).") from e
    dataset = tfds.load(SQUAD_TFDS_CONFIGS[version], split={"dev": "validation"}.get(split, split),
                        data_dir=None if data_dir is None else os.fspath(data_dir), shuffle_files=False)
    return squad_records_to_data(tfds.as_numpy(dataset))


__all__ = ["SQUAD_TFDS_CONFIGS", "TFDS_CONFIGS", "TFDS_LABEL_NAMES", "TFDS_TEXT_FEATURES",
           "read_examples_tfds", "read_squad_tfds", "record_to_example", "squad_records_to_data",
           "tfds_split"]
