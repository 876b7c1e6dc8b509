"""GLUE tasks in the official TSV layout: task specifications and a strict reader.

The files are the ones GLUE's ``download_glue_data.py`` produces: one directory per task under a
root (``$GLUE_DIR``), e.g. ``$GLUE_DIR/SST-2/{train,dev,test}.tsv`` and, for MNLI,
``dev_matched.tsv`` / ``dev_mismatched.tsv`` / ``test_matched.tsv`` / ``test_mismatched.tsv``.

Every fact about a task (directory, columns, labels, metrics, which metric picks the best
checkpoint) lives in its :class:`TaskSpec`, so the reader, the encoder and ``metrics`` agree.

The reader is strict by default: a row with the wrong number of columns, an unknown label or an
unparsable score raises a ``ValueError`` naming the file and its 1-based line number. With
``skip_malformed=True`` such rows are skipped, and :func:`read_tsv` reports each one in its
:class:`ReadReport` (:func:`read_examples` logs a warning with the count).

:func:`read_tsv` reads a file at any path with the layout of the split it is told;
:func:`read_split` and :func:`read_examples` find the file under a GLUE root first. Fetching the
files is ``binarybert_jax.data.download``'s job.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
from collections.abc import Mapping
from types import MappingProxyType

logger = logging.getLogger(__name__)

GLUE_DIR_ENV = "GLUE_DIR"

# Named in messages about missing files (the reader does not import the downloader).
_DOWNLOAD_FUNCTION = "binarybert_jax.data.download.download_glue"

# Header cells that name a label column in TSVs we know of; used to recognise a header row in a
# file whose layout says it has none (e.g. a CoLA file someone gave a header).
_LABEL_HEADER_NAMES = frozenset({"label", "gold_label", "quality", "score", "is_duplicate"})


@dataclasses.dataclass(frozen=True)
class TsvLayout:
    """Where the fields of one kind of GLUE TSV file are.

    Column indices are 0-based; a negative index counts from the end of the row (MNLI's gold
    label is the last column, and train and dev rows have different lengths).

    Attributes:
      num_columns: the column counts a well-formed row may have.
      text_a: column of the first sentence.
      text_b: column of the second sentence, or None for single-sentence tasks.
      label: column of the label or score, or None for unlabeled (test) files.
      index: column holding the row's id (used in ``Example.guid``), or None.
      column_names: the names of the columns; this is the header row when ``has_header``.
      has_header: whether the official file starts with a header row.
    """

    num_columns: tuple[int, ...]
    text_a: int
    text_b: int | None
    label: int | None
    index: int | None
    column_names: tuple[str, ...]
    has_header: bool


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything the pipeline needs to know about one GLUE task.

    Attributes:
      name: canonical lower-case name (``"sst-2"``, ``"sts-b"``, ...).
      directory: the task's directory under the GLUE root (``"SST-2"``).
      labels: label strings as they appear in the TSVs, in class-id order; None for regression.
      is_regression: True for STS-B (a score in [0, 5]).
      num_labels: number of classes (1 for regression: the model has one output).
      max_seq_length: default padded sequence length (64 for CoLA/SST-2, 128 otherwise, as in
        the BinaryBERT/TernaryBERT GLUE scripts).
      metric_names: the keys ``metrics.glue_metrics`` returns for this task.
      main_metric: the key that selects the best checkpoint.
      layout: column layout of the train and dev files.
      test_layout: column layout of the test files (index column, no labels).
      split_files: split name -> file stem (``"dev"`` -> ``"dev_matched"`` for MNLI).
    """

    name: str
    directory: str
    labels: tuple[str, ...] | None
    is_regression: bool
    num_labels: int
    max_seq_length: int
    metric_names: tuple[str, ...]
    main_metric: str
    layout: TsvLayout
    test_layout: TsvLayout
    split_files: Mapping[str, str]

    @property
    def head(self) -> str:
        """The model head the task trains (every GLUE task: a classifier on [CLS])."""
        return "classification"

    @property
    def score_range(self) -> tuple[float, float]:
        """The allowed gold scores of a regression task (STS-B's similarity: 0 to 5)."""
        return (0.0, 5.0)

    @property
    def is_pair(self) -> bool:
        """Whether examples are sentence pairs (segment ids 0 and 1)."""
        return self.layout.text_b is not None

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names :func:`read_examples` accepts for this task."""
        return tuple(self.split_files)

    def layout_for(self, split: str) -> TsvLayout:
        """The column layout of ``split`` (the test layout for ``test*`` splits)."""
        return self.test_layout if split.startswith("test") else self.layout


@dataclasses.dataclass(frozen=True)
class Example:
    """One GLUE example.

    Attributes:
      guid: ``"<task>-<split>-<id>"``, the id being the file's index column or the row number.
      text_a: first sentence.
      text_b: second sentence, or None for single-sentence tasks.
      label: class id (int) for classification, score (float) for STS-B, None for test rows.
    """

    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None


@dataclasses.dataclass(frozen=True)
class MalformedRow:
    """A row that :func:`read_tsv` skipped: its 1-based line number and what was wrong."""

    line: int
    reason: str


@dataclasses.dataclass(frozen=True)
class ReadReport:
    """What :func:`read_tsv` read from one file.

    Attributes:
      path: the file read.
      examples: the well-formed rows, in file order.
      skipped: the malformed rows skipped (only non-empty with ``skip_malformed=True``).
      header_found: whether the first line was recognised as a header row.
    """

    path: pathlib.Path
    examples: list[Example]
    skipped: tuple[MalformedRow, ...]
    header_found: bool

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def _splits(*extra: tuple[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict((("train", "train"), ("dev", "dev"), ("test", "test")) + extra))


_MNLI_COLUMNS = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                 "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                 "sentence2", "label1", "gold_label")
_STSB_COLUMNS = ("index", "genre", "filename", "year", "old_index", "source1", "source2",
                 "sentence1", "sentence2", "score")
_ACC = ("accuracy",)
_ACC_F1 = ("f1", "accuracy", "acc_and_f1")


def _nli_layouts(first: str, second: str) -> tuple[TsvLayout, TsvLayout]:
    """QNLI/RTE/WNLI: index, two sentences, label; test files drop the label."""
    return (
        TsvLayout((4,), 1, 2, 3, 0, ("index", first, second, "label"), True),
        TsvLayout((3,), 1, 2, None, 0, ("index", first, second), True),
    )


_TASKS: dict[str, TaskSpec] = {
    spec.name: spec for spec in (
        TaskSpec(
            name="cola", directory="CoLA", labels=("0", "1"), is_regression=False, num_labels=2,
            max_seq_length=64, metric_names=("mcc",), main_metric="mcc",
            # source code, label, the original author's acceptability mark, sentence.
            layout=TsvLayout((4,), 3, None, 1, None,
                             ("source", "label", "original_label", "sentence"), False),
            test_layout=TsvLayout((2,), 1, None, None, 0, ("index", "sentence"), True),
            split_files=_splits()),
        TaskSpec(
            name="sst-2", directory="SST-2", labels=("0", "1"), is_regression=False,
            num_labels=2, max_seq_length=64, metric_names=_ACC, main_metric="accuracy",
            layout=TsvLayout((2,), 0, None, 1, None, ("sentence", "label"), True),
            test_layout=TsvLayout((2,), 1, None, None, 0, ("index", "sentence"), True),
            split_files=_splits()),
        TaskSpec(
            name="mrpc", directory="MRPC", labels=("0", "1"), is_regression=False, num_labels=2,
            max_seq_length=128, metric_names=_ACC_F1, main_metric="f1",
            layout=TsvLayout((5,), 3, 4, 0, None,
                             ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), True),
            test_layout=TsvLayout((5,), 3, 4, None, 0,
                                  ("index", "#1 ID", "#2 ID", "#1 String", "#2 String"), True),
            split_files=_splits()),
        TaskSpec(
            name="sts-b", directory="STS-B", labels=None, is_regression=True, num_labels=1,
            max_seq_length=128, metric_names=("pearson", "spearman", "corr"),
            main_metric="pearson",
            layout=TsvLayout((10,), 7, 8, 9, 0, _STSB_COLUMNS, True),
            test_layout=TsvLayout((9,), 7, 8, None, 0, _STSB_COLUMNS[:9], True),
            split_files=_splits()),
        TaskSpec(
            name="qqp", directory="QQP", labels=("0", "1"), is_regression=False, num_labels=2,
            max_seq_length=128, metric_names=_ACC_F1, main_metric="f1",
            layout=TsvLayout((6,), 3, 4, 5, 0,
                             ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
                             True),
            test_layout=TsvLayout((3,), 1, 2, None, 0, ("id", "question1", "question2"), True),
            split_files=_splits()),
        TaskSpec(
            name="mnli", directory="MNLI", labels=("contradiction", "entailment", "neutral"),
            is_regression=False, num_labels=3, max_seq_length=128, metric_names=_ACC,
            main_metric="accuracy",
            # Train rows have 12 columns (label1, gold_label), dev rows 16 (label1..label5,
            # gold_label): the gold label is always last.
            layout=TsvLayout((12, 16), 8, 9, -1, 0, _MNLI_COLUMNS, True),
            test_layout=TsvLayout((10,), 8, 9, None, 0, _MNLI_COLUMNS[:10], True),
            split_files=MappingProxyType({
                "train": "train", "dev": "dev_matched", "dev_matched": "dev_matched",
                "dev_mismatched": "dev_mismatched", "test": "test_matched",
                "test_matched": "test_matched", "test_mismatched": "test_mismatched"})),
        TaskSpec(
            name="qnli", directory="QNLI", labels=("entailment", "not_entailment"),
            is_regression=False, num_labels=2, max_seq_length=128, metric_names=_ACC,
            main_metric="accuracy", layout=_nli_layouts("question", "sentence")[0],
            test_layout=_nli_layouts("question", "sentence")[1], split_files=_splits()),
        TaskSpec(
            name="rte", directory="RTE", labels=("entailment", "not_entailment"),
            is_regression=False, num_labels=2, max_seq_length=128, metric_names=_ACC,
            main_metric="accuracy", layout=_nli_layouts("sentence1", "sentence2")[0],
            test_layout=_nli_layouts("sentence1", "sentence2")[1], split_files=_splits()),
        TaskSpec(
            name="wnli", directory="WNLI", labels=("0", "1"), is_regression=False, num_labels=2,
            max_seq_length=128, metric_names=_ACC, main_metric="accuracy",
            layout=_nli_layouts("sentence1", "sentence2")[0],
            test_layout=_nli_layouts("sentence1", "sentence2")[1], split_files=_splits()),
    )
}

TASK_NAMES: tuple[str, ...] = tuple(_TASKS)

# Split names other tools use for ours (tfds and Hugging Face call the dev set "validation").
_SPLIT_ALIASES = {"validation": "dev", "validation_matched": "dev_matched",
                  "validation_mismatched": "dev_mismatched"}


def all_tasks() -> tuple[TaskSpec, ...]:
    """Every GLUE task's spec, in the usual GLUE order."""
    return tuple(_TASKS.values())


