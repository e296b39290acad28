"""Range-coded layers (``--codec range``, file versions 2 and 3; ``weights/entropy.py``).

Sections: the sorted codebook (packed deltas), the bias, the model table (quantized symbol
counts), the range-coder stream. Any number of levels up to ``MAX_LEVELS``.
"""
from __future__ import annotations

import math

import numpy as np

from ...errors import ConfigError
from .. import entropy
from .base import (DecodedLayer, LayerError, LayerInput, LayerRecord, bias_bytes, density, finite, index_bits,
                   int_field, int_list, read_bias)

MAX_LEVELS = 1 << 12    # codebook entries per layer


def _sorted_used_levels(layer: LayerInput) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted codebook of the used levels, index into it, mask), every weight unchanged.

    The codebook may come in any order (centroid fine-tuning can reorder it). Indices stay
    int16 (at most ``MAX_LEVELS`` levels): a 12.6M-weight layer's int64 copies and sort were
    half a gigabyte of transients."""
    mask = np.asarray(layer.mask, bool).reshape(-1)
    index = np.asarray(layer.index).reshape(-1)
    cb = np.asarray(layer.codebook, np.float32).reshape(-1)
    if cb.size > MAX_LEVELS:
        raise ConfigError(f"{layer.name}: {cb.size} levels; range-coded layers hold at most {MAX_LEVELS}")
    narrowed = index.dtype != np.int16
    if narrowed:  # any other type: checked where kept, then narrowed
        index = np.asarray(index, np.int64)
        _check_kept(layer, index[mask], cb.size)
        index = np.where(mask, index, 0).astype(np.int16)
    kept = index[mask]
    if not narrowed:
        _check_kept(layer, kept, cb.size)
    if layer.codebook_dtype == "f2":
        cb = cb.astype(np.float16).astype(np.float32)
    cb = cb + np.float32(0.0)  # -0.0 -> 0.0: equal weights, and one order for the packed keys
    present = np.zeros(max(cb.size, 1), bool)
    present[kept] = True  # unused levels cost bytes and nothing else: drop them
    del kept
    used = np.flatnonzero(present[:cb.size])
    order = used[np.argsort(cb[used], kind="stable")]
    if np.array_equal(order, np.arange(cb.size)):
        # already sorted with every level used (as the budget path leaves it): no remap pass,
        # a third of this function's time on a 22M-weight model's layers
        return cb, np.where(mask, index, 0).astype(np.int16, copy=False), mask
    remap = np.zeros(max(cb.size, 1), np.int16)
    remap[order] = np.arange(order.size)
    return cb[order], np.where(mask, remap[np.where(mask, index, 0)], 0).astype(np.int16, copy=False), mask


def _check_kept(layer: LayerInput, kept: np.ndarray, levels: int) -> None:
    if kept.size and (kept.min() < 0 or kept.max() >= levels):
        raise ConfigError(f"{layer.name}: cluster index out of range")


def taps_of(shape) -> int:
    """Kernel size (product of the spatial dims); 1 for 1x1 and linear layers."""
    return int(math.prod(shape[2:])) if len(shape) > 2 else 1


class RangeCodec:
    name = "range"
    versions = (3, 2, 4, 5)
    any_levels = True

    def encode(self, layer: LayerInput) -> LayerRecord:
        cb, index, mask = _sorted_used_levels(layer)
        neg = int((cb < 0).sum())
        table, stream = entropy.encode_layer(index, mask, neg, int(cb.size), taps_of(layer.shape))
        cb_bytes = entropy.pack_codebook(cb, layer.codebook_dtype) if cb.size else b""
        b_bytes = bias_bytes(layer.bias, layer.bias_dtype)
        sections = [cb_bytes, b_bytes, table, stream]
        meta = {"name": layer.name, "shape": [int(s) for s in layer.shape], "coding": self.name, "k": int(cb.size),
                "neg": neg, "nnz": int(mask.sum()), "density": density(mask), "codebook_dtype": layer.codebook_dtype,
                "bias": 0 if layer.bias is None else int(np.asarray(layer.bias).size), "bias_dtype": layer.bias_dtype,
                "sizes": [len(s) for s in sections]}
        return LayerRecord(meta, sections)

    def check(self, record: dict, numel: int, n_bias: int) -> list[int]:
        k = int_field(record.get("k"), 0, min(MAX_LEVELS, numel), "codebook size")
        int_field(record.get("neg"), 0, k, "negative levels")
        nnz = int_field(record.get("nnz"), 0, numel, "kept weights")
        if (k == 0) != (nnz == 0):
            raise LayerError(f"{nnz} kept weights but {k} centroids")
        if record.get("codebook_dtype") not in ("f4", "f2") or record.get("bias_dtype") not in ("f4", "f2"):
            raise LayerError("unknown codebook or bias type")
        int_field(record.get("bias"), n_bias, n_bias, "bias size")
        sizes = int_list(record.get("sizes"), 4, "section sizes")
        cb_width = 4 if record["codebook_dtype"] == "f4" else 2
        bias_width = 4 if record["bias_dtype"] == "f4" else 2
        # A range-coded symbol costs at most 32 bits here (probabilities are at least 2**-24 plus
        # the coder's state), so a stream longer than that is corrupt, not a model.
        if (not (sizes[0] == 0 if k == 0 else 0 < sizes[0] <= k * cb_width + 64) or sizes[1] != bias_width * n_bias
                or sizes[2] != entropy.model_table_size(k) or not sizes[3] <= 4 * (2 * numel + 4) or sizes[3] % 4):
            raise LayerError(f"section sizes {sizes} do not match the header")
        return sizes

    def decode(self, record: dict, sections: list[bytes], numel: int) -> DecodedLayer:
        cb_b, bias_b, table, stream = sections
        k = record["k"]
        shape = record["shape"]
        try:
            codebook = entropy.unpack_codebook(cb_b, k, record["codebook_dtype"]) if k else np.zeros(0, np.float32)
            finite(codebook, "codebook value")
            index, mask, weight = entropy.decode_layer(table, stream, numel, record["neg"], k, taps_of(shape),
                                                       record["nnz"], codebook)
        except entropy.EntropyError as e:
            raise LayerError(str(e)) from None
        bias = read_bias(bias_b, record["bias_dtype"]) if record["bias"] else None
        return DecodedLayer(weight, bias, codebook.copy(), index, mask, index_bits(k))

    def size_row(self, record: dict) -> dict:
        cb, bias, table, stream = record["sizes"]
        # one stream holds positions, signs and magnitudes together
        return {"codebook": cb, "bias": bias, "code_tables": table, "weight_codes": stream, "position_codes": 0,
                "bits": index_bits(record["k"]), "positions": "range", "span": 0, "index_bits": 8 * stream,
                "position_bits": 0}
