"""Imports Hugging Face BERT checkpoints (``config.json`` + ``model.safetensors``) into our params.

Handles BertModel, BertForSequenceClassification and BertForQuestionAnswering layouts, with or
without the ``bert.`` prefix, and the old ``gamma``/``beta`` LayerNorm names. Weights are read with
``safetensors`` (no torch). Errors name the file, the key and the shapes involved.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from binarybert_jax.data.batching import MODEL_INPUTS
from binarybert_jax.errors import UserError
from binarybert_jax.model import BertConfig, BertModel
from binarybert_jax.trees import flatten, unflatten  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
# Keys present in real checkpoints that this model has no use for.
_IGNORED = (re.compile(r"^embeddings\.position_ids$"), re.compile(r"^cls\."))

_LAYER_MAP = {
    "attention.self.query": "attention/query",
    "attention.self.key": "attention/key",
    "attention.self.value": "attention/value",
    "attention.output.dense": "attention/output",
    "attention.output.LayerNorm": "attention/LayerNorm",
    "intermediate.dense": "ffn/intermediate",
    "output.dense": "ffn/output",
    "output.LayerNorm": "ffn/LayerNorm",
}
_TOP_MAP = {
    "embeddings.LayerNorm": "embeddings/LayerNorm",
    "pooler.dense": "pooler/dense",
    "classifier": "classifier",
    "qa_outputs": "span",
}


class CheckpointError(UserError):
    """A checkpoint that cannot be imported; the message says which file and key."""


def read_hf_config(model_dir: str | pathlib.Path) -> BertConfig:
    """Reads ``config.json`` into a BertConfig, refusing what this model cannot represent."""
    path = pathlib.Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Hugging Face BERT directory needs config.json")
    cfg = json.loads(path.read_text())
    model_type = cfg.get("model_type", "bert")
    if model_type != "bert":
        raise CheckpointError(f"{path}: model_type {model_type!r} is not supported (only 'bert')")
    pos_type = cfg.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise CheckpointError(f"{path}: position_embedding_type {pos_type!r} is not supported "
                              "(only 'absolute')")
    act = cfg.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise CheckpointError(f"{path}: hidden_act {act!r} is not supported; allowed: "
                              f"{sorted(HF_ACTIVATIONS)}")
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if hidden % heads:
        raise CheckpointError(f"{path}: hidden_size {hidden} is not a multiple of "
                              f"num_attention_heads {heads}")
    return BertConfig(
        vocab_size=cfg["vocab_size"], hidden_size=hidden, num_layers=cfg["num_hidden_layers"],
        num_heads=heads, head_dim=hidden // heads, intermediate_size=cfg["intermediate_size"],
        max_position=cfg.get("max_position_embeddings", 512),
        type_vocab_size=cfg.get("type_vocab_size", 2), hidden_act=HF_ACTIVATIONS[act],
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
        hidden_dropout=cfg.get("hidden_dropout_prob", 0.1),
        attention_dropout=cfg.get("attention_probs_dropout_prob", 0.1),
        pad_token_id=cfg.get("pad_token_id", 0) or 0)


def read_hf_tensors(model_dir: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads every tensor of ``model.safetensors`` as float32 numpy arrays (keys unchanged)."""
    model_dir = pathlib.Path(model_dir)
    path = model_dir / "model.safetensors"
    if not path.is_file():
        if (model_dir / "pytorch_model.bin").is_file():
            raise CheckpointError(
                f"{model_dir} has pytorch_model.bin but no model.safetensors. Convert it once where "
                "torch is installed: `python -c \"import torch; from safetensors.torch import save_file; "
                "save_file({k: v.contiguous() for k, v in torch.load('pytorch_model.bin', "
                "map_location='cpu').items()}, 'model.safetensors')\"` (this project never needs torch).")
        raise FileNotFoundError(f"{path} not found: expected model.safetensors in {model_dir}")
    from safetensors.numpy import load_file
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files.
        raise CheckpointError(f"{path} could not be read as safetensors: {e}") from e
    return {k: np.asarray(v, dtype=np.float32) if v.dtype.kind == "f" else np.asarray(v)
            for k, v in tensors.items()}


