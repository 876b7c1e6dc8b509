"""Inference from a trained model: load a packed file or a model checkpoint, get logits for texts
(or, for a span head, SQuAD answers: ``predict_squad``).

``load_predictor(path)`` accepts either kind of saved model:

* a bit-packed ``.safetensors`` file (``export.export_packed``) runs on integer codes by default
  (``compute="integer"``, ``export.load_packed_codes``): the quantized model itself, its weights
  kept resident as bit planes of their codes (``weight_planes``: 1 bit an entry for a binary
  weight, 2 for a ternary one) and expanded one layer at a time inside the forward, activations
  quantized to their codes, every quantized product the training forward's exact integer-domain
  one (``integer_dot``: codes in bfloat16, float32 accumulation). Its logits are the checkpoint
  forward's (same codes, same scales, same products; bitwise in the tests' configurations or
  within a float32 rounding of a scale); a split layer whose halves' scales are equal runs as one
  product of their summed codes, the same bits (``export.load_packed_codes``).
  ``compute="float"`` unpacks once at load into float32
  weights that hold exactly the quantized values instead, run by the normal model with weight
  quantization off (``export.inference_spec``): activations are still quantized, but every
  product is a float32 one of the values, at float32's rate and float32's resident memory, which
  is why that path ran slower than the checkpoint forward (whose products are the bfloat16
  integer ones) even though the checkpoint re-quantizes its weights in every call. A LAT file
  written before codes came from the quantizer (levels that are not integers) runs on floats.
* a packed file of a fully binarized model (W1-E1-A1, sign activations, Bi-Attention: BiBERT;
  ``bitwise.bitwise_refusal`` says what qualifies) runs bitwise instead: its 1-bit planes are
  repacked into 32-bit words once at load and every binarized product is XNOR and popcount
  (``bitwise.py``), with the same logits as the simulated float forward of the quantized model.
  Such a file's kind is ``bitwise``.
* a model checkpoint directory (``checkpoints.save_model``, with ``model.json``): its spec as
  trained, so a quantized model re-quantizes its latent weights in every forward pass, as in
  training and evaluation (a LAT model with the diagonal it was trained with, saved beside its
  parameters: ``checkpoints.load_lat_diag``). The logits equal the packed file's (``export``'s docstring says why
  they match bitwise in practice and where they could differ by float rounding).

Predictions go through the same encoding (``data.encode.encode_examples``) and evaluation
batching (``data.batching.iterate_batches``: file order, the last batch padded with copies of a
real row, every example counted once) as evaluation during training. With the released code's
``act_scope='tensor'`` the activation ranges are taken over the whole batch, so a row's logits
depend slightly on the rows batched with it; the same batch size gives the same numbers as the
evaluation in training.

A single-device ``jax.jit`` of the model, not ``evaluate.make_predict_step``: that one is a
``shard_map`` over a ``data`` mesh axis, which needs the batch to divide over the devices (a
batch of 1 for latency would not) and ranges reduced per device. The predictor's spec has no
mapped axis (``ModelSpec.without_axis``), so the ranges are the whole batch's on any device.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np

from binarybert_jax import assets, bitwise, checkpoints, evaluate, export, resolve, workdirs
from binarybert_jax.data import encode, glue, squad, tasks
from binarybert_jax.model import ModelSpec
from binarybert_jax.sharding import MODEL_INPUTS
from binarybert_jax.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

PACKED, BITWISE, CHECKPOINT = "packed", "bitwise", "checkpoint"
# How a packed file's products are computed: on integer codes (the default) or float32 values.
INTEGER, FLOAT = "integer", "float"
COMPUTES = (INTEGER, FLOAT)
# ``info`` keys that may name the tokenizer's directory (the HF checkpoint the model came from).
TOKENIZER_INFO_KEYS = ("tokenizer_dir", "tokenizer", "pretrained")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


class Predictions(NamedTuple):
    """What ``Predictor.__call__`` returns, one entry per example."""

    labels: list
    scores: np.ndarray
    logits: np.ndarray


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A loaded model, ready to run.

    Attributes:
      spec: the spec of the model that runs (the quantized spec, which ``info["quantized_spec"]``
        also holds; for a packed file run on floats, its ``export.inference_spec``).
      params: its parameters, float32 (bitwise: uint32 words, float32 scales and the
        full-precision parameters; on codes: without the quantized weights), already on the
        default device.
      tokenizer_dir: a directory holding the model's tokenizer when the saved model names one
        (``info`` keys ``TOKENIZER_INFO_KEYS``, or tokenizer files in the checkpoint directory),
        else None.
      kind: ``packed``, ``bitwise`` or ``checkpoint``.
      info: the saved model's free-form info.
      path: where it was loaded from.
      lat_diag: a LAT checkpoint's diagonal (``checkpoints.load_lat_diag``), else None.
      weight_codes: a packed file run on codes: its quantized weights as bit planes and scales
        (``model.WEIGHT_CODES``), else None.
      compute: ``integer`` (products on codes) or ``float`` (a packed file's float32 path).
    """

    spec: ModelSpec
    params: Any
    tokenizer_dir: Optional[pathlib.Path]
    kind: str
    info: dict
    path: pathlib.Path
    _apply: Callable = dataclasses.field(repr=False, compare=False)
    lat_diag: Optional[Any] = dataclasses.field(default=None, repr=False, compare=False)
    weight_codes: Optional[Any] = dataclasses.field(default=None, repr=False, compare=False)
    compute: str = INTEGER

    @classmethod
    def load(cls, path: str | os.PathLike, compute: str = INTEGER) -> "Predictor":
        """``load_predictor(path, compute)``: a packed file or a model checkpoint directory."""
        return load_predictor(path, compute)

    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    @property
    def resident_bytes(self) -> int:
        """Bytes of the arrays the forward pass keeps on the device: parameters, weight codes and
        a LAT diagonal."""
        trees = (self.params, self.weight_codes, self.lat_diag)
        return sum(int(x.nbytes) for t in trees for x in jax.tree_util.tree_leaves(t))

    def __call__(self, texts_a: Sequence[str], texts_b: Optional[Sequence[str]] = None, *,
                 max_length: int = 128, batch_size: int = 32) -> "Predictions":
        """Labels and scores of sentences (or sentence pairs, ``texts_b`` the second sentences)
        with the model's tokenizer (``tokenizer_dir``, else MiniLM's).

        Returns:
          ``Predictions``: ``labels`` (the recorded task's label strings, e.g. ``"1"`` or
          ``"entailment"``; class ids where no task is recorded; a regression model's score),
          ``scores`` (softmax probabilities ``(N, num_labels)``, or the regression output
          ``(N,)``) and ``logits``.
        """
        if isinstance(texts_a, str) or isinstance(texts_b, str):
            raise TypeError("pass lists of sentences (a list of one for a single sentence)")
        if self.spec.head != "classification":
            raise ValueError(f"{self.path}: a {self.spec.head} head; labels need a classification head")
        tokenizer = _tokenizer(str(self.tokenizer_dir or assets.minilm_dir()))
        logits = predict_texts(self, tokenizer, texts_a, texts_b, max_length, batch_size)
        if self.num_labels == 1:
            scores = logits[:, 0]
            return Predictions(list(scores.tolist()), scores, logits)
        scores = np.asarray(jax.nn.softmax(logits, axis=-1))
        task_name = resolve.recorded_task(self.info)
        names = tasks.get_task(task_name).labels if task_name else None
        ids = logits.argmax(-1)
        labels = [names[i] if names else int(i) for i in ids]
        return Predictions(labels, scores, logits)

    def logits(self, batch: Mapping[str, Any]) -> jax.Array:
        """Logits of one batch (jitted; compiled once per batch shape).

        Args:
          batch: ``input_ids``, ``token_type_ids``, ``attention_mask``: int ``(B, T)``; other
            keys are ignored.
        Returns:
          ``(B, num_labels)`` float32 logits (a span head: ``(B, T, 2)``), on the device (not
          blocked on).
        """
        return self._apply(self.params, {k: batch[k] for k in MODEL_INPUTS}, self.lat_diag,
                           self.weight_codes)["logits"]


