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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..weights.codecs.base import index_bits
from ..weights.entropy import code_length
from .levels import LayerQuant, layer_step
from .outputs import fisher_sample_loss, flatten_outputs
from .pruning import get_mask, prunable_layers
from .quantization import _set_buffer
from .trellis import estimated_bytes_trellis, quantize_layers_trellis


def ecsq(values: np.ndarray, mask: np.ndarray, delta: float, lam: float, iters: int = 4,
         codebook_dtype: str = "f2", bins: "ValueBins | None" = None) -> LayerQuant:
    """Entropy-constrained scalar quantization of one layer.

    Args:
        values: the layer's weights, flat.
        mask: True where a weight may be kept (pruned weights stay zero).
        delta: grid step.
        lam: squared error per bit; 0 gives plain rounding to bin centroids.
        iters: assignment / centroid / probability rounds.
        codebook_dtype: "f2" rounds the levels to float16 (what the file stores), "f4" keeps them.
        bins: the kept weights' ``ValueBins``: decide per fine bin instead of per weight.
    """
    mask = np.asarray(mask, bool).reshape(-1)
    q, levels, qmin, _ = _grid_assignment(values, mask, delta, lam, iters, bins)
    return _layer_quant(q, levels, qmin, mask, codebook_dtype)


def _grid_assignment(values, mask, delta, lam, iters, bins):
    """``_ecsq_grid`` of the kept weights, per weight or through their ``ValueBins``."""
    n_pruned = int(mask.size - mask.sum())
    if bins is None:
        v = np.asarray(values, np.float64).reshape(-1)
        return _ecsq_grid(v[mask], n_pruned, delta, lam, iters)
    q, levels, qmin, bits = _ecsq_grid(bins.value, n_pruned, delta, lam, iters, bins.count)
    return q[bins.bin], levels, qmin, bits


