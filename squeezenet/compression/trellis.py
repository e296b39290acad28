"""Dependent (trellis-coded) quantization of layers for the trellis codec (``weights/codecs/trellis.py``).

For each run of a layer's weights (a kernel's taps, a linear row), a Viterbi search over the
codec's four-state trellis picks the integers ``k`` that minimise ``squared error + lam * bits``,
the bits from the codec's own contexts (flag and magnitude per quantizer) as measured on the
previous pass. Runs are searched side by side, so a step of the search is a few vector
operations over all runs of a layer. This is MPEG NNC's dependent quantization (the encoder
side of ISO/IEC 15938-17's DQ); without error feedback, it is NNC's recipe.
"""
from __future__ import annotations

import numpy as np

from ..weights.codecs.trellis import (MAX_MAGNITUDE, N_CONTEXTS, NEXT, flags_of, integers, reconstruct, run_length,
                                      symbols, weights_of)
from ..weights.entropy import code_length
from .levels import LayerQuant, as_f64, layer_step

CHUNK_ROWS = 1 << 15   # runs searched at once (memory: ~3 bytes per run, position and state)


def _bits(counts: np.ndarray) -> np.ndarray:
    c = counts.astype(np.float64) + 0.5
    return -np.log2(c / c.sum(-1, keepdims=True))