@functools.lru_cache(maxsize=8)
def _tokenizer(directory: str):
    """The tokenizer of ``directory``, read once for every call of a ``Predictor``."""
    return load_tokenizer(directory)


def _find_tokenizer(candidates: Sequence[Any]) -> Optional[pathlib.Path]:
    for c in candidates:
        if not c or not isinstance(c, (str, os.PathLike)):
            continue
        d = pathlib.Path(c)
        if any((d / name).is_file() for name in _TOKENIZER_FILES):
            return d
    return None


def load_predictor(path: str | os.PathLike, compute: str = INTEGER) -> Predictor:
    """Loads a packed file or a model checkpoint directory into a ``Predictor``.

    Args:
      path: a ``.safetensors`` file written by ``export.export_packed``, or a directory written
        by ``checkpoints.save_model``.
      compute: a packed file's products: ``integer`` (on codes, weights resident as codes) or
        ``float`` (weights unpacked to float32). A 1-1-1 file runs bitwise and a checkpoint as
        trained either way.
    Returns:
      The predictor; weights are unpacked (packed file) or restored (checkpoint) once, here.
    Raises:
      FileNotFoundError: nothing at ``path``, or a directory without ``model.json``.
      export.PackedFormatError: a file that is not a readable packed model of a supported version.
      ValueError: a checkpoint of another format or version, or an unknown ``compute``.
    """
    if compute not in COMPUTES:
        raise ValueError(f"compute {compute!r}; allowed: {', '.join(COMPUTES)}")
    # A checkpoint directory may be in a remote workdir (gs://...); packed files are local.
    path = workdirs.as_path(path) if workdirs.is_remote(path) else pathlib.Path(path)
    if path.is_file() and bitwise.is_bitwise_file(path):
        params, spec, info = bitwise.load_bitwise(path)
        spec = spec.without_axis()
        return Predictor(spec=spec, params=jax.device_put(params),
                         tokenizer_dir=_find_tokenizer([info.get(k) for k in TOKENIZER_INFO_KEYS]),
                         kind=BITWISE, info=dict(info), path=path, _apply=bitwise.make_forward(spec))
    lat_diag = weight_codes = None
    if path.is_file():
        if compute == INTEGER:
            try:
                params, weight_codes, spec, info = export.load_packed_codes(path)
            except export.NotOnCodes as e:
                log.warning("%s", e)
                compute = FLOAT
        if compute == FLOAT:
            params, spec, info = export.load_packed(path)
        kind, candidates = PACKED, [info.get(k) for k in TOKENIZER_INFO_KEYS]
    elif path.is_dir():
        if not checkpoints.is_model_checkpoint(path):
            raise FileNotFoundError(
                f"{path} is a directory without model.json: not a binarybert-jax model checkpoint "
                f"(expected a directory written by checkpoints.save_model, or a packed .safetensors "
                f"file written by launch.export; a Hugging Face backbone has no task head to "
                f"predict with)")
        params, spec, info = checkpoints.load_model(path)
        lat_diag = checkpoints.load_lat_diag(path)
        kind = CHECKPOINT
        candidates = [path] + [info.get(k) for k in TOKENIZER_INFO_KEYS]
    else:
        raise FileNotFoundError(f"{path}: no such model (expected a packed .safetensors file or a "
                                f"model checkpoint directory)")
    if spec.head not in ("classification", "span"):
        raise ValueError(f"{path}: a {spec.head!r} head; predictions need a classification or span head")
    spec = spec.without_axis()
    return Predictor(spec=spec, params=jax.device_put(params),
                     tokenizer_dir=_find_tokenizer(candidates), kind=kind, info=dict(info),
                     path=path, lat_diag=None if lat_diag is None else jax.device_put(lat_diag),
                     weight_codes=None if weight_codes is None else jax.device_put(weight_codes),
                     compute=compute if kind == PACKED else INTEGER, _apply=evaluate.forward_fn(spec))


