"""Context-modelled range coding of a quantized layer (the ``.sqz`` version 2 weight coding).

A layer is a sorted codebook (``k`` nonzero levels, ``neg`` of them below zero) and, for every
weight position, either "pruned" or an index into the codebook. It is coded as two parts:

* a *flag* per position: 0 pruned, 1 a negative level, 2 a non-negative level. Flags are coded
  tap by tap over the kernel (all kernels' tap 0, then all kernels' tap 1, ...) and each flag's
  context is the flag of the previous tap of the same kernel (3 contexts, plus one for tap 0).
  Neighbouring taps share sign and survival under magnitude pruning, which this captures while
  every tap decodes in one vectorized call per context. 1x1 layers have one context.
* a *magnitude rank* per kept weight: for a negative level, how many negative levels lie
  between it and zero; for a non-negative one, likewise. Coded per sign with one histogram.

Models are semi-static: the histograms travel in the file, each count quantized to a byte
(``quantize_count``: a 4-bit-mantissa mini-float of the count scaled to 2**16), and are rebuilt
from integers only, so encoder and decoder agree bit for bit on any machine. The entropy coder
is ``constriction``'s range coder (Bamler, 2022); we write no coder of our own.

Compared with Deep Compression's Huffman coding (sec. 4 of Han et al.), this removes the
whole-bit rounding of each code, codes the mask and the signs with context, and lets any
number of levels be used (not only 2**bits).
"""
from __future__ import annotations

import zlib

import constriction
import numpy as np

FIRST_TAP = 3          # context of tap 0 (no previous tap)
N_FLAG_CONTEXTS = 4
SCALE = 1 << 16


class EntropyError(ValueError):
    """A coded stream or model table that cannot be decoded."""


def _constriction():
    return constriction.stream.model.Categorical, constriction.stream.queue