def _candidates(w: np.ndarray, step: float, q: int) -> np.ndarray:
    """Integers (3, rows) worth trying under quantizer ``q``: the two nearest levels, and zero."""
    x = w / step
    if q == 0:
        base = np.floor(x / 2).astype(np.int64)
        ks = [base, base + 1]
    else:
        lo = 2 * np.floor((x - 1) / 2).astype(np.int64) + 1  # the odd multiple at or below x
        ks = [(j + np.sign(j)) // 2 for j in (lo, lo + 2)]
    ks.append(np.zeros_like(ks[0]))
    return np.clip(np.stack(ks), -MAX_MAGNITUDE, MAX_MAGNITUDE)


def _viterbi(w: np.ndarray, keep: np.ndarray, step: float, lam: float, flag_bits: np.ndarray,
             mag_bits: np.ndarray) -> np.ndarray:
    """Best integers (rows, run) of one chunk of runs under the rate model given."""
    rows, run = w.shape
    cost = np.full((rows, 4), np.inf)
    cost[:, 0] = 0.0
    back = np.zeros((run, 4, rows), np.int8)      # which of the 12 (state, candidate) pairs won
    back_k = np.zeros((run, 4, rows), np.int16)
    src_state = np.repeat(np.arange(4), 3)
    for t in range(run):
        wt = w[:, t]
        pruned = ~keep[:, t]
        totals, ks, nexts = [], [], []
        for q in (0, 1):
            k = _candidates(wt, step, q)
            err = (wt - reconstruct(k, q) * step) ** 2
            flag = flags_of(k)
            mag = np.minimum(np.abs(k) - 1, mag_bits.shape[1] - 1)
            rate = flag_bits[q][flag] + np.where(k == 0, 0.0, mag_bits[q][np.maximum(mag, 0)])
            d = err + lam * rate + np.where(pruned & (k != 0), np.inf, 0.0)
            for s in (2 * q, 2 * q + 1):
                totals.append(cost[:, s] + d)
                ks.append(k)
                nexts.append(NEXT[s][k & 1])
        totals, ks, nexts = np.concatenate(totals), np.concatenate(ks), np.concatenate(nexts)  # (12, rows)
        for n in range(4):
            masked = np.where(nexts == n, totals, np.inf)
            best = masked.argmin(0)
            cost[:, n] = masked[best, np.arange(rows)]
            back[t, n] = best
            back_k[t, n] = ks[best, np.arange(rows)]
    k = np.zeros((rows, run), np.int64)
    state = cost.argmin(1)
    r = np.arange(rows)
    for t in range(run - 1, -1, -1):
        k[:, t] = back_k[t, state, r]
        state = src_state[back[t, state, r]]
    return k


def _path_quantizers(k: np.ndarray) -> np.ndarray:
    q = np.zeros(k.shape, np.int8)
    state = np.zeros(k.shape[0], np.int8)
    for t in range(k.shape[1]):
        q[:, t] = state >> 1
        state = NEXT[state, k[:, t] & 1]
    return q


def trellis_layer(weight: np.ndarray, shape, step: float, lam: float, keep: np.ndarray | None = None,
                  passes: int = 2) -> np.ndarray:
    """Multiples ``j`` of ``step`` (flat int64, the codec's reconstruction ``weights_of(step, j)``)
    for a layer's flat ``weight``; ``keep`` False forces a zero. ``passes`` Viterbi passes, each
    with the rate model measured on the previous one (the first: rounding to the quantizers)."""
    run = run_length(shape)
    w = np.asarray(weight, np.float64).reshape(-1, run)
    keep = np.ones(w.shape, bool) if keep is None else np.asarray(keep, bool).reshape(-1, run)
    k0 = np.clip(np.rint(w / (2 * step)), -MAX_MAGNITUDE, MAX_MAGNITUDE).astype(np.int64) * keep
    q = np.zeros(w.shape, np.int8)
    k = k0
    for _ in range(max(passes, 1)):
        flag_bits, mag_bits = _rate_model(k, q)
        k = np.concatenate([_viterbi(w[i:i + CHUNK_ROWS], keep[i:i + CHUNK_ROWS], step, lam, flag_bits, mag_bits)
                            for i in range(0, w.shape[0], CHUNK_ROWS)])
        q = _path_quantizers(k)
    return reconstruct(k, q.astype(np.int64)).reshape(-1)


def _rate_model(k: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bits of each flag and magnitude per quantizer, from the counts of a previous choice."""
    flags = flags_of(k)
    fc = np.zeros((2, 3))
    np.add.at(fc, (q.reshape(-1), flags.reshape(-1)), 1)
    size = int(np.abs(k).max(initial=1)) + 2
    mc = np.zeros((2, size))
    nz = k != 0
    np.add.at(mc, (q[nz], np.abs(k[nz]) - 1), 1)
    return _bits(fc), _bits(mc)


def quantize_layers_trellis(weights: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                            sensitivity: dict[str, float], lam: float, step_scale: float,
                            shapes: dict[str, tuple]) -> dict[str, LayerQuant]:
    """Every layer on its trellis at the global slope ``lam`` (each layer's step from its own
    slope ``lam / s`` as in ``rdquant.quantize_layers``)."""
    out = {}
    for n, w in weights.items():
        w = as_f64(w)
        lam_l = lam / sensitivity[n]
        step = float(np.float32(layer_step(w, masks[n], lam_l, step_scale)))
        j = trellis_layer(w, shapes[n], step, lam_l, masks[n])
        out[n] = _layer_quant_of(j, step)
    return out


def _layer_quant_of(j: np.ndarray, step: float) -> LayerQuant:
    values = weights_of(step, j)
    mask = j != 0
    codebook, inverse = np.unique(values[mask], return_inverse=True)
    index = np.zeros(j.size, np.int64)
    index[mask] = inverse
    return LayerQuant(codebook.astype(np.float32), index, mask, step)


def estimated_bytes_trellis(weights: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                            sensitivity: dict[str, float], lam: float, step_scale: float, shapes: dict[str, tuple],
                            sample_runs: int = 4096) -> float:
    """Bytes of the layers' codes at slope ``lam`` from the ideal code length of up to
    ``sample_runs`` evenly spaced runs a layer, scaled to the layer (no tables, no headers)."""
    total = 0.0
    for n, w in weights.items():
        w = as_f64(w)
        run = run_length(shapes[n])
        rows = w.size // run
        pick = np.unique(np.linspace(0, rows - 1, min(rows, sample_runs)).astype(np.int64))
        lam_l = lam / sensitivity[n]
        step = layer_step(w, masks[n], lam_l, step_scale)
        sample = w.reshape(rows, run)[pick]
        j = trellis_layer(sample, (pick.size, run), step, lam_l, masks[n].reshape(rows, run)[pick]).reshape(-1, run)
        total += ideal_bits(j) / 8 * rows / pick.size + 12
    return total


def ideal_bits(j: np.ndarray) -> float:
    """Empirical code length (bits) of runs of multiples ``j`` under the codec's contexts."""
    k, q, _ = integers(j)
    flags, ctx, mags = symbols(k, q)
    fc = np.zeros((N_CONTEXTS, 3))
    np.add.at(fc, (ctx.reshape(-1), flags.reshape(-1)), 1)
    nz = flags != 0
    return sum(code_length(counts) for counts in list(fc) + [np.bincount(mags[nz & (q == quant)]) for quant in (0, 1)])
