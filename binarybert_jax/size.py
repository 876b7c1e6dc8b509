"""Model size accounting, the papers' way, for any ``ModelSpec`` (counted from shapes alone).

What we count
  * 1 bit per binary weight, 2 per ternary weight, k per k-bit LAT or uniform weight. A split
    (ternary-weight-split) matrix counts both of its binary planes: 2 × 1 bit per latent entry.
  * 32 bits per parameter that stays float32: position and segment embeddings, every LayerNorm,
    every bias, the classifier / span head, and the pooler when ``QuantConfig.quantize_pooler``
    is off. Which tensors are quantized is decided exactly as in ``model.py`` (``tensor_plan`` mirrors it): the word embedding at ``embed_bits``; the Q, K, V,
    attention-output, FFN and pooler kernels at ``weight_bits``. The two halves of a split bias
    only ever enter the forward pass as their sum, so a split bias counts (and is exported) once.
  * Scales are counted apart, as float32 numbers: one per matrix (per plane of a split matrix)
    layer-wise, one per row of the word embedding (per plane) row-wise, one per output unit of a
    kernel row-wise. The papers leave them out; ``include_scales=True`` adds them to the total.
  * Activation quantizer parameters (clip pairs, LSQ steps) are counted apart too, float32, and
    left out of the total unless ``include_act_params=True``.
  * The ``.safetensors`` files of ``export.py`` hold exactly these bits (scales and activation
    parameters included), plus up to 7 bits of padding per packed tensor, the per-tensor level
    tables (at most 2^k float32 each), 4 bytes per exact zero of a binary weight, and the file
    header (JSON manifest, ~50 KB for MiniLM): the tests check the payload against this.

MB or MiB
  The papers' "MB" are MiB (2^20 bytes): BERT-base has 109,482,240 parameters without the task
  head (109,483,778 with a 2-label classifier); × 4 bytes = 437.9·10^6 bytes = 417.6 MiB, the
  papers' "417.6 MB". ``SizeReport`` gives both; tables print MiB beside 10^6-byte MB.

What reproduces the papers' numbers (BERT-base shapes; ``paper_comparison()`` computes each)
  * One consistent counting (MiB, above; pooler quantized as in the released code; scales and
    activation parameters out) gives full precision 417.6 (paper 417.6), TernaryBERT 2-2-8 27.96
    (paper 28), half-width binary 1-1-8 9.78 (paper 9.8).
  * BinaryBERT's BWN 1-1-8 "13.4" and TWS 1-1-8 "16.5" do not follow it: the same counting gives
    14.97 and 17.71 MiB. 13.4 is reproduced only by also leaving out the position embeddings and
    the pooler (13.39 MiB); 16.5 only by counting nothing but the binary planes (both planes of
    the half-width encoder matrices and of the word embedding, no float32 parameter at all) in
    10^6-byte MB (16.48). The abstract's "24× smaller" fits our 17.71 MiB (417.6 / 17.71 = 23.6)
    better than 16.5 (25.3). We report the consistent counting everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Optional

import jax
import jax.numpy as jnp

from binarybert_jax import hf_import, quant
from binarybert_jax.model import BertConfig, ModelSpec, QuantConfig, splittable_paths

FLOAT_BITS = 32
MB = 10 ** 6
MIB = 2 ** 20
HEAD_PREFIXES = ("classifier/", "span/")

QUANTIZED, FP32, ACT = "quantized", "fp32", "act"


@dataclasses.dataclass(frozen=True)
class TensorAccount:
    """How one parameter is stored and counted.

    Attributes:
      path: flat parameter path, e.g. ``encoder/layer_0/attention/query/kernel``.
      shape: the parameter's shape (a split weight has a leading axis of 2).
      kind: ``quantized`` | ``fp32`` | ``act`` (activation quantizer parameter).
      bits: bits per entry (32 unless quantized).
      method: the weight quantizer (``twn`` | ``bwn`` | ``lat`` | ``uniform``); None unless
        quantized.
      axes: axes one scale is shared over (quant.py convention), None unless quantized.
      split: the parameter holds two planes along axis 0. A split *bias* (float32) only ever
        enters the forward pass as the sum of its halves, so it is stored and counted summed.
    """

    path: str
    shape: tuple[int, ...]
    kind: str
    bits: int = FLOAT_BITS
    method: Optional[str] = None
    axes: Optional[tuple[int, ...]] = None
    split: bool = False

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def stored_size(self) -> int:
        """Entries actually stored: a split bias is stored as the sum of its halves."""
        return self.size // 2 if self.kind == FP32 and self.split else self.size

    @property
    def num_scales(self) -> int:
        """float32 scales this tensor needs: one per group of entries sharing a scale."""
        if self.kind != QUANTIZED:
            return 0
        shared = 1
        for a in self.axes:
            shared *= self.shape[a]
        return self.size // shared

    @property
    def scale_shape(self) -> tuple[int, ...]:
        """Shape of the scales, keepdims-style (1 along every shared axis)."""
        if self.kind != QUANTIZED:
            return ()
        ndim = len(self.shape)
        shared = {a % ndim for a in self.axes}
        return tuple(1 if i in shared else d for i, d in enumerate(self.shape))

    @property
    def group(self) -> str:
        """The manifest and table name of the parameter's category."""
        if self.kind == QUANTIZED:
            return f"{self.bits}-bit weights"
        return "activation quantizer params" if self.kind == ACT else "float32 params"