class ValueBins:
    """A layer's kept weights in ``n_bins`` fine bins of equal width over their range.

    ECSQ's decision depends on a weight's value only, so for layers of millions of weights it is
    made once per bin (at the bin's mean) instead of once per weight: the same levels (bin sums
    are exact), decisions off only for weights sharing a bin with a decision threshold, and a
    search step in milliseconds instead of seconds.
    """

    def __init__(self, kept: np.ndarray, n_bins: int | None = None) -> None:
        kept = np.asarray(kept, np.float64).reshape(-1)
        if n_bins is None:  # at least ~30 bins a grid step at the finest step (a 2,000th of the range)
            n_bins = max(1 << 16, min(1 << 20, kept.size // 8))
        lo, hi = (float(kept.min()), float(kept.max())) if kept.size else (0.0, 0.0)
        scale = n_bins / max(hi - lo, 1e-30)
        raw = np.minimum(((kept - lo) * scale).astype(np.int64), n_bins - 1)
        counts = np.bincount(raw, minlength=n_bins)
        sums = np.bincount(raw, weights=kept, minlength=n_bins)
        used = counts > 0
        self.value = sums[used] / counts[used]
        self.count = counts[used].astype(np.float64)
        self.bin = (np.cumsum(used) - 1)[raw]


def _ecsq_grid(kept: np.ndarray, n_pruned: int, delta: float, lam: float, iters: int,
               counts: np.ndarray | None = None):
    """ECSQ on the grid: (grid index per kept weight, level per grid index, lowest index, bits per index).

    ``counts``: how many weights each entry of ``kept`` stands for (``ValueBins``); None: one each.
    """
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
        hist = np.bincount(q - qmin, weights=counts, minlength=span).astype(np.float64)
        hist[-qmin] += n_pruned
        bits = -np.log2((hist + 0.5) / (hist.sum() + 0.5 * span))
        cost = (kept[None, :] - levels[cand - qmin]) ** 2 + lam * bits[cand - qmin]
        q = np.take_along_axis(cand, np.argmin(cost, axis=0)[None, :], 0)[0]
        levels = _bin_means(q, kept, qmin, levels, counts)
    return q, levels, qmin, bits


def _bin_means(q: np.ndarray, values: np.ndarray, qmin: int, empty: np.ndarray,
               counts: np.ndarray | None = None) -> np.ndarray:
    """Level per grid index: the mean of the ``values`` that took it (``empty`` where none did),
    the zero index held at exactly zero."""
    span = empty.size
    sums = np.bincount(q - qmin, weights=values if counts is None else values * counts, minlength=span)
    n = np.bincount(q - qmin, weights=counts, minlength=span)
    levels = np.where(n > 0, sums / np.maximum(n, 1), empty)
    levels[-qmin] = 0.0
    return levels


def _layer_quant(q: np.ndarray, levels: np.ndarray, qmin: int, mask: np.ndarray, codebook_dtype: str) -> LayerQuant:
    """LayerQuant from grid indices ``q`` of the kept weights (0 prunes) and the level of each index."""
    present = np.bincount(q - qmin, minlength=levels.size) > 0  # np.unique without its sort
    present[-qmin] = False
    used = np.flatnonzero(present) + qmin
    cb = levels[used - qmin].astype(np.float32)
    if codebook_dtype == "f2":
        cb = cb.astype(np.float16).astype(np.float32)
    order = np.argsort(cb, kind="stable")
    cb = cb[order]
    rank = np.empty(used.size, np.int64)
    rank[order] = np.arange(used.size)
    new_mask = mask.copy()
    nonzero = q != 0
    new_mask[mask] = nonzero
    index = np.zeros(mask.size, np.int64)
    slot = np.zeros(levels.size, np.int64)  # grid index -> position in ``used``
    slot[used - qmin] = np.arange(used.size)
    index[new_mask] = rank[slot[q[nonzero] - qmin]]
    return LayerQuant(cb, index, new_mask)


# Error feedback couples the input columns of a layer through their second moment: (D, D) in
# float64. Wider layers (a 1,024-channel convolution with 64 taps has D = 65,536: 34 GB) are
# coupled within blocks of whole input channels of at most this many columns (block-diagonal
# second moments, 8 MB each): memory linear in D, and most of the coupling is between the taps
# of one channel and its neighbours.
FEEDBACK_BLOCK = 1024
# Layers this narrow keep one full block, as GPTQ has it.
FEEDBACK_FULL = 4096


def feedback_blocks(d: int, taps: int = 1) -> list[tuple[int, int]]:
    """Column ranges of the second-moment blocks of a layer with ``d`` input columns, ``taps``
    kernel taps per input channel (blocks hold whole channels)."""
    if d <= FEEDBACK_FULL:
        return [(0, d)]
    step = taps * max(1, FEEDBACK_BLOCK // taps)
    return [(s, min(s + step, d)) for s in range(0, d, step)]


def feedback_memory(model: nn.Module) -> int:
    """Bytes the float64 second-moment blocks of ``model``'s layers take (``layer_hessians``)."""
    total = 0
    for m in _feedback_layers(model).values():
        d, taps = _columns(m)
        total += sum(8 * (e - s) ** 2 for s, e in feedback_blocks(d, taps))
    return total


def _columns(m: nn.Module) -> tuple[int, int]:
    """(input columns of the weight matrix, taps per input channel) of a conv / linear layer."""
    w = m.weight
    taps = int(np.prod(w.shape[2:])) if w.dim() > 2 else 1
    return int(w[0].numel()), taps


def _feedback_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers error feedback applies to: linear layers and ungrouped 1-D / 2-D convolutions."""
    return {n: m for n, m in prunable_layers(model).items()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and getattr(m, "groups", 1) == 1}


def feedback_factor(hessian: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, float]:
    """(upper Cholesky factor of the damped inverse, mean damped diagonal) of a layer's input
    second moment: what ``ecsq_error_feedback`` needs, independent of the step and slope."""
    h = np.array(hessian, np.float64)
    dead = np.diag(h) <= 0  # inputs that are always zero: any value of their weights is free
    h[dead, dead] = 1.0
    h += damp * float(np.mean(np.diag(h))) * np.eye(h.shape[0])
    return np.linalg.cholesky(np.linalg.inv(h)).T, float(np.mean(np.diag(h)))  # inv(h) = u.T @ u


def feedback_factors(blocks: list[tuple[int, int, np.ndarray]], damp: float = 0.01) -> tuple[list, float]:
    """``feedback_factor`` of each second-moment block: ([(start, end, u)], mean damped diagonal
    over the whole layer, so that one slope weighs every block alike)."""
    if len(blocks) == 1:
        u, scale = feedback_factor(blocks[0][2], damp)
        return [(blocks[0][0], blocks[0][1], u)], scale
    factors, diag = [], []
    for s, e, h in blocks:
        u, sc = feedback_factor(h, damp)
        factors.append((s, e, u))
        diag.append(sc * (e - s))
    return factors, float(sum(diag) / blocks[-1][1])


def ecsq_error_feedback(weight: np.ndarray, mask: np.ndarray, factor: tuple, delta: float,
                        lam: float, codebook_dtype: str = "f2", block: int = 64,
                        bins: ValueBins | None = None) -> LayerQuant:
    """ECSQ with the layer's output error fed back into the weights not yet quantized (GPTQ).

    Columns of ``weight`` (out, D) are quantized in order; each column's error, through the
    inverse of the inputs' second moment (``factor``: its ``feedback_factor``, or the
    ``feedback_factors`` of its blocks), moves the later columns of its block so that the
    layer's outputs on the calibration inputs change as little as possible (Frantar et al., GPTQ,
    ICLR 2023; pruned weights are quantized to zero, as in SparseGPT). Each weight takes the grid
    level minimising its output error, in weight-space units, plus ``lam`` times its bits
    (the bits of a plain ECSQ pass at the same step).
    """
    w = np.array(weight, np.float64)
    out, d = w.shape
    mask = np.asarray(mask, bool).reshape(out, d)
    _, _, qmin, bits = _grid_assignment(w.reshape(-1), mask.reshape(-1), delta, lam, 4, bins)
    u, scale = factor
    groups = [(0, d, u)] if isinstance(u, np.ndarray) else u
    q = np.zeros((out, d), np.int64)
    target = np.zeros((out, d))
    for width in sorted({e - s for s, e, _ in groups}):  # blocks of one width, all at once
        same = [(s, e, ug) for s, e, ug in groups if e - s == width]
        qs, ts = _feedback_blocks(np.stack([w[:, s:e] for s, e, _ in same]),
                                  np.stack([mask[:, s:e] for s, e, _ in same]),
                                  np.stack([ug for _, _, ug in same]), scale, delta, lam, qmin, bits, block)
        for k, (s, e, _) in enumerate(same):
            q[:, s:e], target[:, s:e] = qs[k], ts[k]
    # levels: the mean of the (compensated) values each grid index stood for
    flat_q = q[mask]
    levels = _bin_means(flat_q, target[mask], qmin, np.arange(qmin, qmin + bits.size) * delta)
    return _layer_quant(flat_q, levels, qmin, mask.reshape(-1), codebook_dtype)


def _feedback_blocks(w, mask, u, scale, delta, lam, qmin, bits, block) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ over the columns of ``G`` independent blocks of equal width at once: ``w`` and
    ``mask`` (G, out, B), ``u`` (G, B, B). Returns (grid index, compensated value) per weight.

    The blocks go through their columns side by side, so a 65,536-column layer in 64 blocks
    takes 1,024 steps of the loop, not 65,536."""
    d = w.shape[2]
    span = bits.size
    w = w.copy()
    q = np.zeros(w.shape, np.int64)
    target = np.zeros(w.shape)
    diag = np.diagonal(u, axis1=1, axis2=2)
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        wb = w[:, :, b0:b1].copy()
        err = np.zeros(wb.shape)
        for j in range(b1 - b0):
            col, uj = wb[:, :, j], diag[:, b0 + j, None]
            lo = np.clip(np.floor(col / delta).astype(np.int64), qmin, qmin + span - 2)
            cand = np.stack([lo, lo + 1, np.zeros_like(lo)])
            cost = (col[None] - cand * delta) ** 2 / (uj * uj * scale)[None] + lam * bits[cand - qmin]
            pick = np.take_along_axis(cand, np.argmin(cost, 0)[None], 0)[0]
            pick[~mask[:, :, b0 + j]] = 0
            q[:, :, b0 + j] = pick
            target[:, :, b0 + j] = col
            e = (col - pick * delta) / uj
            err[:, :, j] = e
            wb[:, :, j + 1:] -= e[:, :, None] * u[:, None, b0 + j, b0 + j + 1:b1]
        w[:, :, b1:] -= err @ u[:, b0:b1, b1:]
    return q, target


@torch.no_grad()
def layer_hessians(model: nn.Module, images: torch.Tensor, batch_size: int = 16, positions: int = 64,
                   seed: int = 0) -> dict[str, list[tuple[int, int, np.ndarray]]]:
    """Second moment of each layer's (unfolded) inputs over ``images``, as diagonal blocks:
    ``[(start, end, (end - start)**2 matrix)]`` per layer (one block for layers up to
    ``FEEDBACK_FULL`` columns; ``feedback_memory`` tells the bytes beforehand).

    ``positions`` random output positions an input per convolution (all of them would be
    millions of columns for the early layers); inputs of linear layers with more than two
    dimensions (sequences) count every position. Grouped and 3-D convolutions are left out.
    """
    layers = _feedback_layers(model)
    blocks = {n: feedback_blocks(*_columns(m)) for n, m in layers.items()}
    acc: dict[str, list] = {}
    g = torch.Generator().manual_seed(seed)

    def hook(name):
        def fn(m, inp, _out):
            x = inp[0].detach().float()
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                if isinstance(m, nn.Conv1d):  # as a 2-D convolution of width 1
                    x = x.unsqueeze(-1)
                    args = [(k, 1) for k in (m.kernel_size[0], m.dilation[0], m.padding[0], m.stride[0])]
                else:
                    args = [m.kernel_size, m.dilation, m.padding, m.stride]
                if isinstance(m.padding, str):
                    raise ConfigError(f"{name}: padding={m.padding!r} is not supported by error feedback")
                cols = F.unfold(x, args[0], dilation=args[1], padding=args[2], stride=args[3])
                pick = torch.randint(cols.shape[2], (min(positions, cols.shape[2]),), generator=g)
                x = cols[:, :, pick].permute(0, 2, 1).reshape(-1, cols.shape[1])
            else:
                x = x.reshape(-1, x.shape[-1])
            x = x.double()
            parts = acc.setdefault(name, [0] * len(blocks[name]))
            for i, (s, e) in enumerate(blocks[name]):
                parts[i] = parts[i] + x[:, s:e].T @ x[:, s:e]
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
    n = images.shape[0]
    return {name: [(s, e, (a / n).numpy()) for (s, e), a in zip(blocks[name], parts)] for name, parts in acc.items()}


def fisher_sensitivity(model: nn.Module, images: torch.Tensor, batch_size: int = 8, seed: int = 0,
                       output: str = "logits") -> dict[str, float]:
    """Mean diagonal Fisher information per conv / linear layer, over its nonzero weights.

    For each input an output is drawn from the distribution the model's output stands for
    (``output``: a label for logits and probabilities, Bernoulli draws for sigmoid outputs,
    Gaussian noise for the rest; ``outputs.fisher_sample_loss``); the squared gradient of the
    summed log-likelihood of a batch estimates the sum of the per-input Fisher diagonals without
    bias, at the cost of one backward pass per batch instead of per input. Then
    ``distortion(model, perturbed) ~ 0.5 * s * sum(dW**2)`` for a small perturbation ``dW``.
    """
    layers = prunable_layers(model)
    acc = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, images.shape[0], batch_size):
            y = flatten_outputs(model(images[i:i + batch_size]))
            model.zero_grad(set_to_none=True)
            fisher_sample_loss(y, output, g).backward()
            for n, m in layers.items():
                if m.weight.grad is not None:  # a layer the output does not depend on has none
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
                    factors: dict[str, tuple] | None = None,
                    bins: dict[str, ValueBins] | None = None) -> dict[str, LayerQuant]:
    """ECSQ of every layer at the global slope ``lam`` (sensitivity-weighted squared error per bit).

    With ``factors`` (``feedback_factors`` of each layer's ``layer_hessians``), the layers that
    have one are quantized with error feedback (``ecsq_error_feedback``); layers with ``bins``
    decide per value bin."""
    out = {}
    factors, bins = factors or {}, bins or {}
    for n, w in weights.items():
        lam_l = lam / sensitivity[n]
        delta = layer_step(w, masks[n], lam_l, step_scale)
        f = factors.get(n)
        cols = f[0][-1][1] if f is not None else 0  # the end of the last block: the layer's columns
        if f is not None and w.size % cols == 0:
            out[n] = ecsq_error_feedback(w.reshape(-1, cols), masks[n], f, delta, lam_l, codebook_dtype,
                                         bins=bins.get(n))
        else:
            out[n] = ecsq(w, masks[n], delta, lam_l, codebook_dtype=codebook_dtype, bins=bins.get(n))
    return out