def _target_path(key: str) -> tuple[str, str] | None:
    """Maps a HF key (prefix stripped) to (our module path, leaf name) or None if unknown."""
    module, _, leaf = key.rpartition(".")
    leaf = {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", module)
    if m:
        sub = _LAYER_MAP.get(m.group(2))
        path = f"encoder/layer_{m.group(1)}/{sub}" if sub else None
    elif module in _TOP_MAP:
        path = _TOP_MAP[module]
    elif module in ("embeddings.word_embeddings", "embeddings.position_embeddings",
                    "embeddings.token_type_embeddings") and leaf == "weight":
        return "embeddings", module.split(".")[1]
    else:
        path = None
    if path is None:
        return None
    if path.endswith("LayerNorm"):
        return path, {"weight": "scale", "bias": "bias"}.get(leaf, "?" + leaf)
    return path, {"weight": "kernel", "bias": "bias"}.get(leaf, "?" + leaf)


def convert_hf_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames HF tensors to our flat ``module/path/leaf`` keys (linear weights transposed to
    ``(in, out)``).

    Raises:
      CheckpointError: listing every key that maps to nothing in this model.
    """
    has_prefix = any(k.startswith("bert.") for k in tensors)
    flat, unknown = {}, []
    for key, value in tensors.items():
        bare = key[len("bert."):] if has_prefix and key.startswith("bert.") else key
        if any(p.search(bare) for p in _IGNORED):
            continue
        target = _target_path(bare)
        if target is None or target[1].startswith("?"):
            unknown.append(key)
            continue
        path, leaf = target
        if leaf == "kernel":
            value = value.T
        flat[f"{path}/{leaf}"] = value
    if unknown:
        raise CheckpointError(f"unknown checkpoint keys (no place in the model): {sorted(unknown)}")
    return flat


# Parameters a fresh model may keep from its own initialisation when the checkpoint lacks them:
# task heads (a backbone checkpoint has none), the pooler (BertForQuestionAnswering has none) and
# activation quantizer parameters (the checkpoint is full precision).
_OPTIONAL = re.compile(r"^(classifier|span|pooler)/|_(clip|step)$")


def merge_pretrained(init_params: Mapping[str, Any], imported: Mapping[str, np.ndarray],
                     source: str = "checkpoint") -> dict[str, Any]:
    """Fills a model's freshly initialised parameter tree with imported weights.

    Args:
      init_params: the target tree (e.g. ``model.init(...)["params"]``), which fixes every shape.
      imported: flat ``path/leaf`` arrays from ``convert_hf_tensors``.
      source: a name for error messages.
    Returns:
      A nested tree with the target's structure.
    Raises:
      CheckpointError: missing keys (listed), keys the model does not have (listed), or shape
        mismatches (key, expected, got).
    """
    target = flatten(init_params)
    missing = sorted(k for k in target if k not in imported and not _OPTIONAL.search(k))
    extra = sorted(k for k in imported if k not in target)
    head_mismatch = [k for k in imported if k in target and _OPTIONAL.search(k)
                     and np.shape(imported[k]) != np.shape(target[k])]
    mismatched = [f"{k}: expected {tuple(np.shape(target[k]))}, got {tuple(np.shape(imported[k]))}"
                  for k in sorted(imported) if k in target and k not in head_mismatch
                  and np.shape(imported[k]) != np.shape(target[k])]
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if extra:
        problems.append(f"keys the model does not have: {extra}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    merged = dict(target)
    for k, v in imported.items():
        if k in head_mismatch:
            # A task head of another label count (e.g. a checkpoint fine-tuned on MNLI used for
            # MRPC) is re-initialised rather than forced in.
            log.warning("%s: %s has shape %s, the model wants %s; keeping a fresh head",
                        source, k, np.shape(v), np.shape(target[k]))
            continue
        merged[k] = np.asarray(v, dtype=getattr(target[k], "dtype", np.float32))
    fresh = sorted(k for k in target if k not in imported and not k.endswith(("_clip", "_step")))
    if fresh:
        log.info("%s: initialised fresh (not in the checkpoint): %s", source, fresh)
    return unflatten(merged)


def load_hf_checkpoint(model_dir: str | pathlib.Path) -> tuple[BertConfig, dict[str, np.ndarray]]:
    """Reads a Hugging Face BERT directory: its BertConfig and its flat, renamed weights."""
    model_dir = pathlib.Path(model_dir)
    config = read_hf_config(model_dir)
    try:
        flat = convert_hf_tensors(read_hf_tensors(model_dir))
    except CheckpointError as e:
        raise CheckpointError(f"{model_dir / 'model.safetensors'}: {e}") from None
    return config, flat


def parity_errors(model_dir: str | pathlib.Path, fixture: str | pathlib.Path) -> dict[str, float]:
    """Max abs errors of our full-precision forward against transformers' ``BertModel`` outputs.

    Args:
      model_dir: the Hugging Face checkpoint the fixture was made from (all-MiniLM-L6-v2 for
        ``minilm_hf_parity.npz``).
      fixture: an ``.npz`` with ``input_ids``, ``token_type_ids``, ``attention_mask`` (B, T) and
        transformers' ``hidden_states`` (L+1, B, T, H), ``attentions`` (L, B, heads, T, T) and
        ``pooler_output`` (B, H) for them.
    Returns:
      ``hidden_<i>`` (over real tokens), ``attention_<i>`` (rows of real queries), ``pooler``, and
      their maxima ``hidden_states``, ``attention_probs``. Padding positions are left out: they
      depend on the additive mask constant (transformers: the dtype's minimum; ours: −10000).
    """
    config, flat = load_hf_checkpoint(model_dir)
    ref = dict(np.load(fixture))
    model = BertModel(config, head="none")
    ids, types, mask = (jnp.asarray(ref[k]) for k in MODEL_INPUTS)
    init = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, types, mask))["params"]
    params = merge_pretrained(init, flat, str(model_dir))
    out = jax.jit(lambda p: model.apply({"params": p}, ids, types, mask, output_attention_probs=True))(params)
    real = ref["attention_mask"].astype(bool)
    errors = {}
    for i in range(config.num_layers + 1):
        errors[f"hidden_{i}"] = float(np.abs(np.asarray(out["hidden_states"][i]) - ref["hidden_states"][i])[real].max())
    for i in range(config.num_layers):
        rows = np.broadcast_to(real[:, None, :, None], ref["attentions"][i].shape)
        errors[f"attention_{i}"] = float(np.abs(np.asarray(out["attention_probs"][i]) - ref["attentions"][i])[rows].max())
    errors["pooler"] = float(np.abs(np.asarray(out["pooled"]) - ref["pooler_output"]).max())
    errors["hidden_states"] = max(v for k, v in errors.items() if k.startswith("hidden_"))
    errors["attention_probs"] = max(v for k, v in errors.items() if k.startswith("attention_"))
    return errors


def to_hf_tensors(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Our full-precision parameter tree -> Hugging Face BERT tensor names (PyTorch layout), the
    inverse of ``convert_hf_tensors``. Split or quantizer parameters have no HF counterpart and are
    refused."""
    inverse_layer = {v: k for k, v in _LAYER_MAP.items()}
    inverse_top = {v: k for k, v in _TOP_MAP.items()}
    out = {}
    for key, value in flatten(params).items():
        module, leaf = key.rsplit("/", 1)
        if leaf.endswith(("_clip", "_step")) or np.ndim(value) > 2 or (leaf == "bias" and np.ndim(value) > 1):
            raise CheckpointError(f"{key} (shape {np.shape(value)}) has no Hugging Face counterpart: "
                                  "export a full-precision, unsplit model")
        if module == "embeddings" and leaf.endswith("_embeddings"):
            name = f"embeddings.{leaf}.weight"
        else:
            m = re.fullmatch(r"encoder/layer_(\d+)/(.+)", module)
            hf_module = (f"encoder.layer.{m.group(1)}.{inverse_layer[m.group(2)]}" if m
                         else inverse_top[module])
            hf_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
            name = f"{hf_module}.{hf_leaf}"
        array = np.asarray(value, np.float32)
        out[prefix + name] = np.ascontiguousarray(array.T if leaf == "kernel" else array)
    return out


def write_hf_checkpoint(directory, params: Mapping[str, Any], config: BertConfig,
                        tokenizer_dir=None) -> pathlib.Path:
    """Writes ``config.json`` + ``model.safetensors`` (and copies the tokenizer files from
    ``tokenizer_dir``) so that transformers or this module can load the model."""
    import shutil
    from safetensors.numpy import save_file
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    act = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}[config.hidden_act]
    if config.num_heads * config.head_dim != config.hidden_size:
        raise CheckpointError(f"a Hugging Face BERT needs num_heads·head_dim == hidden_size; got "
                              f"{config.num_heads}·{config.head_dim} != {config.hidden_size}")
    hf_config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": config.vocab_size,
                 "hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
                 "num_attention_heads": config.num_heads, "intermediate_size": config.intermediate_size,
                 "max_position_embeddings": config.max_position, "type_vocab_size": config.type_vocab_size,
                 "hidden_act": act, "layer_norm_eps": config.layer_norm_eps,
                 "hidden_dropout_prob": config.hidden_dropout,
                 "attention_probs_dropout_prob": config.attention_dropout,
                 "pad_token_id": config.pad_token_id, "position_embedding_type": "absolute"}
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
    save_file(to_hf_tensors(params), str(directory / "model.safetensors"))
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            if (pathlib.Path(tokenizer_dir) / name).is_file():
                shutil.copy(pathlib.Path(tokenizer_dir) / name, directory / name)
    return directory
