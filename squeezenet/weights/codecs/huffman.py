"""Huffman-coded layers, the paper's coding (``--codec huffman``, file version 1).

Sections: the codebook (``2**bits`` entries at most, raw floats), the float32 bias, the index
and position code tables, the index and position bit streams. Positions of the kept weights
are coded as relative gaps (Deep Compression, sec. 4) over an alphabet of ``span`` gap values
plus one SKIP symbol that advances ``span`` positions with no entry (the paper's filler
entries, without spending a weight index on them); a layer may instead code its pruned
positions when those are fewer, or nothing when it is dense. Both streams are canonical
Huffman codes (``weights/huffman.py``).
"""
from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from .. import huffman
from ..positions import absolute_positions, relative_gaps
from .base import (DecodedLayer, LayerError, LayerInput, LayerRecord, bias_bytes, density, finite, index_bits,
                   int_field, int_list, read_bias)

SPANS = [2, 4, 8, 16, 32, 64, 128, 256]


def _bits_to_bytes(bits: int) -> int:
    return (bits + 7) // 8


def table_bytes(table: huffman.HuffmanTable, alphabet: int) -> bytes:
    if not table.symbols:
        return b"\x00"
    counts = np.asarray(table.count[1:], "<u2")
    sym_dtype = "<u1" if alphabet <= 256 else "<u2"
    return bytes([len(counts)]) + counts.tobytes() + np.asarray(table.symbols, sym_dtype).tobytes()


def parse_table(data: bytes, alphabet: int, what: str) -> huffman.HuffmanTable:
    if len(data) < 1:
        raise LayerError(f"{what}: empty code table")
    n_len = data[0]
    if n_len == 0:
        if len(data) != 1:
            raise LayerError(f"{what}: code table has trailing bytes")
        return huffman.HuffmanTable([], [])
    if n_len > huffman.MAX_CODE_LENGTH:
        raise LayerError(f"{what}: code lengths up to {n_len} bits are not a valid Huffman code")
    end = 1 + 2 * n_len
    if len(data) < end:
        raise LayerError(f"{what}: code table is truncated")
    counts = [0] + np.frombuffer(data, "<u2", n_len, 1).astype(int).tolist()
    width = 1 if alphabet <= 256 else 2
    n_sym = sum(counts)
    if n_sym > alphabet or len(data) != end + width * n_sym:
        raise LayerError(f"{what}: code table size does not match its counts")
    symbols = np.frombuffer(data, "<u1" if width == 1 else "<u2", n_sym, end).astype(int).tolist()
    try:
        huffman.validate_table(counts, symbols, alphabet)
    except huffman.HuffmanError as e:
        raise LayerError(f"{what}: {e}") from None
    return huffman.HuffmanTable(counts, symbols)


def gap_symbols(positions: np.ndarray, span: int) -> np.ndarray:
    """Relative gaps of sorted positions over alphabet 0..span-1 plus SKIP (= span)."""
    return relative_gaps(positions, span, filler=span)[0]


def positions_from_gaps(symbols: np.ndarray, span: int) -> np.ndarray:
    """Inverse of ``gap_symbols``."""
    pos, real = absolute_positions(symbols, span, filler=span)
    return pos[real]


def choose_position_coding(mask: np.ndarray) -> tuple[str, int, np.ndarray, huffman.HuffmanTable]:
    """Cheapest coding of a mask: dense (no stream), else gaps between the kept or the pruned
    positions (whichever are fewer) over the gap alphabet size that minimises stream + table."""
    n_keep = int(mask.sum())
    if n_keep == mask.size:
        return "dense", 0, np.zeros(0, np.int64), huffman.HuffmanTable([], [])
    # Code the minority: gaps between the rarer kind of position are the cheaper stream.
    mode, pos = ("kept", np.flatnonzero(mask)) if 2 * n_keep <= mask.size else ("pruned", np.flatnonzero(~mask))
    best = None
    for span in SPANS:
        sym = gap_symbols(pos, span)
        table = huffman.build_table(sym)
        cost = _bits_to_bytes(huffman.encoded_bits(sym, table)) + len(table_bytes(table, span + 1))
        if best is None or cost < best[0]:
            best = (cost, span, sym, table)
    _, span, sym, table = best
    return mode, span, sym, table