def _quantized_kernel_modules(spec: ModelSpec) -> set[str]:
    paths = splittable_paths(spec.config, pooler=spec.quant.quantize_pooler)
    return {p for p in paths if p != "embeddings/word_embeddings"}


def _splittable_modules(spec: ModelSpec) -> set[str]:
    return set(splittable_paths(spec.config, pooler=True)) - {"embeddings/word_embeddings"}


def account_for(path: str, shape: tuple[int, ...], spec: ModelSpec) -> TensorAccount:
    """Classifies one parameter the way ``model.py`` treats it.

    Args:
      path: flat parameter path.
      shape: its shape.
      spec: the model it belongs to.
    Returns:
      Its ``TensorAccount``.
    """
    q: QuantConfig = spec.quant
    shape = tuple(int(d) for d in shape)
    module, _, leaf = path.rpartition("/")
    if leaf.endswith(("_clip", "_step")):
        return TensorAccount(path, shape, ACT)
    if path == "embeddings/word_embeddings" and q.embed_bits < quant.FULL_PRECISION_BITS:
        axes = (-1,) if q.embed_granularity == "row" else quant.LAYERWISE
        return TensorAccount(path, shape, QUANTIZED, q.embed_bits, q.embed_method, axes,
                             split=len(shape) == 3)
    if (leaf == "kernel" and module in _quantized_kernel_modules(spec)
            and q.weight_bits < quant.FULL_PRECISION_BITS):
        axes = quant.LAYERWISE if q.weight_granularity == "layer" else (-2,)
        return TensorAccount(path, shape, QUANTIZED, q.weight_bits, q.weight_method, axes,
                             split=len(shape) == 3)
    if leaf == "bias" and len(shape) == 2 and module in _splittable_modules(spec):
        return TensorAccount(path, shape, FP32, split=True)
    return TensorAccount(path, shape, FP32)


@functools.lru_cache(maxsize=32)
def param_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Flat ``{path: shape}`` of a model's parameters, from ``jax.eval_shape`` (no memory used)."""
    model = spec.build()
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    variables = jax.eval_shape(lambda i: model.init(jax.random.PRNGKey(0), i), ids)
    return {k: tuple(v.shape) for k, v in hf_import.flatten(variables["params"]).items()}


def tensor_plan(spec: ModelSpec, shapes: Optional[dict[str, tuple[int, ...]]] = None
                ) -> list[TensorAccount]:
    """Every parameter of ``spec``'s model with how it is stored, in a stable (sorted) order.

    Args:
      spec: the model.
      shapes: flat ``{path: shape}``; defaults to ``param_shapes(spec)``.
    """
    shapes = param_shapes(spec) if shapes is None else shapes
    return [account_for(p, shapes[p], spec) for p in sorted(shapes)]


