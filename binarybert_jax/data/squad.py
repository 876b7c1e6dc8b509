"""SQuAD v1.1 and v2.0: the official JSON files, the dev-split protocol, BERT's windowed features,
and the way back from start/end logits to answer texts.

Files: the official layout under a directory (``data_dir`` or ``$SQUAD_DIR``): ``train-v1.1.json``,
``dev-v1.1.json``, ``train-v2.0.json``, ``dev-v2.0.json`` (``download.download_squad`` fetches them
where the network allows; ``tfds_source.read_squad_tfds`` reads tensorflow-datasets' ``squad``
instead).

The dev-split protocol, for machines without a training file: :func:`split_by_article` gives the
first ``int(fraction · articles)`` articles of a dev file to training and the rest to evaluation
(v1.1 at 0.5: 24 articles train, 24 evaluate; v2.0: 17 and 18), so no context, and no question,
of the evaluation part is seen in training. Numbers from it are not the official dev scores.

Features follow BERT's ``run_squad.py``: the question cut to ``max_query_length`` (64) tokens,
``[CLS] question [SEP] context-window [SEP]`` padded to ``max_length`` (384), windows over the
context starting every ``doc_stride`` (128) tokens, the start/end token of the (first) answer in
each window, or the [CLS] position 0 when the answer is not wholly inside the window and for
unanswerable v2.0 questions. Token-to-character offsets come from the fast tokenizer's offset
mapping (not BERT's whitespace split), so an answer maps back to the exact characters of the
context. Shapes are static: every window has ``max_length`` tokens.

Post-processing (:func:`postprocess`) is BERT's ``write_predictions``: the ``n_best`` (20) best
start and end tokens of every window, pairs with end ≥ start, both in the context, the start in a
window where that token has its maximal context, at most ``max_answer_length`` (30) tokens; the best
sum over the question's windows wins. v2.0: the null score is start + end logit at [CLS], the
minimum over the windows, and the answer is ``""`` when null − best non-null > ``null_threshold``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Optional

import numpy as np

from binarybert_jax.data.batching import MODEL_INPUTS

SQUAD_DIR_ENV = "SQUAD_DIR"
VERSIONS = ("1.1", "2.0")
SPLITS = ("train", "dev")

_SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
FILE_NAMES: Mapping[tuple[str, str], str] = MappingProxyType({
    (v, s): f"{s}-v{v}.json" for v in VERSIONS for s in SPLITS})
URLS: Mapping[str, str] = MappingProxyType({name: _SQUAD_URL + name for name in FILE_NAMES.values()})

# The arrays of a feature set that training batches (the model's inputs, labels = (start, end)).
TRAIN_KEYS = MODEL_INPUTS + ("labels", "lengths")
# Per-window bookkeeping for post-processing: the example each window came from, the character
# span of each context token ((-1, -1) elsewhere), and whether the window is the token's best.
META_KEYS = ("feature_example", "offsets", "max_context")


@dataclasses.dataclass(frozen=True)
class SquadTask:
    """A SQuAD task as the training loop sees it (the counterpart of ``glue.TaskSpec``).

    Attributes:
      name: ``squad1`` or ``squad2``.
      version: ``1.1`` or ``2.0``.
      max_seq_length: window length (384, BERT's).
      metric_names: the keys evaluation reports (fractions; ``squad_metrics.as_fractions``).
      main_metric: ``f1``, which picks the best checkpoint.
    """

    name: str
    version: str
    max_seq_length: int = 384
    main_metric: str = "f1"
    head: str = "span"
    num_labels: int = 2        # the span head's two outputs per token (start, end)
    is_regression: bool = False

    @property
    def metric_names(self) -> tuple[str, ...]:
        base = ("exact_match", "f1")
        if self.version == "2.0":
            base += ("HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1")
        return base

    @property
    def has_unanswerable(self) -> bool:
        return self.version == "2.0"


TASKS: Mapping[str, SquadTask] = MappingProxyType({
    "squad1": SquadTask("squad1", "1.1"), "squad2": SquadTask("squad2", "2.0")})
# ==============================================================================================
# Files.
# ==============================================================================================
@dataclasses.dataclass(frozen=True)
class SquadExample:
    """One question.

    Attributes:
      qid: the official id.
      question, context: texts.
      answers: gold ``(text, character start)`` pairs (empty for an unanswerable question).
      is_impossible: v2.0's flag (False for v1.1).
      article: index of the question's article in its file (the unit of the dev split).
    """

    qid: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    is_impossible: bool
    article: int


def squad_dir() -> pathlib.Path | None:
    """The SQuAD directory from ``$SQUAD_DIR``, or None."""
    value = os.environ.get(SQUAD_DIR_ENV)
    return pathlib.Path(value).expanduser() if value else None


def split_path(data_dir: str | os.PathLike | None, version: str, split: str) -> pathlib.Path:
    """``<data_dir or $SQUAD_DIR>/<split>-v<version>.json``.

    Raises:
      ValueError: no directory given, or an unknown version or split.
      FileNotFoundError: the file is missing (the message names it and how to get it).
    """
    if (version, split) not in FILE_NAMES:
        raise ValueError(f"SQuAD version {version!r} split {split!r}; allowed versions {VERSIONS}, "
                         f"splits {SPLITS}")
    root = data_dir or squad_dir()
    if not root:
        raise ValueError(f"no SQuAD data: set --config.data_dir=DIR or ${SQUAD_DIR_ENV} (the official "
                         f"files, e.g. DIR/{FILE_NAMES[(version, split)]})")
    path = pathlib.Path(root) / FILE_NAMES[(version, split)]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: SQuAD's official {FILE_NAMES[(version, split)]} is expected there "
            f"(binarybert_jax.data.download.download_squad fetches it where the network allows)")
    return path


def read_dataset(path: str | os.PathLike) -> tuple[str, list]:
    """``(version, data)`` of a SQuAD JSON file: the ``data`` list of articles as stored.

    Raises:
      ValueError: not a SQuAD file (names the file and what is missing).
    """
    path = pathlib.Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            blob = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("data"), list):
        raise ValueError(f"{path}: not a SQuAD file (expected an object with a 'data' list of articles)")
    return str(blob.get("version", "")), blob["data"]


def examples_from_dataset(data: Sequence[Mapping], *, where: str = "SQuAD data",
                          version: Optional[str] = None) -> list[SquadExample]:
    """Every question of a SQuAD ``data`` list, in file order, checked as it is read.

    Args:
      data: the ``data`` list of a SQuAD file.
      where: the file (or what stands for it) errors name.
      version: ``1.1`` refuses unanswerable questions (a v2.0 file given to a v1.1 task would
        train on answers that are not there); None or ``2.0`` takes both.
    Raises:
      ValueError: a question without ``id``/``question``/``answers``, an answer that is not the text
        at its offset in the context, an id used twice, or an unanswerable question in v1.1 data
        (each names ``where`` and the question id).
    """
    examples, seen = [], {}
    for a, article in enumerate(data):
        for paragraph in article.get("paragraphs", ()):
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                missing = [k for k in ("id", "question", "answers") if k not in qa]
                if missing:
                    raise ValueError(f"{where}: a question of article {a} lacks {missing}")
                qid = qa["id"]
                if qid in seen:
                    raise ValueError(f"{where}: question id {qid!r} appears twice (articles {seen[qid]} "
                                     f"and {a}); ids must be unique, predictions are keyed by them")
                seen[qid] = a
                answers = tuple((ans["text"], int(ans["answer_start"])) for ans in qa["answers"])
                for text, start in answers:
                    if not 0 <= start <= len(context) - len(text):
                        raise ValueError(f"{where}: question {qid}: answer {text!r} at "
                                         f"{start} lies outside its context")
                    if context[start:start + len(text)] != text:
                        raise ValueError(f"{where}: question {qid}: answer {text!r} is not the text at "
                                         f"its answer_start {start} (the context has "
                                         f"{context[start:start + len(text)]!r} there)")
                impossible = bool(qa.get("is_impossible", False)) or not answers
                if impossible and version == "1.1":
                    raise ValueError(f"{where}: question {qid} has no answer (is_impossible): a SQuAD "
                                     "v2.0 file; v1.1 (squad1) questions all have answers: use squad2 "
                                     "for v2.0 data")
                examples.append(SquadExample(qid, qa["question"], context, answers, impossible, a))
    return examples


def check_version(recorded: str, path, version: str) -> None:
    """Refuses a file whose recorded ``version`` (``1.1``, ``v2.0``) is not the task's."""
    if recorded and recorded.lstrip("v") in VERSIONS and recorded.lstrip("v") != version:
        raise ValueError(f"{path}: a SQuAD v{recorded.lstrip('v')} file, but the task is v{version} "
                         f"(squad{version[0]}); use squad{recorded.lstrip('v')[0]} or the v{version} file")


def split_by_article(data: Sequence[Mapping], train_fraction: float) -> tuple[list, list]:
    """The dev-split protocol: the first ``int(train_fraction · len(data))`` articles for training,
    the rest for evaluation (whole articles: no context is shared).

    Raises:
      ValueError: a fraction that leaves either part empty.
    """
    n_train = int(train_fraction * len(data))
    if not 0 < n_train < len(data):
        raise ValueError(f"a train fraction of {train_fraction} of {len(data)} articles leaves a part "
                         "empty; allowed: a fraction in (0, 1) giving each part an article")
    return list(data[:n_train]), list(data[n_train:])


# ==============================================================================================
# Features.
# ==============================================================================================
def examples_fingerprint(examples: Sequence[SquadExample]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.qid, ex.question, ex.context, ex.answers, ex.is_impossible]).encode())
    return h.hexdigest()


