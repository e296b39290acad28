"""Rate-distortion optimised weight quantization for a size budget (the default ``compress``).

Deep Compression (Han et al., sec. 3) clusters each layer to ``2**bits`` k-means centroids and
Huffman-codes the indices. Where the file is range-coded (``entropy.py``) the better scalar
quantizer at a given rate is entropy-constrained (Chou, Lookabaugh & Gray, 1989): a uniform grid
of step ``delta`` whose reconstruction levels are the centroids of their bins, and each weight
takes the level that minimises ``squared error + lam * bits`` (which also prunes small weights
when a zero is cheaper). Layers are balanced by their sensitivity ``s`` (mean diagonal Fisher
information of the network's output distribution with respect to the layer's weights, so that
``KL ~ s * sum of squared weight errors / 2``): one global slope ``lam`` gives each layer
``lam / s`` and, from high-rate theory, ``delta**2 = 6 * (lam / s) / ln 2``. A budget is met
by bisection on ``lam`` with exact encoded sizes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .pruning import get_mask, prunable_layers

LN2 = math.log(2.0)


@dataclass
class LayerQuant:
    """A quantized layer: sorted nonzero levels, an index per position, and the kept mask."""
    codebook: np.ndarray   # float32[k], ascending
    index: np.ndarray      # int64[numel], index into codebook where mask
    mask: np.ndarray       # bool[numel]

    @property
    def neg(self) -> int:
        return int((self.codebook < 0).sum())

    def weight(self) -> np.ndarray:
        out = np.zeros(self.mask.size, np.float32)
        out[self.mask] = self.codebook[self.index[self.mask]]
        return out


def ecsq(values: np.ndarray, mask: np.ndarray, delta: float, lam: float, iters: int = 4,
         codebook_dtype: str = "f2") -> LayerQuant:
    """Entropy-constrained scalar quantization of one layer.

    Args:
        values: the layer's weights, flat.
        mask: True where a weight may be kept (pruned weights stay zero).
        delta: grid step.
        lam: squared error per bit; 0 gives plain rounding to bin centroids.
        iters: assignment / centroid / probability rounds.
        codebook_dtype: "f2" rounds the levels to float16 (what the file stores), "f4" keeps them.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    mask = np.asarray(mask, bool).reshape(-1)
    q, levels, qmin, _ = _ecsq_grid(v[mask], int(mask.size - mask.sum()), delta, lam, iters)
    return _layer_quant(q, levels, qmin, mask, codebook_dtype)


def _ecsq_grid(kept: np.ndarray, n_pruned: int, delta: float, lam: float, iters: int):
    """ECSQ on the grid: (grid index per kept weight, level per grid index, lowest index, bits per index)."""
    if not delta > 0:
        raise ConfigError(f"delta must be positive, got {delta}")
    lo = np.floor(kept / delta).astype(np.int64)
    cand = np.stack([lo, lo + 1, np.zeros_like(lo)])          # the two grid neighbours, and zero
    qmin, qmax = int(cand.min(initial=0)), int(cand.max(initial=0))
    span = qmax - qmin + 1
    levels = np.arange(qmin, qmax + 1, dtype=np.float64) * delta  # centroids, start on the grid
    q = np.rint(kept / delta).astype(np.int64)
    bits = np.zeros(span)
    for _ in range(max(iters, 1)):
        counts = np.bincount(q - qmin, minlength=span).astype(np.float64)
        counts[-qmin] += n_pruned
        bits = -np.log2((counts + 0.5) / (counts.sum() + 0.5 * span))
        cost = (kept[None, :] - levels[cand - qmin]) ** 2 + lam * bits[cand - qmin]
        q = np.take_along_axis(cand, np.argmin(cost, axis=0)[None, :], 0)[0]
        levels = _bin_means(q, kept, qmin, levels)
    return q, levels, qmin, bits


def _bin_means(q: np.ndarray, values: np.ndarray, qmin: int, empty: np.ndarray) -> np.ndarray:
    """Level per grid index: the mean of the ``values`` that took it (``empty`` where none did),
    the zero index held at exactly zero."""
    span = empty.size
    sums = np.bincount(q - qmin, weights=values, minlength=span)
    n = np.bincount(q - qmin, minlength=span)
    levels = np.where(n > 0, sums / np.maximum(n, 1), empty)
    levels[-qmin] = 0.0
    return levels


