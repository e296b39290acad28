"""Compiled inner loops of the size-budget path (numba), each beside the plain torch / numpy
reference it replaces and is tested against.

Error feedback quantizes a layer's columns one after another; in torch each column was about
twenty small tensor operations, 200 us of dispatch a column: seven seconds a quantization pass
on an 11.7M-weight ResNet-18, most of a size budget's time. Compiled, a column is the arithmetic
alone, and the independent rows of a block run on every core.

Compilation takes a few seconds the first time in an environment and is cached on disk after
(numba's ``cache=True``: beside this file, or a user cache directory where that is read-only).
"""
from __future__ import annotations

import numpy as np
import torch

try:  # pragma: no cover - exercised where numba is missing
    import numba
    from numba import njit, prange
except ImportError:  # the torch reference loops stand in (several times slower)
    numba = None

# Rows of one block a compiled task takes (a task: one block, these many output rows).
ROWS_PER_TASK = 32


def available() -> bool:
    """Whether the compiled kernels run (numba is installed)."""
    return numba is not None


if numba is not None:
    @njit(parallel=True, cache=True, nogil=True)
    def _feedback_columns(w, keep, u, off, diag, weight, rate, zero_rate, qmin, top, delta, c0, c1, q, err):
        """Columns ``c0:c1`` of every block of ``w`` (G, B, out), quantized in order with each
        column's error fed back into the later columns of ``c0:c1`` (``_feedback_blocks``).
        ``u[g, c - off, k - off]`` is the factor's entry (c, k): ``off`` 0 for a whole factor,
        ``c0`` for its row panel (``Panels``)."""
        g_count, _, out = w.shape
        chunks = (out + ROWS_PER_TASK - 1) // ROWS_PER_TASK
        for task in prange(g_count * chunks):
            g = task // chunks
            o0 = (task % chunks) * ROWS_PER_TASK
            o1 = min(o0 + ROWS_PER_TASK, out)
            for c in range(c0, c1):
                wc = weight[g, c]
                dc = diag[g, c]
                for o in range(o0, o1):
                    col = w[g, c, o]
                    lo = np.floor(col / delta)
                    lo = min(max(lo, qmin), top)
                    base = lo * delta
                    ilo = int(lo)
                    cost_lo = (col - base) ** 2 * wc + rate[ilo - qmin]
                    cost_hi = (col - base - delta) ** 2 * wc + rate[ilo + 1 - qmin]
                    cost_zero = col * col * wc + zero_rate
                    pick = ilo + 1 if cost_hi < cost_lo else ilo
                    if cost_zero < min(cost_lo, cost_hi) or not keep[g, c, o]:
                        pick = 0
                    q[g, c, o] = pick
                    err[g, c - c0, o] = (col - pick * delta) / dc
                # the column's errors into the later columns, the rows innermost: contiguous and
                # vectorized (a row's later columns innermost strode a row apart; 64 blocks of
                # 1,024 columns x 128 rows: 0.52 -> 0.46 s for the whole of ``feedback_blocks``);
                # each weight takes the same updates in the same order, so the same bits
                for k in range(c + 1, c1):
                    factor = u[g, c - off, k - off]
                    for o in range(o0, o1):
                        w[g, k, o] -= factor * err[g, c - c0, o]


if numba is not None:
    @njit(cache=True, nogil=True)
    def _ecsq_rounds(kept, counts, delta, lam, iters, n_pruned, qmin, span):
        """``ecsq_grid``'s assignment / centroid / probability rounds, one pass over the values each."""
        levels = np.arange(qmin, qmin + span).astype(np.float64) * delta
        q = np.empty(kept.size, np.int64)
        for i in range(kept.size):
            q[i] = int(np.rint(kept[i] / delta))
        bits = np.zeros(span)
        hist = np.zeros(span)
        sums = np.zeros(span)
        n = np.zeros(span)
        zero = -qmin
        for _ in range(max(iters, 1)):
            hist[:] = 0.0
            for i in range(kept.size):
                hist[q[i] - qmin] += counts[i]
            hist[zero] += n_pruned
            total = 0.0
            for j in range(span):
                total += hist[j]
            for j in range(span):
                bits[j] = -np.log2((hist[j] + 0.5) / (total + 0.5 * span))
            sums[:] = 0.0
            n[:] = 0.0
            for i in range(kept.size):
                v = kept[i]
                lo = int(np.floor(v / delta))
                best = lo
                cost = (v - levels[lo - qmin]) ** 2 + lam * bits[lo - qmin]
                c_hi = (v - levels[lo + 1 - qmin]) ** 2 + lam * bits[lo + 1 - qmin]
                if c_hi < cost:
                    best, cost = lo + 1, c_hi
                if (v - levels[zero]) ** 2 + lam * bits[zero] < cost:
                    best = 0
                q[i] = best
                sums[best - qmin] += v * counts[i]
                n[best - qmin] += counts[i]
            for j in range(span):
                if n[j] > 0:
                    levels[j] = sums[j] / max(n[j], 1.0)
            levels[zero] = 0.0
        return q, levels, bits


