"""Real low-bit models: bit-packed export of a trained quantized model, and loading it back.

The authors' code saves float32 tensors that merely hold quantized values; here a binary weight
takes 1 bit on disk, a ternary weight 2, a k-bit weight k.

File format ("binarybert-jax/packed", version 1): ONE ``.safetensors`` file
  One file rather than a directory with a manifest beside it: it is copied, uploaded and
  replaced atomically, and there is no way to pair a manifest with the wrong tensors. safetensors
  is read without pickle (no code runs on load), maps the payload lazily, and its header (read
  without touching the payload) carries a string metadata dict, where the manifest lives.

  Tensors, for a parameter at flat path ``P`` (e.g. ``encoder/layer_0/attention/query/kernel``):
    * float32 parameter (LayerNorm, biases, position/segment embeddings, task head, pooler when
      unquantized, activation clip pairs and LSQ steps): ``P``, float32, its own shape. The two
      halves of a split bias only ever enter the forward pass as their sum, so ``P`` holds that
      sum, shape ``(out,)`` (encoding ``fp32_sum``).
    * quantized weight: ``P:codes`` (uint8, 1-D, bit-packed codes), ``P:scales`` (float32, the
      weight's shape with 1 along every axis a scale is shared over: ``(1, 1)`` per matrix
      layer-wise, ``(V, 1)`` per embedding row, ``(1, out)`` per kernel output unit, and a
      leading 2 for the two planes of a split weight, each plane with its own scales) and
      ``P:levels`` (float32, the 2^k − 1 or fewer code levels, ascending); a binary weight with
      exact zeros also has ``P:zeros`` (uint32 flat C-order indices; uint64 past 2^32 entries).
  Decoding a quantized weight: ``value = scales * levels[code]`` in float32 (scales broadcast),
  then 0 at the ``P:zeros`` indices.
  Codes are indices into ``levels``: binary 0 → −1, 1 → +1 (1 bit); ternary 0, 1, 2 → −1, 0,
  +1 (2 bits); ``int<k>`` 0 .. 2^k − 2 → the 2^k − 1 integers j = −L..L (L = 2^(k−1) − 1, k
  bits), for LAT (the scale is α/L) and uniform k-bit (the scale is the step). The levels are
  ``quant``'s signed integer codes, so ``scales * levels[code]`` is the quantizer's own product.
  Files written before the codes came from ``quant`` hold j·fl(1/L) as LAT's levels and α as its
  scale; they are version 1 all the same (the decoding formula did not change) and load as the
  values of the quantizer of their day.
  Packing: the codes are taken in C order over the whole (planes included) tensor; code ``i``'s
  bit ``b`` (least significant first) is bit number ``i·k + b`` of the stream, and stream bit
  ``n`` is bit ``n % 8`` (least significant first, ``np.packbits(bitorder="little")``) of byte
  ``n // 8``; the last byte is zero-padded.

  Metadata key ``binarybert_jax.manifest``: JSON with ``format``, ``version``, ``spec``
  (``ModelSpec.to_dict()`` of the quantized model), ``info`` (free-form), ``bit_order`` and
  ``tensors``: per parameter path, ``kind`` (quantized | fp32 | act), ``encoding`` (fp32 |
  fp32_sum | binary | ternary | int<k>), ``shape`` (the parameter's shape in the model), and for
  quantized weights ``bits``, ``method``, ``scale_axes``, ``scale_shape``, ``split``, ``levels``
  and ``zeros`` (how many of each).

Why codes and scales are exact
  ``export_packed`` never re-derives a formula: ``quant.weight_quant_codes`` (the one home of the
  formulas) gives the integer codes and per-group scales of each latent weight, jitted as in the
  model's forward pass, and the model's values are by definition ``scales * codes``
  (``quant.weight_quant_values``): the file stores both, and decoding is that same float32
  product. The exporter decodes what it is about to write and raises unless that equals
  ``scales * codes`` entry for entry. BWN maps an exact zero weight to code 0 (sign(0) = 0), a
  value one bit cannot hold: such entries are listed in ``P:zeros``.
  LAT: the codes are the diagonal-free ones unless ``lat_diag`` (the optimizer's second moments
  of the kernels, a tree like the params) is passed. Training quantizes with it (``train`` hands
  it to the model as its ``lat_diag`` collection) and saves it with every model checkpoint;
  ``launch/export.py`` passes it on (``checkpoints.load_lat_diag``), so an exported LAT model
  holds the values it was trained and evaluated with.

Loading on codes (``load_packed_codes``, what ``inference.load_predictor`` runs by default)
  Keeps every quantized weight as its codes: bit planes of the signed integer codes
  (``weight_planes``: 1 bit an entry for binary, 2 for ternary or binary with exact zeros, k for
  k bits) and the file's scales, in the model's ``WEIGHT_CODES`` collection, with the quantized
  spec itself. The model expands one layer's planes at a time inside the forward and multiplies
  codes as the training forward does (``integer_dot``), so the products are the same exact
  integers as the checkpoint's; the logits differ from it only where the checkpoint's compiled
  forward sums a scale (a float mean) in another order, an ulp of that scale.

Loading on floats (``load_packed``)
  Unpacks once into float32 parameters that hold exactly the quantized values, and returns a spec
  for the NORMAL model that does not quantize weights again (``weight_bits = embed_bits = 32``;
  activation quantization and everything else unchanged; see ``inference_spec``). Quantizing the
  values again is not exact: re-averaging |ŵ| in float32 moves a scale by an ulp for many shapes
  (measured on random weights: layer-wise BWN of a (384, 1536) kernel, row-wise BWN/TWN of
  embeddings), and LAT ≥ 3 bits refits to other levels. The quantized spec is returned in
  ``info["quantized_spec"]``; ``requantize=True`` returns it with its own layout instead (to
  fine-tune further; the forward then matches to float rounding). Where the model only ever uses
  the two planes of a split weight as their sum (the word embedding; every matrix when both
  halves share their input quantizer, the default), the loaded model holds that sum: the same
  float32 additions, done once at load.
  The loaded logits equal the source model's bitwise in every configuration of the tests (tiny
  TWN, BWN, split, LAT + LSQ, uniform 8-bit; MiniLM BWN and split). That is not guaranteed: the
  weights equal the quantizer's values as computed on their own under jit, and XLA may compile
  the same reductions with another summation order inside a larger graph (an ulp on a scale).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import zlib
from typing import Any, Mapping, Optional

import jax
import numpy as np

from binarybert_jax import hf_import, quant, size
from binarybert_jax.errors import UserError
from binarybert_jax.model import ModelSpec

log = logging.getLogger(__name__)

FORMAT = "binarybert-jax/packed"
FORMAT_VERSION = 1
MANIFEST_KEY = "binarybert_jax.manifest"
BIT_ORDER = "little"


class PackedFormatError(UserError):
    """A packed file that cannot be read; the message names the file and the tensor."""


class ExportError(UserError):
    """Parameters that cannot be exported exactly; the message names the tensor."""


# --------------------------------------------------------------------------------------------
# Bit packing.
# --------------------------------------------------------------------------------------------
def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packs unsigned integer codes (each < 2^bits) into a little-endian bit stream.

    Args:
      codes: any shape; taken in C order.
      bits: bits per code, 1..16.
    Returns:
      uint8 array of ``ceil(codes.size * bits / 8)`` bytes (layout: module docstring).
    """
    flat = np.ascontiguousarray(codes).reshape(-1)
    if bits == 8:
        return flat.astype(np.uint8)
    if bits == 1:
        return np.packbits(flat.astype(np.uint8), bitorder=BIT_ORDER)
    planes = (flat.astype(np.uint32)[:, None] >> np.arange(bits, dtype=np.uint32)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder=BIT_ORDER)


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_codes``: the first ``count`` codes, 1-D (uint8 to 8 bits, else uint16)."""
    if bits == 8:
        return packed[:count]
    stream = np.unpackbits(packed, count=count * bits, bitorder=BIT_ORDER)
    if bits == 1:
        return stream
    dtype = np.uint8 if bits <= 8 else np.uint16
    codes = np.zeros(count, dtype)
    for b in range(bits):
        codes |= stream[b::bits].astype(dtype) << dtype(b)
    return codes


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


# --------------------------------------------------------------------------------------------
# Codes and scales.
# --------------------------------------------------------------------------------------------
# Jitted like the model's forward pass, and compiled once per shape rather than op by op.
_weight_codes = jax.jit(quant.weight_quant_codes, static_argnums=(1, 2, 3))


def dequantize(codes: np.ndarray, scales: np.ndarray, levels: np.ndarray,
               zeros: Optional[np.ndarray] = None) -> np.ndarray:
    """``scales * levels[codes]`` in float32, then 0 at the flat (C-order) indices ``zeros``.

    Args:
      codes: integer level indices, the weight's shape.
      scales: float32, keepdims shape (broadcasts against ``codes``).
      levels: float32 ``(m,)``.
      zeros: optional flat indices of binary entries that are exactly 0.
    """
    out = (scales.astype(np.float32) * levels.astype(np.float32)[codes]).astype(np.float32)
    if zeros is not None and zeros.size:
        out.reshape(-1)[zeros] = 0
    return out


@dataclasses.dataclass
class _Encoded:
    bits: int
    codes: np.ndarray     # uint8 / uint16 level indices, the weight's shape
    levels: np.ndarray    # float32, ascending
    zeros: np.ndarray     # flat indices of exact zeros no level can hold (binary only)


def _encode(codes: np.ndarray, scales: np.ndarray, bits: int) -> _Encoded:
    """The file's level indices for a quantizer's signed integer codes (``quant.weight_quant_codes``)."""
    if bits == 1:
        # sign(0) = 0 (BWN and 1-bit LAT, as torch.sign in the released code) is a value one bit
        # cannot hold; real checkpoints have a few (3 in MiniLM's word embedding). They are listed
        # apart rather than spending a second bit on every entry. A group whose scale is 0 needs
        # no list: any level times 0 is 0.
        holes = (codes == 0) & (scales != 0)
        return _Encoded(1, (codes > 0).astype(np.uint8), np.array([-1, 1], np.float32),
                        np.flatnonzero(holes))
    top = quant.max_weight_code(bits)
    index = (codes.astype(np.int32) + top).astype(np.uint8 if bits <= 8 else np.uint16)
    return _Encoded(bits, index, np.arange(-top, top + 1, dtype=np.float32), np.zeros(0, np.int64))


# --------------------------------------------------------------------------------------------
# Export.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What ``export_packed`` wrote.

    Attributes:
      path: the file.
      file_bytes: its size on disk.
      payload_bytes: bytes of tensor data (packed codes, scales, levels, float32 parameters).
      accounting: ``size.model_size_bits`` of the spec with scales and activation parameters in.
      overhead_bits: ``payload_bytes·8 − accounting.total_bits`` (code padding + level tables).
      fp32_bytes: the same model's parameters as float32 (4 bytes each, split halves included).
    """

    path: pathlib.Path
    file_bytes: int
    payload_bytes: int
    accounting: size.SizeReport
    overhead_bits: int
    fp32_bytes: int

    @property
    def header_bytes(self) -> int:
        return self.file_bytes - self.payload_bytes