def estimated_bytes(weights: dict[str, np.ndarray], masks: dict[str, np.ndarray], sensitivity: dict[str, float],
                    lam: float, step_scale: float, bins: dict[str, ValueBins]) -> float:
    """Bytes of the layers' codes at slope ``lam``, from plain ECSQ and order-0 entropies (no
    tap contexts, no headers): a fast stand-in for the exact size, right up to a factor that
    ``quantize_for_budget_`` measures."""
    total = 0.0
    for n, w in weights.items():
        lam_l = lam / sensitivity[n]
        mask = masks[n]
        delta = layer_step(w, mask, lam_l, step_scale)
        b = bins.get(n)
        if b is None:
            q, _, qmin, _ = _ecsq_grid(w[mask], int(mask.size - mask.sum()), delta, lam_l, 4)
            hist = np.bincount(q - qmin).astype(np.float64)
        else:  # straight from the bins, without a pass over the weights
            q, _, qmin, _ = _ecsq_grid(b.value, int(mask.size - mask.sum()), delta, lam_l, 4, b.count)
            hist = np.bincount(q - qmin, weights=b.count)
        hist[-qmin] += mask.size - mask.sum()
        neg, pos = hist[:-qmin], hist[-qmin + 1:]
        levels = int((neg > 0).sum() + (pos > 0).sum())
        total += (code_length(np.array([hist[-qmin], neg.sum(), pos.sum()])) + code_length(neg)
                  + code_length(pos)) / 8 + 3 * levels + 12
    return total


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
    layers = prunable_layers(model)
    for n, q in quants.items():
        m = layers[n]
        shape = m.weight.shape
        dev = m.weight.device
        _set_buffer(m, "weight_codebook", torch.from_numpy(q.codebook.copy()).to(dev))
        _set_buffer(m, "weight_index", torch.from_numpy(q.index.astype(np.int16)).reshape(shape).to(dev))
        _set_buffer(m, "weight_mask", torch.from_numpy(q.mask.copy()).reshape(shape).to(dev))
        _set_buffer(m, "weight_bits", torch.tensor(index_bits(q.codebook.size), dtype=torch.int16))
        if q.step is not None:  # the file codes this layer on the trellis (``weights/codecs/trellis.py``)
            _set_buffer(m, "weight_step", torch.tensor(q.step, dtype=torch.float32))
        elif "weight_step" in m._buffers:
            del m._buffers["weight_step"]
        m.weight.copy_(torch.from_numpy(q.weight()).reshape(shape).to(m.weight.dtype))