def ecsq_grid(kept: np.ndarray, n_pruned: int, delta: float, lam: float, iters: int,
              counts: np.ndarray | None = None):
    """ECSQ on the grid (``rdquant._ecsq_grid``): (grid index per kept value, level per grid
    index, lowest index, bits per index); compiled where numba is installed."""
    kept = np.ascontiguousarray(kept, np.float64)
    if numba is None or not kept.size:
        return ecsq_grid_reference(kept, n_pruned, delta, lam, iters, counts)
    lo = np.floor(kept / delta).astype(np.int64)
    qmin, qmax = min(int(lo.min()), 0), max(int(lo.max()) + 1, 0)  # the two grid neighbours, and zero
    weights = np.ones(kept.size) if counts is None else np.ascontiguousarray(counts, np.float64)
    q, levels, bits = _ecsq_rounds(kept, weights, float(delta), float(lam), int(iters), float(n_pruned), qmin,
                                   qmax - qmin + 1)
    return q, levels, qmin, bits


def ecsq_grid_reference(kept, n_pruned, delta, lam, iters, counts=None):
    """``ecsq_grid`` in numpy, all values at once each round."""
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


def feedback_blocks(w: np.ndarray, mask: np.ndarray, u: np.ndarray, scale: float, delta: float, lam: float,
                    qmin: int, bits: np.ndarray, block: int = 32) -> np.ndarray:
    """GPTQ over the columns of ``G`` blocks of equal width: ``w`` and ``mask`` (G, B, out),
    ``u`` (G, B, B) the upper factors of the blocks' damped inverse second moments. Returns the
    grid index of each weight (G, B, out). Compiled where numba is installed, else the torch loop
    (``feedback_blocks_reference``); the two agree up to float rounding."""
    packed = isinstance(u, Panels) and u.rows == block
    if numba is None or (isinstance(u, Panels) and not packed):
        return feedback_blocks_reference(w, mask, u, scale, delta, lam, qmin, bits, block)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    w = np.array(w, np.float64, order="C")  # a copy: the feedback writes into it
    keep = np.ascontiguousarray(mask, bool)
    if not packed:
        # float32 factors (models sized on estimates) are read as they are: a float64 copy of a
        # 22M-weight model's largest layer's was 512 MB of fresh memory every pass
        u = np.ascontiguousarray(u, u.dtype if u.dtype in (np.float32, np.float64) else np.float64)
    diag = (u.diag if packed else np.diagonal(u, axis1=1, axis2=2)).astype(np.float64)  # (G, B)
    weight = 1.0 / (diag * diag * scale)                                       # output error per squared error
    rate = lam * np.asarray(bits, np.float64)
    zero_rate = float(rate[-qmin])
    top = qmin + bits.size - 2
    g_count, d, out = w.shape
    q = np.zeros(w.shape, np.int16)  # grid indices: at most ~2,000 a side (``levels.layer_step``)
    err = np.empty((g_count, block, out), np.float64)
    w_t = torch.from_numpy(w)
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        # this block's rows of the factor from the diagonal on, and where column ``b0`` is in them
        panel, off = (u.panels[b0 // block], b0) if packed else (u, 0)
        _feedback_columns(w, keep, panel, off, diag, weight, rate, zero_rate, qmin, top, delta, b0, b1, q, err)
        if b1 < d:  # the block's errors into every later column at once: a batched product
            e = torch.from_numpy(err[:, :b1 - b0])
            rows = torch.from_numpy(panel)[:, b0 - off:b1 - off, b1 - off:].double()  # a view where float64
            w_t[:, b1:].baddbmm_(rows.transpose(1, 2), e, alpha=-1.0)  # in place: no temporary
    return q


class Panels:
    """The upper triangular factors ``u`` (G, B, B) of blocks of one width, kept as their row
    panels from the diagonal on: ``panels[k]`` is ``u[:, k*rows:(k+1)*rows, k*rows:]``. Half the
    memory of ``u`` (the zeros under the diagonal are left out: a 98M-weight language model's
    factors, held through its whole search, 0.48 -> 0.25 GB), and what ``feedback_blocks`` reads
    of ``u`` in the order it reads it, ``rows`` columns at a time."""

    def __init__(self, u: np.ndarray, rows: int) -> None:
        self.shape, self.dtype, self.rows = tuple(u.shape), u.dtype, rows
        self.diag = np.diagonal(u, axis1=1, axis2=2).copy()
        # copies, never views (the first panel of one block is contiguous): a view would hold all of u
        self.panels = [u[:, k:k + rows, k:].copy() for k in range(0, u.shape[1], rows)]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.panels) + self.diag.nbytes

    def full(self) -> np.ndarray:
        """``u`` itself (G, B, B)."""
        u = np.zeros(self.shape, self.dtype)
        for k, p in zip(range(0, self.shape[1], self.rows), self.panels):
            u[:, k:k + self.rows, k:] = p
        return u


@torch.no_grad()
def feedback_blocks_reference(w, mask, u, scale, delta, lam, qmin, bits, block) -> np.ndarray:
    """``feedback_blocks`` in torch, a column at a time for every block and row at once: the
    reference the compiled kernel is tested against, and the path without numba."""
    w = torch.from_numpy(np.array(w, np.float64, order="C"))
    keep = torch.from_numpy(np.ascontiguousarray(mask, bool))
    u = torch.from_numpy(np.asarray(u.full() if isinstance(u, Panels) else u, np.float64))
    d = w.shape[1]
    rate = torch.from_numpy(lam * np.asarray(bits, np.float64))
    zero_rate = float(rate[-qmin])
    top = qmin + bits.size - 2
    q = torch.zeros(w.shape, dtype=torch.int64)
    diag = torch.diagonal(u, dim1=1, dim2=2)              # (G, B)
    weight = (1.0 / (diag * diag * scale)).unsqueeze(2)   # output error per squared weight error
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        wb = w[:, b0:b1].clone()
        err = torch.empty(wb.shape, dtype=torch.float64)
        for j in range(b1 - b0):
            c = b0 + j
            col = wb[:, j]
            lo = torch.floor(col / delta).clamp_(qmin, top).long()
            base = lo.double() * delta
            wc = weight[:, c]
            cost_lo = (col - base).square_().mul_(wc).add_(rate[lo - qmin])
            cost_hi = (col - base - delta).square_().mul_(wc).add_(rate[lo + 1 - qmin])
            cost_zero = col.square().mul_(wc).add_(zero_rate)
            pick = torch.where(cost_hi < cost_lo, lo + 1, lo)
            pick.masked_fill_((cost_zero < torch.minimum(cost_lo, cost_hi)) | ~keep[:, c], 0)
            q[:, c] = pick
            e = (col - pick.double() * delta) / diag[:, c, None]
            err[:, j] = e
            if j + 1 < b1 - b0:
                wb[:, j + 1:] -= u[:, c, c + 1:b1, None] * e.unsqueeze(1)
        if b1 < d:
            w[:, b1:] -= torch.bmm(u[:, b0:b1, b1:].transpose(1, 2), err)
    return q.numpy().astype(np.int16)


if numba is not None:
    @njit(cache=True, nogil=True)
    def _present(q, qmin, span):
        present = np.zeros(span, np.bool_)
        for i in range(q.size):
            if q.flat[i] != 0:
                present[q.flat[i] - qmin] = True
        return present

    @njit(cache=True, nogil=True)
    def _scatter_ranks(q, rank_of, index, kept, col0):
        """Blocks' grid indices ``q`` (G, B, out) into a layer's index and kept mask (out, D)
        from column ``col0``: the rank of each nonzero grid index among the levels used."""
        g_count, width, out = q.shape
        for o in range(out):
            for g in range(g_count):
                for c in range(width):
                    v = q[g, c, o]
                    col = col0 + g * width + c
                    if v != 0:
                        index[o, col] = rank_of[v]
                        kept[o, col] = True


def used_levels(parts: list[np.ndarray], qmin: int, span: int) -> np.ndarray:
    """Which grid indices (offset by ``qmin``) the blocks' nonzero grid indices use."""
    present = np.zeros(span, bool)
    for q in parts:
        present |= _present(q, qmin, span) if numba is not None else np.bincount(
            (q[q != 0].astype(np.int64) - qmin), minlength=span).astype(bool)
    return present


def scatter_ranks(parts: list[tuple[int, np.ndarray]], rank_of: np.ndarray, shape: tuple[int, int]):
    """(index int16, kept mask) of a layer (out, D) from its blocks' grid indices ``(col0, q)``,
    ``rank_of`` mapping a grid index (offset so that index 0 is 0, negative ones wrapping) to
    its codebook rank."""
    index = np.zeros(shape, np.int16)
    kept = np.zeros(shape, bool)
    for col0, q in parts:
        if numba is not None:
            _scatter_ranks(q, rank_of, index, kept, col0)
        else:
            g, width, out = q.shape
            full = q.transpose(2, 0, 1).reshape(out, g * width)
            nz = full != 0
            index[:, col0:col0 + g * width][nz] = rank_of[full[nz]]
            kept[:, col0:col0 + g * width] = nz
    return index, kept