@dataclasses.dataclass(frozen=True)
class SizeReport:
    """A model's size, by category.

    Attributes:
      tensors: every counted parameter.
      include_scales / include_act_params: whether scales / activation quantizer parameters are in
        ``total_bits`` (the papers include neither).
    """

    tensors: tuple[TensorAccount, ...]
    include_scales: bool = False
    include_act_params: bool = False

    @property
    def quantized_weights(self) -> dict[int, int]:
        """{bit width: number of weights stored at it} (split planes counted separately)."""
        out: dict[int, int] = {}
        for t in self.tensors:
            if t.kind == QUANTIZED:
                out[t.bits] = out.get(t.bits, 0) + t.size
        return dict(sorted(out.items()))

    @property
    def fp32_params(self) -> int:
        """float32 parameters stored (a split bias counted once, as its summed halves)."""
        return sum(t.stored_size for t in self.tensors if t.kind == FP32)

    @property
    def num_scales(self) -> int:
        return sum(t.num_scales for t in self.tensors)

    @property
    def act_params(self) -> int:
        return sum(t.size for t in self.tensors if t.kind == ACT)

    @property
    def num_params(self) -> int:
        """Every parameter entry (latent weights, float32 parameters, activation parameters)."""
        return sum(t.size for t in self.tensors)

    @property
    def weight_bits(self) -> int:
        return sum(b * n for b, n in self.quantized_weights.items())

    @property
    def scale_bits(self) -> int:
        return FLOAT_BITS * self.num_scales

    @property
    def act_param_bits(self) -> int:
        return FLOAT_BITS * self.act_params

    @property
    def total_bits(self) -> int:
        total = self.weight_bits + FLOAT_BITS * self.fp32_params
        if self.include_scales:
            total += self.scale_bits
        if self.include_act_params:
            total += self.act_param_bits
        return total

    @property
    def payload_bits(self) -> int:
        """Everything a packed file must hold: weights, float32 params, scales, act params."""
        return (self.weight_bits + FLOAT_BITS * self.fp32_params + self.scale_bits
                + self.act_param_bits)

    @property
    def megabytes(self) -> float:
        """``total_bits`` in 10^6-byte MB."""
        return self.total_bits / 8 / MB

    @property
    def mebibytes(self) -> float:
        """``total_bits`` in MiB (2^20 bytes), the unit the papers call MB."""
        return self.total_bits / 8 / MIB

    def bits_where(self, keep) -> int:
        """Bits (weights + float32 params; scales/act params per the flags) of the tensors for
        which ``keep(TensorAccount)`` is true: for alternative countings."""
        total = 0
        for t in self.tensors:
            if not keep(t):
                continue
            if t.kind == QUANTIZED:
                total += t.bits * t.size + (t.num_scales * FLOAT_BITS if self.include_scales else 0)
            elif t.kind == FP32:
                total += FLOAT_BITS * t.stored_size
            elif self.include_act_params:
                total += FLOAT_BITS * t.size
        return total

    def table(self) -> str:
        """A plain-text breakdown: one line per category, then the total."""
        rows = [(f"{b}-bit weights", n, b * n, True) for b, n in self.quantized_weights.items()]
        rows.append(("float32 params", self.fp32_params, FLOAT_BITS * self.fp32_params, True))
        rows.append(("float32 scales", self.num_scales, self.scale_bits, self.include_scales))
        rows.append(("activation quantizer params", self.act_params, self.act_param_bits,
                     self.include_act_params))
        lines = [f"{'category':<30}{'count':>14}{'MiB':>11}{'MB':>11}  in total",
                 "-" * 76]
        for name, count, bits, counted in rows:
            lines.append(f"{name:<30}{count:>14,}{bits / 8 / MIB:>11.3f}{bits / 8 / MB:>11.3f}  "
                         f"{'yes' if counted else 'no'}")
        lines.append("-" * 76)
        lines.append(f"{'total':<30}{self.total_bits:>13,}b{self.mebibytes:>11.3f}"
                     f"{self.megabytes:>11.3f}")
        return "\n".join(lines)


def model_size_bits(spec: ModelSpec, include_head: bool = True, include_scales: bool = False,
                    include_act_params: bool = False) -> SizeReport:
    """The size of ``spec``'s model, counted from its parameter shapes.

    Args:
      spec: the model (architecture, quantization, head).
      include_head: count the task head (classifier or span).
      include_scales: add the float32 scales to the total (the papers do not).
      include_act_params: add activation quantizer parameters to the total (the papers do not).
    Returns:
      A ``SizeReport``.
    """
    plan = tensor_plan(spec)
    if not include_head:
        plan = [t for t in plan if not t.path.startswith(HEAD_PREFIXES)]
    return SizeReport(tuple(plan), include_scales, include_act_params)


# --------------------------------------------------------------------------------------------
# Presets and the papers' numbers.
# --------------------------------------------------------------------------------------------
BERT_BASE = BertConfig()


