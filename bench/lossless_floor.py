"""How small can a lossless re-encoding of the published Deep Compression SqueezeNet get?

Prints, per part of a ``.sqz`` version 2 file, the bytes our lossless re-encoding spends today
and an estimate of what the best models we measured would spend (ideal code lengths, before
the cost of any extra table they need), so the 520,000-byte target of issue 13 can be judged
against the data rather than against effort::

    python bench/lossless_floor.py [--net ../shared/data/squeezenet-deep-compression/compressed_SqueezeNet.net]

Estimates (all on the published 8-bit codes, weights identical):

* weight codes: the format's own models (flags under the previous tap, one rank histogram a
  sign) as ideal code lengths; then the best of the richer flag contexts we measured per layer
  (left and upper taps of 3x3 kernels; a 4-class split of input channels by density or by share
  of negative weights; 4-16 classes of output filter by density, alone or crossed with input
  channel classes; each with its side information), and the best rank context (4 or 8 classes of
  input channel or of output filter by mean magnitude, side information and one more
  1-byte-per-level table a class counted; the previous tap's flag; the number of kept taps in a
  3x3 kernel).
* codebooks: the sorted levels' key deltas (the order-preserving integer view of float32) cost
  their bits below the leading one plus the entropy of the leading bit's position under one
  histogram for the model: that is all a delta coder without a model of the mantissa can do.
* biases: 23 mantissa bits each plus the entropy of sign and exponent under one histogram.
* model tables: the rank histograms described by every 4th rank (log-linear in between), a
  byte each, plus the cross-entropy this costs the ranks.
* header: as it is (already zlib-compressed).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from squeezenet.weights import entropy
from squeezenet.weights.caffe_net import read_caffe_net

ROOT = Path(__file__).resolve().parents[1]
NET = ROOT.parent / "shared/data/squeezenet-deep-compression/compressed_SqueezeNet.net"


def _bytes(counts: np.ndarray) -> float:
    """Ideal code length in bytes of symbols with these counts under their own histogram."""
    c = np.asarray(counts, np.float64)
    c = c[c > 0]
    return float(-(c * np.log2(c / c.sum())).sum() / 8) if c.size else 0.0


def conditional_bytes(symbols: np.ndarray, context: np.ndarray) -> float:
    """Ideal bytes of ``symbols`` with one histogram per context value."""
    order = np.argsort(context, kind="stable")
    s, c = symbols[order], context[order]
    cuts = np.flatnonzero(np.diff(c)) + 1
    return sum(_bytes(np.bincount(part)) for part in np.split(s, cuts))


def classes(x: np.ndarray, n: int) -> np.ndarray:
    """Quantile classes 0..n-1 of ``x``."""
    return np.searchsorted(np.quantile(x, np.linspace(0, 1, n + 1)[1:-1]), x, side="right")


def layer_codes(layer) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Flags (out, in, taps): 0 pruned, 1 negative, 2 positive; magnitude rank per position;
    sorted nonzero levels; ``neg``; ``taps``."""
    out, cin = layer.shape[:2]
    taps = int(np.prod(layer.shape[2:]))
    levels = np.unique(layer.codebook[1:])
    neg = int((levels < 0).sum())
    value = layer.codebook[layer.indices].reshape(out, cin, taps)
    where = np.searchsorted(levels, value)
    flags = np.where(value == 0, 0, np.where(value < 0, 1, 2))
    rank = np.where(value < 0, neg - 1 - where, where - neg)
    return flags, rank, levels, neg, taps


def previous_tap(flags: np.ndarray) -> np.ndarray:
    """The flag of the previous tap in each kernel (3 at the first tap): the format's flag context."""
    prev = np.full(flags.shape, 3)
    prev[:, :, 1:] = flags[:, :, :-1]
    return prev


def flag_floor(flags: np.ndarray, taps: int) -> tuple[float, float]:
    """(bytes under the format's previous-tap context, best measured richer context)."""
    cin = flags.shape[1]
    prev = previous_tap(flags)
    f = flags.ravel()
    now = conditional_bytes(f, prev.ravel())
    best = now
    if taps == 9:  # left and upper neighbours in the 3x3 kernel (3 where there is none)
        left = np.full(flags.shape, 3)
        up = np.full(flags.shape, 3)
        for t in range(9):
            if t % 3:
                left[:, :, t] = flags[:, :, t - 1]
            if t >= 3:
                up[:, :, t] = flags[:, :, t - 3]
        best = min(best, conditional_bytes(f, (left * 4 + up).ravel()))
    kept = (flags > 0).sum((0, 2))
    negative = (flags == 1).sum((0, 2)) / np.maximum(1, kept)
    side = cin * 2 / 8  # 2 bits an input channel for its class
    for feature in (kept, negative):
        cls = np.broadcast_to(classes(feature, 4)[None, :, None], flags.shape)
        best = min(best, conditional_bytes(f, (prev * 4 + cls).ravel()) + side)
    # output filters by density (4, 8 or 16 classes), alone and crossed with 2 or 4 input-channel classes
    out = flags.shape[0]
    kept_out = (flags > 0).sum((1, 2))
    cols = {m: np.broadcast_to(classes(kept, m)[None, :, None], flags.shape) for m in (2, 4)}
    for n in (4, 8, 16):
        row = np.broadcast_to(classes(kept_out, n)[:, None, None], flags.shape)
        best = min(best, conditional_bytes(f, (prev * n + row).ravel()) + out * np.log2(n) / 8)
        for m, col in cols.items():
            best = min(best, conditional_bytes(f, ((prev * n + row) * m + col).ravel())
                       + (out * np.log2(n) + cin * np.log2(m)) / 8)
    return now, best