def _check_length(predictor: Predictor, max_length: int) -> None:
    positions = predictor.spec.config.max_position
    if max_length > positions:
        # XLA clamps out-of-range gathers: longer inputs would silently reuse the last position.
        raise ValueError(f"max_length {max_length} exceeds the model's {positions} position "
                         "embeddings")


def _logits(predictor: Predictor, arrays: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Logits of every row of ``arrays`` in order, in evaluation batches."""
    # One host: the predictor runs on this process's default device whatever jax.process_count().
    return evaluate.batched_logits(lambda b: (np.asarray(predictor.logits(b)), b["example_index"]),
                                   arrays, batch_size, process_index=0, process_count=1)


def predict_squad(predictor: Predictor, tokenizer, examples: Sequence[squad.SquadExample], *,
                  version: str, max_length: int = 384, doc_stride: int = 128, max_query_length: int = 64,
                  batch_size: int = 32, **answer_options) -> tuple[dict[str, str], dict[str, float]]:
    """Answers of SQuAD questions from a span model: ``squad.encode_squad`` windows, their logits,
    ``squad.postprocess`` (``answer_options``: ``n_best``, ``max_answer_length``,
    ``null_threshold``).

    Returns:
      ``(predictions, null_diffs)`` as ``squad.postprocess`` returns them.
    Raises:
      ValueError: not a span model, or ``max_length`` beyond its position embeddings.
    """
    if predictor.spec.head != "span":
        raise ValueError(f"{predictor.path}: a {predictor.spec.head} head; SQuAD needs a span head")
    _check_length(predictor, max_length)
    features = squad.encode_squad(tokenizer, examples, max_length, doc_stride, max_query_length)
    model_arrays = {k: features[k] for k in MODEL_INPUTS}
    if not len(examples):
        return {}, {}
    return squad.postprocess(examples, features, _logits(predictor, model_arrays, batch_size),
                             version=version, **answer_options)


def predict_examples(predictor: Predictor, tokenizer, examples: Sequence[glue.Example],
                     max_length: int = 128, batch_size: int = 32) -> np.ndarray:
    """Logits of GLUE examples, in their order.

    Args:
      predictor: from ``load_predictor``.
      tokenizer: the model's tokenizer (``tokenizer.load_tokenizer``).
      examples: N examples, all single sentences or all pairs; labels are ignored.
      max_length: padded sequence length T (at most the model's ``max_position``).
      batch_size: examples per forward pass; the last batch is padded to it.
    Returns:
      ``(N, num_labels)`` float32 logits.
    Raises:
      ValueError: ``max_length`` beyond the model's position embeddings.
    """
    _check_length(predictor, max_length)
    arrays = encode.encode_examples(tokenizer, examples, max_length,
                                    is_regression=predictor.num_labels == 1)
    if not len(examples):
        return np.zeros((0, predictor.num_labels), np.float32)
    return _logits(predictor, arrays, batch_size)


def predict_texts(predictor: Predictor, tokenizer, texts_a: Sequence[str],
                  texts_b: Optional[Sequence[str]] = None, max_length: int = 128,
                  batch_size: int = 32) -> np.ndarray:
    """Logits of raw texts (single sentences, or pairs when ``texts_b`` is given).

    Args:
      predictor: from ``load_predictor``.
      tokenizer: the model's tokenizer.
      texts_a: N first sentences.
      texts_b: N second sentences, or None.
      max_length, batch_size: as in ``predict_examples``.
    Returns:
      ``(N, num_labels)`` float32 logits.
    Raises:
      ValueError: ``texts_a`` and ``texts_b`` differ in length.
    """
    if texts_b is not None and len(texts_b) != len(texts_a):
        raise ValueError(f"{len(texts_a)} first sentences but {len(texts_b)} second sentences")
    examples = [glue.Example(f"text-{i}", a, None if texts_b is None else texts_b[i], None)
                for i, a in enumerate(texts_a)]
    return predict_examples(predictor, tokenizer, examples, max_length, batch_size)


__all__ = ["Predictions", "Predictor", "load_predictor", "predict_examples", "predict_squad", "predict_texts"]