def _token_span(offsets: np.ndarray, char_start: int, char_end: int) -> Optional[tuple[int, int]]:
    """First and last context token overlapping characters [char_start, char_end), or None."""
    inside = np.flatnonzero((offsets[:, 1] > char_start) & (offsets[:, 0] < char_end))
    if len(inside) == 0:
        return None
    return int(inside[0]), int(inside[-1])


def _max_context(windows: list[tuple[int, int]], w: int, position: int) -> bool:
    """BERT's ``_check_is_max_context``: whether window ``w`` gives token ``position`` the most
    context on its shorter side (ties: the window with more tokens around it first)."""
    best_score, best = None, None
    for i, (start, length) in enumerate(windows):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best = score, i
    return best == w


def encode_squad(tokenizer, examples: Sequence[SquadExample], max_length: int = 384,
                 doc_stride: int = 128, max_query_length: int = 64) -> dict[str, np.ndarray]:
    """BERT's SQuAD features: one row per window of each example's context.

    Args:
      tokenizer: a fast BERT tokenizer (offset mapping needed).
      examples: N questions.
      max_length: L, the window length with [CLS] and two [SEP].
      doc_stride: context tokens between the starts of consecutive windows.
      max_query_length: the question is cut to this many tokens.
    Returns:
      For F windows: ``input_ids``, ``token_type_ids``, ``attention_mask`` int32 (F, L); ``labels``
      int32 (F, 2) the answer's start and end token (0, 0 when not in the window or none);
      ``lengths`` (F,); ``feature_example`` (F,) the example's index; ``offsets`` int32 (F, L, 2)
      the character span of each context token, (-1, -1) for question, special and pad tokens;
      ``max_context`` bool (F, L).
    Raises:
      ValueError: a length that leaves no room for the context.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("SQuAD features need a fast tokenizer (its offset mapping)")
    if max_length - max_query_length - 3 < 1 or doc_stride < 1:
        raise ValueError(f"max_length {max_length} with max_query_length {max_query_length} leaves no "
                         f"room for the context, or doc_stride {doc_stride} < 1")
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    questions = tokenizer([ex.question for ex in examples], add_special_tokens=False)["input_ids"]
    contexts = sorted({ex.context for ex in examples})
    ctx_index = {c: i for i, c in enumerate(contexts)}
    encoded = tokenizer(contexts, add_special_tokens=False, return_offsets_mapping=True)
    ctx_ids = [np.asarray(x, np.int32) for x in encoded["input_ids"]]
    ctx_offsets = [np.asarray(x, np.int32).reshape(-1, 2) for x in encoded["offset_mapping"]]

    rows: dict[str, list] = {k: [] for k in ("input_ids", "token_type_ids", "labels",
                                             "feature_example", "offsets", "max_context", "lengths")}
    for e, ex in enumerate(examples):
        q = list(questions[e][:max_query_length])
        ids, offsets = ctx_ids[ctx_index[ex.context]], ctx_offsets[ctx_index[ex.context]]
        span = None
        if ex.answers and not ex.is_impossible:
            text, start = ex.answers[0]
            span = _token_span(offsets, start, start + len(text))
        room = max_length - len(q) - 3
        windows, start = [], 0
        while True:
            length = min(len(ids) - start, room)
            windows.append((start, length))
            if start + length >= len(ids):
                break
            start += min(length, doc_stride)
        shift = len(q) + 2  # [CLS] question [SEP]
        for w, (start, length) in enumerate(windows):
            row_ids = np.full(max_length, pad_id, np.int32)
            row_ids[:shift + length + 1] = [cls_id] + q + [sep_id] + list(ids[start:start + length]) + [sep_id]
            types = np.zeros(max_length, np.int32)
            types[shift:shift + length + 1] = 1
            row_offsets = np.full((max_length, 2), -1, np.int32)
            row_offsets[shift:shift + length] = offsets[start:start + length]
            best = np.zeros(max_length, bool)
            best[shift:shift + length] = [_max_context(windows, w, start + i) for i in range(length)]
            label = (0, 0)
            if span is not None and start <= span[0] and span[1] < start + length:
                label = (span[0] - start + shift, span[1] - start + shift)
            rows["input_ids"].append(row_ids)
            rows["token_type_ids"].append(types)
            rows["labels"].append(label)
            rows["feature_example"].append(e)
            rows["offsets"].append(row_offsets)
            rows["max_context"].append(best)
            rows["lengths"].append(shift + length + 1)
    n = len(rows["input_ids"])
    out = {
        "input_ids": np.stack(rows["input_ids"]) if n else np.zeros((0, max_length), np.int32),
        "token_type_ids": np.stack(rows["token_type_ids"]) if n else np.zeros((0, max_length), np.int32),
        "labels": np.asarray(rows["labels"], np.int32).reshape(n, 2),
        "feature_example": np.asarray(rows["feature_example"], np.int32),
        "offsets": np.stack(rows["offsets"]) if n else np.zeros((0, max_length, 2), np.int32),
        "max_context": np.stack(rows["max_context"]) if n else np.zeros((0, max_length), bool),
    }
    out["lengths"] = np.asarray(rows["lengths"], np.int32).reshape(n)
    out["attention_mask"] = (np.arange(max_length)[None, :] < out["lengths"][:, None]).astype(np.int32)
    return out


def encode_squad_cached(tokenizer, examples: Sequence[SquadExample], max_length: int, doc_stride: int,
                        max_query_length: int, cache_dir: str | os.PathLike | None,
                        key_parts: Sequence[object]) -> dict[str, np.ndarray]:
    """:func:`encode_squad` through ``encode``'s on-disk cache (keyed by the tokenizer, the examples'
    content and the three lengths)."""
    from binarybert_jax.data import encode  # encode imports glue only; no cycle

    def compute():
        return encode_squad(tokenizer, examples, max_length, doc_stride, max_query_length)

    if cache_dir is None:
        return compute()
    path, key = encode.cache_location(cache_dir, key_parts, max_length, {
        "squad": [doc_stride, max_query_length], "tokenizer": encode.tokenizer_fingerprint(tokenizer),
        "examples": examples_fingerprint(examples)})
    return encode.cached_arrays(path, key, TRAIN_KEYS + META_KEYS, compute,
                                lambda a: a["input_ids"].shape[1:] == (max_length,))


# ==============================================================================================
# An evaluation set, and from logits back to answers.
# ==============================================================================================
@dataclasses.dataclass
class SquadEvalSet:
    """What evaluating a SQuAD split needs: the windows' arrays, the questions they came from, and
    the articles in the official layout (for the official metrics)."""

    version: str
    examples: list
    features: dict
    data: list
    answer_options: dict = dataclasses.field(default_factory=dict)  # postprocess's keywords

    @property
    def model_arrays(self) -> dict[str, np.ndarray]:
        """The arrays a forward pass reads (what ``evaluate.predict`` batches)."""
        return {k: self.features[k] for k in MODEL_INPUTS + ("lengths",)}

    def __len__(self) -> int:
        return len(self.examples)


def postprocess(examples: Sequence[SquadExample], features: Mapping[str, np.ndarray],
                logits: np.ndarray, *, version: str, n_best: int = 20, max_answer_length: int = 30,
                null_threshold: float = 0.0) -> tuple[dict[str, str], dict[str, float]]:
    """Answer texts from the span head's logits.

    Args:
      examples: the questions the features were made from.
      features: :func:`encode_squad`'s arrays (``feature_example``, ``offsets``, ``max_context``).
      logits: (F, L, 2) start and end logits of every window.
      version: ``1.1`` or ``2.0`` (the latter predicts ``""`` when the null score wins).
      n_best, max_answer_length, null_threshold: see the module docstring.
    Returns:
      ``(predictions, null_diffs)``: question id -> answer text, and for v2.0 question id ->
      null score − best non-null score (what ``na_probs.json`` holds; the official script only
      compares these values with a threshold, so a score works as well as a probability); empty
      for v1.1.
    """
    logits = np.asarray(logits, np.float32)
    starts, ends = logits[..., 0], logits[..., 1]
    by_example: dict[int, list[int]] = {}
    for f, e in enumerate(features["feature_example"]):
        by_example.setdefault(int(e), []).append(f)
    predictions, null_diffs = {}, {}
    for e, ex in enumerate(examples):
        best_score, best_text, null_score = -np.inf, "", np.inf
        candidates = []
        for f in by_example.get(e, ()):
            offsets, keep = features["offsets"][f], features["max_context"][f]
            null_score = min(null_score, float(starts[f, 0] + ends[f, 0]))
            s_idx = np.argsort(-starts[f], kind="stable")[:n_best]
            e_idx = np.argsort(-ends[f], kind="stable")[:n_best]
            s, t = np.meshgrid(s_idx, e_idx, indexing="ij")
            ok = ((offsets[s, 0] >= 0) & (offsets[t, 0] >= 0) & keep[s] & (t >= s)
                  & (t - s + 1 <= max_answer_length))
            for i, j in zip(*np.nonzero(ok)):
                a, b = int(s[i, j]), int(t[i, j])
                candidates.append((float(starts[f, a] + ends[f, b]), f, a, b))
        if candidates:
            # Stable on ties: the earlier window and start first, as BERT's sorted() keeps them.
            best_score, f, a, b = max(candidates, key=lambda c: c[0])
            offsets = features["offsets"][f]
            best_text = ex.context[offsets[a, 0]:offsets[b, 1]]
        if version == "2.0":
            diff = null_score - best_score if candidates else float("inf")
            null_diffs[ex.qid] = float(diff) if np.isfinite(diff) else 1e9
            predictions[ex.qid] = "" if not candidates or diff > null_threshold else best_text
        else:
            predictions[ex.qid] = best_text
    return predictions, null_diffs


def eval_set(version: str, data: list, tokenizer, max_length: int, doc_stride: int, max_query_length: int,
             cache_dir, key_parts: Sequence[object], limit: int = 0) -> SquadEvalSet:
    """The evaluation set of articles ``data`` (optionally its first ``limit`` questions only, with
    the articles cut to them so the official metrics count exactly those)."""
    examples = examples_from_dataset(data)
    if limit:
        examples = examples[:limit]
        keep = {ex.qid for ex in examples}
        data = [{**a, "paragraphs": [{**p, "qas": [qa for qa in p["qas"] if qa["id"] in keep]}
                                     for p in a["paragraphs"]]} for a in data]
    features = encode_squad_cached(tokenizer, examples, max_length, doc_stride, max_query_length,
                                   cache_dir, key_parts)
    return SquadEvalSet(version, examples, features, data)


def load_squad_data(task: SquadTask, tokenizer, *, data_dir="", source: str = "json",
                    max_length: int = 0, doc_stride: int = 128, max_query_length: int = 64,
                    dev_split: float = 0.0, cache_dir=None, train_limit: int = 0,
                    eval_limit: int = 0, heldout=None, train: bool = True, dev: bool = True
                    ) -> tuple[Optional[dict[str, np.ndarray]], dict[str, SquadEvalSet]]:
    """A SQuAD run's training windows and its evaluation set.

    Args:
      task: ``squad1`` or ``squad2``'s spec (``tasks.get_task``).
      tokenizer: the model's (fast) tokenizer.
      data_dir: the directory of the official files ("" means ``$SQUAD_DIR``); for ``source="tfds"``
        tfds's data directory.
      source: ``json`` (the official files) or ``tfds`` (tensorflow-datasets' ``squad``).
      max_length, doc_stride, max_query_length: as :func:`encode_squad` (0: the task's 384).
      dev_split: 0 trains on the train file and evaluates on the dev file; a fraction in (0, 1) is
        the dev-split protocol (:func:`split_by_article` of the dev file).
      cache_dir: the tokenized-array cache (None: no cache).
      train_limit, eval_limit: keep the first N questions (0: all).
      heldout: a ``heldout.HeldOut``: whole training articles (after ``train_limit``) kept out of
        training, evaluated as the split ``heldout``.
      train, dev: read the training data / the evaluation set (``dev=False`` opens no dev file
        unless the dev-split protocol trains on it).
    Returns:
      ``(train, {"heldout": SquadEvalSet, "dev": SquadEvalSet})`` with the parts asked for;
      ``train`` holds :data:`TRAIN_KEYS`.
    """
    max_length = max_length or task.max_seq_length

    def read(split):
        """The ``data`` list of a split and the name errors give it, checked whole before anything
        is tokenized: a bad question fails the load, not an epoch."""
        if source == "tfds":
            from binarybert_jax.data import tfds_source
            data, where = tfds_source.read_squad_tfds(task.version, split, data_dir or None), \
                f"tfds squad {split} (v{task.version})"
        else:
            path = split_path(data_dir, task.version, split)
            recorded, data = read_dataset(path)
            check_version(recorded, path, task.version)
            where = str(path)
        examples_from_dataset(data, where=where, version=task.version)
        return data, where

    # The dev file is read when it is evaluated, or when the dev-split protocol trains on part of it.
    dev_data, dev_where = read("dev") if dev or (train and dev_split) else (None, None)
    train_data, train_where = (None, None) if dev_split or not train else read("train")
    key = (task.name,)
    if dev_split:
        train_data, dev_data = split_by_article(dev_data, dev_split)
        train_where = dev_where
        key = (task.name, f"devsplit{dev_split:g}")
    evals: dict[str, SquadEvalSet] = {}
    train = None
    if train_data is not None:
        train_examples = examples_from_dataset(train_data, where=train_where, version=task.version)
        if train_limit:
            train_examples = train_examples[:train_limit]
        if heldout is not None:
            from binarybert_jax.data import heldout as heldout_lib
            held = heldout_lib.split_articles([ex.article for ex in train_examples], heldout)
            held_qids = {ex.qid for ex in train_examples if ex.article in held}
            train_examples = [ex for ex in train_examples if ex.article not in held]
            held_data = [{**a, "paragraphs": [{**p, "qas": [qa for qa in p["qas"] if qa["id"] in held_qids]}
                                              for p in a["paragraphs"]]}
                         for i, a in enumerate(train_data) if i in held]
            evals["heldout"] = eval_set(task.version, held_data, tokenizer, max_length, doc_stride,
                                        max_query_length, cache_dir,
                                        key + ("heldout", f"limit{train_limit}", heldout.fraction,
                                               heldout.cap, heldout.seed))
        train = encode_squad_cached(tokenizer, train_examples, max_length, doc_stride, max_query_length,
                                    cache_dir, key + ("train",))
        train = {k: train[k] for k in TRAIN_KEYS}
    if dev:
        evals["dev"] = eval_set(task.version, dev_data, tokenizer, max_length, doc_stride,
                                max_query_length, cache_dir, key + ("dev", f"limit{eval_limit}"),
                                eval_limit)
    return train, evals


__all__ = ["FILE_NAMES", "META_KEYS", "SQUAD_DIR_ENV", "SquadEvalSet", "SquadExample", "SquadTask",
           "TASKS", "TRAIN_KEYS", "URLS", "VERSIONS", "encode_squad", "encode_squad_cached", "eval_set",
           "examples_from_dataset", "load_squad_data", "postprocess",
           "read_dataset", "split_by_article", "split_path", "squad_dir"]