def _layer_quant(q: np.ndarray, levels: np.ndarray, qmin: int, mask: np.ndarray, codebook_dtype: str) -> LayerQuant:
    """LayerQuant from grid indices ``q`` of the kept weights (0 prunes) and the level of each index."""
    used = np.unique(q[q != 0])
    cb = levels[used - qmin].astype(np.float32)
    if codebook_dtype == "f2":
        cb = cb.astype(np.float16).astype(np.float32)
    order = np.argsort(cb, kind="stable")
    cb = cb[order]
    rank = np.empty(used.size, np.int64)
    rank[order] = np.arange(used.size)
    new_mask = mask.copy()
    new_mask[mask] = q != 0
    index = np.zeros(mask.size, np.int64)
    lookup = np.searchsorted(used, q[q != 0])
    index[new_mask] = rank[lookup]
    return LayerQuant(cb, index, new_mask)


def feedback_factor(hessian: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, float]:
    """(upper Cholesky factor of the damped inverse, mean damped diagonal) of a layer's input
    second moment: what ``ecsq_error_feedback`` needs, independent of the step and slope."""
    h = np.array(hessian, np.float64)
    dead = np.diag(h) <= 0  # inputs that are always zero: any value of their weights is free
    h[dead, dead] = 1.0
    h += damp * float(np.mean(np.diag(h))) * np.eye(h.shape[0])
    return np.linalg.cholesky(np.linalg.inv(h)).T, float(np.mean(np.diag(h)))  # inv(h) = u.T @ u


def ecsq_error_feedback(weight: np.ndarray, mask: np.ndarray, factor: tuple[np.ndarray, float], delta: float,
                        lam: float, codebook_dtype: str = "f2", block: int = 64) -> LayerQuant:
    """ECSQ with the layer's output error fed back into the weights not yet quantized (GPTQ).

    Columns of ``weight`` (out, D) are quantized in order; each column's error, through the
    inverse of the inputs' second moment (``factor``: its ``feedback_factor``), moves the later columns so that the
    layer's outputs on the calibration inputs change as little as possible (Frantar et al., GPTQ,
    ICLR 2023; pruned weights are quantized to zero, as in SparseGPT). Each weight takes the grid
    level minimising its output error, in weight-space units, plus ``lam`` times its bits
    (the bits of a plain ECSQ pass at the same step).
    """
    w = np.array(weight, np.float64)
    out, d = w.shape
    mask = np.asarray(mask, bool).reshape(out, d)
    _, _, qmin, bits = _ecsq_grid(w[mask], int(mask.size - mask.sum()), delta, lam, 4)
    u, scale = factor
    span = bits.size
    q = np.zeros((out, d), np.int64)
    target = np.zeros((out, d))
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        wb = w[:, b0:b1].copy()
        err = np.zeros((out, b1 - b0))
        for j in range(b1 - b0):
            col, uj = wb[:, j], u[b0 + j, b0 + j]
            lo = np.clip(np.floor(col / delta).astype(np.int64), qmin, qmin + span - 2)
            cand = np.stack([lo, lo + 1, np.zeros_like(lo)])
            cost = (col[None, :] - cand * delta) ** 2 / (uj * uj * scale) + lam * bits[cand - qmin]
            pick = np.take_along_axis(cand, np.argmin(cost, 0)[None, :], 0)[0]
            pick[~mask[:, b0 + j]] = 0
            q[:, b0 + j] = pick
            target[:, b0 + j] = col
            e = (col - pick * delta) / uj
            err[:, j] = e
            wb[:, j + 1:] -= np.outer(e, u[b0 + j, b0 + j + 1:b1])
        w[:, b1:] -= err @ u[b0:b1, b1:]
    # levels: the mean of the (compensated) values each grid index stood for
    flat_q = q[mask]
    levels = _bin_means(flat_q, target[mask], qmin, np.arange(qmin, qmin + span) * delta)
    return _layer_quant(flat_q, levels, qmin, mask.reshape(-1), codebook_dtype)