# ----------------------------------------------------------------------------- count tables
def quantize_count(count: np.ndarray, total: int) -> np.ndarray:
    """Counts -> one byte each: 0 for zero, else a mini-float of ``count * 2**16 / total``.

    Codes 1..15 are exact small values; code ``16 * (e + 1) + m`` stands for ``(16 + m) << e``.
    """
    count = np.asarray(count, np.int64)
    out = np.zeros(count.shape, np.uint8)
    nz = count > 0
    if not nz.any():
        return out
    v = np.maximum(1, (count[nz] * SCALE + total // 2) // max(total, 1))
    e = np.zeros(v.shape, np.int64)
    big = v >= 16
    if big.any():
        bl = np.floor(np.log2(v[big])).astype(np.int64)  # bit length - 1; exact for int64 < 2**52
        e_big = bl - 4
        mant = (v[big] + (1 << e_big >> 1)) >> e_big      # rounded: 16..32
        carry = mant >= 32
        e_big = e_big + carry
        mant = np.where(carry, mant >> 1, mant)
        e[big] = e_big
        v = v.copy()
        v[big] = 16 * (e_big + 1) + (mant - 16)
    out[nz] = np.minimum(v, 255).astype(np.uint8)
    return out


def dequantize_count(code: np.ndarray) -> np.ndarray:
    """Inverse of ``quantize_count`` up to its rounding: integer weights (int64)."""
    code = np.asarray(code, np.int64)
    e = code // 16 - 1
    small = code < 16
    return np.where(small, code, (16 + code % 16) << np.maximum(e, 0))


def _probabilities(codes: np.ndarray) -> np.ndarray:
    w = dequantize_count(codes).astype(np.float64)
    if w.sum() == 0:  # unused model: any valid distribution
        w = np.ones_like(w)
    return w


# ----------------------------------------------------------------------------- symbols
def layer_symbols(index: np.ndarray, mask: np.ndarray, neg: int,
                  taps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flags (taps-last, shape (rows, taps)) and the negative / non-negative magnitude ranks.

    Args:
        index: codebook index per position (any value where pruned).
        mask: True where the weight is kept.
        neg: number of codebook levels below zero (the codebook is sorted).
        taps: kernel size (product of the spatial dims); 1 for 1x1 and linear layers.
    """
    mask = np.asarray(mask, bool).reshape(-1)
    index = np.asarray(index).reshape(-1)
    positive = mask & (index >= neg)
    neg_rank = (neg - 1 - index[mask & ~positive]).astype(np.int32)
    pos_rank = (index[positive] - neg).astype(np.int32)
    return _flags(mask, positive).reshape(-1, taps), neg_rank, pos_rank


def _flags(mask: np.ndarray, positive: np.ndarray) -> np.ndarray:
    return mask.astype(np.int8) + positive  # 0 pruned, 1 negative, 2 positive; int8 keeps it SIMD-wide


def _flag_contexts(prev: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, FIRST_TAP, np.int32) if prev is None else prev


def _contexts(flags: np.ndarray) -> np.ndarray:
    """Each flag's context, in the flags' (rows, taps) layout: the previous tap's flag, FIRST_TAP at tap 0."""
    ctx = np.empty(flags.shape, np.int8)
    ctx[:, 0] = FIRST_TAP
    ctx[:, 1:] = flags[:, :-1]
    return ctx


def flag_histograms(flags: np.ndarray) -> np.ndarray:
    """Counts (contexts x 3) of the flags under the previous-tap context."""
    pairs = 3 * _contexts(flags) + flags.astype(np.int8)  # at most 11: int8 throughout (np.bincount widens to int64)
    counts = [np.count_nonzero(pairs == v) for v in range(3 * N_FLAG_CONTEXTS)]
    return np.array(counts, np.int64).reshape(N_FLAG_CONTEXTS, 3)


def build_model_table(flags: np.ndarray, neg_rank: np.ndarray, pos_rank: np.ndarray, neg: int, k: int) -> bytes:
    """The layer's model bytes: 4 x 3 flag counts, then ``neg`` and ``k - neg`` rank counts."""
    fh = flag_histograms(flags)
    parts = [quantize_count(row, int(row.sum())) for row in fh]
    parts.append(quantize_count(bincount(neg_rank, minlength=neg)[:neg], max(neg_rank.size, 1)))
    parts.append(quantize_count(bincount(pos_rank, minlength=k - neg)[:k - neg], max(pos_rank.size, 1)))
    return np.concatenate(parts).astype(np.uint8).tobytes()


def model_table_size(k: int) -> int:
    return N_FLAG_CONTEXTS * 3 + k


def _split_table(table: bytes, neg: int, k: int):
    codes = np.frombuffer(table, np.uint8)
    if codes.size != model_table_size(k):
        raise EntropyError(f"model table has {codes.size} bytes, expected {model_table_size(k)}")
    flag_codes = codes[:N_FLAG_CONTEXTS * 3].reshape(N_FLAG_CONTEXTS, 3)
    return flag_codes, codes[N_FLAG_CONTEXTS * 3:N_FLAG_CONTEXTS * 3 + neg], codes[N_FLAG_CONTEXTS * 3 + neg:]


def _check_codable(symbols: np.ndarray, codes: np.ndarray, what: str) -> None:
    # the symbols whose code is zero, looked for (none, mostly): no sorted copy of the symbols
    zero = np.flatnonzero(np.asarray(codes) == 0)
    if symbols.size and zero.size and np.isin(symbols, zero).any():
        raise EntropyError(f"{what}: a symbol has zero count in its model")


# ----------------------------------------------------------------------------- coding
ENCODE_CHUNK = 1 << 20  # symbols widened to int32 and coded at once


def encode_layer(index: np.ndarray, mask: np.ndarray, neg: int, k: int, taps: int) -> tuple[bytes, bytes]:
    """Range-code one layer. Returns (model table bytes, stream bytes)."""
    Categorical, queue = _constriction()
    flags, neg_rank, pos_rank = layer_symbols(index, mask, neg, taps)
    if neg_rank.size and neg_rank.max() >= neg or pos_rank.size and pos_rank.max() >= k - neg:
        raise ValueError("codebook index out of range")
    table = build_model_table(flags, neg_rank, pos_rank, neg, k)
    flag_codes, neg_codes, pos_codes = _split_table(table, neg, k)
    enc = queue.RangeEncoder()
    rows, n_taps = flags.shape
    models = [Categorical(_probabilities(c), perfect=False) for c in flag_codes]
    by_tap = np.ascontiguousarray(flags.T)  # tap-major: each tap's column contiguous, as the decoder reads it
    for t in range(n_taps):
        col = by_tap[t]
        if t == 0:
            groups = [(FIRST_TAP, col)]
        else:  # contexts 0, 1, 2, each in row order: one stable (radix) sort of the previous tap
            prev = by_tap[t - 1]
            ordered = col[np.argsort(prev, kind="stable")]
            bounds = np.cumsum(_flag_counts(prev))
            groups = [(c, ordered[lo:hi]) for c, lo, hi in zip(range(3), (0, *bounds[:2]), bounds)]
        for c, sel in groups:
            if sel.size:
                _check_codable(sel, flag_codes[c], "flags")
                # int32 as the coder takes them, a chunk at a time (the queue coder's stream is
                # the same): a 12.6M-weight layer's flags widened at once were 50 MB
                for i in range(0, sel.size, ENCODE_CHUNK):
                    enc.encode(sel[i:i + ENCODE_CHUNK].astype(np.int32), models[c])
    for ranks, codes in ((neg_rank, neg_codes), (pos_rank, pos_codes)):
        if ranks.size and codes.size > 1:  # a one-level alphabet needs no bits
            _check_codable(ranks, codes, "magnitudes")
            enc.encode(ranks, Categorical(_probabilities(codes), perfect=False))
    return table, enc.get_compressed().astype("<u4").tobytes()


def _flag_counts(flags: np.ndarray) -> list[int]:
    # comparisons on int8 stay in int8 (SIMD); np.bincount would widen the whole array to int64
    return [int(np.count_nonzero(flags == c)) for c in range(3)]


def decode_layer(table: bytes, stream: bytes, numel: int, neg: int, k: int, taps: int, nnz: int,
                 codebook: np.ndarray | None = None) -> tuple:
    """Inverse of ``encode_layer``: (index int16[numel], mask bool[numel]), and the weights
    float32[numel] as a third item when the layer's ``codebook`` (``k`` sorted levels) is given.

    Raises EntropyError when the stream does not decode to ``nnz`` kept weights.
    """
    Categorical, queue = _constriction()
    if numel % taps or len(stream) % 4:
        raise EntropyError("stream size or kernel size does not fit the layer")
    flag_codes, neg_codes, pos_codes = _split_table(table, neg, k)
    words = np.frombuffer(stream, "<u4").astype(np.uint32)
    dec = queue.RangeDecoder(words)
    rows = numel // taps
    # int8 flags, tap-major: each tap's column is contiguous (less memory traffic than int32 rows)
    flags = np.zeros((taps, rows), np.int8)
    models = [Categorical(_probabilities(c), perfect=False) for c in flag_codes]
    try:
        if rows:
            flags[0] = dec.decode(models[FIRST_TAP], rows)
        for t in range(1, taps):
            # the groups of contexts 0, 1, 2, each in row order: one stable (radix) sort, one scatter
            prev = flags[t - 1]
            order = np.argsort(prev, kind="stable")
            counts = _flag_counts(prev)
            parts = [dec.decode(models[c], int(n)) for c, n in enumerate(counts) if n]
            flags[t, order] = np.concatenate(parts)
        flat = np.ascontiguousarray(flags.T).reshape(-1) if taps > 1 else flags[0]
        _, n_neg, n_pos = _flag_counts(flat)
        if n_neg + n_pos != nnz or (n_neg and neg == 0) or (n_pos and k - neg == 0):
            raise EntropyError(f"flags give {n_neg + n_pos} kept weights, the header says {nnz}")
        ranks = []
        for n, codes in ((n_neg, neg_codes), (n_pos, pos_codes)):
            ranks.append(dec.decode(Categorical(_probabilities(codes), perfect=False), n) if n and codes.size > 1
                         else np.zeros(n, np.int32))
        neg_rank, pos_rank = ranks
    except (AssertionError, ValueError, RuntimeError, OverflowError) as e:  # constriction's errors on garbage
        raise EntropyError(f"stream does not decode ({e})") from None
    # Integer positions, not boolean masks: numpy's fancy assignment through positions is several
    # times faster than through a mask of the layer's size.
    where_neg, where_pos = np.flatnonzero(flat == 1), np.flatnonzero(flat == 2)
    index = np.zeros(numel, np.int16)  # MAX_LEVELS (4096) fits; pruned positions keep index 0
    neg_index = (neg - 1 - neg_rank).astype(np.int16)
    pos_index = (neg + pos_rank).astype(np.int16)
    index[where_neg] = neg_index
    index[where_pos] = pos_index
    if codebook is None:
        return index, flat > 0
    weight = np.zeros(numel, np.float32)
    weight[where_neg] = codebook[neg_index]
    weight[where_pos] = codebook[pos_index]
    return index, flat > 0, weight


def code_length(counts: np.ndarray) -> float:
    """Bits of coding symbols with these counts at their empirical probabilities (order 0)."""
    c = np.asarray(counts)[np.asarray(counts) > 0].astype(np.float64)
    return float(-(c * np.log2(c / c.sum())).sum()) if c.size else 0.0


def ideal_bits(index: np.ndarray, mask: np.ndarray, neg: int, k: int, taps: int) -> float:
    """Empirical conditional entropy of the layer under its own models, in bits (no table).
    The magnitudes' counts are the levels' counts (a rank is a level), so no rank arrays are
    made: a 12.6M-weight layer's, widened by ``np.bincount``, were 200 MB of transients."""
    mask = np.asarray(mask, bool).reshape(-1)
    index = np.asarray(index).reshape(-1)
    flags = _flags(mask, mask & (index >= neg))
    counts = level_counts(index, mask, k)
    return sum(code_length(c) for c in flag_histograms(flags.reshape(-1, taps))) \
        + code_length(counts[:neg]) + code_length(counts[neg:])


COUNT_CHUNK = 1 << 20  # values ``np.bincount`` widens to int64 at once


def bincount(values: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``np.bincount`` a chunk at a time: it widens its input to int64 (8 bytes a value)."""
    values = np.asarray(values).reshape(-1)
    out = np.zeros(max(minlength, int(values.max()) + 1 if values.size else 0), np.int64)
    for i in range(0, values.size, COUNT_CHUNK):
        part = np.bincount(values[i:i + COUNT_CHUNK])
        out[:part.size] += part
    return out


def level_counts(index: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """How many kept weights take each of the ``k`` levels (``index`` where ``mask``)."""
    index, mask = np.asarray(index).reshape(-1), np.asarray(mask, bool).reshape(-1)
    out = np.zeros(k, np.int64)
    for i in range(0, index.size, COUNT_CHUNK):
        part = np.bincount(index[i:i + COUNT_CHUNK][mask[i:i + COUNT_CHUNK]], minlength=k)
        out += part[:k]
    return out


# ----------------------------------------------------------------------------- codebooks
_WIDTH = {"f4": (np.uint32, "<u4", 4), "f2": (np.uint16, "<u2", 2)}


def order_keys(values: np.ndarray, dtype: str) -> np.ndarray:
    """Unsigned keys (uint64) of ``values`` stored as ``dtype`` ("f4" or "f2") that sort as
    the floats do: the sign bit set on non-negatives, every bit flipped on negatives."""
    _, le, width = _WIDTH[dtype]
    raw = np.asarray(values, "<f4" if dtype == "f4" else "<f2").view(le).astype(np.uint64)
    sign = np.uint64(1 << (8 * width - 1))
    full = np.uint64((1 << (8 * width)) - 1)
    return np.where(raw & sign, ~raw & full, raw | sign)


def pack_codebook(values: np.ndarray, dtype: str) -> bytes:
    """A sorted codebook as zlib-compressed byte planes of the deltas of order-preserving keys.

    Sorted k-means or grid centroids lie close together, so their deltas need about half the
    bytes of the raw floats; the high byte planes are almost all zero and compress away.
    """
    uint, le, width = _WIDTH[dtype]
    keys = order_keys(values, dtype)
    if keys.size > 1 and (np.diff(keys.astype(np.int64)) < 0).any():
        raise ValueError("codebook must be sorted")
    deltas = np.diff(keys, prepend=np.uint64(0)).astype(uint)
    planes = deltas.astype(le).view(np.uint8).reshape(-1, width).T
    return zlib.compress(planes.tobytes(), 9)


def unpack_codebook(data: bytes, k: int, dtype: str) -> np.ndarray:
    """Inverse of ``pack_codebook`` (float32 values).

    Raises:
        EntropyError: on data that does not unpack to ``k`` sorted values.
    """
    uint, le, width = _WIDTH[dtype]
    try:
        d = zlib.decompressobj()
        planes = d.decompress(data, k * width)
        if d.unconsumed_tail or not d.eof or len(planes) != k * width:
            raise EntropyError(f"codebook does not unpack to {k} values")
    except zlib.error as e:
        raise EntropyError(f"codebook does not unpack ({e})") from None
    deltas = np.frombuffer(planes, np.uint8).reshape(width, k).T.copy().view(le).reshape(-1).astype(np.uint64)
    keys = np.cumsum(deltas, dtype=np.uint64)
    if k and keys[-1] >= np.uint64(1 << (8 * width)):
        raise EntropyError("codebook keys overflow")
    sign = np.uint64(1 << (8 * width - 1))
    full = np.uint64((1 << (8 * width)) - 1)
    raw = np.where(keys & sign, keys & (full >> np.uint64(1)), ~keys & full).astype(uint)
    return raw.view("<f4" if dtype == "f4" else "<f2").astype(np.float32)