def default_method(bits: int) -> str:
    """The papers' quantizer for a weight bit width: BWN for 1, TWN for 2, uniform above."""
    return {1: "bwn", 2: "twn"}.get(bits, "uniform")


def parse_bits(wea: str) -> tuple[int, int, int]:
    """``"1-1-8"`` -> (weight bits, embedding bits, activation bits)."""
    parts = wea.split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"bits must look like W-E-A, e.g. 1-1-8 or 32-32-32; got {wea!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def preset_spec(wea: str = "32-32-32", width: float = 1.0, split: bool = False,
                config: BertConfig = BERT_BASE, num_labels: int = 2,
                weight_method: Optional[str] = None, embed_method: Optional[str] = None
                ) -> ModelSpec:
    """A ``ModelSpec`` for W-E-A bits on ``config`` (BERT-base by default).

    Args:
      wea: bits as the papers write them, e.g. ``1-1-8``.
      width: width multiplier (0.5: half the heads and FFN neurons, as DynaBERT's sub-network).
      split: ternary-weight-split model (two binary planes per quantized matrix).
      weight_method / embed_method: quantizers; default BWN for 1 bit, TWN for 2, uniform above.
    """
    w, e, a = parse_bits(wea)
    cfg = config.with_width(width) if width != 1.0 else config
    q = QuantConfig(weight_bits=w, embed_bits=e, act_bits=a,
                    weight_method=weight_method or default_method(w),
                    embed_method=embed_method or default_method(e), split=split)
    return ModelSpec(cfg, q, "classification", num_labels)


@dataclasses.dataclass(frozen=True)
class PaperRow:
    name: str
    ours_mib: float
    paper_mb: float
    note: str


def _is(*prefixes):
    return lambda t: t.path.startswith(prefixes)


def paper_comparison() -> list[PaperRow]:
    """Our sizes of the papers' BERT-base models beside the sizes they print.

    ``ours_mib`` is the consistent counting of the module docstring, in MiB (the papers' "MB").
    Each note says whether that reproduces the paper, and if not, which counting does (computed
    here from the same shapes, not typed in).
    """
    fp = model_size_bits(preset_spec("32-32-32"))
    bwn = model_size_bits(preset_spec("1-1-8"))
    half = model_size_bits(preset_spec("1-1-8", width=0.5))
    tws = model_size_bits(preset_spec("1-1-8", width=0.5, split=True))
    tern = model_size_bits(preset_spec("2-2-8"))

    no_pos_pooler = bwn.bits_where(lambda t: not _is("embeddings/position_embeddings",
                                                     "pooler/")(t)) / 8 / MIB
    planes_only = tws.bits_where(lambda t: t.kind == QUANTIZED and (
        t.path.startswith("encoder/") or t.path == "embeddings/word_embeddings")) / 8 / MB
    params_mb = fp.total_bits / 8 / MB
    return [
        PaperRow("full precision 32-32-32", fp.mebibytes, 417.6,
                 f"matches: {fp.num_params:,} params x 4 bytes = {params_mb:.1f}e6 bytes; the "
                 "papers' MB are MiB"),
        PaperRow("BWN 1-1-8 (full width)", bwn.mebibytes, 13.4,
                 f"paper reproduced only without position embeddings and pooler: "
                 f"{no_pos_pooler:.2f} MiB"),
        PaperRow("TWS 1-1-8 (half width, split)", tws.mebibytes, 16.5,
                 f"paper reproduced only by the binary planes of encoder and word embedding "
                 f"alone, in 10^6-byte MB: {planes_only:.2f} MB; 417.6/{tws.mebibytes:.2f} = "
                 f"{fp.mebibytes / tws.mebibytes:.1f}x fits the abstract's '24x smaller'"),
        PaperRow("half-width binary 1-1-8", half.mebibytes, 9.8, "matches"),
        PaperRow("TernaryBERT 2-2-8 (full width)", tern.mebibytes, 28.0, "matches"),
    ]


def comparison_table(rows: Iterable[PaperRow]) -> str:
    """Plain-text table of ``paper_comparison()`` rows."""
    lines = [f"{'model':<32}{'ours MiB':>10}{'paper':>8}  note", "-" * 100]
    for r in rows:
        lines.append(f"{r.name:<32}{r.ours_mib:>10.2f}{r.paper_mb:>8.1f}  {r.note}")
    return "\n".join(lines)