def _check_params(flat: Mapping[str, Any], plan: list[size.TensorAccount], what: str) -> None:
    expected = {t.path: t.shape for t in plan}
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    bad = [f"{k}: expected {expected[k]}, got {tuple(np.shape(flat[k]))}"
           for k in sorted(set(expected) & set(flat)) if tuple(np.shape(flat[k])) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing parameters {missing}")
    if extra:
        problems.append(f"parameters the spec's model does not have {extra}")
    if bad:
        problems.append(f"shape mismatches {bad}")
    if problems:
        raise ExportError(f"{what} do not fit the spec: " + "; ".join(problems))


def export_packed(params: Mapping[str, Any], spec: ModelSpec, path: str | os.PathLike,
                  info: Optional[dict] = None, lat_diag: Optional[Mapping[str, Any]] = None
                  ) -> ExportSummary:
    """Writes a trained quantized model as one bit-packed ``.safetensors`` file.

    Args:
      params: the model's ``params`` tree (nested dict of arrays, as ``model.init(...)["params"]``).
      spec: the model's spec (any W-E-A bits, split or not).
      path: the output file (replaced atomically if it exists).
      info: free-form JSON-serialisable metadata stored in the manifest.
      lat_diag: LAT only: the optimizer's second moments as a tree mirroring ``params`` for the
        kernels (the model's ``lat_diag`` collection); without it the values are diagonal-free.
    Returns:
      An ``ExportSummary``.
    Raises:
      ExportError: parameters that do not fit the spec, or values that cannot be encoded exactly.
    """
    final = pathlib.Path(path).absolute()
    if final.is_dir():
        raise ExportError(f"--out {final} is a directory; give a file path such as {final / 'model.safetensors'}")
    if final.exists() and not final.is_file():
        raise ExportError(f"--out {final} is not a regular file (a device or a pipe); give a file path")
    final = pathlib.Path(os.path.realpath(final))  # through a symlink: the file, not the link, replaced
    remove_stale_temporaries(final)
    from safetensors.numpy import save_file

    plan = size.tensor_plan(spec)
    flat = hf_import.flatten(params)
    _check_params(flat, plan, "params")
    diag = hf_import.flatten(lat_diag) if lat_diag is not None else {}

    tensors: dict[str, np.ndarray] = {}
    entries: dict[str, dict] = {}
    for acct in plan:
        w = np.asarray(flat[acct.path], np.float32)
        entry: dict[str, Any] = {"kind": acct.kind, "shape": list(acct.shape)}
        if acct.kind != size.QUANTIZED:
            if acct.split:  # a split bias: the forward pass only uses its summed halves
                tensors[acct.path] = (w[0] + w[1]).astype(np.float32)
                entry["encoding"] = "fp32_sum"
            else:
                tensors[acct.path] = w
                entry["encoding"] = "fp32"
            entries[acct.path] = entry
            continue
        if not np.all(np.isfinite(w)):
            raise ExportError(f"{acct.path}: the latent weight is not all finite")
        d = diag.get(acct.path) if acct.method == "lat" else None
        codes, scales = _weight_codes(w, acct.method, acct.bits, tuple(acct.axes),
                                      None if d is None else np.asarray(d, np.float32))
        codes, scales = np.asarray(codes), np.asarray(scales, np.float32)
        enc = _encode(codes, scales, acct.bits)
        packed = pack_codes(enc.codes, enc.bits)
        # Decode exactly what is written, and refuse to write anything that does not decode to
        # the quantizer's values scales·codes (IEEE equality: -0.0 == 0.0).
        zeros = enc.zeros.astype(np.uint32 if acct.size < 2 ** 32 else np.uint64)
        decoded = dequantize(unpack_codes(packed, enc.bits, acct.size).reshape(acct.shape),
                             scales, enc.levels, zeros)
        values = scales * codes.astype(np.float32)
        if not np.array_equal(decoded, values):
            raise ExportError(f"{acct.path}: decoded values differ from the quantized values at "
                              f"{int(np.sum(decoded != values))} entries")
        tensors[f"{acct.path}:codes"] = packed
        tensors[f"{acct.path}:scales"] = scales
        tensors[f"{acct.path}:levels"] = enc.levels
        if zeros.size:
            tensors[f"{acct.path}:zeros"] = zeros
        entry.update(encoding=_encoding_name(enc.bits, len(enc.levels)), bits=enc.bits,
                     method=acct.method, scale_axes=list(acct.axes),
                     scale_shape=list(acct.scale_shape), split=acct.split,
                     levels=len(enc.levels), zeros=int(zeros.size))
        entries[acct.path] = entry

    arrays = {k: np.array(v, order="C") for k, v in tensors.items()}
    for name, entry in entries.items():
        entry["crc32"] = parameter_checksum(arrays, entry, name)
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "spec": spec.to_dict(),
                "info": info or {}, "bit_order": BIT_ORDER, "tensors": entries}
    tmp = final.with_name(f"{final.name}{TMP_INFIX}{os.getpid()}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        save_file(arrays, str(tmp), metadata={MANIFEST_KEY: json.dumps(manifest, sort_keys=True)})
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind

    payload = sum(v.nbytes for v in tensors.values())
    accounting = size.SizeReport(tuple(plan), include_scales=True, include_act_params=True)
    return ExportSummary(final, final.stat().st_size, payload, accounting,
                         payload * 8 - accounting.total_bits, 4 * accounting.num_params)


def _encoding_name(bits: int, num_levels: int) -> str:
    if bits == 1:
        return "binary"
    if bits == 2 and num_levels == 3:
        return "ternary"
    return f"int{bits}"


# --------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike) -> dict:
    """Reads and validates the manifest of a packed file (the payload is not read).

    Raises:
      FileNotFoundError: no such file.
      PackedFormatError: not a safetensors file, no manifest, another format, or another version.
    """
    from safetensors import safe_open

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such packed model file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt files.
        raise PackedFormatError(f"{path} could not be read as safetensors: {e}") from e
    if MANIFEST_KEY not in metadata:
        raise PackedFormatError(f"{path} is a safetensors file without a {MANIFEST_KEY!r} "
                                f"manifest: not a {FORMAT} file")
    try:
        manifest = json.loads(metadata[MANIFEST_KEY])
    except json.JSONDecodeError as e:
        raise PackedFormatError(f"{path}: the manifest is not valid JSON: {e}") from e
    if manifest.get("format") != FORMAT:
        raise PackedFormatError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise PackedFormatError(f"{path}: {FORMAT} version {manifest.get('version')!r} is not "
                                f"supported (this code reads version {FORMAT_VERSION})")
    if manifest.get("bit_order", BIT_ORDER) != BIT_ORDER:
        raise PackedFormatError(f"{path}: bit order {manifest['bit_order']!r} is not {BIT_ORDER!r}")
    return manifest


_ENCODINGS = ("fp32", "fp32_sum", "binary", "ternary") + tuple(f"int{k}" for k in range(2, 17))


def _check_entry(entry: Any, name: str, path) -> None:
    """Refuses a manifest entry that does not describe a tensor this loader can rebuild."""
    def bad(why):
        return PackedFormatError(f"{path}: manifest entry {name!r}: {why}")
    if not isinstance(entry, Mapping):
        raise bad(f"not an object: {entry!r}")
    if entry.get("encoding") not in _ENCODINGS:
        raise bad(f"unknown encoding {entry.get('encoding')!r}; known: "
                  f"{', '.join(_ENCODINGS[:4])}, int<k> (k = 2..16)")
    shape = tuple(entry.get("shape", ()))
    if entry["encoding"] == "fp32_sum" and (len(shape) < 1 or shape[0] != 2):
        raise bad(f"fp32_sum needs a leading axis of 2, shape is {shape}")
    if entry["encoding"].startswith("fp32"):
        return
    for key in ("bits", "scale_shape", "levels"):
        if key not in entry:
            raise bad(f"a quantized weight needs {key!r}")
    scale_shape = tuple(entry["scale_shape"])
    if len(scale_shape) != len(shape) or any(s not in (1, d) for s, d in zip(scale_shape, shape)):
        raise bad(f"scale shape {scale_shape} does not broadcast to the weight's shape {shape}")
    if not 1 <= int(entry["bits"]) <= 16 or not 1 <= int(entry["levels"]) <= 2 ** entry["bits"]:
        raise bad(f"{entry['levels']} levels in {entry['bits']} bits")


def _expected_tensors(entry: Mapping[str, Any], name: str
                      ) -> dict[str, tuple[tuple[int, ...], str]]:
    """The file tensors (name -> (shape, dtype)) one manifest entry implies."""
    shape = tuple(entry["shape"])
    encoding = entry["encoding"]
    if encoding == "fp32":
        return {name: (shape, "float32")}
    if encoding == "fp32_sum":
        return {name: (shape[1:], "float32")}
    count = math.prod(shape)
    out = {f"{name}:codes": ((packed_nbytes(count, entry["bits"]),), "uint8"),
           f"{name}:scales": (tuple(entry["scale_shape"]), "float32"),
           f"{name}:levels": ((entry["levels"],), "float32")}
    if entry.get("zeros", 0):
        out[f"{name}:zeros"] = ((entry["zeros"],), "uint32" if count < 2 ** 32 else "uint64")
    return out


# safetensors' dtype names -> numpy's, for error messages that compare like with like.
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64",
           "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}


def read_packed_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Reads and verifies every stored tensor of a packed file, decoding nothing.

    The checks of ``load_packed`` (format, version, spec, the manifest's entries against the
    spec's model, every tensor's presence, shape and dtype, and its checksum); the bitwise
    inference path (``bitwise.py``) reads the 1-bit planes from here without turning them into
    float weights.

    Returns:
      (raw, manifest): ``{file tensor name: numpy array}`` (``P``, ``P:codes``, ``P:scales``,
      ``P:levels``, ``P:zeros``) and the manifest.
    Raises:
      FileNotFoundError, PackedFormatError: as ``load_packed``.
    """
    from safetensors import safe_open

    manifest = read_manifest(path)
    try:
        spec = ModelSpec.from_dict(manifest["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise PackedFormatError(f"{path}: the manifest's model spec is invalid: {e}") from e
    entries = manifest.get("tensors", {})
    plan = {t.path: t for t in size.tensor_plan(spec)}
    wrong = sorted(set(plan) ^ set(entries))
    if wrong:
        raise PackedFormatError(f"{path}: the manifest's tensors do not match its spec's model "
                                f"(differing parameters: {wrong})")
    for name, entry in entries.items():
        _check_entry(entry, name, path)
        if tuple(entry.get("shape", ())) != plan[name].shape:
            raise PackedFormatError(f"{path}: manifest entry {name!r} has shape "
                                    f"{tuple(entry.get('shape', ()))}, the spec's model wants "
                                    f"{plan[name].shape}")

    expected: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, entry in entries.items():
        expected.update(_expected_tensors(entry, name))
    with safe_open(str(path), framework="numpy") as f:
        present = set(f.keys())
        missing = sorted(set(expected) - present)
        if missing:
            raise PackedFormatError(f"{path}: missing tensors {missing}")
        extra = sorted(present - set(expected))
        if extra:
            raise PackedFormatError(f"{path}: unexpected tensors {extra}")
        for key, (shape, dtype) in expected.items():
            sl = f.get_slice(key)
            got_shape = tuple(sl.get_shape())
            got_dtype = _DTYPES.get(sl.get_dtype(), sl.get_dtype())
            if got_shape != shape or got_dtype != dtype:
                raise PackedFormatError(f"{path}: tensor {key!r}: expected shape {shape} "
                                        f"{dtype}, got {got_shape} {got_dtype}")
        raw = {key: f.get_tensor(key) for key in expected}
    _verify_checksums(entries, raw, path)

    return raw, manifest


def load_packed(path: str | os.PathLike, requantize: bool = False
                ) -> tuple[dict[str, Any], ModelSpec, dict]:
    """Loads a packed file into float32 parameters for the normal model.

    Args:
      path: a file written by ``export_packed``.
      requantize: False (default): weights hold their quantized values and the returned spec
        does not quantize them again (exact: the same logits as the quantized source model).
        True: the quantized spec and its own parameter layout, to fine-tune further (its
        quantizers then re-quantize the values, equal up to float rounding of the scales).
    Returns:
      (params, spec, info): the nested ``params`` tree (numpy float32), the spec to build the
      model with, and the stored info plus ``quantized_spec`` (the source model's spec as a dict).
    Raises:
      FileNotFoundError, PackedFormatError: unreadable file, unknown format or version, missing,
        unexpected, mis-shaped or mis-typed tensors (each named with expected and found).
    """
    raw, manifest, spec, flat, quantized = _read_entries(path)
    for name, (codes, levels, _) in quantized.items():
        flat[name] = dequantize(codes, raw[f"{name}:scales"], levels, raw.get(f"{name}:zeros"))
    info = dict(manifest.get("info", {}))
    info["quantized_spec"] = spec.to_dict()
    if requantize:
        return hf_import.unflatten(flat), spec, info

    inference = inference_spec(spec)
    return hf_import.unflatten(_merge_planes(flat, inference)), inference, info


def _read_entries(path: str | os.PathLike):
    """A packed file's tensors, checked: (raw tensors, manifest, quantized spec, the float32
    parameters by flat name, and per quantized weight its (level indices, level table, entry)).
    A split bias is stored summed; the forward adds its two halves, so (sum, 0) is it exactly."""
    raw, manifest = read_packed_tensors(path)
    spec = ModelSpec.from_dict(manifest["spec"])
    flat: dict[str, np.ndarray] = {}
    quantized: dict[str, tuple[np.ndarray, np.ndarray, Mapping[str, Any]]] = {}
    for name, entry in manifest["tensors"].items():
        if entry["encoding"] == "fp32":
            flat[name] = raw[name]
        elif entry["encoding"] == "fp32_sum":
            flat[name] = np.stack([raw[name], np.zeros_like(raw[name])])
        else:
            quantized[name] = (*_level_indices(raw, name, entry, path), entry)
    return raw, manifest, spec, flat, quantized


def _level_indices(raw: Mapping[str, np.ndarray], name: str, entry: Mapping[str, Any], path
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(level indices, level table) of one quantized weight, checked against its levels."""
    shape = tuple(entry["shape"])
    count = math.prod(shape)
    codes = unpack_codes(raw[f"{name}:codes"], entry["bits"], count)
    levels = raw[f"{name}:levels"]
    if codes.size and int(codes.max()) >= len(levels):
        raise PackedFormatError(f"{path}: tensor {name + ':codes'!r} holds code "
                                f"{int(codes.max())} but only {len(levels)} levels")
    zeros = raw.get(f"{name}:zeros")
    if zeros is not None and zeros.size and int(zeros.max()) >= count:
        raise PackedFormatError(f"{path}: tensor {name + ':zeros'!r} indexes entry "
                                f"{int(zeros.max())} of a {count}-entry weight")
    return codes.reshape(shape), levels


def integer_levels(levels: np.ndarray) -> bool:
    """Whether a weight's level table is the quantizer's signed integer codes (every file but
    LAT's written before the codes came from ``quant``, whose levels are j·fl(1/L))."""
    return bool(np.all(levels == np.round(levels)) and np.all(np.abs(levels) <= 2 ** 15))


class NotOnCodes(PackedFormatError):
    """A packed file whose weights cannot run on integer codes (levels that are not integers)."""


def load_packed_codes(path: str | os.PathLike
                      ) -> tuple[dict[str, Any], dict[str, Any], ModelSpec, dict]:
    """Loads a packed file to run on integer codes: the quantized model's own spec, its float32
    parameters, and its quantized weights as codes kept resident (``weight_planes``).

    The model (``model.QuantDense``, ``model.Embeddings``) reads a weight from the
    ``model.WEIGHT_CODES`` collection in place of its latent parameter: ``<P>_planes`` (the bit
    planes of its codes) and ``<P>_scale`` (the file's scales), so its values are
    ``scale · codes``, the quantizer's own product and what ``load_packed`` decodes; its products
    with quantized activations are the integer-domain ones of the training forward
    (``integer_dot``), on the same codes and scales as the checkpoint's forward.

    Returns:
      (params, weight_codes, spec, info): the ``params`` tree without the quantized weights
      (numpy float32; a split bias as (sum, 0)), the ``WEIGHT_CODES`` tree (uint8 planes, float32
      scales, and ``<P>_one_product`` on the split weights whose halves run as one product:
      ``_one_product_where_exact``), the quantized spec, and the stored info plus
      ``quantized_spec``.
    Raises:
      FileNotFoundError, PackedFormatError: as ``load_packed``; ``NotOnCodes`` for level tables
        that are not integer codes (load those with ``load_packed``).
    """
    from binarybert_jax import weight_planes

    raw, manifest, spec, flat, quantized = _read_entries(path)
    codes_flat: dict[str, np.ndarray] = {}
    for name, (index, levels, entry) in quantized.items():
        if not integer_levels(levels):
            raise NotOnCodes(f"{path}: {name!r} has levels that are not integer codes (a LAT "
                             "file written before codes came from the quantizer); it runs "
                             "on float weights only (compute='float')")
        codes = levels.astype(np.int32)[index]
        zeros = raw.get(f"{name}:zeros")
        if zeros is not None and zeros.size:
            codes.reshape(-1)[zeros] = 0
        codes_flat[f"{name}_planes"] = weight_planes.to_planes(
            codes, weight_planes.planes_for(codes, entry["bits"]))
        codes_flat[f"{name}_scale"] = np.asarray(raw[f"{name}:scales"], np.float32)
    info = dict(manifest.get("info", {}))
    info["quantized_spec"] = spec.to_dict()
    _one_product_where_exact(spec, codes_flat)
    return hf_import.unflatten(flat), hf_import.unflatten(codes_flat), spec, info


def _one_product_where_exact(spec: ModelSpec, codes_flat: dict[str, np.ndarray]) -> None:
    """Marks (``<P>_one_product``, ``model.ONE_PRODUCT``) the split weights whose two halves may be
    multiplied as one product of their summed codes with the same bits as their two products.

    Both halves share their input quantizer and have equal scales (a layer just split from a
    ternary one, before its halves train apart): the summed operand
    (``integer_dot.summed_halves_operand``) is then the exact integer codes k1 + k2 at the common
    scale, its one product the exact integer P1 + P2, and the scaling the same multiplications as
    the two products' (the halves' scale difference is 0): half the multiply-adds. Halves whose
    scales differ, even by one rounding, keep their two exact products."""
    from binarybert_jax import model

    q = spec.quant
    if not (q.split and q.split_shared_act):
        return
    for key, scale in list(codes_flat.items()):
        name = key.removesuffix("_scale")
        if (key.endswith("_scale") and not key.startswith("embeddings/")
                and q.is_split(name.rsplit("/", 1)[0]) and scale.shape[:1] == (2,)
                and np.array_equal(scale[0], scale[1])):
            codes_flat[f"{name}_{model.ONE_PRODUCT}"] = np.ones((), np.bool_)


# The temporary file an export writes beside its output, then renames over it; the process id
# tells whose it is.
TMP_INFIX = ".tmp"


def remove_stale_temporaries(final: pathlib.Path) -> list[pathlib.Path]:
    """Removes the temporary files that exports to ``final`` killed before their rename (SIGKILL,
    a machine taken away) left beside it: ``<name>.tmp<pid>`` of a process that is gone. Those of
    a live process (a concurrent export) stay. Returns the files removed."""
    removed = []
    prefix = final.name + TMP_INFIX
    for leftover in final.parent.glob(f"{final.name}{TMP_INFIX}*") if final.parent.is_dir() else ():
        pid = leftover.name[len(prefix):]
        if not pid.isdigit() or _alive(int(pid)) or not leftover.is_file():
            continue
        leftover.unlink(missing_ok=True)
        removed.append(leftover)
        log.warning("removed %s, the partial file of an export that was killed", leftover)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parameter_checksum(arrays: Mapping[str, np.ndarray], entry: Mapping[str, Any], name: str) -> str:
    """CRC-32 of the bytes of every file tensor one parameter is stored in (codes, scales, levels,
    zeros or the float32 values), in a fixed order: any flipped byte changes it."""
    crc = 0
    for key in sorted(_expected_tensors(entry, name)):
        crc = zlib.crc32(np.ascontiguousarray(arrays[key]).tobytes(), crc)
    return f"{crc:08x}"


def _verify_checksums(entries: Mapping[str, Any], raw: Mapping[str, np.ndarray], path) -> None:
    """Refuses a parameter whose stored bytes differ from the checksum its manifest entry recorded;
    files written before checksums existed load unverified, with a note."""
    unchecked = [name for name, entry in entries.items() if "crc32" not in entry]
    if unchecked:
        # A warning, shown by every main: a file whose checksums were stripped loads unverified.
        log.warning("warning: %s: %d of %d tensors have no checksum (an older export, or the checksums "
                    "were removed); they load unverified", path, len(unchecked), len(entries))
    for name, entry in entries.items():
        if "crc32" in entry and parameter_checksum(raw, entry, name) != entry["crc32"]:
            raise PackedFormatError(f"{path}: the stored tensors of {name!r} do not match their checksum: "
                                    "the file is corrupt (re-export it from the checkpoint)")


def inference_spec(spec: ModelSpec) -> ModelSpec:
    """The spec ``load_packed`` returns for a quantized ``spec``: weights are not quantized again
    (they hold their quantized values), activations are quantized as before. A split model whose
    halves share their input quantizer becomes a plain one: x·Ŵ1 + x·Ŵ2 is computed by the model
    as x·(Ŵ1 + Ŵ2) anyway, so the summed kernel gives the same logits with one plane."""
    q = dataclasses.replace(spec.quant, weight_bits=quant.FULL_PRECISION_BITS,
                            embed_bits=quant.FULL_PRECISION_BITS)
    if q.split and q.split_shared_act:
        q = dataclasses.replace(q, split=False, unsplit=())
    return dataclasses.replace(spec, quant=q)


def _merge_planes(flat: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Sums the two planes of every parameter that ``spec``'s model holds unsplit.

    The model only ever uses such a pair as its sum (Ŵ1 + Ŵ2 before the matmul, bias1 + bias2,
    the two gathered embedding rows added), and float32 addition gives the same sum before.
    """
    want = size.param_shapes(spec)
    out = {}
    for k, v in flat.items():
        if k in want and v.shape == (2,) + tuple(want[k]):
            v = (v[0] + v[1]).astype(np.float32)
        out[k] = v
    bad = sorted(k for k in set(want) | set(out) if tuple(want.get(k, ())) != np.shape(out.get(k)))
    if bad:  # a bug here, not in the file: the inference layout must follow from the spec's
        raise PackedFormatError(f"parameters do not fit the inference model: {bad}")
    return out