@torch.no_grad()
def layer_hessians(model: nn.Module, images: torch.Tensor, batch_size: int = 16, positions: int = 64,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Second moment of each conv / linear layer's (unfolded) inputs over ``images``: (D, D) per layer.

    ``positions`` random output positions an image per convolution (all of them would be
    millions of columns for the early layers). Grouped convolutions are left out.
    """
    layers = {n: m for n, m in prunable_layers(model).items() if getattr(m, "groups", 1) == 1}
    acc: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(seed)

    def hook(name):
        def fn(m, inp, _out):
            x = inp[0].detach().float()
            if isinstance(m, nn.Conv2d):
                cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
                pick = torch.randint(cols.shape[2], (min(positions, cols.shape[2]),), generator=g)
                x = cols[:, :, pick].permute(0, 2, 1).reshape(-1, cols.shape[1])
            x = x.double()
            acc[name] = acc.get(name, 0) + x.T @ x
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, images.shape[0], batch_size):
            model(images[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: (a / images.shape[0]).numpy() for n, a in acc.items()}


def fisher_sensitivity(model: nn.Module, images: torch.Tensor, batch_size: int = 8, seed: int = 0) -> dict[str, float]:
    """Mean diagonal Fisher information per conv / linear layer, over its nonzero weights.

    For each image a label is drawn from the model's own prediction; the squared gradient of the
    summed log-likelihood of a batch estimates the sum of the per-image Fisher diagonals without
    bias (the score has zero mean under the model, so cross terms vanish in expectation), at the
    cost of one backward pass per batch instead of per image. Then
    ``KL(model || perturbed) ~ 0.5 * s * sum(dW**2)`` for a small perturbation ``dW``.
    """
    layers = prunable_layers(model)
    acc = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, images.shape[0], batch_size):
            logp = F.log_softmax(model(images[i:i + batch_size]), 1)
            y = torch.multinomial(logp.detach().exp(), 1, generator=g)
            model.zero_grad(set_to_none=True)
            (-logp.gather(1, y)).sum().backward()
            for n, m in layers.items():
                acc[n] += m.weight.grad.detach() ** 2
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    out = {}
    for n, m in layers.items():
        keep = m.weight.detach() != 0
        f = acc[n][keep] if keep.any() else acc[n].reshape(-1)
        out[n] = max(float(f.mean()) / max(images.shape[0], 1), 1e-30)
    return out


def quantize_layers(weights: dict[str, np.ndarray], masks: dict[str, np.ndarray], sensitivity: dict[str, float],
                    lam: float, step_scale: float = 1.0, codebook_dtype: str = "f2",
                    factors: dict[str, tuple] | None = None) -> dict[str, LayerQuant]:
    """ECSQ of every layer at the global slope ``lam`` (sensitivity-weighted squared error per bit).

    With ``factors`` (``feedback_factor`` of each layer's ``layer_hessians``), the layers that
    have one are quantized with error feedback (``ecsq_error_feedback``)."""
    out = {}
    factors = factors or {}
    for n, w in weights.items():
        lam_l = lam / sensitivity[n]
        delta = step_scale * math.sqrt(6.0 * lam_l / LN2)
        kept = np.abs(w[masks[n]])
        if kept.size:  # at most ~2,000 levels a side: finer than any budget needs, and a bounded file
            delta = max(delta, float(kept.max()) / 2000.0)
        f = factors.get(n)
        if f is not None and w.size % f[0].shape[0] == 0:
            out[n] = ecsq_error_feedback(w.reshape(-1, f[0].shape[0]), masks[n], f, delta, lam_l, codebook_dtype)
        else:
            out[n] = ecsq(w, masks[n], delta, lam_l, codebook_dtype=codebook_dtype)
    return out


def model_weights_and_masks(model: nn.Module) -> tuple[dict, dict]:
    """Flat float64 weights and kept masks (the ``weight_mask`` buffer, else nonzero) per layer."""
    weights, masks = {}, {}
    for n, m in prunable_layers(model).items():
        w = m.weight.detach().cpu().double().reshape(-1).numpy()
        mk = get_mask(m)
        masks[n] = (mk.cpu().reshape(-1).numpy().astype(bool) if mk is not None else w != 0)
        weights[n] = w
    return weights, masks


def search_budget(size_of, lam_lo: float, lam_hi: float, budget: int, steps: int = 24):
    """Bisection (in log ``lam``) for the largest file that fits ``budget``.

    ``size_of(lam)`` returns (bytes, payload). Returns (lam, bytes, payload) of the best fit.

    Raises:
        ValueError: if even ``lam_hi`` does not fit.
    """
    size_hi, payload_hi = size_of(lam_hi)
    if size_hi > budget:
        raise ConfigError(f"cannot fit {budget:,} bytes: the coarsest quantization tried gives {size_hi:,} bytes")
    best = (lam_hi, size_hi, payload_hi)
    size_lo, payload_lo = size_of(lam_lo)
    if size_lo <= budget:
        return lam_lo, size_lo, payload_lo
    lo, hi = math.log(lam_lo), math.log(lam_hi)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        size, payload = size_of(math.exp(mid))
        if size <= budget:
            hi = mid
            if size > best[1]:
                best = (math.exp(mid), size, payload)
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    return best


@torch.no_grad()
def install_(model: nn.Module, quants: dict[str, LayerQuant]) -> None:
    """Put quantized layers into ``model``: weights plus codebook / index / mask buffers."""
    from .quantization import _set_buffer
    layers = prunable_layers(model)
    for n, q in quants.items():
        m = layers[n]
        shape = m.weight.shape
        dev = m.weight.device
        _set_buffer(m, "weight_codebook", torch.from_numpy(q.codebook.copy()).to(dev))
        _set_buffer(m, "weight_index", torch.from_numpy(q.index.astype(np.int16)).reshape(shape).to(dev))
        _set_buffer(m, "weight_mask", torch.from_numpy(q.mask.copy()).reshape(shape).to(dev))
        bits = max(1, math.ceil(math.log2(max(q.codebook.size, 2))))
        _set_buffer(m, "weight_bits", torch.tensor(bits, dtype=torch.int16))
        m.weight.copy_(torch.from_numpy(q.weight()).reshape(shape).to(m.weight.dtype))


def quantize_for_budget_(model: nn.Module, sensitivity: dict[str, float], budget: int, serialize,
                         step_scale: float | None = None, log=None,
                         hessians: dict[str, np.ndarray] | None = None) -> dict:
    """ECSQ every layer of ``model`` in place at the slope whose file fits ``budget`` bytes.

    Args:
        model: pruned (or not) model; its current weights are the reference.
        sensitivity: per-layer Fisher sensitivity (``fisher_sensitivity``).
        budget: bytes.
        serialize: ``model -> bytes`` (the exact file), called once per bisection step.
        step_scale: grid step relative to the high-rate optimum. Default: 0.6 for plain ECSQ,
            1.7 with error feedback (``hessians``), each measured best on SqueezeNet v1.0:
            fed-back errors make a coarser grid with fewer coded levels pay (350 kB, 2-fold
            ImageNet agreement: 83-84% at 0.6, 87.0% at 1.0, 88.3-88.4% at 1.7, 87.0% at 2.2; README).
    Returns:
        ``{"lam", "bytes", "levels", "kept_weights"}``.
    """
    if step_scale is None:
        step_scale = 1.7 if hessians else 0.6
    weights, masks = model_weights_and_masks(model)
    reference = {n: torch.from_numpy(w.astype(np.float32)) for n, w in weights.items()}
    # factored once, not at every slope of the search
    factors = {n: feedback_factor(h) for n, h in (hessians or {}).items()}
    layers = prunable_layers(model)

    def size_of(lam):
        quants = quantize_layers(weights, masks, sensitivity, lam, step_scale, factors=factors)
        install_(model, quants)
        size = len(serialize(model))
        if log:
            log(f"  slope {lam:.3g}: {size:,} bytes")
        return size, quants

    # Slopes bracket the useful range: lam * 1e-6 / s is a squared step around 1e-6 ... 1e2
    # times the largest sensitivity, from near-lossless to a handful of levels per layer.
    s_max = max(sensitivity.values())
    lam_hi = 1e-2 * s_max
    try:
        for _ in range(4):  # coarser still, up to pruning everything, before giving up
            try:
                lam, size, quants = search_budget(size_of, 1e-12 * s_max, lam_hi, budget)
                break
            except ValueError:
                lam_hi *= 1e3
        else:
            raise ConfigError(f"cannot fit {budget:,} bytes: even with every weight pruned the file is larger")
    except ValueError:
        with torch.no_grad():  # leave the model as it came
            for n, m in layers.items():
                m.weight.copy_(reference[n].reshape(m.weight.shape))
        raise
    install_(model, quants)
    return {"lam": lam, "bytes": size, "levels": {n: int(q.codebook.size) for n, q in quants.items()},
            "kept_weights": int(sum(q.mask.sum() for q in quants.values()))}