# Models up to this many coded weights, and with error feedback over at most this many input
# columns (SqueezeNet v1.0: about 5,000), are sized exactly (quantized and serialized) at every
# step of the slope search; others search on ``estimated_bytes`` and are sized exactly a few
# times to correct it (a 22M-weight model: 7 s per exact size, milliseconds per estimate; error
# feedback costs about 20 us a column).
EXACT_SEARCH_WEIGHTS = 4_000_000
# The trellis quantizer's step relative to the high-rate step of its slope: its slope is
# ln 2 / (6 * 4**2) = 0.007 step**2 a bit, a light rate term as NNC's DQ has. CREPE full, 300
# held-out frames within 10 cents: at 1.4 MB 43.3% at 1.7, 58.3% at 4, 58.0% at 8; at 2.3 MB
# 97.7% at 1.7, 97.3% at 2.5.
TRELLIS_STEP_SCALE = 4.0
EXACT_SEARCH_COLUMNS = 8192
# Where sizes are estimated, layers with more kept weights than this decide per value bin
# (``ValueBins``).
BINNED_LAYER = 1 << 16


def quantize_for_budget_(model: nn.Module, sensitivity: dict[str, float], budget: int, serialize,
                         step_scale: float | None = None, log=None, factors: dict[str, tuple] | None = None,
                         trellis: bool = False) -> dict:
    """ECSQ every layer of ``model`` in place at the slope whose file fits ``budget`` bytes.

    Args:
        model: pruned (or not) model; its current weights are the reference.
        sensitivity: per-layer Fisher sensitivity (``fisher_sensitivity``).
        budget: bytes.
        serialize: ``model -> bytes`` (the exact file), called once per bisection step.
        step_scale: grid step relative to the high-rate optimum. Default: 0.6 for plain ECSQ,
            1.7 with error feedback (``factors``), each measured best on SqueezeNet v1.0:
            fed-back errors make a coarser grid with fewer coded levels pay (350 kB, 2-fold
            ImageNet agreement: 83-84% at 0.6, 87.0% at 1.0, 88.3-88.4% at 1.7, 87.0% at 2.2);
            ``TRELLIS_STEP_SCALE`` on the trellis.
        factors: error feedback: ``feedback_factors`` of each layer's ``layer_hessians``
            (factored once by the caller: they depend on the inputs only, so the candidates of
            one budget and every slope of the search share them).
        trellis: quantize on the trellis codec's four-state trellis (``trellis.py``; no error
            feedback) instead of ECSQ.
    Returns:
        ``{"lam", "bytes", "levels", "kept_weights"}``.
    """
    if trellis and factors:
        raise ConfigError("the trellis quantizer does not take error feedback")
    if step_scale is None:
        step_scale = TRELLIS_STEP_SCALE if trellis else 1.7 if factors else 0.6
    factors = factors or {}
    weights, masks = model_weights_and_masks(model)
    reference = {n: torch.from_numpy(w.astype(np.float32)) for n, w in weights.items()}
    columns = sum(f[0][-1][1] for f in factors.values())
    exact = sum(w.size for w in weights.values()) <= EXACT_SEARCH_WEIGHTS and columns <= EXACT_SEARCH_COLUMNS
    bins = {} if exact else {n: ValueBins(w[masks[n]]) for n, w in weights.items() if masks[n].sum() > BINNED_LAYER}
    layers = prunable_layers(model)

    shapes = {n: tuple(m.weight.shape) for n, m in layers.items()}

    def size_of(lam):
        if trellis:
            quants = quantize_layers_trellis(weights, masks, sensitivity, lam, step_scale, shapes)
        else:
            quants = quantize_layers(weights, masks, sensitivity, lam, step_scale, factors=factors, bins=bins)
        install_(model, quants)
        size = len(serialize(model))
        if log:
            log(f"  slope {lam:.3g}: {size:,} bytes")
        return size, quants

    def estimate(lam):
        if trellis:
            return estimated_bytes_trellis(weights, masks, sensitivity, lam, step_scale, shapes), None
        return estimated_bytes(weights, masks, sensitivity, lam, step_scale, bins), None

    try:
        if exact:
            lam, size, quants = _search_slope(size_of, sensitivity, budget)
        else:
            lam, size, quants = _corrected_search(size_of, estimate, sensitivity, budget, log)
    except ValueError:
        with torch.no_grad():  # leave the model as it came
            for n, m in layers.items():
                m.weight.copy_(reference[n].reshape(m.weight.shape))
        raise
    install_(model, quants)
    return {"lam": lam, "bytes": size, "levels": {n: int(q.codebook.size) for n, q in quants.items()},
            "kept_weights": int(sum(q.mask.sum() for q in quants.values()))}