class HuffmanCodec:
    name = "huffman"
    versions = (1,)
    any_levels = False

    def encode(self, layer: LayerInput) -> LayerRecord:
        """``layer.index`` (flat, cluster per weight) is read where ``layer.mask`` is true."""
        mask = np.asarray(layer.mask, bool).reshape(-1)
        index = np.asarray(layer.index).reshape(-1)
        k = int(layer.codebook.size)
        bits = layer.bits if layer.bits is not None else index_bits(k)
        if k > 2 ** bits:
            raise ConfigError(f"{layer.name}: {k} centroids do not fit in {bits} bits")
        if layer.bias_dtype != "f4":
            raise ConfigError("the Huffman (version 1) format stores biases as float32")
        kept = index[mask].astype(np.int64)
        if kept.size and (kept.min() < 0 or kept.max() >= max(k, 1)):
            raise ConfigError(f"{layer.name}: cluster index out of range")
        idx_table = huffman.build_table(kept)
        idx_bits = huffman.encode(kept, idx_table)
        mode, span, pos_sym, pos_table = choose_position_coding(mask)
        pos_bits = huffman.encode(pos_sym, pos_table)
        cb = np.asarray(layer.codebook, "<f4" if layer.codebook_dtype == "f4" else "<f2")
        sections = [cb.tobytes(), bias_bytes(layer.bias, "f4"), table_bytes(idx_table, 2 ** bits),
                    table_bytes(pos_table, span + 1), idx_bits.tobytes(), pos_bits.tobytes()]
        meta = {"name": layer.name, "shape": [int(s) for s in layer.shape], "coding": self.name, "bits": int(bits),
                "k": k, "nnz": int(mask.sum()), "density": density(mask), "codebook_dtype": layer.codebook_dtype,
                "bias": 0 if layer.bias is None else int(np.asarray(layer.bias).size), "positions": mode,
                "span": span, "position_symbols": int(pos_sym.size), "index_bits": len(idx_bits),
                "position_bits": len(pos_bits), "sizes": [len(s) for s in sections]}
        return LayerRecord(meta, sections)

    def check(self, record: dict, numel: int, n_bias: int) -> list[int]:
        bits = int_field(record.get("bits"), 1, 8, "bits")
        k = int_field(record.get("k"), 0, 2 ** bits, "codebook size")
        nnz = int_field(record.get("nnz"), 0, numel, "kept weights")
        if (k == 0) != (nnz == 0):
            raise LayerError(f"{nnz} kept weights but {k} centroids")
        if record.get("codebook_dtype") not in ("f4", "f2"):
            raise LayerError(f"unknown codebook type {record.get('codebook_dtype')!r}")
        int_field(record.get("bias"), n_bias, n_bias, "bias size")
        if record.get("positions") not in ("dense", "kept", "pruned"):
            raise LayerError(f"unknown position coding {record.get('positions')!r}")
        if record["positions"] == "dense":
            if nnz != numel:
                raise LayerError(f"dense coding but {nnz} of {numel} weights kept")
        elif record.get("span") not in SPANS:
            raise LayerError(f"invalid span {record.get('span')!r}")
        n_pos_sym = int_field(record.get("position_symbols"), 0, 2 * numel + 1, "position symbols")
        idx_bits = int_field(record.get("index_bits"), 0, nnz * huffman.MAX_CODE_LENGTH, "index bits")
        pos_bits = int_field(record.get("position_bits"), 0, n_pos_sym * huffman.MAX_CODE_LENGTH, "position bits")
        sizes = int_list(record.get("sizes"), 6, "section sizes")
        cb_width = 4 if record["codebook_dtype"] == "f4" else 2
        if (sizes[0] != k * cb_width or sizes[1] != 4 * n_bias or sizes[4] != _bits_to_bytes(idx_bits)
                or sizes[5] != _bits_to_bytes(pos_bits) or not all(s <= 4 * (2 ** bits + 260) for s in sizes[2:4])):
            raise LayerError(f"section sizes {sizes} do not match the header")
        return sizes

    def decode(self, record: dict, sections: list[bytes], numel: int) -> DecodedLayer:
        cb_b, bias_b, it_b, pt_b, is_b, ps_b = sections
        codebook = finite(np.frombuffer(cb_b, "<f4" if record["codebook_dtype"] == "f4" else "<f2")
                          .astype(np.float32), "codebook value")
        mask = self._mask(record, pt_b, ps_b, numel)
        idx_table = parse_table(it_b, 2 ** record["bits"], "index code table")
        try:
            idx = huffman.decode(is_b, record["index_bits"], idx_table, record["nnz"])
        except huffman.HuffmanError as e:
            raise LayerError(str(e)) from None
        if idx.size and idx.max() >= codebook.size:
            raise LayerError(f"codebook index {int(idx.max())} out of range (codebook has {codebook.size})")
        weight = np.zeros(numel, np.float32)
        weight[mask] = codebook[idx] if codebook.size else 0.0
        index = np.zeros(numel, np.int16)
        index[mask] = idx
        bias = read_bias(bias_b, "f4") if record["bias"] else None
        return DecodedLayer(weight, bias, codebook.copy(), index, mask, record["bits"])

    @staticmethod
    def _mask(record: dict, pt_b: bytes, ps_b: bytes, numel: int) -> np.ndarray:
        if record["positions"] == "dense":
            return np.ones(numel, bool)
        span = record["span"]
        table = parse_table(pt_b, span + 1, "position code table")
        try:
            sym = huffman.decode(ps_b, record["position_bits"], table, record["position_symbols"])
        except huffman.HuffmanError as e:
            raise LayerError(str(e)) from None
        pos = positions_from_gaps(sym, span)
        if pos.size and pos[-1] >= numel:
            raise LayerError(f"positions run past the layer's {numel} weights")
        mask = np.zeros(numel, bool)
        mask[pos] = True
        if record["positions"] == "pruned":
            mask = ~mask
        if int(mask.sum()) != record["nnz"]:
            raise LayerError(f"positions give {int(mask.sum())} kept weights, header says {record['nnz']}")
        return mask

    def size_row(self, record: dict) -> dict:
        cb, bias, it, pt, ic, pc = record["sizes"]
        return {"codebook": cb, "bias": bias, "code_tables": it + pt, "weight_codes": ic, "position_codes": pc,
                "bits": record["bits"], "positions": record["positions"], "span": record["span"],
                "index_bits": record["index_bits"], "position_bits": record["position_bits"]}