def rank_floor(flags: np.ndarray, rank: np.ndarray, k: int) -> tuple[float, float]:
    """(bytes under one histogram a sign, best measured input-channel class context)."""
    kept = flags > 0
    sign, r = (flags[kept] == 1).astype(np.int64), rank[kept]
    now = conditional_bytes(r, sign)
    best = now
    per_channel = np.where(kept, rank, 0).sum((0, 2)) / np.maximum(1, kept.sum((0, 2)))
    per_filter = np.where(kept, rank, 0).sum((1, 2)) / np.maximum(1, kept.sum((1, 2)))
    for n in (4, 8):
        for axis, feature in ((1, per_channel), (0, per_filter)):
            shape = [1, 1, 1]
            shape[axis] = -1
            cls = np.broadcast_to(classes(feature, n).reshape(shape), flags.shape)[kept]
            extra = feature.size * np.log2(n) / 8 + (n - 1) * k  # side information + n-1 more tables
            best = min(best, conditional_bytes(r, sign * n + cls) + extra)
    # contexts a decoder has for free (no side information, only a table each): the previous
    # tap's flag, and in 3x3 kernels how many of the nine taps are kept
    best = min(best, conditional_bytes(r, sign * 4 + previous_tap(flags)[kept]) + 3 * k)
    if flags.shape[2] == 9:
        count = np.minimum(np.broadcast_to(kept.sum(2, keepdims=True), flags.shape)[kept] - 1, 3)
        best = min(best, conditional_bytes(r, sign * 4 + count) + 3 * k)
    return now, best


def table_floor(flags: np.ndarray, rank: np.ndarray, neg: int, k: int, step: int = 4) -> float:
    """Bytes of rank histograms kept at every ``step``-th rank plus the cross-entropy it costs."""
    total = 12.0  # the 4 x 3 flag counts stay as they are
    for want, size in ((1, neg), (2, k - neg)):
        c = np.bincount(rank[flags == want], minlength=size).astype(np.float64)
        x = np.arange(size)
        knots = np.unique(np.r_[np.arange(0, size, step), size - 1])
        level = np.array([c[max(0, i - step // 2):i + step // 2 + 1].mean() for i in knots]) + 0.5
        p = np.exp(np.interp(x, knots, np.log(level)))
        p /= p.sum()
        total += knots.size + float(-(c * np.log2(p)).sum() / 8) - _bytes(c)
    return total


def codebook_floor(codebooks: list[np.ndarray]) -> float:
    """Bytes of sorted float32 codebooks as deltas of their order-preserving integer keys: the
    position of each delta's leading bit by its entropy under one histogram for the model, the
    bits below it sent as they are."""
    leads = []
    for levels in codebooks:
        delta = np.diff(np.sort(entropy.order_keys(levels, "f4").astype(np.int64)), prepend=0)
        leads.append(np.floor(np.log2(np.maximum(delta, 1))).astype(np.int64))
    lead = np.concatenate(leads)
    return _bytes(np.bincount(lead)) + lead.sum() / 8


def float_floor(values: np.ndarray) -> float:
    """Bytes of float32 values: sign and exponent by their entropy under one histogram, the 23
    mantissa bits as they are."""
    raw = np.asarray(values, "<f4").view("<u4").astype(np.int64)
    return _bytes(np.bincount(raw >> 23)) + 23 * raw.size / 8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--net", default=str(NET), help="the published .net file")
    args = p.parse_args()
    if not Path(args.net).exists():
        raise SystemExit(f"{args.net} not found: pass --net (see ../shared/README.md)")
    from squeezenet.compression.api import compress_weights
    from squeezenet.weights.sqz import size_report
    data, _, _ = compress_weights(args.net)  # what `squeezenet compress --weights NET` writes
    parts = size_report(data)["components"]
    fixed = parts["magic_and_version"] + parts["header"] + parts["checksum"]  # the header is zlib'd already
    flags_now = ranks_now = 0.0
    floor = {"flags": 0.0, "ranks": 0.0, "codebooks": 0.0, "biases": 0.0, "tables": 0.0, "header": fixed}
    layers = read_caffe_net(args.net)
    codebooks = []
    for layer in layers:
        flags, rank, levels, neg, taps = layer_codes(layer)
        f_now, f_best = flag_floor(flags, taps)
        r_now, r_best = rank_floor(flags, rank, levels.size)
        flags_now, ranks_now = flags_now + f_now, ranks_now + r_now
        floor["flags"] += f_best
        floor["ranks"] += r_best
        floor["tables"] += table_floor(flags, rank, neg, levels.size)
        codebooks.append(levels)
    floor["codebooks"] = codebook_floor(codebooks)
    floor["biases"] = float_floor(np.concatenate([layer.bias for layer in layers]))
    # the range coder is within a few bytes of the ideal: split its stream in the ideal proportion
    codes = parts["weight_codes"]
    now = {"flags": codes * flags_now / (flags_now + ranks_now), "ranks": codes * ranks_now / (flags_now + ranks_now),
           "codebooks": parts["codebooks"], "biases": parts["biases"], "tables": parts["code_tables"], "header": fixed}
    print(f"{'part':<10} {'now':>10} {'estimate':>10}  (bytes; flags and ranks ideal {flags_now + ranks_now:,.0f})")
    for part in now:
        print(f"{part:<10} {now[part]:>10,.0f} {floor[part]:>10,.0f}")
    total_now, total_floor = sum(now.values()), sum(floor.values())
    print(f"{'total':<10} {total_now:>10,.0f} {total_floor:>10,.0f}   target 520,000")
    print(json.dumps({"bytes": len(data), "estimate_bytes": round(total_floor),
                      "parts": {k: [round(now[k]), round(floor[k])] for k in now}}))


if __name__ == "__main__":
    main()
