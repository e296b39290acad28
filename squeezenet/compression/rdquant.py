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

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..memory import release_memory
from ..weights.codecs.base import index_bits
from ..weights.entropy import code_length, ideal_bits, level_counts, model_table_size
from ..weights.codecs.range import taps_of
from ..weights.sqz import CODING_BUFFERS, TRIMMED_LAYER, fixed_bytes
from .levels import LayerQuant, layer_step
from .outputs import fisher_sample_loss, flatten_outputs
from . import kernels
from .progress import stage, tick
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
    kept = np.asarray(np.asarray(values).reshape(-1)[mask], np.float64)  # the kept weights alone in float64
    if bins is None:
        return _ecsq_grid(kept, n_pruned, delta, lam, iters)
    q, levels, qmin, bits = _ecsq_grid(bins.value, n_pruned, delta, lam, iters, bins.count)
    return q[bins.of(kept)], levels, qmin, bits


class ValueBins:
    """A layer's kept weights in ``n_bins`` fine bins of equal width over their range.

    ECSQ's decision depends on a weight's value only, so for layers of millions of weights it is
    made once per bin (at the bin's mean) instead of once per weight: the same levels (bin sums
    are exact), decisions off only for weights sharing a bin with a decision threshold, and a
    search step in milliseconds instead of seconds.
    """

    def __init__(self, kept: np.ndarray, n_bins: int | None = None) -> None:
        kept = np.asarray(kept, np.float64).reshape(-1)
        self.kept = kept.size
        if n_bins is None:  # at least ~30 bins a grid step at the finest step (a 2,000th of the range)
            # and more on large layers, up to 2**18: 20 bytes a bin are held through the search (a
            # 98M-weight model's bins at up to 2**20 a layer, a bin per 8 weights: 0.23 GB)
            n_bins = max(1 << 16, min(1 << 18, kept.size // 16))
        lo, hi = (float(kept.min()), float(kept.max())) if kept.size else (0.0, 0.0)
        self.abs_max = max(-lo, hi) if kept.size else None
        self.lo, self.scale, self.n_bins = lo, n_bins / max(hi - lo, 1e-30), n_bins
        raw = self._raw(kept)
        counts = np.bincount(raw, minlength=n_bins)
        sums = np.bincount(raw, weights=kept, minlength=n_bins)
        used = counts > 0
        self.value = sums[used] / counts[used]
        self.count = counts[used].astype(np.float64)
        self.slot = (np.cumsum(used) - 1).astype(np.int32)  # fine bin -> used bin

    def _raw(self, kept: np.ndarray) -> np.ndarray:
        return np.minimum(((kept - self.lo) * self.scale).astype(np.int64), self.n_bins - 1)

    def of(self, kept: np.ndarray) -> np.ndarray:
        """The used bin of each of the kept weights given (float64, in the order they were binned).
        Computed again at each call rather than stored: a 100M-weight model's bin per weight
        was 392 MB held through the whole search, for a pass over the weights a call."""
        return self.slot[self._raw(kept)]


def _ecsq_grid(kept: np.ndarray, n_pruned: int, delta: float, lam: float, iters: int,
               counts: np.ndarray | None = None):
    """ECSQ on the grid: (grid index per kept weight, level per grid index, lowest index, bits per index).

    ``counts``: how many weights each entry of ``kept`` stands for (``ValueBins``); None: one each.
    Compiled (``kernels.ecsq_grid``).
    """
    if not delta > 0:
        raise ConfigError(f"delta must be positive, got {delta}")
    return kernels.ecsq_grid(kept, n_pruned, delta, lam, iters, counts)


def _layer_quant(q: np.ndarray, levels: np.ndarray, qmin: int, mask: np.ndarray, codebook_dtype: str) -> LayerQuant:
    """LayerQuant from grid indices ``q`` of the kept weights (0 prunes) and the level of each index."""
    present = np.bincount(q - qmin, minlength=levels.size) > 0  # np.unique without its sort
    present[-qmin] = False
    used = np.flatnonzero(present) + qmin
    cb, rank = _sorted_codebook(levels, present, codebook_dtype)
    new_mask = mask.copy()
    nonzero = q != 0
    new_mask[mask] = nonzero
    index = np.zeros(mask.size, np.int16)
    slot = np.zeros(levels.size, np.int64)  # grid index -> position in ``used``
    slot[used - qmin] = np.arange(used.size)
    index[new_mask] = rank[slot[q[nonzero] - qmin]]
    return LayerQuant(cb, index, new_mask)


def _sorted_codebook(levels: np.ndarray, present: np.ndarray, codebook_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(the levels of the grid indices ``present``, sorted, as the file stores them; the rank
    of each of them in that order)."""
    cb = levels[present].astype(np.float32)
    if codebook_dtype == "f2":
        cb = cb.astype(np.float16).astype(np.float32)
    order = np.argsort(cb, kind="stable")
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    return cb[order], rank


# Error feedback couples the input columns of a layer through their second moment: (D, D) in
# float64. Wider layers (a 1,024-channel convolution with 64 taps has D = 65,536: 34 GB) are
# coupled within blocks of whole input channels of at most this many columns (block-diagonal
# second moments, 8 MB each): memory linear in D, and most of the coupling is between the taps
# of one channel and its neighbours.
FEEDBACK_BLOCK = 1024
# Columns error feedback quantizes before it moves the later columns of their block by their
# errors in one product (GPTQ's lazy batch); the rows of a packed factor (``kernels.Panels``).
FEEDBACK_COLUMNS = 32
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


@dataclass
class FeedbackFactor:
    """What error feedback needs of a layer's input second moment, independent of the step and
    slope: the upper Cholesky factor ``u`` of each diagonal block's damped inverse
    (``inv(h) = u.T @ u``), stacked by block width so that blocks of one width are quantized side
    by side (``groups``: [(first column of each block (G,), factors (G, B, B))]); the mean damped
    diagonal over the layer (``scale``: one slope weighs every block alike); the layer's
    ``columns``."""
    groups: list[tuple[np.ndarray, np.ndarray]]
    scale: float
    columns: int

    def __post_init__(self) -> None:
        for starts, u in self.groups:
            _block_span(starts, u.shape[1])


def _block_span(starts: np.ndarray, width: int) -> slice:
    """The columns that blocks of one width starting at ``starts`` cover: they are quantized
    and accumulated as one slice, so they must lie side by side."""
    if not np.array_equal(starts, starts[0] + width * np.arange(starts.size)):
        raise ValueError("the blocks of one width must lie side by side")
    return slice(int(starts[0]), int(starts[-1]) + width)


def feedback_factor(hessian: np.ndarray, damp: float | None = None) -> FeedbackFactor:
    """``FeedbackFactor`` of a layer's whole input second moment (one block)."""
    h = np.asarray(hessian, np.float64)
    return feedback_factors([(0, h.shape[0], h)], damp)


# Damping of each second-moment block, a fraction of its mean diagonal. A layer whose second
# moment is whole and estimated from at least as many input rows as it has columns takes GPTQ's
# 1%: SqueezeNet v1.0 (every layer one block of at most 4,096 columns, 8,000 rows) at 350 kB
# kept 91.2% held-out agreement with it against 87.6% at 30%. A layer coupled in blocks
# (``feedback_blocks``: the coupling between blocks is left out) or from fewer rows than
# columns (CREPE full's classifier: 256 inputs for 2,048 columns: singular) takes 30%: the
# errors fed back pile up in the directions the blocks or the rows do not see, and a larger
# damping weighs those like any other. CREPE full at 2.3 MB (sensitivity exponent 0.35; 1,000
# held-out frames; mean pitch error in cents / share within 10 cents): 1% everywhere 7.7 /
# 98.7%, 10% 3.2 / 98.7%, 30% 1.8 / 99.2%, 100% 1.8 / 99.3%; 30% on its classifier alone 5.7 /
# 98.1%.
FEEDBACK_DAMPING = 0.01
FEEDBACK_DAMPING_PARTIAL = 0.3


def feedback_damping(blocks: list[tuple[int, int, np.ndarray]], rows: int) -> float:
    """Damping of a layer's second-moment blocks (``layer_hessians``) estimated from ``rows``
    input rows: ``FEEDBACK_DAMPING`` for one whole block from at least as many rows as
    columns, else ``FEEDBACK_DAMPING_PARTIAL``."""
    columns = max(e for _, e, _ in blocks)
    return FEEDBACK_DAMPING if len(blocks) == 1 and rows >= columns else FEEDBACK_DAMPING_PARTIAL

# Blocks factored in one batched call (128 MB of 1,024-column blocks: a 22M-weight model's 64
# blocks at once took five times as long as in four calls, paging in temporaries).
FACTOR_CHUNK = 16


def feedback_factors(blocks: list[tuple[int, int, np.ndarray]], damp: float | None = None,
                     overwrite: bool = False, store=np.float64, pack: bool = False) -> FeedbackFactor:
    """``FeedbackFactor`` of a layer's second-moment blocks (``layer_hessians``), each damped by
    ``damp`` (default ``FEEDBACK_DAMPING``) times its mean diagonal; blocks of one width are
    factored in one batched call.

    ``overwrite``: where the blocks of one width are consecutive slices of one array (as
    ``layer_hessians`` gives them), their factors are written over them, not into a copy (a
    22M-weight model's 866 MiB of fresh memory; on a virtual machine paging it in took longer
    than the factoring). ``store``: the dtype the factors are computed and kept in (float32 on
    models sized on estimates, whose blocks are damped by ``FEEDBACK_DAMPING_PARTIAL``: well
    conditioned; the feedback computes in float64 whatever they are kept in). ``pack``: each
    width's factors kept as ``kernels.Panels`` (half the memory; the same feedback)."""
    damp = FEEDBACK_DAMPING if damp is None else damp
    groups, damped = [], 0.0
    second_moment = {s: h for s, _, h in blocks}
    for starts, width, _ in _block_groups([(s, e) for s, e, _ in blocks]):
        stack = _block_stack([second_moment[int(s)] for s in starts], overwrite, store)
        for i in range(0, starts.size, FACTOR_CHUNK):
            diag = _factor_stack_(stack[i:i + FACTOR_CHUNK], damp)
            damped += float(diag.double().sum()) * width
        groups.append((starts, kernels.Panels(stack.numpy(), FEEDBACK_COLUMNS) if pack else stack.numpy()))
        del stack  # packed: the whole factors go (with ``overwrite``, once the caller drops the sums)
    columns = max(e for _, e, _ in blocks)
    return FeedbackFactor(groups, damped / columns, columns)


_TORCH_DTYPE = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}


def _block_stack(parts: list[np.ndarray], overwrite: bool, dtype=np.float64) -> torch.Tensor:
    """The blocks of one width as one (G, B, B) tensor of ``dtype``: the array they are
    consecutive slices of, with ``overwrite``, else a copy (torch's allocator: numpy's huge
    pages took seconds a gigabyte to page in on a virtual machine)."""
    base = parts[0].base
    if overwrite and isinstance(base, np.ndarray) and base.dtype == dtype and base.flags.c_contiguous \
            and base.shape == (len(parts),) + parts[0].shape \
            and all(p.base is base and p.ctypes.data == base[i].ctypes.data for i, p in enumerate(parts)):
        return torch.from_numpy(base)
    stack = torch.empty((len(parts),) + parts[0].shape, dtype=_TORCH_DTYPE[np.dtype(dtype)])
    for i, p in enumerate(parts):
        stack[i] = torch.from_numpy(np.asarray(p, dtype))
    return stack


def _factor_stack_(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Damp a stack (G, B, B) of second moments and write over each the upper Cholesky factor
    of its damped inverse; returns the mean damped diagonal of each.

    With ``J`` the reversal of the columns, ``J h J = l l.T`` gives ``inv(h) = u.T @ u`` for the
    upper triangular ``u = J inv(l) J``: one factorisation and one triangular inverse, not a
    full inverse factored again."""
    diag = torch.diagonal(h, dim1=1, dim2=2)  # a view: writing it writes h
    diag[diag <= 0] = 1.0  # inputs that are always zero: any value of their weights is free
    diag += (damp * diag.mean(1))[:, None]
    mean_diag = diag.mean(1)
    lower = torch.linalg.cholesky(h.flip(1, 2))
    h.copy_(lower_inverse(lower).flip(1, 2))
    return mean_diag


def lower_inverse(lower: torch.Tensor) -> torch.Tensor:
    """The inverses of a stack of lower triangular matrices (G, B, B), by halves:
    ``[[A, 0], [C, D]]`` inverts to ``[[inv(A), 0], [-inv(D) C inv(A), inv(D)]]``. Two products
    a level instead of a triangular solve against the identity, which does the dense work of
    ``B`` right-hand sides: a third of the operations (CREPE full's 1,024-column blocks: 1.9 ->
    0.8 s of its factoring)."""
    n = lower.shape[-1]
    if n <= TRIANGULAR_LEAF:
        return torch.linalg.solve_triangular(lower, torch.eye(n, dtype=lower.dtype).expand_as(lower), upper=False)
    k = n // 2
    out = torch.zeros_like(lower)
    top, bottom = lower_inverse(lower[:, :k, :k]), lower_inverse(lower[:, k:, k:])
    out[:, :k, :k] = top
    out[:, k:, k:] = bottom
    out[:, k:, :k] = -(bottom @ (lower[:, k:, :k] @ top))
    return out


TRIANGULAR_LEAF = 128  # blocks this small are inverted by a triangular solve


def ecsq_error_feedback(weight: np.ndarray, mask: np.ndarray, factor: FeedbackFactor, delta: float,
                        lam: float, codebook_dtype: str = "f2", block: int | None = None,
                        bins: ValueBins | None = None) -> LayerQuant:
    """ECSQ with the layer's output error fed back into the weights not yet quantized (GPTQ).

    Columns of ``weight`` (out, D) are quantized in order; each column's error, through the
    inverse of the inputs' second moment (``factor``: its ``feedback_factor``, or the
    ``feedback_factors`` of its blocks), moves the later columns of its block so that the
    layer's outputs on the calibration inputs change as little as possible (Frantar et al., GPTQ,
    ICLR 2023; pruned weights are quantized to zero, as in SparseGPT). Each weight takes the grid
    level minimising its output error, in weight-space units, plus ``lam`` times its bits
    (the bits of a plain ECSQ pass at the same step).

    The levels stay on the grid: the errors fed back are those of the grid values, so any other
    level (the mean of the compensated values an index took, as plain ECSQ has it) would move
    every weight of an index the same way after the feedback, an error along the inputs'
    strongest directions that nothing compensates (CREPE full's classifier: output error 1.5
    with those means, 0.0004 on the grid, same bits).
    """
    block = FEEDBACK_COLUMNS if block is None else block
    # float32 or float64 as given: the feedback works on its own float64 copy of each block
    # (a float64 copy of the whole layer here was 100 MB more of a 12.6M-weight layer's pass)
    w = np.asarray(weight) if np.asarray(weight).dtype in (np.float32, np.float64) else np.asarray(weight, np.float64)
    out, d = w.shape
    mask = np.asarray(mask, bool).reshape(out, d)
    qmin, bits = _grid_range(w.reshape(-1), mask.reshape(-1), delta, lam, bins)
    parts = []
    for starts, u in factor.groups:  # blocks of one width, all at once
        g, width = u.shape[0], u.shape[1]
        cols = _block_span(starts, width)
        # (G, B, out): a column of every block is one contiguous slice
        ms = np.ascontiguousarray(mask[:, cols].reshape(out, g, width).transpose(1, 2, 0))
        parts.append((cols.start, _feedback_blocks(w[:, cols].reshape(out, g, width).transpose(1, 2, 0), ms,
                                                   u, factor.scale, delta, lam, qmin, bits, block)))
    levels = np.arange(qmin, qmin + bits.size, dtype=np.float64) * delta
    return _blocks_quant(parts, levels, qmin, (out, d), codebook_dtype)


def _grid_range(values: np.ndarray, mask: np.ndarray, delta: float, lam: float, bins: ValueBins | None):
    """(lowest grid index, bits per grid index) of plain ECSQ at ``delta``, ``lam``: the grid
    and rates error feedback decides on (from the value bins where the layer has them)."""
    if bins is not None:
        _, _, qmin, bits = _ecsq_grid(bins.value, int(mask.size - mask.sum()), delta, lam, 4, bins.count)
    else:
        _, _, qmin, bits = _grid_assignment(values, mask, delta, lam, 4, None)
    return qmin, bits


def _blocks_quant(parts: list[tuple[int, np.ndarray]], levels: np.ndarray, qmin: int, shape: tuple[int, int],
                  codebook_dtype: str) -> LayerQuant:
    """``_layer_quant`` from the blocks' grid indices ``(first column, (G, B, out))`` of a layer
    of ``shape`` (out, D): the same codebook, index and mask, without a layer-sized int64 pass."""
    present = kernels.used_levels([q for _, q in parts], qmin, levels.size)
    present[-qmin] = False
    cb, rank = _sorted_codebook(levels, present, codebook_dtype)
    rank_of = np.zeros(levels.size, np.int16)  # grid index - qmin -> rank; indexed with q - qmin ...
    rank_of[np.flatnonzero(present)] = rank
    rank_of = np.roll(rank_of, qmin)  # ... rolled so that the kernel indexes with q itself (negative wraps)
    index, kept = kernels.scatter_ranks(parts, rank_of, shape)
    return LayerQuant(cb, index.reshape(-1), kept.reshape(-1))


def _feedback_blocks(w, mask, u, scale, delta, lam, qmin, bits, block) -> np.ndarray:
    """GPTQ over the columns of ``G`` independent blocks of equal width at once: ``w`` and
    ``mask`` (G, B, out), ``u`` (G, B, B). Returns the grid index of each weight, (G, B, out).

    The blocks go through their columns side by side, so a 65,536-column layer in 64 blocks
    takes 1,024 steps, not 65,536; each step weighs the two grid neighbours of every weight and
    zero (``kernels.feedback_blocks``: compiled, the rows of every block on every core). The
    rows are independent, so a tall layer goes a slice of rows at a time (``FEEDBACK_CHUNK``)."""
    g, d, out = w.shape
    rows = max(kernels.ROWS_PER_TASK, FEEDBACK_CHUNK // max(g * d, 1))
    if out <= rows:
        return kernels.feedback_blocks(w, mask, u, scale, delta, lam, qmin, bits, block)
    return np.concatenate([kernels.feedback_blocks(w[:, :, o:o + rows], mask[:, :, o:o + rows], u, scale, delta,
                                                   lam, qmin, bits, block) for o in range(0, out, rows)], axis=2)


# Weights error feedback works on at once (its float64 copy: 16 MB): a 16,384-row, 768-column
# layer's whole copy was 100 MB of a 98M-weight model's peak.
FEEDBACK_CHUNK = 1 << 21


# Output positions an input whose patches sum a convolution's input second moments.
HESSIAN_POSITIONS = 64


@torch.no_grad()
def layer_hessians(model: nn.Module, images: torch.Tensor, batch_size: int = 16, positions: int = HESSIAN_POSITIONS,
                   seed: int = 0, rows: dict[str, int] | None = None) -> dict[str, list[tuple[int, int, np.ndarray]]]:
    """Second moment of each layer's (unfolded) inputs over ``images``, as diagonal blocks:
    ``[(start, end, (end - start)**2 matrix)]`` per layer (one block for layers up to
    ``FEEDBACK_FULL`` columns; ``feedback_memory`` tells the bytes beforehand).

    ``positions`` random output positions an input per convolution (all of them would be
    millions of columns for the early layers); inputs of linear layers with more than two
    dimensions (sequences) count every position. Grouped and 3-D convolutions are left out.
    Sums run in float32 (batched matrix products in place: a mixed float64 sum took four
    times as long; tens of thousands of rows put the relative error near 1e-6, far under the
    damping) and come back in float64. ``rows``, where given, is filled with the number of input
    rows each layer's second moment sums (``feedback_damping`` weighs it).
    """
    sums = SecondMomentSums(model, images, batch_size, positions, seed, rows)
    return {name: sums.pop(name) for name in list(sums.parts)}


class SecondMomentSums:
    """``layer_hessians``' float32 sums, handed out one layer at a time in float64 (``pop``), so
    that a model's second moments are never all in float64 at once (a 98M-weight language
    model's: 976 MiB, against 488 in float32)."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, images: torch.Tensor, batch_size: int = 16,
                 positions: int = HESSIAN_POSITIONS, seed: int = 0, rows: dict[str, int] | None = None) -> None:
        layers = _feedback_layers(model)
        self.groups = {n: _block_groups(feedback_blocks(*_columns(m))) for n, m in layers.items()}
        self.parts: dict[str, list] = {}
        self.count = images.shape[0]
        g = torch.Generator().manual_seed(seed)
        handles = [m.register_forward_hook(self._hook(n, positions, g, rows)) for n, m in layers.items()]
        was_training = model.training
        model.eval()
        try:
            with stage("input second moments", total=-(-images.shape[0] // batch_size), unit="batch"):
                for i in range(0, images.shape[0], batch_size):
                    model(images[i:i + batch_size])
                    tick()
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)

    def _hook(self, name, positions, g, rows):
        groups, acc = self.groups[name], self.parts

        def fn(m, inp, _out):
            x = inp[0].detach().float()
            conv = isinstance(m, (nn.Conv1d, nn.Conv2d))
            if conv:
                x = _patch_gather(name, m, x, positions, g)  # (N, C, P, taps)
            else:
                x = x.reshape(-1, x.shape[-1])
            if name not in acc:
                acc[name] = [torch.zeros(starts.size, width, width) for starts, width, _ in groups]
            if rows is not None:
                rows[name] = rows.get(name, 0) + (x.shape[0] * x.shape[2] if conv else x.shape[0])
            for a, (_, width, cols) in zip(acc[name], groups):
                xs = _block_rows(x, cols, width) if conv else \
                    x[:, cols].reshape(x.shape[0], -1, width).transpose(0, 1).contiguous()
                _accumulate_upper_(a, xs)
        return fn

    def pop(self, name: str, dtype=np.float64) -> list[tuple[int, int, np.ndarray]]:
        """A layer's blocks in ``dtype``, as ``layer_hessians`` gives them; its sums are freed
        (float32: the sums themselves, divided in place)."""
        parts = [_mirror_upper_(a) for a in self.parts.pop(name)]
        return [(int(s), int(s) + width, h) for (starts, width, _), a in zip(self.groups[name], parts)
                for s, h in zip(starts, a.to(_TORCH_DTYPE[np.dtype(dtype)]).div_(self.count).numpy())]


# Second moments are summed a row panel of this many columns at a time, from the diagonal on
# (``_accumulate_upper_``).
MOMENT_PANEL = 256


def _accumulate_upper_(a: torch.Tensor, xs: torch.Tensor) -> None:
    """``a += xs.T @ xs`` for a stack (G, B, B) from rows ``xs`` (G, N, B), on and above the
    diagonal's panels only (the sums are symmetric; ``_mirror_upper_`` fills in the rest): 10
    of 16 panel products for a 1,024-column block, and half the time (CREPE full's 64-block
    layers: 1.15 -> 0.58 s a batch, panels that stay in cache)."""
    width = a.shape[-1]
    for i in range(0, width, MOMENT_PANEL):
        j = min(i + MOMENT_PANEL, width)
        a[:, i:j, i:].baddbmm_(xs[:, :, i:j].transpose(1, 2), xs[:, :, i:])


def _mirror_upper_(a: torch.Tensor) -> torch.Tensor:
    """The sums ``_accumulate_upper_`` left above the diagonal's panels, copied below it."""
    width = a.shape[-1]
    for i in range(0, width, MOMENT_PANEL):
        j = min(i + MOMENT_PANEL, width)
        a[:, j:, i:j] = a[:, i:j, j:].transpose(1, 2)
    return a


def _block_groups(blocks: list[tuple[int, int]]) -> list[tuple[np.ndarray, int, slice]]:
    """Blocks of one width together: [(first column of each, width, the columns they span)]
    (``feedback_blocks`` gives equal blocks side by side, then at most one narrower)."""
    out = []
    for width in sorted({e - s for s, e in blocks}, reverse=True):
        starts = np.array([s for s, e in blocks if e - s == width], np.int64)
        out.append((starts, width, _block_span(starts, width)))
    return out


def _block_rows(picked: torch.Tensor, cols: slice, width: int) -> torch.Tensor:
    """The rows (G, N * P, width) of the side-by-side blocks of ``width`` columns spanning
    ``cols`` (whole channels: ``feedback_blocks``), from ``_patch_gather``'s (N, C, P, taps): one
    copy straight into the batched product's layout (slicing unfolded rows into blocks took
    three copies, a third of a 22M-weight model's second-moment pass)."""
    n, _, p, taps = picked.shape
    per_block = width // taps
    part = picked[:, cols.start // taps:cols.stop // taps]
    part = part.reshape(n, -1, per_block, p, taps).permute(1, 0, 3, 2, 4)
    return part.reshape(part.shape[0], n * p, width)


def _patch_gather(name: str, m: nn.Module, x: torch.Tensor, positions: int, g: torch.Generator) -> torch.Tensor:
    """The inputs under ``positions`` random output positions of a 1-D / 2-D convolution, the
    same positions for every input of the batch, as (N, C, P, taps) with taps in ``F.unfold``'s
    order. Only the patches drawn are gathered (unfolding all of a 1,024-channel, 64-tap layer's
    positions first took half a gigabyte a batch), in one indexing of the padded input."""
    if isinstance(m.padding, str):
        raise ConfigError(f"{name}: padding={m.padding!r} is not supported by error feedback")
    if isinstance(m, nn.Conv1d):  # as a 2-D convolution of width 1
        x = x.unsqueeze(-1)
        kernel, dilation = (m.kernel_size[0], 1), (m.dilation[0], 1)
        padding, stride = (m.padding[0], 0), (m.stride[0], 1)
    else:
        kernel, dilation, padding, stride = m.kernel_size, m.dilation, m.padding, m.stride
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    x = F.pad(x, (pw, pw, ph, ph))
    rows = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    width = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    pick = torch.randint(rows * width, (min(positions, rows * width),), generator=g)
    if x.shape[3] == 1 and kw == 1:  # 1-D: whole windows of the unfolded view, selected (indexing each tap took longer)
        windows = x[..., 0].unfold(2, dh * (kh - 1) + 1, sh).index_select(2, pick)
        return windows[..., ::dh]
    top = (pick // width * sh)[:, None, None] + (torch.arange(kh) * dh)[None, :, None]  # (P, kh, 1)
    left = (pick % width * sw)[:, None, None] + (torch.arange(kw) * dw)[None, None, :]  # (P, 1, kw)
    return x[:, :, top, left].reshape(x.shape[0], x.shape[1], pick.numel(), kh * kw)


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
    sums = {n: [0.0, 0, 0.0] for n in layers}  # squared gradients summed over kept weights, their count, over all
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    with _layer_gradients_only(model, layers, sums):
        try:
            with stage("sensitivities", total=-(-images.shape[0] // batch_size), unit="batch"):
                for i in range(0, images.shape[0], batch_size):
                    y = flatten_outputs(model(images[i:i + batch_size]))
                    model.zero_grad(set_to_none=True)
                    fisher_sample_loss(y, output, g).backward()
                    tick()
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
    out = {}
    for n, m in layers.items():
        kept_sum, kept, total = sums[n]
        mean = kept_sum / kept if kept else total / max(m.weight.numel(), 1)
        out[n] = max(mean / max(images.shape[0], 1), 1e-30)
    return out


@contextlib.contextmanager
def _layer_gradients_only(model: nn.Module, layers: dict, sums: dict):
    """While the block runs, only the coded layers' weights take gradients, and each gradient is
    summed into ``sums`` and freed as soon as it is complete (a post-accumulate-grad hook): the
    memory of one layer's gradient at a time, not a gradient and a squared-gradient accumulator
    of the whole model besides (a 98M-weight model: 0.8 GB). A layer whose weight takes no
    gradient (frozen) sums nothing, as the output does not depend on it."""
    owner = {id(m.weight): n for n, m in layers.items() if m.weight.is_leaf and m.weight.requires_grad}
    leaves = {id(m.weight): m.weight for m in layers.values() if id(m.weight) in owner}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in owner] if owner else []

    def hook(p):
        sq = p.grad.detach().float() ** 2
        keep = p.detach() != 0
        entry = sums[owner[id(p)]]
        entry[0] += float(sq[keep].sum())
        entry[1] = int(keep.sum())  # the same weights every batch
        entry[2] += float(sq.sum())
        p.grad = None

    handles = []
    try:
        for p in frozen:
            p.requires_grad_(False)
        handles = [p.register_post_accumulate_grad_hook(hook) for p in leaves.values()]
        yield
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)


def quantize_layers(weights: dict[str, np.ndarray], masks: dict[str, np.ndarray], sensitivity: dict[str, float],
                    lam: float, step_scale: float = 1.0, codebook_dtype: str = "f2",
                    factors: dict[str, FeedbackFactor] | None = None,
                    bins: dict[str, ValueBins] | None = None, each=None) -> dict[str, LayerQuant]:
    """ECSQ of every layer at the global slope ``lam`` (sensitivity-weighted squared error per bit).

    With ``factors`` (``feedback_factors`` of each layer's ``layer_hessians``), the layers that
    have one are quantized with error feedback (``ecsq_error_feedback``); layers with ``bins``
    decide per value bin. ``each(name, quant)`` is called as each layer is done (the budget
    search installs it then, freeing the last pass's arrays of that layer)."""
    out = {}
    factors, bins = factors or {}, bins or {}
    for n, w in weights.items():  # as they are (float32): each quantizer widens what it computes on
        lam_l = lam / sensitivity[n]
        delta = layer_step(w, masks[n], lam_l, step_scale, bins[n].abs_max if n in bins else None)
        f = factors.get(n)
        if f is not None and w.size % f.columns == 0:
            out[n] = ecsq_error_feedback(w.reshape(-1, f.columns), masks[n], f, delta, lam_l, codebook_dtype,
                                         bins=bins.get(n))
        else:
            out[n] = ecsq(w, masks[n], delta, lam_l, codebook_dtype=codebook_dtype, bins=bins.get(n))
        if each is not None:
            each(n, out[n])
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
        b = bins.get(n)
        delta = layer_step(w, mask, lam_l, step_scale, b.abs_max if b is not None else None)
        if b is None:
            n_pruned = int(mask.size - mask.sum())
            q, _, qmin, _ = _ecsq_grid(np.asarray(w[mask], np.float64), n_pruned, delta, lam_l, 4)
            hist = np.bincount(q - qmin).astype(np.float64)
        else:  # straight from the bins, without a pass over the weights or the mask
            n_pruned = mask.size - b.kept
            q, _, qmin, _ = _ecsq_grid(b.value, n_pruned, delta, lam_l, 4, b.count)
            hist = np.bincount(q - qmin, weights=b.count)
        hist[-qmin] += n_pruned
        total += _order0_bytes(hist[-qmin], hist[:-qmin], hist[-qmin + 1:])
    return total


def model_weights_and_masks(model: nn.Module, reference: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
    """Flat float32 weights and kept masks (the ``weight_mask`` buffer, else nonzero) per layer:
    views of the model's own tensors where they are float32 already (the budget search writes no
    weight until it is done, ``install_(..., weights=False)``; a 98M-weight model's copy was 392
    MB), else float32 copies. Float32, not float64: exact, and the quantizers take each layer to
    float64 as they reach it. ``reference``: flat float32 arrays equal to the weights, held by
    the caller and never written, used instead."""
    weights, masks = {}, {}
    for n, m in prunable_layers(model).items():
        w = reference[n] if reference is not None else m.weight.detach().cpu().float().reshape(-1).numpy()
        mk = get_mask(m)
        masks[n] = (mk.cpu().reshape(-1).numpy().astype(bool, copy=False) if mk is not None else w != 0)
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
def install_(model: nn.Module, quants: dict[str, LayerQuant], weights: bool = True) -> None:
    """Put quantized layers into ``model``: codebook / index / mask buffers (sharing the quants'
    arrays, not copies of them) and, with ``weights``, the weights their levels give. The budget
    search installs the buffers alone at each slope (what the file is serialized from) and the
    weights once, at the end: the model's weights stay the search's reference until then."""
    layers = prunable_layers(model)
    for n, q in quants.items():
        _install_layer_(layers[n], q, weights)


@torch.no_grad()
def _install_layer_(m: nn.Module, q: LayerQuant, weights: bool) -> None:
    shape, dev = m.weight.shape, m.weight.device
    _set_buffer(m, "weight_codebook", torch.from_numpy(q.codebook.copy()).to(dev))
    _set_buffer(m, "weight_index", torch.from_numpy(q.index.astype(np.int16, copy=False)).reshape(shape).to(dev))
    _set_buffer(m, "weight_mask", torch.from_numpy(q.mask).reshape(shape).to(dev))
    _set_buffer(m, "weight_bits", torch.tensor(index_bits(q.codebook.size), dtype=torch.int16))
    if q.step is not None:  # the file codes this layer on the trellis (``weights/codecs/trellis.py``)
        _set_buffer(m, "weight_step", torch.tensor(q.step, dtype=torch.float32))
    elif "weight_step" in m._buffers:
        del m._buffers["weight_step"]
    if weights:
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


def sized_on_estimates(model: nn.Module, error_feedback: bool) -> bool:
    """Whether ``quantize_for_budget_`` sizes ``model`` on estimates (a large model: each exact
    size is seconds) rather than exactly at every step of its search."""
    layers = prunable_layers(model)
    columns = sum(_columns(m)[0] for m in _feedback_layers(model).values()) if error_feedback else 0
    return _sized_on_estimates(sum(m.weight.numel() for m in layers.values()), columns)


def _sized_on_estimates(weights: int, feedback_columns: int) -> bool:
    return weights > EXACT_SEARCH_WEIGHTS or feedback_columns > EXACT_SEARCH_COLUMNS


def coded_bytes(quants: dict[str, LayerQuant], taps: dict[str, int] | None = None) -> float:
    """Code length of quantized layers, of the levels actually chosen (with error feedback: fewer
    zeros and other histograms than the plain ECSQ that ``estimated_bytes`` runs). Order 0, as
    ``estimated_bytes`` counts it; with ``taps`` (each layer's kernel size), under the range
    coder's own contexts (``entropy.ideal_bits``: the previous tap's flag), whose exact bytes per
    estimated byte stay put from one slope to the next (CREPE full: order 0 drifted 1.2% between
    1.9 and 2.3 MB, a search's confirmation missed by that and took two passes more)."""
    total = 0.0
    for n, q in quants.items():
        counts = level_counts(q.index, q.mask, q.codebook.size).astype(np.float64)
        if taps is None:
            total += _order0_bytes(float(q.mask.size - q.mask.sum()), counts[:q.neg], counts[q.neg:])
            continue
        levels = int((counts > 0).sum())
        total += ideal_bits(q.index, q.mask, q.neg, q.codebook.size, taps[n]) / 8 + model_table_size(levels) \
            + 2 * levels + 12
    return total


def _order0_bytes(zeros: float, neg: np.ndarray, pos: np.ndarray) -> float:
    """Bytes of a layer's codes from its counts of zeros and of each negative and positive
    level: sign-or-zero, then the level within its sign, plus the levels and a header."""
    levels = int((neg > 0).sum() + (pos > 0).sum())
    return (code_length(np.array([zeros, neg.sum(), pos.sum()])) + code_length(neg) + code_length(pos)) / 8 \
        + 3 * levels + 12


def quantize_for_budget_(model: nn.Module, sensitivity: dict[str, float], budget: int, serialize,
                         step_scale: float | None = None, log=None, factors: dict[str, FeedbackFactor] | None = None,
                         trellis: bool = False, tolerance: float | None = None, aim: float | None = None,
                         coded_ratio: float | None = None, coded_fixed: int = 0, near: float | None = None,
                         reference: dict[str, np.ndarray] | None = None) -> dict:
    """ECSQ every layer of ``model`` in place at the slope whose file fits ``budget`` bytes.

    Args:
        model: pruned (or not) model; its current weights are the reference.
        sensitivity: per-layer Fisher sensitivity (``fisher_sensitivity``).
        budget: bytes.
        serialize: ``model -> bytes`` (the exact file), called once per bisection step.
        step_scale: grid step relative to the high-rate optimum. Default: 0.6 for plain ECSQ,
            1.7 with error feedback (``factors``), each measured best on SqueezeNet v1.0:
            fed-back errors make a coarser grid with fewer coded levels pay (350 kB, 2-fold
            ImageNet agreement: 83-84% at 0.6, 87.0% at 1.0, 88.3-88.4% at 1.7, 87.0% at 2.2;
            measured when error feedback's levels were the means of the values each took, not
            measured again on its grid); ``TRELLIS_STEP_SCALE`` on the trellis.
        factors: error feedback: ``feedback_factors`` of each layer's ``layer_hessians``
            (factored once by the caller: they depend on the inputs only, so the candidates of
            one budget and every slope of the search share them).
        trellis: quantize on the trellis codec's four-state trellis (``trellis.py``; no error
            feedback) instead of ECSQ.
        tolerance: models sized on estimates: stop at the first exact size within this fraction
            of ``budget``, over it or under (candidates compared before the one kept is fitted);
            None: the largest file that fits, within 0.5% where the search gets there (on a
            model sized on estimates, within ``CONFIRMED_FIT`` where a fit sized on the ratio
            is confirmed).
        aim: estimated bytes to aim at per byte of budget at first: the ``aim`` a search of the
            same kind of quantizer ended at (saves the exact sizings that learn it again); None:
            ``FEEDBACK_AIM`` with error feedback, else 1.
        coded_ratio, coded_fixed: on a model sized on estimates: sizes are ``coded_bytes`` times
            ``coded_ratio`` plus ``coded_fixed`` (what an earlier search measured) instead of a
            serialization each; None:
            the first file serialized measures it. A fit is serialized before it is taken; where
            the ratio was off, the search goes on with the ratio that file measured.
        near: a slope found before for this quantizer near this budget (the search starts there).
    Returns:
        ``{"lam", "bytes", "levels", "kept_weights", "aim", "coded_ratio", "coded_fixed", "fitted"}``:
        ``coded_ratio`` the exact coded size per ``coded_bytes`` of the last file serialized,
        ``coded_fixed`` its bytes that do not depend on the coding (``sqz.fixed_bytes``) (or the
        one given), ``fitted`` False where ``tolerance`` stopped the search short of what a
        search without it gives (over the budget, more than 0.5% under it, or not serialized).
    """
    if trellis and factors:
        raise ConfigError("the trellis quantizer does not take error feedback")
    if step_scale is None:
        step_scale = TRELLIS_STEP_SCALE if trellis else 1.7 if factors else 0.6
    if aim is None:
        aim = FEEDBACK_AIM if factors else 1.0
    sizer = _Sizer(model, sensitivity, serialize, step_scale, factors or {}, trellis, log, reference)
    judging = tolerance is not None and not sizer.exact
    if coded_ratio is not None:
        sizer.ratios.append(coded_ratio)
        sizer.fixed = coded_fixed
    try:
        if sizer.exact:
            (lam, size, quants), aim = _search_slope(sizer.size_of, sensitivity, budget), 1.0
        else:
            lam, size, quants, aim = _fit_on_estimates(sizer, sensitivity, budget, tolerance, aim, near, judging)
        quants = sizer.quants_of(quants)
    except ValueError:
        sizer.restore_()  # leave the model as it came
        raise
    install_(model, quants)
    return {"lam": lam, "bytes": size, "levels": {n: int(q.codebook.size) for n, q in quants.items()},
            "kept_weights": int(sum(q.mask.sum() for q in quants.values())), "aim": aim,
            "coded_ratio": sizer.ratios[-1] if sizer.ratios else None, "coded_fixed": sizer.fixed,
            "fitted": size <= budget and (not judging or (lam in sizer.serialized and size >= CONFIRMED_FIT * budget))}


class _Sizer:
    """The sizes ``quantize_for_budget_`` searches over: each slope quantized into the model and
    sized exactly (serialized), or, on a model sized on estimates, as ``coded_bytes`` times the
    exact bytes per order-0 byte of the last file serialized (``ratios``); ``estimate`` is the
    fast stand-in (plain ECSQ, order-0) that the search solves on."""

    def __init__(self, model, sensitivity, serialize, step_scale, factors, trellis, log, reference=None):
        self.model, self.sensitivity, self.serialize, self.step_scale = model, sensitivity, serialize, step_scale
        self.factors, self.trellis, self.log = factors, trellis, log
        self.weights, self.masks = model_weights_and_masks(model, reference)  # never written to
        # the coding buffers the model came with (each slope's install replaces them, never
        # writes into them)
        self.initial = {n: {k: m._buffers[k] for k in CODING_BUFFERS if k in m._buffers}
                        for n, m in prunable_layers(model).items()}
        self.exact = not _sized_on_estimates(sum(w.size for w in self.weights.values()),
                                             sum(f.columns for f in factors.values()))
        self.bins = {} if self.exact else {n: ValueBins(w[self.masks[n]]) for n, w in self.weights.items()
                                           if self.masks[n].sum() > BINNED_LAYER}
        release_memory()  # the binning's layer-sized temporaries
        self.layers = prunable_layers(model)
        self.shapes = {n: tuple(m.weight.shape) for n, m in self.layers.items()}
        # the trellis codes its layers in contexts of its own: order 0 stands in for them
        self.taps = None if trellis else {n: taps_of(shape) for n, shape in self.shapes.items()}
        self.ratios: list[float] = []
        self.serialized: dict[float, int] = {}
        self.fixed = 0  # the bytes of the last file serialized that are not codes
        self.on_ratio = not self.exact
        self.lean = sum(w.size for w in self.weights.values()) > LEAN_WEIGHTS
        self.current = None  # (slope, quants) of the last pass

    def measure(self, lam: float, quants) -> int:
        """The exact size of the model as it stands (quantized at ``lam``); the ratio it gives."""
        data = self.serialize(self.model)
        size = len(data)
        # biases, raw tensors and the header do not grow with the codes: a ratio over the whole
        # file moved 0.3% between CREPE full's 1.9 and 2.3 MB files (its 40 kB of batch norm and
        # biases scaled with the codes), over the codes alone 0.02%
        self.fixed = fixed_bytes(data)
        del data
        release_memory()  # the encoder's layer-sized temporaries, before the next pass allocates its own
        self.ratios.append((size - self.fixed) / coded_bytes(quants, self.taps))
        self.serialized[lam] = size
        if self.log:
            self.log(f"  slope {lam:.3g}: {size:,} bytes")
        return size

    def size_of(self, lam: float):
        tick()  # a quantization pass
        quants = self.quantize(lam)
        payload = _Slope(lam) if self.lean else quants
        if self.on_ratio and self.ratios:
            return int(coded_bytes(quants, self.taps) * self.ratios[-1]) + self.fixed, payload
        return self.measure(lam, quants), payload

    def quantize(self, lam: float) -> dict[str, LayerQuant]:
        """The layers quantized at ``lam``, their coding buffers installed in the model."""
        self.current = None  # held by the model alone: freed layer by layer as the pass replaces them
        if self.trellis:
            quants = quantize_layers_trellis(self.weights, self.masks, self.sensitivity, lam, self.step_scale,
                                             self.shapes)
            install_(self.model, quants, weights=False)
        else:
            quants = quantize_layers(self.weights, self.masks, self.sensitivity, lam, self.step_scale,
                                     factors=self.factors, bins=self.bins,
                                     each=self._install_layer)
        release_memory()
        self.current = (lam, quants)
        return quants

    def _install_layer(self, name: str, q: LayerQuant) -> None:
        _install_layer_(self.layers[name], q, weights=False)  # the last pass's arrays of this layer go
        if q.mask.size >= TRIMMED_LAYER:
            release_memory()

    def quants_of(self, payload) -> dict[str, LayerQuant]:
        """The quants a search's payload stands for: on a lean search (``LEAN_WEIGHTS``) only the
        last pass's are held, and an earlier slope is quantized again (the same quants: every
        quantizer is deterministic)."""
        if not isinstance(payload, _Slope):
            return payload
        if self.current is not None and self.current[0] == payload.lam:
            return self.current[1]
        if self.log:
            self.log(f"  slope {payload.lam:.3g} quantized again (a lean search holds the last pass only)")
        return self.quantize(payload.lam)

    def estimate(self, lam: float):
        if self.trellis:
            return estimated_bytes_trellis(self.weights, self.masks, self.sensitivity, lam, self.step_scale,
                                           self.shapes), None
        return estimated_bytes(self.weights, self.masks, self.sensitivity, lam, self.step_scale, self.bins), None

    def restore_(self) -> None:
        """The model's coding buffers as they came (its weights were never written)."""
        for n, m in prunable_layers(self.model).items():
            for k in CODING_BUFFERS:
                if k in self.initial[n]:
                    m._buffers[k] = self.initial[n][k]
                elif k in m._buffers:
                    del m._buffers[k]


@dataclass(frozen=True)
class _Slope:
    """A lean search's payload: the slope of a pass, not its quants (``_Sizer.quants_of``)."""
    lam: float


# Searches over more coded weights than this hold the quants of their last pass only, not those
# of the best fit besides (3 bytes a weight each: a 98M-weight model's 290 MB), and quantize the
# best again where a later pass missed (a pass more at times, against a third of the memory
# over the model's own).
LEAN_WEIGHTS = 50_000_000


def _fit_on_estimates(sizer: _Sizer, sensitivity, budget: int, tolerance, aim: float, near, judging: bool):
    """The corrected search on estimates, its fit confirmed by a serialization (a fit sized on the
    ratio whose file misses ``CONFIRMED_FIT`` is searched again on that file's ratio), every size
    exact where the ratio keeps missing. Returns (lam, bytes, quants, aim)."""
    log = sizer.log
    growth_prior = FEEDBACK_GROWTH if sizer.factors else 1.0
    for _ in range(CONFIRMATIONS + 1):
        lam, size, quants, aim = _corrected_search(sizer.size_of, sizer.estimate, sensitivity, budget, log,
                                                   tolerance=tolerance, aim=aim, near=near, floor=CONFIRMED_FIT,
                                                   growth_prior=growth_prior)
        if judging or lam in sizer.serialized:
            return lam, size, quants, aim
        quants = sizer.quants_of(quants)
        install_(sizer.model, quants, weights=False)
        size = sizer.measure(lam, quants)
        if CONFIRMED_FIT * budget <= size <= budget:
            return lam, size, quants, aim
        aim, near = aim * sizer.ratios[-2] / sizer.ratios[-1], lam  # the ratio was off: its own now
    sizer.on_ratio = False  # the ratio kept missing: every size exact
    return _corrected_search(sizer.size_of, sizer.estimate, sensitivity, budget, log, aim=aim, near=lam,
                             growth_prior=growth_prior)


# Fits sized on the ratio that a serialization may find off, and searched again, before every
# size of the search is serialized instead.
CONFIRMATIONS = 2
# A fit sized on the ratio is taken where its file comes within this fraction of the budget (the
# ratio drifts a few tenths of a percent between slopes: CREPE full's 0.3% from one slope to the
# next cost a quantization pass at 0.995 to gain 0.4% of the bytes).
CONFIRMED_FIT = 0.99
# Error feedback files come out smaller than the estimate (ECSQ without it) says: the estimated
# bytes per byte of budget that hit it were 1.09 on CREPE full, 1.04-1.08 on CREPE tiny and
# 1.02-1.09 on our CIFAR-10 model. A first search aims this high.
FEEDBACK_AIM = 1.05
# ... and they grow slower than it: 0.85 times as fast (log-log) between CREPE full's first two
# tries at 2.3 MB, whose first correction rescaled by the whole miss, landed 3% short and cost a
# pass more. The first correction with error feedback takes this growth; the secant the later ones.
FEEDBACK_GROWTH = 0.85


# The slope search widens its coarse end this many times by this factor, up to pruning
# everything, before giving up.
WIDENINGS, WIDENING = 4, 1e3


def _slope_range(sensitivity: dict[str, float]) -> tuple[float, float]:
    """Slopes bracketing the useful range: lam * 1e-6 / s is a squared step around 1e-6 ... 1e2
    times the largest sensitivity, from near-lossless to a handful of levels per layer."""
    s_max = max(sensitivity.values())
    return 1e-12 * s_max, 1e-2 * s_max


def _search_slope(size_of, sensitivity: dict[str, float], budget: float):
    """``search_budget`` over the useful range of slopes, widened up to pruning everything."""
    lam_lo, lam_hi = _slope_range(sensitivity)
    for _ in range(WIDENINGS):
        try:
            return search_budget(size_of, lam_lo, lam_hi, budget)
        except ValueError:
            lam_hi *= WIDENING
    raise ConfigError(f"cannot fit {budget:,} bytes: even with every weight pruned the file is larger")


def _corrected_search(size_of, estimate, sensitivity: dict[str, float], budget: int, log, tries: int = 6,
                      refine: int = 4, tolerance: float | None = None, aim: float = 1.0,
                      near: float | None = None, floor: float = 0.995, growth_prior: float = 1.0):
    """Search on the estimate for a target, size the slope found exactly, correct the target by
    how far the estimate was off, and repeat: the largest exact fit from ``floor * budget`` up
    (or the largest of ``tries``). The first correction rescales the target by the miss over
    ``growth_prior``; later ones follow the secant through the last two (target, exact size)
    pairs (an error-feedback file grows about two thirds as fast as its estimate, so rescaling
    alone closed in a third of the gap a step). Where every try overshoots, the slope is raised 10% at a time on exact
    sizes until the file fits (coarser always fits sooner or later). A fit still short of that
    is refined by up to ``refine`` exact bisection steps between it and the finest slope that
    overshot (a 22M-weight model once stopped at 1.66 MB of 2.3).

    With ``tolerance``, the first exact size within that fraction of ``budget`` either side is
    taken instead. The first target is ``aim * budget``, searched from ``near`` (a slope);
    ``growth_prior`` is the first correction's prior on the growth the secant measures later
    (``FEEDBACK_GROWTH`` with error feedback).
    Returns (lam, bytes, payload, aim): ``aim`` the target per byte of budget that the last
    exact size says would have hit it.
    """
    target, best, lam, size = aim * budget, None, near, None
    goal = budget if tolerance is not None else 0.5 * (1 + floor) * budget  # the middle of the window
    over = None  # the largest slope seen to overshoot (larger slopes make smaller files)
    seen = []  # (log target, log exact size)
    for attempt in range(tries):
        lam = _solve_slope(estimate, sensitivity, target, near=lam)
        size, quants = size_of(lam)
        aim = target / size
        seen.append((math.log(target), math.log(size)))
        if log:
            log(f"  estimated target {target:,.0f}: slope {lam:.3g}, exact {size:,} bytes")
        if tolerance is not None and abs(size - budget) <= tolerance * budget:
            return lam, size, quants, aim  # near enough to compare
        if size <= budget and (best is None or size > best[1]):
            best = (lam, size, quants)
        elif size > budget:
            over = lam if over is None else max(over, lam)
        if best is not None and best[1] >= floor * budget:
            return (*best, aim)
        growth = _secant_growth(seen, prior=growth_prior)
        # overshooting: aim lower by a margin that grows with each miss
        miss = math.log(goal * (1.0 if size <= budget else 0.998 ** (attempt + 1)) / size)
        target *= math.exp(miss / growth)
    while best is None and lam < 1e6 * max(sensitivity.values()):
        over = lam
        lam *= 1.1
        size, quants = size_of(lam)
        if size <= budget:
            best = (lam, size, quants)
    if best is None:
        raise ConfigError(f"cannot fit {budget:,} bytes: the coarsest slope tried gives {size:,} bytes")
    for _ in range(refine if over is not None and over < best[0] else 0):
        if best[1] >= floor * budget:
            break
        lam = math.sqrt(over * best[0])
        size, quants = size_of(lam)
        if log:
            log(f"  refining: slope {lam:.3g}, exact {size:,} bytes")
        if size <= budget:
            best = (lam, size, quants)
        else:
            over = lam
    return (*best, aim)


def _secant_growth(seen: list[tuple[float, float]], prior: float = 1.0) -> float:
    """How fast the exact size grows with the estimated target (log-log) between the last two
    tries; ``prior`` with one try; 1 (rescaling) where the two give a slope outside [0.25, 4]."""
    if len(seen) < 2:
        return prior
    (t0, s0), (t1, s1) = seen[-2], seen[-1]
    if abs(t1 - t0) < 1e-9:
        return 1.0
    growth = (s1 - s0) / (t1 - t0)
    return growth if 0.25 <= growth <= 4.0 else 1.0


def _solve_slope(estimate, sensitivity: dict[str, float], target: float, rel: float = 2e-3, steps: int = 40,
                 near: float | None = None) -> float:
    """The slope whose estimated size is ``target`` (within ``rel``, from under where it can):
    false position on log size against log slope (Illinois), a handful of estimates where
    bisection took fifteen (a trellis estimate of a 22M-weight model is seconds). ``near``: a
    slope found for a target close to this one; the search brackets it first."""
    a, b = (math.log(lam) for lam in _slope_range(sensitivity))

    def f(log_lam):
        return math.log(max(estimate(math.exp(log_lam))[0], 1.0) / target)

    fa = fb = None
    if near is not None:  # a narrow bracket around the slope found before, if it brackets
        fa, fb = f(math.log(near) - 0.5), f(math.log(near) + 0.5)
        if fa > 0 >= fb:
            a, b = math.log(near) - 0.5, math.log(near) + 0.5
        else:
            fa = fb = None
    if fa is None:
        fa, fb = f(a), f(b)
    if fa <= 0:  # even the finest slope fits
        return math.exp(a)
    for _ in range(WIDENINGS):
        if fb <= 0:
            break
        a, fa = b, fb
        b += math.log(WIDENING)
        fb = f(b)
    if fb > 0:
        raise ConfigError(f"cannot fit {target:,.0f} estimated bytes: even with every weight pruned it is larger")
    side, fc = 0, fb
    for _ in range(steps):
        if -rel <= fc <= 0 or b - a < 1e-6:
            break
        c = (a * fb - b * fa) / (fb - fa)
        fc = f(c)
        if fc > 0:  # too big: the root is coarser
            a, fa = c, fc
            if side == -1:  # the same end twice: halve the other's weight (Illinois)
                fb /= 2
            side = -1
        else:
            b, fb = c, fc
            if side == 1:
                fa /= 2
            side = 1
    return math.exp(b)
