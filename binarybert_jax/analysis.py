"""The paper's §2 analysis: loss landscapes and top Hessian eigenvalues of full-precision, ternary
and binary models.

BinaryBERT argues that a binary BERT is hard to train directly because its loss landscape is steep
and irregular where the ternary one is flat and smooth. Two measurements back that, and both are
here as pure functions over a ``ModelSpec``, its parameters and a fixed list of batches:

* **Loss landscape** (``landscape_grid``): two weight matrices W_x, W_y (by default the attention
  value matrices of the first two layers) are perturbed as W_x + x·1, W_y + y·1 with
  x ∈ {0, ±0.2, …, ±1.0}·mean|W_x| (y alike), and at every grid point the task loss of the model is
  evaluated, its quantizers applied to the perturbed *latent* weights. One compiled function takes
  the two offsets as inputs and is called once per point, so the grid costs one compilation.
* **Steepness** (``top_eigenvalues``): λ_max of the loss Hessian with respect to each Transformer
  part (``PARTS``: MHA-QK, MHA-V, MHA-O, FFN-Mid, FFN-Out) of each layer, by Lanczos (or power
  iteration) on Hessian-vector products.

Which Hessian: through the straight-through estimator the quantized forward is piecewise constant
in the latent weights, so its "Hessian" w.r.t. them is not the object of the paper's bound
ℓ(ŵ) − ℓ(w) ≈ εᵀHε ≤ λ_max‖ε‖². We take the Hessian with respect to the *quantized* weights ŵ = Q(w):
the model whose weights are fixed at ŵ runs a full-precision weight path (``quantized_weights``,
``export.inference_spec``) with its activation quantizers kept, and H is the Hessian of its task
loss w.r.t. one part's kernels, every other parameter held at its (quantized) value. Biases,
LayerNorms and the embeddings are not part of any part. ``quantization_error`` gives the bound's
other factor, ‖w − ŵ‖² per part.

HVPs are reverse-over-reverse (the gradient of ⟨∇ℓ, v⟩): ``jax.custom_vjp`` functions (our
activation quantizers) have no forward-mode rule, so ``jvp(grad ℓ)`` would fail for a model that
quantizes activations. One HVP function is compiled for all parts: it differentiates every kernel
of the analysed layers and a part is selected by a tangent that is zero elsewhere, so 30 parts cost one compilation
(the price: each product also computes second-order terms of the other kernels of the analysed
layers, which are dropped).

Losses are eval-mode (no dropout) means over real examples: cross-entropy against the labels, or
MSE for a regression task (one output).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from binarybert_jax import export, hf_import, kd, quant, size, workdirs
from binarybert_jax.model import ModelSpec, calibrate_act_quantizers
from binarybert_jax.errors import UserError
from binarybert_jax.sharding import MODEL_INPUTS, device_batch
from binarybert_jax.trees import flatten, unflatten

# The paper's Transformer parts: the kernels (module paths inside ``encoder/layer_<i>``) whose
# Hessian block each eigenvalue belongs to.
PARTS: dict[str, tuple[str, ...]] = {
    "MHA-QK": ("attention/query", "attention/key"),
    "MHA-V": ("attention/value",),
    "MHA-O": ("attention/output",),
    "FFN-Mid": ("ffn/intermediate",),
    "FFN-Out": ("ffn/output",),
}
# What "quantized without training" turns a model into: (weight/embedding method, bits); the
# method is irrelevant at 32 bits.
QUANTIZATIONS = {"fp": ("twn", quant.FULL_PRECISION_BITS), "twn": ("twn", 2), "bwn": ("bwn", 1)}
DEFAULT_LANDSCAPE_MATRICES = ("encoder/layer_0/attention/value", "encoder/layer_1/attention/value")
EIGEN_METHODS = ("lanczos", "power")
ANALYSES = ("landscape", "hessian", "clipping")  # what launch.analyze can run (``analyses``)


# ---------------------------------------------------------------------------------------------
# Models: quantizing without training, the quantized weights ŵ.
# ---------------------------------------------------------------------------------------------
def quantize_without_training(spec: ModelSpec, params: Any, method: str,
                              act_bits: Optional[int] = None,
                              calibration_batch: Optional[Mapping[str, Any]] = None
                              ) -> tuple[ModelSpec, Any]:
    """The same latent weights under another quantization (the paper's §2 protocol).

    Args:
      spec, params: a model (usually a fine-tuned full-precision one).
      method: ``fp`` (32-bit weights), ``twn`` (W-E 2-2) or ``bwn`` (W-E 1-1), see ``QUANTIZATIONS``.
      act_bits: activation bits; None keeps ``spec``'s. Activation quantizer parameters that
        ``params`` lacks start as a fresh model's (clips at ±``clip_init``); LSQ steps and
        percentile clips are calibrated on ``calibration_batch`` (then required), as training
        does on its first batch.
      calibration_batch: model inputs (``input_ids``, ``token_type_ids``, ``attention_mask``).
    Returns:
      ``(spec, params)`` of the quantized model, its latent weights those of ``params``.
    """
    if method not in QUANTIZATIONS:
        raise UserError(f"unknown quantization {method!r}; allowed: {sorted(QUANTIZATIONS)}")
    check_unsplit(spec)
    weight_method, bits = QUANTIZATIONS[method]
    q = dataclasses.replace(spec.quant, weight_method=weight_method, embed_method=weight_method,
                            weight_bits=bits, embed_bits=bits,
                            act_bits=spec.quant.act_bits if act_bits is None else int(act_bits))
    new = dataclasses.replace(spec, quant=q).without_axis()
    model = new.build()
    init = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 2), jnp.int32))["params"]
    target = flatten(init)
    source = flatten(params)
    # A quantized source's clips or steps have no place in a model without activation quantizers.
    imported = {k: v for k, v in source.items()
                if k in target or not k.endswith(("_clip", "_step"))}
    merged = hf_import.merge_pretrained(init, imported, f"the {method} model")
    calibrate = q.calibrates_acts and any(k.endswith(("_step", "_clip")) and k not in source
                                          for k in target)
    if calibrate:
        if calibration_batch is None:
            raise UserError("the model has activation quantizers that start from the data (LSQ "
                             "steps, percentile clips) and none trained: pass a calibration_batch "
                             "to initialise them")
        merged = calibrate_act_quantizers(model, merged,
                                          *[jnp.asarray(calibration_batch[k]) for k in MODEL_INPUTS])
    return new, jax.tree_util.tree_map(jnp.asarray, merged)


def check_unsplit(spec: ModelSpec) -> None:
    """Raises ValueError for a ternary-weight-split model (two latent halves per matrix)."""
    if spec.quant.split:
        raise UserError("the analysis needs an unsplit model: a split model computes the same "
                         "function as the ternary model it was split from; analyse that one")


def quantized_weights(spec: ModelSpec, params: Any) -> tuple[ModelSpec, Any]:
    """The model whose weights are fixed at ŵ = Q(w): every quantized matrix replaced by its
    quantized values, run with weight quantization off and activation quantization as ``spec``'s
    (``export.inference_spec``). Its loss equals ``spec``'s at ``params``; its derivatives are
    those with respect to ŵ.

    Returns:
      ``(spec_hat, params_hat)``; unquantized parameters are shared with ``params``.
    """
    check_unsplit(spec)
    flat = flatten(params)
    out = {}
    for path, value in flat.items():
        acct = size.account_for(path, np.shape(value), spec)
        if acct.kind == size.QUANTIZED:
            value = quant.weight_quant_values(jnp.asarray(value), acct.method, acct.bits, acct.axes)
        out[path] = jnp.asarray(value)
    return export.inference_spec(spec).without_axis(), unflatten(out)


def part_kernels(part: str, layer: int) -> tuple[str, ...]:
    """Flat paths of the kernels of one Transformer part, e.g. ``("encoder/layer_0/attention/
    query/kernel", "encoder/layer_0/attention/key/kernel")`` for ``MHA-QK`` of layer 0."""
    if part not in PARTS:
        raise UserError(f"unknown Transformer part {part!r}; allowed: {list(PARTS)}")
    return tuple(f"encoder/layer_{layer}/{m}/kernel" for m in PARTS[part])


def quantization_error(spec: ModelSpec, params: Any, paths: Sequence[str]) -> float:
    """‖w − ŵ‖² summed over the parameters at ``paths`` (0 for unquantized ones)."""
    flat = flatten(params)
    _, hat = quantized_weights(spec, unflatten({k: flat[k] for k in paths}))
    hat = flatten(hat)
    return float(sum(jnp.sum(jnp.square(jnp.asarray(flat[k]) - hat[k])) for k in paths))


# ---------------------------------------------------------------------------------------------
# The task loss on a fixed list of batches.
# ---------------------------------------------------------------------------------------------
def device_batches(batches: Sequence[Mapping[str, Any]]) -> tuple[dict, ...]:
    """``sharding.device_batch`` of each batch, labels included (the analyses' loss reads them)."""
    out = tuple(device_batch(b, labels=True) for b in batches)
    if not out:
        raise ValueError("the analysis needs at least one batch")
    return out


def task_loss(spec: ModelSpec, params: Any, batches: Sequence[Mapping[str, Any]]) -> jax.Array:
    """Eval-mode task loss over ``batches``: per-batch means over real examples, averaged with
    the batches' real-example counts as weights (so it is the mean over all real examples).
    Cross-entropy against ``labels``, MSE for a one-output (regression) head.

    The quantized products are the float32 products of the values: the loss is differentiated
    twice (Hessian-vector products), and the integer-domain products' backward rebuilds each
    activation from its integer codes, which carry no derivative of their own (their forward
    values agree to a rounding)."""
    model = spec.build(integer_products=False)
    total, count = 0.0, 0.0
    for batch in batches:
        logits = model.apply({"params": params}, *[batch[k] for k in MODEL_INPUTS],
                             deterministic=True)["logits"]
        loss = kd.label_loss(logits, batch["labels"], batch["example_mask"], is_regression=spec.num_labels == 1)
        n = jnp.sum(batch["example_mask"])
        total, count = total + n * loss, count + n
    return total / count


# ---------------------------------------------------------------------------------------------
# Activation clipping: how much of each quantized activation the uniform quantizer's clip cuts.
# ---------------------------------------------------------------------------------------------
def activation_clipping(spec: ModelSpec, params: Any,
                        batches: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per uniform activation quantizer (the path of its clip parameter, e.g.
    ``encoder/layer_0/attention/query/input_clip``; ``…#1`` for a split layer's second half), ``quant.clip_statistics`` summed over the
    eval-mode forward passes of ``batches`` (``absmax`` their maximum), real tokens only.

    With the clips a model was trained with, this is how much training let them cut; on a
    full-precision model quantized without training (``quantize_without_training``), how much
    the initial ±``clip_init`` would cut of what the backbone produces."""
    if spec.quant.act_method != "uniform" or not spec.quant.quantizes_acts:
        raise UserError(f"activation clipping needs uniform activation quantizers; this model has "
                         f"act_method {spec.quant.act_method!r} at {spec.quant.act_bits} bits")
    model = spec.build(integer_products=False)
    forward = jax.jit(lambda p, *inputs: model.apply(
        {"params": p}, *inputs, deterministic=True, mutable=["act_clipping"])[1]["act_clipping"])
    totals: dict[str, dict[str, float]] = {}
    for batch in device_batches(batches):
        sown = jax.device_get(forward(params, *[batch[k] for k in MODEL_INPUTS]))
        for path, stats in _sown_clip_statistics(sown):
            total = totals.setdefault(path, dict.fromkeys(quant.CLIP_STATISTICS, 0.0))
            for key in quant.CLIP_STATISTICS:
                value = float(stats[key])
                total[key] = max(total[key], value) if key == "absmax" else total[key] + value
    return totals


def _sown_clip_statistics(tree: Mapping, prefix: str = ""):
    """(path, statistics) of every quantizer in a sown ``act_clipping`` collection; sow keeps a
    tuple per name (two for a split layer's per-half quantizers)."""
    for key, value in tree.items():
        if isinstance(value, tuple):
            for i, stats in enumerate(value):
                yield f"{prefix}{key}" + (f"#{i}" if i else ""), stats
        else:
            yield from _sown_clip_statistics(value, f"{prefix}{key}/")


def clipping_by_site(totals: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``activation_clipping``'s totals pooled over layers per quantizer site (the path without
    ``layer_<i>/``, ``_clip`` and the half index, e.g. ``encoder/attention/query/input``), as
    shares: ``values`` (fraction of values outside the clip), ``energy`` (fraction of Σx² those
    values carry), ``removed`` (Σ(x − clip(x))² / Σx², the energy clipping takes away),
    ``absmax`` and ``quantizers`` (how many were pooled)."""
    pooled: dict[str, dict[str, float]] = {}
    for path, stats in totals.items():
        site = "/".join(p for p in path.split("#")[0].removesuffix("_clip").split("/")
                        if not p.startswith("layer_"))
        agg = pooled.setdefault(site, {**dict.fromkeys(quant.CLIP_STATISTICS, 0.0), "quantizers": 0})
        for key in quant.CLIP_STATISTICS:
            agg[key] = max(agg[key], stats[key]) if key == "absmax" else agg[key] + stats[key]
        agg["quantizers"] += 1
    return {site: {"values": a["clipped"] / max(a["count"], 1.0),
                   "energy": a["clipped_energy"] / max(a["energy"], 1e-30),
                   "removed": a["clip_error"] / max(a["energy"], 1e-30),
                   "absmax": a["absmax"], "quantizers": a["quantizers"]}
            for site, a in sorted(pooled.items())}


# ---------------------------------------------------------------------------------------------
# Loss landscape.
# ---------------------------------------------------------------------------------------------
def grid_coords(steps: int = 5, step: float = 0.2) -> np.ndarray:
    """``{0, ±step, …, ±steps·step}`` in increasing order: offsets in units of mean|W|."""
    if steps < 1 or step <= 0:
        raise UserError(f"a landscape grid needs steps >= 1 and step > 0, got {steps}, {step}")
    return np.round(np.arange(-steps, steps + 1) * step, 12)


@dataclasses.dataclass
class Landscape:
    """The loss on a grid of perturbations of two matrices.

    Attributes:
      matrices: the two perturbed modules (``encoder/layer_0/attention/value``...): W_x, W_y.
      coords: ``(n,)`` offsets in units of mean|W| (the same for both axes).
      scales: mean|W_x|, mean|W_y| of the unperturbed latent weights.
      losses: ``(n, n)``; ``losses[i, j]`` is the loss at W_x + coords[i]·scales[0],
        W_y + coords[j]·scales[1].
    """

    matrices: tuple[str, str]
    coords: np.ndarray
    scales: tuple[float, float]
    losses: np.ndarray

    @property
    def centre(self) -> float:
        """The loss of the unperturbed model."""
        c = len(self.coords) // 2
        return float(self.losses[c, c])

    def to_dict(self) -> dict:
        return {"matrices": list(self.matrices), "coords": self.coords.tolist(),
                "scales": list(self.scales), "losses": self.losses.tolist()}


@functools.lru_cache(maxsize=8)
def perturbed_loss_fn(spec: ModelSpec, matrices: tuple[str, str]) -> Callable:
    """Jitted ``(params, offsets (2,), batches) -> loss``: the task loss with ``offsets[0]``
    added to every entry of ``matrices[0]``'s kernel and ``offsets[1]`` to ``matrices[1]``'s
    (latent weights; the model's quantizers then see the perturbed values). The offsets are
    inputs, so a whole grid is one compilation per batch-shape list."""
    keys = tuple(f"{m}/kernel" for m in matrices)

    def fn(params, offsets, batches):
        flat = flatten(params)
        for i, k in enumerate(keys):
            flat[k] = flat[k] + offsets[i].astype(flat[k].dtype)
        return task_loss(spec, unflatten(flat), batches)

    return jax.jit(fn)


def landscape_grid(spec: ModelSpec, params: Any, batches: Sequence[Mapping[str, Any]],
                   matrices: Sequence[str] = DEFAULT_LANDSCAPE_MATRICES,
                   coords: Optional[np.ndarray] = None, progress: bool = False,
                   desc: str = "landscape") -> Landscape:
    """The task loss over a grid of perturbations W_x + x·1, W_y + y·1 (module docstring).

    Args:
      spec, params: the model (its quantizers apply to the perturbed latent weights).
      batches: the fixed training batches (model inputs, ``labels``, optional ``example_mask``).
      matrices: two module paths whose ``kernel`` is perturbed.
      coords: offsets in units of each matrix's mean|W|; default ``grid_coords()`` (11 points).
      progress: show a tqdm bar over the grid points.
    Returns:
      A ``Landscape``.
    """
    matrices = tuple(matrices)
    if len(matrices) != 2:
        raise UserError(f"a landscape perturbs two matrices, got {list(matrices)}")
    coords = grid_coords() if coords is None else np.asarray(coords, np.float64)
    flat = flatten(params)
    missing = [m for m in matrices if f"{m}/kernel" not in flat]
    if missing:
        known = sorted(k[:-len("/kernel")] for k in flat if k.endswith("/kernel") and np.ndim(flat[k]) == 2)
        raise UserError(f"no kernel at {missing}; matrices the model has: {known}")
    scales = tuple(float(jnp.mean(jnp.abs(jnp.asarray(flat[f"{m}/kernel"])))) for m in matrices)
    fn = perturbed_loss_fn(spec.without_axis(), matrices)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    batches = device_batches(batches)
    from tqdm.auto import tqdm
    losses = np.zeros((len(coords), len(coords)))
    points = [(i, j) for i in range(len(coords)) for j in range(len(coords))]
    for i, j in tqdm(points, desc=desc, unit="point", disable=not progress):
        offsets = jnp.asarray([coords[i] * scales[0], coords[j] * scales[1]], jnp.float32)
        losses[i, j] = float(fn(params, offsets, batches))
    return Landscape(matrices, coords, scales, losses)


# ---------------------------------------------------------------------------------------------
# Hessian-vector products and top eigenvalues.
# ---------------------------------------------------------------------------------------------
def part_paths(num_layers: int, parts: Sequence[str] = tuple(PARTS)) -> tuple[str, ...]:
    """Every kernel of ``parts`` in every layer, in model order."""
    return tuple(k for layer in range(num_layers) for p in parts for k in part_kernels(p, layer))


@functools.lru_cache(maxsize=8)
def hvp_fn(spec: ModelSpec, paths: tuple[str, ...]) -> Callable:
    """Jitted ``(params, v, batches) -> H v``: the Hessian of ``task_loss`` with respect to the
    parameters at ``paths`` (flat keys), applied to ``v`` (a dict over the same keys), every
    other parameter held fixed. Reverse-over-reverse: the gradient of ⟨∇ℓ, v⟩, which needs no
    forward-mode rule from the ``custom_vjp`` quantizers."""

    def loss(selected, rest, batches):
        return task_loss(spec, unflatten({**rest, **selected}), batches)

    def fn(params, v, batches):
        flat = flatten(params)
        selected = {k: flat.pop(k) for k in paths}

        def directional(sel):
            g = jax.grad(loss)(sel, flat, batches)
            return sum(jnp.vdot(g[k], v[k]) for k in paths)

        return jax.grad(directional)(selected)

    return jax.jit(fn)


@dataclasses.dataclass
class EigenResult:
    """A top-eigenvalue estimate: the last estimate, the iterations (matrix-vector products) it
    took, whether successive estimates agreed to the tolerance, and every estimate on the way."""

    value: float
    iterations: int
    converged: bool
    history: list[float]


def _start_vector(dim: int, seed) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


def lanczos_top_eigenvalue(matvec: Callable[[np.ndarray], np.ndarray], dim: int, *,
                           iterations: int = 20, tol: float = 1e-3, seed: Any = 0,
                           callback: Optional[Callable[[int, float], None]] = None) -> EigenResult:
    """The largest (algebraic) eigenvalue of a symmetric operator by Lanczos.

    Full reorthogonalisation (the Krylov basis is at most ``iterations`` vectors, cheap next to
    one Hessian-vector product), float64 bookkeeping. Stops when the top Ritz value changes by
    at most ``tol`` relative between iterations, or the Krylov space becomes invariant.

    Args:
      matvec: ``v -> A v`` on ``(dim,)`` float64 vectors.
      dim: the operator's size.
      iterations: at most this many products.
      tol: relative change of the estimate that counts as converged.
      seed: the random start vector's seed (an int or a sequence of ints).
      callback: called as ``callback(iteration, estimate)`` after each product.
    """
    iterations = min(iterations, dim)
    basis = np.zeros((iterations + 1, dim))
    basis[0] = _start_vector(dim, seed)
    alphas, betas, history = [], [], []
    converged = False
    for k in range(iterations):
        w = np.asarray(matvec(basis[k]), np.float64)
        alpha = float(basis[k] @ w)
        alphas.append(alpha)
        w = w - alpha * basis[k] - (betas[-1] * basis[k - 1] if k else 0.0)
        for _ in range(2):  # twice is enough (Kahan's "twice is enough")
            w = w - basis[:k + 1].T @ (basis[:k + 1] @ w)
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        estimate = float(np.linalg.eigvalsh(t)[-1])
        history.append(estimate)
        if callback is not None:
            callback(k + 1, estimate)
        beta = float(np.linalg.norm(w))
        if k and abs(estimate - history[-2]) <= tol * abs(estimate):
            converged = True
            break
        if beta <= 1e-10 * max(abs(a) for a in alphas) or k + 1 == dim:
            converged = True  # an invariant subspace: the Ritz values are eigenvalues
            break
        betas.append(beta)
        basis[k + 1] = w / beta
    return EigenResult(history[-1], len(history), converged, history)


def power_iteration(matvec: Callable[[np.ndarray], np.ndarray], dim: int, *,
                    iterations: int = 20, tol: float = 1e-3, seed: Any = 0,
                    callback: Optional[Callable[[int, float], None]] = None) -> EigenResult:
    """The eigenvalue of largest magnitude of a symmetric operator by power iteration (the
    Rayleigh quotient of the iterate; PyHessian's method). Same arguments as
    ``lanczos_top_eigenvalue``; for a Hessian with a dominant positive eigenvalue both agree."""
    v = _start_vector(dim, seed)
    history = []
    converged = False
    for k in range(iterations):
        w = np.asarray(matvec(v), np.float64)
        estimate = float(v @ w)
        history.append(estimate)
        if callback is not None:
            callback(k + 1, estimate)
        norm = float(np.linalg.norm(w))
        if k and abs(estimate - history[-2]) <= tol * abs(estimate):
            converged = True
            break
        if norm == 0.0:
            converged = True
            break
        v = w / norm
    return EigenResult(history[-1], len(history), converged, history)


def top_eigenvalues(spec: ModelSpec, params: Any, batches: Sequence[Mapping[str, Any]], *,
                    layers: Optional[Sequence[int]] = None, parts: Sequence[str] = tuple(PARTS),
                    method: str = "lanczos", iterations: int = 20, tol: float = 1e-3,
                    seed: int = 0, progress: bool = False, desc: str = "hessian"
                    ) -> dict[tuple[str, int], EigenResult]:
    """λ_max of the loss Hessian w.r.t. the quantized weights ŵ of each part of each layer.

    Args:
      spec, params: the model; its Hessian is taken at ŵ = Q(w) (``quantized_weights``).
      batches: the fixed batches the loss is computed on.
      layers: layer indices (default: all).
      parts: names from ``PARTS``.
      method: ``lanczos`` (largest algebraic eigenvalue) or ``power`` (largest magnitude).
      iterations, tol: per block, see ``lanczos_top_eigenvalue``.
      seed: start vectors are drawn from ``(seed, layer, part)``, so every model starts a given
        block from the same vector.
      progress: a tqdm bar over the blocks, showing the iteration and the current estimate.
    Returns:
      ``{(part, layer): EigenResult}`` in model order.
    """
    if method not in EIGEN_METHODS:
        raise ValueError(f"unknown eigenvalue method {method!r}; allowed: {EIGEN_METHODS}")
    num_layers = spec.config.num_layers
    layers = list(range(num_layers)) if layers is None else [int(i) for i in layers]
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range; the model has {num_layers} layers")
    for p in parts:
        part_kernels(p, 0)  # validates the name
    spec_hat, params_hat = quantized_weights(spec, params)
    # Only the analysed layers' kernels are differentiated: fewer weight gradients per product.
    paths = tuple(k for layer in sorted(set(layers)) for p in PARTS for k in part_kernels(p, layer))
    fn = hvp_fn(spec_hat, paths)
    batches = device_batches(batches)
    flat = flatten(params_hat)
    zeros = {k: jnp.zeros_like(flat[k]) for k in paths}
    solver = lanczos_top_eigenvalue if method == "lanczos" else power_iteration
    blocks = [(p, layer) for layer in layers for p in parts]
    results = {}
    from tqdm.auto import tqdm
    bar = tqdm(blocks, desc=desc, unit="part", disable=not progress)
    for part, layer in bar:
        keys = part_kernels(part, layer)
        shapes = [flat[k].shape for k in keys]
        sizes = [int(np.prod(s)) for s in shapes]
        offsets = np.cumsum([0] + sizes)

        def matvec(x, keys=keys, shapes=shapes, offsets=offsets):
            v = dict(zeros)
            for k, shape, a, b in zip(keys, shapes, offsets[:-1], offsets[1:]):
                v[k] = jnp.asarray(x[a:b].reshape(shape), jnp.float32)
            hv = fn(params_hat, v, batches)
            return np.concatenate([np.asarray(hv[k], np.float64).ravel() for k in keys])

        def report(k, estimate, part=part, layer=layer):
            bar.set_postfix_str(f"{part} layer {layer}: iteration {k}, λ≈{estimate:.4g}")

        results[(part, layer)] = solver(matvec, int(offsets[-1]), iterations=iterations, tol=tol,
                                        seed=(seed, layer, list(PARTS).index(part)),
                                        callback=report)
    return results


# ---------------------------------------------------------------------------------------------
# Figures and the report table.
# ---------------------------------------------------------------------------------------------
def _short_matrix(path: str) -> str:
    """``encoder/layer_0/attention/value`` -> ``layer 0 attention value`` (axis labels)."""
    return path.removeprefix("encoder/").replace("layer_", "layer ").replace("/", " ")


def plot_landscapes(path, landscapes: Mapping[str, Landscape], dpi: int = 120):
    """One figure: a 3-D surface (top row) and a contour plot (bottom row) per model, columns in
    the order of ``landscapes`` (``{label: Landscape}``). Every panel shares one loss scale (the
    surfaces' z axis, the contours' levels and colours, one colour bar), so a flat landscape looks
    flat beside a rugged one. Returns the figure (closed; for tests to inspect)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    n = len(landscapes)
    lo = min(float(l.losses.min()) for l in landscapes.values())
    hi = max(float(l.losses.max()) for l in landscapes.values())
    hi = hi if hi > lo else lo + 1e-6
    levels = np.linspace(lo, hi, 21)
    first = next(iter(landscapes.values()))
    x_name, y_name = (_short_matrix(m) for m in first.matrices)
    with plt.rc_context({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11,
                         "xtick.labelsize": 10, "ytick.labelsize": 10}):
        fig = plt.figure(figsize=(3.7 * n + 1.0, 7.8))
        grid = fig.add_gridspec(2, n + 1, width_ratios=[1] * n + [0.06], height_ratios=[1.1, 1],
                                hspace=0.28, wspace=0.3, left=0.07, right=0.93, top=0.86, bottom=0.08)
        contour = None
        for col, (label, land) in enumerate(landscapes.items()):
            x, y = np.meshgrid(land.coords, land.coords, indexing="ij")
            ticks = [float(land.coords.min()), 0.0, float(land.coords.max())]
            ax = fig.add_subplot(grid[0, col], projection="3d")
            ax.plot_surface(x, y, land.losses, cmap="viridis", vmin=lo, vmax=hi, linewidth=0)
            ax.set_zlim(lo, hi)
            ax.set_title(f"{label}\nloss range {float(land.losses.max() - land.losses.min()):.3f}")
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.zaxis.set_major_locator(MaxNLocator(4))
            ax.set_xlabel("x (× mean|W_x|)", labelpad=2, fontsize=9)
            ax.set_ylabel("y (× mean|W_y|)", labelpad=2, fontsize=9)
            ax.set_zlabel("training loss", labelpad=4, fontsize=9)
            ax.tick_params(labelsize=9, pad=0)
            ax = fig.add_subplot(grid[1, col])
            contour = ax.contourf(x, y, land.losses, levels=levels, cmap="viridis", vmin=lo, vmax=hi)
            ax.plot([0], [0], "r+", markersize=12, markeredgewidth=2)
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.set_xlabel("x offset (× mean|W_x|)")
            if col == 0:
                ax.set_ylabel("y offset (× mean|W_y|)")
            ax.set_aspect("equal")
        bar = fig.colorbar(contour, cax=fig.add_subplot(grid[1, n]), ticks=MaxNLocator(6))
        bar.set_label("training loss")
        fig.suptitle(f"Training loss with two matrices perturbed (x: {x_name}, y: {y_name})\n"
                     "one loss scale in every panel; red +: the trained weights", fontsize=11)
        workdirs.write_figure(path, fig, dpi=dpi)
        plt.close(fig)
    return fig


def landscape_csv(land: Landscape) -> str:
    """The grid as CSV: one row per point, ``x,y,loss`` (offsets in units of mean|W|)."""
    lines = ["x,y,loss"]
    for i, x in enumerate(land.coords):
        for j, y in enumerate(land.coords):
            lines.append(f"{x:g},{y:g},{land.losses[i, j]:.6f}")
    return "\n".join(lines) + "\n"


def landscape_summary(land: Landscape) -> dict:
    """Centre loss, extremes, and the mean rise over the grid's border (its outermost ring)."""
    border = np.concatenate([land.losses[0], land.losses[-1], land.losses[1:-1, 0],
                             land.losses[1:-1, -1]])
    return {"centre": land.centre, "min": float(land.losses.min()),
            "max": float(land.losses.max()), "border_rise": float(border.mean() - land.centre)}


def markdown_report(report: Mapping[str, Any]) -> str:
    """``analysis.md``: the landscape summary, the eigenvalue tables and the clipping table, each
    where the report has it, from a report dict (as ``launch.analyze`` writes to ``analysis.json``)."""
    models = report["models"]
    names = [m["name"] for m in models]
    labels = {m["name"]: m["label"] for m in models}
    base, others = names[0], names[1:]
    lines = [f"# Analysis: {report['task']}", "", report["protocol"], "",
             f"Data: {report['data']['description']}. Wall time {report['timing']['total_s']:.0f} s "
             f"({report['timing']['description']})."]
    if "landscape" in report:
        lines += ["", "## Loss landscape", "",
                  f"Perturbation W + x·mean|W| of `{report['landscape_matrices'][0]}` (x) and "
                  f"`{report['landscape_matrices'][1]}` (y), x, y ∈ {report['landscape_coords']}; "
                  "the quantizers see the perturbed latent weights. Border rise: the mean loss over "
                  "the grid's outer ring minus the centre's.", "",
                  "![loss landscapes](landscape.png)", "",
                  "| model | loss at centre | min | max | border rise |", "|---|---|---|---|---|"]
        for name in names:
            s = report["landscape"][name]["summary"]
            lines.append(f"| {labels[name]} | {s['centre']:.4f} | {s['min']:.4f} | {s['max']:.4f} | "
                         f"{s['border_rise']:.4f} |")
    if "eigenvalues" in report:
        lines += _eigenvalue_sections(report, names, labels, base, others)
    if "clipping" in report:
        lines += _clipping_section(report["clipping"], labels)
    return "\n".join(lines) + "\n"


def _clipping_section(clipping: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    return (["", "## Activation clipping", "",
             "Per quantized activation, pooled over layers (real tokens only): the share of values "
             "outside the quantizer's clip [lower, upper], the share of the activation's energy Σx² "
             "those values carry, and the share clipping removes, Σ(x − clip(x))² / Σx²; max |x| "
             "beside it. Each cell: values / energy / removed, in %.", ""]
            + clipping_table(clipping, labels))


def clipping_table(clipping: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """The Markdown table of a report's ``clipping`` part: one row per quantized activation, per
    model the values / energy / removed shares in % and max |x|."""
    names = list(clipping)
    sites = list(dict.fromkeys(site for n in names for site in clipping[n]["by_site"]))
    lines = ["| activation (input of) | " + " | ".join(f"{labels[n]}" for n in names)
             + " | " + " | ".join(f"max abs {labels[n]}" for n in names) + " |",
             "|" + "---|" * (1 + 2 * len(names))]
    for site in sites:
        cells = [f"`{site}`"]
        for n in names:
            r = clipping[n]["by_site"].get(site)
            cells.append("–" if r is None else
                         f"{100 * r['values']:.2f} / {100 * r['energy']:.1f} / {100 * r['removed']:.2f}")
        cells += ["–" if site not in clipping[n]["by_site"] else f"{clipping[n]['by_site'][site]['absmax']:.3g}"
                  for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _eigenvalue_sections(report, names, labels, base, others) -> list[str]:
    rows = report["eigenvalues"]
    lines = ["", "## Top Hessian eigenvalue per Transformer part", "",
              "λ_max of the Hessian of the task loss with respect to the part's quantized kernels ŵ "
              f"({report['eigen_method']}); ‖w − ŵ‖² is the bound's other factor "
              "(ℓ(ŵ) − ℓ(w) ≈ εᵀHε ≤ λ_max‖ε‖²). Mean over layers:", ""]
    head = (["part"] + [f"λ {labels[n]}" for n in names] + [f"{labels[n]} / {labels[base]}" for n in others]
            + [f"‖w−ŵ‖² {labels[n]}" for n in others])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    parts = list(dict.fromkeys(r["part"] for r in rows))
    for part in parts:
        sel = [r for r in rows if r["part"] == part]
        mean = {n: float(np.mean([r[n]["lambda_max"] for r in sel])) for n in names}
        err = {n: float(np.sum([r[n]["quant_error"] for r in sel])) for n in others}
        cells = ([part] + [f"{mean[n]:.4g}" for n in names]
                 + [f"{mean[n] / mean[base]:.2f}×" if mean[base] else "–" for n in others]
                 + [f"{err[n]:.4g}" for n in others])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per layer (iterations of each estimate in brackets, * where it had not converged):",
              "", "| part | layer | " + " | ".join(labels[n] for n in names) + " | "
              + " | ".join(f"‖w−ŵ‖² {labels[n]}" for n in others) + " |",
              "|" + "---|" * (2 + len(names) + len(others))]
    for r in rows:
        cells = [r["part"], str(r["layer"])]
        for n in names:
            e = r[n]
            cells.append(f"{e['lambda_max']:.4g} ({e['iterations']}{'' if e['converged'] else '*'})")
        cells += [f"{r[n]['quant_error']:.4g}" for n in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