def glue_dir() -> pathlib.Path | None:
    """The GLUE root from ``$GLUE_DIR``, or None when the variable is unset or empty."""
    value = os.environ.get(GLUE_DIR_ENV)
    return pathlib.Path(value).expanduser() if value else None


def _canonical_split(task: TaskSpec, split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in task.split_files:
        raise ValueError(f"Unknown split {split!r} for {task.name}; expected one of "
                         f"{', '.join(task.splits)}.")
    return split


def split_path(data_dir: str | os.PathLike | None, task: TaskSpec, split: str
               ) -> pathlib.Path:
    """The TSV file of a task's split.

    Args:
      data_dir: the GLUE root (holding ``CoLA/``, ``SST-2/``, ...), or the task's own directory;
        None means ``$GLUE_DIR``.
      task: the task's spec (``tasks.get_task``).
      split: ``train``, ``dev``, ``test`` (and MNLI's ``dev_matched`` etc.; ``validation`` is
        accepted for ``dev``).

    Raises:
      FileNotFoundError: no such file; the message names the path and the expected layout.
    """
    split = _canonical_split(task, split)
    file_name = task.split_files[split] + ".tsv"
    if data_dir is None:
        data_dir = glue_dir()
        if data_dir is None:
            raise FileNotFoundError(
                f"No GLUE data directory given and ${GLUE_DIR_ENV} is not set; expected "
                f"$GLUE_DIR/{task.directory}/{file_name} (the layout of GLUE's "
                f"download_glue_data.py, or call {_DOWNLOAD_FUNCTION}).")
    root = pathlib.Path(data_dir)
    path = root / task.directory / file_name
    if path.is_file():
        return path
    # Also accept the task's own directory, as the reference BERT scripts take it.
    if root.name.lower() == task.directory.lower() and (root / file_name).is_file():
        return root / file_name
    raise FileNotFoundError(
        f"{path} not found: expected the GLUE_DIR layout <glue_dir>/{task.directory}/"
        f"{file_name}, as produced by GLUE's download_glue_data.py (set ${GLUE_DIR_ENV} or "
        f"call {_DOWNLOAD_FUNCTION}).")


def _is_header(fields: list[str], layout: TsvLayout) -> bool:
    """Whether a first row is a header: its used columns carry the layout's column names."""
    def cell(column: int | None) -> str | None:
        if column is None or not -len(fields) <= column < len(fields):
            return None
        return fields[column].strip().lower()

    if layout.label is not None and cell(layout.label) in _LABEL_HEADER_NAMES:
        return True
    used = [c for c in (layout.index, layout.text_a, layout.text_b, layout.label) if c is not None]
    return all(cell(c) == layout.column_names[c].lower() for c in used)


def _refuse_other_header(fields: list[str], task: TaskSpec, layout: TsvLayout, split: str,
                         where: str) -> None:
    """Raises when a first row is the header of the task's other layout (a test file read as
    dev, or the reverse), which would otherwise fail as an odd label or read as an example."""
    other, kind = ((task.test_layout, "test") if layout is task.layout
                   else (task.layout, "train/dev"))
    if other.has_header and _is_header(fields, other):
        raise ValueError(f"{where}: this is the header of a {task.name} {kind} file, but the "
                         f"file is read as {split!r}, whose layout differs; pass the split the "
                         f"file holds.")


def _parse_row(fields: list[str], task: TaskSpec, layout: TsvLayout, split: str,
               row_number: int) -> Example:
    """Turns one row into an Example; raises ValueError (without location) when malformed."""
    if len(fields) not in layout.num_columns:
        expected = " or ".join(str(n) for n in layout.num_columns)
        raise ValueError(f"expected {expected} tab-separated columns, found {len(fields)}")
    label: int | float | None = None
    if layout.label is not None:
        raw = fields[layout.label].strip()
        if task.is_regression:
            try:
                label = float(raw)
            except ValueError:
                raise ValueError(f"score {raw!r} is not a number") from None
            if not math.isfinite(label):
                raise ValueError(f"score {raw!r} is not finite")
            lo, hi = task.score_range
            if not lo <= label <= hi:
                raise ValueError(f"score {raw!r} is outside {task.name}'s range [{lo:g}, {hi:g}]")
        else:
            try:
                label = task.labels.index(raw)
            except ValueError:
                raise ValueError(f"unknown label {raw!r}; expected one of "
                                 f"{', '.join(task.labels)}") from None
    row_id = fields[layout.index].strip() if layout.index is not None else str(row_number)
    return Example(
        guid=f"{task.name}-{split}-{row_id}",
        text_a=fields[layout.text_a],
        text_b=fields[layout.text_b] if layout.text_b is not None else None,
        label=label)


def read_tsv(path: str | os.PathLike, task: TaskSpec, split: str, *,
             skip_malformed: bool = False) -> ReadReport:
    """Reads one TSV file, at any path, with the column layout of a task's split.

    The file's name is not consulted: ``split`` alone says which layout to expect, and it also
    names the examples (``Example.guid``). Test files have another layout than train and dev
    files (an index column, no label; MRPC's test file has its index where the dev file has its
    quality label), so the split must be the kind of file given: a first line that is the other
    layout's header is refused with a message saying so. A headerless file read with the wrong
    layout fails on a row (wrong column count, unknown label) or, where the columns happen to
    fit, reads wrong texts; the reader cannot tell.

    Rows are split on tabs only: GLUE TSVs are not quoted, so a ``"`` is an ordinary character
    (what ``csv.QUOTE_NONE`` does) and can never swallow a tab or a line break. Lines are split
    on ``\\n`` only (a stray ``\\r`` inside a sentence does not end the row; a ``\\r\\n`` line
    end is removed). A UTF-8 byte-order mark at the start is dropped (MRPC's train and dev files
    have one). The first line is taken as a header when its used columns carry the layout's
    column names, whatever the layout says, so a missing or an extra header costs no row.
    Empty lines are ignored.

    Args:
      path: the TSV file.
      task: the task's spec (``tasks.get_task``).
      split: the split whose layout the file has: ``train``, ``dev``, ``test`` (and MNLI's
        ``dev_mismatched`` etc.; ``validation`` is accepted for ``dev``).
      skip_malformed: skip rows with the wrong column count, an unknown label or an
        unparsable score, recording them in ``ReadReport.skipped``, instead of raising.

    Returns:
      A :class:`ReadReport` with the examples in file order.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: an unknown split, a malformed row (unless ``skip_malformed``), or
        bytes that are not UTF-8; a row's message starts with ``<path>:<line>:``.
    """
    split = _canonical_split(task, split)
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {task.name} {split} TSV file.")
    layout = task.layout_for(split)
    examples: list[Example] = []
    skipped: list[MalformedRow] = []
    header_found = False
    first = True
    data_rows = 0  # Non-empty rows after the header: the id of rows without an index column.
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{line_number}: not valid UTF-8 ({e})") from None
            if line_number == 1:
                line = line.removeprefix("\ufeff")
            line = line.rstrip("\n").removesuffix("\r")
            if not line.strip():
                continue
            fields = line.split("\t")
            if first:
                first = False
                if _is_header(fields, layout):
                    header_found = True
                    continue
                _refuse_other_header(fields, task, layout, split, f"{path}:{line_number}")
            data_rows += 1
            try:
                examples.append(_parse_row(fields, task, layout, split, data_rows - 1))
            except ValueError as e:
                if not skip_malformed:
                    raise ValueError(f"{path}:{line_number}: {e}") from None
                skipped.append(MalformedRow(line_number, str(e)))
    if header_found != layout.has_header:
        logger.info("%s: header row %s, unlike the official file.", path,
                    "present" if header_found else "missing")
    return ReadReport(path=path, examples=examples, skipped=tuple(skipped),
                      header_found=header_found)


def read_split(data_dir: str | os.PathLike | None, task: TaskSpec, split: str, *,
               skip_malformed: bool = False) -> ReadReport:
    """Reads one split of a GLUE task from a GLUE root (:func:`read_tsv` on its file).

    Args:
      data_dir: the GLUE root or the task directory; None means ``$GLUE_DIR``.
      task: the task's spec (``tasks.get_task``).
      split: split name (see :func:`split_path`).
      skip_malformed: as for :func:`read_tsv`.

    Returns:
      A :class:`ReadReport` with the examples in file order.

    Raises:
      FileNotFoundError: the file is missing; the message names the expected path.
      ValueError: as for :func:`read_tsv`.
    """
    return read_tsv(split_path(data_dir, task, split), task, split,
                    skip_malformed=skip_malformed)


def read_examples(data_dir: str | os.PathLike | None, task: TaskSpec, split: str, *,
                  skip_malformed: bool = False) -> list[Example]:
    """Reads one split of a GLUE task from a GLUE root (see :func:`read_tsv` for the rules).

    With ``skip_malformed=True`` the skipped rows are logged as a warning with their count and
    first line numbers; call :func:`read_split` or :func:`read_tsv` to get them as data.

    Returns:
      The examples in file order.
    """
    report = read_split(data_dir, task, split, skip_malformed=skip_malformed)
    if report.skipped:
        first = ", ".join(f"line {row.line}: {row.reason}" for row in report.skipped[:3])
        logger.warning("%s: skipped %d malformed row(s) (%s%s).", report.path,
                       report.num_skipped, first, ", ..." if report.num_skipped > 3 else "")
    return report.examples


__all__ = [
    "Example", "GLUE_DIR_ENV", "MalformedRow", "ReadReport", "TASK_NAMES", "TaskSpec",
    "TsvLayout", "all_tasks", "glue_dir", "read_examples", "read_split", "read_tsv",
    "split_path"]