def _search_slope(size_of, sensitivity: dict[str, float], budget: float):
    """``search_budget`` over the useful range of slopes, widened up to pruning everything."""
    # Slopes bracket the useful range: lam * 1e-6 / s is a squared step around 1e-6 ... 1e2
    # times the largest sensitivity, from near-lossless to a handful of levels per layer.
    s_max = max(sensitivity.values())
    lam_hi = 1e-2 * s_max
    for _ in range(4):  # coarser still, up to pruning everything, before giving up
        try:
            return search_budget(size_of, 1e-12 * s_max, lam_hi, budget)
        except ValueError:
            lam_hi *= 1e3
    raise ConfigError(f"cannot fit {budget:,} bytes: even with every weight pruned the file is larger")


def _corrected_search(size_of, estimate, sensitivity: dict[str, float], budget: int, log, tries: int = 6,
                      refine: int = 4):
    """Search on the estimate for a target, size the slope found exactly, rescale the target by
    how far the estimate was off, and repeat: the largest exact fit within 0.5% of ``budget``
    (or the largest of ``tries``). Where every try overshoots, the slope is raised 10% at a
    time on exact sizes until the file fits (coarser always fits sooner or later). A fit still
    short of 0.5% is refined by up to ``refine`` exact bisection steps between it and the
    finest slope that overshot (the estimate can be off by more than the rescaling mends: a
    22M-weight model once stopped at 1.66 MB of 2.3)."""
    target, best, lam, size = float(budget), None, None, None
    over = None  # the largest slope seen to overshoot (larger slopes make smaller files)
    for attempt in range(tries):
        lam, _, _ = _search_slope(estimate, sensitivity, target)
        size, quants = size_of(lam)
        if log:
            log(f"  estimated target {target:,.0f}: slope {lam:.3g}, exact {size:,} bytes")
        if size <= budget and (best is None or size > best[1]):
            best = (lam, size, quants)
        elif size > budget:
            over = lam if over is None else max(over, lam)
        if best is not None and best[1] >= 0.995 * budget:
            return best
        # overshooting: aim lower by a margin that grows with each miss
        target *= budget * (1.0 if size <= budget else 0.998 ** (attempt + 1)) / size
    while best is None and lam < 1e6 * max(sensitivity.values()):
        over = lam
        lam *= 1.1
        size, quants = size_of(lam)
        if size <= budget:
            best = (lam, size, quants)
    if best is None:
        raise ConfigError(f"cannot fit {budget:,} bytes: the coarsest slope tried gives {size:,} bytes")
    for _ in range(refine if over is not None and over < best[0] else 0):
        if best[1] >= 0.995 * budget:
            break
        lam = math.sqrt(over * best[0])
        size, quants = size_of(lam)
        if log:
            log(f"  refining: slope {lam:.3g}, exact {size:,} bytes")
        if size <= budget:
            best = (lam, size, quants)
        else:
            over = lam
    return best
